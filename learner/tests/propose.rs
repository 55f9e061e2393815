//! A baseline of a small shop -> proposed NetworkPolicies, checked by loading them back as
//! the API server would and by evaluating them with the reference evaluator: what was
//! observed is allowed, what was not is denied.

use std::net::IpAddr;

use learner::{
    baseline::Baseline,
    observation::{Observation, Side},
    propose::{Options, Proposal, propose},
};
use model::{
    Direction, FlowKind, Protocol,
    netpol::{
        cluster::Cluster,
        evaluate::{DefaultAction, Evaluator, Query},
        load::load_str,
        policy::Policy,
    },
};

const CLUSTER: &str = r#"{
  "namespaces": {"shop": {}, "payments": {"team": "payments"}, "kube-system": {}},
  "nodes": {"node": ["192.168.50.1"]},
  "pods": [
    {"namespace": "shop", "name": "frontend-5f6b9-a", "ips": ["10.244.0.2"], "node": "node",
     "labels": {"app": "frontend", "tier": "web", "pod-template-hash": "5f6b9"},
     "workload": "shop/Deployment/frontend"},
    {"namespace": "shop", "name": "frontend-5f6b9-b", "ips": ["10.244.0.3"], "node": "node",
     "labels": {"app": "frontend", "tier": "web", "pod-template-hash": "5f6b9"},
     "workload": "shop/Deployment/frontend"},
    {"namespace": "shop", "name": "catalog-77c8d-a", "ips": ["10.244.0.4"], "node": "node",
     "labels": {"app": "catalog", "tier": "api", "pod-template-hash": "77c8d"},
     "ports": [{"name": "http", "port": 8080}], "workload": "shop/Deployment/catalog"},
    {"namespace": "payments", "name": "checkout-0", "ips": ["10.244.0.5"], "node": "node",
     "labels": {"app": "checkout", "statefulset.kubernetes.io/pod-name": "checkout-0"},
     "ports": [{"port": 8443}], "workload": "payments/StatefulSet/checkout"},
    {"namespace": "kube-system", "name": "coredns-1", "ips": ["10.244.0.6"], "node": "node",
     "labels": {"k8s-app": "kube-dns"}, "workload": "kube-system/Deployment/coredns"}
  ],
  "services": [
    {"namespace": "shop", "name": "catalog", "selector": {"app": "catalog"},
     "cluster_ips": ["10.96.0.10"], "ports": [{"port": 80, "target_port": "http"}]}
  ]
}"#;

const T0: i64 = 1_764_324_000_000;

fn side(
    ip: &str,
    port: u16,
    pod: Option<&'static str>,
    workload: Option<&'static str>,
) -> Side<'static> {
    Side {
        ip: ip.parse().unwrap(),
        port,
        pod,
        workload,
        dns_name: None,
        service: None,
    }
}

fn connection(
    direction: Direction,
    local: Side<'static>,
    remote: Side<'static>,
) -> Observation<'static> {
    Observation {
        kind: FlowKind::New,
        time_ms: T0,
        direction,
        protocol: Protocol::Tcp,
        local,
        remote,
        host_peer: false,
        bytes: None,
    }
}

const FRONTEND_A: (&str, Option<&str>, Option<&str>) = (
    "10.244.0.2",
    Some("shop/frontend-5f6b9-a"),
    Some("shop/Deployment/frontend"),
);
const CATALOG: (&str, Option<&str>, Option<&str>) = (
    "10.244.0.4",
    Some("shop/catalog-77c8d-a"),
    Some("shop/Deployment/catalog"),
);
const CHECKOUT: (&str, Option<&str>, Option<&str>) = (
    "10.244.0.5",
    Some("payments/checkout-0"),
    Some("payments/StatefulSet/checkout"),
);

fn at(pod: (&'static str, Option<&'static str>, Option<&'static str>), port: u16) -> Side<'static> {
    side(pod.0, port, pod.1, pod.2)
}

/// The shop's traffic, as each endpoint recorded it.
fn baseline() -> Baseline {
    let mut b = Baseline::default();
    let mut observe = |o: Observation<'static>, times: usize| {
        for _ in 0..times {
            b.observe(&o);
        }
    };
    // frontend -> Service shop/catalog:80 (before DNAT), catalog sees it on 8080.
    let mut to_service = side("10.96.0.10", 80, None, None);
    to_service.service = Some("shop/catalog");
    observe(
        connection(Direction::Egress, at(FRONTEND_A, 40000), to_service),
        5,
    );
    observe(
        connection(Direction::Ingress, at(CATALOG, 8080), at(FRONTEND_A, 40000)),
        5,
    );
    // catalog -> checkout 8443 across namespaces.
    observe(
        connection(Direction::Egress, at(CATALOG, 40001), at(CHECKOUT, 8443)),
        3,
    );
    observe(
        connection(Direction::Ingress, at(CHECKOUT, 8443), at(CATALOG, 40001)),
        3,
    );
    // checkout -> the payment provider, by name.
    let mut provider = side("203.0.113.10", 443, None, None);
    provider.dns_name = Some("payments.example.com");
    observe(
        connection(Direction::Egress, at(CHECKOUT, 40002), provider),
        2,
    );
    // Left out, each with a note: the node's probes, ICMP, an in-cluster address unnamed.
    let mut probe = connection(
        Direction::Ingress,
        at(FRONTEND_A, 8080),
        side("192.168.50.1", 50000, None, None),
    );
    probe.host_peer = true;
    observe(probe, 1);
    let mut ping = connection(Direction::Egress, at(FRONTEND_A, 0), at(CATALOG, 0));
    ping.protocol = Protocol::Icmp;
    observe(ping, 1);
    observe(
        connection(
            Direction::Egress,
            at(CATALOG, 40003),
            side("10.244.0.5", 9000, None, None),
        ),
        1,
    );
    b
}

fn cluster() -> Cluster {
    serde_json::from_str(CLUSTER).unwrap()
}

fn yaml(proposal: &Proposal) -> String {
    proposal
        .policies
        .iter()
        .map(|p| serde_yaml::to_string(&p.policy).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn one_policy_per_workload_that_loads_back_as_the_api_server_would() {
    let proposal = propose(&baseline(), &cluster(), &Options::default());
    let names: Vec<String> = proposal
        .policies
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.workload,
                p.policy.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "payments/StatefulSet/checkout/palisade-statefulset-checkout",
            "shop/Deployment/catalog/palisade-deployment-catalog",
            "shop/Deployment/frontend/palisade-deployment-frontend",
        ]
    );
    let text = yaml(&proposal);
    let loaded = load_str(&text, std::path::Path::new("proposal.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(loaded.len(), 3);
    // Same input, same bytes.
    assert_eq!(
        yaml(&propose(&baseline(), &cluster(), &Options::default())),
        text
    );
}

#[test]
fn selectors_never_name_noise_and_cluster_addresses_are_never_ip_blocks() {
    let cluster = cluster();
    let proposal = propose(&baseline(), &cluster, &Options::default());
    let text = yaml(&proposal);
    for noise in model::identity::NOISE_LABELS {
        assert!(!text.contains(noise), "{noise} in\n{text}");
    }
    let in_cluster: Vec<IpAddr> = cluster
        .pods
        .iter()
        .flat_map(|p| p.ips.clone())
        .chain(cluster.services.iter().flat_map(|s| s.cluster_ips.clone()))
        .collect();
    for p in &proposal.policies {
        let spec = p.policy.spec.as_ref().unwrap();
        let peers = spec
            .egress
            .iter()
            .flatten()
            .flat_map(|r| r.to.iter().flatten());
        let peers = peers.chain(
            spec.ingress
                .iter()
                .flatten()
                .flat_map(|r| r.from.iter().flatten()),
        );
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                let net: ipnet::IpNet = block.cidr.parse().unwrap();
                assert!(
                    !in_cluster.iter().any(|ip| net.contains(ip)),
                    "{net} in {}",
                    p.workload
                );
            }
        }
    }
    let checkout = serde_yaml::to_string(&proposal.policies[0].policy).unwrap();
    assert!(checkout.contains("cidr: 203.0.113.10/32"), "{checkout}");
    let notes: Vec<String> = proposal
        .notes
        .iter()
        .map(|n| format!("{}: {}", n.workload, n.message))
        .collect();
    let expect = [
        "shop/Deployment/catalog: egress to external 10.244.0.5 TCP 9000 left out: 10.244.0.5 is pod payments/checkout-0",
        "shop/Deployment/frontend: egress to workload shop/Deployment/catalog ICMP left out",
        "shop/Deployment/frontend: ingress from the pod's node TCP 8080 left out: the pod's own node is always allowed",
    ];
    for e in expect {
        assert!(notes.iter().any(|n| n.starts_with(e)), "{e}\nin {notes:#?}");
    }
}

#[test]
fn what_was_observed_is_allowed_and_nothing_else() {
    let cluster = cluster();
    let proposal = propose(&baseline(), &cluster, &Options::default());
    let policies: Vec<Policy> = proposal
        .policies
        .iter()
        .map(|p| Policy::from_k8s(&p.policy).unwrap())
        .collect();
    // Zero trust, but for the resolver, which this baseline did not observe.
    let zero_trust = |pod: &model::netpol::cluster::Pod| match pod.namespace.as_str() {
        "kube-system" => DefaultAction::Allow,
        _ => DefaultAction::Deny,
    };
    let evaluator = Evaluator::new(&cluster, &policies, &zero_trust);
    let allowed = |src: &str, dst: &str, protocol: Protocol, port: u16| {
        evaluator
            .evaluate(&Query {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol,
                port,
            })
            .allowed()
    };
    // Observed (the Service's connections as the backend receives them, after DNAT).
    assert!(allowed("10.244.0.2", "10.244.0.4", Protocol::Tcp, 8080));
    assert!(
        allowed("10.244.0.3", "10.244.0.4", Protocol::Tcp, 8080),
        "any frontend replica"
    );
    assert!(allowed("10.244.0.4", "10.244.0.5", Protocol::Tcp, 8443));
    assert!(allowed("10.244.0.5", "203.0.113.10", Protocol::Tcp, 443));
    for pod in ["10.244.0.2", "10.244.0.4", "10.244.0.5"] {
        assert!(
            allowed(pod, "10.244.0.6", Protocol::Udp, 53),
            "{pod} -> DNS"
        );
        assert!(
            allowed(pod, "10.244.0.6", Protocol::Tcp, 53),
            "{pod} -> DNS over TCP"
        );
    }
    // Never observed.
    assert!(
        !allowed("10.244.0.2", "10.244.0.5", Protocol::Tcp, 8443),
        "frontend -> checkout"
    );
    assert!(
        !allowed("10.244.0.2", "10.244.0.4", Protocol::Tcp, 9090),
        "another port"
    );
    assert!(
        !allowed("10.244.0.5", "203.0.113.11", Protocol::Tcp, 443),
        "another address"
    );
    assert!(
        !allowed("10.244.0.4", "10.244.0.2", Protocol::Tcp, 8080),
        "the other way"
    );
}

#[test]
fn every_rule_carries_its_evidence() {
    let proposal = propose(&baseline(), &cluster(), &Options::default());
    let catalog = &proposal.policies[1];
    let ingress: Vec<_> = catalog
        .evidence
        .iter()
        .filter(|e| e.direction == Direction::Ingress)
        .collect();
    assert_eq!(ingress.len(), 1, "{:#?}", catalog.evidence);
    let e = ingress[0];
    assert_eq!(
        (
            e.policy.as_str(),
            e.rule,
            e.peer.as_str(),
            e.port,
            e.connections
        ),
        (
            "shop/palisade-deployment-catalog",
            0,
            "workload shop/Deployment/frontend",
            Some(8080),
            5
        )
    );
    assert_eq!(e.source_pods, ["shop/frontend-5f6b9-a"]);
    assert_eq!(e.days, 1);
    assert!(e.confidence > 0.0 && e.confidence < 0.5, "{}", e.confidence);
    let frontend = &proposal.policies[2];
    let via_service = frontend
        .evidence
        .iter()
        .find(|e| e.peer == "service shop/catalog")
        .expect("the Service rule");
    assert_eq!(via_service.port, Some(80));
    let spec = serde_yaml::to_string(&frontend.policy).unwrap();
    assert!(
        spec.contains("port: http"),
        "the named target port stays named:\n{spec}"
    );
}
