//! Which workload owns a pod: `namespace/Kind/name` of the object people deploy
//! (Deployment through its ReplicaSet, CronJob through its Job, StatefulSet, DaemonSet),
//! or the pod itself when nothing controls it.
//!
//! The rule itself is the learner's ([`learner::workload::owning_workload`]): the agent
//! names workloads exactly as the learner folds them. This module feeds it from the API
//! server: the pod's controller reference, and the controllers of ReplicaSets and Jobs from
//! metadata-only watches (a few hundred bytes per object). Until those stores have an
//! object (or for an object they never see), the learner's name heuristics decide
//! (`<deployment>-<pod-template-hash>`, `<cronjob>-<scheduled minutes>`).

use k8s_openapi::{
    api::{apps::v1::ReplicaSet, batch::v1::Job},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    core::PartialObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};
use learner::workload::{Owner, WorkloadRef, owning_workload};

/// The object's controller: the owner reference with `controller: true` (there is at most
/// one; other owner references only keep the object alive and say nothing of who runs it).
pub fn controller(meta: &ObjectMeta) -> Option<Owner> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
}

/// The workload owning the pod with metadata `pod`; `owner_of(kind, name)` is the
/// controller of an object of the pod's namespace, when known.
pub fn pod_workload(
    pod: &ObjectMeta,
    owner_of: impl Fn(&str, &str) -> Option<Owner>,
) -> WorkloadRef {
    owning_workload(
        pod.namespace.as_deref().unwrap_or_default(),
        pod.name.as_deref().unwrap_or_default(),
        pod.labels.as_ref().unwrap_or(&Default::default()),
        controller(pod).as_ref(),
        owner_of,
    )
}

/// The workload as `model::netpol::cluster::Pod::workload` spells it: `None` for a bare
/// pod (the model names those itself).
pub fn model_workload(workload: &WorkloadRef) -> Option<String> {
    (workload.kind != "Pod").then(|| workload.to_string())
}

/// The ReplicaSets and Jobs the watcher mirrors (metadata only), as the `owner_of` lookup
/// of [`pod_workload`].
#[derive(Clone)]
pub struct OwnerStores {
    pub replica_sets: Store<PartialObjectMeta<ReplicaSet>>,
    pub jobs: Store<PartialObjectMeta<Job>>,
}

impl OwnerStores {
    /// The controller of the `kind` object `name` in `namespace`, when it is mirrored.
    pub fn owner_of(&self, namespace: &str, kind: &str, name: &str) -> Option<Owner> {
        match kind {
            "ReplicaSet" => self
                .replica_sets
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|rs| controller(&rs.metadata)),
            "Job" => self
                .jobs
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|job| controller(&job.metadata)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::runtime::{reflector::store, watcher::Event};

    use super::*;

    fn owner_ref(kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller: Some(controller),
            ..Default::default()
        }
    }

    fn meta(name: &str, labels: &[(&str, &str)], owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            owner_references: Some(owners),
            ..Default::default()
        }
    }

    fn partial<K>(meta: ObjectMeta) -> PartialObjectMeta<K> {
        PartialObjectMeta {
            types: None,
            metadata: meta,
            _phantom: Default::default(),
        }
    }

    /// Stores holding one ReplicaSet of Deployment `api` (named unlike Kubernetes would, so
    /// only the store can tell) and one Job of CronJob `report`.
    fn stores() -> OwnerStores {
        let (replica_sets, mut rs_writer) = store::<PartialObjectMeta<ReplicaSet>>();
        let (jobs, mut job_writer) = store::<PartialObjectMeta<Job>>();
        rs_writer.apply_watcher_event(&Event::Apply(partial(meta(
            "api-custom",
            &[],
            vec![owner_ref("Deployment", "api", true)],
        ))));
        job_writer.apply_watcher_event(&Event::Apply(partial(meta(
            "report-manual",
            &[],
            vec![owner_ref("CronJob", "report", true)],
        ))));
        OwnerStores { replica_sets, jobs }
    }

    fn workload_of(stores: &OwnerStores, pod: &ObjectMeta) -> String {
        pod_workload(pod, |kind, name| stores.owner_of("shop", kind, name)).to_string()
    }

    #[test]
    fn the_controller_is_the_owner_reference_marked_so() {
        let pod = meta(
            "p",
            &[],
            vec![
                owner_ref("ConfigMap", "keeper", false),
                owner_ref("StatefulSet", "db", true),
            ],
        );
        assert_eq!(
            controller(&pod),
            Some(Owner {
                kind: "StatefulSet".into(),
                name: "db".into()
            })
        );
        assert_eq!(
            controller(&meta("p", &[], vec![owner_ref("X", "y", false)])),
            None
        );
    }

    #[test]
    fn pods_fold_into_workloads_through_the_mirrored_owners() {
        let stores = stores();
        let from_store = meta(
            "api-custom-x1",
            &[("app", "api")],
            vec![owner_ref("ReplicaSet", "api-custom", true)],
        );
        assert_eq!(workload_of(&stores, &from_store), "shop/Deployment/api");
        let cron = meta(
            "report-manual-q",
            &[],
            vec![owner_ref("Job", "report-manual", true)],
        );
        assert_eq!(workload_of(&stores, &cron), "shop/CronJob/report");
        // Not mirrored (yet): the names Kubernetes gives still tell.
        let by_hash = meta(
            "web-5f6b9-x",
            &[("pod-template-hash", "5f6b9")],
            vec![owner_ref("ReplicaSet", "web-5f6b9", true)],
        );
        assert_eq!(workload_of(&stores, &by_hash), "shop/Deployment/web");
        let daemon = meta("exp-abcde", &[], vec![owner_ref("DaemonSet", "exp", true)]);
        assert_eq!(workload_of(&stores, &daemon), "shop/DaemonSet/exp");
        let bare = meta("debug", &[], vec![]);
        let workload = pod_workload(&bare, |_, _| None);
        assert_eq!(workload.to_string(), "shop/Pod/debug");
        assert_eq!(model_workload(&workload), None);
        assert_eq!(
            model_workload(&pod_workload(&daemon, |_, _| None)).as_deref(),
            Some("shop/DaemonSet/exp")
        );
    }
}
