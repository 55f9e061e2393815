//! `palisade lab`: a Kubernetes node built from network namespaces, so Palisade's datapath
//! meets pod traffic on one machine, as a demo and as the project's end-to-end test bed.
//!
//! A [`Topology`] (YAML) declares namespaces, pods, workloads, services and external hosts.
//! [`Lab::up`] builds it: one network namespace per pod and per external host, each wired by
//! a veth to a node namespace that routes a /32 and a /128 per pod (like ptp CNIs), echo
//! servers on every declared port, ClusterIPs as DNAT in the node (like kube-proxy), and
//! by default the agent with every pod interface attached, enforcing the lab's Kubernetes
//! NetworkPolicies. [`Lab::probe`] and [`Lab::probe_one`] send traffic between them;
//! [`Lab::restart`] and [`Lab::scale`] replace pods (always with new addresses);
//! [`Lab::apply_policy_files`], [`Lab::label_pod`], [`Lab::label_namespace`],
//! [`Lab::set_default`] and [`Lab::set_mode`] change what is enforced; [`down`] removes
//! everything, also what a crashed run left behind.
//!
//! # The agent and NetworkPolicies
//! The lab's agent runs with `--policy-dir <run dir>/policies --cluster <run dir>/cluster.json
//! --names <run dir>/names.json`: the lab keeps the policy folder (one policy per file), and
//! rewrites the cluster file (namespaces and pods with their labels, addresses and named
//! ports, on one node whose addresses are the pods' gateway, 169.254.1.1 and
//! fd00:10:244::1) and the names file (which interface is which pod) whenever pods or labels
//! change. The names file lists a pod's interface only once it is attached: the agent refuses
//! a policy naming an interface that is not an endpoint. Commands that change what the agent
//! reads wait (bounded) for its answer in its log, so a probe right after sees the result.
//!
//! ```no_run
//! use enforcer::lab::{Lab, Protocol, Topology, UpOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let topology = Topology::default_shop();
//! let mut options = UpOptions::new("target/debug/palisade");
//! options.agent = false;
//! let lab = Lab::up("demo", &topology, &options)?;
//! let (from, to) = (&lab.pods()[0], &lab.pods()[1]);
//! let result = lab.probe_one(&from.name, to.ipv4.into(), 8080, Protocol::Tcp)?;
//! println!("{} -> {}: {result:?}", from.name, to.name);
//! lab.down()?;
//! # Ok(())
//! # }
//! ```
//!
//! What a lab named `<lab>` puts on the machine (and nothing else; never anything in the
//! caller's own namespace):
//! ```text
//! /run/netns/palisade-<lab>-node     the node: routes, forwarding, nft table `inet palisade-lab`
//! /run/netns/palisade-<lab>-<slot>   a pod or external host; veth eth0 <-> pl-<lab>-<slot> (node)
//! /run/palisade/lab/<lab>/           state.json, names.json, cluster.json, policies/,
//!                                    identities.json, flows.jsonl, logs, ready markers
//! /run/palisade/lab/<lab>.lock       serializes commands on the lab
//! /sys/fs/bpf/palisade-<lab>/        the agent's pins
//! ```
//! plus two processes started with `setsid`: the lab's server (`palisade lab --name <lab>
//! serve`) and the agent.
//!
//! # Layout
//! - [`topology`]: the YAML schema and its checks, with file, line and field in errors.
//! - [`yaml`]: positions of values in a YAML document, for errors found after parsing.
//! - [`plan`]: pure planning: names, slots and addresses, workloads expanded into pods with
//!   Kubernetes' generated names and noise labels.
//! - [`state`]: what a lab remembers under `/run/palisade/lab/<lab>/`, its lock, and the
//!   pods, external hosts and services as built.
//! - [`net`]: namespaces, veths, addresses and routes (`ip -batch`), sysctls.
//! - [`services`]: ClusterIPs as nftables DNAT in the node namespace.
//! - [`servers`]: the lab's server process: TCP and UDP echo on every declared port.
//! - [`resolver`]: the lab's cluster DNS, which the server answers on UDP 53 of
//!   `k8s-app: kube-dns` pods (external hosts and Services by name); lookups from pods.
//! - [`process`]: starting, recognising and stopping the lab's background processes.
//! - [`probe`]: echo probes from pods (and external hosts), and probe matrices.
//! - [`attacks`]: what a compromised pod tries (scans, callbacks, exfiltration, DNS
//!   tunnels, spoofing), from its namespace, as the attacker sees it.
//! - [`policy`]: the lab's NetworkPolicy files: apply, delete, list.
//! - [`labels`]: changing pod and namespace labels; the per-namespace default.
//! - [`agent`]: the agent's answers to changes (from its log), restarting it, endpoint modes.
//! - [`demo`]: `palisade lab demo`: the default topology with the agent and live flows.
//! - [`cli`]: the `palisade lab` subcommands.
//! - [`error`]: the lab's error type.

pub mod agent;
pub mod attacks;
pub mod cli;
pub mod demo;
pub mod error;
pub mod labels;
pub mod net;
pub mod plan;
pub mod policy;
pub mod probe;
pub mod process;
pub mod resolver;
pub mod servers;
pub mod services;
pub mod state;
pub mod topology;
pub mod yaml;

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    time::Duration,
};

use model::{Mode, netpol::evaluate::DefaultAction};
use tracing::warn;

pub use self::{
    agent::{AgentOutcome, ModeTarget},
    error::{Error, Result},
    labels::{LabelEdit, Labelled},
    policy::{PolicyChanges, PolicyEntry},
    probe::{Family, ProbeResult},
    state::{ExternalHost, Pod, ServiceInfo},
    topology::{Protocol, Topology},
};
use self::{
    plan::{NewPod, WorkloadState},
    probe::{Job, Matrix, Report, Target, TargetKind},
    process::Process,
    state::{Layout, Lock, STATE_FORMAT, State},
    topology::{Kind, MAX_REPLICAS, Workload},
};
use crate::{
    datapath::{self, EndpointSpec, Pins},
    netns,
};

/// How long the lab's server gets to bind every socket.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent gets to install the datapath (or, restarted, to take it over).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to bring a lab up.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The `palisade` binary, which runs the lab's server (and the agent) as detached
    /// processes. The CLI passes itself; tests pass the built binary.
    pub program: PathBuf,
    /// Start the agent and attach every pod interface.
    pub agent: bool,
    /// The mode pod interfaces are attached in.
    pub mode: Mode,
    /// What pods no NetworkPolicy selects get: allow (Kubernetes) or deny (zero trust).
    pub default: DefaultAction,
    /// How long the agent gets to install the datapath.
    pub agent_timeout: Duration,
    /// Told about each step as it happens (the CLI prints them).
    pub progress: fn(&str),
}

impl UpOptions {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            agent: true,
            mode: Mode::Learn,
            default: DefaultAction::Allow,
            agent_timeout: AGENT_TIMEOUT,
            progress: |_| {},
        }
    }
}

/// What a restart or scale did, by pod name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// The agent's answer to the new set of pods; `None` without the agent.
    pub agent: Option<AgentOutcome>,
}

/// What a teardown found and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    pub processes: usize,
    pub namespaces: usize,
    pub pins: usize,
    pub state: bool,
}

impl Teardown {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Which probes [`Lab::probe`] runs.
#[derive(Clone, Debug)]
pub struct ProbeRequest {
    pub port: u16,
    pub protocol: Protocol,
    pub families: Vec<Family>,
    /// Only from these pods: a pod (`ns/pod`) or a workload (`ns/name`, `ns/Kind/name`).
    /// An external host's name probes from that host instead.
    pub from: Option<String>,
    /// Only to this target: a pod or workload as above, an external host, or a service
    /// (`ns/name` or `ns/Service/name`).
    pub to: Option<String>,
    pub timeout: Duration,
}

impl ProbeRequest {
    /// Every pod to every pod, external host and service exposing `port`, both families.
    pub fn new(port: u16, protocol: Protocol) -> Self {
        Self {
            port,
            protocol,
            families: vec![Family::V4, Family::V6],
            from: None,
            to: None,
            timeout: probe::DEFAULT_TIMEOUT,
        }
    }
}

/// A lab that is up.
#[derive(Clone, Debug)]
pub struct Lab {
    layout: Layout,
    state: State,
}

impl Lab {
    /// Build the lab `name` from `topology`. A stale lab of the same name (a crashed run) is
    /// torn down first; a live one is an error. On failure, whatever was built is removed.
    pub fn up(name: &str, topology: &Topology, options: &UpOptions) -> Result<Self> {
        let layout = Layout::new(name)?;
        let lock = Lock::exclusive(&layout)?;
        let previous = State::load(&layout).unwrap_or_else(|e| {
            warn!(lab = name, error = %e, "ignoring unreadable lab state");
            None
        });
        if previous.as_ref().is_some_and(|s| is_live(&layout, s)) {
            return Err(Error::AlreadyUp {
                name: name.to_owned(),
            });
        }
        let stale = teardown(&layout, previous.as_ref())?;
        if !stale.is_empty() {
            (options.progress)(&format!(
                "cleaned up a stale lab {name:?}: {} processes, {} namespaces, {} pins",
                stale.processes, stale.namespaces, stale.pins
            ));
        }
        match build(&layout, topology, options) {
            Ok(state) => Ok(Self { layout, state }),
            Err(e) => {
                if let Err(cleanup) =
                    teardown(&layout, State::load(&layout).ok().flatten().as_ref())
                {
                    warn!(lab = name, error = %cleanup, "cleaning up after a failed up");
                }
                let _ = lock.remove();
                Err(e)
            }
        }
    }

    /// The lab `name`, as it is now.
    pub fn load(name: &str) -> Result<Self> {
        let layout = Layout::new(name)?;
        let not_up = || Error::NotUp {
            name: name.to_owned(),
            state_dir: layout.dir.clone(),
        };
        let Some(_lock) = Lock::shared(&layout)? else {
            return Err(not_up());
        };
        let state = State::load(&layout)?.ok_or_else(not_up)?;
        Ok(Self { layout, state })
    }

    /// Tear this lab down (see [`down`]).
    pub fn down(self) -> Result<Teardown> {
        down(&self.layout.name)
    }

    pub fn name(&self) -> &str {
        &self.layout.name
    }
    pub fn topology(&self) -> &Topology {
        &self.state.topology
    }
    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }
    pub fn externals(&self) -> &[ExternalHost] {
        &self.state.externals
    }
    pub fn services(&self) -> &[ServiceInfo] {
        &self.state.services
    }
    pub fn node_netns(&self) -> String {
        self.layout.node_netns()
    }
    pub fn bpffs_root(&self) -> PathBuf {
        self.layout.bpffs_root()
    }
    pub fn pins(&self) -> Pins {
        Pins::new(self.bpffs_root())
    }
    pub fn state_dir(&self) -> &Path {
        &self.layout.dir
    }
    /// The agent's flow records (JSON lines).
    pub fn flows_file(&self) -> PathBuf {
        self.layout.flows_file()
    }
    pub fn names_file(&self) -> PathBuf {
        self.layout.names_file()
    }
    pub fn agent_log(&self) -> PathBuf {
        self.layout.agent_log()
    }
    pub fn server_log(&self) -> PathBuf {
        self.layout.server_log()
    }
    /// The mode endpoints are attached in; `None` when the lab runs without the agent.
    pub fn agent_mode(&self) -> Option<Mode> {
        self.state.agent_mode
    }
    pub fn agent(&self) -> Option<&Process> {
        self.state.agent.as_ref()
    }
    pub fn server(&self) -> Option<&Process> {
        self.state.server.as_ref()
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.state
            .pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| self.unknown("pod", name, self.state.pods.iter().map(|p| &p.name)))
    }

    /// The pods of a workload (`ns/name` or `ns/Kind/name`).
    pub fn pods_of(&self, workload: &str) -> Result<Vec<&Pod>> {
        let owner = plan::owner(self.workload(workload)?);
        Ok(self
            .state
            .pods
            .iter()
            .filter(|p| p.workload.as_ref() == Some(&owner))
            .collect())
    }

    pub fn external(&self, name: &str) -> Result<&ExternalHost> {
        self.state
            .externals
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                self.unknown(
                    "external host",
                    name,
                    self.state.externals.iter().map(|e| &e.name),
                )
            })
    }

    /// A service by `ns/name`.
    pub fn service(&self, name: &str) -> Result<&ServiceInfo> {
        self.state
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                self.unknown("service", name, self.state.services.iter().map(|s| &s.name))
            })
    }

    /// Probe `target:port` from the pod `from_pod` (TCP: connect and echo; UDP: echo), with
    /// the default timeout.
    pub fn probe_one(
        &self,
        from_pod: &str,
        target: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Result<ProbeResult> {
        let pod = self.pod(from_pod)?;
        let addr = SocketAddr::new(target, port);
        netns::run_in(&pod.netns, || {
            probe::probe(addr, protocol, probe::DEFAULT_TIMEOUT)
        })
        .map_err(|source| Error::Netns {
            netns: pod.netns.clone(),
            source,
        })
    }

    /// A probe matrix: the selected pods (or the external host named by `from`) against
    /// every selected pod, external host and service exposing the port, per family. Nothing
    /// is probed against itself.
    pub fn probe(&self, request: &ProbeRequest) -> Result<Report> {
        // (name, namespace) of each source.
        let mut sources: Vec<(&str, &str)> = self
            .state
            .pods
            .iter()
            .filter(|p| {
                request
                    .from
                    .as_deref()
                    .is_none_or(|sel| self.is_pod_of(p, sel))
            })
            .map(|p| (p.name.as_str(), p.netns.as_str()))
            .collect();
        if let Some(sel) = &request.from {
            sources.extend(
                self.state
                    .externals
                    .iter()
                    .filter(|e| e.name == *sel)
                    .map(|e| (e.name.as_str(), e.netns.as_str())),
            );
        }
        if let Some(sel) = &request.from
            && sources.is_empty()
        {
            let known = self
                .state
                .pods
                .iter()
                .map(|p| &p.name)
                .chain(self.state.externals.iter().map(|e| &e.name));
            return Err(self.unknown("pod, workload or external host", sel, known));
        }
        let mut matrices = Vec::new();
        let mut jobs = Vec::new();
        for family in &request.families {
            let targets = self.targets(*family, request);
            for (name, netns) in &sources {
                for target in targets.iter().filter(|t| t.name != *name) {
                    jobs.push(Job {
                        netns: (*netns).to_owned(),
                        target: SocketAddr::new(target.address, request.port),
                        protocol: request.protocol,
                    });
                }
            }
            matrices.push(Matrix {
                family: *family,
                sources: sources.iter().map(|(name, _)| (*name).to_owned()).collect(),
                targets,
                results: Default::default(),
            });
        }
        if let Some(sel) = &request.to
            && matrices.iter().all(|m| m.targets.is_empty())
        {
            let known = self
                .state
                .pods
                .iter()
                .map(|p| &p.name)
                .chain(self.state.externals.iter().map(|e| &e.name))
                .chain(self.state.services.iter().map(|s| &s.name));
            return Err(self.unknown("target", sel, known));
        }
        let mut results = probe::run_all(&jobs, request.timeout).into_iter();
        for m in &mut matrices {
            for source in &m.sources {
                let row = m.results.entry(source.clone()).or_default();
                for target in m.targets.iter().filter(|t| t.name != *source) {
                    row.insert(
                        target.name.clone(),
                        results.next().expect("one result per job"),
                    );
                }
            }
        }
        Ok(Report {
            port: request.port,
            protocol: request.protocol,
            matrices,
        })
    }

    /// Run a command in a pod's namespace (or an external host's, or `node`), capturing its
    /// output.
    pub fn exec<S: AsRef<OsStr> + Sync>(&self, target: &str, argv: &[S]) -> Result<Output> {
        self.run_in_target(target, argv, |c| c.output())
    }

    /// Same, with the caller's standard input and output.
    pub fn exec_interactive<S: AsRef<OsStr> + Sync>(
        &self,
        target: &str,
        argv: &[S],
    ) -> Result<ExitStatus> {
        self.run_in_target(target, argv, |c| c.status())
    }

    /// Recreate a workload's pods with a new template (`kubectl rollout restart`): new
    /// names (except a StatefulSet's) and always new addresses.
    pub fn restart(&mut self, workload: &str) -> Result<Change> {
        let _lock = self.lock()?;
        self.reload()?;
        let w = self.workload(workload)?.clone();
        let rng = &mut rand::rng();
        let ws = self.workload_state(&w);
        ws.restart(rng);
        let ws = ws.clone();
        let owner = plan::owner(&w);
        let remove: Vec<String> = self
            .state
            .pods
            .iter()
            .filter(|p| p.workload.as_ref() == Some(&owner))
            .map(|p| p.name.clone())
            .collect();
        let mut taken = self.names_except(&remove);
        let add = (0..ws.replicas)
            .map(|ordinal| plan::new_pod(&w, &ws, ordinal, &mut taken, rng))
            .collect();
        self.change_pods(&remove, add)
    }

    /// Scale a workload to `replicas` pods (0 allowed). Not for DaemonSets.
    pub fn scale(&mut self, workload: &str, replicas: u32) -> Result<Change> {
        let _lock = self.lock()?;
        self.reload()?;
        let w = self.workload(workload)?.clone();
        if w.kind == Kind::DaemonSet {
            return Err(Error::CannotScale {
                workload: w.id(),
                kind: w.kind.as_str(),
                reason: "it runs one pod per node, and the lab is one node",
            });
        }
        if replicas > MAX_REPLICAS {
            return Err(Error::TooManyReplicas {
                workload: w.id(),
                count: replicas,
                max: MAX_REPLICAS,
            });
        }
        let owner = plan::owner(&w);
        let current: Vec<(Option<u32>, u32, String)> = self
            .state
            .pods
            .iter()
            .filter(|p| p.workload.as_ref() == Some(&owner))
            .map(|p| (p.ordinal(), p.slot, p.name.clone()))
            .collect();
        let (ordinals, remove) = plan::scale(w.kind, &current, replicas);
        let ws = self.workload_state(&w);
        ws.replicas = replicas;
        let ws = ws.clone();
        let mut taken = self.names_except(&remove);
        let rng = &mut rand::rng();
        let add = ordinals
            .into_iter()
            .map(|ordinal| plan::new_pod(&w, &ws, ordinal, &mut taken, rng))
            .collect();
        self.change_pods(&remove, add)
    }

    /// Remove pods, add pods, and bring everything that depends on the set of pods up to
    /// date: endpoints, the agent's files, services, names, the server.
    ///
    /// The agent learns of removed pods before their endpoints go (it stops writing their
    /// rules; it deletes them once they are detached), and of new pods' addresses and
    /// labels before they exist, so peers' rules know them; a new pod's interface is named
    /// to it once attached, and the pods serve again once the agent answered.
    fn change_pods(&mut self, remove: &[String], add: Vec<NewPod>) -> Result<Change> {
        let (layout, state) = (&self.layout, &mut self.state);
        let mark = agent::LogMark::new(&layout.agent_log());
        // First, as its sockets would keep the removed pods' namespaces alive.
        if let Some(server) = state.server.take() {
            server.stop("server")?;
        }
        state.save(layout)?;

        let (removed, kept): (Vec<Pod>, Vec<Pod>) = std::mem::take(&mut state.pods)
            .into_iter()
            .partition(|p| remove.contains(&p.name));
        state.pods = kept;
        state.save(layout)?;
        if !removed.is_empty() {
            state.write_agent_files(layout)?;
        }
        if state.agent_mode.is_some() {
            detach(layout, &removed)?;
        }
        net::delete_netns(&removed.iter().map(|p| p.netns.clone()).collect::<Vec<_>>())?;

        let mut added = add
            .into_iter()
            .map(|new| Ok(Pod::new(&state.name, state.slots.take()?, new)))
            .collect::<Result<Vec<_>>>()?;
        state.pods.extend(added.iter().cloned());
        // Saved before building, so a failure leaves them known to `down`.
        state.save(layout)?;
        state.write_cluster(layout)?;
        net::add_hosts(&state.name, &hosts(&added, &[]))?;
        if state.agent_mode.is_some() {
            attach(layout, &mut added, |p| state.mode_for(&p.namespace))?;
            for pod in &added {
                if let Some(p) = state.pods.iter_mut().find(|p| p.name == pod.name) {
                    p.mode = pod.mode;
                }
            }
            state.save(layout)?;
        }
        services::apply(
            &layout.node_netns(),
            &services::render(&state.services, &state.pods),
        )?;
        state.write_agent_files(layout)?;
        // The pods serve again once the agent answered for the new endpoints, as a pod's
        // containers start once its network is set up.
        let agent = state
            .agent_mode
            .is_some()
            .then(|| mark.wait(state.agent.as_ref(), agent::ANSWER_TIMEOUT));
        start_server(layout, state)?;
        Ok(Change {
            added: added.into_iter().map(|p| p.name).collect(),
            removed: removed.into_iter().map(|p| p.name).collect(),
            agent,
        })
    }

    fn not_up(&self) -> Error {
        Error::NotUp {
            name: self.layout.name.clone(),
            state_dir: self.layout.dir.clone(),
        }
    }

    /// The exclusive lock of a lab that is still there.
    fn lock(&self) -> Result<Lock> {
        Lock::exclusive_if_exists(&self.layout)?.ok_or_else(|| self.not_up())
    }

    /// Another command may have changed the lab since this handle was made.
    fn reload(&mut self) -> Result<()> {
        self.state = State::load(&self.layout)?.ok_or_else(|| self.not_up())?;
        Ok(())
    }

    /// A workload by `ns/name` or `ns/Kind/name` (kind in any case).
    fn workload(&self, spec: &str) -> Result<&Workload> {
        let parts: Vec<&str> = spec.split('/').collect();
        self.state
            .topology
            .workloads
            .iter()
            .find(|w| match parts[..] {
                [ns, name] => ns == w.namespace.as_str() && name == w.name.as_str(),
                [ns, kind, name] => {
                    ns == w.namespace.as_str()
                        && kind.eq_ignore_ascii_case(w.kind.as_str())
                        && name == w.name.as_str()
                }
                _ => false,
            })
            .ok_or_else(|| {
                let known = self.state.topology.workloads.iter().map(plan::owner);
                self.unknown("workload", spec, known.collect::<Vec<_>>().iter())
            })
    }

    fn workload_state(&mut self, w: &Workload) -> &mut WorkloadState {
        self.state
            .workloads
            .iter_mut()
            .find(|s| s.id == w.id())
            .expect("every workload of the topology has a state")
    }

    /// Names of the pods that stay, which new pods must not take.
    fn names_except(&self, removed: &[String]) -> BTreeSet<String> {
        self.state
            .pods
            .iter()
            .map(|p| p.name.clone())
            .filter(|n| !removed.contains(n))
            .collect()
    }

    /// Is `pod` the pod, or a pod of the workload, named by `sel`?
    fn is_pod_of(&self, pod: &Pod, sel: &str) -> bool {
        pod.name == sel
            || self
                .workload(sel)
                .is_ok_and(|w| pod.workload.as_ref() == Some(&plan::owner(w)))
    }

    fn targets(&self, family: Family, request: &ProbeRequest) -> Vec<Target> {
        let wanted = |name: &str| request.to.as_deref().is_none_or(|sel| sel == name);
        let mut targets = Vec::new();
        for pod in &self.state.pods {
            if request
                .to
                .as_deref()
                .is_none_or(|sel| self.is_pod_of(pod, sel))
            {
                let address = match family {
                    Family::V4 => pod.ipv4.into(),
                    Family::V6 => pod.ipv6.into(),
                };
                targets.push(Target {
                    name: pod.name.clone(),
                    kind: TargetKind::Pod,
                    address,
                });
            }
        }
        for external in self.state.externals.iter().filter(|e| wanted(&e.name)) {
            // An external host is probed at its first address of the family.
            if let Some(address) = external
                .addresses
                .iter()
                .find(|a| Family::of(**a) == family)
            {
                targets.push(Target {
                    name: external.name.clone(),
                    kind: TargetKind::External,
                    address: *address,
                });
            }
        }
        for service in &self.state.services {
            let (ns, name) = service.name.split_once('/').expect("services are ns/name");
            let long = format!("{ns}/Service/{name}");
            let exposes = service
                .ports
                .iter()
                .any(|p| p.port.get() == request.port && p.protocol == request.protocol);
            if exposes && (wanted(&service.name) || wanted(&long)) {
                let address = match family {
                    Family::V4 => service.ipv4.into(),
                    Family::V6 => service.ipv6.into(),
                };
                targets.push(Target {
                    name: long,
                    kind: TargetKind::Service,
                    address,
                });
            }
        }
        targets
    }

    fn target_netns(&self, target: &str) -> Result<String> {
        if target == "node" {
            return Ok(self.node_netns());
        }
        if let Some(pod) = self.state.pods.iter().find(|p| p.name == target) {
            return Ok(pod.netns.clone());
        }
        if let Some(external) = self.state.externals.iter().find(|e| e.name == target) {
            return Ok(external.netns.clone());
        }
        let known = self
            .state
            .pods
            .iter()
            .map(|p| &p.name)
            .chain(self.state.externals.iter().map(|e| &e.name));
        Err(self.unknown("pod or external host", target, known))
    }

    fn run_in_target<S: AsRef<OsStr> + Sync, T: Send>(
        &self,
        target: &str,
        argv: &[S],
        run: impl FnOnce(&mut Command) -> std::io::Result<T> + Send,
    ) -> Result<T> {
        let ns = self.target_netns(target)?;
        let Some((program, args)) = argv.split_first() else {
            return Err(Error::Spawn {
                program: String::new(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command line"),
            });
        };
        // The command inherits the namespace of the thread that starts it.
        netns::run_in(&ns, || run(Command::new(program).args(args)))
            .map_err(|source| Error::Netns {
                netns: ns.clone(),
                source,
            })?
            .map_err(|source| Error::Spawn {
                program: program.as_ref().to_string_lossy().into_owned(),
                source,
            })
    }

    fn unknown<'a>(
        &self,
        what: &'static str,
        name: &str,
        known: impl Iterator<Item = &'a String>,
    ) -> Error {
        let known: Vec<&str> = known.map(String::as_str).collect();
        Error::Unknown {
            what,
            name: name.to_owned(),
            lab: self.layout.name.clone(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        }
    }
}

/// Where the lab `name`'s agent writes its flow records (whether or not the lab is up).
pub fn flows_file_of(name: &str) -> Result<PathBuf> {
    Ok(Layout::new(name)?.flows_file())
}

/// Tear the lab `name` down: stop its server and agent, remove its pins, namespaces and
/// state. Works on a partial or stale lab (also without state: namespaces are found by
/// name, processes by the markers on their command lines), and does nothing for a lab that
/// does not exist.
pub fn down(name: &str) -> Result<Teardown> {
    let layout = Layout::new(name)?;
    let lock = Lock::exclusive(&layout)?;
    let state = State::load(&layout).unwrap_or_else(|e| {
        warn!(lab = name, error = %e, "ignoring unreadable lab state");
        None
    });
    let report = teardown(&layout, state.as_ref())?;
    lock.remove()?;
    Ok(report)
}

/// A lab whose server runs and whose node exists is live; anything else is stale.
fn is_live(layout: &Layout, state: &State) -> bool {
    state.server.as_ref().is_some_and(Process::is_running) && netns::exists(&layout.node_netns())
}

fn build(layout: &Layout, topology: &Topology, options: &UpOptions) -> Result<State> {
    let progress = options.progress;
    std::fs::create_dir_all(&layout.dir).map_err(|e| Error::io(&layout.dir, e))?;
    let state = &mut plan_state(layout, topology, options)?;
    // Saved before anything is built, so a failure can be torn down by exact names.
    state.save(layout)?;
    progress(&format!(
        "planned {} pods, {} external hosts, {} services",
        state.pods.len(),
        state.externals.len(),
        state.services.len()
    ));

    net::create_node(&layout.name)?;
    net::add_hosts(&layout.name, &hosts(&state.pods, &state.externals))?;
    progress(&format!(
        "wired {} namespaces to the node {}",
        state.pods.len() + state.externals.len(),
        layout.node_netns()
    ));
    let policies = layout.policies_dir();
    std::fs::create_dir_all(&policies).map_err(|e| Error::io(&policies, e))?;
    publish_pods(layout, state)?;
    progress(&format!(
        "servers listening (pid {})",
        state.server.as_ref().map_or(0, |p| p.pid)
    ));

    if let Some(mode) = state.agent_mode {
        // The names file lists no interface yet: none is an endpoint.
        start_agent(layout, state, options.agent_timeout)?;
        progress(&format!(
            "agent ready (pid {}), datapath pinned under {}, enforcing the NetworkPolicies in {} \
             (default {})",
            state.agent.as_ref().map_or(0, |p| p.pid),
            layout.bpffs_root().display(),
            policies.display(),
            default_text(state.default),
        ));
        let mark = agent::LogMark::new(&layout.agent_log());
        attach(layout, &mut state.pods, |_| Some(mode))?;
        state.save(layout)?;
        state.write_names(layout)?;
        let answer = mark.wait(state.agent.as_ref(), agent::ANSWER_TIMEOUT);
        progress(&format!(
            "attached {} pod interfaces in {mode:?} mode; {answer}",
            state.pods.len()
        ));
    }
    state.save(layout)?;
    Ok(state.clone())
}

/// The state of a new lab: pods expanded and given slots, external hosts given slots,
/// services given ClusterIPs.
fn plan_state(layout: &Layout, topology: &Topology, options: &UpOptions) -> Result<State> {
    let rng = &mut rand::rng();
    let mut state = State {
        format: STATE_FORMAT,
        name: layout.name.clone(),
        program: options.program.clone(),
        topology: topology.clone(),
        agent_mode: options.agent.then_some(options.mode),
        default: options.default,
        namespace_modes: Default::default(),
        slots: Default::default(),
        workloads: Vec::new(),
        pods: Vec::new(),
        externals: Vec::new(),
        services: Vec::new(),
        server: None,
        agent: None,
    };
    let mut taken: BTreeSet<String> = topology.pods.iter().map(|p| p.name.to_string()).collect();
    let mut new: Vec<NewPod> = topology
        .pods
        .iter()
        .map(|p| NewPod {
            namespace: p.name.namespace.to_string(),
            name: p.name.name.clone(),
            workload: None,
            labels: p.labels.map().clone(),
            ports: p.ports.clone(),
        })
        .collect();
    for w in &topology.workloads {
        let ws = WorkloadState::new(w, rng);
        new.extend((0..ws.replicas).map(|ordinal| plan::new_pod(w, &ws, ordinal, &mut taken, rng)));
        state.workloads.push(ws);
    }
    for pod in new {
        let slot = state.slots.take()?;
        state.pods.push(Pod::new(&layout.name, slot, pod));
    }
    for e in &topology.externals {
        let slot = state.slots.take()?;
        state.externals.push(ExternalHost {
            name: e.name.to_string(),
            addresses: e.addresses.iter().map(|a| a.ip()).collect(),
            ports: e.ports.clone(),
            slot,
            netns: plan::host_netns(&layout.name, slot),
            host_interface: plan::host_interface(&layout.name, slot),
        });
    }
    for (i, s) in topology.services.iter().enumerate() {
        let (ipv4, ipv6) = plan::cluster_ips(i)?;
        state.services.push(ServiceInfo {
            name: s.id(),
            namespace: s.namespace.to_string(),
            selector: s.selector.map().clone(),
            ports: s.ports.clone(),
            ipv4,
            ipv6,
        });
    }
    Ok(state)
}

fn hosts<'a>(pods: &'a [Pod], externals: &'a [ExternalHost]) -> Vec<net::Host<'a>> {
    let pods = pods.iter().map(|p| net::Host {
        netns: &p.netns,
        slot: p.slot,
        host_interface: &p.host_interface,
        addresses: p.addresses().to_vec(),
    });
    let externals = externals.iter().map(|e| net::Host {
        netns: &e.netns,
        slot: e.slot,
        host_interface: &e.host_interface,
        addresses: e.addresses.clone(),
    });
    pods.chain(externals).collect()
}

/// Start the lab's server and wait until it serves every port.
fn start_server(layout: &Layout, state: &mut State) -> Result<()> {
    let ready = layout.server_ready();
    process::remove_stale(&ready)?;
    let server = Process::spawn(layout.server_argv(&state.program), &layout.server_log())?;
    state.server = Some(server.clone());
    state.save(layout)?;
    server.wait_ready(
        "server",
        &ready,
        || process::ready_for(&ready, server.pid),
        SERVER_READY_TIMEOUT,
        &layout.server_log(),
    )
}

/// Start the agent and wait until it has installed the datapath.
fn start_agent(layout: &Layout, state: &mut State, timeout: Duration) -> Result<()> {
    let mode = state.agent_mode.expect("only labs with an agent start one");
    let ready = layout.agent_ready();
    process::remove_stale(&ready)?;
    let argv = layout.agent_argv(&state.program, mode, state.default);
    let agent = Process::spawn(argv, &layout.agent_log())?;
    state.agent = Some(agent.clone());
    state.save(layout)?;
    agent.wait_ready(
        "agent",
        &ready,
        || ready.exists(),
        timeout,
        &layout.agent_log(),
    )
}

/// Attach each pod's interface in the mode `mode_of` gives it, and record the mode on the
/// pod (which makes it an endpoint the names file lists).
fn attach(
    layout: &Layout,
    pods: &mut [Pod],
    mode_of: impl Fn(&Pod) -> Option<Mode> + Sync,
) -> Result<()> {
    in_node(layout, |pins| {
        for pod in pods {
            let mode = mode_of(pod).expect("pods are attached in labs with the agent");
            let spec = EndpointSpec {
                interface: pod.host_interface.clone(),
                ipv4: Some(pod.ipv4),
                ipv6: Some(pod.ipv6),
                mode,
                // The lab's agent owns the policy: nothing passes before it has spoken.
                isolated: true,
            };
            datapath::attach(pins, &spec).map_err(|source| Error::Datapath {
                action: "attaching",
                interface: pod.host_interface.clone(),
                source,
            })?;
            pod.mode = Some(mode);
        }
        Ok(())
    })
}

fn detach(layout: &Layout, pods: &[Pod]) -> Result<()> {
    in_node(layout, |pins| {
        for pod in pods {
            datapath::detach(pins, &pod.host_interface).map_err(|source| Error::Datapath {
                action: "detaching",
                interface: pod.host_interface.clone(),
                source,
            })?;
        }
        Ok(())
    })
}

/// Datapath calls name interfaces, which exist only inside the node namespace.
fn in_node(layout: &Layout, f: impl FnOnce(&Pins) -> Result<()> + Send) -> Result<()> {
    let node = layout.node_netns();
    let pins = Pins::new(layout.bpffs_root());
    netns::run_in(&node, || f(&pins)).map_err(|source| Error::Netns {
        netns: node.clone(),
        source,
    })?
}

/// Make the current pods reachable and known: service DNAT to them, the cluster and names
/// files, and echo servers in their namespaces.
fn publish_pods(layout: &Layout, state: &mut State) -> Result<()> {
    services::apply(
        &layout.node_netns(),
        &services::render(&state.services, &state.pods),
    )?;
    state.write_agent_files(layout)?;
    start_server(layout, state)
}

/// `allow (Kubernetes)` or `deny (zero trust)`.
pub fn default_text(default: DefaultAction) -> &'static str {
    match default {
        DefaultAction::Allow => "allow (Kubernetes)",
        DefaultAction::Deny => "deny (zero trust)",
    }
}

/// Remove everything of the lab (but its lock file), continuing past failures so a broken
/// lab is removed as far as possible; the first failure is returned.
fn teardown(layout: &Layout, state: Option<&State>) -> Result<Teardown> {
    let mut report = Teardown::default();
    let mut first_error = None;
    let mut note = |result: Result<()>| {
        if let Err(e) = result {
            warn!(lab = layout.name, error = %e, "teardown");
            first_error.get_or_insert(e);
        }
    };

    // Processes first: the server's sockets keep namespaces alive, the agent holds the maps.
    let mut processes: Vec<(&'static str, Process)> = Vec::new();
    if let Some(s) = state {
        processes.extend(s.server.clone().map(|p| ("server", p)));
        processes.extend(s.agent.clone().map(|p| ("agent", p)));
    }
    // And those a crashed run started before it could record them.
    for p in process::find(|argv| layout.is_server(argv) || layout.is_agent(argv)) {
        let what = if layout.is_server(&p.argv) {
            "server"
        } else {
            "agent"
        };
        processes.push((what, p));
    }
    let mut seen = BTreeSet::new();
    for (what, p) in processes {
        if seen.insert(p.pid) && p.is_running() {
            report.processes += 1;
            note(p.stop(what));
        }
    }

    let pins = Pins::new(layout.bpffs_root());
    if pins.root().exists() {
        match datapath::uninstall(&pins) {
            Ok(removed) => report.pins = removed.links + removed.pins,
            Err(source) => note(Err(Error::Uninstall {
                root: pins.root().to_owned(),
                source,
            })),
        }
    }

    let mut names: Vec<String> = state.map(State::netns_names).unwrap_or_default();
    names.extend(net::lab_netns_on_disk(&layout.name));
    names.sort();
    names.dedup();
    names.retain(|n| netns::exists(n));
    report.namespaces = names.len();
    note(net::delete_netns(&names));

    if layout.dir.exists() {
        report.state = true;
        note(std::fs::remove_dir_all(&layout.dir).map_err(|e| Error::io(&layout.dir, e)));
    }
    first_error.map_or(Ok(report), Err)
}
