//! The long-running agent: install the datapath, attach the given endpoints, then stream
//! flow records (one per new connection per endpoint, plus periodic conntrack counters)
//! until told to stop. Stopping leaves every program, link and map pinned: enforcement
//! never depends on the agent being up.
//!
//! What else steers it is a [`Control`]: nothing for the standalone agent (its policy and
//! names come from files), the API server, CNI requests and the node's links for the
//! Kubernetes agent (`crate::kubernetes`). Records go to a [`RecordSink`].

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use enforcer_common::{conntrack::ConntrackKey, maps};
use model::{FlowKind, FlowRecord, wire::FlowWriter};
use tracing::{info, warn};

use crate::{
    datapath::{
        self, EndpointSpec, Pins,
        events::{DnsReader, EventReader},
        records::Namer,
        stats,
    },
    error::{Error, Result},
    names::Names,
    policy_source::{PolicySource, Reload, SourceConfig},
};

pub struct AgentConfig {
    pub pins: Pins,
    /// Endpoints to attach at start (more can be attached later with `palisade attach`).
    pub endpoints: Vec<EndpointSpec>,
    /// Names of pods and hosts, re-read when the file changes.
    pub names_file: Option<PathBuf>,
    /// Created once the datapath is installed and the endpoints attached.
    pub ready_file: Option<PathBuf>,
    /// How often to export counters of live connections (None = never).
    pub stats_interval: Option<Duration>,
    /// The policy to enforce and follow (the agent then is the policy maps' only writer;
    /// see [`PolicySource`]).
    pub policy: Option<SourceConfig>,
    /// Map sizes for a fresh install (a pinned datapath keeps its own).
    pub sizing: datapath::Sizing,
}

/// Where the agent's flow records go.
pub trait RecordSink {
    fn write(&mut self, record: &FlowRecord) -> Result<()>;
    /// Called after each batch of records.
    fn flush(&mut self) -> Result<()>;
}

/// A file or standard output (JSON lines or length-delimited protobuf, see [`model::wire`]).
impl<W: Write> RecordSink for FlowWriter<W> {
    fn write(&mut self, record: &FlowRecord) -> Result<()> {
        FlowWriter::write(self, record).map_err(stdout_error)
    }

    fn flush(&mut self) -> Result<()> {
        FlowWriter::flush(self).map_err(stdout_error)
    }
}

/// What the agent's loop lends a [`Control`] while it handles an event.
pub struct Node<'a> {
    pub pins: &'a Pins,
    pub policy: &'a mut Option<PolicySource>,
    pub namer: &'a mut Namer,
}

/// A source of changes beyond the agent's files, handled inside the agent's loop (so map
/// writes never race each other).
pub trait Control {
    type Event;
    /// Called once, after the datapath is installed and before the first policy reload:
    /// the place to learn the state the first policy is compiled from.
    fn start(&mut self, _node: Node<'_>) -> impl std::future::Future<Output = Result<()>> {
        std::future::ready(Ok(()))
    }
    /// The next change; pending forever when there is none.
    fn next(&mut self) -> impl std::future::Future<Output = Result<Self::Event>>;
    /// Act on it; `true` when the policy inputs changed and the policy must be compiled
    /// and enforced again.
    fn handle(
        &mut self,
        event: Self::Event,
        node: Node<'_>,
    ) -> impl std::future::Future<Output = Result<bool>>;
    /// How the policy reload after [`Control::handle`] (or a file change) went.
    fn reloaded(&mut self, _outcome: Reload) {}
}

/// The standalone agent's control: none.
pub struct NoControl;

impl Control for NoControl {
    type Event = std::convert::Infallible;

    async fn next(&mut self) -> Result<Self::Event> {
        std::future::pending().await
    }

    async fn handle(&mut self, event: Self::Event, _node: Node<'_>) -> Result<bool> {
        match event {}
    }
}

/// Run until `shutdown` completes, writing [`FlowRecord`]s to `out`.
pub async fn run(
    config: AgentConfig,
    out: impl RecordSink,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    run_with(config, out, NoControl, shutdown).await
}

/// [`run`], steered also by `control`.
pub async fn run_with<C: Control>(
    config: AgentConfig,
    mut out: impl RecordSink,
    mut control: C,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let installed = datapath::install_with(&config.pins, config.sizing)?;
    // The maps and programs are pinned; the loader's own handles are not needed.
    drop(installed);
    for spec in &config.endpoints {
        datapath::attach(&config.pins, spec)?;
    }
    let mut policy = match &config.policy {
        Some(source) => Some(PolicySource::open(&config.pins, source.clone())?),
        None => None,
    };
    let mut reader = EventReader::open_events(&config.pins)?;
    let mut dns = DnsReader::open_dns(&config.pins)?;
    let mut names = NamesFile::new(config.names_file);
    let mut namer = Namer::new(names.load_if_changed().unwrap_or_default());
    control
        .start(Node {
            pins: &config.pins,
            policy: &mut policy,
            namer: &mut namer,
        })
        .await?;
    let mut retry = reload_policy(&mut policy, &mut namer, &mut control);
    // A policy update that failed while writing is tried again this often.
    let mut retry_tick = tokio::time::interval(Duration::from_secs(1));
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(ready) = &config.ready_file {
        std::fs::write(ready, b"ready\n").map_err(|source| Error::Io {
            path: ready.clone(),
            source,
        })?;
    }
    info!(endpoints = config.endpoints.len(), "agent running");

    let mut exported: HashMap<ConntrackKey, u64> = HashMap::new();
    let mut ticker = tokio::time::interval(config.stats_interval.unwrap_or(Duration::MAX));
    ticker.tick().await;
    // The kernel wakes us only when events pile up; the rest are collected on this tick.
    let mut drain = tokio::time::interval(Duration::from_millis(maps::EVENTS_DRAIN_MS));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // DNS answers first: a pod connects right after its lookup, and the connection's
            // record should carry the name.
            biased;
            answers = dns.next_batch() => {
                let now = std::time::Instant::now();
                for answer in answers? {
                    let len = usize::from(answer.len).min(answer.payload.len());
                    let tcp = answer.protocol == enforcer_common::proto::TCP;
                    namer.dns.learn(&answer.payload[..len], tcp, now);
                }
            }
            changed = policy_changed(&mut policy) => {
                changed?;
                retry = reload_policy(&mut policy, &mut namer, &mut control);
            }
            event = control.next() => {
                let node = Node { pins: &config.pins, policy: &mut policy, namer: &mut namer };
                if control.handle(event?, node).await? {
                    retry = reload_policy(&mut policy, &mut namer, &mut control);
                }
            }
            _ = retry_tick.tick(), if retry => {
                retry = reload_policy(&mut policy, &mut namer, &mut control);
            }
            batch = reader.next_batch() => write_events(&mut namer, &mut names, batch?, &mut out)?,
            _ = drain.tick() => {
                let batch = reader.drain_now();
                if !batch.is_empty() {
                    write_events(&mut namer, &mut names, batch, &mut out)?;
                }
            }
            _ = ticker.tick(), if config.stats_interval.is_some() => {
                // Periodic: a sweep that fails is tried again at the next tick.
                if let Err(e) = export_stats(&config.pins, &mut namer, &mut exported, &mut out) {
                    warn!(error = %crate::error::chain(&e), "connection counters not exported this time");
                }
            }
            () = &mut shutdown => break,
        }
    }
    info!("agent stopping; enforcement stays pinned");
    Ok(())
}

/// Enforce what the policy source says now and name flow records by its rules; whether
/// the update must be tried again (it failed while writing the maps).
fn reload_policy(
    policy: &mut Option<PolicySource>,
    namer: &mut Namer,
    control: &mut impl Control,
) -> bool {
    let Some(source) = policy else {
        return false;
    };
    let outcome = source.reload();
    namer.rules = source.rule_names();
    control.reloaded(outcome);
    outcome == Reload::Failed
}

/// Resolve when the watched policy file changed; never without one.
async fn policy_changed(policy: &mut Option<PolicySource>) -> Result<()> {
    match policy {
        Some(source) => source.changed().await,
        None => std::future::pending().await,
    }
}

fn write_events(
    namer: &mut Namer,
    names: &mut NamesFile,
    batch: Vec<enforcer_common::event::FlowEvent>,
    out: &mut impl RecordSink,
) -> Result<()> {
    if let Some(fresh) = names.load_if_changed() {
        namer.names = fresh;
    }
    for ev in batch {
        match namer.event(&ev) {
            Ok(record) => out.write(&record)?,
            Err(e) => warn!(error = %e, "skipping event"),
        }
    }
    out.flush()
}

/// Sweep conntrack: a connection past its lifetime (idle, or closed by FIN/RST) gets a
/// `closed` record with its final counters and its entry is removed (user space expires
/// entries; the kernel only treats them as gone); a live one that saw packets since the
/// last sweep gets a `stats` record.
///
/// A packet that refreshes an entry between the read and the removal makes the kernel
/// judge that connection again as new: safe, and rare at second-scale lifetimes.
fn export_stats(
    pins: &Pins,
    namer: &mut Namer,
    exported: &mut HashMap<ConntrackKey, u64>,
    out: &mut impl RecordSink,
) -> Result<()> {
    let now = stats::monotonic_coarse_ns();
    let entries = stats::conntrack(pins)?;
    let mut seen = HashMap::with_capacity(entries.len());
    let mut expired = Vec::new();
    for (key, value) in &entries {
        let closed = value.is_expired(key.protocol, now);
        if closed {
            expired.push(*key);
        } else {
            seen.insert(*key, value.last_seen_ns);
            if exported.get(key) == Some(&value.last_seen_ns) {
                continue;
            }
        }
        match namer.conntrack(key, value) {
            Ok(mut record) => {
                if closed {
                    record.kind = FlowKind::Closed;
                }
                out.write(&record)?;
            }
            Err(e) => warn!(error = %e, "skipping conntrack entry"),
        }
    }
    stats::forget_connections(pins, &expired)?;
    *exported = seen;
    out.flush()
}

fn stdout_error(source: std::io::Error) -> Error {
    Error::Io {
        path: "flow output".into(),
        source,
    }
}

/// The names file, re-read only when its modification time changes.
struct NamesFile {
    path: Option<PathBuf>,
    seen: Option<SystemTime>,
}

impl NamesFile {
    fn new(path: Option<PathBuf>) -> Self {
        Self { path, seen: None }
    }

    fn load_if_changed(&mut self) -> Option<Names> {
        let path = self.path.as_ref()?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        if self.seen == Some(modified) {
            return None;
        }
        match Names::load(path) {
            Ok(names) => {
                self.seen = Some(modified);
                Some(names)
            }
            Err(e) => {
                warn!(error = %e, "keeping the previous names");
                None
            }
        }
    }
}
