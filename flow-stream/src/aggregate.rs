//! Merging flow records over a flush window, so an agent sends one aggregate per
//! (endpoint, peer, server port, verdict, ...) instead of one record per connection.
//!
//! The key of a record is the record without what varies from one connection to the next:
//! the client's (ephemeral) port, the times and the counters (see `AggregatedFlow` in
//! `collector.proto`). The kind stays in the key, so an aggregate says what it counts:
//! NEW aggregates count connections opened, CLOSED aggregates connections ended and their
//! bytes, and so on.
//!
//! Counters: only CLOSED records carry bytes into aggregates. STATS records report the
//! running totals of live connections; summing them, or summing them and the connection's
//! final CLOSED totals, would count the same bytes several times. The learner already counts
//! bytes from CLOSED records only, so aggregating this way changes none of its totals.
//!
//! Memory is bounded by a maximum number of keys: once full, a record with a new key is
//! counted as lost, while records of keys already held still merge.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
};

use model::{
    Protocol,
    wire::v1::{self as wire, Counters, Direction, Kind},
};

use crate::v1::AggregatedFlow;

/// What [`Aggregator::offer`] did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offered {
    /// The record started a new aggregate.
    Added,
    /// The record merged into an aggregate already held.
    Merged,
    /// The aggregator was full and the record's key new: the record was dropped.
    Lost,
}

/// A normalized record: the key's fields as they were, the others cleared.
#[derive(Clone, Debug, PartialEq)]
struct Key(wire::FlowRecord);

// A flow record has no floating-point fields, so its `PartialEq` is an equivalence.
impl Eq for Key {}

/// Hashes the fields that tell most keys apart; `Eq` compares the rest, which keeps equal
/// keys' hashes equal (all that `Hash` requires).
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let r = &self.0;
        (
            r.kind,
            r.direction,
            r.protocol,
            r.ifindex,
            r.verdict,
            r.rule,
        )
            .hash(state);
        for e in [&r.local, &r.remote].into_iter().flatten() {
            (&e.ip, e.port).hash(state);
        }
    }
}

impl Key {
    /// The key of `record`; its times and counters are returned apart.
    fn of(mut record: wire::FlowRecord) -> (Self, Totals, Option<Counters>) {
        let first_seen_ms = match record.first_seen_unix_ms {
            0 if record.kind == Kind::New as i32 => record.time_unix_ms,
            t => t,
        };
        let totals = Totals {
            first_seen_ms,
            last_ms: record.time_unix_ms,
            connections: 0,
            counters: Counters::default(),
        };
        let counters = record.counters.take();
        record.time_unix_ms = 0;
        record.first_seen_unix_ms = 0;
        let has_ports =
            u8::try_from(record.protocol).is_ok_and(|n| Protocol::from_number(n).has_ports());
        let (local_is_client, remote_is_client) = match Direction::try_from(record.direction) {
            _ if !has_ports => (true, true),
            Ok(Direction::Egress) => (true, false),
            Ok(Direction::Ingress) => (false, true),
            // Without a direction the server port is unknown: keep neither port rather
            // than one aggregate per ephemeral port.
            _ => (true, true),
        };
        if local_is_client && let Some(local) = record.local.as_mut() {
            local.port = 0;
        }
        if remote_is_client && let Some(remote) = record.remote.as_mut() {
            remote.port = 0;
        }
        (Self(record), totals, counters)
    }

    fn is_closed(&self) -> bool {
        self.0.kind == Kind::Closed as i32
    }
}

/// What an aggregate adds up.
#[derive(Clone, Copy, Debug)]
struct Totals {
    /// The earliest known first-seen time; 0 = none known.
    first_seen_ms: i64,
    last_ms: i64,
    connections: u64,
    /// Summed for CLOSED aggregates only.
    counters: Counters,
}

impl Totals {
    fn merge(&mut self, other: &Self) {
        self.first_seen_ms = match (self.first_seen_ms, other.first_seen_ms) {
            (0, t) | (t, 0) => t,
            (a, b) => a.min(b),
        };
        self.last_ms = self.last_ms.max(other.last_ms);
        self.connections = self.connections.saturating_add(other.connections);
        let (a, b) = (&mut self.counters, &other.counters);
        a.packets_from_pod = a.packets_from_pod.saturating_add(b.packets_from_pod);
        a.bytes_from_pod = a.bytes_from_pod.saturating_add(b.bytes_from_pod);
        a.packets_to_pod = a.packets_to_pod.saturating_add(b.packets_to_pod);
        a.bytes_to_pod = a.bytes_to_pod.saturating_add(b.bytes_to_pod);
    }
}

/// Flow records merged by key, at most `max_keys` of them.
#[derive(Debug)]
pub struct Aggregator {
    aggregates: HashMap<Key, Totals>,
    max_keys: usize,
    /// Records lost since [`take_lost`](Self::take_lost) was last called.
    lost: u64,
}

impl Aggregator {
    /// An empty aggregator that holds at most `max_keys` aggregates (at least one).
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        Self {
            // Grown on demand: most windows hold far fewer keys than the bound.
            aggregates: HashMap::new(),
            max_keys,
            lost: 0,
        }
    }

    /// Merge one flow record in.
    pub fn offer(&mut self, record: wire::FlowRecord) -> Offered {
        self.add(record, 1)
    }

    /// Merge an aggregate in (another window's, another aggregator's): the result is the
    /// same as offering the records it was made of. A lost aggregate counts as
    /// `connections` lost records.
    pub fn merge(&mut self, flow: AggregatedFlow) -> Offered {
        match flow.record {
            Some(record) => self.add(record, flow.connections),
            None => Offered::Merged,
        }
    }

    fn add(&mut self, record: wire::FlowRecord, connections: u64) -> Offered {
        let (key, mut totals, counters) = Key::of(record);
        totals.connections = connections;
        if key.is_closed() {
            totals.counters = counters.unwrap_or_default();
        }
        if let Some(held) = self.aggregates.get_mut(&key) {
            held.merge(&totals);
            return Offered::Merged;
        }
        if self.aggregates.len() >= self.max_keys {
            self.lost = self.lost.saturating_add(connections.max(1));
            return Offered::Lost;
        }
        self.aggregates.insert(key, totals);
        Offered::Added
    }

    /// Aggregates held.
    pub fn len(&self) -> usize {
        self.aggregates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.aggregates.is_empty()
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Records lost since the last [`take_lost`](Self::take_lost).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Records lost since the last call, resetting the count (a batch reports them).
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// Take at most `limit` aggregates out, in no particular order; the rest stay and go
    /// on merging.
    pub fn drain(&mut self, limit: usize) -> Vec<AggregatedFlow> {
        if limit >= self.aggregates.len() {
            return self.aggregates.drain().map(into_flow).collect();
        }
        let mut taken = 0;
        self.aggregates
            .extract_if(|_, _| {
                taken += 1;
                taken <= limit
            })
            .map(into_flow)
            .collect()
    }
}

fn into_flow((key, totals): (Key, Totals)) -> AggregatedFlow {
    let closed = key.is_closed();
    let mut record = key.0;
    record.time_unix_ms = totals.last_ms;
    record.first_seen_unix_ms = totals.first_seen_ms;
    record.counters = closed.then_some(totals.counters);
    AggregatedFlow {
        record: Some(record),
        connections: totals.connections,
    }
}

#[cfg(test)]
mod tests;
