//! The XDP prefilter on node uplinks: `PREFILTER` (denied external CIDRs), the replies it
//! must never drop (`UPLINK_ALLOWED`, `PREFILTER_FRAGS`) and its counters.
//!
//! `PREFILTER` is an LPM trie keyed by [`crate::policy::CidrKey`] (family byte, then the
//! address; see [`crate::policy::CidrKey::prefix_len`]) whose value is a rule id (`u32`,
//! never 0) that user space gives each denied CIDR; drops are counted per rule id in
//! `PREFILTER_DROPS` (per-CPU hash, `u32` -> `u64`).
//!
//! A packet from a denied CIDR still passes when it belongs to a connection that left the
//! node through an uplink: `prefilter_out`, a TC program on the uplink's egress, records
//! every connection it sees leave in `UPLINK_ALLOWED` ([`UplinkKey`] -> last seen, ns). It
//! records them *after* the node's NAT, so a pod's connection that was masqueraded to the
//! node's address is found by the reply, which carries the translated addresses. Whatever
//! reaches the uplink's egress was allowed by the pod's policy (`from_pod` drops what it
//! denies before routing).

use core::mem::size_of;

use crate::addr::Addr;

/// A connection as it crossed the uplink, oriented to the node: the remote (world) side
/// first. The prefilter builds the same key from a packet coming in (remote = its source)
/// as `prefilter_out` builds from a packet going out (remote = its destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UplinkKey {
    /// The remote side's address (network byte order, IPv4-mapped for IPv4).
    pub remote: Addr,
    /// The node's side: a pod's address, or the node's own after masquerading.
    pub local: Addr,
    /// Host byte order. For ICMP echo: the echo id on the side that sent the request, 0 on
    /// the other (as the parser reports it).
    pub remote_port: u16,
    pub local_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<UplinkKey>() == 40);

impl UplinkKey {
    /// The key of a packet leaving the node (`src` is the local side).
    pub const fn outgoing(
        src: Addr,
        dst: Addr,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> Self {
        Self {
            remote: dst,
            local: src,
            remote_port: dst_port,
            local_port: src_port,
            protocol,
            _pad: [0; 3],
        }
    }

    /// The key of a packet arriving at the node (`src` is the remote side).
    pub const fn incoming(
        src: Addr,
        dst: Addr,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> Self {
        Self {
            remote: src,
            local: dst,
            remote_port: src_port,
            local_port: dst_port,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// How long the prefilter keeps passing replies of a connection with no packet in either
/// direction, and the other timings of its maps (nanoseconds, `bpf_ktime_get_coarse_ns`).
pub mod lifetime {
    use crate::conntrack::lifetime as conntrack;

    /// TCP: as long as an established conntrack entry lives.
    pub const TCP: u64 = conntrack::TCP_ESTABLISHED;
    /// UDP, ICMP and the rest: as long as a conntrack entry of theirs.
    pub const OTHER: u64 = conntrack::NON_TCP;
    /// A later fragment follows its first fragment's pass this long (the kernel's default
    /// reassembly timeout, `net.ipv4.ipfrag_time`).
    pub const FRAGMENT: u64 = 30_000_000_000;
    /// A live entry's time stamp is rewritten at most this often: every packet rewriting it
    /// would bounce its cache line between CPUs for nothing.
    pub const REFRESH: u64 = 1_000_000_000;
    // A refresh must come well before any entry could expire.
    const _: () = assert!(REFRESH < OTHER && REFRESH < FRAGMENT);

    /// The idle lifetime of a connection of `protocol`.
    pub const fn of(protocol: u8) -> u64 {
        if protocol == crate::proto::TCP {
            TCP
        } else {
            OTHER
        }
    }
}

/// Slots of the per-CPU `PREFILTER_STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefilterCounter {
    /// Packets whose source is in a denied CIDR (before the exceptions below).
    Matched = 0,
    /// Packets dropped (also counted per rule in `PREFILTER_DROPS`).
    Dropped = 1,
    /// Passed: a reply (or related ICMP error) of a connection that left through an uplink.
    Replies = 2,
    /// Passed: a later fragment of a reply's datagram.
    Fragments = 3,
    /// Passed: the source is a pod or node of the cluster (`IPCACHE`), never "external".
    Cluster = 4,
    /// Passed: IPv6 neighbour discovery (like ARP, never dropped).
    Neighbours = 5,
    /// Connections `prefilter_out` started to record.
    Recorded = 6,
}

impl PrefilterCounter {
    pub const COUNT: u32 = 7;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Matched,
        Self::Dropped,
        Self::Replies,
        Self::Fragments,
        Self::Cluster,
        Self::Neighbours,
        Self::Recorded,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::Dropped => "dropped",
            Self::Replies => "replies_passed",
            Self::Fragments => "fragments_passed",
            Self::Cluster => "cluster_passed",
            Self::Neighbours => "neighbour_discovery_passed",
            Self::Recorded => "connections_recorded",
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding only (checked by the size assertion above).
unsafe impl aya::Pod for UplinkKey {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr::from_ipv4, proto};

    const NODE: Addr = from_ipv4([192, 0, 2, 1]);
    const WORLD: Addr = from_ipv4([203, 0, 113, 10]);

    #[test]
    fn a_reply_finds_the_connection_that_went_out() {
        let out = UplinkKey::outgoing(NODE, WORLD, 40000, 443, proto::TCP);
        let reply = UplinkKey::incoming(WORLD, NODE, 443, 40000, proto::TCP);
        assert_eq!(out, reply);
        assert_eq!((out.remote, out.remote_port), (WORLD, 443));
    }

    #[test]
    fn a_connection_opened_from_outside_is_another_key() {
        let out = UplinkKey::outgoing(NODE, WORLD, 40000, 443, proto::TCP);
        // The world side connecting to the same ports the other way round.
        let inbound = UplinkKey::incoming(WORLD, NODE, 40000, 443, proto::TCP);
        assert_ne!(out, inbound);
    }

    #[test]
    fn icmp_echo_ids_meet_on_the_requesters_side() {
        // The parser puts the echo id in src_port of a request, dst_port of a reply.
        let request = UplinkKey::outgoing(NODE, WORLD, 77, 0, proto::ICMP);
        let reply = UplinkKey::incoming(WORLD, NODE, 0, 77, proto::ICMP);
        assert_eq!(request, reply);
    }

    #[test]
    fn tcp_lives_longer_than_the_rest() {
        assert_eq!(lifetime::of(proto::TCP), lifetime::TCP);
        assert_eq!(lifetime::of(proto::UDP), lifetime::OTHER);
    }

    #[test]
    fn counters_are_listed_in_slot_order() {
        for (i, c) in PrefilterCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
