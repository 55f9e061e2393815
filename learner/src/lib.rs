//! The learner: what each workload really talks to, as a baseline of rules with the
//! evidence behind each, from the flow records agents export. Never touches the kernel.
//!
//! # Layout
//! - [`observation`]: what the learner reads from a flow record (JSON or protobuf), borrowed.
//! - [`record_view`]: the fields of a protobuf record the learner reads, decoded in place.
//! - [`intern`]: names stored once and referred to by number.
//! - [`evidence`]: what a rule rests on (counts, times, days, client pods) and its confidence.
//! - [`baseline`]: flow records aggregated per (workload, direction, peer, protocol, server
//!   port), per hour for the store.
//! - [`store`]: the baseline persisted in SQLite, hourly buckets compacted to days, with
//!   the readers' checkpoints committed in the same transaction.
//! - [`parallel`]: a whole file of records read on every core (replay, benchmarks).
//! - [`ingest`]: files of flow records into the store, resumable, never counted twice.
//! - [`workload`]: pods folded into their owning workload, and the smallest set of stable
//!   labels that selects exactly a workload's pods (what a proposed policy will select).
//! - [`connections`]: the baseline as (client, server, protocol, port) connections, for replay.
//! - [`widen`]: the stated rules that widen exact external addresses into CIDRs.
//! - [`propose`]: baseline -> one NetworkPolicy per workload, with the evidence per rule.
//! - [`report`]: the baseline as a table people read.
pub mod baseline;
pub mod connections;
pub mod evidence;
pub mod ingest;
pub mod intern;
pub mod observation;
pub mod parallel;
pub mod propose;
pub mod record_view;
pub mod report;
pub mod store;
pub mod widen;
pub mod workload;
