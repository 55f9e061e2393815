//! The learner's side: a `FlowCollector` service that hands each batch to a [`FlowSink`]
//! exactly once and acks it only once the sink has made it durable.
//!
//! Exactly once: the collector remembers, per (node, session), the highest sequence the
//! sink accepted. A batch at or below it is one an agent sent again after a reconnect
//! (its ack was lost, or had not arrived): it is acked again without calling the sink.
//! Batches of one session go through the sink one at a time, even when a reconnected agent's
//! new stream overlaps its old one still being read. The memory is bounded: sessions not
//! seen for [`CollectorConfig::session_ttl`] are forgotten. A collector that does not know a
//! session (it restarted, or forgot it) asks the sink ([`FlowSink::last_sequence`]); a sink
//! that stores sequences with its batches keeps exactly-once across learner restarts.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::{
    error::{Error, SinkError},
    v1::{
        BatchAck, FlowBatch,
        flow_collector_server::{FlowCollector, FlowCollectorServer},
    },
};

/// What a sink receives: one agent's batch, as sent.
pub type Batch = FlowBatch;

/// Where the collector puts batches: the learner's store.
pub trait FlowSink: Send + Sync + 'static {
    /// Make `batch` durable. Called once per (node, session, sequence) as long as the
    /// collector remembers the session; an `Ok` is what the agent's ack means, so return it
    /// only once the batch would survive a learner restart. An error is not acked: the agent
    /// sends the batch again later.
    fn accept(&self, batch: Batch) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The highest sequence of (`node`, `session`) this sink has made durable, if it keeps
    /// track: the collector asks when it meets a session it does not remember. The default
    /// keeps no track (`None`): after a learner restart, a batch stored just before it whose
    /// ack was lost is stored a second time.
    fn last_sequence(
        &self,
        node: &str,
        session: u64,
    ) -> impl Future<Output = Result<Option<u64>, SinkError>> + Send {
        let _ = (node, session);
        std::future::ready(Ok(None))
    }
}

impl<S: FlowSink> FlowSink for Arc<S> {
    fn accept(&self, batch: Batch) -> impl Future<Output = Result<(), SinkError>> + Send {
        S::accept(self, batch)
    }

    fn last_sequence(
        &self,
        node: &str,
        session: u64,
    ) -> impl Future<Output = Result<Option<u64>, SinkError>> + Send {
        S::last_sequence(self, node, session)
    }
}

/// How the collector behaves.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// A session not seen for this long is forgotten (an agent that restarted has a new
    /// one; one that was away longer is asked about through the sink).
    pub session_ttl: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(3600),
        }
    }
}

/// The collector's counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectorStats {
    /// Batches the sink accepted.
    pub accepted: u64,
    /// Batches acked again without calling the sink.
    pub duplicates: u64,
    /// Batches the sink failed to take (not acked).
    pub sink_errors: u64,
    /// Push streams opened.
    pub streams: u64,
    /// Sessions remembered now.
    pub sessions: usize,
}

/// The `FlowCollector` service over a sink. Clones share the sink and the sessions.
pub struct Collector<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Collector<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S> {
    sink: S,
    config: CollectorConfig,
    sessions: Mutex<Sessions>,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    sink_errors: AtomicU64,
    streams: AtomicU64,
    shutdown: watch::Sender<bool>,
}

/// The highest accepted sequence of a session; `None` until known (asked of the sink).
type Highest = Arc<tokio::sync::Mutex<Option<u64>>>;

struct Sessions {
    by_id: HashMap<(String, u64), (Highest, Instant)>,
    last_pruned: Instant,
}

/// The gRPC service of `sink`, with the default [`CollectorConfig`].
pub fn service<S: FlowSink>(sink: S) -> FlowCollectorServer<Collector<S>> {
    Collector::new(sink, CollectorConfig::default()).into_service()
}

impl<S: FlowSink> Collector<S> {
    pub fn new(sink: S, config: CollectorConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                sink,
                config,
                sessions: Mutex::new(Sessions {
                    by_id: HashMap::new(),
                    last_pruned: Instant::now(),
                }),
                accepted: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
                sink_errors: AtomicU64::new(0),
                streams: AtomicU64::new(0),
                shutdown: watch::Sender::new(false),
            }),
        }
    }

    /// The tonic service, to add to a `tonic::transport::Server`. Batches may be large
    /// (thousands of aggregates): the decoding limit is raised to 16 MiB.
    pub fn into_service(self) -> FlowCollectorServer<Self> {
        FlowCollectorServer::new(self).max_decoding_message_size(16 << 20)
    }

    /// End every Push stream (after the batch it is storing) and refuse new ones, so a
    /// server's graceful shutdown does not wait for agents that never stop streaming.
    /// Agents reconnect to the next collector and resend what was not acked.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub fn stats(&self) -> CollectorStats {
        let i = &self.inner;
        CollectorStats {
            accepted: i.accepted.load(Ordering::Relaxed),
            duplicates: i.duplicates.load(Ordering::Relaxed),
            sink_errors: i.sink_errors.load(Ordering::Relaxed),
            streams: i.streams.load(Ordering::Relaxed),
            sessions: i.sessions().by_id.len(),
        }
    }
}

impl<S> Inner<S> {
    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        // The map stays consistent whatever panicked while holding it.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session's slot, created if new; forgets idle sessions now and then.
    fn session(&self, node: &str, session: u64) -> Highest {
        let now = Instant::now();
        let ttl = self.config.session_ttl;
        let mut sessions = self.sessions();
        // Pruning walks every session: at most once per tenth of the lifetime.
        if now.duration_since(sessions.last_pruned) >= ttl / 10 {
            let before = sessions.by_id.len();
            sessions
                .by_id
                .retain(|_, (_, seen)| now.duration_since(*seen) < ttl);
            sessions.last_pruned = now;
            let forgotten = before - sessions.by_id.len();
            if forgotten > 0 {
                debug!(forgotten, "forgot idle flow sessions");
            }
        }
        let entry = sessions
            .by_id
            .entry((node.to_owned(), session))
            .or_insert_with(|| (Highest::default(), now));
        entry.1 = now;
        Arc::clone(&entry.0)
    }
}

impl<S: FlowSink> Inner<S> {
    /// Store `batch` unless it was stored already; the ack to send.
    async fn handle(&self, batch: Batch) -> Result<BatchAck, Error> {
        let (session, sequence) = (batch.session, batch.sequence);
        let invalid = |reason| Error::InvalidBatch {
            node: batch.node.clone(),
            session,
            sequence,
            reason,
        };
        if batch.node.is_empty() {
            return Err(invalid("no node name"));
        }
        if session == 0 {
            return Err(invalid("session 0"));
        }
        if sequence == 0 {
            return Err(invalid("sequence 0 (sequences start at 1)"));
        }
        let node = batch.node.clone();
        let sink_error = |source| Error::Sink {
            node: node.clone(),
            session,
            sequence,
            source,
        };
        let slot = self.session(&node, session);
        let mut highest = slot.lock().await;
        let last = match *highest {
            Some(last) => last,
            None => {
                let known = self.sink.last_sequence(&node, session).await;
                let last = known.map_err(sink_error)?.unwrap_or(0);
                *highest = Some(last);
                last
            }
        };
        if sequence <= last {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            debug!(node, session, sequence, "batch already stored: acked again");
            return Ok(BatchAck {
                session,
                sequence,
                duplicate: true,
            });
        }
        if last != 0 && sequence != last + 1 {
            // The agent never skips a sequence; the sink's record of the session is behind.
            warn!(
                node,
                session, sequence, last, "gap in a flow session's batches"
            );
        }
        if let Err(source) = self.sink.accept(batch).await {
            self.sink_errors.fetch_add(1, Ordering::Relaxed);
            return Err(sink_error(source));
        }
        *highest = Some(sequence);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(BatchAck {
            session,
            sequence,
            duplicate: false,
        })
    }

    /// Read one Push stream's batches until it ends, an error, or shutdown.
    async fn serve_stream(
        &self,
        mut batches: Streaming<FlowBatch>,
        acks: mpsc::Sender<Result<BatchAck, Status>>,
    ) {
        let mut shutdown = self.shutdown.subscribe();
        // `wait_for` returns a read guard: drop it before anything else awaits.
        let mut shut_down = async move || {
            let _ = shutdown.wait_for(|down| *down).await;
        };
        loop {
            let next = tokio::select! {
                next = batches.message() => next,
                _ = shut_down() => {
                    let _ = acks.send(Err(Status::unavailable("flow collector shutting down"))).await;
                    return;
                }
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(status) => {
                    debug!(%status, "flow stream broke");
                    return;
                }
            };
            let reply = self.handle(batch).await.map_err(|err| {
                warn!(error = %err, source = ?std::error::Error::source(&err), "flow batch not stored");
                match err {
                    Error::InvalidBatch { .. } => Status::invalid_argument(err.to_string()),
                    _ => Status::unavailable(err.to_string()),
                }
            });
            let failed = reply.is_err();
            // A closed channel means the agent went away: its next stream resends.
            if acks.send(reply).await.is_err() || failed {
                return;
            }
        }
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<BatchAck, Status>> + Send>>;

#[tonic::async_trait]
impl<S: FlowSink> FlowCollector for Collector<S> {
    type PushStream = AckStream;

    async fn push(
        &self,
        request: Request<Streaming<FlowBatch>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        if *self.inner.shutdown.borrow() {
            return Err(Status::unavailable("flow collector shutting down"));
        }
        self.inner.streams.fetch_add(1, Ordering::Relaxed);
        info!(peer = ?request.remote_addr(), "flow stream opened");
        // Acks are produced one per batch, in order; a few may wait for a slow reader.
        let (tx, mut rx) = mpsc::channel(8);
        let inner = Arc::clone(&self.inner);
        let batches = request.into_inner();
        tokio::spawn(async move { inner.serve_stream(batches, tx).await });
        let acks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(acks)))
    }
}
