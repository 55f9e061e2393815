//! The policy an agent enforces and follows: applied at start and again whenever its files
//! change. Input that does not load, resolve or compile is reported with what is wrong and
//! where, and changes nothing: the last good policy stays enforced.
//!
//! Two kinds of source:
//! - a compiled node policy file ([`NodePolicy`]);
//! - a folder of Kubernetes NetworkPolicy files and a cluster file (namespaces, pods,
//!   nodes; `model::netpol::cluster::Cluster` as JSON) that its owner keeps current (the
//!   lab; the API server in Kubernetes). They are compiled for this node's pods, whose
//!   interfaces the names file gives.

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
    error::{Error, Result},
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
}

#[derive(Clone, Debug)]
pub struct NetworkPolicyConfig {
    /// The folder of NetworkPolicy files (`*.yaml`, `*.yml`, `*.json`).
    pub dir: PathBuf,
    /// The cluster file (JSON).
    pub cluster: PathBuf,
    /// The names file: which interface is which pod.
    pub names: PathBuf,
    /// This node's name in the cluster file.
    pub node: String,
    /// For pods no policy selects, unless their namespace's [`DEFAULT_LABEL`] says.
    pub default: DefaultAction,
    /// Where identities are kept across restarts (None: in memory only).
    pub identities: Option<PathBuf>,
}

pub struct PolicySource {
    writer: PinnedWriter,
    kind: Kind,
    watches: Vec<FileWatch>,
}

enum Kind {
    NodeFile(PathBuf),
    NetworkPolicies {
        config: NetworkPolicyConfig,
        compiler: Box<Compiler>,
        /// Rule id -> `namespace/policy direction[index]`, of the last good compilation.
        rules: BTreeMap<u32, String>,
    },
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
                let identities = match &config.identities {
                    Some(path) => model::identity::IdentityAllocator::load(path)
                        .map_err(|e| Error::Policy(e.to_string()))?,
                    None => Default::default(),
                };
                let watches = vec![
                    FileWatch::dir(&config.dir)?,
                    FileWatch::new(&config.cluster)?,
                    FileWatch::new(&config.names)?,
                ];
                let kind = Kind::NetworkPolicies {
                    config,
                    compiler: Box::new(Compiler::new(identities)),
                    rules: BTreeMap::new(),
                };
                (kind, watches)
            }
        };
        Ok(Self {
            writer,
            kind,
            watches,
        })
    }

    /// Resolve when one of the source's files changed.
    pub async fn changed(&mut self) -> Result<()> {
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
            Kind::NetworkPolicies { rules, .. } => rules.clone(),
        }
    }

    /// Enforce what the source says now; report the outcome either way.
    pub fn reload(&mut self) -> Reload {
        let started = Instant::now();
        // What the source says; nothing is written before all of it is checked.
        let prepared = match &mut self.kind {
            Kind::NodeFile(path) => NodePolicy::load(path)
                .and_then(|policy| policy.resolve(ifindex_of))
                .map(|desired| (desired, None)),
            Kind::NetworkPolicies {
                config, compiler, ..
            } => compile_network_policies(config, compiler)
                .map(|(desired, compiled)| (desired, Some(compiled))),
        };
        let (desired, compiled) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                warn!(
                    error = %error_chain(&e),
                    "policy not applied; the last good policy stays enforced"
                );
                return Reload::Refused;
            }
        };
        let compiled_at = started.elapsed();
        let changes = match self.writer.apply(&desired) {
            Ok(changes) => changes,
            Err(e) => {
                // Each endpoint's swap is atomic, but the update as a whole stopped part
                // way: some endpoints enforce the new rules, some the old. Retried.
                warn!(
                    error = %error_chain(&e),
                    "policy update failed while writing the maps; retrying"
                );
                return Reload::Failed;
            }
        };
        if let (
            Kind::NetworkPolicies {
                config,
                compiler,
                rules,
            },
            Some(compiled),
        ) = (&mut self.kind, compiled)
        {
            *rules = compiled
                .rules
                .iter()
                .map(|(id, r)| (*id, r.to_string()))
                .collect();
            if let Some(path) = &config.identities
                && compiler.identities.take_unsaved()
                && let Err(e) = compiler.identities.save(path)
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

/// Load, check and compile the NetworkPolicies for this node's pods.
fn compile_network_policies(
    config: &NetworkPolicyConfig,
    compiler: &mut Compiler,
) -> Result<(Desired, Compiled)> {
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
    let loaded_at = started.elapsed();
    let default = |pod: &Pod| pod_default(&cluster, pod, config.default);
    let compiled = compiler
        .compile(&Input {
            cluster: &cluster,
            policies: &policies,
            node: &config.node,
            default: &default,
        })
        .map_err(|e| Error::Policy(e.to_string()))?;
    tracing::debug!(
        read_ms = loaded_at.as_secs_f64() * 1000.0,
        compile_ms = (started.elapsed() - loaded_at).as_secs_f64() * 1000.0,
        pods = cluster.pods.len(),
        policies = policies.len(),
        "policy compiled"
    );
    let interfaces: BTreeMap<&str, &str> = names
        .interfaces
        .iter()
        .map(|(iface, pod)| (pod.as_str(), iface.as_str()))
        .collect();
    let mut desired = Desired {
        ipcache: compiled.ipcache.clone(),
        cidrs: compiled.cidrs.clone(),
        services: compiled.services.clone(),
        ..Desired::default()
    };
    for ((namespace, name), rules) in &compiled.endpoints {
        let pod = format!("{namespace}/{name}");
        // A pod without an interface here (not attached yet, or gone) gets its rules when
        // it has one.
        let Some(iface) = interfaces.get(pod.as_str()) else {
            continue;
        };
        match ifindex_of(iface) {
            Ok(ifindex) => {
                desired.endpoints.insert(ifindex, rules.clone());
            }
            Err(e) => warn!(pod, error = %e, "pod interface not found; its rules wait"),
        }
    }
    Ok((desired, compiled))
}

fn load_cluster(path: &Path) -> Result<Cluster> {
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

/// An error and its causes on one line (`a: b: c`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
