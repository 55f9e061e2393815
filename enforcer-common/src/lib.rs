//! The ABI shared by Palisade's kernel programs (`enforcer-ebpf`) and its agent (`enforcer`).
//!
//! Every type here is `#[repr(C)]`, `Copy`, has explicit padding and a compile-time size
//! check, so the kernel and user space cannot drift apart. Addresses are stored as 16 bytes in
//! network byte order, IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`); ports are in
//! host byte order (the kernel converts once, when it parses the packet).
//!
//! # Layout
//! - [`maps`]: the name and size of every map, as the kernel declares and user space opens it.
//! - [`endpoint`]: `ENDPOINTS` values (one per pod interface) and the per-endpoint mode.
//! - [`conntrack`]: `CONNTRACK` keys and values, TCP state bits.
//! - [`policy`]: `IPCACHE`, `CIDRS`, `POLICY` (identity-based rules with generations),
//!   `DENIED` and `FRAGMENTS`.
//! - [`event`]: ring-buffer flow events and the per-CPU counters.
//! - [`dns`]: DNS answers copied to user space.
//! - [`prefilter`]: the uplink XDP prefilter's keys, timings and counters.
//! - [`addr`]: the 16-byte address form and its IPv4 mapping.
#![no_std]

pub mod addr;
pub mod conntrack;
pub mod dns;
pub mod endpoint;
pub mod event;
pub mod maps;
pub mod policy;
pub mod prefilter;

/// IP protocol numbers the datapath classifies.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// Which side opened a connection, seen from the pod that owns the endpoint.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The pod opened the connection (the packet left through `from_pod`).
    Egress = 1,
    /// A peer opened the connection to the pod (the packet arrived through `to_pod`).
    Ingress = 2,
}

impl Direction {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Egress),
            2 => Some(Self::Ingress),
            _ => None,
        }
    }
}

/// What the datapath decided for a connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow = 1,
    /// Dropped (enforce mode).
    Deny = 2,
    /// A rule denies it but the endpoint's mode let it pass (monitor mode).
    WouldDeny = 3,
}

impl Verdict {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allow),
            2 => Some(Self::Deny),
            3 => Some(Self::WouldDeny),
            _ => None,
        }
    }
}

/// Per-endpoint mode.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Allow everything, record every new connection.
    Learn = 1,
    /// Evaluate rules and record would-deny, drop nothing.
    Monitor = 2,
    /// Drop what a rule denies.
    Enforce = 3,
}

impl Mode {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Learn),
            2 => Some(Self::Monitor),
            3 => Some(Self::Enforce),
            _ => None,
        }
    }
}

/// TC return codes used by the programs.
pub mod tc_action {
    /// Let the next program on the hook (TCX) or the next filter (clsact) decide; with no
    /// further program the packet passes. Allowing with this code keeps Palisade composable
    /// with other TCX users such as a CNI.
    pub const NEXT: i32 = -1;
    /// Drop the packet.
    pub const SHOT: i32 = 2;
}
