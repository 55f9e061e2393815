//! The agent's Prometheus metrics (`palisade_` prefix), encoded as OpenMetrics text for the
//! HTTP endpoint in [`crate::http`].
//!
//! Everything is set from plain values ([`FlowRecord`]s, [`DatapathSnapshot`], totals of the
//! flow stream) so it is testable without a kernel; [`read_datapath`] is the one thin function
//! that reads those values from the pinned maps.
//!
//! Label cardinality stays bounded by what the cluster declares: namespaces, NetworkPolicy
//! names, modes, verdicts and map names; never pods, addresses or ports, which churn and
//! would grow the series without limit.
//!
//! Totals the datapath or another component keeps itself (per-CPU counters, the flow stream's
//! counts) are *stored* as they are, not added up here: the pinned counters outlive agent
//! restarts, and a total that goes down (a fresh install) reads as a counter reset to
//! Prometheus, which is exactly what happened.

use std::sync::atomic::Ordering;

use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, LpmTrie, MapData},
};
use enforcer_common::{
    addr::Addr,
    conntrack::{ConntrackKey, ConntrackValue},
    endpoint::EndpointInfo,
    event::Counter as DatapathCounter,
    maps,
    policy::{CidrKey, DeniedValue, IpcacheValue, PolicyKey, PolicyValue},
    prefilter::PrefilterCounter,
};
use model::{FlowKind, FlowRecord, Mode, Verdict};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use tracing::debug;

use crate::{
    datapath::{Pins, prefilter, stats, tables::open_pinned},
    error::{Error, Result},
    policy_source::Reload,
};

/// Labels of `palisade_flows_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    kind: &'static str,
    verdict: &'static str,
    mode: &'static str,
    /// The local pod's namespace; empty when the pod is not known.
    namespace: String,
    /// The NetworkPolicy (`namespace/name`) behind the verdict; empty when none.
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    counter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// One map's fill level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFill {
    /// The map's name, one of [`enforcer_common::maps`].
    pub map: &'static str,
    pub entries: u64,
    /// The map's `max_entries` as the kernel created it (a pinned map keeps its own size).
    pub capacity: u64,
}

/// What the datapath counted, as plain numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathSnapshot {
    /// Each per-CPU counter summed over CPUs (see [`stats::counters`]).
    pub counters: Vec<(DatapathCounter, u64)>,
    /// The uplink prefilter's counters (see [`prefilter::counters`]).
    pub prefilter: Vec<(PrefilterCounter, u64)>,
    pub maps: Vec<MapFill>,
}

/// How many endpoints run in each mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointModes {
    pub learn: u64,
    pub monitor: u64,
    pub enforce: u64,
}

/// The flow stream's totals since the agent started, and whether it is connected now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStreamTotals {
    pub sent: u64,
    pub acked: u64,
    pub resent: u64,
    pub lost: u64,
    pub connected: bool,
}

/// The datapath counters with a metric of their own; the others go to
/// `palisade_datapath_packets_by_class_total{class}`.
struct DatapathTotals {
    packets: Counter,
    connections: Counter,
    drops: Counter,
    denied: Counter,
    events_lost: Counter,
    by_class: Family<ClassLabels, Counter>,
}

struct FlowStream {
    sent: Counter,
    acked: Counter,
    resent: Counter,
    lost: Counter,
    connected: Gauge,
}

/// The agent's metrics and the registry that encodes them. Share it behind an `Arc`: every
/// method takes `&self`.
pub struct Metrics {
    registry: Registry,
    flows: Family<FlowLabels, Counter>,
    datapath: DatapathTotals,
    prefilter: Family<CounterLabels, Counter>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    endpoints: Family<ModeLabels, Gauge>,
    attach_errors: Family<ReasonLabels, Counter>,
    policy_reloads: Family<OutcomeLabels, Counter>,
    policy_refused: Gauge,
    network_policies_refused: Gauge,
    flow_stream: FlowStream,
    k8s_events_suppressed: Counter,
}

impl Metrics {
    /// Every family registered (and, for those without labels, present at 0 from the start,
    /// so dashboards and alerts see them before the first event).
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let flows = Family::default();
        registry.register(
            "flows",
            "Flow records written, by record kind, verdict, mode, the local pod's namespace \
             and the NetworkPolicy behind the verdict",
            flows.clone(),
        );
        let datapath = DatapathTotals {
            packets: Counter::default(),
            connections: Counter::default(),
            drops: Counter::default(),
            denied: Counter::default(),
            events_lost: Counter::default(),
            by_class: Family::default(),
        };
        registry.register(
            "datapath_packets",
            "Packets the pod programs ran on",
            datapath.packets.clone(),
        );
        registry.register(
            "datapath_connections",
            "Connections created in conntrack",
            datapath.connections.clone(),
        );
        registry.register(
            "drops",
            "Packets the datapath dropped",
            datapath.drops.clone(),
        );
        registry.register(
            "denied",
            "Connection attempts the datapath refused",
            datapath.denied.clone(),
        );
        registry.register(
            "events_lost",
            "Flow events that did not fit in the ring buffer (their flow records are missing)",
            datapath.events_lost.clone(),
        );
        registry.register(
            "datapath_packets_by_class",
            "Packets of note: unclassified, on interfaces that are not endpoints, later \
             fragments, spoofed sources, related ICMP errors",
            datapath.by_class.clone(),
        );
        let prefilter = Family::default();
        registry.register(
            "prefilter",
            "The uplink prefilter's counters: packets matched, dropped and passed by why, \
             connections recorded",
            prefilter.clone(),
        );
        let map_entries = Family::default();
        registry.register(
            "map_entries",
            "Entries in a datapath map (LRU maps count entries not yet evicted)",
            map_entries.clone(),
        );
        let map_capacity = Family::default();
        registry.register(
            "map_capacity",
            "Maximum entries of a datapath map",
            map_capacity.clone(),
        );
        let endpoints = Family::default();
        registry.register(
            "endpoints",
            "Endpoints attached on this node, by mode",
            endpoints.clone(),
        );
        let attach_errors = Family::default();
        registry.register(
            "attach_errors",
            "Failures to attach the datapath to an endpoint, by reason",
            attach_errors.clone(),
        );
        let policy_reloads = Family::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by outcome: applied, refused (the source is invalid; the last \
             good policy stays enforced) or failed (writing the maps failed; retried)",
            policy_reloads.clone(),
        );
        let policy_refused = Gauge::default();
        registry.register(
            "policy_refused",
            "1 while the latest policy source is refused and an older policy is enforced",
            policy_refused.clone(),
        );
        let network_policies_refused = Gauge::default();
        registry.register(
            "network_policies_refused",
            "NetworkPolicies whose current version does not convert (their last good \
             version, if any, stays enforced)",
            network_policies_refused.clone(),
        );
        let flow_stream = FlowStream {
            sent: Counter::default(),
            acked: Counter::default(),
            resent: Counter::default(),
            lost: Counter::default(),
            connected: Gauge::default(),
        };
        for (name, help, counter) in [
            (
                "flow_stream_sent",
                "Flow records sent to the learner",
                &flow_stream.sent,
            ),
            (
                "flow_stream_acked",
                "Flow records the learner acknowledged",
                &flow_stream.acked,
            ),
            (
                "flow_stream_resent",
                "Flow records sent again after a reconnect",
                &flow_stream.resent,
            ),
            (
                "flow_stream_lost",
                "Flow records dropped before the learner acknowledged them (buffer full)",
                &flow_stream.lost,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "flow_stream_connected",
            "1 while the flow stream to the learner is connected",
            flow_stream.connected.clone(),
        );
        let k8s_events_suppressed = Counter::default();
        registry.register(
            "k8s_events_suppressed",
            "Kubernetes Events not posted because of rate limiting or de-duplication",
            k8s_events_suppressed.clone(),
        );
        registry.register(
            "build",
            "The agent's version",
            Info::new(VersionLabels {
                version: version.to_owned(),
            }),
        );
        Self {
            registry,
            flows,
            datapath,
            prefilter,
            map_entries,
            map_capacity,
            endpoints,
            attach_errors,
            policy_reloads,
            policy_refused,
            network_policies_refused,
            flow_stream,
            k8s_events_suppressed,
        }
    }

    /// Count one flow record.
    pub fn record(&self, record: &FlowRecord) {
        let labels = FlowLabels {
            kind: kind_label(record.kind),
            verdict: verdict_label(record.verdict),
            mode: mode_label(record.mode),
            namespace: record
                .local
                .pod
                .as_deref()
                .and_then(|pod| pod.split_once('/'))
                .map(|(namespace, _)| namespace.to_owned())
                .unwrap_or_default(),
            policy: record
                .policy
                .as_deref()
                .map(policy_label)
                .unwrap_or_default(),
        };
        self.flows.get_or_create(&labels).inc();
    }

    /// Take the datapath's totals and map fill levels.
    pub fn observe_datapath(&self, snapshot: &DatapathSnapshot) {
        let d = &self.datapath;
        for &(counter, total) in &snapshot.counters {
            let own = match counter {
                DatapathCounter::Packets => Some(&d.packets),
                DatapathCounter::Connections => Some(&d.connections),
                DatapathCounter::Drops => Some(&d.drops),
                DatapathCounter::Denied => Some(&d.denied),
                DatapathCounter::EventsLost => Some(&d.events_lost),
                DatapathCounter::Unclassified
                | DatapathCounter::NotAnEndpoint
                | DatapathCounter::Fragments
                | DatapathCounter::Spoofed
                | DatapathCounter::Related => None,
            };
            match own {
                Some(metric) => store(metric, total),
                None => store(
                    &d.by_class.get_or_create(&ClassLabels {
                        class: counter.name(),
                    }),
                    total,
                ),
            }
        }
        for &(counter, total) in &snapshot.prefilter {
            store(
                &self.prefilter.get_or_create(&CounterLabels {
                    counter: counter.name(),
                }),
                total,
            );
        }
        for fill in &snapshot.maps {
            let labels = MapLabels { map: fill.map };
            self.map_entries
                .get_or_create(&labels)
                .set(gauge_value(fill.entries));
            self.map_capacity
                .get_or_create(&labels)
                .set(gauge_value(fill.capacity));
        }
    }

    /// How many endpoints run in each mode now.
    pub fn set_endpoints(&self, modes: EndpointModes) {
        for (mode, count) in [
            (Mode::Learn, modes.learn),
            (Mode::Monitor, modes.monitor),
            (Mode::Enforce, modes.enforce),
        ] {
            self.endpoints
                .get_or_create(&ModeLabels {
                    mode: mode_label(mode),
                })
                .set(gauge_value(count));
        }
    }

    /// Count a failed attach, by the kind of error (a bounded set: the error's variant).
    pub fn attach_error(&self, error: &Error) {
        let reason = match error {
            Error::NoSuchInterface { .. } => "no_such_interface",
            Error::Netns { .. } => "netns",
            Error::TcxUnsupported { .. } => "tcx_unsupported",
            Error::Attach { .. } => "attach",
            Error::Program { .. } => "program",
            Error::Map { .. } => "map",
            Error::Pin { .. } => "pin",
            Error::NotInstalled { .. } => "not_installed",
            _ => "other",
        };
        self.attach_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Count a policy reload; `palisade_policy_refused` follows the latest applied or refused
    /// one (a failed write says nothing about the source).
    pub fn policy_reload(&self, outcome: &Reload) {
        let outcome = match outcome {
            Reload::Applied(_) => {
                self.policy_refused.set(0);
                "applied"
            }
            Reload::Refused => {
                self.policy_refused.set(1);
                "refused"
            }
            Reload::Failed => "failed",
        };
        self.policy_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// How many of the cluster's NetworkPolicies are refused now.
    pub fn set_network_policies_refused(&self, refused: u64) {
        self.network_policies_refused
            .set(i64::try_from(refused).unwrap_or(i64::MAX));
    }

    /// The flow stream's own totals.
    pub fn set_flow_stream(&self, totals: FlowStreamTotals) {
        let s = &self.flow_stream;
        store(&s.sent, totals.sent);
        store(&s.acked, totals.acked);
        store(&s.resent, totals.resent);
        store(&s.lost, totals.lost);
        s.connected.set(i64::from(totals.connected));
    }

    /// The total of Kubernetes Events suppressed, as their publisher counts it.
    pub fn set_k8s_events_suppressed(&self, total: u64) {
        store(&self.k8s_events_suppressed, total);
    }

    /// Everything, as OpenMetrics text (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label
        // encoder, and a partial page is still more useful than none.
        if let Err(e) = encode(&mut text, &self.registry) {
            debug!(error = %e, "encoding metrics");
        }
        text
    }
}

/// The learner service's metrics (`palisade learn serve`): what agents streamed to it and
/// what it proposed.
pub struct LearnerMetrics {
    registry: Registry,
    batches: Family<OutcomeLabels, Counter>,
    streams: Counter,
    sessions: Gauge,
    proposals: Family<OutcomeLabels, Counter>,
    rules: Gauge,
    policies: Gauge,
}

/// The collector's own totals, as `flow_stream::CollectorStats` counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectorTotals {
    pub accepted: u64,
    pub duplicates: u64,
    pub sink_errors: u64,
    pub streams: u64,
    pub sessions: u64,
}

impl LearnerMetrics {
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::with_prefix("palisade");
        registry.register(
            "build",
            "The learner's version",
            Info::new(VersionLabels {
                version: version.to_owned(),
            }),
        );
        let batches = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "learner_batches",
            "Agents' batches by outcome: accepted (stored), duplicate (sent again after a \
             lost ack; acked, not stored twice) or sink_error (not stored, not acked)",
            batches.clone(),
        );
        let streams = Counter::default();
        registry.register("learner_streams", "Agent streams opened", streams.clone());
        let sessions = Gauge::default();
        registry.register(
            "learner_sessions",
            "Agent sessions the collector remembers",
            sessions.clone(),
        );
        let proposals = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "learner_proposals",
            "Proposals by outcome: written, empty (nothing learned yet) or failed",
            proposals.clone(),
        );
        let rules = Gauge::default();
        registry.register(
            "learner_rules",
            "Rules in the baseline at the last proposal",
            rules.clone(),
        );
        let policies = Gauge::default();
        registry.register(
            "learner_policies",
            "Policies in the last proposal",
            policies.clone(),
        );
        Self {
            registry,
            batches,
            streams,
            sessions,
            proposals,
            rules,
            policies,
        }
    }

    /// The collector's totals (set, not added: it counts them itself).
    pub fn set_collector(&self, totals: CollectorTotals) {
        for (outcome, total) in [
            ("accepted", totals.accepted),
            ("duplicate", totals.duplicates),
            ("sink_error", totals.sink_errors),
        ] {
            store(
                &self.batches.get_or_create(&OutcomeLabels { outcome }),
                total,
            );
        }
        store(&self.streams, totals.streams);
        self.sessions.set(gauge_value(totals.sessions));
    }

    /// A proposal was written from `rules` rules as `policies` policies.
    pub fn proposed(&self, rules: usize, policies: usize) {
        self.proposals
            .get_or_create(&OutcomeLabels { outcome: "written" })
            .inc();
        self.rules.set(gauge_value(rules as u64));
        self.policies.set(gauge_value(policies as u64));
    }

    /// A proposal was not made: `empty` (nothing learned) or `failed`.
    pub fn not_proposed(&self, outcome: &'static str) {
        self.proposals
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

impl crate::http::Exposition for LearnerMetrics {
    fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &self.registry) {
            debug!(error = %e, "encoding metrics");
        }
        text
    }
}

/// Read the per-CPU counters and map fill levels from the pinned datapath.
///
/// Counting a map's entries walks its keys, one syscall each: cheap for the endpoint,
/// identity, CIDR, policy, denied and prefilter maps, up to a few hundred milliseconds for
/// a full `CONNTRACK`. So conntrack is only walked when `conntrack_entries` is `None`; the
/// agent, which dumps conntrack on its own tick anyway, passes the count it saw.
pub fn read_datapath(pins: &Pins, conntrack_entries: Option<u64>) -> Result<DatapathSnapshot> {
    let conntrack = match conntrack_entries {
        Some(entries) => MapFill {
            map: maps::CONNTRACK,
            entries,
            capacity: capacity(pins, maps::CONNTRACK)?,
        },
        None => hash_fill::<ConntrackKey, ConntrackValue>(pins, maps::CONNTRACK)?,
    };
    Ok(DatapathSnapshot {
        counters: stats::counters(pins)?,
        prefilter: prefilter::counters(pins)?,
        maps: vec![
            hash_fill::<u32, EndpointInfo>(pins, maps::ENDPOINTS)?,
            conntrack,
            hash_fill::<Addr, IpcacheValue>(pins, maps::IPCACHE)?,
            lpm_fill::<CidrKey, u32>(pins, maps::CIDRS)?,
            lpm_fill::<PolicyKey, PolicyValue>(pins, maps::POLICY)?,
            hash_fill::<ConntrackKey, DeniedValue>(pins, maps::DENIED)?,
            lpm_fill::<CidrKey, u32>(pins, maps::PREFILTER)?,
        ],
    })
}

fn hash_fill<K: Pod, V: Pod>(pins: &Pins, name: &'static str) -> Result<MapFill> {
    let map: BpfHashMap<MapData, K, V> = open_pinned(pins, name)?;
    let entries = count(name, map.keys())?;
    Ok(MapFill {
        map: name,
        entries,
        capacity: capacity(pins, name)?,
    })
}

fn lpm_fill<K: Pod, V: Pod>(pins: &Pins, name: &'static str) -> Result<MapFill> {
    let map: LpmTrie<MapData, K, V> = open_pinned(pins, name)?;
    let entries = count(name, map.keys())?;
    Ok(MapFill {
        map: name,
        entries,
        capacity: capacity(pins, name)?,
    })
}

fn count<T>(
    name: &'static str,
    keys: impl Iterator<Item = std::result::Result<T, aya::maps::MapError>>,
) -> Result<u64> {
    let mut n = 0;
    for key in keys {
        key.map_err(|source| Error::Map {
            map: name,
            action: "counting entries".to_owned(),
            source: Box::new(source),
        })?;
        n += 1;
    }
    Ok(n)
}

/// The pinned map's `max_entries`, from the kernel (the datapath may have been installed
/// with other sizes than this agent's defaults).
fn capacity(pins: &Pins, name: &'static str) -> Result<u64> {
    let path = pins.map(name);
    let err = |source| Error::Map {
        map: name,
        action: format!("reading the size of {}", path.display()),
        source: Box::new(source),
    };
    let info = MapData::from_pin(&path)
        .and_then(|data| data.info())
        .map_err(err)?;
    Ok(u64::from(info.max_entries()))
}

/// Set a counter to a total counted elsewhere.
fn store(counter: &Counter, total: u64) {
    counter.inner().store(total, Ordering::Relaxed);
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The NetworkPolicy of a rule name such as `shop/api-allow ingress[0]`: the rule index
/// would multiply the series for little insight, the policy is what people act on.
fn policy_label(rule: &str) -> String {
    rule.split_once(' ')
        .map_or(rule, |(policy, _)| policy)
        .to_owned()
}

const fn kind_label(kind: FlowKind) -> &'static str {
    match kind {
        FlowKind::New => "new",
        FlowKind::Rejudged => "rejudged",
        FlowKind::Stats => "stats",
        FlowKind::Closed => "closed",
    }
}

const fn verdict_label(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::WouldDeny => "would-deny",
    }
}

const fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Learn => "learn",
        Mode::Monitor => "monitor",
        Mode::Enforce => "enforce",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use model::{Direction, Peer, Protocol};

    use super::*;
    use crate::datapath::writer::Changes;

    fn peer(ip: &str, pod: Option<&str>) -> Peer {
        Peer {
            ip: ip.parse().unwrap(),
            port: 8080,
            pod: pod.map(str::to_owned),
            dns_name: None,
            service: None,
            workload: None,
            labels: BTreeMap::new(),
        }
    }

    fn flow(verdict: Verdict, mode: Mode, pod: Option<&str>, policy: Option<&str>) -> FlowRecord {
        FlowRecord {
            time: "2026-11-28T10:00:00.000Z".into(),
            first_seen: None,
            kind: FlowKind::New,
            interface: "pl-x1".into(),
            ifindex: 7,
            endpoint: 7,
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            local: peer("10.244.0.2", pod),
            remote: peer("10.244.0.3", None),
            verdict,
            mode,
            rule: policy.map(|_| 3),
            policy: policy.map(str::to_owned),
            reason: None,
            counters: None,
        }
    }

    /// The encoded lines naming `metric` (samples only, not `# HELP`/`# TYPE`).
    fn samples(text: &str, metric: &str) -> Vec<String> {
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn flow_records_are_counted_by_namespace_and_policy_not_by_pod() {
        let metrics = Metrics::new("1.2.3");
        let allowed = flow(
            Verdict::Allow,
            Mode::Enforce,
            Some("shop/api-7d9f"),
            Some("shop/api-allow ingress[0]"),
        );
        metrics.record(&allowed);
        // Another pod and another rule of the same policy: the same series.
        metrics.record(&flow(
            Verdict::Allow,
            Mode::Enforce,
            Some("shop/api-b2c4"),
            Some("shop/api-allow ingress[1]"),
        ));
        metrics.record(&flow(
            Verdict::WouldDeny,
            Mode::Monitor,
            Some("db/pg-0"),
            None,
        ));
        let mut stats = allowed.clone();
        stats.kind = FlowKind::Stats;
        metrics.record(&stats);
        metrics.record(&flow(Verdict::Deny, Mode::Enforce, None, None));

        let text = metrics.encode();
        assert_eq!(
            samples(&text, "palisade_flows_total"),
            [
                r#"palisade_flows_total{kind="new",verdict="allow",mode="enforce",namespace="shop",policy="shop/api-allow"} 2"#,
                r#"palisade_flows_total{kind="new",verdict="deny",mode="enforce",namespace="",policy=""} 1"#,
                r#"palisade_flows_total{kind="new",verdict="would-deny",mode="monitor",namespace="db",policy=""} 1"#,
                r#"palisade_flows_total{kind="stats",verdict="allow",mode="enforce",namespace="shop",policy="shop/api-allow"} 1"#,
            ]
        );
        assert!(text.contains("# TYPE palisade_flows counter\n"), "{text}");
        assert!(text.contains("# HELP palisade_flows Flow records written"));
        assert!(!text.contains("api-7d9f") && !text.contains("10.244."));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn unlabelled_metrics_and_build_info_are_there_from_the_start() {
        let text = Metrics::new("0.1.0").encode();
        for line in [
            r#"palisade_build_info{version="0.1.0"} 1"#,
            "palisade_drops_total 0",
            "palisade_denied_total 0",
            "palisade_events_lost_total 0",
            "palisade_policy_refused 0",
            "palisade_flow_stream_sent_total 0",
            "palisade_flow_stream_connected 0",
            "palisade_k8s_events_suppressed_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn datapath_totals_and_fill_levels_are_reflected() {
        let metrics = Metrics::new("0.1.0");
        let mut snapshot = DatapathSnapshot {
            counters: DatapathCounter::ALL
                .iter()
                .map(|&c| (c, 100 + c as u64))
                .collect(),
            prefilter: vec![(PrefilterCounter::Dropped, 42)],
            maps: vec![
                MapFill {
                    map: maps::CONNTRACK,
                    entries: 1500,
                    capacity: u64::from(maps::CONNTRACK_MAX),
                },
                MapFill {
                    map: maps::ENDPOINTS,
                    entries: 12,
                    capacity: u64::from(maps::ENDPOINTS_MAX),
                },
            ],
        };
        metrics.observe_datapath(&snapshot);
        // Totals are the datapath's own: observing again must not add them up.
        snapshot.counters[DatapathCounter::Drops as usize].1 = 205;
        metrics.observe_datapath(&snapshot);

        let text = metrics.encode();
        for line in [
            "palisade_datapath_packets_total 100",
            "palisade_datapath_connections_total 101",
            "palisade_drops_total 205",
            "palisade_events_lost_total 103",
            "palisade_denied_total 109",
            r#"palisade_datapath_packets_by_class_total{class="unclassified"} 104"#,
            r#"palisade_datapath_packets_by_class_total{class="spoofed"} 107"#,
            r#"palisade_prefilter_total{counter="dropped"} 42"#,
            r#"palisade_map_entries{map="CONNTRACK"} 1500"#,
            r#"palisade_map_capacity{map="CONNTRACK"} 262144"#,
            r#"palisade_map_entries{map="ENDPOINTS"} 12"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // The counters with a metric of their own are not repeated by class.
        assert_eq!(
            samples(&text, "palisade_datapath_packets_by_class_total").len(),
            5
        );
    }

    #[test]
    fn the_learners_collector_and_proposals_are_reflected() {
        use crate::http::Exposition as _;
        let m = LearnerMetrics::new("1.2.3");
        m.set_collector(CollectorTotals {
            accepted: 7,
            duplicates: 2,
            sink_errors: 1,
            streams: 3,
            sessions: 2,
        });
        // Set again, not added: the collector counts them itself.
        m.set_collector(CollectorTotals {
            accepted: 8,
            duplicates: 2,
            sink_errors: 1,
            streams: 3,
            sessions: 2,
        });
        m.proposed(120, 14);
        m.not_proposed("empty");
        let text = m.encode();
        for line in [
            r#"palisade_learner_batches_total{outcome="accepted"} 8"#,
            r#"palisade_learner_batches_total{outcome="duplicate"} 2"#,
            r#"palisade_learner_batches_total{outcome="sink_error"} 1"#,
            "palisade_learner_streams_total 3",
            "palisade_learner_sessions 2",
            r#"palisade_learner_proposals_total{outcome="written"} 1"#,
            r#"palisade_learner_proposals_total{outcome="empty"} 1"#,
            "palisade_learner_rules 120",
            "palisade_learner_policies 14",
            r#"palisade_build_info{version="1.2.3"} 1"#,
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing:\n{text}"
            );
        }
        assert!(
            !text.contains("palisade_flows_total"),
            "no agent families in the learner's"
        );
    }

    #[test]
    fn agent_state_is_reflected() {
        let metrics = Metrics::new("0.1.0");
        metrics.set_endpoints(EndpointModes {
            learn: 1,
            monitor: 0,
            enforce: 4,
        });
        metrics.attach_error(&Error::TcxUnsupported {
            kernel: "6.1".into(),
        });
        metrics.attach_error(&Error::NotAnEndpoint {
            interface: "eth0".into(),
        });
        metrics.policy_reload(&Reload::Refused);
        metrics.policy_reload(&Reload::Failed);
        metrics.set_flow_stream(FlowStreamTotals {
            sent: 10,
            acked: 8,
            resent: 2,
            lost: 1,
            connected: true,
        });
        metrics.set_k8s_events_suppressed(6);

        let text = metrics.encode();
        assert_eq!(
            samples(&text, "palisade_endpoints"),
            [
                r#"palisade_endpoints{mode="enforce"} 4"#,
                r#"palisade_endpoints{mode="learn"} 1"#,
                r#"palisade_endpoints{mode="monitor"} 0"#,
            ]
        );
        assert_eq!(
            samples(&text, "palisade_attach_errors_total"),
            [
                r#"palisade_attach_errors_total{reason="other"} 1"#,
                r#"palisade_attach_errors_total{reason="tcx_unsupported"} 1"#,
            ]
        );
        for line in [
            r#"palisade_policy_reloads_total{outcome="refused"} 1"#,
            r#"palisade_policy_reloads_total{outcome="failed"} 1"#,
            "palisade_policy_refused 1",
            "palisade_flow_stream_sent_total 10",
            "palisade_flow_stream_acked_total 8",
            "palisade_flow_stream_resent_total 2",
            "palisade_flow_stream_lost_total 1",
            "palisade_flow_stream_connected 1",
            "palisade_k8s_events_suppressed_total 6",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }

        // A later good policy clears the refusal.
        metrics.policy_reload(&Reload::Applied(Changes::default()));
        let text = metrics.encode();
        assert!(text.lines().any(|l| l == "palisade_policy_refused 0"));
        assert!(
            text.lines()
                .any(|l| l == r#"palisade_policy_reloads_total{outcome="applied"} 1"#)
        );
    }

    #[test]
    fn policy_label_keeps_the_network_policy() {
        assert_eq!(policy_label("shop/api-allow egress[12]"), "shop/api-allow");
        assert_eq!(policy_label("node-rule"), "node-rule");
    }
}
