//! Flow records from agents to the learner over gRPC.
//!
//! Each node agent merges its flow records into aggregates (one per endpoint, peer, server
//! port, verdict, ... and kind) over a flush window and streams them as numbered batches to
//! the learner's collector, which acks a batch once it is durable. Buffering is bounded on
//! both ends of a slow link: a maximum number of aggregates, a maximum number of unacked
//! batches. A broken stream is reopened with backoff, and the unacked batches are sent
//! again; the collector stores each (node, session, sequence) once.
//!
//! # Layout
//! - [`v1`]: the code generated from `proto/palisade/flow/v1/collector.proto`: `FlowBatch`,
//!   `AggregatedFlow`, `BatchAck`, and the `FlowCollector` client and server. Flow records
//!   are `model::wire::v1`'s own types.
//! - [`aggregate`]: [`Aggregator`]: merges records by key, bounded, counting what it loses.
//! - [`client`]: the agent's side: [`FlowStreamer`] (the background task and its counters)
//!   and [`FlowSender`] (offers records, never blocks).
//! - [`server`]: the learner's side: [`Collector`], the service over a [`FlowSink`], which
//!   drops duplicates and acks only what the sink made durable.
//! - [`error`]: [`Error`] and [`SinkError`].

pub mod aggregate;
pub mod client;
pub mod error;
pub mod server;

/// The generated protobuf and gRPC code of `palisade.flow.v1`'s collector.
#[expect(
    clippy::allow_attributes_without_reason,
    reason = "tonic's generated code allows lints without giving reasons"
)]
pub mod v1 {
    tonic::include_proto!("palisade.flow.v1");
}

pub use aggregate::{Aggregator, Offered};
pub use client::{FlowSender, FlowStreamer, StreamConfig, StreamStats};
pub use error::{Error, Result, SinkError};
pub use server::{Batch, Collector, CollectorConfig, CollectorStats, FlowSink, service};
