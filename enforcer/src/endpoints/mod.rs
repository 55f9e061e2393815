//! Endpoint discovery on a Kubernetes node: which host interface carries each local pod.
//!
//! The agent runs with `hostNetwork` and never sees the CNI's bookkeeping, only the kernel's
//! tables, read over rtnetlink. Two CNI shapes give each pod a veth into the host:
//! - routed (ptp, Calico, most cloud CNIs): a /32 (or /128) route to the pod's address goes
//!   straight out of the host side of its veth;
//! - bridged (the bridge CNI, flannel's `cni0`): the host side is a bridge port; the pod's
//!   address maps to a MAC in the bridge's neighbour table, and the MAC to a port in the
//!   bridge's forwarding database (FDB).
//!
//! Routed is tried first: a host route is explicit, a neighbour entry only exists once the
//! pod has talked to the node. Everything here works on the network namespace the netlink
//! socket was opened in (see [`connect`]): run it inside the node's namespace.
//!
//! # Layout
//! - [`facts`]: netlink messages turned into small typed facts (links, host routes,
//!   neighbours, FDB entries); pure, unit tested.
//! - [`discover`]: a snapshot of those tables and the pod address -> host interface
//!   resolution over it; [`find_host_interface`] and the whole-node [`discover()`].
//! - [`watch`]: multicast subscription to link, route and neighbour changes as a stream of
//!   typed [`Event`]s.
//! - [`reconcile`]: the pure planner: wanted pods + discovered interfaces + what is attached
//!   -> attach/detach actions.
//! - [`error`]: this module's error type.

pub mod discover;
pub mod error;
pub mod facts;
pub mod reconcile;
pub mod watch;

pub use discover::{HostInterface, NodeSnapshot, Via, connect, discover, find_host_interface};
pub use error::{Error, Result};
pub use facts::{FdbEntry, HostRoute, Link, LinkKind, Mac, Neighbour};
pub use reconcile::{Action, Attached, Conflict, Plan, WantedPod, plan};
pub use watch::{Event, Watch};
