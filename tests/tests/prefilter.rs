//! The uplink prefilter for real: the XDP program run on crafted frames with
//! BPF_PROG_TEST_RUN (VLAN tags, IPv6, fragments, ICMP errors, replies recorded by
//! `prefilter_out`), and attached to a lab node's uplinks with real traffic: denied
//! external hosts cannot reach a pod, other hosts can, and connections a pod opens to a
//! denied host keep working because their replies are never dropped.
//!
//! Needs root; every test uses its own lab or bpffs folder (parallel-safe).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp};
use enforcer::{
    datapath::{
        self, EndpointSpec, Pins,
        prefilter::{self, XdpMode},
        rules::kernel_addr,
        tables::{Ipcache, PinnedTable, Table},
    },
    lab::state::{ExternalHost, Pod},
    netns,
};
use enforcer_common::{
    maps,
    policy::IpcacheValue,
    prefilter::{PrefilterCounter, UplinkKey, lifetime},
    proto,
};
use ipnet::IpNet;
use model::Mode;
use tests::{
    agent::Agent,
    frames::{self, L4},
    lab::TestLab,
    require_root, traffic,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const POD4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 2);
const DENIED4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const DENIED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x20);

fn deny_list() -> BTreeSet<IpNet> {
    ["203.0.113.0/24", "2001:db8:1::/48"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

fn syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let flags = 0x02;
    frames::frame(
        src,
        dst,
        L4::Tcp {
            src: sport,
            dst: dport,
            flags,
        },
        None,
    )
}

fn syn_ack(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    frames::frame(
        src,
        dst,
        L4::Tcp {
            src: sport,
            dst: dport,
            flags: 0x12,
        },
        None,
    )
}

/// `frame` with VLAN tags (outermost first) after the MAC addresses.
fn tagged(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for tpid in tpids {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&[0x00, 0x64]);
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// An IPv4 ICMP error (destination unreachable) from `router` to `dst`, quoting `quoted`
/// (an Ethernet frame as sent) from its IP header on.
fn icmp_error(router: Ipv4Addr, dst: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    let mut f = frames::frame(router.into(), dst.into(), L4::EchoRequest { id: 0 }, None);
    f.truncate(14 + 20);
    let mut icmp = vec![3, 1, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[14..14 + 20 + 8]);
    f.extend_from_slice(&icmp);
    let total = (20 + icmp.len()) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f
}

struct Kernel {
    pins: Pins,
    xdp: Xdp,
    out: SchedClassifier,
}

impl Kernel {
    fn run_xdp(&self, frame: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        };
        self.xdp.test_run(opts).unwrap().return_value
    }

    /// A frame leaving through the uplink (`prefilter_out` never changes its fate).
    fn send(&self, frame: &[u8]) {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        };
        assert_eq!(
            self.out.test_run(opts).unwrap().return_value,
            u32::MAX,
            "TCX_NEXT"
        );
    }

    fn rule_drops(&self) -> Vec<(IpNet, u64)> {
        prefilter::status(&self.pins)
            .unwrap()
            .rules
            .into_iter()
            .map(|r| (r.net, r.dropped))
            .collect()
    }

    fn counter(&self, which: PrefilterCounter) -> u64 {
        prefilter::counters(&self.pins)
            .unwrap()
            .into_iter()
            .find(|(c, _)| *c == which)
            .unwrap()
            .1
    }
}

#[test]
fn the_prefilter_drops_denied_sources_and_passes_replies() {
    require_root!();
    let pins = Pins::new(format!("/sys/fs/bpf/palisade-pf-{}", tests::unique_id()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_frames(&pins)));
    datapath::uninstall(&pins).unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn run_frames(pins: &Pins) {
    drop(datapath::install(pins).unwrap());
    let k = Kernel {
        pins: pins.clone(),
        xdp: prefilter::program(pins).unwrap(),
        out: prefilter::egress_program(pins).unwrap(),
    };
    let (pod4, pod6) = (IpAddr::V4(POD4), IpAddr::V6(POD6));
    let (denied4, denied6) = (IpAddr::V4(DENIED4), IpAddr::V6(DENIED6));
    let (other4, other6) = (IpAddr::V4(OTHER4), IpAddr::V6(OTHER6));

    // Nothing denied yet.
    assert_eq!(k.run_xdp(&syn(denied4, pod4, 40000, 8080)), XDP_PASS);

    let change = prefilter::set(pins, &deny_list()).unwrap();
    assert_eq!(change.added.len(), 2);
    let mut drops = 0;
    let mut check = |frame: &[u8], expected: u32, what: &str| {
        assert_eq!(k.run_xdp(frame), expected, "{what}");
        if expected == XDP_DROP {
            drops += 1;
        }
    };

    // Sources, with and without VLAN tags, both families.
    let from_denied = syn(denied4, pod4, 40000, 8080);
    check(&from_denied, XDP_DROP, "denied IPv4 source");
    check(&tagged(&from_denied, &[0x8100]), XDP_DROP, "802.1Q tag");
    check(
        &tagged(&from_denied, &[0x88a8, 0x8100]),
        XDP_DROP,
        "802.1ad + 802.1Q",
    );
    check(
        &syn(other4, pod4, 40000, 8080),
        XDP_PASS,
        "other IPv4 source",
    );
    check(
        &syn(denied6, pod6, 40000, 8080),
        XDP_DROP,
        "denied IPv6 source",
    );
    check(
        &syn(other6, pod6, 40000, 8080),
        XDP_PASS,
        "other IPv6 source",
    );
    let mapped: IpAddr = "::ffff:203.0.113.10".parse().unwrap();
    check(
        &syn(mapped, pod6, 40000, 8080),
        XDP_PASS,
        "an IPv6 source is never matched by an IPv4 CIDR",
    );
    check(
        &syn(pod4, denied4, 8080, 40000),
        XDP_PASS,
        "only the source is matched",
    );
    let mut truncated = from_denied[..14 + 10].to_vec();
    truncated[14] = 0x45;
    check(&truncated, XDP_PASS, "no source address: left to the stack");
    let mut arp = from_denied.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    check(&arp, XDP_PASS, "ARP");

    // Replies of connections that went out through the uplink.
    k.send(&syn(pod4, denied4, 41000, 443));
    check(
        &syn_ack(denied4, pod4, 443, 41000),
        XDP_PASS,
        "reply of a recorded IPv4 connection",
    );
    check(
        &syn_ack(denied4, pod4, 443, 41001),
        XDP_DROP,
        "another port: not a reply",
    );
    check(
        &syn(denied4, pod4, 41000, 443),
        XDP_DROP,
        "the same ports the other way round: the world side opening",
    );
    // The same key whichever way `prefilter_out` reads a frame: a tagged one goes through
    // the full parser, a plain one is read directly.
    k.send(&tagged(&syn(pod4, denied4, 41500, 443), &[0x8100]));
    check(
        &syn_ack(denied4, pod4, 443, 41500),
        XDP_PASS,
        "reply of a connection the parser recorded",
    );
    k.send(&syn(pod6, denied6, 41000, 443));
    check(
        &syn_ack(denied6, pod6, 443, 41000),
        XDP_PASS,
        "reply of a recorded IPv6 connection",
    );

    // Related ICMP errors, from a router inside the denied CIDR.
    let router = Ipv4Addr::new(203, 0, 113, 1);
    check(
        &icmp_error(router, POD4, &syn(pod4, denied4, 41000, 443)),
        XDP_PASS,
        "ICMP error about a recorded connection",
    );
    check(
        &icmp_error(router, POD4, &syn(pod4, denied4, 42000, 443)),
        XDP_DROP,
        "ICMP error about an unknown connection",
    );

    // ICMP echo: the reply of a pod's ping passes, an unsolicited ping does not.
    let request = frames::frame(pod4, denied4, L4::EchoRequest { id: 77 }, None);
    k.send(&request);
    let mut reply = frames::frame(denied4, pod4, L4::EchoRequest { id: 77 }, None);
    reply[14 + 20] = 0; // echo reply
    check(&reply, XDP_PASS, "echo reply");
    check(
        &frames::frame(denied4, pod4, L4::EchoRequest { id: 78 }, None),
        XDP_DROP,
        "unsolicited echo request",
    );

    // Fragments: later fragments follow the first fragment of a reply.
    k.send(&frames::frame(
        pod4,
        denied4,
        L4::Udp { src: 5000, dst: 53 },
        None,
    ));
    let first = frames::frame(
        denied4,
        pod4,
        L4::Udp { src: 53, dst: 5000 },
        Some((true, 0)),
    );
    check(&first, XDP_PASS, "first fragment of a reply");
    let later = frames::frame(
        denied4,
        pod4,
        L4::Udp { src: 0, dst: 0 },
        Some((false, 185)),
    );
    check(&later, XDP_PASS, "later fragment of the reply's datagram");
    let mut stray = later.clone();
    stray[14 + 4..14 + 6].copy_from_slice(&0x4321u16.to_be_bytes());
    check(&stray, XDP_DROP, "later fragment of an unknown datagram");

    // A recorded connection idle for longer than its lifetime is no longer one.
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let now_ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
    let idle = UplinkKey::outgoing(
        kernel_addr(pod4),
        kernel_addr(denied4),
        6000,
        53,
        proto::UDP,
    );
    let mut allowed = PinnedTable::<UplinkKey, u64>::open(pins, maps::UPLINK_ALLOWED).unwrap();
    allowed
        .set(idle, now_ns.saturating_sub(lifetime::OTHER + 5_000_000_000))
        .unwrap();
    let stale_reply = frames::frame(denied4, pod4, L4::Udp { src: 53, dst: 6000 }, None);
    check(&stale_reply, XDP_DROP, "reply after the connection expired");
    allowed.set(idle, now_ns).unwrap();
    check(&stale_reply, XDP_PASS, "reply of the refreshed connection");

    // Sources the cluster knows are never external.
    let known = Ipv4Addr::new(203, 0, 113, 99);
    Ipcache::open_ipcache(pins)
        .unwrap()
        .set(
            kernel_addr(known.into()),
            IpcacheValue {
                identity: 300,
                flags: 0,
            },
        )
        .unwrap();
    check(
        &syn(known.into(), pod4, 40000, 8080),
        XDP_PASS,
        "a cluster address",
    );

    // IPv6 neighbour discovery from a denied neighbour passes (like ARP).
    let mut advert = frames::frame(denied6, pod6, L4::EchoRequest { id: 0 }, None);
    advert[14 + 40] = 136;
    check(&advert, XDP_PASS, "neighbour advertisement");

    // Counted per rule: 9 IPv4 drops, 1 IPv6 drop.
    let expected_drops = drops;
    assert_eq!(
        k.rule_drops(),
        [
            ("203.0.113.0/24".parse().unwrap(), expected_drops - 1),
            ("2001:db8:1::/48".parse().unwrap(), 1),
        ]
    );
    assert_eq!(k.counter(PrefilterCounter::Dropped), expected_drops);
    assert_eq!(k.counter(PrefilterCounter::Replies), 7);
    assert_eq!(k.counter(PrefilterCounter::Fragments), 1);
    assert_eq!(k.counter(PrefilterCounter::Cluster), 1);
    assert_eq!(k.counter(PrefilterCounter::Neighbours), 1);
    assert_eq!(k.counter(PrefilterCounter::Recorded), 5);

    // Removing a CIDR lets its sources through again and forgets its counter.
    let change = prefilter::set(
        pins,
        &["2001:db8:1::/48".parse().unwrap()].into_iter().collect(),
    )
    .unwrap();
    assert_eq!(change.removed, ["203.0.113.0/24".parse::<IpNet>().unwrap()]);
    assert_eq!(k.run_xdp(&from_denied), XDP_PASS);
    assert_eq!(
        k.rule_drops(),
        [("2001:db8:1::/48".parse().unwrap(), 1)],
        "the kept rule keeps its counter"
    );

    // A rule that never dropped anything has no counter to forget: removing it works too.
    let never: IpNet = "192.0.2.0/24".parse().unwrap();
    let with_never = ["2001:db8:1::/48".parse().unwrap(), never].into();
    assert_eq!(prefilter::set(pins, &with_never).unwrap().added, [never]);
    let cleared = prefilter::set(pins, &BTreeSet::new()).unwrap();
    assert_eq!(cleared.removed.len(), 2);
    assert!(prefilter::denied(pins).unwrap().is_empty());
    assert!(k.rule_drops().is_empty());
}

const TOPOLOGY: &str = r#"
namespaces: [{name: t}]
pods:
  - name: t/a
    ports: [{port: 8080}]
externals:
  - name: denied.example.com
    addresses: [203.0.113.10, "2001:db8:1::10"]
    ports: [{port: 443}, {port: 53, protocol: UDP}]
  - name: other.example.com
    addresses: [198.51.100.20, "2001:db8:2::20"]
    ports: [{port: 443}]
"#;

/// A lab node with the agent running, its pod attached (enforce mode, no rules: open both
/// ways) and the prefilter on the node side of both external hosts' veths, which play the
/// node's uplinks. Generic XDP (`Skb`) is what veths should get (native XDP slows their
/// TCP down, see DESIGN.md); `Native` runs the driver path a physical uplink would use.
struct Node {
    // Field order is drop order: the agent stops before the lab is torn down.
    agent: Option<Agent>,
    _dir: tempfile::TempDir,
    lab: TestLab,
    pod: Pod,
    denied: ExternalHost,
    other: ExternalHost,
}

impl Node {
    fn up(mode: XdpMode) -> Self {
        let lab = TestLab::up(TOPOLOGY);
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start(
            &lab.node_netns(),
            &lab.bpffs_root(),
            dir.path(),
            &["--stats-interval", "0"],
        )
        .unwrap();
        let node = Self {
            agent: Some(agent),
            _dir: dir,
            pod: lab.pod("t/a").unwrap().clone(),
            denied: lab.external("denied.example.com").unwrap().clone(),
            other: lab.external("other.example.com").unwrap().clone(),
            lab,
        };
        let spec = EndpointSpec {
            interface: node.pod.host_interface.clone(),
            ipv4: Some(node.pod.ipv4),
            ipv6: Some(node.pod.ipv6),
            mode: Mode::Enforce,
            isolated: false,
        };
        let pins = node.lab.pins();
        node.in_node(|| datapath::attach(&pins, &spec)).unwrap();
        for uplink in [&node.denied.host_interface, &node.other.host_interface] {
            node.in_node(|| prefilter::attach(&pins, uplink, mode))
                .unwrap();
            let shown = node.link_show(uplink);
            let expected = match mode {
                XdpMode::Skb => "xdpgeneric ",
                _ => "xdp ",
            };
            assert!(shown.contains(expected), "{shown}");
        }
        node
    }

    /// Kill the agent (as in a crash) and start it again: it loads the programs afresh and
    /// switches the pinned links to them.
    fn restart_agent(&mut self) {
        self.agent.take().expect("agent running").kill();
        let agent = Agent::start(
            &self.lab.node_netns(),
            &self.lab.bpffs_root(),
            self._dir.path(),
            &["--stats-interval", "0"],
        )
        .unwrap();
        self.agent = Some(agent);
    }

    /// The ids of the XDP program and the egress TCX programs on `interface`.
    fn programs_on(&self, interface: &str) -> (String, Vec<u32>) {
        let shown = self.link_show(interface);
        let xdp = shown
            .split_once("prog/xdp id ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no XDP program on {interface}: {shown}"))
            .to_owned();
        let egress = self
            .in_node(|| SchedClassifier::query_tcx(interface, TcAttachType::Egress))
            .unwrap()
            .1
            .iter()
            .map(|p| p.id())
            .collect();
        (xdp, egress)
    }

    fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(&self.lab.node_netns(), f).unwrap()
    }

    fn set(&self, list: &BTreeSet<IpNet>) -> prefilter::Change {
        let pins = self.lab.pins();
        self.in_node(|| prefilter::set(&pins, list)).unwrap()
    }

    /// Run a command in the node's namespace; it must succeed.
    fn exec_node(&self, argv: &[&str]) -> String {
        let out = self.lab.exec("node", argv).unwrap();
        assert!(out.status.success(), "{argv:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn link_show(&self, interface: &str) -> String {
        self.exec_node(&["ip", "-d", "link", "show", "dev", interface])
    }

    /// The node forgets its neighbour entries for the denied host: resolving the host
    /// again means its neighbour advertisements, from a denied address, must get through.
    fn flush_neighbours(&self) {
        self.exec_node(&["ip", "neigh", "flush", "dev", &self.denied.host_interface]);
    }

    fn pod_addr(&self, family: u8, port: u16) -> SocketAddr {
        let ip: IpAddr = if family == 4 {
            self.pod.ipv4.into()
        } else {
            self.pod.ipv6.into()
        };
        SocketAddr::new(ip, port)
    }

    /// Connections the pod opens to the denied host (TCP, UDP, ping) all work.
    fn pod_reaches_denied(&self, family: u8, port: &mut u16) {
        *port += 1;
        let payload = b"reply must pass";
        let echo = traffic::tcp_echo(
            &self.pod.netns,
            *port,
            ext_addr(&self.denied, family, 443),
            payload,
        )
        .unwrap_or_else(|e| panic!("IPv{family} TCP from the pod: {e}"));
        assert_eq!(echo, payload, "IPv{family} TCP");
        *port += 1;
        let echoed = traffic::udp_echo(
            &self.pod.netns,
            *port,
            ext_addr(&self.denied, family, 53),
            3,
            64,
        )
        .unwrap();
        assert_eq!(echoed, 3, "IPv{family} UDP from the pod");
        let ping_family = if family == 4 { "-4" } else { "-6" };
        let target = ext_addr(&self.denied, family, 0).ip().to_string();
        let ping = self
            .lab
            .exec(
                "t/a",
                &[
                    "ping",
                    ping_family,
                    "-c",
                    "2",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    &target,
                ],
            )
            .unwrap();
        assert!(
            ping.status.success(),
            "IPv{family} ping from the pod: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }
}

fn ext_addr(host: &ExternalHost, family: u8, port: u16) -> SocketAddr {
    let ip = *host
        .addresses
        .iter()
        .find(|a| a.is_ipv4() == (family == 4))
        .unwrap();
    SocketAddr::new(ip, port)
}

#[test]
fn a_lab_uplink_drops_denied_hosts_but_not_replies_to_the_pod() {
    require_root!();
    let mut node = Node::up(XdpMode::Skb);
    let pins = node.lab.pins();
    // Attaching again changes nothing.
    node.in_node(|| prefilter::attach(&pins, &node.denied.host_interface, XdpMode::Skb))
        .unwrap();

    // Before anything is denied, both hosts reach the pod; the pod opens a connection to
    // the soon-denied host that stays open throughout.
    for family in [4, 6] {
        assert!(traffic::tcp_connects(
            &node.denied.netns,
            node.pod_addr(family, 8080)
        ));
        assert!(traffic::tcp_connects(
            &node.other.netns,
            node.pod_addr(family, 8080)
        ));
    }
    let mut session =
        traffic::TcpSession::open(&node.pod.netns, ext_addr(&node.denied, 4, 443)).unwrap();
    session.echo(b"before").unwrap();

    let change = node.set(&deny_list());
    assert_eq!(change.added.len(), 2);
    node.flush_neighbours();

    let mut port = 45_000;
    for family in [4, 6] {
        assert!(
            !traffic::tcp_connects(&node.denied.netns, node.pod_addr(family, 8080)),
            "IPv{family}: the denied host reached the pod"
        );
        assert!(
            traffic::tcp_connects(&node.other.netns, node.pod_addr(family, 8080)),
            "IPv{family}: the other host no longer reaches the pod"
        );
        node.pod_reaches_denied(family, &mut port);
    }
    session
        .echo(b"after")
        .expect("the connection opened before the deny keeps working");

    // An agent restart switches both links to the newly loaded programs, with no gap.
    let before = node.programs_on(&node.denied.host_interface);
    node.restart_agent();
    let after = node.programs_on(&node.denied.host_interface);
    assert_ne!(before.0, after.0, "XDP link not upgraded");
    assert_eq!(after.1.len(), 1, "one prefilter_out on egress: {after:?}");
    assert_ne!(before.1, after.1, "egress link not upgraded");
    assert!(!traffic::tcp_connects(
        &node.denied.netns,
        node.pod_addr(4, 8080)
    ));
    node.pod_reaches_denied(4, &mut port);
    session
        .echo(b"after a restart")
        .expect("the connection survives the agent's restart");

    let status = node.in_node(|| prefilter::status(&pins)).unwrap();
    assert_eq!(status.uplinks.len(), 2, "{status}");
    assert!(
        status
            .uplinks
            .iter()
            .all(|u| u.xdp && u.egress && u.interface.is_some()),
        "{status}"
    );
    for rule in &status.rules {
        assert!(rule.dropped > 0, "{} dropped nothing:\n{status}", rule.net);
    }
    let counter = |which| status.counters.iter().find(|(c, _)| *c == which).unwrap().1;
    assert!(counter(PrefilterCounter::Replies) > 0, "{status}");
    assert!(counter(PrefilterCounter::Neighbours) > 0, "{status}");

    // Removing the CIDRs restores the denied host's access.
    let change = node.set(&BTreeSet::new());
    assert_eq!(change.removed.len(), 2);
    for family in [4, 6] {
        assert!(
            traffic::tcp_connects(&node.denied.netns, node.pod_addr(family, 8080)),
            "IPv{family}: still dropped after the list was cleared"
        );
    }

    // Detaching one uplink removes both its programs, at once; attaching it again right
    // away works (an XDP hook still held by the old link would refuse).
    node.in_node(|| prefilter::detach(&pins, &node.other.host_interface))
        .unwrap();
    assert!(!node.link_show(&node.other.host_interface).contains("xdp"));
    assert_eq!(egress_programs(&node, &node.other.host_interface), 0);
    node.in_node(|| prefilter::attach(&pins, &node.other.host_interface, XdpMode::Skb))
        .unwrap();
    assert!(
        node.link_show(&node.other.host_interface)
            .contains("xdpgeneric")
    );
    assert_eq!(egress_programs(&node, &node.other.host_interface), 1);

    // Uninstall (agent stopped first, as the CLI asks) removes the XDP and TCX links. It
    // only removes pins: the kernel frees the links a moment later (after an RCU grace
    // period, from a work queue).
    drop(node.agent.take());
    datapath::uninstall(&pins).unwrap();
    let uplink = &node.denied.host_interface;
    let deadline = Instant::now() + Duration::from_secs(3);
    while (node.link_show(uplink).contains("xdp") || egress_programs(&node, uplink) > 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let shown = node.link_show(uplink);
    assert!(!shown.contains("xdp"), "{shown}");
    assert_eq!(
        egress_programs(&node, uplink),
        0,
        "prefilter_out still attached"
    );
}

/// TCX programs on the egress of `interface` in the node's namespace.
fn egress_programs(node: &Node, interface: &str) -> usize {
    node.in_node(|| SchedClassifier::query_tcx(interface, TcAttachType::Egress))
        .unwrap()
        .1
        .len()
}

#[test]
fn replies_of_masqueraded_connections_pass() {
    require_root!();
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: needs nft (nftables) to masquerade");
        return;
    }
    // The driver path this time (veths have native XDP too).
    let node = Node::up(XdpMode::Native);
    // What leaves towards the denied host is masqueraded to the node's own addresses, as
    // most clusters do with pod egress to the world: replies come back to the node's
    // address, which neither from_pod nor CONNTRACK knows.
    let uplink = node.denied.host_interface.as_str();
    for family in ["ip", "ip6"] {
        node.exec_node(&["nft", "add", "table", family, "palisade_nat"]);
        node.exec_node(&[
            "nft",
            "add",
            "chain",
            family,
            "palisade_nat",
            "post",
            "{ type nat hook postrouting priority srcnat; }",
        ]);
        node.exec_node(&[
            "nft",
            "add",
            "rule",
            family,
            "palisade_nat",
            "post",
            "oifname",
            uplink,
            "counter",
            "masquerade",
        ]);
    }
    node.set(&deny_list());
    node.flush_neighbours();

    let mut port = 46_000;
    for family in [4, 6] {
        node.pod_reaches_denied(family, &mut port);
    }

    // The connections were recorded as the reply sees them: from the node's addresses.
    let recorded = PinnedTable::<UplinkKey, u64>::open(&node.lab.pins(), maps::UPLINK_ALLOWED)
        .unwrap()
        .entries()
        .unwrap();
    for (family, node_ip) in [
        (4, IpAddr::from(Ipv4Addr::new(169, 254, 1, 1))),
        (6, "fd00:10:244::1".parse().unwrap()),
    ] {
        let denied = kernel_addr(ext_addr(&node.denied, family, 0).ip());
        let locals: BTreeSet<IpAddr> = recorded
            .iter()
            .filter(|(k, _)| k.remote == denied && k.protocol == proto::TCP)
            .map(|(k, _)| enforcer::datapath::rules::ip_from_kernel(&k.local))
            .collect();
        assert_eq!(
            locals,
            [node_ip].into(),
            "IPv{family}: recorded as masqueraded"
        );
    }
    let counters = node.exec_node(&["nft", "list", "chain", "ip", "palisade_nat", "post"]);
    assert!(!counters.contains("packets 0 "), "{counters}");
}
