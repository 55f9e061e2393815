//! Export, import and round trip of NetworkPolicy files; replay and diff against
//! hand-computed expectations; every exported file checked with `kubernetes-validate
//! --strict` (installed by scripts/setup.sh).

use std::{path::Path, process::Command};

use model::{
    Direction, Protocol,
    evidence::RuleEvidence,
    netpol::{cluster::Cluster, evaluate::DefaultAction},
};
use policy_gen::{
    diff::diff,
    export::write_network_policies,
    import::import_dir,
    replay::{Endpoint, ObservedFlow, Outcome, ReplayOptions, RuleId, replay},
    set::{PolicySet, ReviewedPolicy},
};

const API: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: palisade-deployment-api
  namespace: shop
  labels: {app.kubernetes.io/managed-by: palisade}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: grpc, protocol: TCP}]
  - from: [{podSelector: {matchLabels: {app: admin}}}]
    ports: [{port: 9001, protocol: TCP}]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.7/32}}]
    ports: [{port: 8443, protocol: TCP}]
";

const DB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: palisade-statefulset-db, namespace: data}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}, podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432, protocol: TCP}]
";

const CLUSTER: &str = r#"{
  "namespaces": {"shop": {}, "data": {}},
  "nodes": {"node": ["192.168.50.1"]},
  "pods": [
    {"namespace": "shop", "name": "web-1", "ips": ["10.244.0.2"], "node": "node",
     "labels": {"app": "web"}, "workload": "shop/Deployment/web"},
    {"namespace": "shop", "name": "api-1", "ips": ["10.244.0.3"], "node": "node",
     "labels": {"app": "api"}, "ports": [{"name": "grpc", "port": 9000}],
     "workload": "shop/Deployment/api"},
    {"namespace": "data", "name": "db-0", "ips": ["10.244.0.4"], "node": "node",
     "labels": {"app": "db"}, "workload": "data/StatefulSet/db"}
  ]
}"#;

fn policy(yaml: &str, workload: &str, evidence: Vec<RuleEvidence>) -> ReviewedPolicy {
    ReviewedPolicy {
        policy: serde_yaml::from_str(yaml).unwrap(),
        workload: Some(workload.into()),
        evidence,
        source: None,
    }
}

fn evidence(
    policy: &str,
    direction: Direction,
    rule: usize,
    peer: &str,
    port: u16,
) -> RuleEvidence {
    RuleEvidence {
        policy: policy.into(),
        direction,
        rule,
        peer: peer.into(),
        dns_name: None,
        protocol: Protocol::Tcp,
        port: Some(port),
        connections: 42,
        bytes: 4200,
        source_pods: vec!["shop/web-1".into()],
        source_pods_saturated: false,
        first_seen: "2026-11-20T10:00:00.000Z".into(),
        last_seen: "2026-11-28T10:00:00.000Z".into(),
        days: 7,
        confidence: 0.98,
        widened: None,
    }
}

fn set() -> PolicySet {
    let mut set = PolicySet::default();
    set.insert(policy(
        API,
        "shop/Deployment/api",
        vec![evidence(
            "shop/palisade-deployment-api",
            Direction::Ingress,
            0,
            "workload shop/Deployment/web",
            9000,
        )],
    ));
    set.insert(policy(DB, "data/StatefulSet/db", Vec::new()));
    set
}

fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(dir.join("networkpolicies")).unwrap() {
        for f in std::fs::read_dir(ns.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn exported_files_are_one_per_policy_deterministic_and_valid_kubernetes() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_network_policies(dir.path(), &set()).unwrap();
    assert_eq!(written.len(), 2);
    let first = files(dir.path());
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "networkpolicies/data/palisade-statefulset-db.yaml",
            "networkpolicies/shop/palisade-deployment-api.yaml"
        ]
    );
    let api = &first[1].1;
    assert!(
        api.starts_with("# Proposed by Palisade for shop/Deployment/api"),
        "{api}"
    );
    assert!(
        api.contains("#   ingress[0] from workload shop/Deployment/web TCP 9000: 42 connections"),
        "{api}"
    );
    assert!(api.contains("palisade.io/evidence: '[{\"policy\""), "{api}");
    // Same set, same bytes.
    let again = tempfile::tempdir().unwrap();
    write_network_policies(again.path(), &set()).unwrap();
    assert_eq!(files(again.path()), first);
    // The API server's schema, strictly.
    for path in &written {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.33.0"])
            .arg(path)
            .output()
            .expect("kubernetes-validate (installed by scripts/setup.sh)");
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn import_gives_back_the_set_and_a_reviewers_edits_survive_re_export() {
    let dir = tempfile::tempdir().unwrap();
    write_network_policies(dir.path(), &set()).unwrap();
    let imported = import_dir(dir.path()).unwrap();
    assert_eq!(imported.len(), 2);
    for (id, original) in &set().policies {
        let back = &imported.policies[id];
        assert_eq!(back.workload, original.workload, "{id}");
        assert_eq!(back.evidence, original.evidence, "{id}");
        let spec = |p: &ReviewedPolicy| p.policy.spec.clone();
        assert_eq!(spec(back), spec(original), "{id}");
    }
    // Re-exporting what was imported changes nothing.
    let before = files(dir.path());
    write_network_policies(dir.path(), &imported).unwrap();
    assert_eq!(files(dir.path()), before);

    // A reviewer comments a rule, labels the policy and drops a rule, in the file.
    let path = dir
        .path()
        .join("networkpolicies/shop/palisade-deployment-api.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text
        .replace(
            "  ingress:\n",
            "  ingress:\n  # reviewed by alice: web calls api over gRPC\n",
        )
        .replace(
            "    app.kubernetes.io/managed-by: palisade\n",
            "    app.kubernetes.io/managed-by: palisade\n    reviewed: alice\n",
        );
    let edited = remove_admin_rule(&edited);
    std::fs::write(&path, &edited).unwrap();
    let reviewed = import_dir(dir.path()).unwrap();
    let api = &reviewed.policies["shop/palisade-deployment-api"];
    assert_eq!(
        api.policy
            .spec
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.policy.metadata.labels.as_ref().unwrap()["reviewed"],
        "alice"
    );
    // Re-export keeps the reviewer's file as it is, comment included.
    write_network_policies(dir.path(), &reviewed).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    // A policy the set changes is written anew (the reviewer's label kept, it is a field).
    let mut changed = reviewed.clone();
    let p = changed
        .policies
        .get_mut("shop/palisade-deployment-api")
        .unwrap();
    p.policy.spec.as_mut().unwrap().egress = Some(Vec::new());
    write_network_policies(dir.path(), &changed).unwrap();
    let rewritten = std::fs::read_to_string(&path).unwrap();
    assert!(rewritten.contains("reviewed: alice"), "{rewritten}");
    assert!(rewritten.contains("egress: []"), "{rewritten}");
}

/// The second ingress rule (from app=admin) removed from an exported file.
fn remove_admin_rule(text: &str) -> String {
    let start = text
        .find("  - from:\n    - podSelector:\n        matchLabels:\n          app: admin")
        .unwrap();
    let end = text[start..]
        .find("  podSelector:")
        .map(|e| start + e)
        .unwrap();
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn a_bad_evidence_annotation_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = API.replace(
        "  labels: {app.kubernetes.io/managed-by: palisade}",
        "  labels: {app.kubernetes.io/managed-by: palisade}\n  annotations: {palisade.io/evidence: 'not json'}",
    );
    std::fs::write(dir.path().join("api.yaml"), bad).unwrap();
    let err = import_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("api.yaml: document 1: metadata.annotations[\"palisade.io/evidence\"]"),
        "{err}"
    );
}

fn flow(
    client: Endpoint,
    server: Endpoint,
    port: u16,
    connections: u64,
    first_seen: &str,
) -> ObservedFlow {
    ObservedFlow {
        client,
        server,
        protocol: Protocol::Tcp,
        port: Some(port),
        connections,
        first_seen: first_seen.into(),
        last_seen: "2026-11-28T10:00:00.000Z".into(),
    }
}

fn workload(w: &str) -> Endpoint {
    Endpoint::Workload { workload: w.into() }
}

fn flows() -> Vec<ObservedFlow> {
    let old = "2026-11-20T10:00:00.000Z";
    vec![
        flow(
            workload("shop/Deployment/web"),
            workload("shop/Deployment/api"),
            9000,
            100,
            old,
        ),
        flow(
            workload("shop/Deployment/api"),
            workload("data/StatefulSet/db"),
            5432,
            50,
            old,
        ),
        flow(
            workload("shop/Deployment/api"),
            Endpoint::External {
                ip: "203.0.113.7".parse().unwrap(),
                dns_name: Some("payments.example.com".into()),
            },
            8443,
            10,
            old,
        ),
        // Never allowed: web straight to the database; api to an unknown address, new.
        flow(
            workload("shop/Deployment/web"),
            workload("data/StatefulSet/db"),
            5432,
            3,
            old,
        ),
        flow(
            workload("shop/Deployment/api"),
            Endpoint::External {
                ip: "198.51.100.9".parse().unwrap(),
                dns_name: None,
            },
            443,
            2,
            "2026-11-28T09:00:00.000Z",
        ),
        flow(
            workload("shop/Deployment/gone"),
            workload("shop/Deployment/api"),
            9000,
            1,
            old,
        ),
    ]
}

#[test]
fn replay_counts_what_would_be_denied_and_the_rules_nobody_used() {
    let cluster: Cluster = serde_json::from_str(CLUSTER).unwrap();
    let options = ReplayOptions {
        default: DefaultAction::Allow,
        new_since: Some("2026-11-27T00:00:00.000Z".into()),
    };
    let r = replay(&set(), &cluster, &flows(), &options).unwrap();
    let verdicts: Vec<&str> = r
        .flows
        .iter()
        .map(|(_, o)| match o {
            Outcome::Allowed { .. } => "allowed",
            Outcome::Denied { .. } => "denied",
            Outcome::Unknown { .. } => "unknown",
        })
        .collect();
    // api -> db: the api's egress is isolated, and no rule of its policy names the database.
    assert_eq!(
        verdicts,
        [
            "allowed", "denied", "allowed", "denied", "denied", "unknown"
        ]
    );
    assert_eq!(
        r.flows[1].1,
        Outcome::Denied {
            direction: Direction::Egress,
            policies: vec!["shop/palisade-deployment-api".into()]
        }
    );
    // web -> db: web is not isolated; the database's ingress denies it.
    assert_eq!(
        r.flows[3].1,
        Outcome::Denied {
            direction: Direction::Ingress,
            policies: vec!["data/palisade-statefulset-db".into()]
        }
    );
    assert_eq!(
        r.flows[4].1,
        Outcome::Denied {
            direction: Direction::Egress,
            policies: vec!["shop/palisade-deployment-api".into()]
        }
    );
    let Outcome::Allowed { rules } = &r.flows[0].1 else {
        unreachable!()
    };
    assert_eq!(
        rules,
        &[RuleId {
            policy: "shop/palisade-deployment-api".into(),
            direction: Direction::Ingress,
            index: 0
        }]
    );
    let api = &r.workloads["shop/Deployment/api"];
    assert_eq!((api.connections, api.allowed, api.denied), (163, 110, 52));
    assert!(api.isolation.ingress && api.isolation.egress);
    assert!(!r.workloads["shop/Deployment/web"].isolation.egress);
    // The admin rule saw no traffic; the database's rule for the api is unused too: the
    // api's own egress drops those connections first.
    let unused: Vec<String> = r.unused_rules.iter().map(ToString::to_string).collect();
    assert_eq!(
        unused,
        [
            "data/palisade-statefulset-db ingress[0]",
            "shop/palisade-deployment-api ingress[1]"
        ]
    );
    assert_eq!(r.new_externals.len(), 1);
    assert_eq!(r.connections(), 166);
    assert!(
        (r.coverage() - 110.0 / 166.0).abs() < 1e-9,
        "{}",
        r.coverage()
    );
}

#[test]
fn a_diff_names_what_a_change_allows_denies_and_isolates() {
    let cluster: Cluster = serde_json::from_str(CLUSTER).unwrap();
    let options = ReplayOptions::default();
    let before = replay(&PolicySet::default(), &cluster, &flows(), &options).unwrap();
    let after = replay(&set(), &cluster, &flows(), &options).unwrap();
    let d = diff(&before, &after);
    assert!(d.newly_allowed.is_empty());
    let denied: Vec<String> = d
        .newly_denied
        .iter()
        .map(|(f, _)| format!("{} -> {}", f.client, f.server))
        .collect();
    assert_eq!(
        denied,
        [
            "shop/Deployment/api -> data/StatefulSet/db",
            "shop/Deployment/web -> data/StatefulSet/db",
            "shop/Deployment/api -> 198.51.100.9"
        ]
    );
    let isolated: Vec<String> = d
        .isolation_changes
        .iter()
        .map(|c| format!("{} {:?} {}", c.workload, c.direction, c.isolated))
        .collect();
    assert_eq!(
        isolated,
        [
            "data/StatefulSet/db Ingress true",
            "shop/Deployment/api Ingress true",
            "shop/Deployment/api Egress true"
        ]
    );
    // And back: the same flows, the other way round.
    let undo = diff(&after, &before);
    assert_eq!(undo.newly_allowed.len(), 3);
    assert!(undo.isolation_changes.iter().all(|c| !c.isolated));
}

/// The exported files, byte for byte (`tests/golden/export/`; `PALISADE_BLESS=1` rewrites
/// them after a deliberate change).
#[test]
fn exported_files_match_the_golden_files() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/export");
    let dir = tempfile::tempdir().unwrap();
    write_network_policies(dir.path(), &set()).unwrap();
    let bless = std::env::var_os("PALISADE_BLESS").is_some_and(|v| v == "1");
    for (name, text) in files(dir.path()) {
        let path = golden.join(&name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (PALISADE_BLESS=1 writes it)", path.display()));
        assert_eq!(text, expected, "{name} differs from its golden file");
    }
}
