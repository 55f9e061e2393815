//! The reference evaluator: is a connection allowed, and by which policy and rule? It reads
//! the policies themselves ([`Policy`], the objects in typed form), never the compiled
//! rules, so the compiler and the kernel can be held against it.
//!
//! Kubernetes' semantics: a connection from A to B needs A's egress and B's ingress to
//! allow it. A pod's direction is isolated once any policy selecting the pod has that
//! direction in its `policyTypes`; then the union of those policies' rules is what is
//! allowed. A pod no policy selects (in a direction) gets its default: allow (Kubernetes)
//! or deny (zero trust). Traffic between a pod and its own node is always allowed.
//! `ipBlock` peers match pod addresses too.

use std::net::IpAddr;

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
            Self::NotAPod | Self::OwnNode | Self::Allowed(_) => true,
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
    policies: &'a [Policy],
    default: &'a dyn Fn(&Pod) -> DefaultAction,
}

impl<'a> Evaluator<'a> {
    /// `default` gives each pod's default action (per namespace, workload or cluster).
    pub fn new(
        cluster: &'a Cluster,
        policies: &'a [Policy],
        default: &'a dyn Fn(&Pod) -> DefaultAction,
    ) -> Self {
        Self {
            cluster,
            policies,
            default,
        }
    }

    pub fn evaluate(&self, q: &Query) -> Decision {
        let src = self.cluster.pod_at(q.src);
        let dst = self.cluster.pod_at(q.dst);
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
        self.policies.iter().filter(move |p| {
            p.name.namespace == pod.namespace
                && p.rules(direction).is_some()
                && p.pod_selector.matches(&pod.labels)
        })
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
        match selector {
            PolicyPeer::Block { net, except } => {
                let addr = peer_addr.to_canonical();
                net.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
            }
            PolicyPeer::Pods { pods, namespaces } => {
                let Some(peer) = peer else {
                    return false;
                };
                let namespace_ok = match namespaces {
                    None => peer.namespace == policy.name.namespace,
                    Some(s) => s.matches(&self.cluster.namespace_labels(&peer.namespace)),
                };
                namespace_ok && pods.as_ref().is_none_or(|s| s.matches(&peer.labels))
            }
        }
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
