//! The evidence behind a rule of a proposed policy: what the learner observed, in the form
//! reviews, exports and reports show it.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Direction, Protocol};

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
