//! What the learner observed, in the forms reviews use: the evidence behind a rule of a
//! proposed policy, and connections aggregated per (client, server, protocol, port) for
//! replaying against a policy set.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Direction, Protocol};

/// The label on policies Palisade proposed.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "palisade");
/// The annotation naming the workload a proposed policy is for (`namespace/Kind/name`).
pub const WORKLOAD_ANNOTATION: &str = "palisade.io/workload";
/// The annotation holding the evidence of a policy's rules: a JSON array of
/// [`RuleEvidence`] (the API server accepts any string; an object's annotations may total
/// 256 KiB).
pub const EVIDENCE_ANNOTATION: &str = "palisade.io/evidence";

/// A baseline entry behind a rule of a proposed policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleEvidence {
    /// `ns/name` of the proposed policy.
    pub policy: String,
    pub direction: Direction,
    /// Index of the rule in `spec.ingress` or `spec.egress`.
    pub rule: usize,
    /// The peer as observed: `workload ns/Kind/name`, `service ns/name`, `external IP (name)`,
    /// `the pod's node`.
    pub peer: String,
    /// The DNS name an external peer was looked up by, when the agent saw the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    pub protocol: Protocol,
    pub port: Option<u16>,
    pub connections: u64,
    pub bytes: u64,
    pub source_pods: Vec<String>,
    /// More client pods were seen than are kept.
    #[serde(default)]
    pub source_pods_saturated: bool,
    /// RFC 3339.
    pub first_seen: String,
    pub last_seen: String,
    pub days: u32,
    /// In [0, 1), see `learner::evidence::Evidence::confidence`.
    pub confidence: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widened: Option<Widened>,
}

/// An external address widened into a CIDR by a stated rule, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Widened {
    pub cidr: IpNet,
    pub reason: String,
}

/// One side of a recorded connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Endpoint {
    /// Pods of a workload (`namespace/Kind/name`).
    Workload { workload: String },
    /// An address outside the cluster, with the name it was looked up by.
    External {
        ip: IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns_name: Option<String>,
    },
    /// A node (the pods' own: always allowed).
    Node { ip: IpAddr },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Workload { workload } => f.write_str(workload),
            Self::External {
                ip,
                dns_name: Some(name),
            } => write!(f, "{ip} ({name})"),
            Self::External { ip, dns_name: None } => write!(f, "{ip}"),
            Self::Node { ip } => write!(f, "node {ip}"),
        }
    }
}

/// Connections of one kind, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObservedFlow {
    pub client: Endpoint,
    pub server: Endpoint,
    pub protocol: Protocol,
    /// The server's port; `None` for protocols without ports.
    pub port: Option<u16>,
    pub connections: u64,
    /// RFC 3339.
    pub first_seen: String,
    pub last_seen: String,
}
