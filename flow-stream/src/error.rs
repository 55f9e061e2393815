//! What can go wrong streaming flows: the agent's side ([`Error`]) and a learner's store
//! refusing a batch ([`SinkError`]).

use std::time::Duration;

/// Errors of the streaming client and of the collector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The collector could not be reached (refused, unresolvable, timed out).
    #[error("connecting to the flow collector at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The Push stream could not be opened, or the collector ended it with an error.
    #[error("flow stream to {endpoint} failed")]
    Stream {
        endpoint: String,
        #[source]
        source: tonic::Status,
    },
    /// The collector ended the Push stream without an error (it is shutting down).
    #[error("the flow collector at {endpoint} ended the stream")]
    Ended { endpoint: String },
    /// [`crate::FlowStreamer::close`] gave up: these batches and aggregates were not acked.
    #[error(
        "closing the flow stream to {endpoint}: {batches} batches unacked and {aggregates} \
         aggregates unsent after {timeout:?}"
    )]
    Undelivered {
        endpoint: String,
        batches: usize,
        aggregates: usize,
        timeout: Duration,
    },
    /// A batch the collector refuses to store: it would never be stored, so the stream ends
    /// with `INVALID_ARGUMENT` instead of `UNAVAILABLE`.
    #[error("batch {sequence} of node {node:?}, session {session:#x}: {reason}")]
    InvalidBatch {
        node: String,
        session: u64,
        sequence: u64,
        reason: &'static str,
    },
    /// The learner's store failed to take a batch; the agent sends it again later.
    #[error("storing batch {sequence} of node {node:?}, session {session:#x}")]
    Sink {
        node: String,
        session: u64,
        sequence: u64,
        #[source]
        source: SinkError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A [`crate::FlowSink`] could not make a batch durable (or could not tell what it had
/// stored). The batch is not acked, so its agent sends it again.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct SinkError {
    /// What the sink was doing, e.g. `writing the baseline database /var/lib/palisade/db`.
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// `context` says what failed; `source` why.
    pub fn new(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A failure with no underlying error (e.g. the store is closing).
    pub fn without_source(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }

    pub fn context(&self) -> &str {
        &self.context
    }
}
