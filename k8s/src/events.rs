//! Kubernetes Events for denied connections, so `kubectl describe pod` and `kubectl get
//! events` show what Palisade dropped (or, in monitor mode, would have dropped) and which
//! policy judged it.
//!
//! A scan or a crash-looping client can be denied thousands of times a second, so events
//! are rate-limited twice ([`RateLimiter`], pure and driven by explicit `Instant`s): each
//! connection key (pod, direction, peer, protocol, port) at most once per window (10 minutes
//! by default), and at most a fixed number of events per minute overall. What is held back
//! is counted, and the next event for the same key says how many denials it stands for.
//!
//! The agent must never wait on the API server: [`DenyEvents::offer`] only queues, on a
//! bounded channel, and a background task publishes through kube's event [`Recorder`]. A
//! full queue drops the event and counts it ([`EventStats::dropped`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use model::{Direction, Protocol};
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    task::JoinHandle,
};

/// The events' reason (`kubectl get events --field-selector reason=ConnectionDenied`).
pub const REASON: &str = "ConnectionDenied";

/// The API server's limits on an event's `action` and `note`.
const MAX_ACTION: usize = 128;
const MAX_NOTE: usize = 1024;

/// The global cap's window.
const MINUTE: Duration = Duration::from_secs(60);

/// A connection the datapath denied, or would have denied in monitor mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeniedConnection {
    pub pod: PodRef,
    /// Egress: the pod opened it; ingress: the peer did.
    pub direction: Direction,
    /// The peer as people read it: `workload shop/Deployment/api`, `203.0.113.7 (evil.example)`.
    pub peer: String,
    pub protocol: Protocol,
    /// The server's port; `None` for protocols without ports.
    pub port: Option<u16>,
    /// What judged it: `no rule of shop/palisade-deployment-web allows it`, `default deny: no
    /// policy selects the pod`.
    pub policy: String,
    /// Dropped (enforce mode) rather than only recorded (monitor mode).
    pub enforced: bool,
}

/// The pod an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// Tells this pod apart from an earlier one of the same name.
    pub uid: Option<String>,
}

/// The rate limits and the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// One event per connection key per window.
    pub per_key: Duration,
    /// Events per minute, all keys together.
    pub per_minute: usize,
    /// Events waiting for the API server; more are dropped.
    pub queue: usize,
    /// Connection keys remembered; a key beyond this (a port scan) is held back.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_key: Duration::from_secs(10 * 60),
            per_minute: 60,
            queue: 256,
            max_keys: 16 * 1024,
        }
    }
}

/// What identifies "the same denial" for rate limiting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub namespace: String,
    pub pod: String,
    pub direction: Direction,
    pub peer: String,
    pub protocol: Protocol,
    pub port: Option<u16>,
}

impl Key {
    pub fn of(denied: &DeniedConnection) -> Self {
        Self {
            namespace: denied.pod.namespace.clone(),
            pod: denied.pod.name.clone(),
            direction: denied.direction,
            peer: denied.peer.clone(),
            protocol: denied.protocol,
            port: denied.port,
        }
    }
}

/// The rate limiter's answer for one denial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Publish an event; it stands for `held_back` earlier denials of the same key too.
    Emit { held_back: u64 },
    /// Held back (counted).
    HoldBack,
}

#[derive(Clone, Copy, Debug)]
struct KeyState {
    emitted: Option<Instant>,
    held_back: u64,
    seen: Instant,
}

/// Per-key windows plus a global per-minute cap (see the module docs). Memory is bounded:
/// at most `max_keys` keys and `per_minute` timestamps.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    keys: HashMap<Key, KeyState>,
    /// Emissions within the last minute, oldest first.
    recent: VecDeque<Instant>,
    /// A full key table is not swept again before this (a scan would sweep it per denial).
    next_sweep: Option<Instant>,
    held_back: u64,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            keys: HashMap::new(),
            recent: VecDeque::new(),
            next_sweep: None,
            held_back: 0,
        }
    }

    /// Decide about one denial of `key` at `now` (instants must not go backwards much:
    /// earlier ones count as simultaneous).
    pub fn check(&mut self, key: &Key, now: Instant) -> Decision {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= MINUTE)
        {
            self.recent.pop_front();
        }
        let per_key = self.limits.per_key;
        let global_full = self.recent.len() >= self.limits.per_minute;
        let Some(state) = self.state(key, now) else {
            self.held_back += 1;
            return Decision::HoldBack;
        };
        state.seen = now;
        let in_window = state
            .emitted
            .is_some_and(|t| now.saturating_duration_since(t) < per_key);
        if in_window || global_full {
            state.held_back += 1;
            self.held_back += 1;
            return Decision::HoldBack;
        }
        let held_back = std::mem::take(&mut state.held_back);
        state.emitted = Some(now);
        self.recent.push_back(now);
        Decision::Emit { held_back }
    }

    /// Count a denial of `key` that could not be queued: the next event of the key
    /// includes it.
    pub fn count_dropped(&mut self, key: &Key, now: Instant) {
        if let Some(state) = self.state(key, now) {
            state.seen = now;
            state.held_back += 1;
        }
    }

    /// Denials held back since the start (including those whose count a later event
    /// carried).
    pub fn held_back(&self) -> u64 {
        self.held_back
    }

    /// Keys remembered now.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// The key's state, created when there is room; keys idle for a whole window are swept
    /// when the table is full (their window is over, so forgetting them changes nothing
    /// but a pending held-back count, which stays in the total).
    fn state(&mut self, key: &Key, now: Instant) -> Option<&mut KeyState> {
        if !self.keys.contains_key(key) && self.keys.len() >= self.limits.max_keys {
            if self.next_sweep.is_some_and(|t| now < t) {
                return None;
            }
            let per_key = self.limits.per_key;
            self.keys
                .retain(|_, s| now.saturating_duration_since(s.seen) < per_key);
            if self.keys.len() >= self.limits.max_keys {
                self.next_sweep = Some(now + Duration::from_secs(1));
                return None;
            }
        }
        Some(self.keys.entry(key.clone()).or_insert(KeyState {
            emitted: None,
            held_back: 0,
            seen: now,
        }))
    }
}

/// What the event publisher did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events queued for the API server.
    pub queued: u64,
    /// Denials held back by the rate limits.
    pub held_back: u64,
    /// Events dropped because the queue was full (or the publisher had stopped).
    pub dropped: u64,
    /// Events the API server accepted.
    pub published: u64,
    /// Events the API server refused or that could not reach it.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
}

/// A denial on its way to the API server.
struct Pending {
    denied: DeniedConnection,
    held_back: u64,
}

/// Rate-limited `ConnectionDenied` events, published in the background.
pub struct DenyEvents {
    limiter: RateLimiter,
    tx: mpsc::Sender<Pending>,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
    queued: u64,
    dropped: u64,
}

impl DenyEvents {
    /// Start the publisher (a tokio task: call within a runtime). `reporter` names the
    /// agent (`palisade-agent`) and its instance (the node).
    pub fn new(client: Client, reporter: impl Into<Reporter>, limits: Limits) -> Self {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let counters = Arc::new(Counters::default());
        let recorder = Recorder::new(client, reporter.into());
        let task = tokio::spawn(publish_all(recorder, rx, counters.clone()));
        Self {
            limiter: RateLimiter::new(limits),
            tx,
            task,
            counters,
            queued: 0,
            dropped: 0,
        }
    }

    /// Offer one denial seen at `now`: true when an event was queued for it. Never waits.
    pub fn offer(&mut self, denied: &DeniedConnection, now: Instant) -> bool {
        let key = Key::of(denied);
        // Reserve first: a denial that cannot be queued must not use up its key's window.
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(TrySendError::Full(()) | TrySendError::Closed(())) => {
                self.dropped += 1;
                self.limiter.count_dropped(&key, now);
                return false;
            }
        };
        match self.limiter.check(&key, now) {
            Decision::Emit { held_back } => {
                permit.send(Pending {
                    denied: denied.clone(),
                    held_back,
                });
                self.queued += 1;
                true
            }
            Decision::HoldBack => false,
        }
    }

    pub fn stats(&self) -> EventStats {
        EventStats {
            queued: self.queued,
            held_back: self.limiter.held_back(),
            dropped: self.dropped,
            published: self.counters.published.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Publish what is queued, then stop; returns the final counts.
    pub async fn close(self) -> EventStats {
        let Self {
            limiter,
            tx,
            task,
            counters,
            queued,
            dropped,
        } = self;
        drop(tx);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "the event publisher task failed");
        }
        EventStats {
            queued,
            held_back: limiter.held_back(),
            dropped,
            published: counters.published.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
        }
    }
}

async fn publish_all(recorder: Recorder, mut rx: mpsc::Receiver<Pending>, counters: Arc<Counters>) {
    while let Some(pending) = rx.recv().await {
        let denied = &pending.denied;
        let event = event(denied, pending.held_back);
        match recorder.publish(&event, &pod_reference(&denied.pod)).await {
            Ok(()) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    pod = %format!("{}/{}", denied.pod.namespace, denied.pod.name),
                    error = %e,
                    "publishing a ConnectionDenied event failed"
                );
            }
        }
    }
}

/// The event for a denial that stands for `held_back` earlier ones too.
pub fn event(denied: &DeniedConnection, held_back: u64) -> Event {
    Event {
        type_: EventType::Warning,
        reason: REASON.into(),
        note: Some(note(denied, held_back)),
        // kube's Recorder turns events with the same reason, action and object into one
        // series that keeps the first note: the action names the connection so that two
        // different denials of one pod stay two events, each with its own note.
        action: truncate(&format!("Deny {}", connection(denied)), MAX_ACTION),
        secondary: None,
    }
}

/// `Dropped egress to 203.0.113.7 (evil.example) TCP/443: no rule of shop/... allows it;
/// 41 more since the last event`.
pub fn note(denied: &DeniedConnection, held_back: u64) -> String {
    let verdict = if denied.enforced {
        "Dropped"
    } else {
        "Would drop (monitor mode)"
    };
    let mut note = format!("{verdict} {}: {}", connection(denied), denied.policy);
    if held_back > 0 {
        let times = if held_back == 1 { "time" } else { "times" };
        note.push_str(&format!(
            "; denied {held_back} more {times} since the last event for this connection"
        ));
    }
    truncate(&note, MAX_NOTE)
}

/// `egress to PEER TCP/443`, `ingress from PEER ICMP`.
fn connection(denied: &DeniedConnection) -> String {
    let way = match denied.direction {
        Direction::Egress => "egress to",
        Direction::Ingress => "ingress from",
    };
    let port = denied.port.map(|p| format!("/{p}")).unwrap_or_default();
    format!("{way} {} {}{port}", denied.peer, denied.protocol)
}

fn pod_reference(pod: &PodRef) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(pod.namespace.clone()),
        name: Some(pod.name.clone()),
        uid: pod.uid.clone(),
        ..ObjectReference::default()
    }
}

/// At most `max` bytes, cut on a character boundary, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(pod: &str, port: u16) -> DeniedConnection {
        DeniedConnection {
            pod: PodRef {
                namespace: "shop".into(),
                name: pod.into(),
                uid: Some("0b8e-uid".into()),
            },
            direction: Direction::Egress,
            peer: "203.0.113.7 (evil.example)".into(),
            protocol: Protocol::Tcp,
            port: Some(port),
            policy: "no rule of shop/palisade-deployment-web allows it".into(),
            enforced: true,
        }
    }

    fn limits(per_minute: usize) -> Limits {
        Limits {
            per_minute,
            ..Limits::default()
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_event_per_key_per_window_carrying_the_count_held_back() {
        let mut limiter = RateLimiter::new(limits(100));
        let t0 = Instant::now();
        let key = Key::of(&denied("web-1", 443));
        assert_eq!(limiter.check(&key, t0), Decision::Emit { held_back: 0 });
        for i in 1..=41 {
            assert_eq!(limiter.check(&key, t0 + i * S), Decision::HoldBack);
        }
        // Just before the window ends: still held back.
        assert_eq!(limiter.check(&key, t0 + 599 * S), Decision::HoldBack);
        assert_eq!(
            limiter.check(&key, t0 + 600 * S),
            Decision::Emit { held_back: 42 }
        );
        assert_eq!(limiter.check(&key, t0 + 601 * S), Decision::HoldBack);
        assert_eq!(limiter.held_back(), 43);
        // Another port, pod or direction is another key.
        let mut ingress = denied("web-1", 443);
        ingress.direction = Direction::Ingress;
        for other in [denied("web-1", 80), denied("web-2", 443), ingress] {
            assert_eq!(
                limiter.check(&Key::of(&other), t0 + 601 * S),
                Decision::Emit { held_back: 0 }
            );
        }
    }

    #[test]
    fn a_global_cap_per_minute_holds_back_new_keys_too() {
        let mut limiter = RateLimiter::new(limits(3));
        let t0 = Instant::now();
        for port in 1..=3 {
            assert_eq!(
                limiter.check(&Key::of(&denied("web", port)), t0),
                Decision::Emit { held_back: 0 }
            );
        }
        let fourth = Key::of(&denied("web", 4));
        assert_eq!(limiter.check(&fourth, t0 + 10 * S), Decision::HoldBack);
        assert_eq!(limiter.check(&fourth, t0 + 59 * S), Decision::HoldBack);
        // A minute after the first three, there is room again; the fourth key's event says
        // it stands for the two held back.
        assert_eq!(
            limiter.check(&fourth, t0 + 60 * S),
            Decision::Emit { held_back: 2 }
        );
        assert_eq!(limiter.held_back(), 2);
    }

    #[test]
    fn the_key_table_is_bounded_and_swept_of_idle_keys() {
        let mut limiter = RateLimiter::new(Limits {
            max_keys: 4,
            ..limits(1000)
        });
        let t0 = Instant::now();
        for port in 0..4 {
            limiter.check(&Key::of(&denied("web", port)), t0);
        }
        assert_eq!(limiter.keys(), 4);
        // Full, nothing idle: a new key is held back rather than remembered.
        let scan = Key::of(&denied("web", 9999));
        assert_eq!(limiter.check(&scan, t0 + S), Decision::HoldBack);
        assert_eq!(limiter.keys(), 4);
        // Known keys still work.
        assert_eq!(
            limiter.check(&Key::of(&denied("web", 0)), t0 + 2 * S),
            Decision::HoldBack
        );
        // web/1 is denied again (its window is over: an event); the others stay idle.
        assert_eq!(
            limiter.check(&Key::of(&denied("web", 1)), t0 + 650 * S),
            Decision::Emit { held_back: 0 }
        );
        // Keys idle for a whole window are swept to make room for new ones.
        assert_eq!(
            limiter.check(&scan, t0 + 700 * S),
            Decision::Emit { held_back: 0 }
        );
        assert_eq!(limiter.keys(), 2, "web/1 and the new key");
    }

    #[test]
    fn dropped_denials_count_towards_the_next_event_of_their_key() {
        let mut limiter = RateLimiter::new(limits(100));
        let t0 = Instant::now();
        let key = Key::of(&denied("web", 443));
        limiter.count_dropped(&key, t0);
        limiter.count_dropped(&key, t0);
        assert_eq!(limiter.check(&key, t0 + S), Decision::Emit { held_back: 2 });
    }

    #[test]
    fn the_event_names_the_connection_the_policy_and_the_count() {
        let d = denied("web-1", 443);
        let e = event(&d, 41);
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, "ConnectionDenied");
        assert_eq!(
            e.note.as_deref(),
            Some(
                "Dropped egress to 203.0.113.7 (evil.example) TCP/443: no rule of \
                 shop/palisade-deployment-web allows it; denied 41 more times since the last \
                 event for this connection"
            )
        );
        assert_eq!(
            e.action,
            "Deny egress to 203.0.113.7 (evil.example) TCP/443"
        );
        let mut monitor = d.clone();
        monitor.enforced = false;
        monitor.port = None;
        monitor.protocol = Protocol::Icmp;
        assert_eq!(
            note(&monitor, 0),
            "Would drop (monitor mode) egress to 203.0.113.7 (evil.example) ICMP: no rule of \
             shop/palisade-deployment-web allows it"
        );
    }

    #[test]
    fn long_texts_fit_the_api_limits() {
        let mut d = denied("web-1", 443);
        d.peer = "é".repeat(2000);
        let e = event(&d, 0);
        assert!(e.action.len() <= MAX_ACTION && e.action.ends_with('…'));
        let n = e.note.unwrap();
        assert!(n.len() <= MAX_NOTE && n.ends_with('…'), "{}", n.len());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        // A client whose API server never answers: the publisher takes one event and
        // waits on it, so the queue of one fills.
        let (mock, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(mock, "default");
        let mut events = DenyEvents::new(
            client,
            "palisade-agent",
            Limits {
                queue: 1,
                ..limits(1000)
            },
        );
        let t0 = Instant::now();
        let mut queued = 0;
        for port in 0..10 {
            if events.offer(&denied("web", port), t0) {
                queued += 1;
            }
            tokio::task::yield_now().await;
        }
        let stats = events.stats();
        assert!((1..=2).contains(&queued), "{queued}");
        assert_eq!(stats.queued, queued);
        assert_eq!(stats.dropped, 10 - queued);
        assert_eq!(stats.published, 0);
    }
}
