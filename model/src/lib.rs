//! Palisade's shared vocabulary, free of any kernel or aya dependency.
//!
//! # Layout
//! - [`flow`]: the enriched, serde-able flow record the agent prints and exports (a
//!   different type from the kernel's event; `enforcer` converts one into the other).
pub mod flow;

pub use flow::{Counters, Direction, FlowKind, FlowRecord, Mode, Peer, Protocol, Verdict};
