//! What a lab remembers between commands, under `/run/palisade/lab/<lab>/`, and the lock
//! that makes concurrent commands on one lab take turns.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use model::{
    Mode,
    identity::LabelSet,
    netpol::{
        cluster::{self, Cluster, ContainerPort},
        evaluate::DefaultAction,
    },
};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{
    error::{Error, Result},
    plan::{self, GATEWAY_V4, NODE_V6, Slots, WorkloadState},
    process::Process,
    topology::{Port, ServicePort, TargetPort, Topology},
};
use crate::{
    names::{Names, PodMeta},
    paths,
};

/// Bumped when the state file changes incompatibly; an older file is treated as stale.
/// 2: the agent enforces NetworkPolicies (`default`, `namespace_modes`, each pod's `mode`).
pub const STATE_FORMAT: u32 = 2;

/// Where one lab keeps its files, and the names derived from its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub name: String,
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(name: &str) -> Result<Self> {
        plan::check_lab_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            dir: Path::new(paths::LAB_RUN_DIR).join(name),
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// Next to the folder, not in it: `down` removes the folder while holding the lock.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.with_extension("lock")
    }
    pub fn names_file(&self) -> PathBuf {
        self.dir.join("names.json")
    }
    /// The NetworkPolicy files the agent enforces, one policy per file.
    pub fn policies_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }
    /// Namespaces, pods and the node as the agent's `--cluster` reads them.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }
    /// Where the agent keeps identity numbers across its restarts.
    pub fn identities_file(&self) -> PathBuf {
        self.dir.join("identities.json")
    }
    pub fn flows_file(&self) -> PathBuf {
        self.dir.join("flows.jsonl")
    }
    pub fn agent_ready(&self) -> PathBuf {
        self.dir.join("agent.ready")
    }
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    pub fn server_ready(&self) -> PathBuf {
        self.dir.join("server.ready")
    }
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }
    pub fn node_netns(&self) -> String {
        plan::node_netns(&self.name)
    }
    /// The lab's own bpffs folder, so labs never share (or uninstall) each other's datapath.
    pub fn bpffs_root(&self) -> PathBuf {
        PathBuf::from(format!("{}-{}", paths::BPFFS_ROOT, self.name))
    }

    /// The server's command line: `palisade lab --name <lab> serve`.
    pub fn server_argv(&self, program: &Path) -> Vec<String> {
        vec![
            program.display().to_string(),
            "lab".into(),
            "--name".into(),
            self.name.clone(),
            "serve".into(),
        ]
    }

    /// Is this the command line of this lab's server (whichever binary runs it)?
    pub fn is_server(&self, argv: &[String]) -> bool {
        argv.len() == 5 && argv[1..] == self.server_argv(Path::new(""))[1..]
    }

    /// The agent's command line: it enforces the lab's NetworkPolicies against the lab's
    /// cluster file, for the pods the names file lists, with `default` for pods no policy
    /// selects.
    pub fn agent_argv(&self, program: &Path, mode: Mode, default: DefaultAction) -> Vec<String> {
        let mode = match mode {
            Mode::Learn => "learn",
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        };
        let default = match default {
            DefaultAction::Allow => "allow",
            DefaultAction::Deny => "deny",
        };
        [
            program.display().to_string(),
            "agent".into(),
            "--netns".into(),
            self.node_netns(),
            "--bpffs-root".into(),
            self.bpffs_root().display().to_string(),
            "--names".into(),
            self.names_file().display().to_string(),
            "--output".into(),
            self.flows_file().display().to_string(),
            "--ready-file".into(),
            self.agent_ready().display().to_string(),
            "--mode".into(),
            mode.into(),
            "--policy-dir".into(),
            self.policies_dir().display().to_string(),
            "--cluster".into(),
            self.cluster_file().display().to_string(),
            "--node-name".into(),
            plan::node_name(&self.name),
            "--default".into(),
            default.into(),
            "--identities".into(),
            self.identities_file().display().to_string(),
        ]
        .into()
    }

    /// Is this the command line of an agent this lab started (its ready file is the lab's)?
    pub fn is_agent(&self, argv: &[String]) -> bool {
        let ready = self.agent_ready().display().to_string();
        argv.get(1).is_some_and(|a| a == "agent")
            && argv
                .windows(2)
                .any(|w| w[0] == "--ready-file" && w[1] == ready)
    }
}

/// An exclusive or shared `flock` on the lab's lock file.
pub struct Lock {
    file: Flock<File>,
    path: PathBuf,
}

impl Lock {
    /// For commands that change the lab (up, down, restart, scale).
    pub fn exclusive(layout: &Layout) -> Result<Self> {
        let lock = Self::take(layout, FlockArg::LockExclusive, true)?;
        Ok(lock.expect("the lock file is created"))
    }

    /// For commands that change a lab that must exist (restart, scale); `None` when it has
    /// no lock file, so it does not exist (and none is created).
    pub fn exclusive_if_exists(layout: &Layout) -> Result<Option<Self>> {
        Self::take(layout, FlockArg::LockExclusive, false)
    }

    /// For commands that only read it (status, probe, exec); `None` as above.
    pub fn shared(layout: &Layout) -> Result<Option<Self>> {
        Self::take(layout, FlockArg::LockShared, false)
    }

    fn take(layout: &Layout, how: FlockArg, create: bool) -> Result<Option<Self>> {
        let path = layout.lock_file();
        let lock_err = |source| Error::Lock {
            path: path.clone(),
            source,
        };
        if create {
            let parent = path.parent().expect("the lock file is in the run folder");
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        loop {
            let file = match OpenOptions::new()
                .create(create)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(file) => file,
                Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(lock_err(e)),
            };
            let file = Flock::lock(file, how).map_err(|(_, errno)| lock_err(errno.into()))?;
            // `down` unlinks the file while holding the lock: a waiter that then gets the
            // lock on the unlinked file must take it again on the current one.
            let held = file.metadata().map_err(lock_err)?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(Self { file, path }));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(lock_err(e)),
            }
        }
    }

    /// Delete the lock file while still holding it (the last step of `down`).
    pub fn remove(self) -> Result<()> {
        let result = std::fs::remove_file(&self.path);
        drop(self.file);
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }
}

/// One pod as the lab built it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// `namespace/name`.
    pub name: String,
    pub namespace: String,
    /// `namespace/Kind/name` of the workload that owns it; `None` for a bare pod.
    pub workload: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub slot: u32,
    pub netns: String,
    /// The host side of its veth, in the node namespace: the endpoint.
    pub host_interface: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The mode its endpoint is in; `None` until it is attached (and in a lab without the
    /// agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl Pod {
    pub fn new(lab: &str, slot: u32, new: plan::NewPod) -> Self {
        Self {
            name: format!("{}/{}", new.namespace, new.name),
            namespace: new.namespace,
            workload: new.workload,
            labels: new.labels,
            ports: new.ports,
            slot,
            netns: plan::host_netns(lab, slot),
            host_interface: plan::host_interface(lab, slot),
            ipv4: plan::pod_ipv4(slot),
            ipv6: plan::pod_ipv6(slot),
            mode: None,
        }
    }

    /// Its name without the namespace.
    pub fn short_name(&self) -> &str {
        self.name
            .split_once('/')
            .map_or(self.name.as_str(), |(_, name)| name)
    }

    pub fn addresses(&self) -> [IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }

    /// The pod's ordinal, for StatefulSet pods.
    pub fn ordinal(&self) -> Option<u32> {
        self.labels.get(plan::POD_INDEX_LABEL)?.parse().ok()
    }
}

/// An external host: its own namespace, routed by the node, never an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalHost {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<Port>,
    pub slot: u32,
    pub netns: String,
    pub host_interface: String,
}

/// A service with its ClusterIPs (dual stack).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// `namespace/name`.
    pub name: String,
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl ServiceInfo {
    pub fn addresses(&self) -> [IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub name: String,
    /// The `palisade` binary that runs the lab's server and agent.
    pub program: PathBuf,
    pub topology: Topology,
    /// The mode endpoints are attached in; `None`: the lab runs without the agent.
    pub agent_mode: Option<Mode>,
    /// What pods no policy selects get (the agent's `--default`), unless their namespace's
    /// `palisade.io/default` label says otherwise.
    pub default: DefaultAction,
    /// Namespaces whose pods are attached in another mode than `agent_mode` (`lab mode
    /// --namespace`); new pods of the namespace get it too.
    #[serde(default)]
    pub namespace_modes: BTreeMap<String, Mode>,
    pub slots: Slots,
    pub workloads: Vec<WorkloadState>,
    pub pods: Vec<Pod>,
    pub externals: Vec<ExternalHost>,
    pub services: Vec<ServiceInfo>,
    pub server: Option<Process>,
    pub agent: Option<Process>,
}

impl State {
    /// The saved state; `None` when there is none, or when it was written by an
    /// incompatible version (then it can only be torn down by name).
    pub fn load(layout: &Layout) -> Result<Option<Self>> {
        let path = layout.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let state: Self =
            serde_json::from_str(&text).map_err(|source| Error::State { path, source })?;
        Ok((state.format == STATE_FORMAT).then_some(state))
    }

    /// Write atomically: the server reads the state without the lock.
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = layout.state_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(path, e))
    }

    /// Every namespace of the lab, node first.
    pub fn netns_names(&self) -> Vec<String> {
        std::iter::once(plan::node_netns(&self.name))
            .chain(self.pods.iter().map(|p| p.netns.clone()))
            .chain(self.externals.iter().map(|e| e.netns.clone()))
            .collect()
    }

    /// The mode a new pod of `namespace` is attached in; `None` without the agent.
    pub fn mode_for(&self, namespace: &str) -> Option<Mode> {
        let mode = self.agent_mode?;
        Some(self.namespace_modes.get(namespace).copied().unwrap_or(mode))
    }

    /// Is the pod's interface something the agent may write rules for? With the agent,
    /// only once it is attached: the agent refuses a whole policy that names an interface
    /// which is not an endpoint.
    fn is_endpoint(&self, pod: &Pod) -> bool {
        self.agent_mode.is_none() || pod.mode.is_some()
    }

    /// What the agent needs to name flows and to find the pods' endpoints: interfaces of
    /// attached pods, addresses of pods and external hosts, pods' labels and workloads,
    /// Services' ClusterIPs.
    pub fn names(&self) -> Names {
        let mut names = Names::default();
        for pod in &self.pods {
            if self.is_endpoint(pod) {
                names
                    .interfaces
                    .insert(pod.host_interface.clone(), pod.name.clone());
            }
            for ip in pod.addresses() {
                names.addresses.insert(ip, pod.name.clone());
            }
            let namespace_labels = self
                .topology
                .namespaces
                .iter()
                .find(|n| n.name.as_str() == pod.namespace)
                .map(|n| n.labels.map().clone())
                .unwrap_or_default();
            let labels = LabelSet::for_pod(&pod.namespace, &namespace_labels, &pod.labels);
            names.pods.insert(
                pod.name.clone(),
                PodMeta {
                    workload: pod.workload.clone(),
                    labels: labels.0,
                },
            );
        }
        for external in &self.externals {
            for ip in &external.addresses {
                names.addresses.insert(*ip, external.name.clone());
            }
        }
        for service in &self.services {
            for ip in service.addresses() {
                names.services.insert(ip, service.name.clone());
            }
        }
        names
    }

    pub fn write_names(&self, layout: &Layout) -> Result<()> {
        let path = layout.names_file();
        self.names()
            .save(&path)
            .map_err(|source| Error::Names { path, source })
    }

    /// What NetworkPolicies apply to: every namespace with its labels (and the
    /// `kubernetes.io/metadata.name` label Kubernetes gives it), every pod with its labels,
    /// addresses and named ports, on the lab's one node, whose addresses are the ones pods
    /// see it by.
    pub fn cluster(&self) -> Cluster {
        let node = plan::node_name(&self.name);
        Cluster {
            namespaces: self
                .topology
                .namespaces
                .iter()
                .map(|n| {
                    let name = n.name.to_string();
                    let labels = self.topology.namespace_labels(&name);
                    (name, labels)
                })
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|p| cluster::Pod {
                    namespace: p.namespace.clone(),
                    name: p.short_name().to_owned(),
                    labels: p.labels.clone(),
                    ips: p.addresses().to_vec(),
                    ports: p
                        .ports
                        .iter()
                        .map(|port| ContainerPort {
                            name: port.name.as_ref().map(ToString::to_string),
                            port: port.port.get(),
                            protocol: port.protocol.into(),
                        })
                        .collect(),
                    node: node.clone(),
                    workload: p.workload.clone(),
                })
                .collect(),
            nodes: BTreeMap::from([(node, vec![GATEWAY_V4.into(), NODE_V6.into()])]),
            services: self
                .services
                .iter()
                .map(|s| cluster::ClusterService {
                    namespace: s.namespace.clone(),
                    name: s.name.rsplit('/').next().unwrap_or(&s.name).to_owned(),
                    selector: s.selector.clone(),
                    cluster_ips: s.addresses().to_vec(),
                    ports: s
                        .ports
                        .iter()
                        .map(|p| cluster::ClusterServicePort {
                            port: p.port.get(),
                            protocol: p.protocol.into(),
                            target_port: match p.target() {
                                TargetPort::Number(n) => cluster::TargetPort::Number(n.get()),
                                TargetPort::Name(name) => {
                                    cluster::TargetPort::Name(name.to_string())
                                }
                            },
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Write the cluster file atomically (the agent re-reads it on every change).
    pub fn write_cluster(&self, layout: &Layout) -> Result<()> {
        let path = layout.cluster_file();
        let text =
            serde_json::to_string_pretty(&self.cluster()).map_err(|source| Error::State {
                path: path.clone(),
                source,
            })?;
        write_atomically(&path, text.as_bytes())
    }

    /// The cluster file, then the names file: what the agent compiles policy from.
    pub fn write_agent_files(&self, layout: &Layout) -> Result<()> {
        self.write_cluster(layout)?;
        self.write_names(layout)
    }
}

/// Write `path` through a hidden temporary file renamed over it: readers (the agent, whose
/// watches ignore hidden files) see the old or the new file, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{UpOptions, plan_state};

    const TOPOLOGY: &str = "
namespaces:
  - {name: x, labels: {team: blue}}
  - {name: empty}
pods:
  - name: x/a
    labels: {pod: a}
    ports: [{port: 80, name: serve-80-tcp}, {port: 81, protocol: UDP}]
externals:
  - {name: ext.example.com, addresses: [203.0.113.9]}
";

    fn state(agent: bool) -> State {
        let topology = Topology::parse(TOPOLOGY, "t.yaml").unwrap();
        let mut options = UpOptions::new("palisade");
        options.agent = agent;
        plan_state(&Layout::new("t").unwrap(), &topology, &options).unwrap()
    }

    #[test]
    fn the_cluster_file_says_what_policies_apply_to() {
        let cluster = state(true).cluster();
        let json = serde_json::to_value(&cluster).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "namespaces": {
                    "x": {"kubernetes.io/metadata.name": "x", "team": "blue"},
                    "empty": {"kubernetes.io/metadata.name": "empty"},
                },
                "pods": [{
                    "namespace": "x",
                    "name": "a",
                    "labels": {"pod": "a"},
                    "ips": ["10.244.0.2", "fd00:10:244::2"],
                    "ports": [
                        {"name": "serve-80-tcp", "port": 80, "protocol": "tcp"},
                        {"port": 81, "protocol": "udp"},
                    ],
                    "node": "palisade-t-node",
                }],
                "nodes": {"palisade-t-node": ["169.254.1.1", "fd00:10:244::1"]},
                "services": [],
            })
        );
    }

    #[test]
    fn with_the_agent_only_attached_pods_are_named_endpoints() {
        let mut state = state(true);
        assert!(state.names().interfaces.is_empty());
        assert_eq!(state.names().addresses.len(), 3, "pods and external hosts");
        state.pods[0].mode = Some(Mode::Enforce);
        assert_eq!(state.names().interfaces["pl-t-1"], "x/a");
        // Without the agent nothing is attached; the names still say which pod is which.
        assert_eq!(self::state(false).names().interfaces["pl-t-1"], "x/a");
    }

    #[test]
    fn workloads_and_services_are_named_for_the_agent() {
        let topology = Topology::parse(
            "
namespaces: [{name: shop}]
workloads:
  - {kind: Deployment, name: api, namespace: shop, replicas: 1, labels: {app: api},
     ports: [{port: 8080}]}
services:
  - {name: api, namespace: shop, selector: {app: api}, ports: [{port: 80, targetPort: 8080}]}
",
            "t.yaml",
        )
        .unwrap();
        let state = plan_state(
            &Layout::new("t").unwrap(),
            &topology,
            &UpOptions::new("palisade"),
        )
        .unwrap();
        let names = state.names();
        let service = &state.services[0];
        for ip in service.addresses() {
            assert_eq!(names.services[&ip], "shop/api");
        }
        assert_eq!(names.services.len(), 2, "both ClusterIPs, nothing else");
        let cluster = state.cluster();
        assert_eq!(
            cluster.pods[0].workload.as_deref(),
            Some("shop/Deployment/api")
        );
        assert_eq!(cluster.pods[0].workload, state.pods[0].workload);
    }

    #[test]
    fn the_agent_enforces_the_labs_policies() {
        let layout = Layout::new("t").unwrap();
        let argv = layout.agent_argv(Path::new("palisade"), Mode::Learn, DefaultAction::Deny);
        let value = |flag: &str| {
            let i = argv.iter().position(|a| a == flag).unwrap();
            argv[i + 1].clone()
        };
        assert_eq!(value("--policy-dir"), "/run/palisade/lab/t/policies");
        assert_eq!(value("--cluster"), "/run/palisade/lab/t/cluster.json");
        assert_eq!(value("--names"), "/run/palisade/lab/t/names.json");
        assert_eq!(value("--node-name"), "palisade-t-node");
        assert_eq!(value("--default"), "deny");
        assert_eq!(value("--identities"), "/run/palisade/lab/t/identities.json");
        assert!(layout.is_agent(&argv));
    }
}
