//! Everything that touches aya: the embedded kernel object, installing and pinning it,
//! attaching it to pod interfaces, the maps (behind small traits), events and uninstall.
//!
//! What is pinned under [`Pins`] is the enforcement: the agent stopping, crashing or being
//! upgraded never removes it; only [`uninstall`] does.
//!
//! # Layout
//! - [`object`]: the kernel object built by `build.rs` and embedded in the binary.
//! - [`pins`]: the versioned bpffs layout (`<root>/v1/{maps,progs,links}`).
//! - [`install`]: loading the object, reusing pinned maps, pinning programs, upgrading links.
//! - [`attach`]: attaching and detaching one endpoint (TCX links, pinned).
//! - [`tables`]: the maps user space edits behind one trait, with in-memory twins.
//! - [`rules`]: endpoint registration and mode, over the trait; the kernel address form.
//! - [`compile`]: the rule model -> `POLICY` and `CIDRS` entries (pure).
//! - [`writer`]: writing a node's rules and identities in an order that never opens a gap.
//! - [`records`]: kernel events and conntrack entries -> `model::FlowRecord` (the one place).
//! - [`events`]: reading the ring buffers (flow events, DNS answers).
//! - [`stats`]: conntrack dumps and per-CPU counters.
//! - [`prefilter`]: the XDP prefilter on node uplinks: attach, the denied CIDR list, drops.
//! - [`uninstall`]: removing everything Palisade pinned.
pub mod attach;
pub mod compile;
pub mod events;
pub mod install;
pub mod object;
pub mod pins;
pub mod prefilter;
pub mod records;
pub mod rules;
pub mod stats;
pub mod tables;
pub mod uninstall;
pub mod writer;

pub use attach::{EndpointSpec, attach, detach};
pub use install::{Installed, Sizing, install, install_with};
pub use pins::Pins;
pub use uninstall::uninstall;
