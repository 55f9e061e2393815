//! Policies people can review: generated NetworkPolicies exported as YAML that carries the
//! evidence behind each rule (and as CiliumNetworkPolicies for clusters that run Cilium),
//! read back after review (what is enforced is the reviewed file), recorded flows replayed
//! against a policy set offline, two sets compared by what they do to those flows, and a
//! report to attach to a change request. Never touches the kernel.
//!
//! # Layout
//! - [`set`]: a policy set under review: NetworkPolicies with their workload and evidence.
//! - [`export`]: NetworkPolicy files, one per workload, in a folder layout for pull requests.
//! - [`import`]: reviewed files back into a policy set (round trip).
//! - [`cilium`]: a policy as a `cilium.io/v2` CiliumNetworkPolicy, `toFQDNs` from evidence.
//! - [`replay`]: recorded flows evaluated against a policy set.
//! - [`diff`]: two policy sets compared by their replays.
//! - [`report`]: the review report (Markdown, and HTML with the workload graph as SVG).
pub mod cilium;
pub mod diff;
pub mod export;
pub mod import;
pub mod replay;
pub mod report;
pub mod set;
