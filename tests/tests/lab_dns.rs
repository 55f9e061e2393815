//! End-to-end tests of the lab's cluster DNS (root): pods look names up through the
//! `kube-system/kube-dns` Service as real pods do, connect to what they got, and the agent
//! names the peer by the name they asked for. Each test's lab has its own name, so they run
//! in parallel.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use enforcer::lab::{
    Family, Lab, ProbeResult, Protocol,
    resolver::{self, DnsOutcome, RecordType},
};
use model::{Direction, FlowRecord};
use tests::{
    agent::read_records,
    lab::{TestLab, chain},
    require_root,
};

/// A resolver Deployment behind its Service, a client, an external API the client calls by
/// name, and an external host that only echoes UDP 53 (what a tunnel's "resolver" would be
/// to the lab).
const TOPOLOGY: &str = "
namespaces:
  - name: kube-system
  - name: app
pods:
  - name: app/client
    labels: {role: client}
workloads:
  - kind: Deployment
    name: coredns
    namespace: kube-system
    labels: {k8s-app: kube-dns}
    ports: [{port: 53, protocol: UDP}]
services:
  - name: kube-dns
    namespace: kube-system
    selector: {k8s-app: kube-dns}
    ports: [{port: 53, protocol: UDP}]
externals:
  - name: api.example.com
    addresses: [203.0.113.40, 2001:db8::40]
    ports: [{port: 8443}]
  - name: echo.example.net
    addresses: [198.51.100.53, 2001:db8:53::53]
    ports: [{port: 53, protocol: UDP}]
";

const CLIENT: &str = "app/client";
const API: &str = "api.example.com";

fn address(lab: &Lab, external: &str, family: Family) -> IpAddr {
    lab.external(external)
        .unwrap()
        .addresses
        .iter()
        .copied()
        .find(|a| Family::of(*a) == family)
        .unwrap()
}

fn resolve_and_probe(lab: &Lab, name: &str, family: Family) -> (Option<IpAddr>, ProbeResult) {
    lab.resolve_and_probe(CLIENT, name, family, 8443, Protocol::Tcp)
        .unwrap_or_else(|e| panic!("resolve {name} over {family:?}: {}", chain(&e)))
}

/// Poll the lab's flow records (bounded) until one matches.
fn wait_for_record(lab: &Lab, matches: impl Fn(&FlowRecord) -> bool) -> Option<FlowRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = read_records(&lab.flows_file()).into_iter().find(&matches) {
            return Some(r);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pod_looks_a_name_up_connects_and_the_agent_names_the_peer() {
    require_root!();
    let lab = TestLab::up_with(TOPOLOGY, |o| o.agent = true);
    let client = lab.pod(CLIENT).unwrap().clone();
    for family in [Family::V4, Family::V6] {
        let expected = address(&lab, API, family);
        assert_eq!(
            resolve_and_probe(&lab, API, family),
            (Some(expected), ProbeResult::Ok),
            "over {family:?}"
        );
        let record = wait_for_record(&lab, |r| {
            r.interface == client.host_interface
                && r.direction == Direction::Egress
                && r.remote.ip == expected
                && r.remote.port == 8443
                && r.remote.dns_name.is_some()
        });
        let all = read_records(&lab.flows_file());
        let record = record.unwrap_or_else(|| {
            panic!("no record names {expected} by its DNS name over {family:?}: {all:#?}")
        });
        assert_eq!(record.remote.dns_name.as_deref(), Some(API), "{record:#?}");
    }

    // An unknown name: NXDOMAIN, nothing probed.
    let (address, result) = resolve_and_probe(&lab, "nope.example.com", Family::V4);
    assert_eq!(address, None, "{result:?}");
    assert!(
        matches!(&result, ProbeResult::Error(e) if e.contains("NXDOMAIN")),
        "{result:?}"
    );
}

#[test]
fn the_resolver_names_services_and_follows_restarts() {
    require_root!();
    let mut lab = TestLab::up(TOPOLOGY);
    let dns = lab.service(resolver::RESOLVER_SERVICE).unwrap().clone();
    let timeout = Duration::from_secs(2);
    for family in [Family::V4, Family::V6] {
        let server = resolver::cluster_dns(&lab, family).unwrap();
        let outcome = resolver::query_in_pod(
            &lab,
            CLIENT,
            server,
            "kube-dns.kube-system.svc.cluster.local",
            RecordType::for_family(family),
            timeout,
        )
        .unwrap();
        let expected: IpAddr = match family {
            Family::V4 => dns.ipv4.into(),
            Family::V6 => dns.ipv6.into(),
        };
        assert_eq!(outcome, DnsOutcome::Answered(vec![expected]), "{family:?}");
    }

    // New resolver pods (new addresses) answer too: the server restarts with the pods.
    let before = lab.pods_of("kube-system/coredns").unwrap()[0].ipv4;
    let change = lab
        .restart("kube-system/coredns")
        .unwrap_or_else(|e| panic!("restart: {}", chain(&e)));
    assert_eq!(change.added.len(), 1);
    assert_ne!(lab.pods_of("kube-system/coredns").unwrap()[0].ipv4, before);
    for family in [Family::V4, Family::V6] {
        assert_eq!(
            resolve_and_probe(&lab, API, family),
            (Some(address(&lab, API, family)), ProbeResult::Ok),
            "after the restart, over {family:?}"
        );
    }

    // A resolver pod still echoes the lab's own probes on UDP 53, so probes tell whether
    // it is reachable.
    let coredns = lab.pods_of("kube-system/coredns").unwrap()[0].ipv6;
    assert_eq!(
        lab.probe_one(CLIENT, coredns.into(), 53, Protocol::Udp)
            .unwrap(),
        ProbeResult::Ok
    );
}

/// Queries straight to an external address, as a DNS tunnel sends them.
#[test]
fn raw_queries_to_any_server_say_what_came_back() {
    require_root!();
    let lab = TestLab::up(TOPOLOGY);
    let timeout = Duration::from_millis(500);
    let tunnel_name = format!("{}.{}.exfil.example.org", "a".repeat(63), "b".repeat(40));
    let query = |server: IpAddr| {
        resolver::query_in_pod(
            &lab,
            CLIENT,
            SocketAddr::new(server, 53),
            &tunnel_name,
            RecordType::Txt,
            timeout,
        )
        .unwrap()
    };
    // An echo server sends the query back: not an answer.
    for family in [Family::V4, Family::V6] {
        let echo = address(&lab, "echo.example.net", family);
        assert_eq!(query(echo), DnsOutcome::NotAnAnswer, "{family:?}");
    }
    // Nobody serves UDP 53 there.
    assert_eq!(query(address(&lab, API, Family::V4)), DnsOutcome::Refused);
    // An unknown pod is an error naming it.
    let err = resolver::query_in_pod(
        &lab,
        "app/nobody",
        SocketAddr::new(address(&lab, API, Family::V4), 53),
        API,
        RecordType::A,
        timeout,
    )
    .unwrap_err();
    assert!(chain(&err).contains("app/nobody"), "{}", chain(&err));
}

#[test]
fn without_the_kube_dns_service_resolving_is_an_error_naming_it() {
    require_root!();
    let topology = "
namespaces:
  - name: app
pods:
  - name: app/client
externals:
  - name: api.example.com
    addresses: [203.0.113.41]
    ports: [{port: 8443}]
";
    let lab = TestLab::up(topology);
    let err = lab
        .resolve_and_probe(CLIENT, API, Family::V4, 8443, Protocol::Tcp)
        .unwrap_err();
    assert!(
        chain(&err).contains("kube-system/kube-dns"),
        "{}",
        chain(&err)
    );
}
