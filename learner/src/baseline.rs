//! Flow records aggregated into a baseline: one entry per (workload, direction, peer,
//! protocol, server port), with the evidence behind it.
//!
//! - The server side of a connection comes from the record's direction (the datapath's
//!   conntrack knows who opened it), so ephemeral client ports never become rules.
//! - Peers are workloads (in-cluster), bare pods, Services (a connection to a ClusterIP,
//!   as the client's endpoint saw it before the node translated it; the proposal resolves
//!   it to the backing workloads and target port), the pod's own node, or external
//!   addresses, kept exact with the DNS name the pod looked them up by: widening them is a
//!   separate, stated step ([`crate::widen`]).
//! - A connection counts once per endpoint that saw it (its `new` record); bytes come from
//!   its `closed` record (final counters), so periodic `stats` records never double count.
//!
//! Records carry labels and workload names, never node-local numbers, so baselines of
//! several nodes merge ([`Rules::merge`]). The same aggregation, keyed by hour as well,
//! gives the [`Batch`]es the store persists.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use model::{Direction, FlowKind, Protocol};
use rustc_hash::FxBuildHasher;

use crate::{
    evidence::Evidence,
    intern::{Interner, Name},
    observation::Observation,
};

/// Who the workload talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    /// Pods of a workload (`namespace/Kind/name`; a bare pod is `namespace/Pod/name`).
    Workload(Name),
    /// A Service's ClusterIP (`namespace/name`), on the Service's port.
    Service(Name),
    /// The pod's own node (kubelet probes; always allowed, recorded for completeness).
    Host,
    /// An address outside the cluster, exactly, with the name it was looked up by.
    External { ip: IpAddr, dns_name: Option<Name> },
}

/// One learned rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// The workload the rule belongs to (`namespace/Kind/name`).
    pub workload: Name,
    /// Egress: the workload opened the connections; ingress: the peer did.
    pub direction: Direction,
    pub protocol: Protocol,
    /// The server's port (the peer's for egress, the workload's for ingress); `None` for
    /// protocols without ports.
    pub port: Option<u16>,
    pub peer: PeerKey,
}

/// An hour, as hours since 1970-01-01 UTC: the store's time bucket.
pub type Hour = u32;

pub const HOUR_MS: i64 = 3_600_000;

/// How a rule is keyed in an aggregate: by itself, or by itself and the hour.
pub trait Keyed: Copy + Eq + Hash {
    fn key(rule: RuleKey, time_ms: i64) -> Self;
    fn rule(&self) -> RuleKey;
    fn with_rule(self, rule: RuleKey) -> Self;
}

impl Keyed for RuleKey {
    fn key(rule: RuleKey, _: i64) -> Self {
        rule
    }

    fn rule(&self) -> RuleKey {
        *self
    }

    fn with_rule(self, rule: RuleKey) -> Self {
        rule
    }
}

impl Keyed for (RuleKey, Hour) {
    fn key(rule: RuleKey, time_ms: i64) -> Self {
        (
            rule,
            u32::try_from(time_ms.div_euclid(HOUR_MS)).unwrap_or(0),
        )
    }

    fn rule(&self) -> RuleKey {
        self.0
    }

    fn with_rule(self, rule: RuleKey) -> Self {
        (rule, self.1)
    }
}

/// Rules and their evidence, with the names they use.
#[derive(Clone, Debug)]
pub struct Rules<K> {
    pub names: Interner,
    pub rules: HashMap<K, Evidence, FxBuildHasher>,
    /// Records that could not be attributed to a workload (no pod name), counted.
    pub unattributed: u64,
    /// Scratch space for bare pods' workload names.
    buf: String,
}

impl<K> Default for Rules<K> {
    fn default() -> Self {
        Self {
            names: Interner::default(),
            rules: HashMap::default(),
            unattributed: 0,
            buf: String::new(),
        }
    }
}

/// The baseline: one entry per rule.
pub type Baseline = Rules<RuleKey>;

/// Rules per hour: what ingestion hands to the store.
pub type Batch = Rules<(RuleKey, Hour)>;

impl<K: Keyed> Rules<K> {
    /// Count one flow record in.
    pub fn observe(&mut self, obs: &Observation<'_>) {
        self.observe_aggregate(obs, 1);
    }

    /// Count in a record that stands for `connections` connections (an agent aggregates
    /// a window's records of one rule before streaming them; see the `flow-stream` crate).
    /// For a `closed` record only its bytes count.
    pub fn observe_aggregate(&mut self, obs: &Observation<'_>, connections: u64) {
        if !matches!(obs.kind, FlowKind::New | FlowKind::Closed) {
            return;
        }
        let Some(rule) = self.rule_of(obs) else {
            self.unattributed += 1;
            return;
        };
        let key = K::key(rule, obs.time_ms);
        if obs.kind == FlowKind::New {
            let client = obs.client().pod.map(|p| self.names.intern(p));
            let evidence = self.rules.entry(key).or_default();
            evidence.count_connections(connections, obs.time_ms, client);
        } else {
            self.rules.entry(key).or_default().bytes += obs.bytes.unwrap_or(0);
        }
    }

    fn rule_of(&mut self, obs: &Observation<'_>) -> Option<RuleKey> {
        let mut buf = std::mem::take(&mut self.buf);
        let workload = obs.local.workload(&mut buf).map(|w| self.names.intern(w));
        let peer = if obs.host_peer {
            Some(PeerKey::Host)
        } else if let Some(service) = obs.remote.service {
            Some(PeerKey::Service(self.names.intern(service)))
        } else if let Some(w) = obs.remote.workload(&mut buf) {
            Some(PeerKey::Workload(self.names.intern(w)))
        } else {
            Some(PeerKey::External {
                ip: obs.remote.ip,
                dns_name: obs.remote.dns_name.map(|n| self.names.intern(n)),
            })
        };
        self.buf = buf;
        Some(RuleKey {
            workload: workload?,
            direction: obs.direction,
            protocol: obs.protocol,
            port: obs.server_port(),
            peer: peer?,
        })
    }

    /// Add `other`'s rules (another node's, another period's), each under the key `key`
    /// makes of it.
    fn add_all<J: Keyed>(&mut self, other: &Rules<J>, key: impl Fn(J, RuleKey) -> K) {
        let names = self.names.translation(&other.names);
        let rename = |n: Name| names[n.index()];
        for (&j, evidence) in &other.rules {
            let rule = rename_rule(j.rule(), &rename);
            self.rules
                .entry(key(j, rule))
                .or_default()
                .merge_renamed(evidence, rename);
        }
        self.unattributed += other.unattributed;
    }

    /// Add another aggregate (another node's, another period's) to this one.
    pub fn merge(&mut self, other: &Rules<K>) {
        self.add_all(other, |k, rule| k.with_rule(rule));
    }

    /// `workload ns/Kind/name`, `service ns/name`, `the pod's node`, `external IP (name)`.
    pub fn describe_peer(&self, peer: &PeerKey) -> String {
        match *peer {
            PeerKey::Workload(w) => format!("workload {}", self.names.get(w)),
            PeerKey::Service(s) => format!("service {}", self.names.get(s)),
            PeerKey::Host => "the pod's node".to_owned(),
            PeerKey::External {
                ip,
                dns_name: Some(n),
            } => format!("external {ip} ({})", self.names.get(n)),
            PeerKey::External { ip, dns_name: None } => format!("external {ip}"),
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Forget the rules (after they were stored), keeping the names and the memory: the
    /// next batch neither allocates its table again nor interns its names again.
    pub fn clear(&mut self) {
        self.rules.clear();
        self.unattributed = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Batch {
    /// The hours folded away: one entry per rule.
    pub fn into_baseline(self) -> Baseline {
        let mut rules: HashMap<RuleKey, Evidence, FxBuildHasher> = HashMap::default();
        for ((rule, _), evidence) in self.rules {
            rules.entry(rule).or_default().merge(&evidence);
        }
        Baseline {
            names: self.names,
            rules,
            unattributed: self.unattributed,
            buf: String::new(),
        }
    }
}

impl Baseline {
    /// Add a batch's rules, hours folded away.
    pub fn merge_batch(&mut self, batch: &Batch) {
        self.add_all(batch, |_, rule| rule);
    }

    /// Is the baseline stable at `now`: has no rule appeared for `quiet`? (An empty baseline
    /// is not: nothing was learned yet.)
    pub fn is_stable(&self, now: SystemTime, quiet: Duration) -> bool {
        let since = cutoff_ms(now, quiet);
        !self.rules.is_empty() && self.rules.values().all(|e| e.first_seen_ms < since)
    }

    /// Remove the rules not seen for `max_age` at `now`; returns them.
    pub fn expire(&mut self, now: SystemTime, max_age: Duration) -> Vec<(RuleKey, Evidence)> {
        let before = cutoff_ms(now, max_age);
        let old: Vec<RuleKey> = self
            .rules
            .iter()
            .filter(|(_, e)| e.last_seen_ms < before)
            .map(|(k, _)| *k)
            .collect();
        old.into_iter()
            .filter_map(|k| self.rules.remove_entry(&k))
            .collect()
    }

    /// The rules in a stable order: by workload, direction, peer, protocol and port, by name.
    pub fn sorted(&self) -> Vec<(&RuleKey, &Evidence)> {
        let mut rules: Vec<_> = self.rules.iter().collect();
        rules.sort_by_cached_key(|(k, _)| self.sort_key(k));
        rules
    }

    fn sort_key(&self, k: &RuleKey) -> (String, Direction, String, Protocol, Option<u16>) {
        let peer = match k.peer {
            PeerKey::Workload(w) => format!("0 {}", self.names.get(w)),
            PeerKey::Service(s) => format!("1 {}", self.names.get(s)),
            PeerKey::Host => "2".to_owned(),
            PeerKey::External { ip, .. } => format!("3 {ip:?}"),
        };
        (
            self.names.get(k.workload).to_owned(),
            k.direction,
            peer,
            k.protocol,
            k.port,
        )
    }
}

/// `rule` with its names renamed.
fn rename_rule(mut rule: RuleKey, rename: &impl Fn(Name) -> Name) -> RuleKey {
    rule.workload = rename(rule.workload);
    rule.peer = match rule.peer {
        PeerKey::Workload(w) => PeerKey::Workload(rename(w)),
        PeerKey::Service(s) => PeerKey::Service(rename(s)),
        PeerKey::Host => PeerKey::Host,
        PeerKey::External { ip, dns_name } => PeerKey::External {
            ip,
            dns_name: dns_name.map(rename),
        },
    };
    rule
}

/// Unix milliseconds of `now - age`.
fn cutoff_ms(now: SystemTime, age: Duration) -> i64 {
    let at = now.checked_sub(age).unwrap_or(UNIX_EPOCH);
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::Side;

    const T0: i64 = 1_764_324_000_000; // 2025-11-28T10:00:00Z

    fn side(
        ip: &str,
        port: u16,
        pod: Option<&'static str>,
        workload: Option<&'static str>,
    ) -> Side<'static> {
        Side {
            ip: ip.parse().unwrap(),
            port,
            pod,
            workload,
            dns_name: None,
            service: None,
        }
    }

    /// `pod` (of shop/Deployment/frontend) connecting from `client_port` to the api pod on
    /// 8080, as frontend's endpoint records it.
    fn egress(time_ms: i64, pod: &'static str, client_port: u16) -> Observation<'static> {
        Observation {
            kind: FlowKind::New,
            time_ms,
            direction: Direction::Egress,
            protocol: Protocol::Tcp,
            local: side(
                "10.244.0.2",
                client_port,
                Some(pod),
                Some("shop/Deployment/frontend"),
            ),
            remote: side(
                "10.244.0.3",
                8080,
                Some("shop/api-1"),
                Some("shop/Deployment/api"),
            ),
            host_peer: false,
            bytes: None,
        }
    }

    fn rule_names(b: &Baseline, k: &RuleKey) -> (String, Direction, String, Option<u16>) {
        let peer = match k.peer {
            PeerKey::Workload(w) => format!("workload {}", b.names.get(w)),
            PeerKey::Service(s) => format!("service {}", b.names.get(s)),
            PeerKey::Host => "host".into(),
            PeerKey::External { ip, dns_name } => {
                format!("external {ip} {:?}", dns_name.map(|n| b.names.get(n)))
            }
        };
        (
            b.names.get(k.workload).to_owned(),
            k.direction,
            peer,
            k.port,
        )
    }

    fn pods(b: &Baseline, e: &Evidence) -> Vec<String> {
        let mut p: Vec<String> = e
            .source_pods
            .iter()
            .map(|n| b.names.get(n).to_owned())
            .collect();
        p.sort();
        p
    }

    #[test]
    fn ephemeral_ports_fold_into_one_rule_with_its_evidence() {
        let mut b = Baseline::default();
        b.observe(&egress(T0 - 86_400_000, "shop/frontend-a", 40001));
        b.observe(&egress(T0, "shop/frontend-b", 51234));
        b.observe(&egress(T0 - 7_200_000, "shop/frontend-a", 40002));
        // Periodic counters do not count as connections or bytes; the close does.
        let mut stats = egress(T0 + 5_000, "shop/frontend-a", 40002);
        stats.kind = FlowKind::Stats;
        stats.bytes = Some(1000);
        b.observe(&stats);
        let mut closed = stats;
        closed.kind = FlowKind::Closed;
        b.observe(&closed);
        assert_eq!(b.len(), 1);
        let (k, e) = b.sorted()[0];
        assert_eq!(
            rule_names(&b, k),
            (
                "shop/Deployment/frontend".into(),
                Direction::Egress,
                "workload shop/Deployment/api".into(),
                Some(8080)
            )
        );
        assert_eq!(e.connections, 3);
        assert_eq!(e.bytes, 1000);
        assert_eq!(pods(&b, e), ["shop/frontend-a", "shop/frontend-b"]);
        assert_eq!((e.first_seen_ms, e.last_seen_ms), (T0 - 86_400_000, T0));
        assert_eq!(e.days.count(), 2);
    }

    #[test]
    fn an_aggregate_counts_as_its_connections_and_a_closed_one_as_its_bytes() {
        let mut one_by_one = Baseline::default();
        for port in 0..5 {
            one_by_one.observe(&egress(T0, "shop/frontend-a", 40000 + port));
        }
        let mut aggregated = Baseline::default();
        aggregated.observe_aggregate(&egress(T0, "shop/frontend-a", 0), 5);
        let mut closed = egress(T0, "shop/frontend-a", 0);
        closed.kind = FlowKind::Closed;
        closed.bytes = Some(700);
        aggregated.observe_aggregate(&closed, 3);
        let (_, e) = aggregated.sorted()[0];
        assert_eq!((e.connections, e.bytes), (5, 700));
        assert_eq!(e.connections, one_by_one.sorted()[0].1.connections);
    }

    #[test]
    fn the_server_side_sets_the_port_and_the_client_is_the_source() {
        // The api's endpoint sees the same connection as ingress on its own port.
        let mut b = Baseline::default();
        let mut ingress = egress(T0, "shop/frontend-a", 40001);
        ingress.direction = Direction::Ingress;
        std::mem::swap(&mut ingress.local, &mut ingress.remote);
        b.observe(&ingress);
        let (k, e) = b.sorted()[0];
        assert_eq!(
            rule_names(&b, k),
            (
                "shop/Deployment/api".into(),
                Direction::Ingress,
                "workload shop/Deployment/frontend".into(),
                Some(8080)
            )
        );
        assert_eq!(pods(&b, e), ["shop/frontend-a"]);
    }

    #[test]
    fn services_externals_with_names_and_the_node_are_peers_of_their_own() {
        let mut b = Baseline::default();
        let mut out = egress(T0, "shop/frontend-a", 40001);
        out.remote = side("203.0.113.10", 443, None, None);
        out.remote.dns_name = Some("payments.example.com");
        b.observe(&out);
        let mut via_service = egress(T0, "shop/frontend-a", 40002);
        via_service.remote = side("10.96.0.10", 80, None, None);
        via_service.remote.service = Some("shop/api");
        b.observe(&via_service);
        let mut probe = egress(T0, "shop/frontend-a", 40003);
        probe.direction = Direction::Ingress;
        probe.remote = side("169.254.1.1", 52000, None, None);
        probe.local.port = 8080;
        probe.host_peer = true;
        b.observe(&probe);
        let peers: Vec<(String, Option<u16>)> = b
            .sorted()
            .iter()
            .map(|(k, _)| {
                let (_, _, peer, port) = rule_names(&b, k);
                (peer, port)
            })
            .collect();
        assert_eq!(
            peers,
            [
                ("service shop/api".to_owned(), Some(80)),
                (
                    "external 203.0.113.10 Some(\"payments.example.com\")".to_owned(),
                    Some(443)
                ),
                ("host".to_owned(), Some(8080)),
            ]
        );
    }

    #[test]
    fn records_without_a_pod_are_counted_apart_and_bare_pods_are_their_own_workload() {
        let mut b = Baseline::default();
        let mut unnamed = egress(T0, "x", 1);
        unnamed.local.pod = None;
        unnamed.local.workload = None;
        b.observe(&unnamed);
        assert_eq!((b.len(), b.unattributed), (0, 1));
        let mut bare = egress(T0, "shop/debug", 1);
        bare.local.workload = None;
        b.observe(&bare);
        let (k, _) = b.sorted()[0];
        assert_eq!(b.names.get(k.workload), "shop/Pod/debug");
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    fn ms(rfc3339: &str) -> i64 {
        crate::observation::parse_time_ms(rfc3339).unwrap()
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
            ms("2026-11-20T10:00:00Z"),
            "shop/frontend-a",
            40001,
        ));
        b.observe(&egress(
            ms("2026-11-27T10:00:00Z"),
            "shop/frontend-a",
            40002,
        ));
        assert!(b.is_stable(at("2026-11-28T00:00:00Z"), day));
        // A new rule resets it.
        let mut new_peer = egress(ms("2026-11-27T12:00:00Z"), "shop/frontend-a", 40003);
        new_peer.remote.port = 9090;
        b.observe(&new_peer);
        assert!(!b.is_stable(at("2026-11-28T00:00:00Z"), day));
        assert!(b.is_stable(at("2026-11-28T13:00:00Z"), day));
        // Not seen for 3 days: gone, and returned; seen yesterday: kept.
        let mut stale = egress(ms("2026-11-21T10:00:00Z"), "shop/frontend-a", 40004);
        stale.remote = side("203.0.113.10", 443, None, None);
        b.observe(&stale);
        let expired = b.expire(at("2026-11-28T13:00:00Z"), 3 * day);
        assert_eq!(expired.len(), 1);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn merging_baselines_is_adding_them_up_whatever_their_names_numbers() {
        let mut node_a = Baseline::default();
        node_a.names.intern("something else first");
        node_a.observe(&egress(T0, "shop/frontend-a", 40001));
        let mut node_b = Baseline::default();
        node_b.observe(&egress(T0 - 2 * 86_400_000, "shop/frontend-b", 40001));
        let mut ab = node_a.clone();
        ab.merge(&node_b);
        let mut ba = node_b.clone();
        ba.merge(&node_a);
        let view = |b: &Baseline| {
            b.sorted()
                .iter()
                .map(|(k, e)| (rule_names(b, k), e.connections, pods(b, e), e.days.count()))
                .collect::<Vec<_>>()
        };
        assert_eq!(view(&ab), view(&ba));
        let (_, e) = ab.sorted()[0];
        assert_eq!(
            (e.connections, e.source_pods.len(), e.days.count()),
            (2, 2, 2)
        );
        assert_eq!((e.first_seen_ms, e.last_seen_ms), (T0 - 2 * 86_400_000, T0));
    }

    #[test]
    fn a_batch_keeps_hours_apart_and_folds_into_the_baseline() {
        let mut batch = Batch::default();
        batch.observe(&egress(T0, "shop/frontend-a", 1));
        batch.observe(&egress(T0 + 60_000, "shop/frontend-a", 2));
        batch.observe(&egress(T0 + HOUR_MS, "shop/frontend-a", 3));
        assert_eq!(batch.len(), 2);
        let b = batch.into_baseline();
        assert_eq!(b.len(), 1);
        assert_eq!(b.sorted()[0].1.connections, 3);
    }
}
