//! The agent's side: [`FlowStreamer`] merges records into an [`Aggregator`] and streams
//! the aggregates to the collector in numbered batches.
//!
//! - [`FlowSender::offer`] never waits: it merges the record under a short lock and
//!   returns. When the aggregator is full, records of new keys are lost (and counted).
//! - Every `flush_interval` a task cuts the aggregates into batches (sequence 1, 2, ...
//!   within a random session id) and sends them. A sent batch stays in memory until the
//!   collector acks it. At most `max_in_flight` batches are unacked: when the collector is
//!   slow, the task stops cutting batches and the aggregator goes on merging (so a slow
//!   learner gets fewer, larger aggregates instead of an ever-growing queue).
//! - When the stream breaks, the task reconnects with exponential backoff and first sends
//!   the unacked batches again, unchanged; the collector acks the ones it already stored
//!   without storing them twice. Aggregates are not lost across a reconnect: they are
//!   either in an unacked batch or still in the aggregator.

use std::{
    collections::VecDeque,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use model::wire::v1 as wire;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tonic::transport::{Endpoint, Uri};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::{
    aggregate::{Aggregator, Offered},
    error::{Error, Result},
    v1::{BatchAck, FlowBatch, flow_collector_client::FlowCollectorClient},
};

/// How the agent aggregates and streams.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// How often aggregates are cut into batches and sent.
    pub flush_interval: Duration,
    /// The most aggregates held between flushes; records of new keys beyond it are lost.
    pub max_keys: usize,
    /// The most aggregates in one batch (a batch is one gRPC message).
    pub max_batch_flows: usize,
    /// The most batches sent and not yet acked.
    pub max_in_flight: usize,
    /// The first reconnect delay, doubled after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// HTTP/2 pings on an idle connection, so a collector that vanished without closing
    /// the connection is noticed within about twice this.
    pub keepalive: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(5),
            max_keys: 20_000,
            max_batch_flows: 1_000,
            max_in_flight: 8,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// The streamer's counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Records offered.
    pub offered: u64,
    /// Records lost because the aggregator was full.
    pub lost: u64,
    /// Batches sent (the first time).
    pub sent: u64,
    /// Batches sent again after a reconnect.
    pub resent: u64,
    /// Batches the collector acked.
    pub acked: u64,
    /// Streams opened after the first one.
    pub reconnects: u64,
    /// A stream is open now.
    pub connected: bool,
    /// Batches sent and not yet acked.
    pub in_flight: usize,
    /// Aggregates waiting in the aggregator.
    pub pending: usize,
}

/// State shared by the senders, the handle and the task.
struct Shared {
    aggregator: Mutex<Aggregator>,
    offered: AtomicU64,
    lost: AtomicU64,
    sent: AtomicU64,
    resent: AtomicU64,
    acked: AtomicU64,
    reconnects: AtomicU64,
    connected: AtomicBool,
    in_flight: AtomicUsize,
}

impl Shared {
    fn aggregator(&self) -> MutexGuard<'_, Aggregator> {
        // A panic while merging leaves at worst one half-merged aggregate: keep going.
        self.aggregator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Offers records to the streamer; cheap to clone, never blocks.
#[derive(Clone)]
pub struct FlowSender {
    shared: Arc<Shared>,
}

impl FlowSender {
    /// Merge a record into the current window. Accepts `model::FlowRecord`s (owned or
    /// borrowed) and wire records.
    pub fn offer(&self, record: impl Into<wire::FlowRecord>) -> Offered {
        let record = record.into();
        let offered = self.shared.aggregator().offer(record);
        self.shared.offered.fetch_add(1, Ordering::Relaxed);
        if offered == Offered::Lost {
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
        }
        offered
    }
}

/// The handle of a running stream: counters, and an orderly [`close`](Self::close).
/// Dropping it stops the stream at once (what was not acked is lost).
pub struct FlowStreamer {
    shared: Arc<Shared>,
    closing: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    endpoint: String,
    session: u64,
}

impl FlowStreamer {
    /// Start streaming to the collector at `endpoint` (e.g. `http://learner:7070`) as
    /// `node`. Must be called within a Tokio runtime. Connecting happens in the background:
    /// records can be offered at once.
    pub fn spawn(
        endpoint: Uri,
        node: impl Into<String>,
        config: StreamConfig,
    ) -> (FlowSender, FlowStreamer) {
        let shared = Arc::new(Shared {
            aggregator: Mutex::new(Aggregator::new(config.max_keys)),
            offered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        });
        let session = new_session();
        let node = node.into();
        let text = endpoint.to_string();
        let (closing, closing_rx) = watch::channel(false);
        let worker = Worker {
            shared: Arc::clone(&shared),
            endpoint: Endpoint::from(endpoint)
                .connect_timeout(config.connect_timeout)
                .http2_keep_alive_interval(config.keepalive)
                .keep_alive_timeout(config.keepalive)
                .keep_alive_while_idle(true)
                .tcp_nodelay(true),
            text: text.clone(),
            node: node.clone(),
            session,
            next_sequence: 1,
            in_flight: VecDeque::new(),
            flush_owed: false,
            streams: 0,
            failures: 0,
            closing: closing_rx,
            config,
        };
        let span = info_span!("flow_stream", collector = %text, node, session = format_args!("{session:#x}"));
        let task = tokio::spawn(worker.run().instrument(span));
        let handle = FlowStreamer {
            shared: Arc::clone(&shared),
            closing,
            task: Some(task),
            endpoint: text,
            session,
        };
        (FlowSender { shared }, handle)
    }

    /// This run's session id.
    pub fn session(&self) -> u64 {
        self.session
    }

    pub fn stats(&self) -> StreamStats {
        let s = &self.shared;
        StreamStats {
            offered: s.offered.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            resent: s.resent.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            connected: s.connected.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            pending: s.aggregator().len(),
        }
    }

    /// Send what is aggregated now and wait, at most `timeout`, until the collector has
    /// acked everything; then stop. Records offered meanwhile are sent too.
    pub async fn close(mut self, timeout: Duration) -> Result<()> {
        self.closing.send_replace(true);
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        if tokio::time::timeout(timeout, &mut task).await.is_ok() {
            return Ok(());
        }
        task.abort();
        Err(Error::Undelivered {
            endpoint: self.endpoint.clone(),
            batches: self.shared.in_flight.load(Ordering::Relaxed),
            aggregates: self.shared.aggregator().len(),
            timeout,
        })
    }
}

impl Drop for FlowStreamer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A random, non-zero session id: distinct for every start of an agent.
fn new_session() -> u64 {
    // RandomState is seeded from the OS once per thread and differs on every call.
    let now = SystemTime::now();
    RandomState::new().hash_one(now).max(1)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The background task: connects, flushes, resends, reconnects.
struct Worker {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    /// The endpoint as given, for errors and logs.
    text: String,
    node: String,
    session: u64,
    next_sequence: u64,
    /// Sent and not yet acked, in sequence order.
    in_flight: VecDeque<FlowBatch>,
    /// A flush was skipped because the window was full: flush as soon as an ack frees it.
    flush_owed: bool,
    /// Streams opened so far.
    streams: u64,
    /// Failures since the last ack, for the backoff.
    failures: u32,
    closing: watch::Receiver<bool>,
    config: StreamConfig,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let result = self.stream().await;
            self.shared.connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    info!(
                        batches = self.next_sequence - 1,
                        "flow stream closed, everything acked"
                    );
                    return;
                }
                Err(err) => {
                    let delay = self.backoff();
                    warn!(
                        error = %err,
                        cause = ?std::error::Error::source(&err).map(ToString::to_string),
                        unacked = self.in_flight.len(),
                        retry_in = ?delay,
                        "flow stream down"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The next reconnect delay: exponential, with jitter so that a learner restart does
    /// not bring every agent back in the same instant.
    fn backoff(&mut self) -> Duration {
        let exp = self
            .config
            .backoff_initial
            .saturating_mul(1 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        let full = exp.min(self.config.backoff_max);
        let jitter = RandomState::new().hash_one(self.failures) % 1000;
        // Between half and all of the full delay.
        full / 2 + full.mul_f64(jitter as f64 / 2000.0)
    }

    /// One stream: until it breaks (`Err`) or everything is acked after `close` (`Ok`).
    async fn stream(&mut self) -> Result<()> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|source| Error::Connect {
                endpoint: self.text.clone(),
                source,
            })?;
        let mut client = FlowCollectorClient::new(channel);
        // Unbounded, yet bounded: only batches in the window of `max_in_flight` go in.
        let (tx, mut rx) = mpsc::unbounded_channel::<FlowBatch>();
        // The unacked batches first, unchanged: same session and sequence.
        for batch in &self.in_flight {
            let _ = tx.send(batch.clone());
        }
        let resent = self.in_flight.len();
        let outgoing = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut acks = client
            .push(outgoing)
            .await
            .map_err(|source| Error::Stream {
                endpoint: self.text.clone(),
                source,
            })?
            .into_inner();
        self.streams += 1;
        if self.streams > 1 {
            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.shared
            .resent
            .fetch_add(resent as u64, Ordering::Relaxed);
        self.shared.connected.store(true, Ordering::Relaxed);
        info!(resent, "flow stream open");

        let mut flush = tokio::time::interval(self.config.flush_interval);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut closing = self.closing.clone();
        loop {
            let is_closing = *closing.borrow_and_update();
            if is_closing {
                self.flush(&tx);
                if self.in_flight.is_empty() && self.shared.aggregator().is_empty() {
                    return Ok(());
                }
            }
            tokio::select! {
                _ = flush.tick() => self.flush(&tx),
                _ = closing.changed(), if !is_closing => {}
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => self.acked(ack, &tx),
                    Ok(None) => return Err(Error::Ended { endpoint: self.text.clone() }),
                    Err(source) => return Err(Error::Stream { endpoint: self.text.clone(), source }),
                },
            }
        }
    }

    /// Cut the aggregates into batches and send them, as far as the window allows.
    fn flush(&mut self, tx: &mpsc::UnboundedSender<FlowBatch>) {
        let room = self
            .config
            .max_in_flight
            .saturating_sub(self.in_flight.len());
        if room == 0 {
            if !self.flush_owed {
                debug!(
                    in_flight = self.in_flight.len(),
                    "collector behind: window full, aggregating on"
                );
            }
            self.flush_owed = true;
            return;
        }
        self.flush_owed = false;
        let per_batch = self.config.max_batch_flows.max(1);
        let (mut flows, lost) = {
            let mut aggregator = self.shared.aggregator();
            (
                aggregator.drain(room.saturating_mul(per_batch)),
                aggregator.take_lost(),
            )
        };
        if flows.is_empty() && lost == 0 {
            return;
        }
        let created_unix_ms = unix_ms(SystemTime::now());
        let mut lost_records = lost;
        loop {
            let rest = flows.split_off(flows.len().min(per_batch));
            let batch = FlowBatch {
                node: self.node.clone(),
                session: self.session,
                sequence: self.next_sequence,
                created_unix_ms,
                flows,
                // Reported once, with the window's first batch.
                lost_records: std::mem::take(&mut lost_records),
            };
            self.next_sequence += 1;
            debug!(
                sequence = batch.sequence,
                flows = batch.flows.len(),
                lost = batch.lost_records,
                "sending flow batch"
            );
            // A send fails only when the stream is gone; the batch stays in the window
            // and goes again on the next stream.
            let _ = tx.send(batch.clone());
            self.in_flight.push_back(batch);
            self.shared.sent.fetch_add(1, Ordering::Relaxed);
            flows = rest;
            if flows.is_empty() {
                break;
            }
        }
        self.shared
            .in_flight
            .store(self.in_flight.len(), Ordering::Relaxed);
    }

    /// Forget the batches up to the acked one (acks come in order).
    fn acked(&mut self, ack: BatchAck, tx: &mpsc::UnboundedSender<FlowBatch>) {
        if ack.session != self.session {
            warn!(
                session = ack.session,
                sequence = ack.sequence,
                "ack for another session, ignored"
            );
            return;
        }
        let mut done = 0u64;
        while self
            .in_flight
            .front()
            .is_some_and(|b| b.sequence <= ack.sequence)
        {
            self.in_flight.pop_front();
            done += 1;
        }
        if done == 0 {
            debug!(sequence = ack.sequence, "ack for no unacked batch, ignored");
            return;
        }
        self.failures = 0;
        self.shared.acked.fetch_add(done, Ordering::Relaxed);
        self.shared
            .in_flight
            .store(self.in_flight.len(), Ordering::Relaxed);
        if self.flush_owed {
            self.flush(tx);
        }
    }
}
