//! The learner: what each workload really talks to, as a baseline of rules with the
//! evidence behind each, from the flow records agents export. Never touches the kernel.
//!
//! # Layout
//! - [`workload`]: pods folded into their owning workload, and the smallest set of stable
//!   labels that selects exactly a workload's pods (what a proposed policy will select).
//! - [`baseline`]: flow records aggregated per (workload, direction, peer, protocol, server
//!   port), with evidence and a confidence.
pub mod baseline;
pub mod workload;
