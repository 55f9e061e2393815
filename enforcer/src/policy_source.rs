//! The policy an agent enforces and follows: applied at start and again whenever its files
//! change. Input that does not load, resolve or compile is reported with what is wrong and
//! where, and changes nothing: the last good policy stays enforced.
//!
//! Three kinds of source:
//! - a compiled node policy file ([`NodePolicy`]);
//! - a folder of Kubernetes NetworkPolicy files and a cluster file (namespaces, pods,
//!   nodes; `model::netpol::cluster::Cluster` as JSON) that its owner keeps current (the
//!   lab). They are compiled for this node's pods, whose interfaces the names file gives;
//! - the same inputs handed over in memory ([`ClusterInputs`], [`PolicySource::set_inputs`]):
//!   the Kubernetes agent's mirror of the API server and the endpoints it found.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use model::netpol::{
    cluster::{Cluster, Pod},
    compile::{Compiled, Compiler, Input},
    evaluate::DefaultAction,
    load,
    policy::Policy,
};
use tracing::{info, warn};

use crate::{
    datapath::{
        Pins,
        attach::ifindex_of,
        writer::{Changes, Desired, PinnedWriter},
    },
    error::{Error, Result, chain},
    names::Names,
    policy_file::NodePolicy,
    watch::FileWatch,
};

/// A namespace label choosing the default of its pods that no policy selects: `allow`
/// (Kubernetes) or `deny` (zero trust).
pub const DEFAULT_LABEL: &str = "palisade.io/default";

/// Where the policy comes from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A compiled node policy file.
    NodeFile(PathBuf),
    /// NetworkPolicy files and the cluster they apply to.
    NetworkPolicies(NetworkPolicyConfig),
    /// NetworkPolicies and the cluster handed over in memory by the agent's owner.
    Pushed(CompileConfig),
}

/// How NetworkPolicies are compiled for this node, wherever they come from.
#[derive(Clone, Debug)]
pub struct CompileConfig {
    /// This node's name in the cluster.
    pub node: String,
    /// For pods no policy selects, unless their namespace's [`DEFAULT_LABEL`] says.
    pub default: DefaultAction,
    /// Where identities are kept across restarts (None: in memory only).
    pub identities: Option<PathBuf>,
}

/// What a pushed source compiles: the policies, the cluster, and this node's pods by the
/// ifindex of their interface.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterInputs {
    pub policies: Vec<Policy>,
    pub cluster: Cluster,
    /// `namespace/pod` -> ifindex of its host-side interface.
    pub interfaces: BTreeMap<String, u32>,
}

#[derive(Clone, Debug)]
pub struct NetworkPolicyConfig {
    /// The folder of NetworkPolicy files (`*.yaml`, `*.yml`, `*.json`).
    pub dir: PathBuf,
    /// The cluster file (JSON).
    pub cluster: PathBuf,
    /// The names file: which interface is which pod.
    pub names: PathBuf,
    pub compile: CompileConfig,
}

pub struct PolicySource {
    writer: PinnedWriter,
    kind: Kind,
    watches: Vec<FileWatch>,
}

enum Kind {
    NodeFile(PathBuf),
    NetworkPolicies(Box<NetworkPolicyState>),
}

/// Where a NetworkPolicy source's inputs come from.
enum Inputs {
    Files(NetworkPolicyConfig),
    Pushed(ClusterInputs),
}

/// What a NetworkPolicy source keeps between reloads.
struct NetworkPolicyState {
    config: CompileConfig,
    inputs: Inputs,
    compiler: Compiler,
    /// Rule id -> `namespace/policy direction[index]`, of the last good compilation.
    rules: BTreeMap<u32, String>,
    /// The policies and cluster last applied.
    last: Option<(Vec<Policy>, Cluster)>,
}

impl PolicySource {
    /// Become the policy maps' only writer (see [`PinnedWriter::open`]) and watch the
    /// source's files.
    pub fn open(pins: &Pins, config: SourceConfig) -> Result<Self> {
        let writer = PinnedWriter::open(pins)?;
        let (kind, watches) = match config {
            SourceConfig::NodeFile(path) => {
                let watch = FileWatch::new(&path)?;
                (Kind::NodeFile(path), vec![watch])
            }
            SourceConfig::NetworkPolicies(config) => {
                let watches = vec![
                    FileWatch::dir(&config.dir)?,
                    FileWatch::new(&config.cluster)?,
                    FileWatch::new(&config.names)?,
                ];
                let compile = config.compile.clone();
                (network_policies(compile, Inputs::Files(config))?, watches)
            }
            SourceConfig::Pushed(compile) => (
                network_policies(compile, Inputs::Pushed(ClusterInputs::default()))?,
                Vec::new(),
            ),
        };
        Ok(Self {
            writer,
            kind,
            watches,
        })
    }

    /// Replace what a pushed source compiles; [`PolicySource::reload`] enforces it. A
    /// source that reads files ignores this (and says so).
    pub fn set_inputs(&mut self, inputs: ClusterInputs) {
        match &mut self.kind {
            Kind::NetworkPolicies(state) => match &mut state.inputs {
                Inputs::Pushed(current) => *current = inputs,
                Inputs::Files(_) => warn!("policy inputs pushed to a source that reads files"),
            },
            Kind::NodeFile(_) => warn!("policy inputs pushed to a node policy file source"),
        }
    }

    /// Resolve when one of the source's files changed; never for a pushed source.
    pub async fn changed(&mut self) -> Result<()> {
        if self.watches.is_empty() {
            return std::future::pending().await;
        }
        let mut waits: Vec<_> = self
            .watches
            .iter_mut()
            .map(|w| Box::pin(w.changed()))
            .collect();
        std::future::poll_fn(|cx| {
            for wait in &mut waits {
                if let std::task::Poll::Ready(r) = wait.as_mut().poll(cx) {
                    return std::task::Poll::Ready(r);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Rule id -> where it comes from, for naming flow records.
    pub fn rule_names(&self) -> BTreeMap<u32, String> {
        match &self.kind {
            Kind::NodeFile(_) => BTreeMap::new(),
            Kind::NetworkPolicies(state) => state.rules.clone(),
        }
    }

    /// Enforce what the source says now; report the outcome either way.
    pub fn reload(&mut self) -> Reload {
        let started = Instant::now();
        // What the source says; nothing is written before all of it is checked.
        let prepared = match &mut self.kind {
            Kind::NodeFile(path) => NodePolicy::load(path)
                .and_then(|policy| policy.resolve(ifindex_of))
                .map(|desired| Prepared {
                    steps: vec![desired],
                    compiled: None,
                    inputs: None,
                }),
            Kind::NetworkPolicies(state) => match &state.inputs {
                Inputs::Files(files) => read_inputs(files).and_then(|inputs| {
                    prepare(
                        &state.config,
                        &mut state.compiler,
                        &inputs,
                        state.last.as_ref(),
                    )
                }),
                Inputs::Pushed(inputs) => prepare(
                    &state.config,
                    &mut state.compiler,
                    inputs,
                    state.last.as_ref(),
                ),
            },
        };
        let Prepared {
            steps,
            compiled,
            inputs,
        } = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                warn!(
                    error = %chain(&e),
                    "policy not applied; the last good policy stays enforced"
                );
                return Reload::Refused;
            }
        };
        let compiled_at = started.elapsed();
        let applied = steps
            .iter()
            .try_fold(Changes::default(), |mut total, desired| {
                total.add(self.writer.apply(desired)?);
                Ok::<_, Error>(total)
            });
        let changes = match applied {
            Ok(changes) => changes,
            Err(e) => {
                // Each endpoint's swap is atomic, but the update as a whole stopped part
                // way: some endpoints enforce the new rules, some the old. Retried.
                warn!(
                    error = %chain(&e),
                    "policy update failed while writing the maps; retrying"
                );
                return Reload::Failed;
            }
        };
        if let (Kind::NetworkPolicies(state), Some(compiled)) = (&mut self.kind, compiled) {
            state.last = inputs;
            state.rules = compiled
                .rules
                .iter()
                .map(|(id, r)| (*id, r.to_string()))
                .collect();
            if let Some(path) = &state.config.identities
                && state.compiler.identities.take_unsaved()
                && let Err(e) = state.compiler.identities.save(path)
            {
                // Enforced all the same; a restart may renumber what is not saved.
                warn!(error = %e, "identities not saved");
            }
        }
        let ms = |d: std::time::Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        info!(
            endpoints = changes.endpoints,
            writes = changes.writes,
            deletes = changes.deletes,
            ms = ms(started.elapsed()),
            compile_ms = ms(compiled_at),
            "policy applied"
        );
        Reload::Applied(changes)
    }
}

/// How a [`PolicySource::reload`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    Applied(Changes),
    /// The source is wrong (reported); the last good policy stays enforced.
    Refused,
    /// Writing the maps failed part way (reported); try again.
    Failed,
}

/// What a reload writes: one or more [`Desired`] states in order, the compilation behind
/// the last, and the inputs it came from.
struct Prepared {
    steps: Vec<Desired>,
    compiled: Option<Compiled>,
    inputs: Option<(Vec<Policy>, Cluster)>,
}

/// A NetworkPolicy source's state before its first reload.
fn network_policies(config: CompileConfig, inputs: Inputs) -> Result<Kind> {
    let identities = match &config.identities {
        Some(path) => model::identity::IdentityAllocator::load(path)
            .map_err(|e| Error::Policy(e.to_string()))?,
        None => Default::default(),
    };
    Ok(Kind::NetworkPolicies(Box::new(NetworkPolicyState {
        config,
        inputs,
        compiler: Compiler::new(identities),
        rules: BTreeMap::new(),
        last: None,
    })))
}

/// Load and check the policy files, the cluster file and the names file; this node's pods
/// by the ifindex of the interface the names file gives them.
fn read_inputs(config: &NetworkPolicyConfig) -> Result<ClusterInputs> {
    let started = Instant::now();
    let loaded = load::load_dir(&config.dir).map_err(|e| Error::Policy(e.to_string()))?;
    let policies = loaded
        .iter()
        .map(|l| {
            Policy::from_k8s(&l.policy).map_err(|e| {
                Error::Policy(format!(
                    "{}: document {}: {e}",
                    l.file.display(),
                    l.document
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let cluster = load_cluster(&config.cluster)?;
    let names = Names::load(&config.names)?;
    let mut interfaces = BTreeMap::new();
    for (iface, pod) in &names.interfaces {
        // A pod without an interface here (not attached yet, or gone) gets its rules when
        // it has one.
        match ifindex_of(iface) {
            Ok(ifindex) => {
                interfaces.insert(pod.clone(), ifindex);
            }
            Err(e) => warn!(pod, error = %e, "pod interface not found; its rules wait"),
        }
    }
    tracing::debug!(
        read_ms = started.elapsed().as_secs_f64() * 1000.0,
        "policy inputs read"
    );
    Ok(ClusterInputs {
        policies,
        cluster,
        interfaces,
    })
}

/// Check and compile the NetworkPolicies for this node's pods. When both the policies and
/// the cluster changed since `last`, the labels move first, under the old policies, and the
/// policies change after: a connection is never judged by a mix of an old identity's old
/// rules and a new identity's new ones (see the writer's docs).
fn prepare(
    config: &CompileConfig,
    compiler: &mut Compiler,
    inputs: &ClusterInputs,
    last: Option<&(Vec<Policy>, Cluster)>,
) -> Result<Prepared> {
    let started = Instant::now();
    let ClusterInputs {
        policies,
        cluster,
        interfaces,
    } = inputs;
    let mut steps = Vec::new();
    if let Some((old_policies, old_cluster)) = last
        && old_policies != policies
        && old_cluster != cluster
    {
        steps.push(desired_for(config, compiler, old_policies, cluster, interfaces)?.0);
    }
    let (desired, compiled) = desired_for(config, compiler, policies, cluster, interfaces)?;
    steps.push(desired);
    tracing::debug!(
        compile_ms = started.elapsed().as_secs_f64() * 1000.0,
        pods = cluster.pods.len(),
        policies = policies.len(),
        steps = steps.len(),
        "policy compiled"
    );
    Ok(Prepared {
        steps,
        compiled: Some(compiled),
        inputs: Some((policies.clone(), cluster.clone())),
    })
}

/// `policies` compiled over `cluster` for this node's pods, by interface.
fn desired_for(
    config: &CompileConfig,
    compiler: &mut Compiler,
    policies: &[Policy],
    cluster: &Cluster,
    interfaces: &BTreeMap<String, u32>,
) -> Result<(Desired, Compiled)> {
    let default = |pod: &Pod| pod_default(cluster, pod, config.default);
    let compiled = compiler
        .compile(&Input {
            cluster,
            policies,
            node: &config.node,
            default: &default,
        })
        .map_err(|e| Error::Policy(e.to_string()))?;
    let mut desired = Desired {
        ipcache: compiled.ipcache.clone(),
        cidrs: compiled.cidrs.clone(),
        services: compiled.services.clone(),
        ..Desired::default()
    };
    for ((namespace, name), rules) in &compiled.endpoints {
        // A pod without an interface here gets its rules when it has one.
        if let Some(&ifindex) = interfaces.get(&format!("{namespace}/{name}")) {
            desired.endpoints.insert(ifindex, rules.clone());
        }
    }
    Ok((desired, compiled))
}

/// A cluster file (`model::netpol::cluster::Cluster` as JSON).
pub(crate) fn load_cluster(path: &Path) -> Result<Cluster> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The pod's default: its namespace's [`DEFAULT_LABEL`], else the agent's.
fn pod_default(cluster: &Cluster, pod: &Pod, fallback: DefaultAction) -> DefaultAction {
    match cluster
        .namespaces
        .get(&pod.namespace)
        .and_then(|labels| labels.get(DEFAULT_LABEL))
        .map(String::as_str)
    {
        Some("deny") => DefaultAction::Deny,
        Some("allow") => DefaultAction::Allow,
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: a}}}]}]\n";

    fn config(dir: &Path) -> NetworkPolicyConfig {
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/web.yaml"), POLICY).unwrap();
        std::fs::write(dir.join("names.json"), "{}").unwrap();
        NetworkPolicyConfig {
            dir: dir.join("policies"),
            cluster: dir.join("cluster.json"),
            names: dir.join("names.json"),
            compile: CompileConfig {
                node: "n".into(),
                default: DefaultAction::Allow,
                identities: None,
            },
        }
    }

    fn prepare_files(
        config: &NetworkPolicyConfig,
        compiler: &mut Compiler,
        last: Option<&(Vec<Policy>, Cluster)>,
    ) -> Result<Prepared> {
        prepare(&config.compile, compiler, &read_inputs(config)?, last)
    }

    fn write_cluster(config: &NetworkPolicyConfig, role: &str) -> Cluster {
        let cluster: Cluster = serde_json::from_value(serde_json::json!({
            "pods": [{"namespace": "t", "name": "c", "labels": {"role": role}, "node": "n",
                      "ips": ["10.244.0.9"]}],
        }))
        .unwrap();
        std::fs::write(&config.cluster, serde_json::to_string(&cluster).unwrap()).unwrap();
        cluster
    }

    #[test]
    fn labels_move_under_the_old_policies_before_the_policies_change() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut compiler = Compiler::default();
        let before = write_cluster(&config, "a");
        let first = prepare_files(&config, &mut compiler, None).unwrap();
        assert_eq!(first.steps.len(), 1);
        let last = first.inputs.unwrap();
        assert_eq!(last.1, before);

        // Only the cluster changed: one step.
        write_cluster(&config, "b");
        let labels_only = prepare_files(&config, &mut compiler, Some(&last)).unwrap();
        assert_eq!(labels_only.steps.len(), 1);

        // Both changed: the old policies over the new cluster first, then the new ones.
        std::fs::write(
            config.dir.join("web.yaml"),
            POLICY.replace("role: a", "role: b"),
        )
        .unwrap();
        let both = prepare_files(&config, &mut compiler, Some(&last)).unwrap();
        assert_eq!(both.steps.len(), 2);
        // The address of c moved to its new identity in both steps.
        let c: std::net::IpAddr = "10.244.0.9".parse().unwrap();
        assert_eq!(both.steps[0].ipcache[&c], both.steps[1].ipcache[&c]);
        assert_ne!(both.steps[0].ipcache[&c], first.steps[0].ipcache[&c]);
    }
}
