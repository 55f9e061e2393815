//! A NetworkPolicy in typed form: the same object, field for field, with selectors parsed,
//! CIDRs parsed, defaults applied (protocol TCP, `policyTypes`), so the evaluator and the
//! compiler read one unambiguous thing. Nothing is compiled or merged here.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    cluster::Pod,
    selector::{Labels, Selector},
};
use crate::{
    Direction, Protocol,
    rules::{PortRange, in_block},
};

/// A policy's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: PolicyName,
    /// Pods of the policy's namespace it applies to.
    pub pod_selector: Selector,
    /// `Some` when the policy isolates the pods' ingress (policyTypes has Ingress), with its
    /// rules (possibly none: deny all ingress).
    pub ingress: Option<Vec<PolicyRule>>,
    /// The same for egress.
    pub egress: Option<Vec<PolicyRule>>,
}

/// One `ingress` or `egress` entry: a connection matches when it matches one of the peers
/// (`None`: every peer) and one of the ports (`None`: every port and protocol).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub peers: Option<Vec<PolicyPeer>>,
    pub ports: Option<Vec<PolicyPort>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyPeer {
    /// Pods chosen by labels: `pods` (None: every pod) in namespaces chosen by `namespaces`
    /// (None: only the policy's own namespace).
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    /// Addresses in `net` and in none of `except`.
    Block { net: IpNet, except: Vec<IpNet> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: PortSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// Every port of the protocol.
    All,
    /// A port or a `port`..`endPort` range.
    Numbers(PortRange),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

impl PolicyPeer {
    /// Does this peer of a policy in `policy_namespace` select `pod`, whose namespace has
    /// `namespace_labels`? (An `ipBlock` selects addresses, not pods: see [`Self::covers`].)
    pub fn selects_pod(
        &self,
        policy_namespace: &str,
        pod: &Pod,
        namespace_labels: &Labels,
    ) -> bool {
        match self {
            Self::Block { .. } => false,
            Self::Pods { pods, namespaces } => {
                let namespace_ok = match namespaces {
                    None => pod.namespace == policy_namespace,
                    Some(s) => s.matches(namespace_labels),
                };
                namespace_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
        }
    }

    /// Is `addr` inside this `ipBlock` (and outside its excepts)? Never for selectors.
    pub fn covers(&self, addr: IpAddr) -> bool {
        match self {
            Self::Block { net, except } => in_block(net, except, addr),
            Self::Pods { .. } => false,
        }
    }
}

impl Policy {
    /// The typed form of a policy the API server would accept (see `validate`); what it
    /// would refuse is an error here too, never a guess.
    pub fn from_k8s(policy: &NetworkPolicy) -> Result<Self, String> {
        let name = PolicyName {
            namespace: policy
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: policy
                .metadata
                .name
                .clone()
                .ok_or("metadata.name is missing")?,
        };
        let spec = policy.spec.clone().unwrap_or_default();
        let pod_selector = match &spec.pod_selector {
            Some(s) => Selector::from_k8s(s).map_err(|e| format!("spec.podSelector: {e}"))?,
            None => Selector::everything(),
        };
        // policyTypes, when not given (missing or empty, as the API server's defaulting
        // reads it): Ingress always, Egress when there is at least one egress rule.
        let types: Vec<&str> = match spec.policy_types.as_deref() {
            Some(types) if !types.is_empty() => types.iter().map(String::as_str).collect(),
            _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => {
                vec!["Ingress", "Egress"]
            }
            _ => vec!["Ingress"],
        };
        let ingress_rules = spec.ingress.iter().flatten().map(|r| (&r.from, &r.ports));
        let egress_rules = spec.egress.iter().flatten().map(|r| (&r.to, &r.ports));
        let ingress = types
            .contains(&"Ingress")
            .then(|| rules("spec.ingress", ingress_rules))
            .transpose()?;
        let egress = types
            .contains(&"Egress")
            .then(|| rules("spec.egress", egress_rules))
            .transpose()?;
        Ok(Self {
            name,
            pod_selector,
            ingress,
            egress,
        })
    }

    /// The rules of one direction, when the policy isolates it.
    pub fn rules(&self, direction: Direction) -> Option<&[PolicyRule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Every selector of the policy (its own and its peers').
    pub fn selectors(&self) -> impl Iterator<Item = &Selector> {
        let peers = [&self.ingress, &self.egress]
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|r| r.peers.iter().flatten())
            .flat_map(|p| match p {
                PolicyPeer::Pods { pods, namespaces } => [pods.as_ref(), namespaces.as_ref()],
                PolicyPeer::Block { .. } => [None, None],
            })
            .flatten();
        std::iter::once(&self.pod_selector).chain(peers)
    }

    /// Every CIDR the policy names (blocks and their excepts).
    pub fn cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        [&self.ingress, &self.egress]
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|r| r.peers.iter().flatten())
            .flat_map(|p| match p {
                PolicyPeer::Block { net, except } => std::iter::once(*net)
                    .chain(except.iter().copied())
                    .collect(),
                PolicyPeer::Pods { .. } => Vec::new(),
            })
    }
}

/// The rules of one direction: `(peers, ports)` of each, in order.
fn rules<'a>(
    field: &str,
    list: impl Iterator<
        Item = (
            &'a Option<Vec<NetworkPolicyPeer>>,
            &'a Option<Vec<NetworkPolicyPort>>,
        ),
    >,
) -> Result<Vec<PolicyRule>, String> {
    list.enumerate()
        .map(|(i, (peers, ports))| {
            rule(peers.as_deref(), ports.as_deref()).map_err(|e| format!("{field}[{i}].{e}"))
        })
        .collect()
}

fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<PolicyRule, String> {
    // An empty list means the same as a missing one: everything.
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| peer(p).map_err(|e| format!("peers[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| port(p).map_err(|e| format!("ports[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(PolicyRule { peers, ports })
}

fn peer(p: &NetworkPolicyPeer) -> Result<PolicyPeer, String> {
    if let Some(block) = &p.ip_block {
        let net: IpNet = block
            .cidr
            .parse()
            .map_err(|_| format!("ipBlock.cidr {:?} is not a CIDR", block.cidr))?;
        let except = block
            .except
            .iter()
            .flatten()
            .map(|e| {
                e.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| format!("ipBlock.except {e:?} is not a CIDR"))
            })
            .collect::<Result<_, _>>()?;
        return Ok(PolicyPeer::Block {
            net: net.trunc(),
            except,
        });
    }
    let selector = |s: &Option<_>| s.as_ref().map(Selector::from_k8s).transpose();
    let pods = selector(&p.pod_selector)?;
    let namespaces = selector(&p.namespace_selector)?;
    if pods.is_none() && namespaces.is_none() {
        return Err("a peer must set podSelector, namespaceSelector or ipBlock".into());
    }
    Ok(PolicyPeer::Pods { pods, namespaces })
}

fn port(p: &NetworkPolicyPort) -> Result<PolicyPort, String> {
    let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => return Err(format!("unsupported protocol {other:?}")),
    };
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0);
    let port = match (&p.port, p.end_port) {
        (None, None) => PortSpec::All,
        (None, Some(_)) => return Err("endPort needs a port".into()),
        (Some(IntOrString::String(name)), None) => PortSpec::Named(name.clone()),
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err("endPort needs a numeric port".into());
        }
        (Some(IntOrString::Int(first)), end) => {
            let first = number(*first).ok_or(format!("port {first} is out of range"))?;
            let last = match end {
                Some(e) => number(e).ok_or(format!("endPort {e} is out of range"))?,
                None => first,
            };
            if last < first {
                return Err(format!("endPort {last} is below port {first}"));
            }
            PortSpec::Numbers(PortRange { first, last })
        }
    };
    Ok(PolicyPort { protocol, port })
}
