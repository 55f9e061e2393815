//! Palisade's shared vocabulary, free of any kernel or aya dependency.
//!
//! # Layout
//! - [`flow`]: the enriched, serde-able flow record the agent prints and exports (a
//!   different type from the kernel's event; `enforcer` converts one into the other).
//! - [`identity`]: security identities, label sets and their stable allocator.
//! - [`rules`]: the compiled rule form the kernel enforces and its reference evaluator.
//! - [`netpol`]: Kubernetes NetworkPolicy: files, validation, semantics, compilation.
pub mod flow;
pub mod identity;
pub mod netpol;
pub mod rules;

pub use flow::{Counters, Direction, FlowKind, FlowRecord, Mode, Peer, Protocol, Reason, Verdict};
