//! The Kubernetes agent's [`Control`]: follows the API server's mirror, answers the CNI
//! plugin, and attaches and detaches endpoints as the node's links come and go, all inside
//! the agent's loop so that map writes never race each other.
//!
//! A CNI ADD is answered only after the policy reload that follows it: by then the pod's
//! endpoint is registered, its programs are attached, and its rules and address are in the
//! maps, so its first packet is judged by its policy.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use cni_plugin::protocol::{Command, EndpointMode, Programmed, Request};
use futures::StreamExt;
use k8s::watch::{ClusterWatch, Snapshot};
use model::{Mode, netpol::compile::PodKey};
use tracing::{debug, info, warn};

use enforcer_common::endpoint::EndpointInfo;

use super::node::{CniPod, NodeView, wanted_pod};
use crate::{
    agent::{Control, Node},
    cni::{CniRequest, CniServer},
    datapath,
    endpoints::{self, Attached, HostInterface, NodeSnapshot, Via, WantedPod},
    error::{Error, Result},
    http::{Check, Health},
    metrics::{EndpointModes, Metrics},
    policy_source::Reload,
};

/// How often the loop beats for liveness and looks at the node's links again after a
/// change (links, routes and neighbours come in bursts when a pod starts).
const TICK: Duration = Duration::from_millis(250);

/// CNI requests handled together at most (the server queues 64).
const CNI_BATCH: usize = 64;

/// One thing for the agent's loop to act on.
pub enum Event {
    /// The API server's mirror changed.
    Cluster,
    /// The CNI plugin asks.
    Cni(CniRequest),
    /// A link, route or neighbour changed.
    Link(endpoints::Event),
    /// The netlink watch ended (a message it could not decode ends it).
    LinksLost,
    Tick,
}

pub struct KubeControl {
    watch: ClusterWatch,
    view: NodeView,
    cni: Option<CniServer>,
    links: endpoints::Watch,
    netlink: rtnetlink::Handle,
    node: NodeSnapshot,
    /// The node's tables changed since `node` was taken.
    stale: bool,
    /// Interfaces the CNI plugin named for a pod's addresses, used where the node's tables
    /// do not (yet) show which interface carries them.
    hints: BTreeMap<IpAddr, HostInterface>,
    attached: BTreeMap<u32, Attached>,
    /// Endpoints a previous agent attached whose pod this one does not know (yet): left
    /// as they are, enforcing what they were given, until a wanted pod's address leads to
    /// them (then they are its) or their interface is gone (then they are removed). A
    /// restarting agent never opens enforcement by detaching them.
    orphans: BTreeMap<u32, Option<EndpointInfo>>,
    /// ADDs answered after the next policy reload.
    pending: Vec<(CniRequest, PodKey)>,
    metrics: Arc<Metrics>,
    health: Health,
    tick: tokio::time::Interval,
}

/// What the control is made of (built by [`super::run`]).
pub struct Parts {
    pub watch: ClusterWatch,
    pub view: NodeView,
    pub cni: Option<CniServer>,
    pub metrics: Arc<Metrics>,
    pub health: Health,
}

impl KubeControl {
    /// Open the node's netlink sockets. Call on the runtime, in the node's namespace.
    pub async fn new(parts: Parts) -> Result<Self> {
        let netlink = endpoints::connect().map_err(netlink_error)?;
        let links = endpoints::Watch::subscribe().map_err(netlink_error)?;
        let node = NodeSnapshot::dump(&netlink).await.map_err(netlink_error)?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            watch: parts.watch,
            view: parts.view,
            cni: parts.cni,
            links,
            netlink,
            node,
            stale: false,
            hints: BTreeMap::new(),
            attached: BTreeMap::new(),
            orphans: BTreeMap::new(),
            pending: Vec::new(),
            metrics: parts.metrics,
            health: parts.health,
            tick,
        })
    }

    /// Take the mirror in and report what it refuses, once per change (against the
    /// snapshot it replaces).
    fn take_snapshot(&mut self) {
        let snapshot: Snapshot = self.watch.snapshot(self.view.defaults());
        let previous = self.view.snapshot();
        if previous.is_none_or(|p| p.refused != snapshot.refused) {
            for refused in &snapshot.refused {
                warn!(
                    policy = %refused.policy,
                    reason = %refused.reason,
                    last_good_kept = refused.last_good_kept,
                    "NetworkPolicy not enforced"
                );
            }
        }
        if previous.is_none_or(|p| p.invalid_modes != snapshot.invalid_modes) {
            for invalid in &snapshot.invalid_modes {
                warn!(%invalid, "palisade.io/mode value ignored");
            }
        }
        self.metrics
            .set_network_policies_refused(snapshot.refused.len() as u64);
        self.view.set_snapshot(snapshot);
    }

    async fn refresh_links(&mut self) {
        match NodeSnapshot::dump(&self.netlink).await {
            Ok(node) => {
                self.node = node;
                self.stale = false;
            }
            // Keep the last picture; the next tick tries again, on a new socket (a message
            // the old one could not decode ends its connection for good).
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "cannot read the node's links and routes");
                self.stale = true;
                match endpoints::connect() {
                    Ok(handle) => self.netlink = handle,
                    Err(e) => warn!(error = %crate::error::chain(&e), "no new netlink socket"),
                }
            }
        }
    }

    /// Attach and detach until the datapath protects exactly the wanted pods, then hand
    /// the policy inputs and record names over.
    fn reconcile(&mut self, node: &mut Node<'_>) {
        let wanted = self.view.wanted();
        let mut discovered = BTreeMap::new();
        for want in wanted.values() {
            for ip in want.ips() {
                if let Some(found) = self.node.resolve(ip).or_else(|| self.hint(ip)) {
                    discovered.insert(ip, found);
                }
            }
        }
        self.adopt_orphans(node, &wanted, &discovered);
        let plan = endpoints::plan(&wanted, &discovered, &self.attached);
        for conflict in &plan.conflicts {
            warn!(?conflict, "endpoint discovery");
        }
        if !plan.waiting.is_empty() {
            debug!(pods = ?plan.waiting, "pods without an interface on this node yet");
        }
        for action in &plan.actions {
            let done = match action {
                endpoints::Action::Detach { ifindex, pod } => {
                    datapath::attach::detach_ifindex(node.pins, *ifindex)
                        .inspect(|()| info!(ifindex, pod = %pod_name(pod), "endpoint detached"))
                }
                endpoints::Action::Attach { ifindex, pod, spec } => {
                    datapath::attach(node.pins, spec).map(|attached_at| {
                        if attached_at != *ifindex {
                            warn!(
                                pod = %pod_name(pod),
                                interface = spec.interface,
                                ifindex,
                                attached_at,
                                "interface renumbered while attaching"
                            );
                        }
                        info!(
                            ifindex,
                            pod = %pod_name(pod),
                            interface = spec.interface,
                            mode = ?spec.mode,
                            "endpoint attached"
                        );
                    })
                }
            };
            match done {
                Ok(()) => action.record(&mut self.attached),
                Err(e) => {
                    self.metrics.attach_error(&e);
                    warn!(error = %crate::error::chain(&e), ?action, "endpoint not changed; retrying");
                    // Tried again on the next tick, not only on the next change.
                    self.stale = true;
                }
            }
        }
        self.metrics.set_endpoints(count_modes(&self.attached));
        let inputs = self.view.inputs(&self.attached);
        node.namer.names = self.view.names(&inputs, &self.attached);
        if let Some(policy) = node.policy.as_mut() {
            policy.set_inputs(inputs);
        }
    }

    /// An orphan whose interface now carries a wanted pod's address is that pod's (kept in
    /// place; re-registered only if its spec differs); one whose interface is gone is
    /// removed (nothing can pass through it any more).
    fn adopt_orphans(
        &mut self,
        node: &Node<'_>,
        wanted: &BTreeMap<PodKey, WantedPod>,
        discovered: &BTreeMap<IpAddr, HostInterface>,
    ) {
        let orphans = std::mem::take(&mut self.orphans);
        for (ifindex, info) in orphans {
            let claimant = wanted.iter().find(|(_, want)| {
                want.ips()
                    .any(|ip| discovered.get(&ip).is_some_and(|i| i.ifindex == ifindex))
            });
            match (claimant, self.node.link(ifindex)) {
                (Some((pod, _)), Some(link)) => {
                    let previous = previously_attached(pod, &link.name, info.as_ref());
                    self.attached.insert(ifindex, previous);
                }
                (None, Some(_)) => {
                    self.orphans.insert(ifindex, info);
                }
                (_, None) => match datapath::attach::detach_ifindex(node.pins, ifindex) {
                    Ok(()) => info!(ifindex, "endpoint of a gone interface removed"),
                    Err(e) => {
                        warn!(ifindex, error = %crate::error::chain(&e), "stale endpoint not removed");
                        self.orphans.insert(ifindex, info);
                    }
                },
            }
        }
    }

    fn hint(&self, ip: IpAddr) -> Option<HostInterface> {
        let hint = self.hints.get(&ip)?;
        // Only while the interface is there: a name can outlive its pod.
        self.node.link(hint.ifindex).map(|_| hint.clone())
    }

    /// Act on `first` and every CNI request queued behind it, with one look at the node's
    /// links, one plan and (by the caller) one policy reload for all of them: a burst of
    /// pods starting costs one compilation, not one each. `true` when the policy inputs
    /// changed.
    async fn cni(&mut self, first: CniRequest, node: &mut Node<'_>) -> bool {
        let mut batch = vec![first];
        while batch.len() < CNI_BATCH
            && let Some(more) = self.cni.as_mut().and_then(CniServer::try_next)
        {
            batch.push(more);
        }
        // The CNI before us has just wired the pods: look at the node afresh.
        if batch.iter().any(|r| r.request.command == Command::Add) {
            self.refresh_links().await;
        }
        let mut changed = false;
        for request in batch {
            changed |= self.take_cni(request);
        }
        if changed {
            self.reconcile(node);
        }
        changed
    }

    /// Record what one CNI request says, answering it now or (an ADD) after the reload;
    /// `true` when the wanted pods changed.
    fn take_cni(&mut self, request: CniRequest) -> bool {
        let Request {
            command,
            pod,
            ips,
            host_interface,
            container_id,
            ..
        } = request.request.clone();
        if request.is_abandoned() {
            // The plugin gave up waiting (and told the runtime); the kubelet tries again.
            debug!(
                container_id,
                ?command,
                "CNI request abandoned before its turn"
            );
            return false;
        }
        let Some(pod) = pod else {
            // Not a Kubernetes pod (no K8S_POD_* arguments): nothing to protect by policy.
            request.respond(Ok(None));
            return false;
        };
        let key = (pod.namespace.clone(), pod.name.clone());
        match command {
            Command::Add => {
                let addresses: Vec<IpAddr> = ips.iter().map(|ip| ip.address).collect();
                if let Some(name) = &host_interface
                    && let Ok(ifindex) = datapath::attach::ifindex_of(name)
                    && self.node.link(ifindex).is_some()
                {
                    for ip in &addresses {
                        self.hints.insert(
                            *ip,
                            HostInterface {
                                ifindex,
                                name: name.clone(),
                                via: Via::Cni,
                            },
                        );
                    }
                }
                info!(pod = %pod_name(&key), container_id, ?addresses, "CNI ADD");
                self.view.cni_added(
                    key.clone(),
                    CniPod {
                        container_id,
                        uid: pod.uid.unwrap_or_default(),
                        ips: addresses,
                    },
                );
                self.pending.push((request, key));
                true
            }
            Command::Del => {
                self.view.cni_deleted(&key, &container_id);
                self.hints
                    .retain(|ip, _| !ips.iter().any(|p| p.address == *ip));
                request.respond(Ok(None));
                true
            }
            Command::Check => {
                let answer = self
                    .programmed(&key)
                    .ok_or_else(|| format!("pod {} has no endpoint on this node", pod_name(&key)));
                request.respond(answer.map(Some));
                false
            }
            Command::Status => {
                request.respond(Ok(None));
                false
            }
        }
    }

    fn programmed(&self, key: &PodKey) -> Option<Programmed> {
        self.attached
            .iter()
            .find(|(_, a)| &a.pod == key)
            .map(|(ifindex, a)| Programmed {
                ifindex: *ifindex,
                mode: match a.spec.mode {
                    Mode::Learn => EndpointMode::Learn,
                    Mode::Monitor => EndpointMode::Monitor,
                    Mode::Enforce => EndpointMode::Enforce,
                },
            })
    }
}

impl Control for KubeControl {
    type Event = Event;

    async fn start(&mut self, mut node: Node<'_>) -> Result<()> {
        // Called once the datapath is installed and pinned.
        self.health.set(Check::Datapath, true);
        info!("waiting for the API server's pods, namespaces, nodes, Services and policies");
        // Until then nothing changes in the maps: what a previous agent pinned stays
        // enforced. The agent is alive meanwhile, only not ready.
        let mut still = tokio::time::interval(Duration::from_secs(10));
        still.tick().await;
        loop {
            tokio::select! {
                synced = self.watch.synced() => {
                    synced.map_err(|e| Error::Kubernetes(Box::new(e)))?;
                    break;
                }
                _ = still.tick() => {
                    self.health.beat();
                    warn!("still waiting for the API server's first lists");
                }
            }
        }
        self.health.set(Check::ClusterSynced, true);
        self.take_snapshot();
        // Endpoints a previous agent attached: each is adopted by the pod whose address
        // its interface carries (kept in place, never detached first, so enforcement has
        // no gap across a restart); see `orphans`. The node's links are read afresh: the
        // first lists may have taken a while.
        self.refresh_links().await;
        let registered = datapath::tables::Endpoints::open_endpoints(node.pins)?;
        for (ifindex, program, _) in node.pins.links()? {
            if program == enforcer_common::maps::PROG_FROM_POD {
                let info = datapath::tables::Table::get(&registered, &ifindex)?;
                self.orphans.insert(ifindex, info);
            }
        }
        self.reconcile(&mut node);
        Ok(())
    }

    async fn next(&mut self) -> Result<Event> {
        let cni = async {
            match &mut self.cni {
                Some(server) => server.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = self.watch.changed() => {
                changed.map_err(|e| Error::Kubernetes(Box::new(e)))?;
                Ok(Event::Cluster)
            }
            Some(request) = cni => Ok(Event::Cni(request)),
            event = self.links.next() => match event {
                Some(event) => Ok(Event::Link(event)),
                None => Ok(Event::LinksLost),
            },
            _ = self.tick.tick() => Ok(Event::Tick),
        }
    }

    async fn handle(&mut self, event: Event, mut node: Node<'_>) -> Result<bool> {
        match event {
            Event::Cluster => {
                self.take_snapshot();
                self.reconcile(&mut node);
                Ok(true)
            }
            Event::Cni(request) => Ok(self.cni(request, &mut node).await),
            Event::Link(_) => {
                self.stale = true;
                Ok(false)
            }
            Event::LinksLost => {
                // Watch again, and look at everything: changes may have been missed.
                warn!("the netlink watch ended; subscribing again");
                self.links = endpoints::Watch::subscribe().map_err(netlink_error)?;
                self.stale = true;
                Ok(false)
            }
            Event::Tick => {
                self.health.beat();
                if !self.stale {
                    return Ok(false);
                }
                self.refresh_links().await;
                let before = self.attached.clone();
                self.reconcile(&mut node);
                Ok(before != self.attached)
            }
        }
    }

    fn reloaded(&mut self, outcome: Reload) {
        self.metrics.policy_reload(&outcome);
        if matches!(outcome, Reload::Applied(_)) {
            self.health.set(Check::PolicyApplied, true);
        }
        for (request, key) in std::mem::take(&mut self.pending) {
            let answer = match (outcome, self.programmed(&key)) {
                // Writing the maps failed part way: the kubelet retries the sandbox.
                (Reload::Failed, _) => Err(format!(
                    "the policy for pod {} could not be written to the maps; see the agent's log",
                    pod_name(&key)
                )),
                // The node's policy did not compile: the pod would start isolated, without
                // its rules; in enforce mode that is an outage, so the runtime is told.
                (Reload::Refused, Some(programmed)) if programmed.mode == EndpointMode::Enforce => {
                    Err(format!(
                        "the policy for this node does not compile, so pod {} (enforce mode) \
                         would start without its rules; see the agent's log",
                        pod_name(&key)
                    ))
                }
                (_, Some(programmed)) => Ok(Some(programmed)),
                (_, None) => Err(format!(
                    "no interface on this node carries the addresses of pod {} (looked for host \
                     routes, bridge neighbours and the interface the CNI named)",
                    pod_name(&key)
                )),
            };
            request.respond(answer);
        }
    }
}

/// An endpoint a previous agent attached on `interface`, as the plan should see it for
/// `pod`: with the addresses and mode it is registered with (so the plan re-registers it
/// only if they differ).
fn previously_attached(pod: &PodKey, interface: &str, info: Option<&EndpointInfo>) -> Attached {
    let own = info.map(datapath::rules::own_addresses).unwrap_or_default();
    let mode = info
        .and_then(|i| datapath::rules::model_mode(i.mode))
        .unwrap_or(Mode::Enforce);
    let registered = wanted_pod(&own, mode);
    Attached {
        pod: pod.clone(),
        spec: datapath::EndpointSpec {
            interface: interface.to_owned(),
            ipv4: registered.as_ref().and_then(|w| w.ipv4),
            ipv6: registered.as_ref().and_then(|w| w.ipv6),
            mode,
            isolated: true,
        },
    }
}

fn pod_name(pod: &PodKey) -> String {
    format!("{}/{}", pod.0, pod.1)
}

fn count_modes(attached: &BTreeMap<u32, Attached>) -> EndpointModes {
    let mut modes = EndpointModes::default();
    for a in attached.values() {
        match a.spec.mode {
            Mode::Learn => modes.learn += 1,
            Mode::Monitor => modes.monitor += 1,
            Mode::Enforce => modes.enforce += 1,
        }
    }
    modes
}

fn netlink_error(e: endpoints::Error) -> Error {
    Error::Netlink(Box::new(e))
}
