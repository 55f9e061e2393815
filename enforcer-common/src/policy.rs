//! `IPCACHE`, `CIDRS` and `POLICY`: what the datapath knows about peers, and what each
//! endpoint allows.
//!
//! A new connection is judged in constant time whatever the cluster's size: the peer's
//! address gives its identity (`IPCACHE`, an exact-match hash for pods and nodes) and, when
//! any rule names CIDRs, its most specific CIDR identity (`CIDRS`, an LPM trie); then at
//! most three `POLICY` lookups (that identity, the CIDR identity, any peer) decide. Every
//! `POLICY` entry allows; finding none means the rules deny.
//!
//! `POLICY` is one LPM trie for all endpoints, keyed by endpoint and a one-bit *generation*:
//! user space writes an endpoint's new rules under the generation not in use, then flips
//! `EndpointInfo::policy_generation` (one map update, atomic), then deletes the old
//! generation. An endpoint never runs half of an update.

use core::mem::size_of;

use crate::addr::Addr;

/// Identity numbers the datapath treats specially (see `model::identity`).
pub mod identity {
    /// The wildcard in `POLICY` keys: a rule for any peer. Never a peer's identity.
    pub const ANY: u32 = 0;
    /// The pod's own node: always allowed, in every mode.
    pub const HOST: u32 = 1;
    /// A peer outside the cluster that no CIDR names.
    pub const WORLD: u32 = 2;
}

/// `IPCACHE[address]`: the identity of a pod or node address, or of a Service ClusterIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpcacheValue {
    pub identity: u32,
    /// [`ipcache_flags`] bits.
    pub flags: u32,
}

/// Bits of [`IpcacheValue::flags`].
pub mod ipcache_flags {
    /// A Service ClusterIP: the connection is judged by the `POLICY` entries user space
    /// compiled from the Service's backends, and nothing else (no CIDR or wildcard entry,
    /// which speak of the address after DNAT, not of the ClusterIP).
    pub const SERVICE: u32 = 1;
}

const _: () = assert!(size_of::<IpcacheValue>() == 8);

/// `CIDRS` key data (after the trie's 32-bit prefix length): a family byte keeps IPv4 and
/// IPv6 prefixes apart (an IPv6 `::/0` must not cover IPv4-mapped addresses), then the
/// address. IPv4 prefix `p` is stored with prefix length `8 + 96 + p`, IPv6 with `8 + p`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CidrKey {
    /// 4 or 6.
    pub family: u8,
    /// Network byte order, IPv4-mapped for IPv4.
    pub addr: Addr,
}

const _: () = assert!(size_of::<CidrKey>() == 17);

impl CidrKey {
    /// The prefix length of a lookup: the family byte and the whole address.
    pub const LOOKUP_BITS: u32 = 8 + 128;

    /// The trie prefix length of an IPv4 (`family` 4) or IPv6 prefix of `bits`.
    pub const fn prefix_len(family: u8, bits: u8) -> u32 {
        if family == 4 {
            8 + 96 + bits as u32
        } else {
            8 + bits as u32
        }
    }
}

/// `POLICY` key data, every multi-byte field big-endian so prefixes run left to right:
/// endpoint, generation, direction and identity always match exactly (80 bits), then the
/// protocol (8 bits, left out for "every protocol"), then a prefix of the port (0-16 bits;
/// port ranges are stored as prefix-aligned blocks).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// Endpoint id, big-endian.
    pub endpoint: [u8; 4],
    /// 0 or 1: the generation the entry belongs to.
    pub generation: u8,
    /// A [`crate::Direction`] value.
    pub direction: u8,
    /// Peer identity, big-endian ([`identity::ANY`] = every peer).
    pub identity: [u8; 4],
    pub protocol: u8,
    /// Server port, big-endian.
    pub port: [u8; 2],
}

const _: () = assert!(size_of::<PolicyKey>() == 13);

impl PolicyKey {
    /// Bits that always match exactly: endpoint, generation, direction, identity.
    pub const FIXED_BITS: u32 = 80;
    /// Prefix length of a fully specified key (protocol and all 16 port bits).
    pub const FULL_BITS: u32 = Self::FIXED_BITS + 8 + 16;

    pub const fn new(
        endpoint: u32,
        generation: u8,
        direction: u8,
        identity: u32,
        protocol: u8,
        port: u16,
    ) -> Self {
        Self {
            endpoint: endpoint.to_be_bytes(),
            generation,
            direction,
            identity: identity.to_be_bytes(),
            protocol,
            port: port.to_be_bytes(),
        }
    }

    pub const fn endpoint_id(&self) -> u32 {
        u32::from_be_bytes(self.endpoint)
    }
}

/// `POLICY` value: the rule behind an allow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    pub rule_id: u32,
}

const _: () = assert!(size_of::<PolicyValue>() == 4);

/// `DENIED`: connections the datapath refused, kept apart from `CONNTRACK` so a scan or a
/// spoofed flood cannot evict live connections. It also limits deny events to one per
/// connection attempt per revision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeniedValue {
    pub first_ns: u64,
    pub last_ns: u64,
    /// Packets dropped for this attempt.
    pub packets: u64,
    /// The endpoint's policy revision when it was judged.
    pub policy_revision: u32,
    pub rule_id: u32,
}

const _: () = assert!(size_of::<DeniedValue>() == 32);

/// `FRAGMENTS`: the verdict of an IP datagram's first fragment, for its later fragments
/// (which carry no ports). Keyed by endpoint, addresses, protocol and IP id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub endpoint: u32,
    /// IPv4: 16-bit id; IPv6: the fragment header's 32-bit id.
    pub id: u32,
    pub src: Addr,
    pub dst: Addr,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<FragmentKey>() == 44);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentValue {
    /// A [`crate::Verdict`] value.
    pub verdict: u8,
    pub _pad: [u8; 7],
    pub last_ns: u64,
}

const _: () = assert!(size_of::<FragmentValue>() == 16);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY (all): repr(C), Copy, explicit padding only (checked by the size assertions).
    unsafe impl aya::Pod for IpcacheValue {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for DeniedValue {}
    unsafe impl aya::Pod for FragmentKey {}
    unsafe impl aya::Pod for FragmentValue {}
}
