//! Policies + cluster -> what the kernel enforces: each local pod's [`EndpointRules`], the
//! identity of every pod and node address, and the identities of the CIDRs rules name.
//!
//! - A pod's identity is its label set (namespace, namespace labels, pod labels minus
//!   noise labels), so pods and namespaces changing labels move identities, not rules.
//!   Exactness comes first: a noise label some selector reads stays in the set, and pods
//!   that share a label set but name their container ports differently are told apart by
//!   their named ports, so one identity never stands for pods a rule must treat apart.
//! - A peer selector becomes the identities of the pods it selects; an `ipBlock` a CIDR
//!   peer; no peers the wildcard.
//! - Services: their ClusterIPs get a Service identity and stand for their backends (the
//!   datapath judges a connection to one as Kubernetes does after kube-proxy's DNAT).
//! - Named ports are resolved on the destination: the endpoint itself for ingress, each
//!   peer identity for egress (with no peers: every pod identity naming the port; with an
//!   `ipBlock`: each pod address inside the block, as a /32 or /128).
//!
//! Compiling is a pure function of its input and the [`Compiler`]'s memory (the identity
//! table and rule ids, kept stable across compilations); the writer then writes only the
//! map entries that differ.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;

use super::{
    cluster::{Cluster, ClusterService, Pod, TargetPort},
    evaluate::{DefaultAction, RuleRef},
    policy::{Policy, PolicyPeer, PolicyPort, PortSpec},
    selector::Labels,
};
use crate::{
    Direction, Protocol,
    identity::{Identity, IdentityAllocator, IdentityError, LabelSet, NOISE_LABELS},
    rules::{EndpointRules, Isolation, Peer, PortRange, Rule, Service, ServicePort, in_block},
};

/// The label that tells apart pods whose label sets are equal but whose named container
/// ports differ.
pub const NAMED_PORTS_LABEL: &str = "io.palisade.named-ports";

/// A pod by namespace and name.
pub type PodKey = (String, String);

/// What to compile.
pub struct Input<'a> {
    pub cluster: &'a Cluster,
    pub policies: &'a [Policy],
    /// Pods on this node get rules (the others are only peers).
    pub node: &'a str,
    /// Each pod's default when no policy selects it in a direction.
    pub default: &'a dyn Fn(&Pod) -> DefaultAction,
}

/// What the kernel of one node should enforce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Rules of each pod on the node.
    pub endpoints: BTreeMap<PodKey, EndpointRules>,
    /// Every pod address of the cluster, this node's addresses (host) and the other
    /// nodes' (remote node), with their identities.
    pub ipcache: BTreeMap<IpAddr, Identity>,
    /// Every CIDR a rule names, with its identity.
    pub cidrs: BTreeMap<IpNet, Identity>,
    /// Each pod's identity.
    pub pod_identities: BTreeMap<PodKey, Identity>,
    /// Where each rule id comes from.
    pub rules: BTreeMap<u32, RuleRef>,
    /// The Services pods may address by ClusterIP, with their backends.
    pub services: Vec<Service>,
}

/// Compiles, remembering identities and rule ids between compilations.
#[derive(Debug, Default)]
pub struct Compiler {
    pub identities: IdentityAllocator,
    rule_ids: BTreeMap<RuleRef, u32>,
    next_rule_id: u32,
}

impl Compiler {
    pub fn new(identities: IdentityAllocator) -> Self {
        Self {
            identities,
            rule_ids: BTreeMap::new(),
            next_rule_id: 1,
        }
    }

    pub fn compile(&mut self, input: &Input<'_>) -> Result<Compiled, IdentityError> {
        let cluster = input.cluster;
        let mut out = Compiled::default();
        let labels = identity_labels(cluster, input.policies);
        // The pods of each identity (for selectors and named ports, any one will do: they
        // agree on everything a rule can see).
        let mut members: BTreeMap<Identity, Vec<&Pod>> = BTreeMap::new();
        for (pod, set) in cluster.pods.iter().zip(&labels) {
            let id = self.identities.for_labels(set)?;
            out.pod_identities
                .insert((pod.namespace.clone(), pod.name.clone()), id);
            for ip in &pod.ips {
                out.ipcache.insert(ip.to_canonical(), id);
            }
            members.entry(id).or_default().push(pod);
        }
        for (node, ips) in &cluster.nodes {
            let id = if node == input.node {
                Identity::HOST
            } else {
                Identity::REMOTE_NODE
            };
            for ip in ips {
                out.ipcache.insert(ip.to_canonical(), id);
            }
        }
        for net in input.policies.iter().flat_map(Policy::cidrs) {
            out.cidrs.insert(net, self.identities.for_cidr(net)?);
        }
        let peers = PeerIndex::new(cluster, members, input.policies);
        for pod in cluster.pods.iter().filter(|p| p.node == input.node) {
            let mut rules = Vec::new();
            let ingress = self.direction(input, &peers, pod, Direction::Ingress, &mut rules);
            let egress = self.direction(input, &peers, pod, Direction::Egress, &mut rules);
            for rule in &rules {
                if let Peer::Cidr { net, .. } = &rule.peer
                    && !out.cidrs.contains_key(net)
                {
                    // A pod address a named port resolved to (see the module docs).
                    out.cidrs.insert(*net, self.identities.for_cidr(*net)?);
                }
            }
            out.endpoints.insert(
                (pod.namespace.clone(), pod.name.clone()),
                EndpointRules {
                    ingress,
                    egress,
                    rules,
                },
            );
        }
        // Backends are looked for among their Service's namespace's pods only.
        let mut by_namespace: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for pod in &cluster.pods {
            by_namespace.entry(&pod.namespace).or_default().push(pod);
        }
        for service in &cluster.services {
            let pods = by_namespace
                .get(service.namespace.as_str())
                .map_or(&[][..], Vec::as_slice);
            out.services
                .push(self.service(service, pods, &out.pod_identities)?);
        }
        out.rules = self
            .rule_ids
            .iter()
            .map(|(r, id)| (*id, r.clone()))
            .collect();
        Ok(out)
    }

    /// The isolation of `pod` in `direction`, pushing the rules that apply to `out`.
    fn direction(
        &mut self,
        input: &Input<'_>,
        peers: &PeerIndex<'_>,
        pod: &Pod,
        direction: Direction,
        out: &mut Vec<Rule>,
    ) -> Isolation {
        let mut isolated = false;
        for policy in input
            .policies
            .iter()
            .filter(|p| p.name.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
        {
            let Some(rules) = policy.rules(direction) else {
                continue;
            };
            isolated = true;
            for (index, rule) in rules.iter().enumerate() {
                let id = self.rule_id(RuleRef {
                    namespace: policy.name.namespace.clone(),
                    policy: policy.name.name.clone(),
                    direction,
                    index,
                });
                let any = [Target::Any];
                let selected: Vec<&[Target]> = match &rule.peers {
                    None => vec![&any],
                    Some(list) => list.iter().map(|peer| peers.targets(peer)).collect(),
                };
                for target in selected.into_iter().flatten() {
                    emit(
                        out,
                        id,
                        direction,
                        pod,
                        peers,
                        target,
                        rule.ports.as_deref(),
                    );
                }
            }
        }
        match (isolated, (input.default)(pod)) {
            (true, _) | (false, DefaultAction::Deny) => Isolation::Isolated,
            (false, DefaultAction::Allow) => Isolation::Open,
        }
    }

    /// A Service as the datapath judges it: its ClusterIPs stand for its backends, on the
    /// target port. A named target port is resolved on each backend; where backends
    /// resolve it differently the port is left out (connections to it are refused: the
    /// datapath judges a Service port by one target port for all backends).
    fn service(
        &mut self,
        service: &ClusterService,
        namespace_pods: &[&Pod],
        pod_identities: &BTreeMap<PodKey, Identity>,
    ) -> Result<Service, IdentityError> {
        let identity = self
            .identities
            .for_service(&format!("{}/{}", service.namespace, service.name))?;
        let backends: Vec<&Pod> = namespace_pods
            .iter()
            .copied()
            .filter(|pod| service.selects(pod))
            .collect();
        let ports = service
            .ports
            .iter()
            .filter_map(|p| {
                let target = match &p.target_port {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => {
                        let resolved: BTreeSet<Option<u16>> = backends
                            .iter()
                            .map(|b| resolve(b, name, p.protocol).map(|r| r.first))
                            .collect();
                        match resolved.into_iter().collect::<Vec<_>>().as_slice() {
                            [Some(n)] => Some(*n),
                            _ => None,
                        }
                    }
                }?;
                Some(ServicePort {
                    protocol: p.protocol,
                    port: p.port,
                    target_port: target,
                })
            })
            .collect();
        let backends = backends
            .iter()
            .flat_map(|pod| {
                let id = pod_identities[&(pod.namespace.clone(), pod.name.clone())];
                pod.ips.iter().map(move |ip| (ip.to_canonical(), id))
            })
            .collect();
        Ok(Service {
            identity,
            cluster_ips: service.cluster_ips.clone(),
            ports,
            backends,
        })
    }

    fn rule_id(&mut self, rule: RuleRef) -> u32 {
        if let Some(id) = self.rule_ids.get(&rule) {
            return *id;
        }
        let id = self.next_rule_id.max(1);
        self.next_rule_id = id + 1;
        self.rule_ids.insert(rule, id);
        id
    }
}

/// Who a rule's peer stands for.
#[derive(Clone, Debug)]
enum Target {
    Any,
    Identity(Identity),
    Block { net: IpNet, except: Vec<IpNet> },
}

/// The cluster's pods grouped by identity, and what each peer of each policy selects,
/// worked out once per compilation however many local pods a policy selects.
struct PeerIndex<'a> {
    cluster: &'a Cluster,
    members: BTreeMap<Identity, Vec<&'a Pod>>,
    /// By the peer's address (the policies outlive the compilation).
    selected: HashMap<usize, Vec<Target>>,
    /// Each namespace's labels (as selectors see them), built once.
    namespace_labels: HashMap<&'a str, Labels>,
    /// The identities of each namespace's pods (an identity never spans namespaces): a
    /// peer without a namespace selector only looks at its policy's namespace, not at the
    /// whole cluster.
    by_namespace: HashMap<&'a str, Vec<Identity>>,
}

impl<'a> PeerIndex<'a> {
    fn new(
        cluster: &'a Cluster,
        members: BTreeMap<Identity, Vec<&'a Pod>>,
        policies: &[Policy],
    ) -> Self {
        let mut namespace_labels = HashMap::new();
        for pod in &cluster.pods {
            namespace_labels
                .entry(pod.namespace.as_str())
                .or_insert_with(|| cluster.namespace_labels(&pod.namespace));
        }
        let mut by_namespace: HashMap<&str, Vec<Identity>> = HashMap::new();
        for (id, pods) in &members {
            if let Some(pod) = pods.first() {
                by_namespace
                    .entry(pod.namespace.as_str())
                    .or_default()
                    .push(*id);
            }
        }
        let mut index = Self {
            cluster,
            members,
            selected: HashMap::new(),
            namespace_labels,
            by_namespace,
        };
        for policy in policies {
            let rules = [&policy.ingress, &policy.egress]
                .into_iter()
                .flatten()
                .flatten();
            for peer in rules.flat_map(|r| r.peers.iter().flatten()) {
                let targets = index.select(policy, peer);
                index.selected.insert(key(peer), targets);
            }
        }
        index
    }

    fn targets(&self, peer: &PolicyPeer) -> &[Target] {
        self.selected.get(&key(peer)).map_or(&[], Vec::as_slice)
    }

    fn select(&self, policy: &Policy, peer: &PolicyPeer) -> Vec<Target> {
        match peer {
            PolicyPeer::Block { net, except } => vec![Target::Block {
                net: *net,
                except: except.clone(),
            }],
            PolicyPeer::Pods { namespaces, .. } => {
                let selects = |id: &Identity| {
                    self.representative(*id).is_some_and(|pod| {
                        let labels = &self.namespace_labels[pod.namespace.as_str()];
                        peer.selects_pod(&policy.name.namespace, pod, labels)
                    })
                };
                let candidates: Box<dyn Iterator<Item = &Identity>> = match namespaces {
                    None => Box::new(
                        self.by_namespace
                            .get(policy.name.namespace.as_str())
                            .into_iter()
                            .flatten(),
                    ),
                    Some(_) => Box::new(self.members.keys()),
                };
                // Identity order, as the whole-cluster scan gives it.
                let mut selected: Vec<Identity> =
                    candidates.filter(|id| selects(id)).copied().collect();
                selected.sort();
                selected.into_iter().map(Target::Identity).collect()
            }
        }
    }

    /// A pod of `identity` (they agree on named ports).
    fn representative(&self, identity: Identity) -> Option<&Pod> {
        self.members.get(&identity).and_then(|m| m.first().copied())
    }
}

fn key(peer: &PolicyPeer) -> usize {
    std::ptr::from_ref(peer) as usize
}

/// Push the rules for one target and the rule's ports.
fn emit(
    out: &mut Vec<Rule>,
    id: u32,
    direction: Direction,
    pod: &Pod,
    peers: &PeerIndex<'_>,
    target: &Target,
    ports: Option<&[PolicyPort]>,
) {
    let mut push = |peer: Peer, protocol: Option<Protocol>, ports: Option<PortRange>| {
        out.push(Rule {
            id,
            direction,
            peer,
            protocol,
            ports,
        });
    };
    let peer_of = |t: &Target| match t {
        Target::Any => Peer::Any,
        Target::Identity(i) => Peer::Identity(*i),
        Target::Block { net, except } => Peer::Cidr {
            net: *net,
            except: except.clone(),
        },
    };
    let Some(ports) = ports else {
        push(peer_of(target), None, None);
        return;
    };
    for port in ports {
        match &port.port {
            PortSpec::All => push(peer_of(target), Some(port.protocol), None),
            PortSpec::Numbers(range) => push(peer_of(target), Some(port.protocol), Some(*range)),
            PortSpec::Named(name) if direction == Direction::Ingress => {
                if let Some(number) = resolve(pod, name, port.protocol) {
                    push(peer_of(target), Some(port.protocol), Some(number));
                }
            }
            PortSpec::Named(name) => {
                for (peer, number) in egress_named(peers, target, name, port.protocol) {
                    push(peer, Some(port.protocol), Some(number));
                }
            }
        }
    }
}

/// `name` on `pod`, when it is a port of `protocol` there.
fn resolve(pod: &Pod, name: &str, protocol: Protocol) -> Option<PortRange> {
    pod.named_port(name)
        .filter(|(p, _)| *p == protocol)
        .map(|(_, n)| PortRange::single(n))
}

/// An egress named port, resolved on each destination the target stands for.
fn egress_named(
    peers: &PeerIndex<'_>,
    target: &Target,
    name: &str,
    protocol: Protocol,
) -> Vec<(Peer, PortRange)> {
    match target {
        Target::Identity(id) => peers
            .representative(*id)
            .and_then(|pod| resolve(pod, name, protocol))
            .map(|n| (Peer::Identity(*id), n))
            .into_iter()
            .collect(),
        Target::Any => peers
            .members
            .iter()
            .filter_map(|(id, members)| {
                resolve(members[0], name, protocol).map(|n| (Peer::Identity(*id), n))
            })
            .collect(),
        Target::Block { net, except } => peers
            .cluster
            .pods
            .iter()
            .filter_map(|pod| resolve(pod, name, protocol).map(|n| (pod, n)))
            .flat_map(|(pod, n)| pod.ips.iter().map(move |ip| (ip.to_canonical(), n)))
            .filter(|(ip, _)| in_block(net, except, *ip))
            .map(|(ip, n)| {
                let host = IpNet::from(ip);
                (
                    Peer::Cidr {
                        net: host,
                        except: Vec::new(),
                    },
                    n,
                )
            })
            .collect(),
    }
}

/// The identity label set of every pod of the cluster, in `cluster.pods` order.
fn identity_labels(cluster: &Cluster, policies: &[Policy]) -> Vec<LabelSet> {
    let read: BTreeSet<&str> = policies
        .iter()
        .flat_map(Policy::selectors)
        .flat_map(|s| s.keys())
        .collect();
    // Noise labels stay out, unless a selector reads them.
    let keep = |k: &str| !NOISE_LABELS.contains(&k) || read.contains(k);
    let mut namespaces: HashMap<&str, LabelSet> = HashMap::new();
    let mut sets: Vec<LabelSet> = cluster
        .pods
        .iter()
        .map(|pod| {
            let mut set = namespaces
                .entry(&pod.namespace)
                .or_insert_with(|| {
                    LabelSet::for_namespace(
                        &pod.namespace,
                        &cluster.namespace_labels(&pod.namespace),
                    )
                })
                .clone();
            set.add_pod_labels(&pod.labels, keep);
            set
        })
        .collect();
    // Pods sharing a label set but not their named ports: split by the named ports.
    let signatures: Vec<String> = cluster.pods.iter().map(named_ports).collect();
    let mut named: HashMap<&LabelSet, &str> = HashMap::new();
    let mut split: HashSet<LabelSet> = HashSet::new();
    for (set, signature) in sets.iter().zip(&signatures) {
        if *named.entry(set).or_insert(signature) != signature.as_str() {
            split.insert(set.clone());
        }
    }
    for (set, signature) in sets.iter_mut().zip(signatures) {
        if split.contains(set) {
            set.0.insert(NAMED_PORTS_LABEL.to_owned(), signature);
        }
    }
    sets
}

/// A pod's named ports as `name/PROTOCOL/port,...`, sorted.
fn named_ports(pod: &Pod) -> String {
    let mut named: Vec<String> = pod
        .ports
        .iter()
        .filter_map(|p| {
            p.name
                .as_ref()
                .map(|n| format!("{n}/{:?}/{}", p.protocol, p.port))
        })
        .collect();
    named.sort();
    named.join(",")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::netpol::cluster::{ClusterServicePort, ContainerPort};

    fn pod(name: &str, app: &str, ip: [u8; 4], http: u16) -> Pod {
        Pod {
            namespace: "shop".into(),
            name: name.into(),
            labels: BTreeMap::from([("app".into(), app.into())]),
            ips: vec![IpAddr::from(ip)],
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: http,
                protocol: Protocol::Tcp,
            }],
            node: "n".into(),
            workload: None,
        }
    }

    fn service(target: TargetPort) -> ClusterService {
        ClusterService {
            namespace: "shop".into(),
            name: "web".into(),
            selector: BTreeMap::from([("app".into(), "web".into())]),
            cluster_ips: vec![IpAddr::from([10, 96, 0, 10])],
            ports: vec![ClusterServicePort {
                port: 80,
                protocol: Protocol::Tcp,
                target_port: target,
            }],
        }
    }

    fn compile(cluster: &Cluster) -> Compiled {
        let default = |_: &Pod| DefaultAction::Allow;
        Compiler::new(IdentityAllocator::default())
            .compile(&Input {
                cluster,
                policies: &[],
                node: "n",
                default: &default,
            })
            .unwrap()
    }

    #[test]
    fn a_service_stands_for_its_backends_on_the_resolved_target_port() {
        let mut cluster = Cluster {
            pods: vec![
                pod("web-1", "web", [10, 244, 0, 2], 8080),
                pod("web-2", "web", [10, 244, 0, 3], 8080),
                pod("db-1", "db", [10, 244, 0, 4], 8080),
            ],
            services: vec![service(TargetPort::Name("http".into()))],
            ..Cluster::default()
        };
        let compiled = compile(&cluster);
        let web = &compiled.services[0];
        assert!(web.identity.is_service());
        assert_eq!(web.ports[0].target_port, 8080);
        let backends: BTreeSet<IpAddr> = web.backends.iter().map(|(ip, _)| *ip).collect();
        assert_eq!(
            backends,
            BTreeSet::from([[10, 244, 0, 2].into(), [10, 244, 0, 3].into()])
        );
        // Backends that disagree on what `http` means: the port is left out (refused).
        cluster.pods[1].ports[0].port = 9090;
        assert!(compile(&cluster).services[0].ports.is_empty());
        cluster.services = vec![service(TargetPort::Number(8443))];
        assert_eq!(compile(&cluster).services[0].ports[0].target_port, 8443);
    }
}
