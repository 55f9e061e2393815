//! What a lab remembers between commands, under `/run/palisade/lab/<lab>/`, and the lock
//! that makes concurrent commands on one lab take turns.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use model::{Mode, identity::LabelSet};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{
    error::{Error, Result},
    plan::{self, Slots, WorkloadState},
    process::Process,
    topology::{Port, ServicePort, Topology},
};
use crate::{
    names::{Names, PodMeta},
    paths,
};

/// Bumped when the state file changes incompatibly; an older file is treated as stale.
pub const STATE_FORMAT: u32 = 1;

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

    pub fn agent_argv(&self, program: &Path, mode: Mode) -> Vec<String> {
        let mode = match mode {
            Mode::Learn => "learn",
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
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
        }
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

    /// What the agent needs to name flows: interfaces and addresses of pods, addresses of
    /// external hosts.
    pub fn names(&self) -> Names {
        let mut names = Names::default();
        for pod in &self.pods {
            names
                .interfaces
                .insert(pod.host_interface.clone(), pod.name.clone());
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
        names
    }

    pub fn write_names(&self, layout: &Layout) -> Result<()> {
        let path = layout.names_file();
        self.names()
            .save(&path)
            .map_err(|source| Error::Names { path, source })
    }
}
