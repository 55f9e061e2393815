//! The datapath for real: the programs loaded by aya into this kernel, attached to the
//! veths of a lab node, judging real TCP, UDP and ICMP between network namespaces, and the
//! agent's flow records and the kernel's counters checked against what was sent.
//!
//! Needs root; every test builds its own lab under a unique name (parallel-safe).

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use enforcer::{
    datapath::{
        self, EndpointSpec, rules, stats,
        tables::Endpoints,
        writer::{Desired, PinnedWriter},
    },
    lab::state::Pod,
    netns,
};
use model::{
    Direction, FlowKind, FlowRecord, Mode, Protocol, Reason, Verdict,
    identity::Identity,
    rules::{EndpointRules, Peer, PortRange, Rule, Service, ServicePort},
};
use tests::{agent::Agent, lab::TestLab, require_root, traffic};

const TOPOLOGY: &str = r#"
namespaces: [{name: t}]
pods:
  - name: t/a
    ports: [{port: 8080}, {port: 5353, protocol: UDP}]
  - name: t/b
    labels: {app: web}
    ports: [{port: 8080}, {port: 5353, protocol: UDP}]
services:
  - name: web
    namespace: t
    selector: {app: web}
    ports: [{port: 80, targetPort: 8080}]
externals:
  - name: ext.example.com
    addresses: [203.0.113.10, "2001:db8::10"]
    ports: [{port: 443}, {port: 53, protocol: UDP}]
  - name: resolver
    addresses: [198.51.100.53]
"#;

/// A lab node with the agent running and both pods attached in `mode`.
struct Node {
    // Field order is drop order: the agent stops before the lab is torn down.
    agent: Option<Agent>,
    dir: tempfile::TempDir,
    lab: TestLab,
}

impl Node {
    fn up(mode: Mode) -> Self {
        Self::up_with(mode, &["--stats-interval", "0"])
    }

    /// With the agent started with `agent_args`.
    fn up_with(mode: Mode, agent_args: &[&str]) -> Self {
        let lab = TestLab::up(TOPOLOGY);
        let dir = tempfile::tempdir().unwrap();
        let mut node = Self {
            agent: None,
            dir,
            lab,
        };
        node.start_agent_with(agent_args);
        for pod in ["t/a", "t/b"] {
            node.attach(pod, mode);
        }
        node
    }

    fn start_agent(&mut self) {
        self.start_agent_with(&["--stats-interval", "0"]);
    }

    fn start_agent_with(&mut self, args: &[&str]) {
        let agent = Agent::start(
            &self.lab.node_netns(),
            &self.lab.bpffs_root(),
            self.dir.path(),
            args,
        )
        .unwrap();
        self.agent = Some(agent);
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    fn pod(&self, name: &str) -> &Pod {
        self.lab.pod(name).unwrap()
    }

    fn attach(&self, pod: &str, mode: Mode) {
        let pod = self.pod(pod);
        let spec = EndpointSpec {
            interface: pod.host_interface.clone(),
            ipv4: Some(pod.ipv4),
            ipv6: Some(pod.ipv6),
            mode,
            isolated: false,
        };
        let pins = self.lab.pins();
        netns::run_in(&self.lab.node_netns(), || datapath::attach(&pins, &spec))
            .unwrap()
            .unwrap();
    }

    /// Run `f` with the pod's endpoint ifindex, inside the node namespace.
    fn on_endpoint<T: Send>(&self, pod: &str, f: impl FnOnce(u32) -> T + Send) -> T {
        let interface = self.pod(pod).host_interface.clone();
        netns::run_in(&self.lab.node_netns(), || {
            f(datapath::attach::ifindex_of(&interface).unwrap())
        })
        .unwrap()
    }

    /// Give the pods identities (a: 300, b: 301, the node's addresses: host) and set the
    /// rules of one pod.
    fn set_rules(&self, pod: &str, rules: EndpointRules) {
        self.set_rules_and_services(pod, rules, vec![]);
    }

    fn set_rules_and_services(&self, pod: &str, rules: EndpointRules, services: Vec<Service>) {
        let mut desired = Desired {
            services,
            ..Desired::default()
        };
        for (name, id) in [("t/a", A_ID), ("t/b", B_ID)] {
            let p = self.pod(name);
            desired.ipcache.insert(p.ipv4.into(), id);
            desired.ipcache.insert(p.ipv6.into(), id);
        }
        for node_addr in ["169.254.1.1", "fd00:10:244::1"] {
            desired
                .ipcache
                .insert(node_addr.parse().unwrap(), Identity::HOST);
        }
        let pins = self.lab.pins();
        self.on_endpoint(pod, |ifindex| {
            desired.endpoints.insert(ifindex, rules);
            PinnedWriter::open(&pins).unwrap().apply(&desired).unwrap();
        });
    }

    fn set_mode(&self, pod: &str, mode: Mode) {
        let pins = self.lab.pins();
        self.on_endpoint(pod, |ifindex| {
            rules::set_mode(
                &mut Endpoints::open_endpoints(&pins).unwrap(),
                ifindex,
                mode,
            )
            .unwrap();
        });
    }

    /// TCX programs attached to the pod's interface, per hook (ingress, egress).
    fn attached_programs(&self, pod: &str) -> (Vec<u32>, Vec<u32>) {
        let interface = self.pod(pod).host_interface.clone();
        netns::run_in(&self.lab.node_netns(), || {
            let ids = |hook| {
                SchedClassifier::query_tcx(&interface, hook)
                    .unwrap()
                    .1
                    .iter()
                    .map(|p| p.id())
                    .collect::<Vec<_>>()
            };
            (ids(TcAttachType::Ingress), ids(TcAttachType::Egress))
        })
        .unwrap()
    }
}

fn ext(family: u8) -> IpAddr {
    if family == 4 {
        "203.0.113.10".parse().unwrap()
    } else {
        "2001:db8::10".parse().unwrap()
    }
}

fn addr(pod: &Pod, family: u8) -> IpAddr {
    if family == 4 {
        pod.ipv4.into()
    } else {
        pod.ipv6.into()
    }
}

/// New-connection records of one 5-tuple on one interface.
fn new_records<'a>(
    records: &'a [FlowRecord],
    interface: &str,
    protocol: Protocol,
    local: IpAddr,
    remote: IpAddr,
) -> Vec<&'a FlowRecord> {
    records
        .iter()
        .filter(|r| {
            r.kind == FlowKind::New
                && r.interface == interface
                && r.protocol == protocol
                && r.local.ip == local
                && r.remote.ip == remote
        })
        .collect()
}

/// Wait until `expected` (interface, local, remote) new-connection records are there, then
/// a little longer so that a duplicate would show.
fn settle(
    agent: &Agent,
    protocol: Protocol,
    expected: &[(&str, IpAddr, IpAddr)],
) -> Vec<FlowRecord> {
    let all_there = |records: &[FlowRecord]| {
        expected
            .iter()
            .all(|(i, l, r)| !new_records(records, i, protocol, *l, *r).is_empty())
    };
    agent.wait_records(Duration::from_secs(5), all_there);
    std::thread::sleep(Duration::from_millis(300));
    agent.records()
}

#[test]
fn one_flow_event_per_connection_per_endpoint_with_exact_counters() {
    require_root!();
    let node = Node::up(Mode::Enforce);
    let (a, b) = (node.pod("t/a"), node.pod("t/b"));
    let pins = node.lab.pins();
    let mut port = 40_000;
    for family in [4u8, 6] {
        let (a_ip, b_ip, ext_ip) = (addr(a, family), addr(b, family), ext(family));

        // TCP pod -> pod: both endpoints see it, each once.
        port += 1;
        let payload = b"palisade datapath test";
        let echo = traffic::tcp_echo(&a.netns, port, SocketAddr::new(b_ip, 8080), payload).unwrap();
        assert_eq!(echo, payload);
        let records = settle(
            node.agent(),
            Protocol::Tcp,
            &[
                (&a.host_interface, a_ip, b_ip),
                (&b.host_interface, b_ip, a_ip),
            ],
        );
        let out = new_records(&records, &a.host_interface, Protocol::Tcp, a_ip, b_ip);
        let inn = new_records(&records, &b.host_interface, Protocol::Tcp, b_ip, a_ip);
        assert_eq!(
            (out.len(), inn.len()),
            (1, 1),
            "IPv{family} TCP: {records:#?}"
        );
        assert_eq!((out[0].local.port, out[0].remote.port), (port, 8080));
        assert_eq!(out[0].direction, Direction::Egress);
        assert_eq!((inn[0].local.port, inn[0].remote.port), (8080, port));
        assert_eq!(inn[0].direction, Direction::Ingress);
        assert!(out.iter().chain(&inn).all(|r| r.verdict == Verdict::Allow));
        assert_eq!(out[0].local.pod.as_deref(), None, "no names file given");

        // UDP pod -> external host: only the pod's endpoint sees it.
        port += 1;
        let (count, size) = (5, 100);
        let echoed =
            traffic::udp_echo(&a.netns, port, SocketAddr::new(ext_ip, 53), count, size).unwrap();
        assert_eq!(echoed, count);
        let records = settle(
            node.agent(),
            Protocol::Udp,
            &[(&a.host_interface, a_ip, ext_ip)],
        );
        let seen: Vec<_> = records
            .iter()
            .filter(|r| {
                r.kind == FlowKind::New && r.remote.ip == ext_ip && r.protocol == Protocol::Udp
            })
            .collect();
        assert_eq!(seen.len(), 1, "IPv{family} UDP to external: {seen:#?}");
        assert_eq!(seen[0].interface, a.host_interface);
        assert_eq!((seen[0].local.port, seen[0].remote.port), (port, 53));

        // Counters: L2 frame bytes of exactly what was sent and echoed.
        let frame = size as u64 + 8 + if family == 4 { 20 } else { 40 } + 14;
        let entries = stats::conntrack(&pins).unwrap();
        let (_, ct) = entries
            .iter()
            .find(|(k, _)| {
                rules::ip_from_kernel(&k.peer_addr) == ext_ip.to_canonical()
                    && k.pod_port == port
                    && k.protocol == 17
            })
            .expect("conntrack entry of the UDP exchange");
        assert_eq!(
            (
                ct.packets_from_pod,
                ct.bytes_from_pod,
                ct.packets_to_pod,
                ct.bytes_to_pod
            ),
            (
                count as u64,
                count as u64 * frame,
                count as u64,
                count as u64 * frame
            ),
            "IPv{family} UDP counters"
        );

        // ICMP echo pod -> pod: one conversation, both endpoints, exact counters.
        let ping_family = if family == 4 { "-4" } else { "-6" };
        let out = node
            .lab
            .exec(
                "t/a",
                &[
                    "ping",
                    ping_family,
                    "-c",
                    "3",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    &b_ip.to_string(),
                ],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let icmp = if family == 4 {
            Protocol::Icmp
        } else {
            Protocol::Icmpv6
        };
        let records = settle(
            node.agent(),
            icmp,
            &[
                (&a.host_interface, a_ip, b_ip),
                (&b.host_interface, b_ip, a_ip),
            ],
        );
        let out = new_records(&records, &a.host_interface, icmp, a_ip, b_ip);
        let inn = new_records(&records, &b.host_interface, icmp, b_ip, a_ip);
        assert_eq!(
            (out.len(), inn.len()),
            (1, 1),
            "IPv{family} ICMP: {records:#?}"
        );
        assert_eq!(
            (out[0].direction, inn[0].direction),
            (Direction::Egress, Direction::Ingress)
        );
        let frame = 56 + 8 + if family == 4 { 20 } else { 40 } + 14;
        let entries = stats::conntrack(&pins).unwrap();
        let icmp_entry = |endpoint_pod: &Pod, peer: IpAddr| {
            entries
                .iter()
                .find(|(k, _)| {
                    k.protocol == icmp.number()
                        && rules::ip_from_kernel(&k.pod_addr)
                            == addr(endpoint_pod, family).to_canonical()
                        && rules::ip_from_kernel(&k.peer_addr) == peer.to_canonical()
                })
                .map(|(_, v)| {
                    (
                        v.packets_from_pod,
                        v.bytes_from_pod,
                        v.packets_to_pod,
                        v.bytes_to_pod,
                    )
                })
                .expect("ICMP conntrack entry")
        };
        assert_eq!(
            icmp_entry(a, b_ip),
            (3, 3 * frame, 3, 3 * frame),
            "IPv{family} ICMP at a"
        );
        assert_eq!(
            icmp_entry(b, a_ip),
            (3, 3 * frame, 3, 3 * frame),
            "IPv{family} ICMP at b"
        );
    }
}

const A_ID: Identity = Identity(300);
const B_ID: Identity = Identity(301);

fn rule(id: u32, direction: Direction, peer: Peer, protocol: Protocol, port: u16) -> Rule {
    Rule {
        id,
        direction,
        peer,
        protocol: Some(protocol),
        ports: Some(PortRange::single(port)),
    }
}

/// a may open TCP 8080 to b, and b may send UDP 5353 to a; nothing else, either way.
fn a_rules() -> EndpointRules {
    EndpointRules::isolated(vec![
        rule(
            11,
            Direction::Egress,
            Peer::Identity(B_ID),
            Protocol::Tcp,
            8080,
        ),
        rule(
            12,
            Direction::Ingress,
            Peer::Identity(B_ID),
            Protocol::Udp,
            5353,
        ),
    ])
}

#[test]
fn isolated_endpoints_pass_only_what_a_rule_allows_in_each_direction() {
    require_root!();
    let node = Node::up(Mode::Enforce);
    let (a, b) = (node.pod("t/a"), node.pod("t/b"));
    node.set_rules("t/a", a_rules());
    let udp = |from: &Pod, to: IpAddr, port| {
        traffic::udp_echo(&from.netns, port, SocketAddr::new(to, 5353), 2, 32).unwrap()
    };
    for family in [4u8, 6] {
        let (a_ip, b_ip) = (addr(a, family), addr(b, family));
        let tag = format!("IPv{family}");
        assert!(
            traffic::tcp_connects(&a.netns, SocketAddr::new(b_ip, 8080)),
            "{tag} rule 11"
        );
        assert_eq!(udp(b, a_ip, 41_000 + u16::from(family)), 2, "{tag} rule 12");
        assert!(
            !traffic::tcp_connects(&b.netns, SocketAddr::new(a_ip, 8080)),
            "{tag} ingress TCP"
        );
        assert_eq!(
            udp(a, b_ip, 41_100 + u16::from(family)),
            0,
            "{tag} egress UDP"
        );
        assert!(
            !traffic::tcp_connects(&a.netns, SocketAddr::new(ext(family), 443)),
            "{tag} world"
        );
    }
    // The pod's own node always reaches it (kubelet probes), isolated or not.
    assert!(traffic::tcp_connects(
        &node.lab.node_netns(),
        SocketAddr::new(a.ipv4.into(), 8080)
    ));

    let records = node.agent().wait_records(Duration::from_secs(5), |rs| {
        rs.iter().filter(|r| r.verdict == Verdict::Deny).count() >= 6
            && rs.iter().any(|r| r.reason == Some(Reason::Host))
    });
    let on_a = |verdict, reason| {
        records
            .iter()
            .filter(|r| {
                r.interface == a.host_interface && r.verdict == verdict && r.reason == Some(reason)
            })
            .collect::<Vec<_>>()
    };
    let allowed = on_a(Verdict::Allow, Reason::Rule);
    assert!(
        allowed
            .iter()
            .any(|r| r.rule == Some(11) && r.direction == Direction::Egress),
        "{allowed:#?}"
    );
    assert!(
        allowed
            .iter()
            .any(|r| r.rule == Some(12) && r.direction == Direction::Ingress),
        "{allowed:#?}"
    );
    let denied = on_a(Verdict::Deny, Reason::NoRule);
    assert!(
        denied
            .iter()
            .any(|r| r.protocol == Protocol::Tcp && r.direction == Direction::Ingress),
        "{denied:#?}"
    );
    assert!(
        denied
            .iter()
            .any(|r| r.protocol == Protocol::Udp && r.direction == Direction::Egress),
        "{denied:#?}"
    );
    assert!(denied.iter().any(|r| r.remote.ip == ext(4)), "{denied:#?}");
    assert!(
        on_a(Verdict::Allow, Reason::Host)
            .iter()
            .any(|r| r.direction == Direction::Ingress)
    );

    // Monitor mode: the same connections pass and are reported as would-deny.
    node.set_mode("t/a", Mode::Monitor);
    assert!(traffic::tcp_connects(
        &a.netns,
        SocketAddr::new(ext(4), 443)
    ));
    let records = node.agent().wait_records(Duration::from_secs(5), |rs| {
        rs.iter().any(|r| r.verdict == Verdict::WouldDeny)
    });
    assert!(
        records
            .iter()
            .any(|r| r.verdict == Verdict::WouldDeny && r.remote.ip == ext(4))
    );

    // Open again: everything passes.
    node.set_mode("t/a", Mode::Enforce);
    node.set_rules("t/a", EndpointRules::open());
    assert!(traffic::tcp_connects(
        &b.netns,
        SocketAddr::new(a.ipv4.into(), 8080)
    ));
    assert_eq!(udp(a, b.ipv4.into(), 41_300), 2);
}

#[test]
fn a_connection_opened_in_learn_mode_is_cut_when_enforcement_starts() {
    require_root!();
    let node = Node::up(Mode::Learn);
    let a = node.pod("t/a");
    node.set_rules("t/a", EndpointRules::isolated(vec![]));
    let mut session = traffic::TcpSession::open(&a.netns, SocketAddr::new(ext(4), 443)).unwrap();
    assert!(session.echo(b"learning").is_ok(), "learn mode allows");
    node.set_mode("t/a", Mode::Enforce);
    assert!(
        session.echo(b"enforcing").is_err(),
        "the live connection is cut"
    );
    let records = node.agent().wait_records(Duration::from_secs(5), |rs| {
        rs.iter()
            .any(|r| r.kind == FlowKind::Rejudged && r.verdict == Verdict::Deny)
    });
    assert!(
        records.iter().any(|r| r.kind == FlowKind::Rejudged
            && r.verdict == Verdict::Deny
            && r.remote.ip == ext(4)),
        "{records:#?}"
    );
}

#[test]
fn enforcement_outlives_the_agent_and_a_restart_reuses_the_pins() {
    require_root!();
    let mut node = Node::up(Mode::Enforce);
    let (a, b) = (node.pod("t/a").clone(), node.pod("t/b").clone());
    let b_ip = IpAddr::from(b.ipv4);
    node.set_rules("t/a", a_rules());
    let before = node.attached_programs("t/a");
    assert_eq!(
        (before.0.len(), before.1.len()),
        (1, 1),
        "one program per hook: {before:?}"
    );
    let mut live = traffic::TcpSession::open(&a.netns, SocketAddr::new(b_ip, 8080)).unwrap();

    node.agent.take().unwrap().kill();
    assert!(
        live.echo(b"still here").is_ok(),
        "an established connection outlives the agent"
    );
    assert!(
        !traffic::tcp_connects(&a.netns, SocketAddr::new(ext(4), 443)),
        "isolation gone with the agent"
    );
    assert!(traffic::tcp_connects(&a.netns, SocketAddr::new(b_ip, 8080)));
    assert_eq!(
        node.attached_programs("t/a"),
        before,
        "a killed agent detaches nothing"
    );

    node.start_agent();
    let after = node.attached_programs("t/a");
    assert_eq!(
        (after.0.len(), after.1.len()),
        (1, 1),
        "attached twice after restart: {after:?}"
    );
    assert!(
        !traffic::tcp_connects(&a.netns, SocketAddr::new(ext(4), 443)),
        "the pinned maps were reused"
    );
    assert!(live.echo(b"after restart").is_ok());
    // Re-attaching an attached endpoint (what a reconciling agent does) adds nothing either.
    node.attach("t/a", Mode::Enforce);
    assert_eq!(node.attached_programs("t/a"), after);

    // The restarted agent reads the same ring buffer: new connections are reported.
    traffic::tcp_echo(
        &a.netns,
        42_000,
        SocketAddr::new(b_ip, 8080),
        b"after restart",
    )
    .unwrap();
    let records = settle(
        node.agent(),
        Protocol::Tcp,
        &[(&a.host_interface, a.ipv4.into(), b_ip)],
    );
    assert!(
        records
            .iter()
            .any(|r| r.local.port == 42_000 && r.remote.ip == b_ip),
        "{records:#?}"
    );
    node.set_rules("t/a", EndpointRules::open());
    assert!(traffic::tcp_connects(
        &a.netns,
        SocketAddr::new(ext(4), 443)
    ));
}

#[test]
fn uninstall_leaves_no_program_link_pin_or_qdisc_behind() {
    require_root!();
    let mut node = Node::up(Mode::Enforce);
    let a = node.pod("t/a").clone();
    let b_ip = IpAddr::from(node.pod("t/b").ipv4);
    node.set_rules("t/a", EndpointRules::isolated(vec![]));
    assert!(!traffic::tcp_connects(
        &a.netns,
        SocketAddr::new(b_ip, 8080)
    ));
    let (ingress, egress) = node.attached_programs("t/a");
    let ours: Vec<u32> = ingress.into_iter().chain(egress).collect();
    assert_eq!(ours.len(), 2);
    drop(node.agent.take());

    let out = std::process::Command::new(tests::palisade_bin())
        .args([
            "uninstall",
            "--netns",
            &node.lab.node_netns(),
            "--bpffs-root",
        ])
        .arg(node.lab.bpffs_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        !node.lab.bpffs_root().exists(),
        "pins left under {}",
        node.lab.bpffs_root().display()
    );
    for pod in ["t/a", "t/b"] {
        assert_eq!(
            node.attached_programs(pod),
            (vec![], vec![]),
            "{pod} still has programs"
        );
    }
    let qdiscs = node
        .lab
        .exec("node", &["tc", "qdisc", "show", "dev", &a.host_interface])
        .unwrap();
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(
        !qdiscs.contains("clsact") && !qdiscs.contains("ingress"),
        "{qdiscs}"
    );
    // The kernel frees programs once nothing refers to them (RCU: give it a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let loaded: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ours.contains(id))
            .collect();
        if loaded.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs {loaded:?} still loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        traffic::tcp_connects(&a.netns, SocketAddr::new(b_ip, 8080)),
        "uninstalled means open"
    );
}

#[test]
fn the_agent_expires_closed_connections_with_their_final_counters() {
    require_root!();
    let node = Node::up_with(Mode::Enforce, &["--stats-interval", "1s"]);
    let (a, b) = (node.pod("t/a"), node.pod("t/b"));
    let payload = [7u8; 1000];
    traffic::tcp_echo(
        &a.netns,
        43_000,
        SocketAddr::new(b.ipv4.into(), 8080),
        &payload,
    )
    .unwrap();
    // Both sides sent FIN: the entry lives on for the closing lifetime (10 s), then the
    // agent's sweep reports it closed and removes it.
    let closed = |rs: &[FlowRecord]| {
        rs.iter().any(|r| {
            r.kind == FlowKind::Closed && r.local.port == 43_000 && r.interface == a.host_interface
        })
    };
    let records = node.agent().wait_records(Duration::from_secs(20), closed);
    let record = records
        .iter()
        .find(|r| r.kind == FlowKind::Closed && r.local.port == 43_000)
        .unwrap_or_else(|| panic!("no closed record: {records:#?}"));
    let counters = record.counters.expect("final counters");
    assert!(
        counters.bytes_from_pod >= payload.len() as u64,
        "{counters:?}"
    );
    assert!(
        counters.bytes_to_pod >= payload.len() as u64,
        "{counters:?}"
    );
    assert!(
        counters.packets_from_pod >= 3 && counters.packets_to_pod >= 3,
        "{counters:?}"
    );
    let pins = node.lab.pins();
    assert!(
        !stats::conntrack(&pins)
            .unwrap()
            .iter()
            .any(|(k, _)| k.pod_port == 43_000),
        "the expired entry is gone"
    );
}

#[test]
fn egress_to_a_service_is_judged_by_its_backends_on_the_target_port() {
    require_root!();
    let node = Node::up(Mode::Enforce);
    let (a, b) = (node.pod("t/a"), node.pod("t/b"));
    let web = node.lab.service("t/web").unwrap();
    let service = Service {
        identity: Identity(Identity::FIRST_SERVICE),
        cluster_ips: web.addresses().to_vec(),
        ports: vec![ServicePort {
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
        }],
        backends: vec![(b.ipv4.into(), B_ID), (b.ipv6.into(), B_ID)],
    };
    // Allowed to the backends' identity on the target port: the ClusterIP works.
    let to_backends = EndpointRules::isolated(vec![rule(
        21,
        Direction::Egress,
        Peer::Identity(B_ID),
        Protocol::Tcp,
        8080,
    )]);
    node.set_rules_and_services("t/a", to_backends, vec![service.clone()]);
    for ip in web.addresses() {
        assert!(
            traffic::tcp_connects(&a.netns, SocketAddr::new(ip, 80)),
            "{ip}:80"
        );
    }
    let records = node.agent().wait_records(Duration::from_secs(5), |rs| {
        rs.iter().filter(|r| r.rule == Some(21)).count() >= 2
    });
    assert!(
        records.iter().any(|r| r.remote.ip == IpAddr::from(web.ipv4)
            && r.remote.port == 80
            && r.rule == Some(21)),
        "{records:#?}"
    );
    // A rule for the Service port alone allows nothing: Kubernetes judges the backend port.
    let service_port_only = EndpointRules::isolated(vec![rule(
        22,
        Direction::Egress,
        Peer::Any,
        Protocol::Tcp,
        80,
    )]);
    node.set_rules_and_services("t/a", service_port_only, vec![service]);
    for ip in web.addresses() {
        assert!(
            !traffic::tcp_connects(&a.netns, SocketAddr::new(ip, 80)),
            "{ip}:80"
        );
    }
}

/// Answer one DNS query on UDP 53 inside `netns` with `addr` for the name asked; returns
/// once the resolver is listening.
fn resolve_once(netns: String, addr: std::net::Ipv4Addr) -> std::thread::JoinHandle<()> {
    use simple_dns::{
        CLASS, Packet, ResourceRecord,
        rdata::{A, RData},
    };
    let (listening, ready) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        enforcer::netns::enter(&netns).unwrap();
        let socket = std::net::UdpSocket::bind("0.0.0.0:53").unwrap();
        listening.send(()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        let query = Packet::parse(&buf[..n]).unwrap();
        let mut reply = Packet::new_reply(query.id());
        let name = query.questions[0].qname.clone();
        reply.questions.push(query.questions[0].clone());
        let a = RData::A(A {
            address: u32::from(addr),
        });
        reply
            .answers
            .push(ResourceRecord::new(name, CLASS::IN, 300, a));
        socket
            .send_to(&reply.build_bytes_vec().unwrap(), from)
            .unwrap();
    });
    ready.recv().expect("resolver listening");
    handle
}

#[test]
fn external_peers_are_named_by_the_dns_answers_pods_receive() {
    require_root!();
    use simple_dns::{CLASS, Name, Packet, QCLASS, QTYPE, Question, TYPE};
    let node = Node::up(Mode::Enforce);
    let a = node.pod("t/a");
    let resolver = node.lab.external("resolver").unwrap();
    let server = resolve_once(resolver.netns.clone(), "203.0.113.10".parse().unwrap());
    // The pod looks the name up...
    let answer = netns::run_in(&a.netns, || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut query = Packet::new_query(42);
        query.questions.push(Question::new(
            Name::new("payments.example.com").unwrap(),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        socket
            .send_to(&query.build_bytes_vec().unwrap(), "198.51.100.53:53")
            .unwrap();
        let mut buf = [0u8; 512];
        socket.recv(&mut buf).unwrap()
    })
    .unwrap();
    assert!(answer > 12);
    server.join().unwrap();
    // ...then connects to the address it got: the record names the peer.
    traffic::tcp_echo(&a.netns, 44_000, SocketAddr::new(ext(4), 443), b"hello").unwrap();
    let records = node.agent().wait_records(Duration::from_secs(5), |rs| {
        rs.iter().any(|r| r.local.port == 44_000)
    });
    let record = records
        .iter()
        .find(|r| r.local.port == 44_000 && r.kind == FlowKind::New)
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(
        record.remote.dns_name.as_deref(),
        Some("payments.example.com"),
        "{record:#?}"
    );
}

/// Write `policy` to `path` the way tools replace files: a new file renamed over it.
fn replace_policy_file(path: &std::path::Path, text: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// Poll `check` for up to 5 s.
fn eventually(check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_agent_enforces_its_policy_file_and_keeps_the_last_good_one() {
    require_root!();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("node.json");
    let path_arg = path.to_str().unwrap();
    // The file does not exist yet: the agent says so and keeps watching.
    let node = Node::up_with(
        Mode::Enforce,
        &["--stats-interval", "0", "--policy", path_arg],
    );
    let (a, b) = (node.pod("t/a"), node.pod("t/b"));
    let b_web = SocketAddr::new(b.ipv4.into(), 8080);
    let policy_allowing = |protocol: Protocol, port: u16| {
        let mut policy = enforcer::policy_file::NodePolicy::default();
        policy.endpoints.insert(
            b.host_interface.clone(),
            EndpointRules::isolated(vec![rule(
                21,
                Direction::Ingress,
                Peer::Identity(A_ID),
                protocol,
                port,
            )]),
        );
        policy.ipcache.insert(a.ipv4.into(), A_ID);
        policy.ipcache.insert(b.ipv4.into(), B_ID);
        serde_json::to_string_pretty(&policy).unwrap()
    };

    replace_policy_file(&path, &policy_allowing(Protocol::Tcp, 8080));
    // The endpoints were attached open: wait for the agent's word, not just a connection
    // (which an open endpoint lets through before the policy arrives).
    assert!(
        eventually(|| node.agent().log_text().contains("policy applied")
            && traffic::tcp_connects(&a.netns, b_web)),
        "the file's rule is enforced:\n{}",
        node.agent().log_text()
    );
    let udp_to_b = |port| {
        traffic::udp_echo(&a.netns, port, SocketAddr::new(b.ipv4.into(), 5353), 1, 16).unwrap()
    };
    assert_eq!(udp_to_b(42_001), 0, "b's ingress is isolated");

    // Only one writer: the CLI is refused while the agent owns the policy.
    let cli = std::process::Command::new(tests::palisade_bin())
        .args([
            "policy",
            "apply",
            "--netns",
            &node.lab.node_netns(),
            "--bpffs-root",
        ])
        .arg(node.lab.bpffs_root())
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        !cli.status.success() && stderr.contains("is locked"),
        "{stderr}"
    );

    // A broken file is reported with its line, and the last good policy stays.
    let refusals = || {
        node.agent()
            .log_text()
            .matches("policy not applied")
            .count()
    };
    let before = refusals();
    replace_policy_file(&path, "{\"endpoints\": {\n  \"x\": 1}}");
    assert!(eventually(|| refusals() > before));
    let log = node.agent().log_text();
    assert!(log.contains("node.json") && log.contains("line 2"), "{log}");
    assert!(traffic::tcp_connects(&a.netns, b_web));

    // A good change replaces the rule: TCP 8080 refused, UDP 5353 allowed.
    replace_policy_file(&path, &policy_allowing(Protocol::Udp, 5353));
    assert!(
        eventually(|| !traffic::tcp_connects(&a.netns, b_web)),
        "{}",
        node.agent().log_text()
    );
    assert_eq!(udp_to_b(42_002), 1);
}

#[test]
fn network_policies_follow_labels_and_name_their_rules_in_flow_records() {
    require_root!();
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    let cluster_file = files.path().join("cluster.json");
    let names_file = files.path().join("names.json");
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (dir_arg, cluster_arg, names_arg) = (arg(&dir), arg(&cluster_file), arg(&names_file));
    let node = Node::up_with(
        Mode::Enforce,
        &[
            "--stats-interval",
            "0",
            "--policy-dir",
            &dir_arg,
            "--cluster",
            &cluster_arg,
            "--names",
            &names_arg,
            "--node-name",
            "lab",
        ],
    );
    let (a, b) = (node.pod("t/a"), node.pod("t/b"));
    let web = node.lab.service("t/web").unwrap();
    let mut names = enforcer::names::Names::default();
    names
        .interfaces
        .insert(a.host_interface.clone(), "t/a".into());
    names
        .interfaces
        .insert(b.host_interface.clone(), "t/b".into());
    names.save(&names_file).unwrap();
    let write_cluster = |a_labels: serde_json::Value, namespace_labels: serde_json::Value| {
        let cluster = serde_json::json!({
            "namespaces": {"t": namespace_labels},
            "pods": [
                {"namespace": "t", "name": "a", "labels": a_labels, "node": "lab",
                 "ips": [a.ipv4, a.ipv6], "ports": [{"name": "http", "port": 8080}]},
                {"namespace": "t", "name": "b", "labels": {"app": "web"}, "node": "lab",
                 "ips": [b.ipv4, b.ipv6], "ports": [{"name": "http", "port": 8080}]},
            ],
            "nodes": {"lab": ["169.254.1.1", "fd00:10:244::1"]},
            "services": [{"namespace": "t", "name": "web", "selector": {"app": "web"},
                          "cluster_ips": web.addresses(),
                          "ports": [{"port": 80, "target_port": "http"}]}],
        });
        replace_policy_file(&cluster_file, &cluster.to_string());
    };
    write_cluster(serde_json::json!({"app": "client"}), serde_json::json!({}));
    replace_policy_file(
        &dir.join("web.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: trusted}}}]\n    ports: [{port: http}]\n",
    );
    let b_web = SocketAddr::new(b.ipv4.into(), 8080);
    let a_web = SocketAddr::new(a.ipv4.into(), 8080);
    assert!(
        eventually(|| !traffic::tcp_connects(&a.netns, b_web)),
        "b's ingress is isolated:\n{}",
        node.agent().log_text()
    );
    assert!(traffic::tcp_connects(&b.netns, a_web), "a is not selected");

    // a gains the label the policy asks for: its identity moves, the rule stays.
    write_cluster(
        serde_json::json!({"app": "client", "role": "trusted"}),
        serde_json::json!({}),
    );
    assert!(
        eventually(|| traffic::tcp_connects(&a.netns, b_web)),
        "{}",
        node.agent().log_text()
    );
    let records = node.agent().wait_records(Duration::from_secs(5), |r| {
        r.iter()
            .any(|r| r.interface == b.host_interface && r.policy.is_some())
    });
    let named = records
        .iter()
        .find(|r| r.interface == b.host_interface && r.policy.is_some())
        .expect("a record naming the policy rule");
    assert_eq!(named.policy.as_deref(), Some("t/web ingress[0]"));

    // Egress by ClusterIP is judged by the Service's backends: a's egress isolated to web
    // pods on their http port reaches the Service (port 80 -> http), and nothing else.
    replace_policy_file(
        &dir.join("client.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: http}]\n",
    );
    let service = SocketAddr::new(web.addresses()[0], 80);
    assert!(
        eventually(|| !traffic::tcp_connects(&a.netns, SocketAddr::new(ext(4), 443))),
        "{}",
        node.agent().log_text()
    );
    assert!(
        traffic::tcp_connects(&a.netns, service),
        "a reaches web's ClusterIP"
    );
    std::fs::remove_file(dir.join("client.yaml")).unwrap();

    // Zero trust for the namespace: a, selected by no policy, is cut off (but its node).
    write_cluster(
        serde_json::json!({"app": "client", "role": "trusted"}),
        serde_json::json!({"palisade.io/default": "deny"}),
    );
    assert!(
        eventually(|| !traffic::tcp_connects(&b.netns, a_web)),
        "{}",
        node.agent().log_text()
    );
    assert!(traffic::tcp_connects(&node.lab.node_netns(), a_web));

    // A policy file the API server would refuse changes nothing.
    let refusals = || {
        node.agent()
            .log_text()
            .matches("policy not applied")
            .count()
    };
    let before = refusals();
    replace_policy_file(
        &dir.join("bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: t}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 70000}]\n",
    );
    assert!(eventually(|| refusals() > before));
    let log = node.agent().log_text();
    assert!(
        log.contains("bad.yaml") && log.contains("ports[0]"),
        "{log}"
    );
    // Still the last good policy: zero trust for a (its egress too), its node reaches it.
    assert!(!traffic::tcp_connects(&a.netns, b_web));
    assert!(!traffic::tcp_connects(&b.netns, a_web));
    assert!(traffic::tcp_connects(&node.lab.node_netns(), a_web));
}
