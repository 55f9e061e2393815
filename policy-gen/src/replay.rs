//! Replay: recorded connections evaluated offline against a policy set, as the kernel
//! would judge them, to see before enforcing what a policy would break.
//!
//! The connections are aggregated (client, server, protocol, server port, count, first and
//! last seen), at the workload level: pods come and go, workloads stay. Each is evaluated by
//! the reference evaluator (`model::netpol::evaluate`) against the cluster's current pods,
//! one representative pod per workload (labels and named ports).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use model::{
    Direction,
    netpol::{
        cluster::{Cluster, Pod},
        evaluate::{Decision, DefaultAction, Evaluator, Query, Side},
        policy::Policy,
    },
};
use serde::{Deserialize, Serialize};

use crate::set::PolicySet;

pub use model::evidence::{Endpoint, ObservedFlow};

/// A rule of a policy: `namespace/name`, direction and index in `spec.ingress`/`egress`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleId {
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        write!(f, "{} {d}[{}]", self.policy, self.index)
    }
}

/// What the policy set does to one recorded flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum Outcome {
    /// Allowed, by these rules (none: the sides are not isolated, or one is the node).
    Allowed { rules: Vec<RuleId> },
    /// Denied: `direction` is the side that denies (the client's egress or the server's
    /// ingress); `policies` isolate it (none: the zero-trust default).
    Denied {
        direction: Direction,
        policies: Vec<String>,
    },
    /// A workload of the flow has no pods in the cluster: nothing to evaluate against.
    Unknown { workload: String },
}

impl Outcome {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }

    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Denied { .. })
    }
}

/// Whether a workload's pods are isolated (selected by a policy) per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub ingress: bool,
    pub egress: bool,
}

/// Per workload (as client for egress, as server for ingress).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadReplay {
    pub isolation: Isolation,
    /// Connections it took part in, allowed, denied.
    pub connections: u64,
    pub allowed: u64,
    pub denied: u64,
}

impl WorkloadReplay {
    /// Share of its observed connections the policy set allows, in [0, 1] (1 with none).
    pub fn coverage(&self) -> f64 {
        if self.connections == 0 {
            1.0
        } else {
            self.allowed as f64 / self.connections as f64
        }
    }
}

/// A replay's results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    /// Every flow with its outcome, in order.
    pub flows: Vec<(ObservedFlow, Outcome)>,
    pub workloads: BTreeMap<String, WorkloadReplay>,
    /// Rules no replayed flow used (over-permissive, or for traffic not seen in the period).
    pub unused_rules: Vec<RuleId>,
    /// External destinations first seen in the last window (see `ReplayOptions`).
    pub new_externals: Vec<ObservedFlow>,
}

impl Replay {
    pub fn connections(&self) -> u64 {
        self.flows.iter().map(|(f, _)| f.connections).sum()
    }

    pub fn denied(&self) -> impl Iterator<Item = &(ObservedFlow, Outcome)> {
        self.flows.iter().filter(|(_, o)| o.is_denied())
    }

    /// Share of all observed connections allowed.
    pub fn coverage(&self) -> f64 {
        let total = self.connections();
        let allowed: u64 = self
            .flows
            .iter()
            .filter(|(_, o)| o.is_allowed())
            .map(|(f, _)| f.connections)
            .sum();
        if total == 0 {
            1.0
        } else {
            allowed as f64 / total as f64
        }
    }
}

/// How to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// What pods that no policy selects get (Kubernetes: allow; zero trust: deny).
    pub default: DefaultAction,
    /// External destinations first seen at or after this RFC 3339 time are listed as new.
    pub new_since: Option<String>,
}

/// A policy file the evaluator cannot take (it passed the API server's checks, so this is a
/// construct the model does not know).
#[derive(Debug, thiserror::Error)]
#[error("{policy}: {message}")]
pub struct Error {
    pub policy: String,
    pub message: String,
}

/// Replay `flows` against `set` in `cluster` (its current pods: one per workload stands for
/// the workload, with its labels and named ports).
pub fn replay(
    set: &PolicySet,
    cluster: &Cluster,
    flows: &[ObservedFlow],
    options: &ReplayOptions,
) -> Result<Replay, Error> {
    let policies: Vec<Policy> = set
        .iter()
        .map(|p| {
            Policy::from_k8s(&p.policy).map_err(|message| Error {
                policy: p.id(),
                message,
            })
        })
        .collect::<Result<_, _>>()?;
    let default = options.default;
    let default_of = move |_: &Pod| default;
    let evaluator = Evaluator::new(cluster, &policies, &default_of);
    // One pod per workload stands for it; a bare pod is its own (`namespace/Pod/name`).
    let mut representatives: HashMap<String, &Pod> = HashMap::new();
    for pod in &cluster.pods {
        let workload = pod.workload_name();
        representatives.entry(workload).or_insert(pod);
    }
    let address = |e: &Endpoint| -> Result<IpAddr, String> {
        match e {
            Endpoint::Workload { workload } => representatives
                .get(workload.as_str())
                .and_then(|p| p.ips.first().copied())
                .ok_or_else(|| workload.clone()),
            Endpoint::External { ip, .. } | Endpoint::Node { ip } => Ok(*ip),
        }
    };
    let mut out = Replay::default();
    let mut used: HashSet<RuleId> = HashSet::new();
    for flow in flows {
        let outcome = match (address(&flow.client), address(&flow.server)) {
            (Err(workload), _) | (_, Err(workload)) => Outcome::Unknown { workload },
            (Ok(src), Ok(dst)) => {
                let decision = evaluator.evaluate(&Query {
                    src,
                    dst,
                    protocol: flow.protocol,
                    port: flow.port.unwrap_or(0),
                });
                outcome(&decision)
            }
        };
        if let Outcome::Allowed { rules } = &outcome {
            used.extend(rules.iter().cloned());
        }
        for (endpoint, _) in [
            (&flow.client, Direction::Egress),
            (&flow.server, Direction::Ingress),
        ] {
            let Endpoint::Workload { workload } = endpoint else {
                continue;
            };
            let entry = out
                .workloads
                .entry(workload.clone())
                .or_insert_with(|| WorkloadReplay {
                    isolation: representatives
                        .get(workload.as_str())
                        .map(|pod| Isolation {
                            ingress: evaluator
                                .selecting(pod, Direction::Ingress)
                                .next()
                                .is_some(),
                            egress: evaluator.selecting(pod, Direction::Egress).next().is_some(),
                        })
                        .unwrap_or_default(),
                    ..WorkloadReplay::default()
                });
            entry.connections += flow.connections;
            match outcome {
                Outcome::Allowed { .. } => entry.allowed += flow.connections,
                Outcome::Denied { .. } => entry.denied += flow.connections,
                Outcome::Unknown { .. } => {}
            }
        }
        if let (Endpoint::External { .. }, Some(since)) = (&flow.server, &options.new_since)
            && flow.first_seen >= *since
        {
            out.new_externals.push(flow.clone());
        }
        out.flows.push((flow.clone(), outcome));
    }
    for policy in &policies {
        for direction in [Direction::Ingress, Direction::Egress] {
            for index in 0..policy.rules(direction).map_or(0, <[_]>::len) {
                let id = RuleId {
                    policy: policy.name.to_string(),
                    direction,
                    index,
                };
                if !used.contains(&id) {
                    out.unused_rules.push(id);
                }
            }
        }
    }
    Ok(out)
}

fn outcome(decision: &Decision) -> Outcome {
    let rules = |side: &Side| match side {
        Side::Allowed(rules) => rules
            .iter()
            .map(|r| RuleId {
                policy: format!("{}/{}", r.namespace, r.policy),
                direction: r.direction,
                index: r.index,
            })
            .collect(),
        _ => Vec::new(),
    };
    let denied = |side: &Side| match side {
        Side::Denied(policies) => Some(policies.iter().map(ToString::to_string).collect()),
        _ => None,
    };
    if let Some(policies) = denied(&decision.egress) {
        return Outcome::Denied {
            direction: Direction::Egress,
            policies,
        };
    }
    if let Some(policies) = denied(&decision.ingress) {
        return Outcome::Denied {
            direction: Direction::Ingress,
            policies,
        };
    }
    let mut all: Vec<RuleId> = rules(&decision.egress);
    all.extend(rules(&decision.ingress));
    Outcome::Allowed { rules: all }
}
