//! The workload graph as SVG: workloads in one column per namespace (the nodes' column on
//! the left, destinations outside the cluster on the right), one curve per recorded flow
//! from client to server, coloured by the confidence of the evidence behind the rules that
//! allow it, red and dashed when the policy set would deny it, as wide as the log of its
//! connections.
//!
//! Without a replay the edges are the evidence of the policies' rules instead (one per peer,
//! protocol and port).
//!
//! The layout is deterministic (sorted inputs, a fixed number of ordering passes, ties broken
//! by name), so the same input gives the same bytes.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
};

use model::{Direction, Protocol};

use super::{ReportInput, confidence_level, flow_confidence, int, port, why};
use crate::replay::{Endpoint, Outcome};

/// Graphs with more flows than this show this many: denied flows first, then the ones with
/// the most connections, and say so in a caption.
pub const MAX_EDGES: usize = 150;

const MARGIN: f64 = 24.0;
const COL_W: f64 = 220.0;
const NODE_W: f64 = 200.0;
const NODE_X: f64 = (COL_W - NODE_W) / 2.0;
/// Between columns: room for the curves.
const GAP: f64 = 120.0;
/// A group's title.
const HEADER: f64 = 36.0;
const GROUP_PAD: f64 = 10.0;
const GROUP_GAP: f64 = 18.0;
const NODE_H: f64 = 30.0;
const NODE_GAP: f64 = 10.0;
/// The SVG is at least this wide (room for the legend).
const MIN_WIDTH: f64 = 900.0;
/// The width of the HTML page's content; the legend wraps to it.
const FIT_WIDTH: f64 = 1240.0;
/// How far a curve between two boxes of one column bulges out of it, at most.
const LOOP_MAX: f64 = 80.0;
const CHAR_W: f64 = 6.9;
/// Passes of the barycentre ordering inside columns (fewer crossings).
const ORDER_PASSES: usize = 6;

const RED: &str = "#dc2626";
const OPEN: &str = "#b8c0cc";
const UNKNOWN: &str = "#a8a29e";

/// The workload graph of a report's input as one `<svg>` element.
pub fn svg(input: &ReportInput<'_>) -> String {
    let mut g = Graph::default();
    match input.replay {
        Some(replay) => g.add_replay(input, replay),
        None => g.add_evidence(input),
    }
    g.render()
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Nodes,
    Namespace(String),
    External,
}

struct Node {
    group: Group,
    label: String,
    /// A short kind after the label (`deploy`, `sts`, `svc`).
    kind: String,
    tooltip: String,
    has_policy: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Allowed by rules whose evidence has this confidence.
    Rule(f64),
    /// Allowed with no rule: the sides are not isolated, or one is the node.
    Open,
    Denied,
    Unknown,
}

struct Edge {
    from: usize,
    to: usize,
    /// The side whose policy denies it, for a denied flow.
    denier: Option<usize>,
    connections: u64,
    kind: Kind,
    tooltip: String,
}

#[derive(Default)]
struct Graph {
    keys: BTreeMap<String, usize>,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    /// Edges before [`MAX_EDGES`] was applied.
    total_edges: usize,
}

impl Graph {
    fn node(&mut self, key: String, make: impl FnOnce() -> Node) -> usize {
        if let Some(&i) = self.keys.get(&key) {
            return i;
        }
        let i = self.nodes.len();
        self.nodes.push(make());
        self.keys.insert(key, i);
        i
    }

    fn workload(&mut self, workload: &str) -> usize {
        self.node(format!("w:{workload}"), || {
            let mut parts = workload.splitn(3, '/');
            let (ns, kind, name) = (parts.next(), parts.next(), parts.next());
            let (kind, name) = match (kind, name) {
                (Some(k), Some(n)) => (short_kind(k), n),
                (Some(n), None) => (String::new(), n),
                _ => (String::new(), workload),
            };
            Node {
                group: Group::Namespace(ns.unwrap_or_default().to_string()),
                label: name.to_string(),
                kind,
                tooltip: workload.to_string(),
                has_policy: false,
            }
        })
    }

    fn endpoint(&mut self, e: &Endpoint) -> usize {
        match e {
            Endpoint::Workload { workload } => self.workload(workload),
            Endpoint::External { ip, dns_name } => self.node(format!("x:{ip}"), || Node {
                group: Group::External,
                label: dns_name.clone().unwrap_or_else(|| ip.to_string()),
                kind: if dns_name.is_some() {
                    ip.to_string()
                } else {
                    String::new()
                },
                tooltip: e.to_string(),
                has_policy: false,
            }),
            Endpoint::Node { .. } => self.host(),
        }
    }

    /// The pods' nodes, as one: which node does not matter to a policy.
    fn host(&mut self) -> usize {
        self.node("n:".into(), || Node {
            group: Group::Nodes,
            label: "cluster nodes".into(),
            kind: String::new(),
            tooltip: "the pods' nodes (kubelet probes, host-network pods)".into(),
            has_policy: false,
        })
    }

    /// A peer as the evidence names it: `workload ns/Kind/name`, `service ns/name`,
    /// `external IP (name)`, `the pod's node`.
    fn peer(&mut self, peer: &str, dns_name: Option<&str>) -> usize {
        if let Some(w) = peer.strip_prefix("workload ") {
            return self.workload(w);
        }
        if let Some(s) = peer.strip_prefix("service ") {
            return self.node(format!("s:{s}"), || {
                let (ns, name) = s.split_once('/').unwrap_or(("", s));
                Node {
                    group: Group::Namespace(ns.to_string()),
                    label: name.to_string(),
                    kind: "svc".into(),
                    tooltip: peer.to_string(),
                    has_policy: false,
                }
            });
        }
        if peer.contains("node") && !peer.starts_with("external ") {
            return self.host();
        }
        let rest = peer.strip_prefix("external ").unwrap_or(peer);
        let addr = rest.split(' ').next().unwrap_or(rest);
        let named = rest
            .split_once(" (")
            .map(|(_, n)| n.trim_end_matches(')'))
            .or(dns_name);
        self.node(format!("x:{addr}"), || Node {
            group: Group::External,
            label: named.unwrap_or(addr).to_string(),
            kind: if named.is_some() {
                addr.to_string()
            } else {
                String::new()
            },
            tooltip: peer.to_string(),
            has_policy: false,
        })
    }

    fn mark_policies(&mut self, input: &ReportInput<'_>) {
        for p in input.policies.iter() {
            let i = match &p.workload {
                Some(w) => self.workload(w),
                None => {
                    let id = p.id();
                    self.node(format!("p:{id}"), || Node {
                        group: Group::Namespace(p.namespace().to_string()),
                        label: p.name().to_string(),
                        kind: "policy".into(),
                        tooltip: format!("policy {id} (workload unknown)"),
                        has_policy: true,
                    })
                }
            };
            self.nodes[i].has_policy = true;
        }
    }

    fn add_replay(&mut self, input: &ReportInput<'_>, replay: &crate::replay::Replay) {
        let mut edges = Vec::new();
        for (f, o) in &replay.flows {
            let from = self.endpoint(&f.client);
            let to = self.endpoint(&f.server);
            let kind = match o {
                Outcome::Denied { .. } => Kind::Denied,
                Outcome::Unknown { .. } => Kind::Unknown,
                Outcome::Allowed { .. } => match flow_confidence(input.policies, f, o) {
                    Some(c) => Kind::Rule(c),
                    None => Kind::Open,
                },
            };
            let mut tooltip = format!(
                "{} → {}, {}: {} connections; {} {}",
                f.client,
                f.server,
                port(f.protocol, f.port),
                int(f.connections),
                match o {
                    Outcome::Denied { .. } => "WOULD BE DENIED",
                    Outcome::Allowed { .. } => "allowed",
                    Outcome::Unknown { .. } => "not evaluated:",
                },
                why(f, o),
            );
            if let Kind::Rule(c) = kind {
                let _ = write!(tooltip, "; confidence {c:.2} {}", confidence_level(c).0);
            }
            let denier = match o {
                Outcome::Denied {
                    direction: Direction::Egress,
                    ..
                } => Some(from),
                Outcome::Denied { .. } => Some(to),
                _ => None,
            };
            edges.push(Edge {
                from,
                to,
                denier,
                connections: f.connections,
                kind,
                tooltip,
            });
        }
        self.keep(input, edges);
    }

    fn add_evidence(&mut self, input: &ReportInput<'_>) {
        // Both sides' policies carry evidence of the same traffic: one edge per client,
        // server, protocol and port, with the most connections and confidence either saw.
        let mut merged: BTreeMap<EdgeKey, (u64, f64, String)> = BTreeMap::new();
        self.mark_policies(input);
        for p in input.policies.iter() {
            let own = match &p.workload {
                Some(w) => self.workload(w),
                None => self.keys[&format!("p:{}", p.id())],
            };
            for e in &p.evidence {
                let other = self.peer(&e.peer, e.dns_name.as_deref());
                let (from, to) = match e.direction {
                    Direction::Ingress => (other, own),
                    Direction::Egress => (own, other),
                };
                let entry =
                    merged
                        .entry((from, to, e.protocol, e.port))
                        .or_insert((0, 0.0, String::new()));
                entry.0 = entry.0.max(e.connections);
                entry.1 = entry.1.max(e.confidence);
                if entry.2.is_empty() {
                    entry.2 = format!("{} {}[{}]", e.policy, super::direction(e.direction), e.rule);
                }
            }
        }
        let edges = merged
            .into_iter()
            .map(|((from, to, protocol, p), (connections, c, rule))| Edge {
                from,
                to,
                denier: None,
                connections,
                kind: Kind::Rule(c),
                tooltip: format!(
                    "{} → {}, {}: {} connections observed; rule {rule}; confidence {c:.2} {}",
                    self.nodes[from].tooltip,
                    self.nodes[to].tooltip,
                    port(protocol, p),
                    int(connections),
                    confidence_level(c).0,
                ),
            })
            .collect();
        self.keep(input, edges);
    }

    /// Applies [`MAX_EDGES`] and drops the nodes no kept edge touches (except workloads with
    /// a policy: an isolated workload with no traffic is worth seeing).
    fn keep(&mut self, input: &ReportInput<'_>, mut edges: Vec<Edge>) {
        self.mark_policies(input);
        self.total_edges = edges.len();
        if edges.len() > MAX_EDGES {
            let mut order: Vec<usize> = (0..edges.len()).collect();
            order.sort_by_key(|&i| {
                let e = &edges[i];
                (e.kind != Kind::Denied, Reverse(e.connections), i)
            });
            let kept: BTreeSet<usize> = order.into_iter().take(MAX_EDGES).collect();
            let mut i = 0;
            edges.retain(|_| {
                i += 1;
                kept.contains(&(i - 1))
            });
        }
        let used: BTreeSet<usize> = edges.iter().flat_map(|e| [e.from, e.to]).collect();
        let remap: BTreeMap<usize, usize> = (0..self.nodes.len())
            .filter(|i| used.contains(i) || self.nodes[*i].has_policy)
            .enumerate()
            .map(|(new, old)| (old, new))
            .collect();
        let nodes = std::mem::take(&mut self.nodes);
        self.nodes = nodes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| remap.contains_key(i))
            .map(|(_, n)| n)
            .collect();
        for e in &mut edges {
            e.from = remap[&e.from];
            e.to = remap[&e.to];
            e.denier = e.denier.map(|d| remap[&d]);
        }
        self.edges = edges;
    }

    fn render(&self) -> String {
        let layout = Layout::new(self);
        let mut out = String::new();
        let width = layout.width.max(MIN_WIDTH);
        let legend = Legend::new(width.min(FIT_WIDTH));
        let top = MARGIN + legend.height + if self.truncated() { 24.0 } else { 0.0 };
        let height = top + layout.height + MARGIN;
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="workload-graph{fit}" width="{w:.0}" height="{height:.0}" viewBox="0 0 {w:.0} {height:.0}" role="img" aria-label="Workload graph" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif" font-size="12">"#,
            w = width,
            // Scaled down to the page when that keeps the text legible, else scrolled.
            fit = if width <= FIT_WIDTH * 1.4 { " fit" } else { "" },
        );
        out.push_str("<title>Workload graph: recorded flows between workloads</title>");
        let _ = write!(
            out,
            r##"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="#ffffff"/>"##
        );
        legend.render(&mut out);
        if self.truncated() {
            let _ = write!(
                out,
                r##"<text class="truncated" x="{MARGIN}" y="{:.1}" fill="#b45309" font-weight="600">Showing {} of {} flows: the denied ones first, then those with the most connections.</text>"##,
                MARGIN + legend.height + 12.0,
                int(self.edges.len() as u64),
                int(self.total_edges as u64),
            );
        }
        if self.nodes.is_empty() {
            let _ = write!(
                out,
                r##"<text x="{MARGIN}" y="{:.1}" fill="#64748b">Nothing to draw: no policies and no recorded flows.</text>"##,
                top + 20.0
            );
        }
        let _ = write!(out, r#"<g transform="translate(0 {top:.1})">"#);
        layout.render(self, &mut out);
        out.push_str("</g></svg>");
        out
    }

    fn truncated(&self) -> bool {
        self.total_edges > self.edges.len()
    }
}

/// `Deployment` -> `deploy`: the kind in few letters, the name gets the room.
fn short_kind(kind: &str) -> String {
    match kind {
        "Deployment" => "deploy",
        "StatefulSet" => "sts",
        "DaemonSet" => "ds",
        "ReplicaSet" => "rs",
        "CronJob" => "cronjob",
        "Job" => "job",
        "Pod" => "pod",
        "Service" => "svc",
        other => return other.to_lowercase(),
    }
    .into()
}

/// Client, server, protocol and port.
type EdgeKey = (usize, usize, Protocol, Option<u16>);

/// x, y and the side of the box.
type Point = (f64, f64, Side);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Left,
    Right,
}

/// A group's box: its column, top and height.
struct GroupBox {
    group: Group,
    column: usize,
    y: f64,
    h: f64,
}

struct Layout {
    groups: Vec<GroupBox>,
    /// Per node: x, y and height of its box.
    at: Vec<(f64, f64, f64)>,
    /// Per edge: start and end points (the end is on the box: the arrow's tip).
    ends: Vec<(Point, Point)>,
    width: f64,
    height: f64,
}

impl Layout {
    /// Groups (namespaces, the nodes, the outside) are boxes stacked in columns; a group's
    /// column follows the direction of the traffic between groups (clients left of their
    /// servers, the outside last), so most curves run left to right between neighbouring
    /// columns; inside a column, boxes and nodes are ordered to cross few curves.
    fn new(g: &Graph) -> Self {
        let groups: Vec<&Group> = g
            .nodes
            .iter()
            .map(|n| &n.group)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let group_of: Vec<usize> = g
            .nodes
            .iter()
            .map(|n| groups.binary_search(&&n.group).unwrap_or_default())
            .collect();
        let mut members = vec![Vec::new(); groups.len()];
        for (i, &gi) in group_of.iter().enumerate() {
            members[gi].push(i);
        }
        for m in &mut members {
            m.sort_by(|&a, &b| g.nodes[a].label.cmp(&g.nodes[b].label).then(a.cmp(&b)));
        }
        let external = groups.iter().position(|gr| **gr == Group::External);

        let (mut col_of_group, isolated) = columns(g, groups.len(), &group_of, external);
        let col = |col_of_group: &[usize], n: usize| col_of_group[group_of[n]];

        // Which side of its box each edge leaves and enters by (isolated groups only have
        // edges inside themselves: their column does not change this).
        let sides: Vec<(Side, Side)> = g
            .edges
            .iter()
            .map(
                |e| match col(&col_of_group, e.from).cmp(&col(&col_of_group, e.to)) {
                    std::cmp::Ordering::Less => (Side::Right, Side::Left),
                    std::cmp::Ordering::Greater => (Side::Left, Side::Right),
                    std::cmp::Ordering::Equal => (Side::Right, Side::Right),
                },
            )
            .collect();
        let mut attached: BTreeMap<(usize, Side), Vec<(usize, bool)>> = BTreeMap::new();
        for (i, e) in g.edges.iter().enumerate() {
            attached
                .entry((e.from, sides[i].0))
                .or_default()
                .push((i, true));
            attached
                .entry((e.to, sides[i].1))
                .or_default()
                .push((i, false));
        }
        // Boxes grow with the edges they carry, so those stay apart.
        let heights: Vec<f64> = (0..g.nodes.len())
            .map(|n| {
                let most = [Side::Left, Side::Right]
                    .iter()
                    .map(|&s| attached.get(&(n, s)).map_or(0, Vec::len))
                    .max()
                    .unwrap_or(0);
                (10.0 + 6.0 * most as f64).clamp(NODE_H, 160.0)
            })
            .collect();
        let group_h = |gi: usize| {
            HEADER
                + members[gi]
                    .iter()
                    .map(|&n| heights[n] + NODE_GAP)
                    .sum::<f64>()
                + GROUP_PAD
                - NODE_GAP
        };

        // Groups without traffic to other groups go where there is room.
        let placed = col_of_group
            .iter()
            .enumerate()
            .filter(|(gi, _)| !isolated.contains(gi))
            .map(|(_, &c)| c + 1)
            .max()
            .unwrap_or(0);
        let external_col = external.map(|e| col_of_group[e]);
        let usable = placed.max(isolated.len().min(4)).max(1);
        let mut fill = vec![0.0; usable.max(external_col.map_or(0, |c| c + 1))];
        for (gi, &c) in col_of_group.iter().enumerate() {
            if !isolated.contains(&gi) {
                fill[c] += group_h(gi) + GROUP_GAP;
            }
        }
        for &gi in &isolated {
            let c = (0..usable)
                .filter(|&c| Some(c) != external_col)
                .min_by(|&a, &b| fill[a].total_cmp(&fill[b]).then(a.cmp(&b)))
                .unwrap_or(0);
            col_of_group[gi] = c;
            fill[c] += group_h(gi) + GROUP_GAP;
        }
        let n_cols = col_of_group.iter().map(|c| c + 1).max().unwrap_or(0);
        let mut stacks: Vec<Vec<usize>> = vec![Vec::new(); n_cols];
        for (gi, &c) in col_of_group.iter().enumerate() {
            stacks[c].push(gi);
        }

        // Barycentre ordering: groups and nodes move towards the mean height of their
        // neighbours in other columns, sweeping left to right and back.
        let mut neighbours = vec![Vec::new(); g.nodes.len()];
        for e in &g.edges {
            if col(&col_of_group, e.from) != col(&col_of_group, e.to) {
                neighbours[e.from].push(e.to);
                neighbours[e.to].push(e.from);
            }
        }
        let mut centre = place(&stacks, &members, &heights).0;
        for pass in 0..ORDER_PASSES {
            let order: Vec<usize> = if pass % 2 == 0 {
                (0..n_cols).collect()
            } else {
                (0..n_cols).rev().collect()
            };
            for c in order {
                let bary: Vec<f64> = (0..g.nodes.len())
                    .map(|n| {
                        let nb = &neighbours[n];
                        if nb.is_empty() {
                            centre[n]
                        } else {
                            nb.iter().map(|&m| centre[m]).sum::<f64>() / nb.len() as f64
                        }
                    })
                    .collect();
                for &gi in &stacks[c] {
                    members[gi].sort_by(|a, b| bary[*a].total_cmp(&bary[*b]).then(a.cmp(b)));
                }
                let group_bary = |gi: usize| {
                    members[gi].iter().map(|&n| bary[n]).sum::<f64>() / members[gi].len() as f64
                };
                stacks[c].sort_by(|&a, &b| group_bary(a).total_cmp(&group_bary(b)).then(a.cmp(&b)));
                centre = place(&stacks, &members, &heights).0;
            }
        }
        let (_, tops, boxes) = place(&stacks, &members, &heights);

        let col_x = |c: usize| MARGIN + c as f64 * (COL_W + GAP);
        let at: Vec<(f64, f64, f64)> = (0..g.nodes.len())
            .map(|n| (col_x(col(&col_of_group, n)) + NODE_X, tops[n], heights[n]))
            .collect();

        // Attachment points: spread along the side, ordered by where the other end is.
        let mut ends = vec![((0.0, 0.0, Side::Left), (0.0, 0.0, Side::Left)); g.edges.len()];
        for ((n, side), mut list) in attached {
            let (x, y, h) = at[n];
            let other_y = |&(e, is_from): &(usize, bool)| {
                let edge: &Edge = &g.edges[e];
                let o = if is_from { edge.to } else { edge.from };
                // A loop to itself: the start above the end.
                if o == n {
                    return at[o].1 + if is_from { 0.0 } else { at[o].2 };
                }
                at[o].1 + at[o].2 / 2.0
            };
            list.sort_by(|a, b| other_y(a).total_cmp(&other_y(b)).then(a.cmp(b)));
            let k = list.len() as f64;
            for (slot, &(e, is_from)) in list.iter().enumerate() {
                let py = y + h * (slot as f64 + 1.0) / (k + 1.0);
                let px = match side {
                    Side::Left => x,
                    Side::Right => x + NODE_W,
                };
                if is_from {
                    ends[e].0 = (px, py, side);
                } else {
                    ends[e].1 = (px, py, side);
                }
            }
        }

        // Loops inside the last column bulge to its right.
        let loops_last = g.edges.iter().enumerate().any(|(i, e)| {
            sides[i] == (Side::Right, Side::Right) && col(&col_of_group, e.from) + 1 == n_cols
        });
        let width = MARGIN * 2.0
            + n_cols as f64 * COL_W
            + n_cols.saturating_sub(1) as f64 * GAP
            + if loops_last { LOOP_MAX + 20.0 } else { 0.0 };
        let height = boxes.iter().map(|&(y, h)| y + h).fold(HEADER, f64::max);
        Self {
            groups: (0..groups.len())
                .map(|gi| GroupBox {
                    group: groups[gi].clone(),
                    column: col_of_group[gi],
                    y: boxes[gi].0,
                    h: boxes[gi].1,
                })
                .collect(),
            at,
            ends,
            width,
            height,
        }
    }

    fn render(&self, g: &Graph, out: &mut String) {
        // Group boxes behind everything, their titles above the edges (with a halo).
        let mut titles = String::new();
        for b in &self.groups {
            let (fill, stroke, caption, title) = match &b.group {
                Group::Nodes => ("#fefce8", "#fde68a", "HOST", "Nodes".to_string()),
                Group::Namespace(ns) => ("#f1f5f9", "#cbd5e1", "NAMESPACE", ns.clone()),
                Group::External => (
                    "#f5f3ff",
                    "#ddd6fe",
                    "EXTERNAL",
                    "Outside the cluster".to_string(),
                ),
            };
            let x = MARGIN + b.column as f64 * (COL_W + GAP);
            let _ = write!(
                out,
                r##"<g class="group"><title>{}</title><rect x="{x:.1}" y="{:.1}" width="{COL_W}" height="{:.1}" rx="10" fill="{fill}" stroke="{stroke}"/></g>"##,
                esc(&format!("{} {title}", caption.to_lowercase())),
                b.y,
                b.h,
            );
            let _ = write!(
                titles,
                r##"<g class="group-title" stroke="{fill}" stroke-width="4" stroke-linejoin="round" paint-order="stroke"><text x="{:.1}" y="{:.1}" fill="#64748b" font-size="9.5" letter-spacing="0.06em">{caption}</text><text x="{:.1}" y="{:.1}" fill="#0f172a" font-weight="600" font-size="13">{}</text></g>"##,
                x + NODE_X,
                b.y + 14.0,
                x + NODE_X,
                b.y + 28.0,
                esc(&truncate(&title, ((NODE_W - 4.0) / 7.6) as usize)),
            );
        }

        // Edges: the quiet ones first, the denied on top.
        let mut order: Vec<usize> = (0..g.edges.len()).collect();
        order.sort_by(|&a, &b| {
            let rank = |k: Kind| match k {
                Kind::Open => (0, 0.0),
                Kind::Unknown => (1, 0.0),
                Kind::Rule(c) => (2, c),
                Kind::Denied => (3, 0.0),
            };
            let (ra, ca) = rank(g.edges[a].kind);
            let (rb, cb) = rank(g.edges[b].kind);
            ra.cmp(&rb).then(ca.total_cmp(&cb)).then(a.cmp(&b))
        });
        out.push_str(r#"<g class="edges" fill="none">"#);
        for i in order {
            let e = &g.edges[i];
            let w = edge_width(e.connections);
            let (class, colour, dash) = style(e.kind);
            let (d, arrow) = curve(self.ends[i].0, self.ends[i].1, w);
            let _ = write!(
                out,
                r#"<g class="edge {class}" data-from="{}" data-to="{}"><title>{}</title><path d="{d}" stroke="{colour}" stroke-width="{w:.1}" stroke-opacity="0.85"{}/><path d="{arrow}" fill="{colour}" stroke="none"/></g>"#,
                esc(&g.nodes[e.from].tooltip),
                esc(&g.nodes[e.to].tooltip),
                esc(&e.tooltip),
                dash.map(|d| format!(r#" stroke-dasharray="{d}""#))
                    .unwrap_or_default(),
            );
        }
        out.push_str("</g>");
        out.push_str(&titles);

        // Boxes on top of the edges' ends.
        for (n, node) in g.nodes.iter().enumerate() {
            let (x, y, h) = self.at[n];
            let denied = g.edges.iter().any(|e| e.denier == Some(n));
            let stroke = if denied { RED } else { "#94a3b8" };
            let _ = write!(
                out,
                r##"<g class="node"><title>{}</title><rect x="{x:.1}" y="{y:.1}" width="{NODE_W}" height="{h:.1}" rx="6" fill="#ffffff" stroke="{stroke}" stroke-width="{}"/>"##,
                esc(&node.tooltip),
                if denied { 1.6 } else { 1.0 },
            );
            if node.has_policy {
                let _ = write!(
                    out,
                    r##"<rect x="{x:.1}" y="{y:.1}" width="5" height="{h:.1}" rx="2" fill="#4f46e5"/>"##
                );
            }
            let room = |kind: &str| {
                let kind_w = if kind.is_empty() {
                    0.0
                } else {
                    kind.chars().count().min(16) as f64 * 6.0 + 8.0
                };
                ((NODE_W - 22.0 - kind_w) / CHAR_W).max(4.0) as usize
            };
            // The kind gives way to the name (the tooltip has both).
            let label_len = node.label.chars().count();
            let kind = if label_len > room(&node.kind) && label_len <= room("") {
                ""
            } else {
                node.kind.as_str()
            };
            let room = room(kind);
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" dominant-baseline="central" fill="#0f172a">{}"##,
                x + 12.0,
                y + h / 2.0,
                esc(&truncate(&node.label, room)),
            );
            if !kind.is_empty() {
                let _ = write!(
                    out,
                    r##"<tspan fill="#64748b" font-size="10">  {}</tspan>"##,
                    esc(&truncate(kind, 16))
                );
            }
            out.push_str("</text></g>");
        }
    }
}

/// Per node its centre and top, per group its top and height, with the groups of each
/// column stacked in order.
type Placed = (Vec<f64>, Vec<f64>, Vec<(f64, f64)>);

fn place(stacks: &[Vec<usize>], members: &[Vec<usize>], heights: &[f64]) -> Placed {
    let mut centre = vec![0.0; heights.len()];
    let mut top = vec![0.0; heights.len()];
    let mut boxes = vec![(0.0, 0.0); members.len()];
    for stack in stacks {
        let mut y = 0.0;
        for &gi in stack {
            let mut ny = y + HEADER;
            for &n in &members[gi] {
                top[n] = ny;
                centre[n] = ny + heights[n] / 2.0;
                ny += heights[n] + NODE_GAP;
            }
            let h = ny - NODE_GAP + GROUP_PAD - y;
            boxes[gi] = (y, h);
            y += h + GROUP_GAP;
        }
    }
    (centre, top, boxes)
}

/// The column of each group, and the groups without traffic to other groups (placed later,
/// where there is room). Columns follow the traffic between groups: the heaviest edges are
/// kept first and an edge that would close a cycle is dropped, then each group goes one
/// column right of its rightmost client group; the outside of the cluster is last.
fn columns(
    g: &Graph,
    n_groups: usize,
    group_of: &[usize],
    external: Option<usize>,
) -> (Vec<usize>, BTreeSet<usize>) {
    let mut weight: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut linked = BTreeSet::new();
    for e in &g.edges {
        let (a, b) = (group_of[e.from], group_of[e.to]);
        if a == b {
            continue;
        }
        linked.insert(a);
        linked.insert(b);
        if Some(a) != external && Some(b) != external {
            *weight.entry((a, b)).or_default() += e.connections.max(1);
        }
    }
    let mut by_weight: Vec<((usize, usize), u64)> = weight.into_iter().collect();
    by_weight.sort_by_key(|&(k, w)| (Reverse(w), k));
    let mut next: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n_groups];
    let reaches = |next: &[BTreeSet<usize>], from: usize, to: usize| {
        let mut seen = BTreeSet::from([from]);
        let mut todo = vec![from];
        while let Some(x) = todo.pop() {
            if x == to {
                return true;
            }
            for &y in &next[x] {
                if seen.insert(y) {
                    todo.push(y);
                }
            }
        }
        false
    };
    for ((a, b), _) in by_weight {
        if !reaches(&next, b, a) {
            next[a].insert(b);
        }
    }
    let mut column = vec![0; n_groups];
    // Longest path in a DAG: at most n rounds of relaxation.
    for _ in 0..n_groups {
        let mut changed = false;
        for a in 0..n_groups {
            for &b in &next[a] {
                if column[b] < column[a] + 1 {
                    column[b] = column[a] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    if let Some(x) = external {
        column[x] = (0..n_groups)
            .filter(|&gi| gi != x && linked.contains(&gi))
            .map(|gi| column[gi] + 1)
            .max()
            .unwrap_or(0);
    }
    let isolated = (0..n_groups)
        .filter(|gi| !linked.contains(gi) && Some(*gi) != external)
        .collect();
    (column, isolated)
}

/// The path of an edge from `a` to `b` (a cubic curve that leaves and enters its boxes
/// horizontally) and its arrowhead.
fn curve(a: Point, b: Point, w: f64) -> (String, String) {
    let (x0, y0, s0) = a;
    let (x3, y3, s3) = b;
    let len = 7.0 + 1.3 * w;
    let half = 3.5 + 0.9 * w;
    let out = |s: Side| if s == Side::Right { 1.0 } else { -1.0 };
    // The path stops at the arrow's base; the arrow points into the box.
    let bx = x3 + out(s3) * len;
    let reach = if s0 == s3 {
        // Both on the right side of one column: a loop out into the gap.
        30.0 + ((y3 - y0).abs() * 0.15).min(LOOP_MAX - 10.0)
    } else {
        ((bx - x0).abs() * 0.5).max(40.0)
    };
    let d = format!(
        "M{x0:.1} {y0:.1}C{:.1} {y0:.1} {:.1} {y3:.1} {bx:.1} {y3:.1}",
        x0 + out(s0) * reach,
        bx + out(s3) * reach,
    );
    let arrow = format!(
        "M{x3:.1} {y3:.1}L{bx:.1} {:.1}L{bx:.1} {:.1}Z",
        y3 - half,
        y3 + half
    );
    (d, arrow)
}

/// 1 connection: 1 px; each factor of ten adds 1.4 px, up to 8.
fn edge_width(connections: u64) -> f64 {
    (1.0 + 1.4 * (connections.max(1) as f64).log10()).min(8.0)
}

fn style(kind: Kind) -> (&'static str, String, Option<&'static str>) {
    match kind {
        Kind::Rule(c) => ("allowed", confidence_colour(c), None),
        Kind::Open => ("open", OPEN.into(), Some("9 3 2 3")),
        Kind::Denied => ("denied", RED.into(), Some("7 4")),
        Kind::Unknown => ("unknown", UNKNOWN.into(), Some("2 3")),
    }
}

/// Grey (no confidence) through blue to green (high confidence).
fn confidence_colour(c: f64) -> String {
    const STOPS: [(f64, [f64; 3]); 3] = [
        (0.0, [148.0, 163.0, 184.0]),
        (0.5, [59.0, 130.0, 246.0]),
        (1.0, [22.0, 163.0, 74.0]),
    ];
    let c = if c.is_finite() {
        c.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (lo, hi) = if c <= STOPS[1].0 {
        (STOPS[0], STOPS[1])
    } else {
        (STOPS[1], STOPS[2])
    };
    let t = (c - lo.0) / (hi.0 - lo.0);
    let ch = |k: usize| (lo.1[k] + (hi.1[k] - lo.1[k]) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", ch(0), ch(1), ch(2))
}

struct Legend {
    items: Vec<(f64, f64, LegendItem)>,
    height: f64,
}

enum LegendItem {
    Line {
        colour: String,
        dash: Option<&'static str>,
        label: &'static str,
    },
    Widths,
    Policy,
    Denier,
}

impl Legend {
    fn new(width: f64) -> Self {
        let line = |colour: String, dash, label| LegendItem::Line {
            colour,
            dash,
            label,
        };
        let all = vec![
            line(
                confidence_colour(0.9),
                None,
                "high confidence (0.70 and up)",
            ),
            line(confidence_colour(0.5), None, "medium (0.30 to 0.70)"),
            line(confidence_colour(0.1), None, "low (under 0.30)"),
            line(
                OPEN.into(),
                Some("9 3 2 3"),
                "allowed without a rule (not isolated, node)",
            ),
            line(RED.into(), Some("7 4"), "would be denied"),
            line(UNKNOWN.into(), Some("2 3"), "not evaluated (no pods)"),
            LegendItem::Widths,
            LegendItem::Policy,
            LegendItem::Denier,
        ];
        let mut items = Vec::new();
        let (mut x, mut y) = (MARGIN, 0.0);
        for item in all {
            let w = item.width();
            if x + w > width - MARGIN && x > MARGIN {
                x = MARGIN;
                y += 24.0;
            }
            items.push((x, y, item));
            x += w + 18.0;
        }
        Self {
            items,
            height: y + 40.0,
        }
    }

    fn render(&self, out: &mut String) {
        let _ = write!(
            out,
            r##"<g class="legend" transform="translate(0 {MARGIN})" font-size="11" fill="#334155">"##
        );
        for (x, y, item) in &self.items {
            let (x, y) = (*x, *y + 8.0);
            match item {
                LegendItem::Line {
                    colour,
                    dash,
                    label,
                } => {
                    let _ = write!(
                        out,
                        r#"<path d="M{x:.1} {y:.1}h26" stroke="{colour}" stroke-width="3"{}/><path d="M{:.1} {y:.1}l-7 -4.5v9z" fill="{colour}"/><text x="{:.1}" y="{y:.1}" dominant-baseline="central">{label}</text>"#,
                        dash.map(|d| format!(r#" stroke-dasharray="{d}""#))
                            .unwrap_or_default(),
                        x + 33.0,
                        x + 40.0,
                    );
                }
                LegendItem::Widths => {
                    let mut cx = x;
                    for n in [1_u64, 100, 10_000] {
                        let _ = write!(
                            out,
                            r##"<path d="M{cx:.1} {y:.1}h22" stroke="#64748b" stroke-width="{:.1}"/><text x="{:.1}" y="{y:.1}" dominant-baseline="central">{}</text>"##,
                            edge_width(n),
                            cx + 26.0,
                            int(n),
                        );
                        cx += 32.0 + int(n).len() as f64 * 6.5;
                    }
                    let _ = write!(
                        out,
                        r#"<text x="{cx:.1}" y="{y:.1}" dominant-baseline="central">connections</text>"#
                    );
                }
                LegendItem::Denier => {
                    let _ = write!(
                        out,
                        r##"<rect x="{x:.1}" y="{:.1}" width="26" height="16" rx="4" fill="#ffffff" stroke="{RED}" stroke-width="1.6"/><text x="{:.1}" y="{y:.1}" dominant-baseline="central">its policy would deny a recorded flow</text>"##,
                        y - 8.0,
                        x + 34.0,
                    );
                }
                LegendItem::Policy => {
                    let _ = write!(
                        out,
                        r##"<rect x="{x:.1}" y="{:.1}" width="26" height="16" rx="4" fill="#ffffff" stroke="#94a3b8"/><rect x="{x:.1}" y="{:.1}" width="5" height="16" rx="2" fill="#4f46e5"/><text x="{:.1}" y="{y:.1}" dominant-baseline="central">has a policy in this set</text>"##,
                        y - 8.0,
                        y - 8.0,
                        x + 34.0,
                    );
                }
            }
        }
        out.push_str("</g>");
    }
}

impl LegendItem {
    fn width(&self) -> f64 {
        match self {
            Self::Line { label, .. } => 40.0 + label.chars().count() as f64 * 6.0,
            Self::Widths => 3.0 * 32.0 + 13.0 * 6.5 + 70.0,
            Self::Policy => 34.0 + 24.0 * 6.0,
            Self::Denier => 34.0 + 32.0 * 6.0,
        }
    }
}

/// Cut to `max` characters with an ellipsis.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Text and attribute values for SVG and HTML.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours() {
        assert_eq!(confidence_colour(0.0), "#94a3b8");
        assert_eq!(confidence_colour(0.5), "#3b82f6");
        assert_eq!(confidence_colour(1.0), "#16a34a");
        assert_eq!(confidence_colour(f64::NAN), "#94a3b8");
    }

    #[test]
    fn widths() {
        assert_eq!(edge_width(0), 1.0);
        assert_eq!(edge_width(1), 1.0);
        assert!((edge_width(100) - 3.8).abs() < 1e-9);
        assert_eq!(edge_width(u64::MAX), 8.0);
    }

    #[test]
    fn truncates() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdefg", 6), "abcde…");
    }
}
