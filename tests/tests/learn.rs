//! The learner end to end in the lab (root): traffic in learn mode -> `palisade learn
//! ingest` -> `palisade learn propose` -> the workloads restarted and scaled (new pod
//! names, addresses and hash labels) -> the proposal enforced: the same traffic passes, a
//! port or a workload never seen is dropped.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use enforcer::lab::{Lab, ModeTarget, ProbeResult, Protocol};
use learner::store::Store;
use tests::{
    agent::read_records,
    lab::{TestLab, program},
    require_root,
};

/// web (2 replicas) calls api (2 replicas) through its Service; api calls the database and
/// a payment API outside the cluster; everyone resolves names. api also serves 9001, which
/// nobody uses; `shop/debug` is a bare pod that stays quiet while Palisade learns.
const TOPOLOGY: &str = "
namespaces:
  - name: shop
  - name: data
  - name: kube-system
pods:
  - name: shop/debug
    labels: {role: debug}
    ports: [{port: 7000}]
workloads:
  - kind: Deployment
    name: web
    namespace: shop
    replicas: 2
    labels: {app: web}
    ports: [{port: 8080, name: http}]
  - kind: Deployment
    name: api
    namespace: shop
    replicas: 2
    labels: {app: api}
    ports: [{port: 9000, name: grpc}, {port: 9001, name: admin}]
  - kind: StatefulSet
    name: db
    namespace: data
    labels: {app: db}
    ports: [{port: 5432}]
  - kind: Deployment
    name: coredns
    namespace: kube-system
    labels: {k8s-app: kube-dns}
    ports: [{port: 53, protocol: UDP}]
services:
  - name: api
    namespace: shop
    selector: {app: api}
    ports: [{port: 80, targetPort: grpc}]
externals:
  - name: payments.example.com
    addresses: [203.0.113.7]
    ports: [{port: 8443}, {port: 8444}]
";

fn pods_of(lab: &Lab, workload: &str) -> Vec<String> {
    lab.pods_of(workload)
        .unwrap()
        .into_iter()
        .map(|p| p.name.clone())
        .collect()
}

fn ipv4(lab: &Lab, pod: &str) -> IpAddr {
    lab.pod(pod).unwrap().ipv4.into()
}

fn probe(lab: &Lab, from: &str, to: IpAddr, port: u16, protocol: Protocol) -> ProbeResult {
    lab.probe_one(from, to, port, protocol).unwrap()
}

/// The shop's normal traffic: every connection it makes, with what the probe saw.
fn baseline_traffic(lab: &Lab) -> Vec<(String, ProbeResult)> {
    let api_service: IpAddr = lab.service("shop/api").unwrap().ipv4.into();
    let db = ipv4(lab, "data/db-0");
    let dns = ipv4(lab, &pods_of(lab, "kube-system/coredns")[0]);
    let payments: IpAddr = "203.0.113.7".parse().unwrap();
    let mut results = Vec::new();
    let mut run = |from: &str, to: IpAddr, port: u16, protocol: Protocol| {
        let what = format!("{from} -> {to} {protocol:?} {port}");
        results.push((what, probe(lab, from, to, port, protocol)));
    };
    for web in pods_of(lab, "shop/web") {
        run(&web, api_service, 80, Protocol::Tcp);
        run(&web, dns, 53, Protocol::Udp);
    }
    for api in pods_of(lab, "shop/api") {
        run(&api, db, 5432, Protocol::Tcp);
        run(&api, payments, 8443, Protocol::Tcp);
        run(&api, dns, 53, Protocol::Udp);
    }
    results
}

fn palisade(args: &[&str]) -> String {
    let out = Command::new(program()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "palisade {args:?}:\n{text}");
    text
}

/// Wait until the agent wrote a `new` record of every endpoint's connections.
fn wait_for_records(lab: &Lab, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let new = read_records(&lab.flows_file())
            .into_iter()
            .filter(|r| r.kind == model::FlowKind::New)
            .count();
        if new >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {new} new-connection records"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cluster_addresses(lab: &Lab) -> BTreeSet<IpAddr> {
    let mut all: BTreeSet<IpAddr> = lab.pods().iter().flat_map(|p| p.addresses()).collect();
    for s in lab.services() {
        all.insert(s.ipv4.into());
        all.insert(s.ipv6.into());
    }
    all
}

/// `networkpolicies/<namespace>/<name>.yaml` under `dir`.
fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for ns in std::fs::read_dir(dir.join("networkpolicies")).unwrap() {
        for f in std::fs::read_dir(ns.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

#[test]
fn learned_policy_survives_restarts_and_scaling_and_denies_the_unseen() {
    require_root!();
    let mut lab = TestLab::up_with(TOPOLOGY, |o| {
        o.agent = true;
        o.mode = model::Mode::Learn;
    });
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("baseline.db");
    let out = dir.path().join("proposal");

    // Learn: the traffic, three times over.
    for round in 0..3 {
        for (what, result) in baseline_traffic(&lab) {
            assert_eq!(result, ProbeResult::Ok, "round {round}: {what}");
        }
    }
    // Each connection is recorded by the client's endpoint, and by the server's when the
    // server is a pod: 2 web x 2 + 2 api x 3 = 10 connections, 8 of them to pods, a round.
    wait_for_records(&lab, 3 * 18);

    let flows = lab.flows_file();
    let flows = flows.to_str().unwrap();
    let store_arg = store.to_str().unwrap();
    let first = palisade(&["learn", "ingest", "--store", store_arg, flows]);
    assert!(first.contains("records (json)"), "{first}");
    let learned = Store::open(&store).unwrap().baseline(None).unwrap();
    let connections =
        |b: &learner::baseline::Baseline| b.rules.values().map(|e| e.connections).sum::<u64>();
    // Read again: nothing is counted twice.
    let again = palisade(&["learn", "ingest", "--store", store_arg, flows]);
    assert!(again.contains(": 0 records"), "{again}");
    let relearned = Store::open(&store).unwrap().baseline(None).unwrap();
    assert_eq!(connections(&relearned), connections(&learned));
    let shown = palisade(&["learn", "show", "--store", store_arg]);
    assert!(shown.contains("shop/Deployment/web"), "{shown}");
    assert!(shown.contains("service shop/api"), "{shown}");

    let cluster = lab.cluster_file();
    let proposed = palisade(&[
        "learn",
        "propose",
        "--store",
        store_arg,
        "--cluster",
        cluster.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let files = policy_files(&out);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&out).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "networkpolicies/data/palisade-statefulset-db.yaml",
            "networkpolicies/kube-system/palisade-deployment-coredns.yaml",
            "networkpolicies/shop/palisade-deployment-api.yaml",
            "networkpolicies/shop/palisade-deployment-web.yaml",
        ],
        "{proposed}"
    );
    // No noise label and no in-cluster address in any policy.
    let in_cluster = cluster_addresses(&lab);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for noise in model::identity::NOISE_LABELS {
            assert!(
                !text.contains(noise),
                "{noise} in {}:\n{text}",
                file.display()
            );
        }
        for line in text.lines().filter(|l| l.trim_start().starts_with("cidr:")) {
            let net: ipnet::IpNet = line
                .trim()
                .trim_start_matches("cidr:")
                .trim()
                .parse()
                .unwrap();
            assert!(
                !in_cluster.iter().any(|ip| net.contains(ip)),
                "{net} in {}",
                file.display()
            );
        }
    }
    let api =
        std::fs::read_to_string(out.join("networkpolicies/shop/palisade-deployment-api.yaml"))
            .unwrap();
    assert!(api.contains("cidr: 203.0.113.7/32"), "{api}");
    assert!(api.contains("# Proposed by Palisade"), "{api}");

    // Replayed offline, the proposal allows everything that was recorded; compared with no
    // policy at all, it isolates the four workloads both ways and breaks nothing.
    let traffic = ["--store", store_arg, "--cluster", cluster.to_str().unwrap()];
    let out_arg = out.to_str().unwrap();
    let replayed = palisade(&[&["policy", "replay", "--policies", out_arg][..], &traffic].concat());
    assert!(
        replayed.contains("100.0% allowed; 0 flows would be denied"),
        "{replayed}"
    );
    // The same straight from the agent's file of records.
    let from_file = palisade(&[
        "policy",
        "replay",
        "--policies",
        out_arg,
        "--flows",
        flows,
        "--cluster",
        cluster.to_str().unwrap(),
    ]);
    assert_eq!(from_file, replayed);

    let diffed = palisade(
        &[
            &["policy", "diff", "--from", "none", "--to", out_arg][..],
            &traffic,
        ]
        .concat(),
    );
    assert!(
        diffed.starts_with("0 flows become denied, 0 become allowed, 8 isolation changes"),
        "{diffed}"
    );

    // The review: Cilium's form too (the external API by address: no DNS name was seen),
    // and the report with its picture.
    let review = dir.path().join("review");
    let exported = palisade(&[
        "policy",
        "export",
        "--from",
        out_arg,
        "--out",
        review.to_str().unwrap(),
        "--cilium",
    ]);
    assert!(exported.contains("8 files written"), "{exported}");
    let cnp = std::fs::read_to_string(
        review.join("ciliumnetworkpolicies/shop/palisade-deployment-api.yaml"),
    )
    .unwrap();
    assert!(cnp.contains("kind: CiliumNetworkPolicy"), "{cnp}");
    let report = dir.path().join("review.html");
    let notes = out.join("NOTES.md");
    let reported = palisade(
        &[
            &[
                "policy",
                "report",
                "--policies",
                out_arg,
                "--from",
                "none",
                "--notes",
                notes.to_str().unwrap(),
                "--out",
                report.to_str().unwrap(),
            ][..],
            &traffic,
        ]
        .concat(),
    );
    assert!(reported.contains("0 flows would be denied"), "{reported}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("<svg") && html.contains("shop/Deployment/api"),
        "{html}"
    );

    // Rollouts: new names, addresses and pod-template-hash; one more api replica.
    let old_web = pods_of(&lab, "shop/web");
    lab.restart("shop/web").unwrap();
    lab.restart("shop/api").unwrap();
    lab.scale("shop/api", 3).unwrap();
    assert!(
        pods_of(&lab, "shop/web")
            .iter()
            .all(|p| !old_web.contains(p))
    );
    assert_eq!(pods_of(&lab, "shop/api").len(), 3);

    // A reviewer takes the payment API out of the api's policy, in the file: what is
    // enforced is the reviewed file.
    let api_file = out.join("networkpolicies/shop/palisade-deployment-api.yaml");
    let reviewed = std::fs::read_to_string(&api_file).unwrap().replace(
        "  - ports:\n    - port: 8443\n      protocol: TCP\n    to:\n    - ipBlock:\n        cidr: 203.0.113.7/32\n",
        "",
    );
    assert!(!reviewed.contains("cidr: 203.0.113.7"), "{reviewed}");
    std::fs::write(&api_file, reviewed).unwrap();

    // Enforce exactly the reviewed proposal.
    let applied = lab.apply_policy_files(&files).unwrap();
    assert!(applied.agent.as_ref().unwrap().is_applied(), "{applied:?}");
    lab.set_mode(model::Mode::Enforce, &ModeTarget::All)
        .unwrap();

    for (what, result) in baseline_traffic(&lab) {
        let expected = if what.contains("203.0.113.7") {
            ProbeResult::Timeout
        } else {
            ProbeResult::Ok
        };
        assert_eq!(result, expected, "enforced: {what}");
    }
    let api_pod = pods_of(&lab, "shop/api")[0].clone();
    let web_pod = pods_of(&lab, "shop/web")[0].clone();
    let db = ipv4(&lab, "data/db-0");
    let denied = [
        (
            "a port never seen",
            web_pod.as_str(),
            ipv4(&lab, &api_pod),
            9001,
        ),
        (
            "a workload never seen",
            "shop/debug",
            ipv4(&lab, &api_pod),
            9000,
        ),
        ("lateral movement", web_pod.as_str(), db, 5432),
        (
            "an external port never seen",
            api_pod.as_str(),
            "203.0.113.7".parse().unwrap(),
            8444,
        ),
    ];
    for (why, from, to, port) in denied {
        assert_eq!(
            probe(&lab, from, to, port, Protocol::Tcp),
            ProbeResult::Timeout,
            "{why}: {from} -> {to}:{port}"
        );
    }
    // The refusals, as `palisade flows` shows them.
    std::thread::sleep(Duration::from_millis(500));
    let shown = palisade(&["flows", "--lab", lab.name(), "--verdict", "deny"]);
    let lines: Vec<&str> = shown.lines().skip(1).collect();
    assert!(
        lines.iter().any(|l| l.contains(&web_pod)
            && l.contains("data/db-0")
            && l.contains("TCP/5432")
            && l.contains("no-rule")),
        "{shown}"
    );
    assert!(lines.iter().all(|l| l.contains(" deny ")), "{shown}");
}
