//! The kernel against the reference evaluator: random rules and random packets, each packet
//! run through the real `from_pod` / `to_pod` programs with BPF_PROG_TEST_RUN and through
//! `model::rules::EndpointRules::evaluate` (which works from the rules, never from the
//! compiled maps). They must agree on every verdict, and an allow's rule id must be one of
//! the rules the model says match. The seed is printed; `PALISADE_SEED=<n>` replays it.
//!
//! Needs root. Runs in a private network namespace (its loopback, ifindex 1, is the
//! endpoint; nothing is attached and nothing is sent) with a unique bpffs folder.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer::datapath::{
    self,
    compile::{self, CidrIdentities},
    rules::{self, kernel_addr},
    stats,
    tables::{Endpoints, Table},
    writer::{Desired, PinnedWriter},
};
use enforcer_common::{conntrack::ConntrackKey, maps, policy::DeniedValue};
use ipnet::IpNet;
use model::{
    Direction, Mode, Protocol, Verdict,
    identity::Identity,
    rules::{
        Connection, EndpointRules, Evaluation, Isolation, Peer, PortRange, Rule, Service,
        ServicePort, verdict,
    },
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use tests::{
    frames::{self, L4},
    kernel::{ENDPOINT, KernelNode, NEXT, POD4, POD6, SHOT},
    require_root,
};

const SCENARIOS: usize = 40;
const PACKETS: usize = 100;

const PORTS: [u16; 8] = [22, 53, 80, 443, 5353, 8000, 8080, 8443];

/// Peers: pods (with identities), the node, and world addresses in documentation ranges.
fn peers() -> Vec<(IpAddr, Option<Identity>)> {
    let mut peers = Vec::new();
    for i in 0..4u8 {
        let id = Some(Identity(Identity::FIRST_LABELS + u32::from(i)));
        peers.push((IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10 + i)), id));
        peers.push((
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                0,
                0,
                0,
                0,
                10 + u16::from(i),
            )),
            id,
        ));
    }
    peers.push(("169.254.1.1".parse().unwrap(), Some(Identity::HOST)));
    for a in [
        "203.0.113.5",
        "203.0.113.200",
        "198.51.100.7",
        "2001:db8::5",
        "2001:db8:1::9",
    ] {
        peers.push((a.parse().unwrap(), None));
    }
    peers
}

fn random_cidr(rng: &mut StdRng, v4: bool) -> IpNet {
    let net: IpNet = if v4 {
        *[
            "203.0.113.0/24",
            "198.51.100.0/24",
            "10.244.0.0/16",
            "0.0.0.0/0",
        ]
        .choose(rng)
        .unwrap()
    } else {
        *["2001:db8::/32", "2001:db8::/48", "fd00:10:244::/64", "::/0"]
            .choose(rng)
            .unwrap()
    }
    .parse()
    .unwrap();
    net
}

fn random_rule(rng: &mut StdRng, id: u32) -> Rule {
    let direction = if rng.random_bool(0.5) {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    let peer = match rng.random_range(0..4) {
        0 => Peer::Any,
        1 => Peer::Identity(Identity(Identity::FIRST_LABELS + rng.random_range(0..4))),
        2 => Peer::Identity(Identity::WORLD),
        _ => {
            let v4 = rng.random_bool(0.6);
            let net = random_cidr(rng, v4);
            let except = net
                .subnets((net.prefix_len() + 4).min(net.max_prefix_len()))
                .ok()
                .and_then(|mut s| s.nth(rng.random_range(0..2)))
                .filter(|_| rng.random_bool(0.5))
                .into_iter()
                .collect();
            Peer::Cidr { net, except }
        }
    };
    let protocol = *[
        None,
        Some(Protocol::Tcp),
        Some(Protocol::Udp),
        Some(Protocol::Icmp),
    ]
    .choose(rng)
    .unwrap();
    let ports = match protocol {
        Some(p) if p.has_ports() && rng.random_bool(0.7) => {
            let first = *PORTS.choose(rng).unwrap();
            let last = if rng.random_bool(0.5) {
                first
            } else {
                first + rng.random_range(0..200)
            };
            Some(PortRange { first, last })
        }
        _ => None,
    };
    Rule {
        id,
        direction,
        peer,
        protocol,
        ports,
    }
}

/// One Service: ClusterIPs in both families, two ports with target ports, backends drawn
/// from the pods above per scenario.
fn service(rng: &mut StdRng, peers: &[(IpAddr, Option<Identity>)]) -> Service {
    let pods: Vec<_> = peers
        .iter()
        .filter(|(_, id)| id.is_some_and(|i| !i.is_reserved()))
        .collect();
    let backends = (0..rng.random_range(0..3))
        .map(|_| {
            let (addr, id) = pods.choose(rng).unwrap();
            (*addr, id.unwrap())
        })
        .collect();
    Service {
        identity: Identity(Identity::FIRST_SERVICE),
        cluster_ips: vec![
            "10.96.0.10".parse().unwrap(),
            "fd00:10:96::a".parse().unwrap(),
        ],
        ports: vec![
            ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
            },
            ServicePort {
                protocol: Protocol::Udp,
                port: 53,
                target_port: 5353,
            },
        ],
        backends,
    }
}

struct Case {
    direction: Direction,
    peer: IpAddr,
    protocol: Protocol,
    server_port: u16,
    client_port: u16,
}

impl Case {
    fn frame(&self) -> Vec<u8> {
        let pod = if self.peer.is_ipv4() {
            IpAddr::V4(POD4)
        } else {
            IpAddr::V6(POD6)
        };
        let (src, dst, sport, dport) = match self.direction {
            Direction::Egress => (pod, self.peer, self.client_port, self.server_port),
            Direction::Ingress => (self.peer, pod, self.client_port, self.server_port),
        };
        let l4 = match self.protocol {
            Protocol::Tcp => L4::Tcp {
                src: sport,
                dst: dport,
                flags: 0x02,
            },
            Protocol::Udp => L4::Udp {
                src: sport,
                dst: dport,
            },
            _ => L4::EchoRequest {
                id: self.client_port,
            },
        };
        frames::frame(src, dst, l4, None)
    }

    /// The conntrack (or denied) key the kernel files this connection under.
    fn key(&self) -> ConntrackKey {
        let pod = if self.peer.is_ipv4() {
            IpAddr::V4(POD4)
        } else {
            IpAddr::V6(POD6)
        };
        let icmp = !self.protocol.has_ports();
        let (pod_port, peer_port) = match (self.direction, icmp) {
            (Direction::Egress, false) => (self.client_port, self.server_port),
            (Direction::Ingress, false) => (self.server_port, self.client_port),
            (Direction::Egress, true) => (self.client_port, 0),
            (Direction::Ingress, true) => (0, self.client_port),
        };
        ConntrackKey {
            endpoint: ENDPOINT,
            pod_addr: kernel_addr(pod),
            peer_addr: kernel_addr(self.peer),
            pod_port,
            peer_port,
            protocol: self.protocol.number(),
            _pad: [0; 3],
        }
    }
}

#[test]
fn kernel_and_reference_evaluator_agree_on_random_rules_and_packets() {
    require_root!();
    let seed: u64 = std::env::var("PALISADE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("differential seed: {seed} (replay with PALISADE_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let node = KernelNode::new();
    run(&node, &mut rng, seed);
}

fn run(node: &KernelNode, rng: &mut StdRng, seed: u64) {
    let pins = &node.pins;
    let peers = peers();
    let mut next_port: u16 = 10_000;
    let mut checked = 0;

    for scenario in 0..SCENARIOS {
        let mode = *[Mode::Learn, Mode::Monitor, Mode::Enforce, Mode::Enforce]
            .choose(rng)
            .unwrap();
        let isolation = |rng: &mut StdRng| {
            if rng.random_bool(0.8) {
                Isolation::Isolated
            } else {
                Isolation::Open
            }
        };
        let endpoint_rules = EndpointRules {
            ingress: isolation(rng),
            egress: isolation(rng),
            rules: (1..=rng.random_range(0..8))
                .map(|id| random_rule(rng, id))
                .collect(),
        };
        let cidrs: CidrIdentities = compile::cidrs_named([&endpoint_rules])
            .into_iter()
            .enumerate()
            .map(|(i, net)| (net, Identity(Identity::FIRST_CIDR + i as u32)))
            .collect();
        let service = service(rng, &peers);
        let desired = Desired {
            endpoints: [(ENDPOINT, endpoint_rules.clone())].into(),
            ipcache: peers
                .iter()
                .filter_map(|(a, id)| id.map(|id| (*a, id)))
                .collect(),
            cidrs,
            services: vec![service.clone()],
        };
        PinnedWriter::open(pins).unwrap().apply(&desired).unwrap();
        rules::set_mode(
            &mut Endpoints::open_endpoints(pins).unwrap(),
            ENDPOINT,
            mode,
        )
        .unwrap();
        let context = || {
            format!("seed {seed}, scenario {scenario}, mode {mode:?}, rules {endpoint_rules:#?}")
        };

        let own = [
            IpAddr::from(tests::kernel::POD4),
            IpAddr::from(tests::kernel::POD6),
        ];
        for _ in 0..PACKETS {
            next_port = next_port.wrapping_add(1).max(10_000);
            if rng.random_bool(0.15) {
                // Egress to the Service's ClusterIP, judged by its backends.
                let ip = *service.cluster_ips.choose(rng).unwrap();
                let port = *service.ports.choose(rng).unwrap();
                let case = Case {
                    direction: Direction::Egress,
                    peer: ip,
                    protocol: port.protocol,
                    server_port: port.port,
                    client_port: next_port,
                };
                let evaluation = service.evaluate(&endpoint_rules, &port, &own);
                let expected = verdict(mode, &evaluation);
                let action = node.run(Direction::Egress, &case.frame());
                let expected_action = if expected == Verdict::Deny {
                    SHOT
                } else {
                    NEXT
                };
                assert_eq!(
                    action,
                    expected_action,
                    "service {ip}:{} {:?}: model {evaluation:?} -> {expected:?}\n{}",
                    port.port,
                    port.protocol,
                    context()
                );
                checked += 1;
                continue;
            }
            let (peer, identity) = *peers.choose(rng).unwrap();
            let protocol = *[Protocol::Tcp, Protocol::Udp, Protocol::Icmp]
                .choose(rng)
                .unwrap();
            let protocol = match (protocol, peer) {
                (Protocol::Icmp, IpAddr::V6(_)) => Protocol::Icmpv6,
                (p, _) => p,
            };
            let case = Case {
                direction: if rng.random_bool(0.5) {
                    Direction::Egress
                } else {
                    Direction::Ingress
                },
                peer,
                protocol,
                server_port: if protocol.has_ports() {
                    *PORTS.choose(rng).unwrap() + rng.random_range(0..3)
                } else {
                    0
                },
                client_port: next_port,
            };
            let evaluation = endpoint_rules.evaluate(&Connection {
                direction: case.direction,
                peer_addr: peer,
                peer_identity: identity.unwrap_or(Identity::WORLD),
                protocol,
                server_port: case.server_port,
            });
            let expected = verdict(mode, &evaluation);
            let action = node.run(case.direction, &case.frame());
            let what = || {
                format!(
                    "{:?} {} {protocol} port {} (identity {identity:?}): model {evaluation:?} -> {expected:?}\n{}",
                    case.direction,
                    peer,
                    case.server_port,
                    context()
                )
            };
            let expected_action = if expected == Verdict::Deny {
                SHOT
            } else {
                NEXT
            };
            assert_eq!(action, expected_action, "{}", what());

            // The kernel's record of the connection agrees too: verdict and rule.
            let key = case.key();
            if expected == Verdict::Deny {
                let denied: Option<DeniedValue> = datapath::tables::PinnedTable::<
                    ConntrackKey,
                    DeniedValue,
                >::open(pins, maps::DENIED)
                .unwrap()
                .get(&key)
                .unwrap();
                assert!(denied.is_some(), "no DENIED entry: {}", what());
            } else {
                let entry = stats::conntrack(pins)
                    .unwrap()
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v)
                    .unwrap_or_else(|| panic!("no conntrack entry: {}", what()));
                let kernel_verdict = if entry.verdict == enforcer_common::Verdict::WouldDeny as u8 {
                    Verdict::WouldDeny
                } else {
                    Verdict::Allow
                };
                assert_eq!(kernel_verdict, expected, "{}", what());
                if let (Evaluation::Rules(ids), Mode::Monitor | Mode::Enforce) = (&evaluation, mode)
                {
                    assert!(
                        ids.contains(&entry.rule_id),
                        "rule {} not in {ids:?}: {}",
                        entry.rule_id,
                        what()
                    );
                }
            }
            checked += 1;
        }
    }
    eprintln!("differential: {checked} packets agreed");
}
