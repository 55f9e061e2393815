//! The review report: Markdown numbers and rows, HTML escaping and structure, the SVG
//! graph's edges, and the page as a real browser (Debian's chromium, installed by
//! `scripts/setup.sh`) renders it.
//!
//! The inputs are built by hand: a small shop (frontend, cart, checkout, payments) with its
//! databases, a replay in which Prometheus' scrapes, an unannounced telemetry endpoint and a
//! batch job would be denied, and the diff against having no policies.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use model::{
    Direction, Protocol,
    evidence::{RuleEvidence, Widened},
};
use policy_gen::{
    diff::{Diff, IsolationChange},
    replay::{Endpoint, Isolation, ObservedFlow, Outcome, Replay, RuleId, WorkloadReplay},
    report::{self, MAX_EDGES, ReportInput},
    set::{PolicySet, ReviewedPolicy},
};
use serde_json::json;

const FRONTEND: &str = "shop/Deployment/frontend";
const CART: &str = "shop/Deployment/cart";
const CHECKOUT: &str = "shop/Deployment/checkout";
const PAYMENTS: &str = "shop/Deployment/payments";
const POSTGRES: &str = "data/StatefulSet/postgres";
const REDIS: &str = "data/StatefulSet/redis";
const NGINX: &str = "ingress-nginx/Deployment/ingress-nginx-controller";
const COREDNS: &str = "kube-system/Deployment/coredns";
const PROMETHEUS: &str = "monitoring/StatefulSet/prometheus";
const REPORT_EXPORT: &str = "batch/CronJob/report-export";
const LEGACY: &str = "shop/Deployment/legacy-admin";

const STRIPE: &str = "203.0.113.10";
const TELEMETRY: &str = "198.51.100.7";

// --- building inputs ---------------------------------------------------------------------

/// A peer and port as a rule's evidence names them.
struct Seen {
    peer: String,
    dns: Option<&'static str>,
    protocol: Protocol,
    port: u16,
    connections: u64,
    pods: &'static [&'static str],
    days: u32,
    confidence: f64,
    widened: Option<(&'static str, &'static str)>,
}

fn seen(peer: &str, protocol: Protocol, port: u16, connections: u64, confidence: f64) -> Seen {
    Seen {
        peer: peer.to_string(),
        dns: None,
        protocol,
        port,
        connections,
        pods: &[],
        days: 14,
        confidence,
        widened: None,
    }
}

fn workload(w: &str) -> String {
    format!("workload {w}")
}

fn labels_of(w: &str) -> serde_json::Value {
    json!({ "app": w.rsplit('/').next().unwrap() })
}

/// A rule's peer as a policy would write it.
fn k8s_peer(s: &Seen) -> serde_json::Value {
    if let Some(w) = s.peer.strip_prefix("workload ") {
        let ns = w.split('/').next().unwrap();
        json!({
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": ns } },
            "podSelector": { "matchLabels": labels_of(w) },
        })
    } else {
        let cidr = match s.widened {
            Some((cidr, _)) => cidr.to_string(),
            None => format!("{}/32", s.peer.split(' ').nth(1).unwrap()),
        };
        json!({ "ipBlock": { "cidr": cidr } })
    }
}

fn policy(w: &str, ingress: Vec<Seen>, egress: Vec<Seen>) -> ReviewedPolicy {
    let ns = w.split('/').next().unwrap();
    let name = w.rsplit('/').next().unwrap();
    let id = format!("{ns}/{name}");
    let rule = |s: &Seen, key: &str| {
        json!({
            key: [k8s_peer(s)],
            "ports": [{ "protocol": s.protocol.to_string(), "port": s.port }],
        })
    };
    let mut types = vec!["Ingress"];
    if !egress.is_empty() {
        types.push("Egress");
    }
    let policy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "podSelector": { "matchLabels": labels_of(w) },
            "policyTypes": types,
            "ingress": ingress.iter().map(|s| rule(s, "from")).collect::<Vec<_>>(),
            "egress": egress.iter().map(|s| rule(s, "to")).collect::<Vec<_>>(),
        },
    }))
    .unwrap();
    let evidence = |d: Direction, rules: &[Seen]| {
        rules
            .iter()
            .enumerate()
            .filter(|(_, s)| s.confidence >= 0.0)
            .map(|(i, s)| RuleEvidence {
                policy: id.clone(),
                direction: d,
                rule: i,
                peer: s.peer.clone(),
                dns_name: s.dns.map(str::to_string),
                protocol: s.protocol,
                port: Some(s.port),
                connections: s.connections,
                bytes: s.connections * 2_345,
                source_pods: s.pods.iter().map(|p| p.to_string()).collect(),
                source_pods_saturated: false,
                first_seen: "2025-02-14T08:00:00Z".into(),
                last_seen: "2025-02-28T17:42:09Z".into(),
                days: s.days,
                confidence: s.confidence,
                widened: s.widened.map(|(cidr, reason)| Widened {
                    cidr: cidr.parse().unwrap(),
                    reason: reason.into(),
                }),
            })
            .collect::<Vec<_>>()
    };
    let mut all = evidence(Direction::Ingress, &ingress);
    all.extend(evidence(Direction::Egress, &egress));
    ReviewedPolicy {
        policy,
        workload: Some(w.to_string()),
        evidence: all,
        source: None,
    }
}

fn dns() -> Seen {
    seen(&workload(COREDNS), Protocol::Udp, 53, 61_234, 0.97)
}

fn stripe(connections: u64, confidence: f64, days: u32) -> Seen {
    Seen {
        dns: Some("api.stripe.com"),
        days,
        widened: Some((
            "203.0.113.0/24",
            "api.stripe.com resolved to 4 addresses in this /24",
        )),
        ..seen(
            &format!("external {STRIPE} (api.stripe.com)"),
            Protocol::Tcp,
            443,
            connections,
            confidence,
        )
    }
}

fn shop_policies() -> PolicySet {
    let mut set = PolicySet::default();
    let from_frontend = Seen {
        pods: &[
            "frontend-7d9f8-2xkqp",
            "frontend-7d9f8-9wz4c",
            "frontend-7d9f8-tq8mn",
            "frontend-7d9f8-vv5rj",
        ],
        ..seen(&workload(FRONTEND), Protocol::Tcp, 8080, 402_113, 0.88)
    };
    set.insert(policy(
        FRONTEND,
        vec![Seen {
            pods: &[
                "ingress-nginx-controller-5c8d-kq2zt",
                "ingress-nginx-controller-5c8d-x7m4p",
            ],
            ..seen(&workload(NGINX), Protocol::Tcp, 8080, 1_254_301, 0.93)
        }],
        vec![
            seen(&workload(CART), Protocol::Tcp, 8080, 402_113, 0.88),
            seen(&workload(CHECKOUT), Protocol::Tcp, 8080, 48_221, 0.74),
            dns(),
        ],
    ));
    set.insert(policy(
        CART,
        vec![from_frontend],
        vec![
            seen(&workload(REDIS), Protocol::Tcp, 6379, 388_000, 0.81),
            dns(),
        ],
    ));
    set.insert(policy(
        CHECKOUT,
        vec![seen(&workload(FRONTEND), Protocol::Tcp, 8080, 48_221, 0.74)],
        vec![
            seen(&workload(PAYMENTS), Protocol::Tcp, 8443, 9_870, 0.55),
            seen(&workload(POSTGRES), Protocol::Tcp, 5432, 31_202, 0.62),
            stripe(9_700, 0.41, 9),
            dns(),
        ],
    ));
    set.insert(policy(
        PAYMENTS,
        vec![seen(&workload(CHECKOUT), Protocol::Tcp, 8443, 9_870, 0.55)],
        vec![stripe(120, 0.22, 2)],
    ));
    // ingress[1] was added in review: no evidence (confidence < 0 leaves it out).
    set.insert(policy(
        POSTGRES,
        vec![
            seen(&workload(CHECKOUT), Protocol::Tcp, 5432, 31_202, 0.62),
            seen(&workload(PROMETHEUS), Protocol::Tcp, 9187, 0, -1.0),
        ],
        vec![],
    ));
    set.insert(policy(
        REDIS,
        vec![seen(&workload(CART), Protocol::Tcp, 6379, 388_000, 0.81)],
        vec![],
    ));
    set
}

fn wl(w: &str) -> Endpoint {
    Endpoint::Workload { workload: w.into() }
}

fn ext(ip: &str, name: &str) -> Endpoint {
    Endpoint::External {
        ip: ip.parse().unwrap(),
        dns_name: Some(name.into()),
    }
}

fn flow(client: Endpoint, server: Endpoint, protocol: Protocol, port: u16, n: u64) -> ObservedFlow {
    ObservedFlow {
        client,
        server,
        protocol,
        port: Some(port),
        connections: n,
        first_seen: "2025-02-14T08:00:00Z".into(),
        last_seen: "2025-02-28T17:42:09Z".into(),
    }
}

fn by(rules: &[(&str, Direction, usize)]) -> Outcome {
    Outcome::Allowed {
        rules: rules
            .iter()
            .map(|&(policy, direction, index)| RuleId {
                policy: policy.into(),
                direction,
                index,
            })
            .collect(),
    }
}

fn denied(direction: Direction, policy: &str) -> Outcome {
    Outcome::Denied {
        direction,
        policies: vec![policy.into()],
    }
}

const IN: Direction = Direction::Ingress;
const EG: Direction = Direction::Egress;

fn shop_replay() -> Replay {
    use Protocol::{Tcp, Udp};
    let node: IpAddr = "10.0.0.11".parse().unwrap();
    let flows = vec![
        (
            flow(wl(NGINX), wl(FRONTEND), Tcp, 8080, 1_254_301),
            by(&[("shop/frontend", IN, 0)]),
        ),
        (
            flow(wl(FRONTEND), wl(CART), Tcp, 8080, 402_113),
            by(&[("shop/frontend", EG, 0), ("shop/cart", IN, 0)]),
        ),
        (
            flow(wl(FRONTEND), wl(CHECKOUT), Tcp, 8080, 48_221),
            by(&[("shop/frontend", EG, 1), ("shop/checkout", IN, 0)]),
        ),
        (
            flow(wl(CHECKOUT), wl(PAYMENTS), Tcp, 8443, 9_870),
            by(&[("shop/checkout", EG, 0), ("shop/payments", IN, 0)]),
        ),
        (
            flow(wl(CHECKOUT), wl(POSTGRES), Tcp, 5432, 31_202),
            by(&[("shop/checkout", EG, 1), ("data/postgres", IN, 0)]),
        ),
        (
            flow(wl(CART), wl(REDIS), Tcp, 6379, 388_000),
            by(&[("shop/cart", EG, 0), ("data/redis", IN, 0)]),
        ),
        (
            flow(wl(CHECKOUT), ext(STRIPE, "api.stripe.com"), Tcp, 443, 9_700),
            by(&[("shop/checkout", EG, 2)]),
        ),
        (
            flow(wl(PAYMENTS), ext(STRIPE, "api.stripe.com"), Tcp, 443, 120),
            by(&[("shop/payments", EG, 0)]),
        ),
        (
            flow(wl(FRONTEND), wl(COREDNS), Udp, 53, 30_112),
            by(&[("shop/frontend", EG, 2)]),
        ),
        (
            flow(wl(CART), wl(COREDNS), Udp, 53, 20_001),
            by(&[("shop/cart", EG, 1)]),
        ),
        (
            flow(wl(CHECKOUT), wl(COREDNS), Udp, 53, 11_121),
            by(&[("shop/checkout", EG, 3)]),
        ),
        (
            flow(Endpoint::Node { ip: node }, wl(FRONTEND), Tcp, 8080, 17_280),
            by(&[]),
        ),
        (flow(wl(PROMETHEUS), wl(COREDNS), Tcp, 9153, 2_880), by(&[])),
        (
            flow(wl(PROMETHEUS), wl(FRONTEND), Tcp, 9090, 2_880),
            denied(IN, "shop/frontend"),
        ),
        (
            flow(wl(PROMETHEUS), wl(CART), Tcp, 9090, 2_880),
            denied(IN, "shop/cart"),
        ),
        (
            flow(
                wl(CHECKOUT),
                ext(TELEMETRY, "telemetry.vendor.example"),
                Tcp,
                443,
                14,
            ),
            denied(EG, "shop/checkout"),
        ),
        (
            flow(wl(REPORT_EXPORT), wl(POSTGRES), Tcp, 5432, 96),
            denied(IN, "data/postgres"),
        ),
        (
            flow(wl(LEGACY), wl(CART), Tcp, 8080, 3),
            Outcome::Unknown {
                workload: LEGACY.into(),
            },
        ),
    ];
    let policies = shop_policies();
    let mut workloads: BTreeMap<String, WorkloadReplay> = BTreeMap::new();
    for (f, o) in &flows {
        for e in [&f.client, &f.server] {
            if let Endpoint::Workload { workload } = e {
                let w = workloads.entry(workload.clone()).or_default();
                w.connections += f.connections;
                if o.is_allowed() {
                    w.allowed += f.connections;
                }
                if o.is_denied() {
                    w.denied += f.connections;
                }
            }
        }
    }
    for (name, w) in &mut workloads {
        if let Some(p) = policies
            .iter()
            .find(|p| p.workload.as_deref() == Some(name))
        {
            let spec = p.policy.spec.as_ref().unwrap();
            w.isolation = Isolation {
                ingress: true,
                egress: spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
            };
        }
    }
    let new_externals = flows
        .iter()
        .filter(|(f, _)| f.port == Some(443) && f.connections == 14)
        .map(|(f, _)| f.clone())
        .collect();
    Replay {
        flows,
        workloads,
        unused_rules: vec![RuleId {
            policy: "data/postgres".into(),
            direction: IN,
            index: 1,
        }],
        new_externals,
    }
}

/// Against no policies at all: every denied flow is newly denied, every workload with a
/// policy becomes isolated.
fn shop_diff(replay: &Replay) -> Diff {
    let mut d = Diff {
        newly_denied: replay.denied().cloned().collect(),
        ..Diff::default()
    };
    for (w, r) in &replay.workloads {
        for (direction, isolated) in [(IN, r.isolation.ingress), (EG, r.isolation.egress)] {
            if isolated {
                d.isolation_changes.push(IsolationChange {
                    workload: w.clone(),
                    direction,
                    isolated: true,
                });
            }
        }
    }
    d
}

fn notes() -> Vec<String> {
    vec![
        format!(
            "{PROMETHEUS} scraped shop pods on TCP 9090: left out, scraping moves to the \
             metrics port 9102 next week."
        ),
        format!(
            "{REPORT_EXPORT} -> {POSTGRES} TCP 5432 was seen on 1 day only (confidence 0.08): \
             left out until the job is confirmed."
        ),
        format!(
            "{CHECKOUT} -> {TELEMETRY} (telemetry.vendor.example) TCP 443: 14 connections, first seen 2 days ago."
        ),
    ]
}

struct Shop {
    policies: PolicySet,
    replay: Replay,
    diff: Diff,
    notes: Vec<String>,
}

impl Shop {
    fn new() -> Self {
        let replay = shop_replay();
        Self {
            policies: shop_policies(),
            diff: shop_diff(&replay),
            replay,
            notes: notes(),
        }
    }

    fn input(&self) -> ReportInput<'_> {
        ReportInput {
            title: "Shop: first policies for the shop and data namespaces",
            policies: &self.policies,
            replay: Some(&self.replay),
            diff: Some(&self.diff),
            notes: &self.notes,
        }
    }
}

// --- Markdown ----------------------------------------------------------------------------

/// The first line containing every one of `parts`.
fn line_with<'a>(text: &'a str, parts: &[&str]) -> Option<&'a str> {
    text.lines().find(|l| parts.iter().all(|p| l.contains(p)))
}

fn summary_value<'a>(md: &'a str, label: &str) -> &'a str {
    let line = md
        .lines()
        .find(|l| l.starts_with(&format!("| {label} ")))
        .unwrap_or_else(|| panic!("no summary row {label}:\n{md}"));
    line.split('|').nth(2).unwrap().trim()
}

#[test]
fn markdown_summary_has_the_numbers() {
    let shop = Shop::new();
    let md = report::markdown(&shop.input());
    assert!(md.starts_with("# Shop: first policies for the shop and data namespaces\n"));
    assert_eq!(summary_value(&md, "Policies"), "6");
    assert_eq!(summary_value(&md, "Workloads"), "6");
    // frontend 1 + 3, cart 1 + 2, checkout 1 + 4, payments 1 + 1, postgres 2, redis 1.
    assert_eq!(summary_value(&md, "Rules"), "17");
    assert_eq!(shop.replay.connections(), 2_230_794);
    assert_eq!(summary_value(&md, "Connections replayed"), "2,230,794");
    // 2,230,794 - 5,870 denied - 3 unknown.
    assert_eq!(summary_value(&md, "Coverage"), "99.7%");
    assert_eq!(summary_value(&md, "Would be denied"), "4 flows");
    assert!(line_with(&md, &["Would be denied", "5,870 connections"]).is_some());
    assert_eq!(summary_value(&md, "Unused rules"), "1");
    assert_eq!(summary_value(&md, "New external destinations"), "1");
    // Six ingress, four egress (postgres and redis have no egress rules).
    assert_eq!(summary_value(&md, "Isolation changes"), "10");
    assert!(md.contains("> [!WARNING]\n> 4 recorded flows would be denied"));
}

#[test]
fn markdown_rules_are_rows_with_their_evidence() {
    let shop = Shop::new();
    let md = report::markdown(&shop.input());
    let row = line_with(
        &md,
        &[
            "| ingress[0]",
            "| ingress-nginx/Deployment/ingress-nginx-controller ",
        ],
    )
    .expect("frontend's ingress rule");
    for part in [
        "TCP 8080",
        "1,254,301",
        "2: ingress-nginx-controller-5c8d-kq2zt, ingress-nginx-controller-5c8d-x7m4p",
        "|   14 |",
        "2025-02-14 08:00 → 2025-02-28 17:42",
        "0.93 high",
    ] {
        assert!(row.contains(part), "{part:?} not in {row}");
    }
    // More client pods than shown: the first three and an ellipsis.
    assert!(md.contains("4: frontend-7d9f8-2xkqp, frontend-7d9f8-9wz4c, frontend-7d9f8-tq8mn, …"));
    // Widened, with its reason; the low confidence as a word.
    let payments = line_with(&md, &["egress[0]", "api.stripe.com", "0.22 low"]).unwrap();
    assert!(
        payments.contains("203.0.113.0/24: api.stripe.com resolved to 4 addresses in this /24")
    );
    assert!(
        line_with(
            &md,
            &["egress[0]", "| shop/Deployment/payments ", "0.55 medium"]
        )
        .is_some()
    );
    // The rule added in review: written out from the policy, unused in the replay.
    let added = line_with(&md, &["ingress[1] (unused)", "no evidence"]).unwrap();
    assert!(
        added.contains("pods app=prometheus in namespaces kubernetes.io/metadata.name=monitoring")
    );
    assert!(added.contains("TCP 9187"));
    // Policy heads.
    assert!(md.contains(
        "Policy **shop/frontend** selects pods app=frontend and isolates ingress and egress."
    ));
    assert!(md.contains("Policy **data/redis** selects pods app=redis and isolates ingress."));
    // The notes, one item each.
    assert!(md.contains(
        "\n## Observed but left out of the proposal\n\n- monitoring/StatefulSet/prometheus scraped"
    ));
}

#[test]
fn markdown_lists_denied_flows_first_with_the_side_that_denies() {
    let shop = Shop::new();
    let md = report::markdown(&shop.input());
    let frontend = md
        .split("\n### shop/Deployment/frontend\n")
        .nth(1)
        .unwrap()
        .split("\n### ")
        .next()
        .unwrap();
    assert!(frontend.contains(
        "Replay: 1,754,907 connections (1,752,027 allowed, 2,880 denied), coverage 99.8%; \
         isolated for ingress and egress."
    ));
    let outcomes: Vec<&str> = frontend
        .lines()
        .filter(|l| l.starts_with("| DENIED") || l.starts_with("| allowed"))
        .collect();
    assert_eq!(outcomes.len(), 6, "{frontend}");
    assert!(outcomes[0].starts_with("| DENIED"));
    assert!(outcomes[0].contains("by the server's ingress, isolated by shop/frontend"));
    assert!(outcomes[0].contains("monitoring/StatefulSet/prometheus"));
    assert!(outcomes[1..].iter().all(|l| l.starts_with("| allowed")));
    // Busiest first among the allowed.
    assert!(outcomes[1].contains("1,254,301"));
    assert!(
        outcomes
            .iter()
            .any(|l| l.contains("node 10.0.0.11") && l.contains("the pod's node: always allowed"))
    );

    let denied = md.split("\n## Would be denied\n").nth(1).unwrap();
    let denied = denied.split("\n## ").next().unwrap();
    let rows: Vec<&str> = denied
        .lines()
        .filter(|l| l.starts_with("| DENIED"))
        .collect();
    assert_eq!(rows.len(), 4);
    assert!(rows[3].contains("198.51.100.7 (telemetry.vendor.example)"));
    assert!(rows[3].contains("by the client's egress, isolated by shop/checkout"));
    assert!(md.contains("### Newly denied (what this change would break)"));
    let unknown = line_with(
        &md,
        &[
            "| unknown",
            "shop/Deployment/legacy-admin has no pods to evaluate",
        ],
    );
    assert!(unknown.is_some());
}

#[test]
fn markdown_tables_are_aligned() {
    let shop = Shop::new();
    let md = report::markdown(&shop.input());
    let mut tables = 0;
    let mut widths: Option<usize> = None;
    for line in md.lines() {
        if line.starts_with('|') {
            let w = line.chars().count();
            match widths {
                None => {
                    widths = Some(w);
                    tables += 1;
                }
                Some(expected) => assert_eq!(w, expected, "misaligned: {line}"),
            }
        } else {
            widths = None;
        }
    }
    assert!(tables >= 10, "{tables} tables");
    // Numbers align right.
    assert!(
        md.contains("| Policies                  |         6 |"),
        "{md}"
    );
}

#[test]
fn markdown_without_replay_or_diff() {
    let policies = shop_policies();
    let md = report::markdown(&ReportInput::new("Shop", &policies));
    assert_eq!(summary_value(&md, "Policies"), "6");
    assert!(
        md.contains("_Not replayed: no recorded flows were evaluated against these policies._")
    );
    assert!(!md.contains("Would be denied"));
    assert!(md.contains("## Observed but left out of the proposal\n\n_Nothing._"));
}

// --- HTML and SVG ------------------------------------------------------------------------

fn parse(html: &str) -> roxmltree::Document<'_> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(html, options)
        .unwrap_or_else(|e| panic!("the page is not well formed: {e}"))
}

fn edges<'a>(doc: &'a roxmltree::Document<'a>) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants()
        .filter(|n| n.has_tag_name("g"))
        .filter(|n| n.attribute("class").is_some_and(|c| c.starts_with("edge ")))
        .collect()
}

#[test]
fn html_is_well_formed_with_one_edge_per_flow() {
    let shop = Shop::new();
    let html = report::html(&shop.input());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "no scripts needed");
    assert!(
        !html
            .replace("http://www.w3.org/2000/svg", "")
            .contains("http://")
    );
    assert!(!html.contains("https://"), "nothing fetched");
    let doc = parse(&html);
    let title = doc.descendants().find(|n| n.has_tag_name("title")).unwrap();
    assert_eq!(
        title.text(),
        Some("Shop: first policies for the shop and data namespaces")
    );
    let svgs: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("svg"))
        .collect();
    assert_eq!(svgs.len(), 1);

    let edges = edges(&doc);
    assert_eq!(edges.len(), shop.replay.flows.len());
    let denied: Vec<_> = edges
        .iter()
        .filter(|e| e.attribute("class") == Some("edge denied"))
        .collect();
    assert_eq!(denied.len(), 4);
    for e in &denied {
        let path = e.children().find(|c| c.has_tag_name("path")).unwrap();
        assert_eq!(path.attribute("stroke"), Some("#dc2626"));
        assert!(path.attribute("stroke-dasharray").is_some());
    }
    assert!(
        denied
            .iter()
            .any(|e| e.attribute("data-from") == Some(REPORT_EXPORT)
                && e.attribute("data-to") == Some(POSTGRES))
    );
    assert_eq!(
        edges
            .iter()
            .filter(|e| e.attribute("class") == Some("edge unknown"))
            .count(),
        1
    );
    // The node's probes and Prometheus' DNS need no rule.
    assert_eq!(
        edges
            .iter()
            .filter(|e| e.attribute("class") == Some("edge open"))
            .count(),
        2
    );
    // High confidence is green, low is grey-blue: the edge colours differ.
    let colour = |from: &str, to: &str| {
        let e = edges
            .iter()
            .find(|e| e.attribute("data-from") == Some(from) && e.attribute("data-to") == Some(to))
            .unwrap();
        e.children()
            .find(|c| c.has_tag_name("path"))
            .unwrap()
            .attribute("stroke")
            .unwrap()
            .to_string()
    };
    assert_ne!(
        colour(NGINX, FRONTEND),
        colour(PAYMENTS, "203.0.113.10 (api.stripe.com)")
    );

    // Namespaces are columns, with their names.
    let texts: BTreeSet<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for ns in [
        "shop",
        "data",
        "monitoring",
        "kube-system",
        "Outside the cluster",
        "Nodes",
    ] {
        assert!(texts.contains(ns), "no column {ns}");
    }
    // Sections are there.
    for id in [
        "summary",
        "graph",
        "denied",
        "changes",
        "workloads",
        "unused",
        "externals",
        "notes",
    ] {
        assert!(
            doc.descendants().any(|n| n.attribute("id") == Some(id)),
            "no section {id}"
        );
    }
}

#[test]
fn html_escapes_names_from_the_cluster() {
    let evil = "shop/Deployment/<script>alert(\"x\")</script>&co";
    let mut policies = shop_policies();
    let mut p = policy(
        evil,
        vec![seen(&workload(FRONTEND), Protocol::Tcp, 80, 5, 0.5)],
        vec![],
    );
    p.policy.metadata.name = Some("evil".into());
    policies.insert(p);
    let mut replay = shop_replay();
    replay.flows.push((
        flow(wl(FRONTEND), wl(evil), Protocol::Tcp, 80, 5),
        denied(IN, "shop/evil"),
    ));
    let notes = vec!["<img src=x onerror=alert(1)> & 'quoted'".to_string()];
    let input = ReportInput {
        title: "Review <b>bold</b> & \"quoted\"",
        policies: &policies,
        replay: Some(&replay),
        diff: None,
        notes: &notes,
    };
    let html = report::html(&input);
    for raw in ["<script", "<img", "<b>", "alert(\"x\")"] {
        assert!(!html.contains(raw), "{raw} appears raw");
    }
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;co"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &#39;quoted&#39;"));
    let doc = parse(&html);
    // Parsed back, the names are text again.
    assert!(
        doc.descendants()
            .any(|n| n.text() == Some("Review <b>bold</b> & \"quoted\""))
    );
    assert!(edges(&doc).iter().any(
        |e| e.attribute("data-to") == Some(evil) && e.attribute("class") == Some("edge denied")
    ));

    let md = report::markdown(&input);
    // Every `<` is escaped: Markdown renders it as text, never as a tag.
    assert!(
        md.match_indices('<').all(|(i, _)| md[..i].ends_with('\\')),
        "{md}"
    );
    assert!(md.contains("\\<script>"));
}

#[test]
fn svg_is_deterministic() {
    let shop = Shop::new();
    assert_eq!(report::svg(&shop.input()), report::svg(&shop.input()));
    assert_eq!(report::html(&shop.input()), report::html(&shop.input()));
    assert_eq!(
        report::markdown(&shop.input()),
        report::markdown(&shop.input())
    );
}

#[test]
fn large_graphs_show_the_top_edges_and_say_so() {
    let policies = shop_policies();
    let mut replay = Replay::default();
    // 80 workloads in 8 namespaces, each talking to the next five: 400 flows, 3 denied.
    let name = |i: usize| format!("ns-{}/Deployment/svc-{i:02}", i % 8);
    for i in 0..80 {
        for k in 1..=5 {
            let j = (i + k * 7) % 80;
            let n = ((i * 7919 + k * 104_729) % 100_000) as u64 + 10;
            let outcome = if (i, k) == (3, 1) || (i, k) == (40, 2) || (i, k) == (77, 5) {
                denied(IN, "ns-0/whatever")
            } else {
                by(&[])
            };
            // The denied ones are the quietest: they are kept anyway.
            let n = if outcome.is_denied() { 1 } else { n };
            replay.flows.push((
                flow(
                    wl(&name(i)),
                    wl(&name(j)),
                    Protocol::Tcp,
                    8000 + k as u16,
                    n,
                ),
                outcome,
            ));
        }
    }
    let input = ReportInput {
        replay: Some(&replay),
        ..ReportInput::new("Big", &policies)
    };
    let svg = report::svg(&input);
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let edges = edges(&doc);
    assert_eq!(edges.len(), MAX_EDGES);
    assert_eq!(
        edges
            .iter()
            .filter(|e| e.attribute("class") == Some("edge denied"))
            .count(),
        3
    );
    assert!(svg.contains(&format!("Showing {MAX_EDGES} of 400 flows")));
    // The busiest flow is drawn, the quietest allowed one is not.
    let allowed: Vec<u64> = replay
        .flows
        .iter()
        .filter(|(_, o)| o.is_allowed())
        .map(|(f, _)| f.connections)
        .collect();
    let max = *allowed.iter().max().unwrap();
    let min = *allowed.iter().min().unwrap();
    let drawn = |n: u64| {
        let text = format!("{} connections;", group(n));
        edges.iter().any(|e| {
            e.children()
                .any(|c| c.has_tag_name("title") && c.text().is_some_and(|t| t.contains(&text)))
        })
    };
    assert!(drawn(max));
    assert!(!drawn(min));
}

/// `12345` -> `12,345` (as the report writes numbers).
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn svg_without_replay_draws_the_evidence() {
    let policies = shop_policies();
    let svg = report::svg(&ReportInput::new("Evidence", &policies));
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let edges = edges(&doc);
    // Both sides' evidence of one flow make one edge: nginx -> frontend, frontend -> cart,
    // frontend -> checkout, checkout -> payments, checkout -> postgres, cart -> redis,
    // checkout -> stripe, payments -> stripe, and three DNS.
    assert_eq!(edges.len(), 11);
    assert!(
        edges
            .iter()
            .all(|e| e.attribute("class") == Some("edge allowed"))
    );
}

// --- in a real browser -------------------------------------------------------------------

/// Debian's chromium (`scripts/setup.sh` installs it); `PALISADE_CHROMIUM` overrides.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PALISADE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: scripts/setup.sh installs chromium, which this test needs to render \
         the report (set PALISADE_CHROMIUM to use another)",
        path.display()
    );
    path
}

/// Runs headless chromium with `args` in its own process group; kills the group when it
/// takes longer than a minute.
fn browser(args: &[String]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("start chromium");
    let pid = child.id();
    let kill_group = || {
        // Renderer and helper processes are in the group too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    };
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            kill_group();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish in 60 s: killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Helpers outliving the browser would hold the pipes open.
    kill_group();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = buf[..info.line_size * info.height as usize]
        .chunks(info.line_size)
        .flat_map(|row| {
            row[..info.width as usize * channels]
                .chunks(channels)
                .map(|p| match p.len() {
                    1 | 2 => [p[0]; 3],
                    _ => [p[0], p[1], p[2]],
                })
                .collect::<Vec<_>>()
        })
        .collect();
    (info.width, info.height, pixels)
}

#[test]
fn html_renders_in_a_browser() {
    let shop = Shop::new();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, report::html(&shop.input())).unwrap();
    let url = format!("file://{}", page.display());

    // The DOM after parsing: the title, the summary and the graph are there.
    let dom = browser(&["--dump-dom".into(), url.clone()]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8(dom.stdout).unwrap();
    assert!(dom.contains("<title>Shop: first policies for the shop and data namespaces</title>"));
    assert!(dom.contains("<svg"), "no SVG in the DOM");
    assert!(dom.contains("class=\"edge denied\""));
    assert!(dom.contains("Connections replayed"));
    assert!(dom.contains("2,230,794"));

    // The picture: a PNG of the window, not blank, with the denied edges' red in it.
    let shot = dir.path().join("report.png");
    let run = browser(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1400,1000".into(),
        url,
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(shot.exists(), "no screenshot");
    let (width, height, pixels) = decode_png(&shot);
    assert_eq!((width, height), (1400, 1000));
    let colours: BTreeSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(colours.len() > 100, "{} colours: blank?", colours.len());
    let ink = pixels.iter().filter(|p| p.iter().any(|&c| c < 200)).count();
    assert!(
        ink * 100 > pixels.len(),
        "{ink} dark pixels of {}",
        pixels.len()
    );
    let red = pixels
        .iter()
        .filter(|p| p[0] > 190 && p[1] < 80 && p[2] < 80)
        .count();
    assert!(red > 50, "{red} red pixels: no denied edge or card drawn");
    if let Some(keep) = std::env::var_os("PALISADE_REPORT_SAMPLE") {
        std::fs::copy(&shot, &keep).unwrap();
        std::fs::copy(&page, PathBuf::from(&keep).with_extension("html")).unwrap();
    }
}

#[test]
fn empty_and_unattributed_inputs_render() {
    let empty = PolicySet::default();
    let md = report::markdown(&ReportInput::new("Nothing", &empty));
    assert_eq!(summary_value(&md, "Policies"), "0");
    assert!(md.contains("_The set has no policies._"));
    let html = report::html(&ReportInput::new("Nothing", &empty));
    assert!(html.contains("Nothing to draw"));
    parse(&html);

    // A policy whose workload is unknown gets its own section and node.
    let mut set = PolicySet::default();
    let mut p = policy(
        CART,
        vec![seen(&workload(FRONTEND), Protocol::Tcp, 8080, 7, 0.5)],
        vec![],
    );
    p.workload = None;
    set.insert(p);
    let input = ReportInput::new("Unattributed", &set);
    let md = report::markdown(&input);
    assert!(md.contains("### policy shop/cart (workload unknown)"));
    let html = report::html(&input);
    let doc = parse(&html);
    assert_eq!(edges(&doc).len(), 1);
}
