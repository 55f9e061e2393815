//! Kubernetes NetworkPolicy conformance (root): real policies through the lab's agent into
//! the kernel, checked with real TCP and UDP probes.
//!
//! The expectations are written by hand from the Kubernetes documentation
//! (kubernetes.io/docs/concepts/services-networking/network-policies/ and the
//! `networking.k8s.io/v1` API reference), never computed by `model`'s evaluator:
//! - a pod is isolated in a direction once a policy selecting it has that direction in its
//!   `policyTypes` (Ingress by default; Egress too when the policy has egress rules); then
//!   only the union of those policies' rules is allowed (an empty rule allows everything);
//!   policies never conflict, they add up;
//! - a connection between two pods needs the source's egress and the destination's ingress
//!   to allow it; replies of an allowed connection pass;
//! - a peer's `podSelector` alone chooses pods of the policy's namespace, its
//!   `namespaceSelector` alone every pod of the chosen namespaces, both in one peer the pods
//!   chosen by both (AND), two peers either (OR); `namespaceSelector: {}` is every
//!   namespace; selectors' `matchExpressions` take In, NotIn (also true without the key),
//!   Exists and DoesNotExist, and all requirements of a selector must hold;
//! - `ipBlock` allows a CIDR but its `except` ranges;
//! - a port is a number, a `port`..`endPort` range, or the name of a container port,
//!   resolved on the destination pod, with the rule's protocol (TCP by default);
//! - traffic between a pod and its own node always passes;
//! - on top, Palisade's zero-trust default: with `deny`, a pod no policy selects in a
//!   direction is isolated in it (per lab, or per namespace with `palisade.io/default`).
//!
//! Topology: namespaces x, y, z (labels `ns: <name>`, and `env` on two of them), pods a, b,
//! c in each (labels `pod: <name>`; `tier` on a and b), each serving TCP 80, 81, 82 and UDP
//! 80, 81 with named ports `serve-80-tcp`, `serve-81-tcp`, `serve-80-udp`, `serve-81-udp`
//! (and `http` for c's TCP 82), and two external hosts. Every matrix is 9 pods (or an
//! external host) against 9 pods and the 2 external hosts, over IPv4 and IPv6 unless a case
//! is about one family; allowed means the echo came back, denied means no answer (the
//! datapath drops; every probed port is served, so a refusal is always a failure).
//!
//! A few labs each run many cases (a lab with its agent is up in 2-3 s; a matrix of 180
//! probes takes about half a second, the probe timeout, when some are denied); each test's
//! lab has its own name, so tests run in parallel. The suite takes about 30 s.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use enforcer::lab::{
    AgentOutcome, Family, LabelEdit, ProbeRequest, ProbeResult, Protocol,
    probe::{self, Job, Report},
};
use model::{Mode, netpol::evaluate::DefaultAction};
use tests::{
    lab::{TestLab, chain},
    require_root,
};

const TOPOLOGY: &str = "
namespaces:
  - {name: x, labels: {ns: x, env: prod}}
  - {name: y, labels: {ns: y}}
  - {name: z, labels: {ns: z, env: dev}}
pods:
  - {name: x/a, labels: {pod: a, tier: web}, ports: &ab [{port: 80, name: serve-80-tcp}, {port: 81, name: serve-81-tcp}, {port: 80, protocol: UDP, name: serve-80-udp}, {port: 81, protocol: UDP, name: serve-81-udp}, {port: 82}]}
  - {name: x/b, labels: {pod: b, tier: db}, ports: *ab}
  - {name: x/c, labels: {pod: c}, ports: &c [{port: 80, name: serve-80-tcp}, {port: 81, name: serve-81-tcp}, {port: 80, protocol: UDP, name: serve-80-udp}, {port: 81, protocol: UDP, name: serve-81-udp}, {port: 82, name: http}]}
  - {name: y/a, labels: {pod: a, tier: web}, ports: *ab}
  - {name: y/b, labels: {pod: b, tier: db}, ports: *ab}
  - {name: y/c, labels: {pod: c}, ports: *c}
  - {name: z/a, labels: {pod: a, tier: web}, ports: *ab}
  - {name: z/b, labels: {pod: b, tier: db}, ports: *ab}
  - {name: z/c, labels: {pod: c}, ports: *c}
externals:
  - {name: e1.example.com, addresses: [203.0.113.10, 2001:db8::10], ports: &ext [{port: 80}, {port: 81}, {port: 82}, {port: 80, protocol: UDP}, {port: 81, protocol: UDP}]}
  - {name: e2.example.com, addresses: [203.0.113.20, 2001:db8::20], ports: *ext}
";

const E1: &str = "e1.example.com";
const E2: &str = "e2.example.com";

/// How long a probe waits: what a denied probe costs.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A probe expected to pass that timed out is tried again with this, so a loaded machine
/// is not taken for a dropping datapath (a denied connection times out again).
const RETRY_TIMEOUT: Duration = Duration::from_secs(3);

const BOTH: &[Family] = &[Family::V4, Family::V6];
const V4: &[Family] = &[Family::V4];
const V6: &[Family] = &[Family::V6];
const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

/// The namespace of a pod (`x/a` -> `x`); "" for an external host.
fn ns(name: &str) -> &str {
    name.split_once('/').map_or("", |(ns, _)| ns)
}

/// The pod's name without its namespace (`x/a` -> `a`); "" for an external host.
fn pod(name: &str) -> &str {
    name.split_once('/').map_or("", |(_, pod)| pod)
}

fn is_external(name: &str) -> bool {
    !name.contains('/')
}

/// Everything passes: Kubernetes without policies.
fn all(_: &str, _: &str) -> bool {
    true
}

/// A NetworkPolicy document; `spec` is YAML at column 0.
fn netpol(namespace: &str, name: &str, spec: &str) -> String {
    let mut text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
    );
    for line in spec.trim_matches('\n').lines() {
        let _ = writeln!(text, "  {line}");
    }
    text
}

/// A lab enforcing in every pod, with the agent's default `default`.
struct Conformance {
    lab: TestLab,
    started: Instant,
    checks: usize,
}

impl Conformance {
    fn up(default: DefaultAction) -> Self {
        let started = Instant::now();
        let lab = TestLab::up_with(TOPOLOGY, |o| {
            o.agent = true;
            o.mode = Mode::Enforce;
            o.default = default;
        });
        eprintln!("lab {} up in {:?}", lab.name(), started.elapsed());
        Self {
            lab,
            started,
            checks: 0,
        }
    }

    fn expect_applied(&self, what: &str, outcome: &AgentOutcome) {
        assert!(
            outcome.is_applied(),
            "{what}: {outcome}\n{}",
            self.agent_log()
        );
    }

    /// Apply policy documents (several joined with `---`), replacing those of the same
    /// names.
    fn apply(&mut self, documents: &[String]) {
        let text = documents.join("---\n");
        let changes = self
            .lab
            .apply_policy_text(&text, Path::new("case.yaml"))
            .unwrap_or_else(|e| panic!("applying:\n{text}\n{}", chain(&e)));
        if let Some(outcome) = &changes.agent {
            self.expect_applied(&text, outcome);
        }
    }

    fn delete(&mut self, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let changes = self.lab.delete_policies(&names).unwrap();
        self.expect_applied("delete", changes.agent.as_ref().unwrap());
    }

    fn delete_all(&mut self) {
        let changes = self.lab.delete_all_policies().unwrap();
        if let Some(outcome) = &changes.agent {
            self.expect_applied("delete --all", outcome);
        }
    }

    fn label_pod(&mut self, name: &str, edits: &[&str]) {
        let edits: Vec<LabelEdit> = edits.iter().map(|e| e.parse().unwrap()).collect();
        let labelled = self.lab.label_pod(name, &edits).unwrap();
        self.expect_applied("label pod", &labelled.agent);
    }

    fn label_namespace(&mut self, name: &str, edits: &[&str]) {
        let edits: Vec<LabelEdit> = edits.iter().map(|e| e.parse().unwrap()).collect();
        let labelled = self.lab.label_namespace(name, &edits).unwrap();
        self.expect_applied("label namespace", &labelled.agent);
    }

    /// Probe every pod against every pod and external host on `port`/`protocol` over
    /// `families`, and hold the matrix against `allowed(from, to)`.
    fn check(
        &mut self,
        case: &str,
        port: u16,
        protocol: Protocol,
        families: &[Family],
        allowed: impl Fn(&str, &str) -> bool,
    ) {
        self.check_from(case, None, port, protocol, families, allowed);
    }

    /// The same from one source (a pod or an external host) only.
    fn check_from(
        &mut self,
        case: &str,
        from: Option<&str>,
        port: u16,
        protocol: Protocol,
        families: &[Family],
        allowed: impl Fn(&str, &str) -> bool,
    ) {
        let started = Instant::now();
        let mut request = ProbeRequest::new(port, protocol);
        request.families = families.to_vec();
        request.from = from.map(str::to_owned);
        request.timeout = PROBE_TIMEOUT;
        let report = self
            .lab
            .probe(&request)
            .unwrap_or_else(|e| panic!("{case}: probe: {}", chain(&e)));
        let probes: usize = report
            .matrices
            .iter()
            .map(|m| m.results.values().map(BTreeMap::len).sum::<usize>())
            .sum();
        // 9 pods and 2 external hosts, but the source itself.
        let sources = if from.is_some() { 1 } else { 9 };
        assert_eq!(
            probes,
            families.len() * sources * 10,
            "{case}: {}",
            report.render()
        );
        // Expected to pass but timed out: tried again, all at once, with a longer timeout.
        let mut retries = Vec::new();
        for m in &report.matrices {
            for (source, row) in &m.results {
                for (target, result) in row {
                    if *result == ProbeResult::Timeout && allowed(source, target) {
                        let address = m.targets.iter().find(|t| t.name == *target).unwrap();
                        retries.push((
                            (m.family, source.clone(), target.clone()),
                            Job {
                                netns: self.netns_of(source),
                                target: SocketAddr::new(address.address, port),
                                protocol,
                            },
                        ));
                    }
                }
            }
        }
        let jobs: Vec<Job> = retries.iter().map(|(_, job)| job.clone()).collect();
        let retried: BTreeMap<_, _> = retries
            .into_iter()
            .map(|(cell, _)| cell)
            .zip(probe::run_all(&jobs, RETRY_TIMEOUT))
            .collect();
        let mut wrong = Vec::new();
        for m in &report.matrices {
            for (source, row) in &m.results {
                for (target, result) in row {
                    let expect = allowed(source, target);
                    let cell = (m.family, source.clone(), target.clone());
                    let result = retried.get(&cell).unwrap_or(result).clone();
                    let ok = match result {
                        ProbeResult::Ok => expect,
                        ProbeResult::Timeout => !expect,
                        ProbeResult::Refused | ProbeResult::Error(_) => false,
                    };
                    if !ok {
                        wrong.push((m.family, source.clone(), target.clone(), expect, result));
                    }
                }
            }
        }
        self.checks += 1;
        eprintln!(
            "{}: {case}: {protocol}/{port}, {probes} probes in {:?}",
            self.lab.name(),
            started.elapsed()
        );
        if !wrong.is_empty() {
            panic!(
                "{case}: {protocol}/{port}: {} of {probes} probes are not as expected\n{}\n{}",
                wrong.len(),
                differences(&report, &allowed, &wrong),
                self.agent_log()
            );
        }
    }

    /// The network namespace of a pod or external host.
    fn netns_of(&self, name: &str) -> String {
        match self.lab.pod(name) {
            Ok(pod) => pod.netns.clone(),
            Err(_) => self.lab.external(name).unwrap().netns.clone(),
        }
    }

    /// Probe every pod from the node's own namespace.
    fn check_from_node(&self, port: u16, protocol: Protocol) {
        let jobs: Vec<Job> = self
            .lab
            .pods()
            .iter()
            .flat_map(|p| p.addresses())
            .map(|ip: IpAddr| Job {
                netns: self.lab.node_netns(),
                target: SocketAddr::new(ip, port),
                protocol,
            })
            .collect();
        let results = probe::run_all(&jobs, RETRY_TIMEOUT);
        for (job, result) in jobs.iter().zip(results) {
            assert_eq!(
                result,
                ProbeResult::Ok,
                "node -> {}: its own node always reaches a pod\n{}",
                job.target,
                self.agent_log()
            );
        }
    }

    fn agent_log(&self) -> String {
        let log = std::fs::read_to_string(self.lab.agent_log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "agent log (end):\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }
}

impl Drop for Conformance {
    fn drop(&mut self) {
        eprintln!(
            "lab {}: {} matrices in {:?}",
            self.lab.name(),
            self.checks,
            self.started.elapsed()
        );
    }
}

/// The expected and the actual matrix side by side, then each difference.
fn differences(
    report: &Report,
    allowed: &impl Fn(&str, &str) -> bool,
    wrong: &[(Family, String, String, bool, ProbeResult)],
) -> String {
    let mut out = String::new();
    for m in &report.matrices {
        let _ = writeln!(
            out,
            "IPv{} (expected | actual; 1 = allowed, . = denied, ! = refused or error):",
            m.family.number()
        );
        let short = |name: &str| {
            if is_external(name) {
                name.split('.').next().unwrap_or(name).to_owned()
            } else {
                name.replace('/', "")
            }
        };
        let header: Vec<String> = m
            .targets
            .iter()
            .map(|t| format!("{:>3}", short(&t.name)))
            .collect();
        let _ = writeln!(out, "      {} | {}", header.join(""), header.join(""));
        for source in &m.sources {
            let row = &m.results[source];
            let mut expected = String::new();
            let mut actual = String::new();
            for t in &m.targets {
                let (e, a) = match row.get(&t.name) {
                    None => ("  -", "  -"),
                    Some(r) => (
                        if allowed(source, &t.name) {
                            "  1"
                        } else {
                            "  ."
                        },
                        match r {
                            ProbeResult::Ok => "  1",
                            ProbeResult::Timeout => "  .",
                            _ => "  !",
                        },
                    ),
                };
                expected.push_str(e);
                actual.push_str(a);
            }
            let _ = writeln!(out, "  {:>3} {expected} | {actual}", short(source));
        }
    }
    for (family, from, to, expect, result) in wrong {
        let _ = writeln!(
            out,
            "  IPv{} {from} -> {to}: expected {}, got {result:?}",
            family.number(),
            if *expect { "allowed" } else { "denied" }
        );
    }
    out
}

/// Isolation per direction (default deny ingress, egress, both) and how peers choose pods:
/// pod selector alone, namespace selector alone, both in one peer, two peers.
#[test]
fn isolation_and_peer_selectors() {
    require_root!();
    let mut c = Conformance::up(DefaultAction::Allow);
    c.check("no policies", 80, TCP, BOTH, all);
    c.check("no policies", 81, UDP, BOTH, all);

    c.apply(&[netpol(
        "x",
        "default-deny-ingress",
        "podSelector: {}\npolicyTypes: [Ingress]",
    )]);
    let deny_ingress_x = |_: &str, to: &str| ns(to) != "x";
    c.check("default deny ingress in x", 80, TCP, BOTH, deny_ingress_x);
    c.check("default deny ingress in x", 81, UDP, BOTH, deny_ingress_x);
    c.delete_all();

    c.apply(&[netpol(
        "x",
        "default-deny-egress",
        "podSelector: {}\npolicyTypes: [Egress]",
    )]);
    c.check("default deny egress in x", 80, TCP, BOTH, |from, _| {
        ns(from) != "x"
    });
    c.delete_all();

    c.apply(&[netpol(
        "x",
        "default-deny-all",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    )]);
    c.check("default deny all in x", 81, TCP, BOTH, |from, to| {
        ns(from) != "x" && ns(to) != "x"
    });
    c.delete_all();

    // policyTypes left out: Ingress always, Egress too as the policy has egress rules. So
    // x/a is isolated both ways, with no ingress rule, and may open connections in x only.
    c.apply(&[netpol(
        "x",
        "a-out-in-x",
        "podSelector: {matchLabels: {pod: a}}\negress:\n- to: [{podSelector: {}}]",
    )]);
    c.check(
        "policyTypes defaulted from an egress-only policy",
        80,
        TCP,
        BOTH,
        |from, to| to != "x/a" && (from != "x/a" || ns(to) == "x"),
    );
    c.delete_all();

    // An empty rule allows everything: x/a is open again under x's deny-all ingress.
    c.apply(&[
        netpol("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]"),
        netpol(
            "x",
            "a-open",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- {}",
        ),
    ]);
    c.check(
        "an empty ingress rule allows all",
        80,
        TCP,
        BOTH,
        |_, to| ns(to) != "x" || to == "x/a",
    );
    c.delete_all();

    // A peer's podSelector alone: pods of the policy's own namespace.
    c.apply(&[netpol(
        "x",
        "a-from-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{podSelector: {matchLabels: {pod: b}}}]",
    )]);
    c.check("pod selector alone", 80, TCP, BOTH, |from, to| {
        to != "x/a" || from == "x/b"
    });

    // Replaced (same name): a namespaceSelector alone: every pod of those namespaces.
    c.apply(&[netpol(
        "x",
        "a-from-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {ns: y}}}]",
    )]);
    c.check("namespace selector alone", 80, TCP, BOTH, |from, to| {
        to != "x/a" || ns(from) == "y"
    });

    // Both in one peer: pods chosen by both.
    c.apply(&[netpol(
        "x",
        "a-from-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]",
    )]);
    c.check(
        "namespace and pod selector in one peer (AND)",
        80,
        TCP,
        BOTH,
        |from, to| to != "x/a" || from == "y/b",
    );

    // Two peers: either.
    c.apply(&[netpol(
        "x",
        "a-from-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]",
    )]);
    c.check("two peers (OR)", 80, TCP, BOTH, |from, to| {
        to != "x/a" || ns(from) == "y" || from == "x/b"
    });

    // An empty namespaceSelector is every namespace.
    c.apply(&[netpol(
        "x",
        "a-from-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]",
    )]);
    c.check(
        "pods of every namespace (empty namespace selector)",
        80,
        TCP,
        BOTH,
        |from, to| to != "x/a" || pod(from) == "b",
    );
}

/// matchExpressions: In, NotIn, Exists, DoesNotExist, in peers and in the policy's own
/// podSelector, and requirements of one selector that must all hold.
#[test]
fn match_expressions() {
    require_root!();
    let mut c = Conformance::up(DefaultAction::Allow);
    let ingress_to_a = |from: &str| {
        netpol(
            "x",
            "a",
            &format!("podSelector: {{matchLabels: {{pod: a}}}}\ningress:\n- from: [{from}]"),
        )
    };

    c.apply(&[ingress_to_a(
        "{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}}",
    )]);
    c.check("namespaces ns In (y, z)", 80, TCP, BOTH, |from, to| {
        to != "x/a" || matches!(ns(from), "y" | "z")
    });

    c.apply(&[ingress_to_a(
        "{namespaceSelector: {}, podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [b]}]}}",
    )]);
    c.check("pods pod NotIn (b)", 80, TCP, BOTH, |from, to| {
        to != "x/a" || pod(from) != "b"
    });

    // NotIn also holds where the key is missing: y has no `env`.
    c.apply(&[ingress_to_a(
        "{namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}}",
    )]);
    c.check(
        "namespaces env NotIn (dev), y without env",
        80,
        TCP,
        BOTH,
        |from, to| to != "x/a" || matches!(ns(from), "x" | "y"),
    );

    c.apply(&[ingress_to_a(
        "{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}",
    )]);
    c.check("pods with a tier (Exists)", 80, TCP, BOTH, |from, to| {
        to != "x/a" || matches!(pod(from), "a" | "b")
    });

    // Every requirement of a selector holds: env=dev and a name in (y, z) is z.
    c.apply(&[ingress_to_a(
        "{namespaceSelector: {matchLabels: {env: dev}, matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y, z]}]}}",
    )]);
    c.check(
        "matchLabels and matchExpressions together",
        80,
        TCP,
        BOTH,
        |from, to| to != "x/a" || ns(from) == "z",
    );
    c.delete_all();

    // Egress to namespaces without `env` (DoesNotExist): y only; not external hosts.
    c.apply(&[netpol(
        "x",
        "a-out",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to: [{namespaceSelector: {matchExpressions: [{key: env, operator: DoesNotExist}]}}]",
    )]);
    c.check(
        "egress to namespaces without env (DoesNotExist)",
        80,
        TCP,
        BOTH,
        |from, to| from != "x/a" || ns(to) == "y",
    );
    c.delete_all();

    // The policy's own podSelector with DoesNotExist: y's pods without a tier (y/c).
    c.apply(&[netpol(
        "y",
        "no-tier",
        "podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}\npolicyTypes: [Ingress]",
    )]);
    c.check(
        "policy selecting pods without a tier",
        81,
        TCP,
        BOTH,
        |_, to| to != "y/c",
    );
}

/// ipBlock with except, for pods' addresses and external hosts, both ways; an IPv4 block
/// says nothing of IPv6.
#[test]
fn ip_blocks() {
    require_root!();
    let mut c = Conformance::up(DefaultAction::Allow);
    let y_b = c.lab.pod("y/b").unwrap().ipv4;

    c.apply(&[netpol(
        "x",
        "a-from-pods-but-y-b",
        &format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\ningress:\n- from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{y_b}/32]}}}}]"
        ),
    )]);
    c.check(
        "ingress from the pod range except y/b's address",
        80,
        TCP,
        V4,
        |from, to| to != "x/a" || from != "y/b",
    );
    c.check("an IPv4 block allows no IPv6 peer", 80, TCP, V6, |_, to| {
        to != "x/a"
    });
    c.delete_all();

    // Egress from x to external hosts: e1 but not e2 (except), in both families.
    c.apply(&[netpol(
        "x",
        "out-to-e1",
        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.20/32]}\n  - ipBlock: {cidr: '2001:db8::/64', except: ['2001:db8::20/128']}",
    )]);
    let e1_only = |from: &str, to: &str| ns(from) != "x" || to == E1;
    c.check(
        "egress to an external block except e2",
        80,
        TCP,
        BOTH,
        e1_only,
    );
    c.check(
        "egress to an external block except e2",
        81,
        UDP,
        BOTH,
        e1_only,
    );
    c.delete_all();

    // Egress everywhere but the pod range: external hosts only (IPv4; no IPv6 rule).
    c.apply(&[netpol(
        "x",
        "out-but-pods",
        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.0.0/16]}}]",
    )]);
    c.check(
        "egress to 0.0.0.0/0 except the pod range",
        80,
        TCP,
        V4,
        |from, to| ns(from) != "x" || is_external(to),
    );
    c.check(
        "egress to 0.0.0.0/0 except the pod range",
        80,
        TCP,
        V6,
        |from, _| ns(from) != "x",
    );
    c.delete_all();

    // Ingress from external hosts: 203.0.113.0/28 and 2001:db8::/123 hold e1, not e2.
    c.apply(&[netpol(
        "x",
        "a-from-e1",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - ipBlock: {cidr: 203.0.113.0/28}\n  - ipBlock: {cidr: '2001:db8::/123'}",
    )]);
    let from_e1 = |from: &str, to: &str| to != "x/a" || from == E1;
    c.check_from("ingress from e1's block", Some(E1), 80, TCP, BOTH, from_e1);
    c.check_from("ingress from e1's block", Some(E2), 80, TCP, BOTH, from_e1);
    c.check("ingress from e1's block", 80, TCP, BOTH, from_e1);
}

/// Ports: numbers, ranges (endPort), names resolved on the destination pod with their
/// protocol, in ingress and egress rules.
#[test]
fn ports() {
    require_root!();
    let mut c = Conformance::up(DefaultAction::Allow);
    let x_ingress_on = |ports: &str| {
        netpol(
            "x",
            "ports",
            &format!("podSelector: {{}}\ningress:\n- ports: {ports}"),
        )
    };
    let only_outside_x = |_: &str, to: &str| ns(to) != "x";

    c.apply(&[x_ingress_on("[{port: serve-80-tcp}]")]);
    c.check("named port serve-80-tcp", 80, TCP, BOTH, all);
    c.check("named port serve-80-tcp", 81, TCP, BOTH, only_outside_x);
    c.check("named port serve-80-tcp", 80, UDP, BOTH, only_outside_x);

    // A name is a port of the rule's protocol: serve-80-tcp is no UDP port.
    c.apply(&[x_ingress_on(
        "[{protocol: UDP, port: serve-80-tcp}, {protocol: UDP, port: serve-81-udp}]",
    )]);
    c.check("named UDP ports", 81, UDP, BOTH, all);
    c.check("named UDP ports", 80, UDP, BOTH, only_outside_x);
    c.check("named UDP ports", 81, TCP, BOTH, only_outside_x);

    // `http` is TCP 82 on the c pods only: elsewhere in x, 82 is closed.
    c.apply(&[x_ingress_on("[{port: http}]")]);
    c.check("a name some pods give a port", 82, TCP, BOTH, |_, to| {
        ns(to) != "x" || pod(to) == "c"
    });

    c.apply(&[x_ingress_on("[{port: 80, endPort: 81}]")]);
    c.check("TCP 80-81 (endPort)", 80, TCP, BOTH, all);
    c.check("TCP 80-81 (endPort)", 81, TCP, BOTH, all);
    c.check("TCP 80-81 (endPort)", 82, TCP, BOTH, only_outside_x);
    c.check("TCP 80-81 (endPort)", 80, UDP, BOTH, only_outside_x);

    c.apply(&[x_ingress_on("[{protocol: UDP, port: 81, endPort: 82}]")]);
    c.check("UDP 81-82 (endPort)", 81, UDP, BOTH, all);
    c.check("UDP 81-82 (endPort)", 80, UDP, BOTH, only_outside_x);
    c.delete_all();

    // Egress: x may only open TCP 81 (to anyone).
    c.apply(&[netpol(
        "x",
        "out-81",
        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports: [{port: 81}]",
    )]);
    c.check("egress to TCP 81 only", 81, TCP, BOTH, all);
    c.check("egress to TCP 81 only", 80, TCP, BOTH, |from, _| {
        ns(from) != "x"
    });
}

/// Policies add up; a policy updated or deleted changes what is allowed; pod and namespace
/// labels changing after the policies exist move pods in and out of selectors (as peers
/// and as the pods a policy applies to).
#[test]
fn policies_stack_and_follow_updates_and_labels() {
    require_root!();
    let mut c = Conformance::up(DefaultAction::Allow);
    let a_from = |name: &str, from: &str| {
        netpol(
            "x",
            name,
            &format!("podSelector: {{matchLabels: {{pod: a}}}}\ningress:\n- from: [{from}]"),
        )
    };

    // Deny all ingress in x, plus two policies for x/a: the union.
    c.apply(&[
        netpol("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]"),
        a_from("from-pod", "{podSelector: {matchLabels: {pod: b}}}"),
        a_from("from-ns", "{namespaceSelector: {matchLabels: {ns: y}}}"),
    ]);
    c.check("three policies stack", 80, TCP, BOTH, |from, to| {
        ns(to) != "x" || (to == "x/a" && (from == "x/b" || ns(from) == "y"))
    });

    c.apply(&[a_from("from-pod", "{podSelector: {matchLabels: {pod: c}}}")]);
    c.check("a policy updated", 80, TCP, BOTH, |from, to| {
        ns(to) != "x" || (to == "x/a" && (from == "x/c" || ns(from) == "y"))
    });

    c.delete(&["x/from-ns", "x/deny"]);
    c.check("two policies deleted", 80, TCP, BOTH, |from, to| {
        to != "x/a" || from == "x/c"
    });

    // Pod labels: x/b becomes a `pod: c`, x/c loses its label.
    c.label_pod("x/b", &["pod=c"]);
    c.check("a peer gains the label", 80, TCP, BOTH, |from, to| {
        to != "x/a" || matches!(from, "x/b" | "x/c")
    });
    c.label_pod("x/c", &["pod-"]);
    c.check("a peer loses the label", 80, TCP, BOTH, |from, to| {
        to != "x/a" || from == "x/b"
    });
    c.label_pod("x/b", &["pod=b"]);
    c.label_pod("x/c", &["pod=c"]);
    c.delete_all();

    // Namespace labels: nobody is `team: blue` until z is.
    c.apply(&[a_from(
        "from-blue",
        "{namespaceSelector: {matchLabels: {team: blue}}}",
    )]);
    c.check("no namespace has the label", 80, TCP, BOTH, |_, to| {
        to != "x/a"
    });
    c.label_namespace("z", &["team=blue"]);
    c.check("a namespace gains the label", 80, TCP, BOTH, |from, to| {
        to != "x/a" || ns(from) == "z"
    });
    c.label_namespace("z", &["team-"]);
    c.check("the namespace loses it", 80, TCP, BOTH, |_, to| to != "x/a");
    c.delete_all();

    // The pods a policy applies to follow labels too: quarantine y/b.
    c.apply(&[netpol(
        "y",
        "quarantine",
        "podSelector: {matchLabels: {quarantine: 'true'}}\npolicyTypes: [Ingress, Egress]",
    )]);
    c.check("nobody in quarantine", 81, UDP, BOTH, all);
    c.label_pod("y/b", &["quarantine=true"]);
    c.check("y/b in quarantine", 81, UDP, BOTH, |from, to| {
        from != "y/b" && to != "y/b"
    });
    c.label_pod("y/b", &["quarantine-"]);
    c.check("y/b out of quarantine", 81, UDP, BOTH, all);
}

/// Palisade's zero-trust default: pods no policy selects (in a direction) are isolated in
/// it, lab-wide or per namespace; their own node still reaches them.
#[test]
fn zero_trust_default() {
    require_root!();
    let mut c = Conformance::up(DefaultAction::Deny);
    c.check("zero trust, no policies", 80, TCP, BOTH, |_, _| false);
    c.check_from_node(80, TCP);

    // Both ends must be allowed: x/b's egress and x/a's ingress.
    c.apply(&[
        netpol(
            "x",
            "a-in",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{podSelector: {matchLabels: {pod: b}}}]",
        ),
        netpol(
            "x",
            "b-out",
            "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Egress]\negress:\n- to: [{podSelector: {matchLabels: {pod: a}}}]",
        ),
    ]);
    c.check("zero trust, b to a allowed", 80, TCP, BOTH, |from, to| {
        from == "x/b" && to == "x/a"
    });

    // Back to Kubernetes' default (the agent restarts): only the selected directions.
    let outcome = c.lab.set_default(DefaultAction::Allow).unwrap();
    c.expect_applied("default allow", &outcome);
    c.check("default allow, same policies", 80, TCP, BOTH, |from, to| {
        (to != "x/a" || from == "x/b") && (from != "x/b" || to == "x/a")
    });
    c.delete_all();

    // One namespace in zero trust.
    let labelled = c
        .lab
        .set_namespace_default("y", Some(DefaultAction::Deny))
        .unwrap();
    c.expect_applied("namespace y deny", &labelled.agent);
    c.check("zero trust in y only", 80, TCP, BOTH, |from, to| {
        ns(from) != "y" && ns(to) != "y"
    });
    let labelled = c.lab.set_namespace_default("y", None).unwrap();
    c.expect_applied("namespace y inherits", &labelled.agent);
    c.check("y back to the lab's default", 80, TCP, BOTH, all);

    // Zero trust everywhere but x.
    let outcome = c.lab.set_default(DefaultAction::Deny).unwrap();
    c.expect_applied("default deny", &outcome);
    let labelled = c
        .lab
        .set_namespace_default("x", Some(DefaultAction::Allow))
        .unwrap();
    c.expect_applied("namespace x allow", &labelled.agent);
    c.check("zero trust but in x", 80, TCP, BOTH, |from, to| {
        ns(from) == "x" && (ns(to) == "x" || is_external(to))
    });
    c.check_from_node(81, TCP);
}
