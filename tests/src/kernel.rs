//! The real programs run with BPF_PROG_TEST_RUN, without attaching anything: a private
//! network namespace whose loopback (ifindex 1) is registered as the endpoint, and pins
//! under a unique bpffs folder, removed on drop.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use enforcer::datapath::{
    self, Pins,
    rules::{self, EndpointConfig},
    tables::Endpoints,
};
use enforcer_common::maps::{PROG_FROM_POD, PROG_TO_POD};
use model::{Direction, Mode};

/// The endpoint: the private namespace's loopback.
pub const ENDPOINT: u32 = 1;
/// The pod's own addresses.
pub const POD4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// `TC_ACT_SHOT` and `TCX_NEXT` (-1) as the test run reports them.
pub const SHOT: u32 = 2;
pub const NEXT: u32 = u32::MAX;

pub struct KernelNode {
    pub pins: Pins,
    from_pod: SchedClassifier,
    to_pod: SchedClassifier,
}

impl KernelNode {
    /// Move the calling thread into a new network namespace, install the datapath and
    /// register the endpoint in enforce mode (its rules: open until set).
    pub fn new() -> Self {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("private netns");
        let pins = Pins::new(format!("/sys/fs/bpf/palisade-kt-{}", crate::unique_id()));
        drop(datapath::install(&pins).expect("install"));
        let config = EndpointConfig {
            mode: Mode::Enforce,
            ipv4: Some(POD4),
            ipv6: Some(POD6),
            isolated: false,
        };
        let mut endpoints = Endpoints::open_endpoints(&pins).expect("ENDPOINTS");
        rules::register_endpoint(&mut endpoints, ENDPOINT, &config).expect("register");
        let from_pod = SchedClassifier::from_pin(pins.program(PROG_FROM_POD)).expect("from_pod");
        let to_pod = SchedClassifier::from_pin(pins.program(PROG_TO_POD)).expect("to_pod");
        Self {
            pins,
            from_pod,
            to_pod,
        }
    }

    /// Run `frame` through `from_pod` (egress) or `to_pod` (ingress); the program's action.
    pub fn run(&self, direction: Direction, frame: &[u8]) -> u32 {
        let program = match direction {
            Direction::Egress => &self.from_pod,
            Direction::Ingress => &self.to_pod,
        };
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        };
        program
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }
}

impl Default for KernelNode {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KernelNode {
    fn drop(&mut self) {
        if let Err(e) = datapath::uninstall(&self.pins) {
            eprintln!("uninstalling {}: {e}", self.pins.root().display());
        }
    }
}
