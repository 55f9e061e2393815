//! The compiler against the reference evaluator: random clusters, random NetworkPolicies
//! (through the Kubernetes types), random connections. For each connection, the evaluator
//! (from the policies) and the compiled rules (what the kernel is given) must agree on
//! each side's verdict and on which policy rules allow it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use model::{
    Direction, Protocol,
    identity::{Identity, IdentityAllocator},
    netpol::{
        cluster::{Cluster, ContainerPort, Pod},
        compile::{Compiler, Input},
        evaluate::{DefaultAction, Evaluator, Query, RuleRef, Side},
        policy::Policy,
    },
    rules::{Connection, Evaluation},
};
use proptest::prelude::*;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const KEYS: [&str; 3] = ["app", "tier", "pod-template-hash"];
const VALUES: [&str; 3] = ["a", "b", "c"];
const NODE: &str = "n1";
const NODE_IP: [u8; 4] = [10, 0, 0, 1];
const REMOTE_NODE_IP: [u8; 4] = [10, 0, 0, 2];
const EXTERNAL: [[u8; 4]; 2] = [[203, 0, 113, 5], [198, 51, 100, 7]];
const PORTS: [u16; 4] = [80, 81, 443, 8080];
const PORT_NAMES: [&str; 2] = ["http", "dns"];

fn labels_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
        prop::sample::select(VALUES.to_vec()).prop_map(str::to_owned),
        0..3,
    )
}

fn container_ports() -> impl Strategy<Value = Vec<ContainerPort>> {
    prop::collection::vec(
        (
            prop::option::of(prop::sample::select(PORT_NAMES.to_vec())),
            prop::sample::select(PORTS.to_vec()),
            prop::bool::ANY,
        )
            .prop_map(|(name, port, udp)| ContainerPort {
                name: name.map(str::to_owned),
                port,
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
            }),
        0..3,
    )
    .prop_map(|mut ports| {
        // A pod names each port once.
        let mut seen = BTreeSet::new();
        ports.retain(|p| p.name.as_ref().is_none_or(|n| seen.insert(n.clone())));
        ports
    })
}

fn cluster_strategy() -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec(labels_strategy(), 3),
        prop::collection::vec((0..3usize, labels_strategy(), container_ports()), 1..7),
    )
        .prop_map(|(ns_labels, pods)| {
            let namespaces = NAMESPACES
                .iter()
                .zip(ns_labels)
                .map(|(n, l)| ((*n).to_owned(), l))
                .collect();
            let pods = pods
                .into_iter()
                .enumerate()
                .map(|(i, (ns, labels, ports))| Pod {
                    namespace: NAMESPACES[ns].to_owned(),
                    name: format!("p{i}"),
                    labels,
                    ips: vec![IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10 + i as u8))],
                    ports,
                    node: NODE.to_owned(),
                    workload: None,
                })
                .collect();
            Cluster {
                namespaces,
                pods,
                nodes: [
                    (NODE.to_owned(), vec![IpAddr::from(NODE_IP)]),
                    ("n2".to_owned(), vec![IpAddr::from(REMOTE_NODE_IP)]),
                ]
                .into(),
                services: vec![],
            }
        })
}

fn selector_strategy() -> impl Strategy<Value = LabelSelector> {
    (
        prop::option::of(labels_strategy()),
        prop::collection::vec(
            (
                prop::sample::select(KEYS.to_vec()),
                0..4usize,
                prop::collection::vec(prop::sample::select(VALUES.to_vec()), 1..3),
            ),
            0..2,
        ),
    )
        .prop_map(|(match_labels, expressions)| LabelSelector {
            match_labels,
            match_expressions: (!expressions.is_empty()).then(|| {
                expressions
                    .into_iter()
                    .map(|(key, op, values)| {
                        let operator = ["In", "NotIn", "Exists", "DoesNotExist"][op];
                        LabelSelectorRequirement {
                            key: key.to_owned(),
                            operator: operator.to_owned(),
                            values: (op < 2)
                                .then(|| values.into_iter().map(str::to_owned).collect()),
                        }
                    })
                    .collect()
            }),
        })
}

fn peer_strategy() -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        (
            prop::option::of(selector_strategy()),
            prop::option::of(selector_strategy())
        )
            .prop_filter("a peer selects something", |(p, n)| p.is_some()
                || n.is_some())
            .prop_map(|(pod_selector, namespace_selector)| NetworkPolicyPeer {
                pod_selector,
                namespace_selector,
                ip_block: None,
            }),
        (
            prop::sample::select(vec![
                "10.244.0.0/24",
                "10.0.0.0/8",
                "203.0.113.0/24",
                "0.0.0.0/0"
            ]),
            prop::option::of(prop::sample::select(vec![
                "10.244.0.12/30",
                "10.244.0.10/32",
                "203.0.113.4/30"
            ]))
        )
            .prop_map(|(cidr, except)| {
                let net: ipnet::IpNet = cidr.parse().unwrap();
                let except = except
                    .map(|e| e.parse::<ipnet::IpNet>().unwrap())
                    .filter(|e| net.contains(e) && e.prefix_len() > net.prefix_len());
                NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: cidr.to_owned(),
                        except: except.map(|e| vec![e.to_string()]),
                    }),
                    ..Default::default()
                }
            }),
    ]
}

fn port_strategy() -> impl Strategy<Value = NetworkPolicyPort> {
    (
        prop::option::of(prop::sample::select(vec!["TCP", "UDP", "SCTP"])),
        0..4usize,
        prop::sample::select(PORTS.to_vec()),
        prop::sample::select(PORT_NAMES.to_vec()),
    )
        .prop_map(|(protocol, kind, port, name)| {
            let (port, end_port) = match kind {
                0 => (None, None),
                1 => (Some(IntOrString::Int(i32::from(port))), None),
                2 => (
                    Some(IntOrString::Int(i32::from(port))),
                    Some(i32::from(port) + 100),
                ),
                _ => (Some(IntOrString::String(name.to_owned())), None),
            };
            NetworkPolicyPort {
                protocol: protocol.map(str::to_owned),
                port,
                end_port,
            }
        })
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule_strategy() -> impl Strategy<Value = RuleParts> {
    (
        prop::option::of(prop::collection::vec(peer_strategy(), 0..3)),
        prop::option::of(prop::collection::vec(port_strategy(), 0..3)),
    )
}

fn policy_strategy(index: usize) -> impl Strategy<Value = NetworkPolicy> {
    (
        0..3usize,
        prop::option::of(selector_strategy()),
        prop::option::of(prop::collection::vec(rule_strategy(), 0..3)),
        prop::option::of(prop::collection::vec(rule_strategy(), 0..3)),
        prop::option::of(prop::sample::subsequence(vec!["Ingress", "Egress"], 0..=2)),
    )
        .prop_map(
            move |(ns, pod_selector, ingress, egress, types)| NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(format!("policy-{index}")),
                    namespace: Some(NAMESPACES[ns].to_owned()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector,
                    ingress: ingress.map(|rules| {
                        rules
                            .into_iter()
                            .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                            .collect()
                    }),
                    egress: egress.map(|rules| {
                        rules
                            .into_iter()
                            .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                            .collect()
                    }),
                    policy_types: types.map(|t| t.into_iter().map(str::to_owned).collect()),
                }),
            },
        )
}

fn policies_strategy() -> impl Strategy<Value = Vec<NetworkPolicy>> {
    (0..4usize).prop_flat_map(|n| (0..n).map(policy_strategy).collect::<Vec<_>>())
}

/// Every address a query may use: the pods', the nodes', two external ones.
fn addresses(cluster: &Cluster) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = cluster.pods.iter().flat_map(|p| p.ips.clone()).collect();
    all.push(NODE_IP.into());
    all.push(REMOTE_NODE_IP.into());
    all.extend(EXTERNAL.iter().map(|a| IpAddr::from(*a)));
    all
}

/// The compiled side's verdict for one side of `q`, as the rule ids' policy rules.
fn compiled_side(
    compiled: &model::netpol::compile::Compiled,
    cluster: &Cluster,
    pod_addr: IpAddr,
    peer_addr: IpAddr,
    direction: Direction,
    q: &Query,
) -> Option<Result<BTreeSet<RuleRef>, ()>> {
    let pod = cluster.pod_at(pod_addr)?;
    let rules = &compiled.endpoints[&(pod.namespace.clone(), pod.name.clone())];
    let c = Connection {
        direction,
        peer_addr,
        peer_identity: compiled
            .ipcache
            .get(&peer_addr)
            .copied()
            .unwrap_or(Identity::WORLD),
        protocol: q.protocol,
        server_port: q.port,
    };
    Some(match rules.evaluate(&c) {
        Evaluation::Open | Evaluation::Host | Evaluation::Itself => Ok(BTreeSet::new()),
        Evaluation::Rules(ids) => Ok(ids.iter().map(|id| compiled.rules[id].clone()).collect()),
        Evaluation::Denied => Err(()),
    })
}

fn reference_side(side: &Side) -> Option<Result<BTreeSet<RuleRef>, ()>> {
    match side {
        Side::NotAPod => None,
        Side::OwnNode | Side::Itself => Some(Ok(BTreeSet::new())),
        Side::Default(_) | Side::Denied(_) if !side.allows() => Some(Err(())),
        Side::Default(_) => Some(Ok(BTreeSet::new())),
        Side::Allowed(rules) => Some(Ok(rules.iter().cloned().collect())),
        Side::Denied(_) => Some(Err(())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn compiled_rules_agree_with_the_reference_evaluator(
        cluster in cluster_strategy(),
        objects in policies_strategy(),
        zero_trust in prop::bool::ANY,
        queries in prop::collection::vec(
            (0..20usize, 0..20usize, 0..4usize, prop::sample::select(PORTS.to_vec())),
            1..40,
        ),
    ) {
        let policies: Vec<Policy> = objects.iter().map(|p| Policy::from_k8s(p).unwrap()).collect();
        let default = move |_: &Pod| if zero_trust { DefaultAction::Deny } else { DefaultAction::Allow };
        let mut compiler = Compiler::new(IdentityAllocator::default());
        let compiled = compiler
            .compile(&Input { cluster: &cluster, policies: &policies, node: NODE, default: &default })
            .unwrap();
        let evaluator = Evaluator::new(&cluster, &policies, &default);
        let addrs = addresses(&cluster);
        for (s, d, proto, port) in queries {
            let (src, dst) = (addrs[s % addrs.len()], addrs[d % addrs.len()]);
            if src == dst {
                continue;
            }
            let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Icmp][proto];
            let mut q = Query { src, dst, protocol, port: if protocol == Protocol::Icmp { 0 } else { port } };
            // Half the time, a port the destination pod really has (named ports matter).
            if let Some(pod) = cluster.pod_at(dst)
                && !pod.ports.is_empty()
                && s % 2 == 0
            {
                let p = &pod.ports[d % pod.ports.len()];
                q.protocol = p.protocol;
                q.port = p.port;
            }
            let decision = evaluator.evaluate(&q);
            let egress = compiled_side(&compiled, &cluster, src, dst, Direction::Egress, &q);
            let ingress = compiled_side(&compiled, &cluster, dst, src, Direction::Ingress, &q);
            prop_assert_eq!(&egress, &reference_side(&decision.egress), "egress of {:?}: {:?}", q, decision);
            prop_assert_eq!(&ingress, &reference_side(&decision.ingress), "ingress of {:?}: {:?}", q, decision);
        }
    }
}
