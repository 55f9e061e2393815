//! Workloads and the labels that select them.
//!
//! A policy proposed for a workload selects its pods by labels, so the learner needs, per
//! workload, a label set that selects all its pods and no other pod of its namespace. It
//! takes the smallest such set of stable labels: noise labels (`pod-template-hash`,
//! `controller-revision-hash`, ... see [`model::identity::NOISE_LABELS`]) never appear, and
//! among sets of one size the well-known keys (`app.kubernetes.io/name`, `app`, ...) win,
//! so proposals read like hand-written policy.

use std::collections::{BTreeMap, BTreeSet};

use model::identity::NOISE_LABELS;

/// A workload: `namespace/Kind/name` (a bare pod is its own workload, kind `Pod`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

impl WorkloadRef {
    /// Parse `namespace/Kind/name` (the form flow records carry).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '/');
        let (namespace, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
        if namespace.is_empty() || kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// A controller reference (`metadata.ownerReferences[]` with `controller: true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// The workload owning a pod: the controller chain followed up to the object people
/// deploy — a ReplicaSet's Deployment, a Job's CronJob — or the pod itself when nothing
/// controls it.
///
/// `owner_of(kind, name)` returns the controller of an object of the pod's namespace when
/// known (a watcher's cache of ReplicaSets and Jobs). When it is not (the ReplicaSet was
/// not cached yet), the name Kubernetes gives says it: a Deployment's ReplicaSet is
/// `<deployment>-<pod-template-hash>`, and a CronJob's Job is `<cronjob>-<minutes>`.
pub fn owning_workload(
    namespace: &str,
    pod: &str,
    pod_labels: &BTreeMap<String, String>,
    controller: Option<&Owner>,
    owner_of: impl Fn(&str, &str) -> Option<Owner>,
) -> WorkloadRef {
    let workload = |kind: &str, name: &str| WorkloadRef {
        namespace: namespace.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    };
    let Some(owner) = controller else {
        return workload("Pod", pod);
    };
    match owner.kind.as_str() {
        "ReplicaSet" => match owner_of("ReplicaSet", &owner.name) {
            Some(up) if up.kind == "Deployment" => workload("Deployment", &up.name),
            Some(_) => workload("ReplicaSet", &owner.name),
            None => match pod_labels
                .get("pod-template-hash")
                .and_then(|hash| owner.name.strip_suffix(&format!("-{hash}")))
            {
                Some(deployment) => workload("Deployment", deployment),
                None => workload("ReplicaSet", &owner.name),
            },
        },
        "Job" => match owner_of("Job", &owner.name) {
            Some(up) if up.kind == "CronJob" => workload("CronJob", &up.name),
            Some(_) => workload("Job", &owner.name),
            None => match owner.name.rsplit_once('-') {
                Some((cronjob, minutes))
                    if minutes.len() >= 8 && minutes.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    workload("CronJob", cronjob)
                }
                _ => workload("Job", &owner.name),
            },
        },
        kind => workload(kind, &owner.name),
    }
}

/// A pod as the learner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub workload: WorkloadRef,
}

/// Label keys preferred in proposed selectors, best first.
pub const PREFERRED_KEYS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app",
    "component",
    "tier",
    "role",
];

/// At most this many candidate labels are searched exhaustively (by increasing size).
const MAX_CANDIDATES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("workload {workload} has no pods")]
    NoPods { workload: WorkloadRef },
    #[error(
        "no stable labels tell workload {workload} apart from pod {other} of the same \
         namespace (labels its pods share: {shared:?})"
    )]
    Indistinguishable {
        workload: WorkloadRef,
        other: String,
        shared: BTreeMap<String, String>,
    },
}

/// The smallest set of stable labels selecting exactly `workload`'s pods among `pods`.
pub fn selector_for(
    workload: &WorkloadRef,
    pods: &[PodInfo],
) -> Result<BTreeMap<String, String>, SelectorError> {
    let (mine, others): (Vec<&PodInfo>, Vec<&PodInfo>) = pods
        .iter()
        .filter(|p| p.namespace == workload.namespace)
        .partition(|p| p.workload == *workload);
    let Some(first) = mine.first() else {
        return Err(SelectorError::NoPods {
            workload: workload.clone(),
        });
    };
    // Labels every pod of the workload carries with the same value, noise left out.
    let shared: BTreeMap<String, String> = first
        .labels
        .iter()
        .filter(|(k, _)| !NOISE_LABELS.contains(&k.as_str()))
        .filter(|(k, v)| mine.iter().all(|p| p.labels.get(*k) == Some(v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut candidates: Vec<(&String, &String)> = shared.iter().collect();
    candidates.sort_by_key(|(k, _)| (preference(k), (*k).clone()));
    candidates.truncate(MAX_CANDIDATES);
    let selects_only_mine = |chosen: &[usize]| {
        !others.iter().any(|p| {
            chosen
                .iter()
                .all(|&i| p.labels.get(candidates[i].0) == Some(candidates[i].1))
        })
    };
    for size in 1..=candidates.len() {
        if let Some(chosen) = first_subset(candidates.len(), size, &selects_only_mine) {
            return Ok(chosen
                .iter()
                .map(|&i| (candidates[i].0.clone(), candidates[i].1.clone()))
                .collect());
        }
    }
    // Even every shared label selects another pod too.
    let other = others
        .iter()
        .find(|p| shared.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .map_or_else(String::new, |p| format!("{}/{}", p.namespace, p.name));
    Err(SelectorError::Indistinguishable {
        workload: workload.clone(),
        other,
        shared,
    })
}

/// The first `size`-subset of `0..n` (in lexicographic order, so preferred keys first)
/// that `accept` takes.
fn first_subset(n: usize, size: usize, accept: &impl Fn(&[usize]) -> bool) -> Option<Vec<usize>> {
    let mut chosen: Vec<usize> = (0..size).collect();
    loop {
        if accept(&chosen) {
            return Some(chosen);
        }
        // Next combination.
        let mut i = size;
        loop {
            if i == 0 {
                return None;
            }
            i -= 1;
            if chosen[i] < n - size + i {
                break;
            }
        }
        chosen[i] += 1;
        for j in i + 1..size {
            chosen[j] = chosen[j - 1] + 1;
        }
    }
}

fn preference(key: &str) -> usize {
    PREFERRED_KEYS
        .iter()
        .position(|k| *k == key)
        .unwrap_or(PREFERRED_KEYS.len())
}

/// The distinct workloads of `pods`.
pub fn workloads(pods: &[PodInfo]) -> BTreeSet<WorkloadRef> {
    pods.iter().map(|p| p.workload.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, workload: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            workload: WorkloadRef::parse(workload).unwrap(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn noise_never_selects_and_the_preferred_key_wins() {
        let pods = vec![
            pod(
                "shop",
                "api-5f6b9-a",
                "shop/Deployment/api",
                &[
                    ("app", "api"),
                    ("team", "core"),
                    ("pod-template-hash", "5f6b9"),
                ],
            ),
            pod(
                "shop",
                "api-5f6b9-b",
                "shop/Deployment/api",
                &[
                    ("app", "api"),
                    ("team", "core"),
                    ("pod-template-hash", "5f6b9"),
                ],
            ),
            pod(
                "shop",
                "web-77c8d-a",
                "shop/Deployment/web",
                &[
                    ("app", "web"),
                    ("team", "core"),
                    ("pod-template-hash", "77c8d"),
                ],
            ),
        ];
        let api = WorkloadRef::parse("shop/Deployment/api").unwrap();
        assert_eq!(
            selector_for(&api, &pods).unwrap(),
            labels(&[("app", "api")])
        );
    }

    #[test]
    fn two_labels_when_one_is_not_enough() {
        let pods = vec![
            pod(
                "shop",
                "db-0",
                "shop/StatefulSet/db",
                &[("app", "store"), ("component", "db")],
            ),
            pod(
                "shop",
                "cache-0",
                "shop/StatefulSet/cache",
                &[("app", "store"), ("component", "cache")],
            ),
            pod(
                "shop",
                "db-probe",
                "shop/Pod/db-probe",
                &[("component", "db")],
            ),
        ];
        let db = WorkloadRef::parse("shop/StatefulSet/db").unwrap();
        assert_eq!(
            selector_for(&db, &pods).unwrap(),
            labels(&[("app", "store"), ("component", "db")])
        );
    }

    #[test]
    fn pods_of_other_namespaces_do_not_count() {
        let pods = vec![
            pod("a", "x-1", "a/Deployment/x", &[("app", "x")]),
            pod("b", "x-1", "b/Deployment/x", &[("app", "x")]),
        ];
        let x = WorkloadRef::parse("a/Deployment/x").unwrap();
        assert_eq!(selector_for(&x, &pods).unwrap(), labels(&[("app", "x")]));
    }

    #[test]
    fn a_workload_no_label_tells_apart_is_an_error_naming_the_other_pod() {
        let pods = vec![
            pod("shop", "a-1", "shop/Deployment/a", &[("app", "same")]),
            pod("shop", "b-1", "shop/Deployment/b", &[("app", "same")]),
        ];
        let a = WorkloadRef::parse("shop/Deployment/a").unwrap();
        let err = selector_for(&a, &pods).unwrap_err();
        assert!(err.to_string().contains("shop/b-1"), "{err}");
        let none = WorkloadRef::parse("shop/Deployment/none").unwrap();
        assert!(matches!(
            selector_for(&none, &pods),
            Err(SelectorError::NoPods { .. })
        ));
    }

    #[test]
    fn pods_fold_into_the_object_people_deploy() {
        let owner = |kind: &str, name: &str| Owner {
            kind: kind.into(),
            name: name.into(),
        };
        let hash = labels(&[("app", "api"), ("pod-template-hash", "5f6b9")]);
        let none = |_: &str, _: &str| None;
        let fold = |pod: &str,
                    l: &BTreeMap<String, String>,
                    c: Option<&Owner>,
                    known: &dyn Fn(&str, &str) -> Option<Owner>| {
            owning_workload("shop", pod, l, c, known).to_string()
        };
        let cache = |kind: &str, name: &str| match (kind, name) {
            ("ReplicaSet", "api-5f6b9") => Some(owner("Deployment", "api")),
            ("Job", "report-29012345") => Some(owner("CronJob", "report")),
            _ => None,
        };
        let rs = owner("ReplicaSet", "api-5f6b9");
        assert_eq!(
            fold("api-5f6b9-x", &hash, Some(&rs), &cache),
            "shop/Deployment/api"
        );
        assert_eq!(
            fold("api-5f6b9-x", &hash, Some(&rs), &none),
            "shop/Deployment/api",
            "from the hash"
        );
        assert_eq!(
            fold(
                "rs-x",
                &BTreeMap::new(),
                Some(&owner("ReplicaSet", "rs")),
                &none
            ),
            "shop/ReplicaSet/rs"
        );
        let job = owner("Job", "report-29012345");
        assert_eq!(
            fold("report-29012345-q", &BTreeMap::new(), Some(&job), &cache),
            "shop/CronJob/report"
        );
        assert_eq!(
            fold("report-29012345-q", &BTreeMap::new(), Some(&job), &none),
            "shop/CronJob/report"
        );
        assert_eq!(
            fold(
                "migrate-q",
                &BTreeMap::new(),
                Some(&owner("Job", "migrate")),
                &none
            ),
            "shop/Job/migrate"
        );
        assert_eq!(
            fold(
                "db-0",
                &BTreeMap::new(),
                Some(&owner("StatefulSet", "db")),
                &none
            ),
            "shop/StatefulSet/db"
        );
        assert_eq!(
            fold(
                "exp-x",
                &BTreeMap::new(),
                Some(&owner("DaemonSet", "exp")),
                &none
            ),
            "shop/DaemonSet/exp"
        );
        assert_eq!(
            fold("debug", &BTreeMap::new(), None, &none),
            "shop/Pod/debug"
        );
    }

    #[test]
    fn workload_refs_parse_and_print() {
        let w = WorkloadRef::parse("shop/CronJob/report").unwrap();
        assert_eq!(w.to_string(), "shop/CronJob/report");
        assert_eq!(WorkloadRef::parse("shop/report"), None);
        assert_eq!(WorkloadRef::parse("//x"), None);
    }
}
