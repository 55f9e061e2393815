//! From a baseline to a proposed policy set: one NetworkPolicy per workload, isolating it
//! both ways, with an ingress and an egress rule for what was observed, and DNS egress to
//! the cluster's resolver.
//!
//! - Pods are selected by the smallest set of stable labels ([`crate::workload`]); a peer in
//!   another namespace adds a `namespaceSelector` on `kubernetes.io/metadata.name`. In-cluster
//!   peers are never `ipBlock`s.
//! - A Service peer (a connection to a ClusterIP) becomes its backing workloads on the
//!   target port (a named target port stays named: each backend resolves it).
//! - External peers become `ipBlock`s: exact, or widened by a stated rule ([`crate::widen`]).
//! - Peers with the same ports share one rule; every rule keeps the evidence of the baseline
//!   entries behind it ([`RuleEvidence`]).
//! - What cannot or should not become a rule (the pod's own node, which is always allowed;
//!   ICMP, which NetworkPolicy cannot name; a peer with no pods left; an address that
//!   belongs to the cluster but came without a name) is left out with a [`Note`] saying why.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use model::{
    Direction,
    evidence::{MANAGED_BY, RuleEvidence, WORKLOAD_ANNOTATION, Widened},
    netpol::cluster::{Cluster, NAMESPACE_NAME_LABEL, Pod, Resolver, TargetPort},
};
use serde::Serialize;

use crate::{
    baseline::{Baseline, PeerKey, RuleKey},
    evidence::Evidence,
    widen::Widening,
    workload::{PodInfo, SelectorError, WorkloadRef, selector_for},
};

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub resolver: Resolver,
    pub widening: Widening,
    /// Baseline entries below this confidence are left out (with a note).
    pub min_confidence: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Proposal {
    pub policies: Vec<ProposedPolicy>,
    pub notes: Vec<Note>,
}

#[derive(Clone, Debug)]
pub struct ProposedPolicy {
    pub workload: WorkloadRef,
    pub policy: NetworkPolicy,
    pub evidence: Vec<RuleEvidence>,
}

/// Something observed that the proposal leaves out, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Note {
    pub workload: String,
    pub message: String,
}

/// Propose policies for the workloads of `baseline`, whose pods and Services are in
/// `cluster` (pods carry their workload).
pub fn propose(baseline: &Baseline, cluster: &Cluster, options: &Options) -> Proposal {
    Proposer::new(baseline, cluster, options).run()
}

struct Proposer<'a> {
    baseline: &'a Baseline,
    cluster: &'a Cluster,
    options: &'a Options,
    pods: Vec<PodInfo>,
    selectors: HashMap<WorkloadRef, Result<BTreeMap<String, String>, SelectorError>>,
    widened: HashMap<RuleKey, Widened>,
    notes: Vec<Note>,
    pods_by_ip: HashMap<std::net::IpAddr, &'a Pod>,
}

/// A port of a rule: protocol, and number or name.
type PortKey = (String, PortRef);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PortRef {
    Number(u16),
    Name(String),
}

impl<'a> Proposer<'a> {
    fn new(baseline: &'a Baseline, cluster: &'a Cluster, options: &'a Options) -> Self {
        let pods = cluster
            .pods
            .iter()
            .map(|p| PodInfo {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                workload: workload_of(p),
            })
            .collect();
        Self {
            baseline,
            cluster,
            options,
            pods,
            selectors: HashMap::new(),
            widened: options.widening.apply(baseline),
            notes: Vec::new(),
            pods_by_ip: cluster
                .pods
                .iter()
                .flat_map(|p| p.ips.iter().map(move |ip| (ip.to_canonical(), p)))
                .collect(),
        }
    }

    fn run(mut self) -> Proposal {
        let mut by_workload: BTreeMap<String, Vec<(&RuleKey, &Evidence)>> = BTreeMap::new();
        for (key, evidence) in self.baseline.sorted() {
            by_workload
                .entry(self.baseline.names.get(key.workload).to_owned())
                .or_default()
                .push((key, evidence));
        }
        let mut policies = Vec::new();
        for (workload, rules) in by_workload {
            let Some(workload_ref) = WorkloadRef::parse(&workload) else {
                self.note(
                    &workload,
                    "not a namespace/Kind/name workload name: no policy",
                );
                continue;
            };
            match self.selector(&workload_ref) {
                Ok(selector) => policies.push(self.policy(workload_ref, selector, &rules)),
                Err(e) => self.note(&workload, &format!("no policy: {e}")),
            }
        }
        self.notes.sort();
        self.notes.dedup();
        Proposal {
            policies,
            notes: self.notes,
        }
    }

    fn note(&mut self, workload: &str, message: &str) {
        self.notes.push(Note {
            workload: workload.to_owned(),
            message: message.to_owned(),
        });
    }

    fn selector(
        &mut self,
        workload: &WorkloadRef,
    ) -> Result<BTreeMap<String, String>, SelectorError> {
        self.selectors
            .entry(workload.clone())
            .or_insert_with(|| selector_for(workload, &self.pods))
            .clone()
    }

    fn policy(
        &mut self,
        workload: WorkloadRef,
        selector: BTreeMap<String, String>,
        rules: &[(&RuleKey, &Evidence)],
    ) -> ProposedPolicy {
        let name = policy_name(&workload);
        let id = format!("{}/{name}", workload.namespace);
        // direction -> peer (as JSON, for grouping) -> ports -> evidence.
        let mut grouped: BTreeMap<Direction, BTreeMap<String, Group>> = BTreeMap::new();
        let dns = self.resolver_peer();
        let mut dns_group = Group::new(dns);
        for proto in ["UDP", "TCP"] {
            dns_group.ports.insert((proto.into(), PortRef::Number(53)));
        }
        grouped
            .entry(Direction::Egress)
            .or_default()
            .insert(peer_key(&dns_group.peer), dns_group);
        for &(key, evidence) in rules {
            if evidence.confidence() < self.options.min_confidence {
                let text = format!(
                    "{} left out: confidence {:.2} is below {:.2}",
                    self.describe(key),
                    evidence.confidence(),
                    self.options.min_confidence
                );
                self.note(&workload.to_string(), &text);
                continue;
            }
            for (peer, port) in self.peers(&workload, key) {
                let group = grouped
                    .entry(key.direction)
                    .or_default()
                    .entry(peer_key(&peer))
                    .or_insert_with(|| Group::new(peer));
                group.ports.insert(port);
                group.evidence.push((*key, evidence.clone()));
            }
        }
        let mut evidence = Vec::new();
        let mut spec = NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(Vec::new()),
            egress: Some(Vec::new()),
        };
        for (direction, groups) in grouped {
            for (index, rule) in merge_by_ports(groups).into_iter().enumerate() {
                for (key, e) in &rule.evidence {
                    evidence.push(self.rule_evidence(&id, direction, index, key, e));
                }
                let ports = Some(rule.ports.into_iter().map(port).collect());
                match direction {
                    Direction::Ingress => {
                        spec.ingress
                            .get_or_insert_default()
                            .push(NetworkPolicyIngressRule {
                                from: Some(rule.peers),
                                ports,
                            })
                    }
                    Direction::Egress => {
                        spec.egress
                            .get_or_insert_default()
                            .push(NetworkPolicyEgressRule {
                                to: Some(rule.peers),
                                ports,
                            })
                    }
                }
            }
        }
        let policy = NetworkPolicy {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name),
                namespace: Some(workload.namespace.clone()),
                labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
                annotations: Some(BTreeMap::from([(
                    WORKLOAD_ANNOTATION.into(),
                    workload.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(spec),
        };
        ProposedPolicy {
            workload,
            policy,
            evidence,
        }
    }

    fn resolver_peer(&self) -> NetworkPolicyPeer {
        NetworkPolicyPeer {
            namespace_selector: Some(namespace_selector(&self.options.resolver.namespace)),
            pod_selector: Some(LabelSelector {
                match_labels: Some(self.options.resolver.labels.clone()),
                ..LabelSelector::default()
            }),
            ip_block: None,
        }
    }

    /// The NetworkPolicy peers and port a baseline entry of `workload` becomes; none (with a
    /// note) when it cannot or need not become a rule.
    fn peers(
        &mut self,
        workload: &WorkloadRef,
        key: &RuleKey,
    ) -> Vec<(NetworkPolicyPeer, PortKey)> {
        let leave_out = |this: &mut Self, why: &str| {
            let text = format!("{} left out: {why}", this.describe(key));
            this.note(&workload.to_string(), &text);
            Vec::new()
        };
        let Some(port) = key.port.filter(|_| key.protocol.has_ports()) else {
            return leave_out(
                self,
                "NetworkPolicy cannot allow a protocol without ports alone",
            );
        };
        let protocol = key.protocol.to_string();
        let numbered = (protocol, PortRef::Number(port));
        match key.peer {
            PeerKey::Host => leave_out(self, "the pod's own node is always allowed"),
            PeerKey::Workload(peer) => {
                let Some(peer) = WorkloadRef::parse(self.baseline.names.get(peer)) else {
                    return leave_out(self, "the peer is not a namespace/Kind/name workload");
                };
                match self.workload_peer(workload, &peer) {
                    Ok(p) => vec![(p, numbered)],
                    Err(e) => leave_out(self, &e.to_string()),
                }
            }
            PeerKey::Service(service) => self.service_peers(workload, key, service, port),
            PeerKey::External { ip, .. } => {
                if let Some(owner) = self.in_cluster(ip) {
                    return leave_out(
                        self,
                        &format!(
                            "{ip} is {owner} in the cluster but the record had no name for it"
                        ),
                    );
                }
                let cidr = self.widened.get(key).map_or_else(
                    || ipnet::IpNet::from(ip).to_string(),
                    |w| w.cidr.to_string(),
                );
                let peer = NetworkPolicyPeer {
                    ip_block: Some(IPBlock { cidr, except: None }),
                    ..NetworkPolicyPeer::default()
                };
                vec![(peer, numbered)]
            }
        }
    }

    fn workload_peer(
        &mut self,
        workload: &WorkloadRef,
        peer: &WorkloadRef,
    ) -> Result<NetworkPolicyPeer, SelectorError> {
        let labels = self.selector(peer)?;
        Ok(NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels),
                ..LabelSelector::default()
            }),
            namespace_selector: (peer.namespace != workload.namespace)
                .then(|| namespace_selector(&peer.namespace)),
            ip_block: None,
        })
    }

    /// A Service's backing workloads on its target port.
    fn service_peers(
        &mut self,
        workload: &WorkloadRef,
        key: &RuleKey,
        service: crate::intern::Name,
        port: u16,
    ) -> Vec<(NetworkPolicyPeer, PortKey)> {
        let name = self.baseline.names.get(service);
        let mut why = None;
        let mut peers = Vec::new();
        match self.cluster.service_port(name, key.protocol, port) {
            Err(e) => why = Some(e),
            Ok((svc, service_port)) => {
                let backends: BTreeSet<WorkloadRef> =
                    svc.backends(self.cluster).map(workload_of).collect();
                if backends.is_empty() {
                    why = Some(format!("Service {name} has no backends"));
                }
                let target = match &service_port.target_port {
                    TargetPort::Number(n) => PortRef::Number(*n),
                    TargetPort::Name(s) => PortRef::Name(s.clone()),
                };
                for backend in backends {
                    match self.workload_peer(workload, &backend) {
                        Ok(p) => peers.push((p, (key.protocol.to_string(), target.clone()))),
                        Err(e) => why = Some(e.to_string()),
                    }
                }
            }
        }
        if let Some(why) = why {
            let text = format!("{} left out: {why}", self.describe(key));
            self.note(&workload.to_string(), &text);
        }
        peers
    }

    /// What in the cluster owns `ip`, if anything.
    fn in_cluster(&self, ip: std::net::IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        if let Some(p) = self.pods_by_ip.get(&ip) {
            return Some(format!("pod {}/{}", p.namespace, p.name));
        }
        if let Some(s) = self
            .cluster
            .services
            .iter()
            .find(|s| s.cluster_ips.contains(&ip))
        {
            return Some(format!("Service {}/{}", s.namespace, s.name));
        }
        self.cluster
            .nodes
            .iter()
            .find(|(_, ips)| ips.contains(&ip))
            .map(|(n, _)| format!("node {n}"))
    }

    fn describe(&self, key: &RuleKey) -> String {
        let peer = self.baseline.describe_peer(&key.peer);
        let port = key.port.map(|p| format!(" {p}")).unwrap_or_default();
        let dir = match key.direction {
            Direction::Egress => "egress to",
            Direction::Ingress => "ingress from",
        };
        format!("{dir} {peer} {}{port}", key.protocol)
    }

    fn rule_evidence(
        &self,
        policy: &str,
        direction: Direction,
        rule: usize,
        key: &RuleKey,
        e: &Evidence,
    ) -> RuleEvidence {
        let names = &self.baseline.names;
        let mut source_pods: Vec<String> = e
            .source_pods
            .iter()
            .map(|p| names.get(p).to_owned())
            .collect();
        source_pods.sort();
        RuleEvidence {
            policy: policy.to_owned(),
            direction,
            rule,
            peer: self.baseline.describe_peer(&key.peer),
            dns_name: match key.peer {
                PeerKey::External {
                    dns_name: Some(n), ..
                } => Some(self.baseline.names.get(n).to_owned()),
                _ => None,
            },
            protocol: key.protocol,
            port: key.port,
            connections: e.connections,
            bytes: e.bytes,
            source_pods,
            source_pods_saturated: e.source_pods.is_saturated(),
            first_seen: rfc3339(e.first_seen_ms),
            last_seen: rfc3339(e.last_seen_ms),
            days: e.days.count(),
            confidence: (e.confidence() * 1000.0).round() / 1000.0,
            widened: self.widened.get(key).cloned(),
        }
    }
}

/// One peer of a direction, the ports it was seen on, and the evidence.
struct Group {
    peer: NetworkPolicyPeer,
    ports: BTreeSet<PortKey>,
    evidence: Vec<(RuleKey, Evidence)>,
}

impl Group {
    fn new(peer: NetworkPolicyPeer) -> Self {
        Self {
            peer,
            ports: BTreeSet::new(),
            evidence: Vec::new(),
        }
    }
}

/// A rule of the proposal: peers that share the same ports.
struct MergedRule {
    peers: Vec<NetworkPolicyPeer>,
    ports: BTreeSet<PortKey>,
    evidence: Vec<(RuleKey, Evidence)>,
}

/// Peers with the same set of ports become one rule (in the order of their first peer).
fn merge_by_ports(groups: BTreeMap<String, Group>) -> Vec<MergedRule> {
    let mut rules: Vec<MergedRule> = Vec::new();
    for group in groups.into_values() {
        match rules.iter_mut().find(|r| r.ports == group.ports) {
            Some(rule) => {
                rule.peers.push(group.peer);
                rule.evidence.extend(group.evidence);
            }
            None => rules.push(MergedRule {
                peers: vec![group.peer],
                ports: group.ports,
                evidence: group.evidence,
            }),
        }
    }
    rules
}

fn port((protocol, port): PortKey) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol),
        port: Some(match port {
            PortRef::Number(n) => IntOrString::Int(i32::from(n)),
            PortRef::Name(name) => IntOrString::String(name),
        }),
        end_port: None,
    }
}

/// The peer's JSON, as a key that orders and groups peers deterministically.
fn peer_key(peer: &NetworkPolicyPeer) -> String {
    serde_json::to_string(peer).expect("a peer serializes")
}

/// A pod's workload; a bare pod is its own (`namespace/Pod/name`).
fn workload_of(pod: &Pod) -> WorkloadRef {
    let name = pod.workload_name();
    WorkloadRef::parse(&name).unwrap_or_else(|| WorkloadRef {
        namespace: pod.namespace.clone(),
        kind: "Pod".into(),
        name: pod.name.clone(),
    })
}

fn namespace_selector(namespace: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            namespace.to_owned(),
        )])),
        ..LabelSelector::default()
    }
}

/// `palisade-<kind>-<name>`, lower case, within the 253 characters of a DNS subdomain.
pub fn policy_name(workload: &WorkloadRef) -> String {
    let mut name = format!(
        "palisade-{}-{}",
        workload.kind.to_ascii_lowercase(),
        workload.name
    );
    name.truncate(253);
    name
}

pub(crate) fn rfc3339(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}
