//! The cluster as the API server says it is, mirrored on the node: one watcher and store per
//! resource, and snapshots of it in Palisade's own types.
//!
//! [`ClusterWatch::start`] spawns a task per resource (Pods of all namespaces, Namespaces,
//! Nodes, Services, NetworkPolicies, and ReplicaSets and Jobs metadata-only, for owner
//! resolution). Each runs kube-runtime's `watcher` with the default backoff: a broken watch
//! resumes from its last resource version, an expired one (410 Gone) lists again, and the
//! relisted objects replace the store's in one step. Objects are stripped (see
//! [`crate::cluster`]) before they are stored.
//!
//! Each task applies events to its store itself, rather than through `.reflect()`, so that
//! it can tell whether an event changed what the agent reads (kubelets rewrite pod status
//! every few seconds; almost none of those writes matter) and only then wake
//! [`ClusterWatch::changed`].
//!
//! NetworkPolicies are converted ([`Policy::from_k8s`]) as each version arrives, and the
//! last version that converted is remembered: a bad edit is reported in
//! [`Snapshot::refused`] and the last good version stays in force; a policy that never
//! converted is absent.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Namespace, Node, Pod, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher::{self, Event},
    },
};
use model::{
    Mode,
    netpol::{
        cluster::Cluster,
        policy::{Policy, PolicyName},
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    cluster,
    error::{Error, Result},
    modes::{self, Declared, InvalidMode, ModeDefaults, ModeSource, Scope},
    owners::{self, OwnerStores},
};

/// How long [`ClusterWatch::changed`] waits after the first change for more to arrive, so
/// that a rollout's burst of pod events costs one recompilation, not one per pod.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(100);

/// What the agent needs of the cluster at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Namespaces, pods (not host-network, not finished), nodes and Services, sorted.
    pub cluster: Cluster,
    /// The NetworkPolicies in force, by namespace and name: each one's last version that
    /// converted.
    pub policies: Vec<Policy>,
    /// NetworkPolicies whose current version does not convert.
    pub refused: Vec<Refused>,
    /// This node's pods with their own network namespace, by namespace and name.
    pub local: Vec<LocalPod>,
    /// `palisade.io/mode` values that are not modes, on this node's pods and their
    /// namespaces (each was ignored).
    pub invalid_modes: Vec<InvalidMode>,
    /// Each namespace's mode (its own `palisade.io/mode`, else the default): the mode of a
    /// pod the CNI reports before the watch has seen it.
    pub namespace_modes: BTreeMap<String, Mode>,
}

/// A NetworkPolicy whose current version is not enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub policy: PolicyName,
    /// Why [`Policy::from_k8s`] refused it.
    pub reason: String,
    /// Whether an earlier version is enforced in its place.
    pub last_good_kept: bool,
}

/// A pod on this node that has (or will have) its own interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// IPv4 and IPv6, from `status.podIPs`; empty until the CNI gave it addresses.
    pub ips: Vec<IpAddr>,
    pub mode: Mode,
    pub mode_source: ModeSource,
}

/// The mirrored cluster; dropping it stops the watchers.
pub struct ClusterWatch {
    node: String,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    services: Store<Service>,
    network_policies: Store<NetworkPolicy>,
    owners: OwnerStores,
    policies: Arc<Mutex<PolicyMemory>>,
    changes: watch::Receiver<u64>,
    /// When the change seen by a [`Self::changed`] that did not return it (it was dropped)
    /// has settled: a dropped call's settle time keeps running, so a caller that polls
    /// `changed` in a busy `select!` is not starved by restarting it.
    pending: Option<tokio::time::Instant>,
    settle: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl ClusterWatch {
    /// Start watching through `client`, for the agent of node `node`. Must be called
    /// within a tokio runtime (it spawns one task per resource).
    pub fn start(client: Client, node: &str) -> Self {
        let (sender, changes) = watch::channel(0u64);
        let sender = Arc::new(sender);
        let policies = Arc::new(Mutex::new(PolicyMemory::default()));
        let mut tasks = Vec::new();
        let mut spawn = |task| tasks.push(task);

        let pods = mirror::<Pod>(&client, &sender, &mut spawn, |_, _| {});
        let namespaces = mirror::<Namespace>(&client, &sender, &mut spawn, |_, _| {});
        let nodes = mirror::<Node>(&client, &sender, &mut spawn, |_, _| {});
        let services = mirror::<Service>(&client, &sender, &mut spawn, |_, _| {});
        let memory = Arc::clone(&policies);
        let network_policies =
            mirror::<NetworkPolicy>(&client, &sender, &mut spawn, move |event, store| {
                memory
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .observe(event, store);
            });
        let owners = OwnerStores {
            replica_sets: mirror(&client, &sender, &mut spawn, |_, _| {}),
            jobs: mirror(&client, &sender, &mut spawn, |_, _| {}),
        };
        info!(node, "watching the API server");
        Self {
            node: node.to_owned(),
            pods,
            namespaces,
            nodes,
            services,
            network_policies,
            owners,
            policies,
            changes,
            pending: None,
            settle: DEFAULT_SETTLE,
            tasks,
        }
    }

    /// Change how long [`Self::changed`] lets a burst of changes settle.
    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    /// Resolve once every resource has been listed in full. What changed until now is in
    /// the next snapshot, so [`Self::changed`] only reports what comes after.
    pub async fn synced(&mut self) -> Result<()> {
        async fn ready<K>(resource: &'static str, store: &Store<K>) -> Result<()>
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            store
                .wait_until_ready()
                .await
                .map_err(|source| Error::WatchStopped { resource, source })
        }
        ready(Pod::RESOURCE, &self.pods).await?;
        ready(Namespace::RESOURCE, &self.namespaces).await?;
        ready(Node::RESOURCE, &self.nodes).await?;
        ready(Service::RESOURCE, &self.services).await?;
        ready(NetworkPolicy::RESOURCE, &self.network_policies).await?;
        ready(
            PartialObjectMeta::<ReplicaSet>::RESOURCE,
            &self.owners.replica_sets,
        )
        .await?;
        ready(PartialObjectMeta::<Job>::RESOURCE, &self.owners.jobs).await?;
        self.changes.borrow_and_update();
        self.pending = None;
        info!(
            pods = self.pods.len(),
            namespaces = self.namespaces.len(),
            nodes = self.nodes.len(),
            services = self.services.len(),
            network_policies = self.network_policies.len(),
            "cluster mirrored"
        );
        Ok(())
    }

    /// Resolve when something the agent reads changed since the last call (or since
    /// [`Self::synced`]); changes arriving within the settle time are folded into one.
    /// Take the snapshot after this returns: it holds every change reported.
    ///
    /// Cancel-safe (for `select!`): a change seen by a call dropped while settling is
    /// reported by the next call.
    pub async fn changed(&mut self) -> Result<()> {
        let settled = match self.pending {
            Some(settled) => settled,
            None => {
                self.changes
                    .changed()
                    .await
                    .map_err(|_| Error::WatchesEnded)?;
                *self
                    .pending
                    .insert(tokio::time::Instant::now() + self.settle)
            }
        };
        tokio::time::sleep_until(settled).await;
        self.changes.borrow_and_update();
        self.pending = None;
        Ok(())
    }

    /// The cluster as mirrored now, with modes from `defaults` where no object says one.
    pub fn snapshot(&self, defaults: &ModeDefaults) -> Snapshot {
        let namespaces = self.namespaces.state();
        let declared_by_namespace: HashMap<&str, Declared> = namespaces
            .iter()
            .map(|ns| {
                let name = ns.metadata.name.as_deref().unwrap_or_default();
                (name, modes::declared(&ns.metadata, Scope::Namespace))
            })
            .collect();
        let mut cluster = Cluster {
            namespaces: namespaces
                .iter()
                .map(|ns| {
                    (
                        ns.metadata.name.clone().unwrap_or_default(),
                        ns.metadata.labels.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            nodes: self
                .nodes
                .state()
                .iter()
                .map(|n| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        cluster::node_addresses(n),
                    )
                })
                .collect(),
            services: self
                .services
                .state()
                .iter()
                .filter_map(|s| cluster::model_service(s))
                .collect(),
            pods: Vec::new(),
        };
        cluster
            .services
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut local = Vec::new();
        let mut invalid_modes = BTreeSet::new();
        let no_declaration = Declared::default();
        for pod in self.pods.state() {
            if cluster::is_host_network(&pod) || cluster::is_finished(&pod) {
                continue;
            }
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let workload = owners::pod_workload(&pod.metadata, |kind, name| {
                self.owners.owner_of(namespace, kind, name)
            });
            let model_pod = cluster::model_pod(&pod, owners::model_workload(&workload));
            if model_pod.node == self.node {
                let choice = modes::resolve(
                    &modes::declared(&pod.metadata, Scope::Pod),
                    declared_by_namespace
                        .get(namespace)
                        .unwrap_or(&no_declaration),
                    defaults,
                );
                invalid_modes.extend(choice.invalid);
                local.push(LocalPod {
                    namespace: model_pod.namespace.clone(),
                    name: model_pod.name.clone(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                    ips: model_pod.ips.clone(),
                    mode: choice.mode,
                    mode_source: choice.source,
                });
            }
            cluster.pods.push(model_pod);
        }
        cluster
            .pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        local.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let (policies, refused) = self
            .policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .in_force();
        let namespace_modes = declared_by_namespace
            .iter()
            .map(|(name, declared)| {
                let mode = modes::resolve(&no_declaration, declared, defaults).mode;
                ((*name).to_owned(), mode)
            })
            .collect();
        Snapshot {
            cluster,
            policies,
            refused,
            local,
            invalid_modes: invalid_modes.into_iter().collect(),
            namespace_modes,
        }
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Spawn (through `spawn`) the watcher task of resource `K` and return its store.
/// `observe` sees every event after the store applied it.
fn mirror<K: Mirrored>(
    client: &Client,
    changes: &Arc<watch::Sender<u64>>,
    spawn: &mut impl FnMut(JoinHandle<()>),
    observe: impl FnMut(&Event<K>, &Store<K>) + Send + 'static,
) -> Store<K> {
    let writer = Writer::<K>::default();
    let store = writer.as_reader();
    let stream = watcher(Api::<K>::all(client.clone()), watcher_config())
        .modify(K::strip)
        .default_backoff();
    let task = run_mirror(stream, writer, observe, Arc::clone(changes))
        .instrument(info_span!("watch", resource = K::RESOURCE));
    spawn(tokio::spawn(task));
    store
}

fn watcher<K: Mirrored>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<Event<K>>> + Send {
    watcher::watcher(api, config)
}

/// Lists may come from the API server's watch cache (`resourceVersion=0`): every node's
/// agent lists every pod when it starts, which etcd should not have to serve. Unpaged: the
/// client leaves `resourceVersion=0` out of a list that sets a page limit, and the cache
/// serves a list whole anyway.
pub fn watcher_config() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    config
}

async fn run_mirror<K: Mirrored>(
    stream: impl futures::Stream<Item = watcher::Result<Event<K>>>,
    mut writer: Writer<K>,
    mut observe: impl FnMut(&Event<K>, &Store<K>),
    changes: Arc<watch::Sender<u64>>,
) {
    let store = writer.as_reader();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                debug!("resource version expired; listing again");
                continue;
            }
            Err(e) => {
                // The watcher retries by itself, after the backoff.
                warn!(error = %e, "watch failed; retrying");
                continue;
            }
        };
        let changed = apply(&mut writer, &store, &event);
        observe(&event, &store);
        if changed {
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Apply `event` to the store; say whether what the store holds changed.
fn apply<K: Mirrored>(writer: &mut Writer<K>, store: &Store<K>, event: &Event<K>) -> bool {
    let changed = match event {
        Event::Apply(object) => store
            .get(&ObjectRef::from_obj(object))
            .is_none_or(|old| !old.same(object)),
        Event::Delete(_) => true,
        // Buffered by the writer until the list is complete.
        Event::Init | Event::InitApply(_) => false,
        Event::InitDone => {
            // A relist usually finds what the store already holds.
            let before: HashMap<ObjectRef<K>, Arc<K>> = store
                .state()
                .into_iter()
                .map(|o| (ObjectRef::from_obj(&*o), o))
                .collect();
            writer.apply_watcher_event(event);
            let after = store.state();
            debug!(objects = after.len(), "listed");
            return after.len() != before.len()
                || after.iter().any(|o| {
                    before
                        .get(&ObjectRef::from_obj(&**o))
                        .is_none_or(|old| !old.same(o))
                });
        }
    };
    writer.apply_watcher_event(event);
    changed
}

/// A resource the watcher mirrors: how it is stripped and compared.
trait Mirrored:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// For logs and errors.
    const RESOURCE: &'static str;
    fn strip(&mut self);
    /// Equal as far as the agent reads (both are stripped).
    fn same(&self, other: &Self) -> bool;
}

macro_rules! mirrored {
    ($kind:ty, $name:literal, $strip:path) => {
        impl Mirrored for $kind {
            const RESOURCE: &'static str = $name;
            fn strip(&mut self) {
                $strip(self)
            }
            fn same(&self, other: &Self) -> bool {
                self == other
            }
        }
    };
}

mirrored!(Pod, "pods", cluster::strip_pod);
mirrored!(Namespace, "namespaces", cluster::strip_namespace);
mirrored!(Node, "nodes", cluster::strip_node);
mirrored!(Service, "services", cluster::strip_service);
mirrored!(
    NetworkPolicy,
    "networkpolicies",
    cluster::strip_network_policy
);

impl Mirrored for PartialObjectMeta<ReplicaSet> {
    const RESOURCE: &'static str = "replicasets";
    fn strip(&mut self) {
        cluster::strip_partial(self);
    }
    fn same(&self, other: &Self) -> bool {
        self.metadata == other.metadata
    }
}

impl Mirrored for PartialObjectMeta<Job> {
    const RESOURCE: &'static str = "jobs";
    fn strip(&mut self) {
        cluster::strip_partial(self);
    }
    fn same(&self, other: &Self) -> bool {
        self.metadata == other.metadata
    }
}

/// Each NetworkPolicy's last good conversion and, when its current version does not
/// convert, why.
#[derive(Debug, Default)]
struct PolicyMemory {
    entries: BTreeMap<PolicyName, PolicyEntry>,
}

#[derive(Debug, Default)]
struct PolicyEntry {
    last_good: Option<Policy>,
    refused: Option<String>,
}

impl PolicyMemory {
    fn observe(&mut self, event: &Event<NetworkPolicy>, store: &Store<NetworkPolicy>) {
        match event {
            Event::Apply(object) | Event::InitApply(object) => {
                let name = policy_name(object);
                let entry = self.entries.entry(name.clone()).or_default();
                match Policy::from_k8s(object) {
                    Ok(policy) => {
                        if entry.refused.take().is_some() {
                            info!(policy = %name, "NetworkPolicy converts again");
                        }
                        entry.last_good = Some(policy);
                    }
                    Err(reason) => {
                        warn!(
                            policy = %name,
                            reason,
                            last_good_kept = entry.last_good.is_some(),
                            "NetworkPolicy refused; its last good version (if any) stays"
                        );
                        entry.refused = Some(reason);
                    }
                }
            }
            Event::Delete(object) => {
                self.entries.remove(&policy_name(object));
            }
            // The store now holds exactly what was listed: forget policies deleted while
            // the watch was down.
            Event::InitDone => {
                let listed: BTreeSet<PolicyName> =
                    store.state().iter().map(|p| policy_name(p)).collect();
                self.entries.retain(|name, _| listed.contains(name));
            }
            Event::Init => {}
        }
    }

    fn in_force(&self) -> (Vec<Policy>, Vec<Refused>) {
        let policies = self
            .entries
            .values()
            .filter_map(|e| e.last_good.clone())
            .collect();
        let refused = self
            .entries
            .iter()
            .filter_map(|(name, e)| {
                Some(Refused {
                    policy: name.clone(),
                    reason: e.refused.clone()?,
                    last_good_kept: e.last_good.is_some(),
                })
            })
            .collect();
        (policies, refused)
    }
}

fn policy_name(policy: &NetworkPolicy) -> PolicyName {
    PolicyName {
        namespace: policy.metadata.namespace.clone().unwrap_or_default(),
        name: policy.metadata.name.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store;

    use super::*;

    fn policy(name: &str, selector: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"]}
        }))
        .unwrap()
    }

    fn good(name: &str) -> NetworkPolicy {
        policy(name, serde_json::json!({"matchLabels": {"app": "api"}}))
    }

    fn bad(name: &str) -> NetworkPolicy {
        policy(
            name,
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}),
        )
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_version_and_a_new_bad_one_is_absent() {
        let (store, mut writer) = store::<NetworkPolicy>();
        let mut memory = PolicyMemory::default();
        let mut apply = |memory: &mut PolicyMemory, event: Event<NetworkPolicy>| {
            writer.apply_watcher_event(&event);
            memory.observe(&event, &store);
        };
        apply(&mut memory, Event::Apply(good("a")));
        apply(&mut memory, Event::Apply(bad("a")));
        apply(&mut memory, Event::Apply(bad("b")));
        let (policies, refused) = memory.in_force();
        assert_eq!(policies, [Policy::from_k8s(&good("a")).unwrap()]);
        assert_eq!(refused.len(), 2);
        assert_eq!(refused[0].policy.to_string(), "shop/a");
        assert!(refused[0].last_good_kept);
        assert!(refused[0].reason.contains("Near"), "{}", refused[0].reason);
        assert_eq!(refused[1].policy.to_string(), "shop/b");
        assert!(!refused[1].last_good_kept);

        // Fixed: in force, nothing refused.
        apply(&mut memory, Event::Apply(good("b")));
        let (policies, refused) = memory.in_force();
        assert_eq!(policies.len(), 2);
        assert_eq!(refused.len(), 1);

        // A relist that no longer has `a` forgets it, refusal and last good version.
        apply(&mut memory, Event::Init);
        apply(&mut memory, Event::InitApply(good("b")));
        apply(&mut memory, Event::InitDone);
        let (policies, refused) = memory.in_force();
        assert_eq!(policies, [Policy::from_k8s(&good("b")).unwrap()]);
        assert!(refused.is_empty());

        apply(&mut memory, Event::Delete(good("b")));
        assert_eq!(memory.in_force(), (vec![], vec![]));
    }
}
