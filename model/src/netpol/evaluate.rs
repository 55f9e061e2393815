//! The reference evaluator: is a connection allowed, and by which policy and rule? It reads
//! the policies themselves ([`Policy`], the objects in typed form), never the compiled
//! rules, so the compiler and the kernel can be held against it.
//!
//! Kubernetes' semantics: a connection from A to B needs A's egress and B's ingress to
//! allow it. A pod's direction is isolated once any policy selecting the pod has that
//! direction in its `policyTypes`; then the union of those policies' rules is what is
//! allowed. A pod no policy selects (in a direction) gets its default: allow (Kubernetes)
//! or deny (zero trust). Traffic between a pod and its own node, and from a pod to itself,
//! is always allowed.
//! `ipBlock` peers match pod addresses too.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{
    cluster::{Cluster, Pod},
    policy::{Policy, PolicyName, PolicyPeer, PolicyPort, PolicyRule, PortSpec},
};
use crate::{Direction, Protocol};

/// What a pod that no policy selects in a direction gets in that direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAction {
    /// Kubernetes: not isolated, everything passes.
    #[default]
    Allow,
    /// Zero trust: isolated with no rule; only the pod's own node passes.
    Deny,
}

/// A connection: from `src` to `dst`, `protocol`, the destination `port` (0 for ICMP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// One rule of one policy: `spec.<direction>[index]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleRef {
    pub namespace: String,
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let direction = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        write!(
            f,
            "{}/{} {direction}[{}]",
            self.namespace, self.policy, self.index
        )
    }
}

/// The verdict of one side of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// This side is not a pod (an external address, a node): no policy applies.
    NotAPod,
    /// Between a pod and its own node: always allowed.
    OwnNode,
    /// A pod reaching itself (through a Service): a pod cannot block itself.
    Itself,
    /// No policy selects the pod in this direction: its default.
    Default(DefaultAction),
    /// Isolated, and these rules allow the connection.
    Allowed(Vec<RuleRef>),
    /// Isolated by these policies (none: by the zero-trust default) and no rule allows it.
    Denied(Vec<PolicyName>),
}

impl Side {
    pub fn allows(&self) -> bool {
        match self {
            Self::NotAPod | Self::OwnNode | Self::Itself | Self::Allowed(_) => true,
            Self::Default(action) => *action == DefaultAction::Allow,
            Self::Denied(_) => false,
        }
    }
}

/// Both sides' verdicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// At the source pod (its egress).
    pub egress: Side,
    /// At the destination pod (its ingress).
    pub ingress: Side,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

pub struct Evaluator<'a> {
    cluster: &'a Cluster,
    default: &'a dyn Fn(&Pod) -> DefaultAction,
    /// Pods by address, and policies by namespace: a query costs the policies of two
    /// namespaces, not of the cluster (replays evaluate millions of queries).
    pods: HashMap<IpAddr, &'a Pod>,
    policies: HashMap<&'a str, Vec<&'a Policy>>,
}

impl<'a> Evaluator<'a> {
    /// `default` gives each pod's default action (per namespace, workload or cluster).
    pub fn new(
        cluster: &'a Cluster,
        policies: &'a [Policy],
        default: &'a dyn Fn(&Pod) -> DefaultAction,
    ) -> Self {
        let mut pods = HashMap::new();
        for pod in &cluster.pods {
            for ip in &pod.ips {
                pods.entry(ip.to_canonical()).or_insert(pod);
            }
        }
        let mut by_namespace: HashMap<&str, Vec<&Policy>> = HashMap::new();
        for policy in policies {
            by_namespace
                .entry(policy.name.namespace.as_str())
                .or_default()
                .push(policy);
        }
        Self {
            cluster,
            default,
            pods,
            policies: by_namespace,
        }
    }

    /// The pod that has `addr`.
    pub fn pod_at(&self, addr: IpAddr) -> Option<&'a Pod> {
        self.pods.get(&addr.to_canonical()).copied()
    }

    pub fn evaluate(&self, q: &Query) -> Decision {
        let src = self.pod_at(q.src);
        let dst = self.pod_at(q.dst);
        if src.is_some() && src == dst {
            return Decision {
                egress: Side::Itself,
                ingress: Side::Itself,
            };
        }
        let egress = match src {
            None => Side::NotAPod,
            Some(pod) if self.cluster.is_own_node(pod, q.dst) => Side::OwnNode,
            Some(pod) => self.side(pod, Direction::Egress, q.dst, dst, q),
        };
        let ingress = match dst {
            None => Side::NotAPod,
            Some(pod) if self.cluster.is_own_node(pod, q.src) => Side::OwnNode,
            Some(pod) => self.side(pod, Direction::Ingress, q.src, src, q),
        };
        Decision { egress, ingress }
    }

    /// The policies selecting `pod` that isolate `direction`.
    pub fn selecting(
        &self,
        pod: &'a Pod,
        direction: Direction,
    ) -> impl Iterator<Item = &'a Policy> {
        self.policies
            .get(pod.namespace.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(move |p| p.rules(direction).is_some() && p.pod_selector.matches(&pod.labels))
    }

    fn side(
        &self,
        pod: &Pod,
        direction: Direction,
        peer_addr: IpAddr,
        peer: Option<&Pod>,
        q: &Query,
    ) -> Side {
        let selecting: Vec<&Policy> = self.selecting(pod, direction).collect();
        if selecting.is_empty() {
            return match (self.default)(pod) {
                DefaultAction::Allow => Side::Default(DefaultAction::Allow),
                DefaultAction::Deny => Side::Denied(Vec::new()),
            };
        }
        // Named ports are resolved on the destination pod.
        let destination = match direction {
            Direction::Ingress => Some(pod),
            Direction::Egress => peer,
        };
        let mut allowed = Vec::new();
        for policy in &selecting {
            for (index, rule) in policy.rules(direction).into_iter().flatten().enumerate() {
                if self.rule_matches(policy, rule, peer_addr, peer)
                    && ports_match(rule.ports.as_deref(), destination, q)
                {
                    allowed.push(RuleRef {
                        namespace: policy.name.namespace.clone(),
                        policy: policy.name.name.clone(),
                        direction,
                        index,
                    });
                }
            }
        }
        if allowed.is_empty() {
            Side::Denied(selecting.iter().map(|p| p.name.clone()).collect())
        } else {
            Side::Allowed(allowed)
        }
    }

    fn rule_matches(
        &self,
        policy: &Policy,
        rule: &PolicyRule,
        peer_addr: IpAddr,
        peer: Option<&Pod>,
    ) -> bool {
        let Some(peers) = &rule.peers else {
            return true;
        };
        peers
            .iter()
            .any(|p| self.peer_matches(policy, p, peer_addr, peer))
    }

    fn peer_matches(
        &self,
        policy: &Policy,
        selector: &PolicyPeer,
        peer_addr: IpAddr,
        peer: Option<&Pod>,
    ) -> bool {
        selector.covers(peer_addr)
            || peer.is_some_and(|pod| {
                let labels = self.cluster.namespace_labels(&pod.namespace);
                selector.selects_pod(&policy.name.namespace, pod, &labels)
            })
    }
}

/// Does one of `ports` (None: every port) cover the query, named ports resolved on
/// `destination`?
fn ports_match(ports: Option<&[PolicyPort]>, destination: Option<&Pod>, q: &Query) -> bool {
    let Some(ports) = ports else {
        return true;
    };
    ports.iter().any(|p| {
        p.protocol == q.protocol
            && match &p.port {
                PortSpec::All => true,
                PortSpec::Numbers(range) => range.contains(q.port),
                PortSpec::Named(name) => destination
                    .and_then(|pod| pod.named_port(name))
                    .is_some_and(|(protocol, port)| protocol == p.protocol && port == q.port),
            }
    })
}

#[cfg(test)]
mod tests {
    //! Expectations written from the Kubernetes documentation, by hand.

    use std::collections::BTreeMap;

    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde::Deserialize as _;

    use super::*;
    use crate::netpol::cluster::ContainerPort;

    /// Namespaces x (team=a) and y (team=b); pods x/a (app=web, port http=80),
    /// x/b (app=db), y/a (app=web); node n at 10.0.0.1.
    fn cluster() -> Cluster {
        let pod = |ns: &str, name: &str, app: &str, ip: [u8; 4]| Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            ips: vec![IpAddr::from(ip)],
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
            }],
            node: "n".into(),
            workload: None,
        };
        Cluster {
            namespaces: BTreeMap::from([
                ("x".into(), BTreeMap::from([("team".into(), "a".into())])),
                ("y".into(), BTreeMap::from([("team".into(), "b".into())])),
            ]),
            pods: vec![
                pod("x", "a", "web", [10, 244, 0, 1]),
                pod("x", "b", "db", [10, 244, 0, 2]),
                pod("y", "a", "web", [10, 244, 0, 3]),
            ],
            nodes: BTreeMap::from([("n".into(), vec![IpAddr::from([10, 0, 0, 1])])]),
            services: vec![],
        }
    }

    const XA: [u8; 4] = [10, 244, 0, 1];
    const XB: [u8; 4] = [10, 244, 0, 2];
    const YA: [u8; 4] = [10, 244, 0, 3];
    const NODE: [u8; 4] = [10, 0, 0, 1];
    const WORLD: [u8; 4] = [203, 0, 113, 9];

    fn policies(yaml: &str) -> Vec<Policy> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|doc| {
                let p = NetworkPolicy::deserialize(doc).unwrap();
                Policy::from_k8s(&p).unwrap()
            })
            .collect()
    }

    fn allowed(
        policies: &[Policy],
        default: DefaultAction,
        src: [u8; 4],
        dst: [u8; 4],
        port: u16,
    ) -> bool {
        let cluster = cluster();
        let default = move |_: &Pod| default;
        let q = Query {
            src: src.into(),
            dst: dst.into(),
            protocol: Protocol::Tcp,
            port,
        };
        Evaluator::new(&cluster, policies, &default)
            .evaluate(&q)
            .allowed()
    }

    #[test]
    fn without_policies_kubernetes_allows_and_zero_trust_denies() {
        assert!(allowed(&[], DefaultAction::Allow, XA, XB, 80));
        assert!(!allowed(&[], DefaultAction::Deny, XA, XB, 80));
        // A pod and its own node always reach each other.
        assert!(allowed(&[], DefaultAction::Deny, NODE, XB, 80));
        assert!(allowed(&[], DefaultAction::Deny, XB, NODE, 80));
        // And a pod always reaches itself (through a Service of its own).
        assert!(allowed(&[], DefaultAction::Deny, XB, XB, 80));
    }

    #[test]
    fn default_deny_ingress_isolates_only_ingress_of_its_namespace() {
        let p = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
        );
        assert!(!allowed(&p, DefaultAction::Allow, YA, XA, 80));
        assert!(!allowed(&p, DefaultAction::Allow, XB, XA, 80));
        // Egress is not isolated by it, and y is not selected.
        assert!(allowed(&p, DefaultAction::Allow, XA, YA, 80));
        assert!(allowed(&p, DefaultAction::Allow, XA, WORLD, 443));
        assert!(allowed(&p, DefaultAction::Allow, NODE, XA, 80));
    }

    #[test]
    fn pod_and_namespace_selectors_in_one_peer_and_in_two_peers() {
        // One peer with both selectors: web pods in namespaces of team b (AND).
        let and = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: b}}\n      podSelector: {matchLabels: {app: web}}\n",
        );
        assert!(allowed(&and, DefaultAction::Allow, YA, XB, 5432));
        assert!(!allowed(&and, DefaultAction::Allow, XA, XB, 5432));
        // Two peers: team b's pods, or web pods of x (OR).
        let or = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: b}}\n    - podSelector: {matchLabels: {app: web}}\n",
        );
        assert!(allowed(&or, DefaultAction::Allow, YA, XB, 5432));
        assert!(allowed(&or, DefaultAction::Allow, XA, XB, 5432));
        assert!(!allowed(&or, DefaultAction::Allow, WORLD, XB, 5432));
    }

    #[test]
    fn named_ports_resolve_on_the_destination_and_end_port_is_a_range() {
        let p = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - ports: [{port: http}]\n  egress:\n  - ports: [{port: 32000, endPort: 32768}]\n",
        );
        assert!(allowed(&p, DefaultAction::Allow, XB, XA, 80));
        assert!(!allowed(&p, DefaultAction::Allow, XB, XA, 81));
        assert!(allowed(&p, DefaultAction::Allow, XA, WORLD, 32768));
        assert!(!allowed(&p, DefaultAction::Allow, XA, WORLD, 32769));
        assert!(!allowed(&p, DefaultAction::Allow, XA, WORLD, 31999));
    }

    #[test]
    fn ip_blocks_with_except_and_the_rule_that_allowed() {
        let p = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {}}]\n  - to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.8/29]}}]\n",
        );
        assert!(!allowed(&p, DefaultAction::Allow, XA, WORLD, 443));
        assert!(allowed(
            &p,
            DefaultAction::Allow,
            XA,
            [203, 0, 113, 20],
            443
        ));
        let cluster = cluster();
        let default = |_: &Pod| DefaultAction::Allow;
        let decision = Evaluator::new(&cluster, &p, &default).evaluate(&Query {
            src: XA.into(),
            dst: [203, 0, 113, 20].into(),
            protocol: Protocol::Udp,
            port: 53,
        });
        let rule = RuleRef {
            namespace: "x".into(),
            policy: "out".into(),
            direction: Direction::Egress,
            index: 1,
        };
        assert_eq!(decision.egress, Side::Allowed(vec![rule.clone()]));
        assert_eq!(rule.to_string(), "x/out egress[1]");
        assert_eq!(decision.ingress, Side::NotAPod);
    }

    #[test]
    fn policy_types_default_as_the_api_server_defaults_them() {
        // An empty policyTypes is not given: Ingress (and Egress only with egress rules).
        let empty_types = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, policyTypes: []}\n",
        );
        assert!(!allowed(&empty_types, DefaultAction::Allow, XB, XA, 80));
        assert!(allowed(&empty_types, DefaultAction::Allow, XA, WORLD, 80));
        // An empty egress list is no egress rule: egress stays open.
        let empty_egress = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: []}\n",
        );
        assert!(allowed(&empty_egress, DefaultAction::Allow, XA, WORLD, 80));
        assert!(!allowed(&empty_egress, DefaultAction::Allow, YA, XA, 80));
        // One egress rule makes it Ingress and Egress.
        let one_egress = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: [{ports: [{port: 53, protocol: UDP}]}]}\n",
        );
        assert!(!allowed(&one_egress, DefaultAction::Allow, XA, WORLD, 80));
        assert!(!allowed(&one_egress, DefaultAction::Allow, YA, XA, 80));
    }

    #[test]
    fn policies_stack_as_a_union() {
        let p = policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: one, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: two, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress: [{ports: [{port: 5432}]}]\n",
        );
        assert!(allowed(&p, DefaultAction::Allow, XA, XB, 80));
        assert!(allowed(&p, DefaultAction::Allow, XA, XB, 5432));
        assert!(!allowed(&p, DefaultAction::Allow, XB, XA, 5432));
    }
}
