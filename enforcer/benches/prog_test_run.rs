//! Per-packet cost of the datapath, measured in the kernel with BPF_PROG_TEST_RUN.
//!
//! Run as root: `cargo bench -p enforcer --bench prog_test_run`. Runs in a private network
//! namespace (its loopback, ifindex 1, is the endpoint the test packets "arrive" on; nothing
//! is attached anywhere and no packet is sent) with pins under a unique bpffs folder that
//! it removes at the end. Prints nanoseconds per packet for: an empty TC program (the
//! floor); `from_pod` / `to_pod` on a 64-byte TCP packet of an established connection
//! (median of rounds of 1,000,000 runs), then again with CONNTRACK (a table of 1,048,576)
//! filled with 1,000,000 connections, and on random ones of those (each run once); and the
//! first packet of new connections (each a distinct SYN, run once, median over many) to a
//! pod peer (allowed by an identity rule), to a world peer (allowed by a CIDR rule) and
//! refused, with 10 to 100,000 policy entries, the table full.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData, RingBuf};
use aya::programs::SchedClassifier;
use enforcer::datapath::{
    self, Pins,
    rules::{self, EndpointConfig},
    tables::Endpoints,
    writer::{Desired, PinnedWriter},
};
use enforcer_common::maps::{self as map_names, PROG_FROM_POD, PROG_TO_POD};
use model::{
    Direction, Protocol,
    identity::Identity,
    rules::{EndpointRules, Peer, PortRange, Rule},
};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
const LOOPBACK_IFINDEX: u32 = 1;

fn main() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: BPF_PROG_TEST_RUN needs root");
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("private netns")?;
    let pins = Pins::new(format!("/sys/fs/bpf/palisade-bench-{}", std::process::id()));
    let result = run(&pins);
    datapath::uninstall(&pins)?;
    result
}

fn run(pins: &Pins) -> Result<()> {
    let sizing = datapath::Sizing {
        conntrack_max: CONNTRACK_MAX,
    };
    drop(datapath::install_with(pins, sizing)?);
    let config = EndpointConfig {
        mode: model::Mode::Enforce,
        ipv4: Some([10, 244, 0, 2].into()),
        ipv6: None,
        isolated: false,
    };
    rules::register_endpoint(
        &mut Endpoints::open_endpoints(pins)?,
        LOOPBACK_IFINDEX,
        &config,
    )?;
    let from_pod = SchedClassifier::from_pin(pins.program(PROG_FROM_POD))?;
    let to_pod = SchedClassifier::from_pin(pins.program(PROG_TO_POD))?;
    let empty = load_empty_program()?;

    // Open the connection (SYN out, SYN-ACK in) so the measured packets hit conntrack.
    let pod = [10, 244, 0, 2];
    let peer = [10, 244, 0, 3];
    run_once(prog_fd(&from_pod)?, &tcp_frame(pod, peer, 40000, 80, SYN))?;
    run_once(
        prog_fd(&to_pod)?,
        &tcp_frame(peer, pod, 80, 40000, SYN | ACK),
    )?;
    let out = tcp_frame(pod, peer, 40000, 80, ACK);
    let back = tcp_frame(peer, pod, 80, 40000, ACK);
    assert_eq!(out.len(), 64);

    println!("BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} rounds, median ns/packet, 64-byte TCP");
    let floor = measure(empty.as_fd(), &out)?;
    println!("  empty TC program           {floor:>6.1} ns");
    for (name, fd, frame) in [
        ("from_pod, established", prog_fd(&from_pod)?, &out),
        ("to_pod,   established", prog_fd(&to_pod)?, &back),
    ] {
        let ns = measure(fd, frame)?;
        println!(
            "  {name:<26} {ns:>6.1} ns  (+{:.1} ns over empty)",
            ns - floor
        );
    }

    let present = fill_conntrack(pins)?;
    let filled = present.len();
    println!(
        "with CONNTRACK holding {filled} connections (table of {CONNTRACK_MAX}; established, this endpoint):"
    );
    // Filling may have evicted the measured connection: open it again.
    run_once(prog_fd(&from_pod)?, &tcp_frame(pod, peer, 40000, 80, SYN))?;
    run_once(
        prog_fd(&to_pod)?,
        &tcp_frame(peer, pod, 80, 40000, SYN | ACK),
    )?;
    for (name, fd, frame) in [
        ("from_pod, established", prog_fd(&from_pod)?, &out),
        ("to_pod,   established", prog_fd(&to_pod)?, &back),
    ] {
        let ns = measure(fd, frame)?;
        println!(
            "  {name:<26} {ns:>6.1} ns  (+{:.1} ns over empty), one connection, warm",
            ns - floor
        );
    }
    let mut rng = rand::rng();
    let mut durations = Vec::with_capacity(NEW_CONNECTIONS);
    for _ in 0..NEW_CONNECTIONS {
        let i = present[rand::Rng::random_range(&mut rng, 0..filled)];
        let frame = tcp_frame(pod, filler_peer(i), FILLER_POD_PORT, FILLER_PEER_PORT, ACK);
        let (verdict, ns) = test_run(prog_fd(&from_pod)?, &frame, 1)?;
        if verdict != TCX_NEXT {
            bail!("a filled connection was not passed as established (verdict {verdict})");
        }
        durations.push(ns);
    }
    let random = median_of(durations);
    // Run once, a measurement carries BPF_PROG_TEST_RUN's per-call cost: the same way,
    // the empty program and the one warm connection.
    let once = |fd: BorrowedFd<'_>, frame: &[u8]| -> Result<f64> {
        let runs = (0..NEW_CONNECTIONS)
            .map(|_| Ok(test_run(fd, frame, 1)?.1))
            .collect::<Result<Vec<f64>>>()?;
        Ok(median_of(runs))
    };
    let once_floor = once(empty.as_fd(), &out)?;
    let once_warm = once(prog_fd(&from_pod)?, &out)?;
    println!(
        "  each run once ({NEW_CONNECTIONS} runs, median): empty {once_floor:.0} ns; from_pod on the one warm connection {once_warm:.0} ns (+{:.0}); on random connections of the {filled} {random:.0} ns (+{:.0})",
        once_warm - once_floor,
        random - once_floor
    );

    println!("first packets of new connections, {NEW_CONNECTIONS} distinct SYNs each, median ns:");
    println!(
        "  {:>8}  {:>10}  {:>10}  {:>10}  {:>16}",
        "entries", "to a pod", "to world", "refused", "pod, no CIDR rule"
    );
    let mut events = RingBuf::try_from(Map::from_map_data(MapData::from_pin(
        pins.map(map_names::EVENTS),
    )?)?)?;
    let mut next_port = 1024u16;
    let mut writer = PinnedWriter::open(pins)?;
    for entries in [10u32, 1_000, 10_000, 100_000] {
        let mut row = Vec::new();
        for (with_cidr_rule, peer) in [
            (true, POD_PEER),
            (true, WORLD_PEER),
            (true, REFUSED_PEER),
            (false, POD_PEER),
        ] {
            writer.apply(&policy(entries, with_cidr_rule))?;
            let mut durations = Vec::with_capacity(NEW_CONNECTIONS);
            for _ in 0..NEW_CONNECTIONS {
                next_port = next_port.checked_add(1).unwrap_or(1024);
                let syn = tcp_frame(pod, peer, next_port, 8080, SYN);
                durations.push(test_run(prog_fd(&from_pod)?, &syn, 1)?.1);
            }
            // Keep the ring buffer drained, as the agent would: a full one is cheaper.
            while events.next().is_some() {}
            durations.sort_by(f64::total_cmp);
            row.push(durations[durations.len() / 2]);
        }
        println!(
            "  {entries:>8}  {:>10.0}  {:>10.0}  {:>10.0}  {:>16.0}",
            row[0], row[1], row[2], row[3]
        );
    }
    Ok(())
}

/// The CONNTRACK table of the benchmark, and how many connections it is filled with.
const CONNTRACK_MAX: u32 = 1 << 20;
const FILLED: u32 = 1_000_000;
const FILLER_POD_PORT: u16 = 41000;
const FILLER_PEER_PORT: u16 = 443;
/// TCX_NEXT / TC_ACT_UNSPEC: passed on.
const TCX_NEXT: u32 = u32::MAX;

/// The peer of the `i`-th filler connection: 10.100.0.0 and up, distinct for each `i`.
fn filler_peer(i: u32) -> [u8; 4] {
    let [_, a, b, c] = i.to_be_bytes();
    [10, 100 + a, b, c]
}

/// Fill CONNTRACK with FILLED established connections of the endpoint (copies of the one
/// the benchmark opened, under other peers), as a busy node would have. Returns how many
/// of them are in the table afterwards (by index).
fn fill_conntrack(pins: &Pins) -> Result<Vec<u32>> {
    use enforcer_common::conntrack::{ConntrackKey, ConntrackValue};
    let mut table: aya::maps::HashMap<MapData, ConntrackKey, ConntrackValue> =
        aya::maps::HashMap::try_from(Map::from_map_data(MapData::from_pin(
            pins.map(map_names::CONNTRACK),
        )?)?)?;
    let (template_key, template) = table
        .iter()
        .next()
        .context("the opened connection is in CONNTRACK")??;
    eprint!("filling CONNTRACK with {FILLED} connections ...");
    for i in 0..FILLED {
        table.insert(filler_key(&template_key, i), template, 0)?;
        if i % 100_000 == 0 {
            eprint!(".");
        }
    }
    eprintln!(" done");
    // LRU tables may evict before they are full: keep what stayed.
    let present: Vec<u32> = (0..FILLED)
        .filter(|&i| table.get(&filler_key(&template_key, i), 0).is_ok())
        .collect();
    Ok(present)
}

fn filler_key(
    template: &enforcer_common::conntrack::ConntrackKey,
    i: u32,
) -> enforcer_common::conntrack::ConntrackKey {
    enforcer_common::conntrack::ConntrackKey {
        peer_addr: enforcer_common::addr::from_ipv4(filler_peer(i)),
        pod_port: FILLER_POD_PORT,
        peer_port: FILLER_PEER_PORT,
        ..*template
    }
}

/// Distinct new connections measured per cell.
const NEW_CONNECTIONS: usize = 20_000;
const POD_PEER: [u8; 4] = [10, 244, 0, 3];
const WORLD_PEER: [u8; 4] = [203, 0, 113, 9];
const REFUSED_PEER: [u8; 4] = [198, 51, 100, 9];

/// An isolated endpoint with `entries` POLICY entries: one identity rule per label identity
/// (TCP 8080), the pod peer's identity among them, and a CIDR rule for 203.0.113.0/24 (or,
/// without `with_cidr_rule`, one more identity rule instead: then a known peer needs no
/// CIDRS lookup).
fn policy(entries: u32, with_cidr_rule: bool) -> Desired {
    let mut rules: Vec<Rule> = (0..entries.saturating_sub(1))
        .map(|i| Rule {
            id: i + 1,
            direction: Direction::Egress,
            peer: Peer::Identity(Identity(Identity::FIRST_LABELS + i)),
            protocol: Some(Protocol::Tcp),
            ports: Some(PortRange::single(8080)),
        })
        .collect();
    let world: ipnet::IpNet = "203.0.113.0/24".parse().expect("a CIDR");
    rules.push(Rule {
        id: entries,
        direction: Direction::Egress,
        peer: if with_cidr_rule {
            Peer::Cidr {
                net: world,
                except: vec![],
            }
        } else {
            Peer::Identity(Identity(Identity::FIRST_LABELS + entries))
        },
        protocol: Some(Protocol::Tcp),
        ports: Some(PortRange::single(8080)),
    });
    Desired {
        endpoints: [(LOOPBACK_IFINDEX, EndpointRules::isolated(rules))].into(),
        ipcache: [(POD_PEER.into(), Identity(Identity::FIRST_LABELS))].into(),
        cidrs: [(world, Identity(Identity::FIRST_CIDR))].into(),
        services: vec![],
    }
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Ethernet + IPv4 + TCP, padded to 64 bytes like a minimum frame.
fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    f
}

fn prog_fd(p: &SchedClassifier) -> Result<BorrowedFd<'_>> {
    Ok(p.fd()?.as_fd())
}

fn measure(fd: BorrowedFd<'_>, frame: &[u8]) -> Result<f64> {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        rounds.push(test_run(fd, frame, REPEAT)?.1);
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[ROUNDS / 2])
}

fn median_of(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn run_once(fd: BorrowedFd<'_>, frame: &[u8]) -> Result<u32> {
    Ok(test_run(fd, frame, 1)?.0)
}

/// BPF_PROG_TEST_RUN through the raw syscall (the empty program is not an aya program).
/// Returns the program's return value and the kernel's average duration in nanoseconds.
fn test_run(fd: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    #[repr(C)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
    }
    // Zeroed as a whole: the kernel rejects non-zero bytes past the fields it knows,
    // trailing padding included.
    // SAFETY: all-zero is a valid TestRunAttr.
    let mut attr: TestRunAttr = unsafe { std::mem::zeroed() };
    attr.prog_fd = fd.as_raw_fd() as u32;
    attr.data_size_in = frame.len() as u32;
    attr.data_in = frame.as_ptr() as u64;
    attr.repeat = repeat;
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_TEST_RUN; the kernel reads
    // `frame` (which outlives the call) and writes only into attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            10, // BPF_PROG_TEST_RUN
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    Ok((attr.retval, f64::from(attr.duration)))
}

/// `r0 = -1 (TC_ACT_UNSPEC / TCX_NEXT); exit`: the floor any TC program pays.
fn load_empty_program() -> Result<OwnedFd> {
    #[repr(C)]
    struct LoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    // mov64 r0, -1 ; exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let attr = LoadAttr {
        prog_type: 3, // BPF_PROG_TYPE_SCHED_CLS
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_LOAD; insns and license outlive
    // the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, // BPF_PROG_LOAD
            &attr as *const LoadAttr,
            size_of::<LoadAttr>(),
        )
    };
    if fd < 0 {
        bail!(
            "loading the empty program: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the kernel returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
