//! Flow records aggregated into a baseline: one entry per (workload, direction, peer,
//! protocol, server port), with the evidence behind it.
//!
//! - The server side of a connection comes from the record's direction (the datapath's
//!   conntrack knows who opened it), so ephemeral client ports never become rules.
//! - Peers are workloads (in-cluster), bare pods, the pod's own node, or external
//!   addresses, kept exact (with the DNS name the pod looked them up by) — widening is a
//!   separate, stated step.
//! - A connection counts once per endpoint that saw it (its `new` record); bytes come from
//!   its `closed` record (final counters), so periodic `stats` records never double count.
//!
//! Records carry labels and workload names, never node-local numbers, so baselines of
//! several nodes merge ([`Baseline::merge`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use model::{Direction, FlowKind, FlowRecord, Protocol, Reason};

/// Who the workload talks to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    /// Pods of a workload (`namespace/Kind/name`).
    Workload(String),
    /// The pod's own node (kubelet probes; always allowed, recorded for completeness).
    Host,
    /// An address outside the cluster, exactly, with the name it was looked up by.
    External {
        ip: IpAddr,
        dns_name: Option<String>,
    },
}

/// One learned rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// The workload the rule belongs to (`namespace/Kind/name`).
    pub workload: String,
    /// Egress: the workload opened the connections; ingress: the peer did.
    pub direction: Direction,
    pub peer: PeerKey,
    pub protocol: Protocol,
    /// The server's port (the peer's for egress, the workload's for ingress); `None` for
    /// protocols without ports.
    pub port: Option<u16>,
}

/// What a rule rests on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Connections seen (each once per endpoint that judged it).
    pub connections: u64,
    /// Bytes both ways of the connections that closed.
    pub bytes: u64,
    /// Client pods (`namespace/name`) seen opening these connections.
    pub source_pods: BTreeSet<String>,
    /// RFC 3339 times of the first and last connection.
    pub first_seen: String,
    pub last_seen: String,
    /// The UTC days (`YYYY-MM-DD`) connections were seen on.
    pub days: BTreeSet<String>,
}

impl Evidence {
    /// How sure the baseline is that this rule is part of normal behaviour, in [0, 1):
    ///
    /// `confidence = (1 - e^(-connections / 10)) * (0.5 + 0.5 * (d - 1) / 6)`, with `d` the
    /// days seen, counted from 1 to 7.
    ///
    /// The first factor grows with how often the connection happens (10 connections give
    /// 0.63, 30 give 0.95); the second with over how many days it was seen (a connection
    /// seen on one day only keeps half its weight; on seven days or more, all of it), so a
    /// one-off burst never reads as established behaviour.
    pub fn confidence(&self) -> f64 {
        let often = 1.0 - (-(self.connections as f64) / 10.0).exp();
        let days = self.days.len().clamp(1, 7) as f64;
        often * (0.5 + 0.5 * (days - 1.0) / 6.0)
    }

    fn merge(&mut self, other: &Evidence) {
        self.connections += other.connections;
        self.bytes += other.bytes;
        self.source_pods.extend(other.source_pods.iter().cloned());
        self.days.extend(other.days.iter().cloned());
        if self.first_seen.is_empty()
            || (!other.first_seen.is_empty() && other.first_seen < self.first_seen)
        {
            self.first_seen.clone_from(&other.first_seen);
        }
        if other.last_seen > self.last_seen {
            self.last_seen.clone_from(&other.last_seen);
        }
    }
}

/// Rules and their evidence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    pub rules: BTreeMap<RuleKey, Evidence>,
    /// Records that could not be attributed to a workload (no pod name), counted.
    pub unattributed: u64,
}

impl Baseline {
    /// Count one flow record in.
    pub fn observe(&mut self, record: &FlowRecord) {
        if !matches!(record.kind, FlowKind::New | FlowKind::Closed) {
            return;
        }
        let Some(workload) = workload_of(&record.local) else {
            self.unattributed += 1;
            return;
        };
        let peer = if record.reason == Some(Reason::Host) {
            PeerKey::Host
        } else if let Some(w) = workload_of(&record.remote) {
            PeerKey::Workload(w)
        } else {
            PeerKey::External {
                ip: record.remote.ip,
                dns_name: record.remote.dns_name.clone(),
            }
        };
        let key = RuleKey {
            workload,
            direction: record.direction,
            peer,
            protocol: record.protocol,
            port: record.server_port(),
        };
        let evidence = self.rules.entry(key).or_default();
        match record.kind {
            FlowKind::New => {
                evidence.connections += 1;
                let client = match record.direction {
                    Direction::Egress => &record.local,
                    Direction::Ingress => &record.remote,
                };
                if let Some(pod) = &client.pod {
                    evidence.source_pods.insert(pod.clone());
                }
                if evidence.first_seen.is_empty() || record.time < evidence.first_seen {
                    evidence.first_seen.clone_from(&record.time);
                }
                if record.time > evidence.last_seen {
                    evidence.last_seen.clone_from(&record.time);
                }
                if let Some(day) = record.time.get(..10) {
                    evidence.days.insert(day.to_owned());
                }
            }
            FlowKind::Closed => {
                if let Some(c) = record.counters {
                    evidence.bytes += c.bytes_from_pod + c.bytes_to_pod;
                }
            }
            FlowKind::Stats | FlowKind::Rejudged => {}
        }
    }

    /// Is the baseline stable at `now`: has no rule appeared for `quiet`? (An empty baseline
    /// is not: nothing was learned yet.)
    pub fn is_stable(&self, now: SystemTime, quiet: Duration) -> bool {
        let since = cutoff(now, quiet);
        !self.rules.is_empty() && self.rules.values().all(|e| e.first_seen < since)
    }

    /// Remove the rules not seen for `max_age` at `now`; returns them.
    pub fn expire(&mut self, now: SystemTime, max_age: Duration) -> Vec<(RuleKey, Evidence)> {
        let before = cutoff(now, max_age);
        let (old, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.rules)
            .into_iter()
            .partition(|(_, e)| e.last_seen < before);
        self.rules = kept;
        old.into_iter().collect()
    }

    /// Add another baseline (another node's, another period's) to this one.
    pub fn merge(&mut self, other: &Baseline) {
        for (key, evidence) in &other.rules {
            self.rules.entry(key.clone()).or_default().merge(evidence);
        }
        self.unattributed += other.unattributed;
    }
}

/// `now - age` in the records' time format (RFC 3339, UTC, milliseconds), which orders as
/// text the way it orders as time.
fn cutoff(now: SystemTime, age: Duration) -> String {
    let at = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(at).to_string()
}

/// A peer's workload: its own, or `namespace/Pod/name` for a pod without one.
fn workload_of(peer: &model::Peer) -> Option<String> {
    if let Some(w) = &peer.workload {
        return Some(w.clone());
    }
    let pod = peer.pod.as_ref()?;
    let (namespace, name) = pod.split_once('/')?;
    Some(format!("{namespace}/Pod/{name}"))
}

#[cfg(test)]
mod tests {
    use model::{Counters, Mode, Peer, Verdict};

    use super::*;

    fn peer(ip: &str, port: u16, pod: Option<&str>, workload: Option<&str>) -> Peer {
        Peer {
            ip: ip.parse().unwrap(),
            port,
            pod: pod.map(str::to_owned),
            dns_name: None,
            workload: workload.map(str::to_owned),
            labels: BTreeMap::new(),
        }
    }

    /// `frontend-1` (a pod of shop/Deployment/frontend) connecting from `client_port` to
    /// the api pod on 8080, as frontend's endpoint records it.
    fn egress(time: &str, pod: &str, client_port: u16) -> FlowRecord {
        FlowRecord {
            time: time.into(),
            kind: FlowKind::New,
            interface: "pl-x-1".into(),
            ifindex: 7,
            endpoint: 7,
            direction: Direction::Egress,
            protocol: Protocol::Tcp,
            local: peer(
                "10.244.0.2",
                client_port,
                Some(pod),
                Some("shop/Deployment/frontend"),
            ),
            remote: peer(
                "10.244.0.3",
                8080,
                Some("shop/api-1"),
                Some("shop/Deployment/api"),
            ),
            verdict: Verdict::Allow,
            mode: Mode::Learn,
            rule: None,
            policy: None,
            reason: Some(Reason::Learn),
            counters: None,
        }
    }

    fn frontend_to_api() -> RuleKey {
        RuleKey {
            workload: "shop/Deployment/frontend".into(),
            direction: Direction::Egress,
            peer: PeerKey::Workload("shop/Deployment/api".into()),
            protocol: Protocol::Tcp,
            port: Some(8080),
        }
    }

    #[test]
    fn ephemeral_ports_fold_into_one_rule_with_its_evidence() {
        let mut b = Baseline::default();
        b.observe(&egress(
            "2026-11-27T09:00:00.000Z",
            "shop/frontend-a",
            40001,
        ));
        b.observe(&egress(
            "2026-11-28T10:00:00.000Z",
            "shop/frontend-b",
            51234,
        ));
        b.observe(&egress(
            "2026-11-28T08:00:00.000Z",
            "shop/frontend-a",
            40002,
        ));
        // Periodic counters do not count as connections or bytes; the close does.
        let mut stats = egress("2026-11-28T10:00:05.000Z", "shop/frontend-a", 40002);
        stats.kind = FlowKind::Stats;
        stats.counters = Some(Counters {
            bytes_from_pod: 100,
            bytes_to_pod: 900,
            ..Counters::default()
        });
        b.observe(&stats);
        let mut closed = stats.clone();
        closed.kind = FlowKind::Closed;
        b.observe(&closed);
        assert_eq!(b.rules.len(), 1);
        let e = &b.rules[&frontend_to_api()];
        assert_eq!(e.connections, 3);
        assert_eq!(e.bytes, 1000);
        assert_eq!(
            e.source_pods,
            BTreeSet::from(["shop/frontend-a".to_owned(), "shop/frontend-b".to_owned()])
        );
        assert_eq!(e.first_seen, "2026-11-27T09:00:00.000Z");
        assert_eq!(e.last_seen, "2026-11-28T10:00:00.000Z");
        assert_eq!(e.days.len(), 2);
    }

    #[test]
    fn the_server_side_sets_the_port_and_the_client_is_the_source() {
        // The api's endpoint sees the same connection as ingress on its own port.
        let mut b = Baseline::default();
        let mut ingress = egress("2026-11-28T10:00:00.000Z", "shop/frontend-a", 40001);
        ingress.direction = Direction::Ingress;
        std::mem::swap(&mut ingress.local, &mut ingress.remote);
        b.observe(&ingress);
        let (key, e) = b.rules.iter().next().unwrap();
        assert_eq!(key.workload, "shop/Deployment/api");
        assert_eq!(key.port, Some(8080));
        assert_eq!(
            key.peer,
            PeerKey::Workload("shop/Deployment/frontend".into())
        );
        assert_eq!(
            e.source_pods,
            BTreeSet::from(["shop/frontend-a".to_owned()])
        );
    }

    #[test]
    fn external_peers_stay_exact_with_their_names_and_the_node_is_its_own_peer() {
        let mut b = Baseline::default();
        let mut out = egress("2026-11-28T10:00:00.000Z", "shop/frontend-a", 40001);
        out.remote = peer("203.0.113.10", 443, None, None);
        out.remote.dns_name = Some("payments.example.com".into());
        b.observe(&out);
        let mut probe = egress("2026-11-28T10:00:00.000Z", "shop/frontend-a", 40001);
        probe.direction = Direction::Ingress;
        probe.remote = peer("169.254.1.1", 52000, None, None);
        probe.local.port = 8080;
        probe.reason = Some(Reason::Host);
        b.observe(&probe);
        let peers: Vec<&PeerKey> = b.rules.keys().map(|k| &k.peer).collect();
        assert!(peers.contains(&&PeerKey::External {
            ip: "203.0.113.10".parse().unwrap(),
            dns_name: Some("payments.example.com".into()),
        }));
        assert!(peers.contains(&&PeerKey::Host));
    }

    #[test]
    fn records_without_a_pod_are_counted_apart_and_bare_pods_are_their_own_workload() {
        let mut b = Baseline::default();
        let mut unnamed = egress("2026-11-28T10:00:00.000Z", "x", 1);
        unnamed.local.pod = None;
        unnamed.local.workload = None;
        b.observe(&unnamed);
        assert_eq!((b.rules.len(), b.unattributed), (0, 1));
        let mut bare = egress("2026-11-28T10:00:00.000Z", "shop/debug", 1);
        bare.local.workload = None;
        b.observe(&bare);
        assert_eq!(b.rules.keys().next().unwrap().workload, "shop/Pod/debug");
    }

    #[test]
    fn confidence_grows_with_connections_and_days() {
        let mut e = Evidence {
            connections: 1,
            ..Evidence::default()
        };
        e.days.insert("2026-11-28".into());
        let once = e.confidence();
        e.connections = 30;
        let often = e.confidence();
        for d in 1..7 {
            e.days.insert(format!("2026-11-2{d}"));
        }
        let weekly = e.confidence();
        assert!(
            once < often && often < weekly && weekly < 1.0,
            "{once} {often} {weekly}"
        );
        assert!(often <= 0.5 + 1e-9, "one day keeps at most half: {often}");
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn a_baseline_is_stable_once_no_rule_appeared_for_a_while_and_old_rules_expire() {
        let day = Duration::from_secs(86_400);
        let mut b = Baseline::default();
        assert!(
            !b.is_stable(at("2026-11-28T00:00:00Z"), day),
            "nothing learned yet"
        );
        b.observe(&egress(
            "2026-11-20T10:00:00.000Z",
            "shop/frontend-a",
            40001,
        ));
        b.observe(&egress(
            "2026-11-27T10:00:00.000Z",
            "shop/frontend-a",
            40002,
        ));
        assert!(b.is_stable(at("2026-11-28T00:00:00Z"), day));
        // A new rule resets it.
        let mut new_peer = egress("2026-11-27T12:00:00.000Z", "shop/frontend-a", 40003);
        new_peer.remote.port = 9090;
        b.observe(&new_peer);
        assert!(!b.is_stable(at("2026-11-28T00:00:00Z"), day));
        assert!(b.is_stable(at("2026-11-28T13:00:00Z"), day));
        // Not seen for 3 days: gone, and returned; seen yesterday: kept.
        let mut stale = egress("2026-11-21T10:00:00.000Z", "shop/frontend-a", 40004);
        stale.remote = peer("203.0.113.10", 443, None, None);
        b.observe(&stale);
        let expired = b.expire(at("2026-11-28T13:00:00Z"), 3 * day);
        assert_eq!(expired.len(), 1);
        assert_eq!(b.rules.len(), 2);
    }

    #[test]
    fn merging_baselines_is_adding_them_up() {
        let mut node_a = Baseline::default();
        node_a.observe(&egress(
            "2026-11-28T10:00:00.000Z",
            "shop/frontend-a",
            40001,
        ));
        let mut node_b = Baseline::default();
        node_b.observe(&egress(
            "2026-11-26T10:00:00.000Z",
            "shop/frontend-b",
            40001,
        ));
        let mut ab = node_a.clone();
        ab.merge(&node_b);
        let mut ba = node_b.clone();
        ba.merge(&node_a);
        assert_eq!(ab, ba);
        let e = &ab.rules[&frontend_to_api()];
        assert_eq!(
            (e.connections, e.source_pods.len(), e.days.len()),
            (2, 2, 2)
        );
        assert_eq!(e.first_seen, "2026-11-26T10:00:00.000Z");
        assert_eq!(e.last_seen, "2026-11-28T10:00:00.000Z");
    }
}
