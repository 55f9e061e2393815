//! The review report a reviewer attaches to a change request: what a policy set allows and
//! why (the evidence behind each rule), what replaying the recorded flows against it shows
//! (what it would deny, which rules no flow used, new external destinations), what changes
//! against the set in force, and what was observed but left out.
//!
//! Two forms are rendered from the same tables: [`markdown`] for a pull request's
//! description, and [`html`], one self-contained page (inline CSS, no scripts, no external
//! fetches) with a picture of the workload graph as inline SVG ([`svg`]).
//!
//! The output is deterministic: the same input gives the same bytes, so a report can be
//! diffed and golden-tested.

mod graph;
mod html;
mod markdown;

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
};

use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use model::{Direction, Protocol, evidence::RuleEvidence};

pub use graph::{MAX_EDGES, svg};

use crate::{
    diff::Diff,
    replay::{Endpoint, ObservedFlow, Outcome, Replay, RuleId, WorkloadReplay},
    set::{PolicySet, ReviewedPolicy},
};

/// What a report is made of.
#[derive(Clone, Copy, Debug)]
pub struct ReportInput<'a> {
    pub title: &'a str,
    pub policies: &'a PolicySet,
    /// The recorded flows replayed against `policies`, when they were.
    pub replay: Option<&'a Replay>,
    /// `policies` compared with the set in force, when there is one.
    pub diff: Option<&'a Diff>,
    /// Things observed but left out of the proposal, one per entry.
    pub notes: &'a [String],
}

impl<'a> ReportInput<'a> {
    /// A report of `policies` alone: no replay, no diff, no notes.
    pub fn new(title: &'a str, policies: &'a PolicySet) -> Self {
        Self {
            title,
            policies,
            replay: None,
            diff: None,
            notes: &[],
        }
    }
}

/// The report as Markdown (GitHub flavoured: tables, padded so the source reads well too).
pub fn markdown(input: &ReportInput<'_>) -> String {
    markdown::render(&Report::new(input))
}

/// The report as one self-contained HTML page with the workload graph as inline SVG.
pub fn html(input: &ReportInput<'_>) -> String {
    html::render(&Report::new(input), &svg(input))
}

/// Per-workload sections list at most this many allowed flows (denied ones are all listed).
pub const MAX_ALLOWED_FLOWS_PER_WORKLOAD: usize = 50;

/// The report's content, shared by both renderers so they cannot drift apart.
struct Report<'a> {
    title: &'a str,
    summary: Vec<Stat>,
    /// Why some numbers are missing (no replay, no diff).
    summary_notes: Vec<&'static str>,
    denied: Option<Table>,
    changes: Option<Changes>,
    workloads: Vec<Section>,
    unpolicied: Option<Table>,
    unused: Option<Table>,
    externals: Option<Table>,
    notes: &'a [String],
}

struct Stat {
    label: &'static str,
    value: String,
    detail: Option<String>,
    tone: Tone,
}

struct Changes {
    newly_denied: Table,
    newly_allowed: Table,
    isolation: Table,
}

/// One workload (or one policy whose workload is unknown).
struct Section {
    title: String,
    anchor: String,
    policies: Vec<PolicyPart>,
    /// The workload's replay numbers, in a sentence.
    replay: Option<String>,
    flows: Option<Table>,
    /// Allowed flows left out of `flows` (see [`MAX_ALLOWED_FLOWS_PER_WORKLOAD`]).
    flows_omitted: usize,
    denied: usize,
    coverage: Option<f64>,
}

struct PolicyPart {
    id: String,
    selects: String,
    isolates: String,
    rules: Table,
}

/// How a cell, row or number should look (HTML classes; Markdown ignores it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Tone {
    #[default]
    Plain,
    Muted,
    Good,
    Warn,
    Bad,
    Low,
    Medium,
    High,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Self::Plain => "",
            Self::Muted => "muted",
            Self::Good => "good",
            Self::Warn => "warn",
            Self::Bad => "bad",
            Self::Low => "conf-low",
            Self::Medium => "conf-medium",
            Self::High => "conf-high",
        }
    }
}

struct Table {
    columns: Vec<Column>,
    rows: Vec<Row>,
}

struct Column {
    title: &'static str,
    numeric: bool,
}

struct Row {
    cells: Vec<Cell>,
    tone: Tone,
}

#[derive(Default)]
struct Cell {
    /// Lines break at `\n` in HTML; Markdown joins them with a space.
    text: String,
    /// Longer text, shown on hover in HTML (e.g. every client pod).
    title: Option<String>,
    tone: Tone,
}

impl Cell {
    fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    fn tone(mut self, tone: Tone) -> Self {
        self.tone = tone;
        self
    }

    fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    fn none() -> Self {
        Self::new("—").tone(Tone::Muted)
    }
}

impl Table {
    fn new(columns: &[(&'static str, bool)]) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|&(title, numeric)| Column { title, numeric })
                .collect(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, cells: Vec<Cell>, tone: Tone) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(Row { cells, tone });
    }
}

impl<'a> Report<'a> {
    fn new(input: &ReportInput<'a>) -> Self {
        let policies = input.policies;
        let unused: BTreeSet<&RuleId> = input
            .replay
            .map(|r| r.unused_rules.iter().collect())
            .unwrap_or_default();

        // Sections: workloads with policies in name order, then policies without a workload.
        let mut by_workload: BTreeMap<Option<&str>, Vec<&ReviewedPolicy>> = BTreeMap::new();
        for p in policies.iter() {
            by_workload
                .entry(p.workload.as_deref())
                .or_default()
                .push(p);
        }
        let mut workloads = Vec::new();
        let mut policy_workloads = BTreeSet::new();
        for (workload, ps) in by_workload.iter().filter(|(w, _)| w.is_some()) {
            let w = workload.unwrap_or_default();
            policy_workloads.insert(w);
            workloads.push(section(
                input,
                w.to_string(),
                Some(w),
                ps,
                &unused,
                workloads.len(),
            ));
        }
        for p in by_workload.get(&None).into_iter().flatten() {
            workloads.push(section(
                input,
                format!("policy {} (workload unknown)", p.id()),
                None,
                &[p],
                &unused,
                workloads.len(),
            ));
        }

        let rules: usize = policies.iter().map(rule_count).sum();
        let mut summary = vec![
            Stat {
                label: "Policies",
                value: int(policies.len() as u64),
                detail: None,
                tone: Tone::Plain,
            },
            Stat {
                label: "Workloads",
                value: int(policy_workloads.len() as u64),
                detail: input.replay.map(|r| {
                    format!(
                        "with a policy, of {} replayed",
                        int(r.workloads.len() as u64)
                    )
                }),
                tone: Tone::Plain,
            },
            Stat {
                label: "Rules",
                value: int(rules as u64),
                detail: Some(format!(
                    "{} with evidence",
                    int(policies
                        .iter()
                        .map(|p| {
                            p.evidence
                                .iter()
                                .map(|e| (e.direction, e.rule))
                                .collect::<BTreeSet<_>>()
                                .len() as u64
                        })
                        .sum())
                )),
                tone: Tone::Plain,
            },
        ];
        let mut summary_notes = Vec::new();
        match input.replay {
            Some(r) => {
                let denied: Vec<_> = r.denied().collect();
                let denied_connections: u64 = denied.iter().map(|(f, _)| f.connections).sum();
                let coverage = r.coverage();
                summary.extend([
                    Stat {
                        label: "Connections replayed",
                        value: int(r.connections()),
                        detail: Some(format!("in {} flows", int(r.flows.len() as u64))),
                        tone: Tone::Plain,
                    },
                    Stat {
                        label: "Coverage",
                        value: percent(coverage),
                        detail: Some("of connections allowed".into()),
                        tone: if coverage < 1.0 {
                            Tone::Warn
                        } else {
                            Tone::Good
                        },
                    },
                    Stat {
                        label: "Would be denied",
                        value: format!(
                            "{} {}",
                            int(denied.len() as u64),
                            plural(denied.len(), "flow", "flows")
                        ),
                        detail: Some(format!("{} connections", int(denied_connections))),
                        tone: if denied.is_empty() {
                            Tone::Good
                        } else {
                            Tone::Bad
                        },
                    },
                    Stat {
                        label: "Unused rules",
                        value: int(r.unused_rules.len() as u64),
                        detail: Some("no replayed flow used them".into()),
                        tone: if r.unused_rules.is_empty() {
                            Tone::Plain
                        } else {
                            Tone::Warn
                        },
                    },
                    Stat {
                        label: "New external destinations",
                        value: int(r.new_externals.len() as u64),
                        detail: Some("first seen recently".into()),
                        tone: if r.new_externals.is_empty() {
                            Tone::Plain
                        } else {
                            Tone::Warn
                        },
                    },
                ]);
            }
            None => summary_notes
                .push("Not replayed: no recorded flows were evaluated against these policies."),
        }
        match input.diff {
            Some(d) => {
                let isolated = d.isolation_changes.iter().filter(|c| c.isolated).count();
                summary.push(Stat {
                    label: "Isolation changes",
                    value: int(d.isolation_changes.len() as u64),
                    detail: Some(format!(
                        "{} become isolated, {} open up",
                        int(isolated as u64),
                        int((d.isolation_changes.len() - isolated) as u64)
                    )),
                    tone: Tone::Plain,
                });
            }
            None => summary_notes.push("No comparison with the policies in force."),
        }

        let denied = input.replay.map(|r| {
            let mut flows: Vec<_> = r.denied().collect();
            flows.sort_by_key(|(f, _)| flow_order(f));
            flow_table(flows.into_iter().map(|(f, o)| (f, o)))
        });

        let changes = input.diff.map(|d| {
            let mut isolation =
                Table::new(&[("Workload", false), ("Direction", false), ("Change", false)]);
            for c in &d.isolation_changes {
                let (text, tone) = if c.isolated {
                    (
                        "becomes isolated: only what its rules allow passes",
                        Tone::Warn,
                    )
                } else {
                    ("no longer isolated: everything passes", Tone::Muted)
                };
                isolation.push(
                    vec![
                        Cell::new(&c.workload),
                        Cell::new(direction(c.direction)),
                        Cell::new(text).tone(tone),
                    ],
                    Tone::Plain,
                );
            }
            Changes {
                newly_denied: sorted_flow_table(&d.newly_denied),
                newly_allowed: sorted_flow_table(&d.newly_allowed),
                isolation,
            }
        });

        let unpolicied = input.replay.map(|r| {
            let mut t = Table::new(&[
                ("Workload", false),
                ("Isolated", false),
                ("Connections", true),
                ("Allowed", true),
                ("Denied", true),
                ("Coverage", true),
            ]);
            for (w, wr) in r
                .workloads
                .iter()
                .filter(|(w, _)| !policy_workloads.contains(w.as_str()))
            {
                t.push(
                    vec![
                        Cell::new(w),
                        Cell::new(isolation(wr)),
                        Cell::new(int(wr.connections)),
                        Cell::new(int(wr.allowed)),
                        Cell::new(int(wr.denied)).tone(if wr.denied > 0 {
                            Tone::Bad
                        } else {
                            Tone::Plain
                        }),
                        Cell::new(percent(wr.coverage())),
                    ],
                    if wr.denied > 0 {
                        Tone::Bad
                    } else {
                        Tone::Plain
                    },
                );
            }
            t
        });

        let unused_table = input.replay.map(|r| {
            let mut t = Table::new(&[
                ("Rule", false),
                ("Workload", false),
                ("Peer", false),
                ("Ports", false),
                ("Last seen", false),
                ("Confidence", false),
            ]);
            for id in &r.unused_rules {
                let p = policies.policies.get(&id.policy);
                let workload = p.and_then(|p| p.workload.clone());
                let evidence: Vec<&RuleEvidence> = p
                    .map(|p| {
                        p.evidence
                            .iter()
                            .filter(|e| e.direction == id.direction && e.rule == id.index)
                            .collect()
                    })
                    .unwrap_or_default();
                let best = evidence
                    .iter()
                    .copied()
                    .max_by(|a, b| a.confidence.total_cmp(&b.confidence));
                t.push(
                    vec![
                        Cell::new(id.to_string()),
                        workload.map(Cell::new).unwrap_or_else(Cell::none),
                        if evidence.is_empty() {
                            let [peers, _] = p
                                .and_then(|p| spec_rule(p, id.direction, id.index))
                                .unwrap_or_default();
                            Cell::new(format!("{peers} (no evidence)"))
                        } else {
                            Cell::new(
                                evidence
                                    .iter()
                                    .map(|e| peer(e))
                                    .collect::<BTreeSet<_>>()
                                    .into_iter()
                                    .collect::<Vec<_>>()
                                    .join("; "),
                            )
                        },
                        if evidence.is_empty() {
                            let [_, ports] = p
                                .and_then(|p| spec_rule(p, id.direction, id.index))
                                .unwrap_or_default();
                            Cell::new(ports)
                        } else {
                            Cell::new(
                                evidence
                                    .iter()
                                    .map(|e| port(e.protocol, e.port))
                                    .collect::<BTreeSet<_>>()
                                    .into_iter()
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            )
                        },
                        evidence
                            .iter()
                            .map(|e| e.last_seen.as_str())
                            .max()
                            .map(|t| Cell::new(time(t)))
                            .unwrap_or_else(Cell::none),
                        best.map(|e| confidence_cell(e.confidence))
                            .unwrap_or_else(Cell::none),
                    ],
                    Tone::Plain,
                );
            }
            t
        });

        let externals = input.replay.map(|r| {
            let mut t = Table::new(&[
                ("Client", false),
                ("Destination", false),
                ("Port", false),
                ("Connections", true),
                ("First seen", false),
                ("Last seen", false),
                ("Policy set", false),
            ]);
            let outcomes: BTreeMap<&ObservedFlow, &Outcome> =
                r.flows.iter().map(|(f, o)| (f, o)).collect();
            for f in &r.new_externals {
                let verdict = match outcomes.get(f) {
                    Some(o) if o.is_denied() => Cell::new("DENIED").tone(Tone::Bad),
                    Some(o) if o.is_allowed() => Cell::new("allowed").tone(Tone::Good),
                    Some(_) => Cell::new("unknown").tone(Tone::Muted),
                    None => Cell::none(),
                };
                t.push(
                    vec![
                        Cell::new(f.client.to_string()),
                        Cell::new(f.server.to_string()),
                        Cell::new(port(f.protocol, f.port)),
                        Cell::new(int(f.connections)),
                        Cell::new(time(&f.first_seen)),
                        Cell::new(time(&f.last_seen)),
                        verdict,
                    ],
                    Tone::Plain,
                );
            }
            t
        });

        Self {
            title: input.title,
            summary,
            summary_notes,
            denied,
            changes,
            workloads,
            unpolicied,
            unused: unused_table,
            externals,
            notes: input.notes,
        }
    }
}

fn section(
    input: &ReportInput<'_>,
    title: String,
    workload: Option<&str>,
    policies: &[&ReviewedPolicy],
    unused: &BTreeSet<&RuleId>,
    index: usize,
) -> Section {
    let parts = policies
        .iter()
        .map(|p| PolicyPart {
            id: p.id(),
            selects: p
                .policy
                .spec
                .as_ref()
                .and_then(|s| s.pod_selector.as_ref())
                .map(selector)
                .filter(|s| !s.is_empty())
                .map(|s| format!("pods {s}"))
                .unwrap_or_else(|| "every pod of its namespace".into()),
            isolates: isolates(p),
            rules: rule_table(p, unused),
        })
        .collect();

    let mut section = Section {
        anchor: format!("w{index}-{}", anchor(&title)),
        title,
        policies: parts,
        replay: None,
        flows: None,
        flows_omitted: 0,
        denied: 0,
        coverage: None,
    };
    let Some(replay) = input.replay else {
        return section;
    };
    let ids: BTreeSet<String> = policies.iter().map(|p| p.id()).collect();
    let touches = |f: &ObservedFlow, o: &Outcome| match workload {
        Some(w) => [&f.client, &f.server]
            .into_iter()
            .any(|e| matches!(e, Endpoint::Workload { workload } if workload == w)),
        // Without a workload, the flows the policy decided.
        None => match o {
            Outcome::Allowed { rules } => rules.iter().any(|r| ids.contains(&r.policy)),
            Outcome::Denied { policies, .. } => policies.iter().any(|p| ids.contains(p)),
            Outcome::Unknown { .. } => false,
        },
    };
    let mut flows: Vec<_> = replay.flows.iter().filter(|(f, o)| touches(f, o)).collect();
    flows.sort_by_key(|(f, o)| {
        let rank = match o {
            Outcome::Denied { .. } => 0,
            Outcome::Unknown { .. } => 1,
            Outcome::Allowed { .. } => 2,
        };
        (rank, flow_order(f))
    });
    section.denied = flows.iter().filter(|(_, o)| o.is_denied()).count();
    let keep = section.denied
        + flows
            .iter()
            .filter(|(_, o)| !o.is_allowed() && !o.is_denied())
            .count()
        + MAX_ALLOWED_FLOWS_PER_WORKLOAD;
    section.flows_omitted = flows.len().saturating_sub(keep);
    flows.truncate(keep);
    section.flows = Some(flow_table(flows.into_iter().map(|(f, o)| (f, o))));
    if let Some(wr) = workload.and_then(|w| replay.workloads.get(w)) {
        section.coverage = Some(wr.coverage());
        section.replay = Some(format!(
            "Replay: {} {} ({} allowed, {} denied), coverage {}; isolated for {}.",
            int(wr.connections),
            plural(wr.connections as usize, "connection", "connections"),
            int(wr.allowed),
            int(wr.denied),
            percent(wr.coverage()),
            isolation(wr),
        ));
    }
    section
}

fn rule_table(p: &ReviewedPolicy, unused: &BTreeSet<&RuleId>) -> Table {
    let mut t = Table::new(&[
        ("Rule", false),
        ("Peer", false),
        ("Ports", false),
        ("Connections", true),
        ("Bytes", true),
        ("Client pods", false),
        ("Days", true),
        ("First and last seen", false),
        ("Confidence", false),
        ("Widened", false),
    ]);
    let id = p.id();
    let spec = p.policy.spec.as_ref();
    let count = |d: Direction| {
        spec.and_then(|s| match d {
            Direction::Ingress => s.ingress.as_ref().map(Vec::len),
            Direction::Egress => s.egress.as_ref().map(Vec::len),
        })
        .unwrap_or(0)
    };
    // Rules in order, then the evidence of rules a reviewer removed (still worth seeing).
    let mut rules: Vec<(Direction, usize)> = [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(|d| (0..count(d)).map(move |i| (d, i)))
        .collect();
    let gone: BTreeSet<(Direction, usize)> = p
        .evidence
        .iter()
        .map(|e| (e.direction, e.rule))
        .filter(|&(d, i)| i >= count(d))
        .collect();
    rules.extend(gone);

    for (d, i) in rules {
        let written = spec_rule(p, d, i);
        let rule_id = RuleId {
            policy: id.clone(),
            direction: d,
            index: i,
        };
        let mut label = format!("{}[{i}]", direction(d));
        let mut tone = Tone::Plain;
        if written.is_none() {
            label.push_str(" (not in policy)");
            tone = Tone::Muted;
        } else if unused.contains(&rule_id) {
            label.push_str(" (unused)");
            tone = Tone::Warn;
        }
        let evidence: Vec<&RuleEvidence> = p
            .evidence
            .iter()
            .filter(|e| e.direction == d && e.rule == i)
            .collect();
        if evidence.is_empty() {
            let [peer, ports] = written.unwrap_or_default();
            t.push(
                vec![
                    Cell::new(label).tone(tone),
                    Cell::new(peer),
                    Cell::new(ports),
                    Cell::none(),
                    Cell::none(),
                    Cell::none(),
                    Cell::none(),
                    Cell::none(),
                    Cell::new("no evidence").tone(Tone::Muted),
                    Cell::none(),
                ],
                tone,
            );
            continue;
        }
        for e in evidence {
            t.push(
                vec![
                    Cell::new(label.clone()).tone(tone),
                    Cell::new(peer(e)),
                    Cell::new(port(e.protocol, e.port)),
                    Cell::new(int(e.connections)),
                    Cell::new(bytes(e.bytes)),
                    client_pods(e),
                    Cell::new(int(e.days.into())),
                    Cell::new(format!("{} →\n{}", time(&e.first_seen), time(&e.last_seen))),
                    confidence_cell(e.confidence),
                    e.widened
                        .as_ref()
                        .map(|w| Cell::new(format!("{}:\n{}", w.cidr, w.reason)).tone(Tone::Warn))
                        .unwrap_or_else(Cell::none),
                ],
                tone,
            );
        }
    }
    t
}

/// Flows with their outcomes, one row each.
fn flow_table<'f>(flows: impl Iterator<Item = (&'f ObservedFlow, &'f Outcome)>) -> Table {
    let mut t = Table::new(&[
        ("Outcome", false),
        ("Client", false),
        ("Server", false),
        ("Port", false),
        ("Connections", true),
        ("Why", false),
        ("Last seen", false),
    ]);
    for (f, o) in flows {
        let (verdict, tone) = match o {
            Outcome::Denied { .. } => ("DENIED", Tone::Bad),
            Outcome::Allowed { .. } => ("allowed", Tone::Good),
            Outcome::Unknown { .. } => ("unknown", Tone::Muted),
        };
        t.push(
            vec![
                Cell::new(verdict).tone(tone),
                Cell::new(f.client.to_string()),
                Cell::new(f.server.to_string()),
                Cell::new(port(f.protocol, f.port)),
                Cell::new(int(f.connections)),
                Cell::new(why(f, o)),
                Cell::new(time(&f.last_seen)),
            ],
            if o.is_denied() {
                Tone::Bad
            } else {
                Tone::Plain
            },
        );
    }
    t
}

fn sorted_flow_table(flows: &[(ObservedFlow, Outcome)]) -> Table {
    let mut flows: Vec<_> = flows.iter().collect();
    flows.sort_by_key(|(f, _)| flow_order(f));
    flow_table(flows.into_iter().map(|(f, o)| (f, o)))
}

/// Busiest first, then by name: the order flows are listed and drawn in.
fn flow_order(f: &ObservedFlow) -> (Reverse<u64>, &Endpoint, &Endpoint, Option<u16>) {
    (Reverse(f.connections), &f.client, &f.server, f.port)
}

/// Why the policy set decides a flow as it does.
fn why(f: &ObservedFlow, o: &Outcome) -> String {
    match o {
        Outcome::Allowed { rules } if rules.is_empty() => {
            if matches!(f.client, Endpoint::Node { .. })
                || matches!(f.server, Endpoint::Node { .. })
            {
                "the pod's node: always allowed".into()
            } else {
                "not isolated: no rule needed".into()
            }
        }
        Outcome::Allowed { rules } => format!(
            "by {}",
            rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Outcome::Denied {
            direction: d,
            policies,
        } => {
            let side = match d {
                Direction::Egress => "the client's egress",
                Direction::Ingress => "the server's ingress",
            };
            if policies.is_empty() {
                format!("by {side} (default deny)")
            } else {
                format!("by {side}, isolated by {}", policies.join(", "))
            }
        }
        Outcome::Unknown { workload } => format!("{workload} has no pods to evaluate"),
    }
}

/// The confidence of the evidence behind the rules that allow a flow: the highest of the
/// entries for the flow's peer and port, else of any entry of those rules. `None` when no
/// rule allows it (denied, not isolated, the node, no pods).
fn flow_confidence(policies: &PolicySet, f: &ObservedFlow, o: &Outcome) -> Option<f64> {
    let Outcome::Allowed { rules } = o else {
        return None;
    };
    let mut best: Option<(u8, f64)> = None;
    for r in rules {
        let Some(p) = policies.policies.get(&r.policy) else {
            continue;
        };
        let other = match r.direction {
            Direction::Ingress => &f.client,
            Direction::Egress => &f.server,
        };
        for e in p
            .evidence
            .iter()
            .filter(|e| e.direction == r.direction && e.rule == r.index)
        {
            let same_port = e.protocol == f.protocol && e.port == f.port;
            let tier = u8::from(same_port) + u8::from(same_port && peer_matches(e, other));
            best = match best {
                Some((t, c)) if (t, c) >= (tier, e.confidence) => Some((t, c)),
                _ => Some((tier, e.confidence)),
            };
        }
    }
    best.map(|(_, c)| c)
}

fn peer_matches(e: &RuleEvidence, endpoint: &Endpoint) -> bool {
    match endpoint {
        Endpoint::Workload { workload } => e.peer == format!("workload {workload}"),
        Endpoint::External { ip, .. } => {
            e.widened.as_ref().is_some_and(|w| w.cidr.contains(ip))
                || e.peer
                    .strip_prefix("external ")
                    .and_then(|rest| rest.split(' ').next())
                    .is_some_and(|addr| addr == ip.to_string())
        }
        Endpoint::Node { .. } => e.peer.contains("node"),
    }
}

/// A rule's peers and ports as written in the policy, `None` when it has no such rule.
fn spec_rule(p: &ReviewedPolicy, d: Direction, index: usize) -> Option<[String; 2]> {
    let spec = p.policy.spec.as_ref()?;
    match d {
        Direction::Ingress => spec.ingress.as_ref()?.get(index).map(|r| {
            [
                peers(r.from.as_deref(), p.namespace()),
                ports(r.ports.as_deref()),
            ]
        }),
        Direction::Egress => spec.egress.as_ref()?.get(index).map(|r| {
            [
                peers(r.to.as_deref(), p.namespace()),
                ports(r.ports.as_deref()),
            ]
        }),
    }
}

fn rule_count(p: &ReviewedPolicy) -> usize {
    p.policy.spec.as_ref().map_or(0, |s| {
        s.ingress.as_ref().map_or(0, Vec::len) + s.egress.as_ref().map_or(0, Vec::len)
    })
}

/// The directions a policy isolates: its `policyTypes`, or as the API server defaults them.
fn isolates(p: &ReviewedPolicy) -> String {
    let Some(spec) = p.policy.spec.as_ref() else {
        return "ingress".into();
    };
    let types: Vec<String> = match &spec.policy_types {
        Some(t) => t.iter().map(|t| t.to_lowercase()).collect(),
        None => {
            let mut t = vec!["ingress".to_string()];
            if spec.egress.is_some() {
                t.push("egress".into());
            }
            t
        }
    };
    match types.as_slice() {
        [] => "nothing".into(),
        [one] => one.clone(),
        many => many.join(" and "),
    }
}

fn isolation(wr: &WorkloadReplay) -> &'static str {
    match (wr.isolation.ingress, wr.isolation.egress) {
        (true, true) => "ingress and egress",
        (true, false) => "ingress",
        (false, true) => "egress",
        (false, false) => "neither direction",
    }
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The observed peer (a workload by its name alone), with the DNS name it was looked up by
/// when that is not in it already.
fn peer(e: &RuleEvidence) -> String {
    let peer = e.peer.strip_prefix("workload ").unwrap_or(&e.peer);
    match &e.dns_name {
        Some(name) if !peer.contains(name.as_str()) => format!("{peer} ({name})"),
        _ => peer.to_string(),
    }
}

fn client_pods(e: &RuleEvidence) -> Cell {
    const SHOWN: usize = 3;
    if e.source_pods.is_empty() {
        return Cell::none();
    }
    let n = e.source_pods.len();
    let count = if e.source_pods_saturated {
        format!("{}+", int(n as u64))
    } else {
        int(n as u64)
    };
    let mut text = format!(
        "{count}:\n{}",
        e.source_pods
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(",\n")
    );
    if n > SHOWN || e.source_pods_saturated {
        text.push_str(",\n…");
    }
    let mut all = e.source_pods.join("\n");
    if e.source_pods_saturated {
        all.push_str("\n(more were seen than are kept)");
    }
    Cell::new(text).title(all)
}

fn selector(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in s.match_expressions.iter().flatten() {
        let values = r.values.as_deref().unwrap_or_default().join(", ");
        parts.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} not in ({values})", r.key),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            op => format!("{} {op} ({values})", r.key),
        });
    }
    parts.join(", ")
}

/// A rule's peers as written in the policy (for rules without evidence).
fn peers(peers: Option<&[NetworkPolicyPeer]>, namespace: &str) -> String {
    let peers = peers.unwrap_or_default();
    if peers.is_empty() {
        return "any peer".into();
    }
    let one = |p: &NetworkPolicyPeer| {
        if let Some(b) = &p.ip_block {
            return match b.except.as_deref() {
                Some(except) if !except.is_empty() => {
                    format!("{} except {}", b.cidr, except.join(", "))
                }
                _ => b.cidr.clone(),
            };
        }
        let pods = p.pod_selector.as_ref().map(selector);
        let namespaces = p.namespace_selector.as_ref().map(selector);
        let pods = match pods.as_deref() {
            None | Some("") => "all pods".to_string(),
            Some(s) => format!("pods {s}"),
        };
        match namespaces.as_deref() {
            None => format!("{pods} in {namespace}"),
            Some("") => format!("{pods} in every namespace"),
            Some(s) => format!("{pods} in namespaces {s}"),
        }
    };
    peers.iter().map(one).collect::<Vec<_>>().join("; ")
}

fn ports(ports: Option<&[NetworkPolicyPort]>) -> String {
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        return "any port".into();
    }
    ports
        .iter()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match (&p.port, p.end_port) {
                (None, _) => format!("{proto} any port"),
                (Some(IntOrString::Int(n)), Some(end)) => format!("{proto} {n}-{end}"),
                (Some(IntOrString::Int(n)), None) => format!("{proto} {n}"),
                (Some(IntOrString::String(name)), _) => format!("{proto} {name}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn port(protocol: Protocol, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{protocol} {p}"),
        None => protocol.to_string(),
    }
}

fn confidence_cell(c: f64) -> Cell {
    let (word, tone) = confidence_level(c);
    Cell::new(format!("{c:.2} {word}")).tone(tone)
}

/// low < 0.3 <= medium < 0.7 <= high.
fn confidence_level(c: f64) -> (&'static str, Tone) {
    if c < 0.3 {
        ("low", Tone::Low)
    } else if c < 0.7 {
        ("medium", Tone::Medium)
    } else {
        ("high", Tone::High)
    }
}

/// `1234567` -> `1,234,567`.
fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rounded down to 0.1 %, so that anything short of everything never shows as 100 %.
fn percent(share: f64) -> String {
    if share >= 1.0 {
        return "100%".into();
    }
    let tenths = (share.max(0.0) * 1000.0).floor() / 10.0;
    format!("{tenths:.1}%")
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// RFC 3339 to the minute: `2025-03-01T12:34:56Z` -> `2025-03-01 12:34` (a zone other than
/// UTC is kept).
fn time(t: &str) -> String {
    let b = t.as_bytes();
    if b.len() < 16 || b[10] != b'T' || !t.is_char_boundary(16) {
        return t.to_string();
    }
    let zone = t[16..].trim_start_matches(|c: char| c == ':' || c == '.' || c.is_ascii_digit());
    let zone = match zone {
        "Z" | "z" | "+00:00" | "" => "",
        other => other,
    };
    format!("{} {}{}", &t[..10], &t[11..16], zone)
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// An HTML id from any text: ASCII letters and digits, the rest as `-`.
fn anchor(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.99999), "99.9%");
        assert_eq!(percent(0.5), "50.0%");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn confidence_words() {
        assert_eq!(confidence_level(0.0).0, "low");
        assert_eq!(confidence_level(0.29).0, "low");
        assert_eq!(confidence_level(0.3).0, "medium");
        assert_eq!(confidence_level(0.69).0, "medium");
        assert_eq!(confidence_level(0.7).0, "high");
        assert_eq!(confidence_cell(0.82).text, "0.82 high");
    }

    #[test]
    fn times() {
        assert_eq!(time("2025-03-01T12:34:56Z"), "2025-03-01 12:34");
        assert_eq!(
            time("2025-03-01T12:34:56.123+02:00"),
            "2025-03-01 12:34+02:00"
        );
        assert_eq!(time("yesterday"), "yesterday");
    }
}
