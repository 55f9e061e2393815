//! Two policy sets compared in terms of the recorded flows: what becomes allowed, what
//! becomes denied, which workloads move from default-allow to isolated (or back).

use model::Direction;
use serde::{Deserialize, Serialize};

use crate::replay::{ObservedFlow, Outcome, Replay};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// Denied before, allowed after.
    pub newly_allowed: Vec<(ObservedFlow, Outcome)>,
    /// Allowed before, denied after (what the change would break).
    pub newly_denied: Vec<(ObservedFlow, Outcome)>,
    pub isolation_changes: Vec<IsolationChange>,
}

/// A workload whose pods become isolated in a direction (selected by a policy: only what
/// rules allow passes), or stop being.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationChange {
    pub workload: String,
    pub direction: Direction,
    /// `true`: default-allow -> isolated; `false`: isolated -> default-allow.
    pub isolated: bool,
}

/// `before` and `after` replayed the same flows (in the same order).
pub fn diff(before: &Replay, after: &Replay) -> Diff {
    let mut d = Diff::default();
    for ((flow, was), (_, now)) in before.flows.iter().zip(&after.flows) {
        if was.is_denied() && now.is_allowed() {
            d.newly_allowed.push((flow.clone(), now.clone()));
        } else if was.is_allowed() && now.is_denied() {
            d.newly_denied.push((flow.clone(), now.clone()));
        }
    }
    let workloads = before
        .workloads
        .keys()
        .chain(after.workloads.keys())
        .collect::<std::collections::BTreeSet<_>>();
    for w in workloads {
        let was = before
            .workloads
            .get(w)
            .map(|r| r.isolation)
            .unwrap_or_default();
        let now = after
            .workloads
            .get(w)
            .map(|r| r.isolation)
            .unwrap_or_default();
        for (direction, a, b) in [
            (Direction::Ingress, was.ingress, now.ingress),
            (Direction::Egress, was.egress, now.egress),
        ] {
            if a != b {
                d.isolation_changes.push(IsolationChange {
                    workload: w.clone(),
                    direction,
                    isolated: b,
                });
            }
        }
    }
    d
}
