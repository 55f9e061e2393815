//! Attaching the pinned programs to one endpoint, and detaching them.
//!
//! Links are TCX links (Linux >= 6.6), pinned per endpoint and hook, so they outlive the
//! process that made them. Run these on a thread inside the node's network namespace:
//! interface names and ifindexes are per namespace.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions},
    util::KernelVersion,
};
use enforcer_common::maps::{PROG_FROM_POD, PROG_TO_POD};
use model::Mode;
use tracing::info;

use super::{
    Pins,
    rules::{self, EndpointConfig},
    tables::{Endpoints, Table},
    writer::PinnedWriter,
};
use crate::error::{Error, Result};

/// Host-side ingress carries what the pod sends; host-side egress what it receives.
const HOOKS: [(&str, TcAttachType); 2] = [
    (PROG_FROM_POD, TcAttachType::Ingress),
    (PROG_TO_POD, TcAttachType::Egress),
];

/// One pod interface to protect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Host side of the pod's veth, in the current network namespace.
    pub interface: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mode: Mode,
    /// A new endpoint starts isolated both ways (only its node passes) until its rules
    /// arrive, instead of open: for an agent that owns the policy (zero trust, or a pod
    /// whose policy is not known yet). An endpoint already registered keeps its state.
    pub isolated: bool,
}

/// Register the endpoint and attach both programs to it. Attaching an endpoint that is
/// already attached only updates its registration. Returns its ifindex.
pub fn attach(pins: &Pins, spec: &EndpointSpec) -> Result<u32> {
    pins.require_installed()?;
    require_tcx()?;
    let ifindex = ifindex_of(&spec.interface)?;
    // The endpoint is registered before its programs run, so its first packet is judged.
    let config = EndpointConfig {
        mode: spec.mode,
        ipv4: spec.ipv4,
        ipv6: spec.ipv6,
        isolated: spec.isolated,
    };
    rules::register_endpoint(&mut Endpoints::open_endpoints(pins)?, ifindex, &config)?;

    for (name, hook) in HOOKS {
        let link_pin = pins.link(ifindex, name);
        if link_pin.exists() {
            continue;
        }
        let mut program = SchedClassifier::from_pin(pins.program(name))
            .map_err(|e| program_error(name, "opening the pinned program", e))?;
        let attach_error = |source| Error::Attach {
            program: name,
            interface: spec.interface.clone(),
            ifindex,
            source: Box::new(source),
        };
        let id = program
            .attach_with_options(
                &spec.interface,
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_error)?;
        let link: FdLink = program
            .take_link(id)
            .map_err(attach_error)?
            .try_into()
            .map_err(|e| Error::Pin {
                path: link_pin.clone(),
                source: std::io::Error::other(e),
            })?;
        link.pin(&link_pin).map_err(|e| Error::Pin {
            path: link_pin.clone(),
            source: std::io::Error::other(e),
        })?;
    }
    info!(interface = %spec.interface, ifindex, mode = ?spec.mode, "endpoint attached");
    Ok(ifindex)
}

/// Detach both programs from the interface and forget the endpoint and its rules (or,
/// while an agent owns the policy maps, the endpoint: the agent deletes its rules).
pub fn detach(pins: &Pins, interface: &str) -> Result<()> {
    pins.require_installed()?;
    let ifindex = ifindex_of(interface)?;
    detach_ifindex(pins, ifindex)?;
    info!(interface, ifindex, "endpoint detached");
    Ok(())
}

/// As [`detach`], by ifindex (works when the interface is already gone).
pub fn detach_ifindex(pins: &Pins, ifindex: u32) -> Result<()> {
    for (name, _) in HOOKS {
        let path = pins.link(ifindex, name);
        // Removing the last reference to a link detaches it.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Pin { path, source }),
        }
    }
    match PinnedWriter::open(pins) {
        Ok(mut writer) => writer.forget(ifindex),
        // An agent owns the policy maps: remove the endpoint only; the agent deletes its
        // rules at its next policy update (it notices the endpoint is gone).
        Err(Error::PolicyLocked { .. }) => {
            Endpoints::open_endpoints(pins)?.remove(&ifindex)?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The ifindex of `interface` in the calling thread's network namespace.
pub fn ifindex_of(interface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(interface).map_err(|errno| Error::NoSuchInterface {
        interface: interface.to_owned(),
        source: errno.into(),
    })
}

/// TCX links need Linux 6.6.
pub(super) fn require_tcx() -> Result<()> {
    let kernel = KernelVersion::current().map_err(|source| Error::Io {
        path: "/proc/sys/kernel/osrelease".into(),
        source: std::io::Error::other(source),
    })?;
    if kernel >= KernelVersion::new(6, 6, 0) {
        Ok(())
    } else {
        Err(Error::TcxUnsupported {
            kernel: format!("{kernel:?}"),
        })
    }
}

fn program_error(
    program: &'static str,
    action: &'static str,
    e: aya::programs::ProgramError,
) -> Error {
    Error::Program {
        program,
        action,
        source: Box::new(e),
    }
}
