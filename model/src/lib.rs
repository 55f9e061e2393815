//! Palisade's shared vocabulary, free of any kernel or aya dependency.
//!
//! # Layout
//! - [`flow`]: the enriched, serde-able flow record the agent prints and exports (a
//!   different type from the kernel's event; `enforcer` converts one into the other).
//! - [`evidence`]: the evidence behind a proposed rule, as reviews and exports show it.
//! - [`identity`]: security identities, label sets and their stable allocator.
//! - [`rules`]: the compiled rule form the kernel enforces and its reference evaluator.
//! - [`netpol`]: Kubernetes NetworkPolicy: files, validation, semantics, compilation.
//! - [`wire`]: the protobuf form of flow records (`proto/palisade/flow/v1/flow.proto`),
//!   shared by the agent and the learner, and files of records in either form.
pub mod evidence;
pub mod flow;
pub mod identity;
pub mod netpol;
pub mod rules;
pub mod wire;

pub use flow::{Counters, Direction, FlowKind, FlowRecord, Mode, Peer, Protocol, Reason, Verdict};
