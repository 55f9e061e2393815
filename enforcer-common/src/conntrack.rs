//! `CONNTRACK`: one entry per connection per endpoint.
//!
//! The key is the 5-tuple oriented to the pod (its own address and port first), so both
//! directions of a connection find the same entry with one lookup; the direction that opened
//! the connection is kept in the value. Two pods on one node that talk to each other each
//! have their own entry (the endpoint is part of the key), so each judges the connection
//! under its own rules.

use core::mem::size_of;

use crate::addr::Addr;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConntrackKey {
    /// [`crate::endpoint::EndpointInfo::endpoint_id`].
    pub endpoint: u32,
    /// The pod's address (network byte order, IPv4-mapped for IPv4).
    pub pod_addr: Addr,
    /// The peer's address (network byte order, IPv4-mapped for IPv4).
    pub peer_addr: Addr,
    /// The pod's port (host byte order). For ICMP echo: the echo id on the side that sent
    /// the request, 0 on the other side.
    pub pod_port: u16,
    /// The peer's port (host byte order), ICMP as for `pod_port`.
    pub peer_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<ConntrackKey>() == 44);

/// TCP state bits kept in [`ConntrackValue::tcp_state`].
pub mod tcp_state {
    pub const SYN_FROM_POD: u8 = 1 << 0;
    pub const SYN_FROM_PEER: u8 = 1 << 1;
    pub const FIN_FROM_POD: u8 = 1 << 2;
    pub const FIN_FROM_PEER: u8 = 1 << 3;
    pub const RST: u8 = 1 << 4;

    /// Both sides sent SYN: the handshake completed (or is completing).
    pub const fn is_established(state: u8) -> bool {
        state & (SYN_FROM_POD | SYN_FROM_PEER) == SYN_FROM_POD | SYN_FROM_PEER
    }

    /// Reset, or both sides sent FIN: the connection is going away.
    pub const fn is_closing(state: u8) -> bool {
        state & RST != 0 || state & (FIN_FROM_POD | FIN_FROM_PEER) == FIN_FROM_POD | FIN_FROM_PEER
    }
}

/// TCP header flag bits as they appear in byte 13 of the header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// How long an idle entry stays live, by protocol and state (nanoseconds).
pub mod lifetime {
    const SEC: u64 = 1_000_000_000;
    pub const TCP_SYN: u64 = 60 * SEC;
    pub const TCP_ESTABLISHED: u64 = 6 * 3600 * SEC;
    pub const TCP_CLOSING: u64 = 10 * SEC;
    pub const NON_TCP: u64 = 60 * SEC;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackValue {
    /// `bpf_ktime_get_ns` when the connection was first seen.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
    /// Packets and bytes (L2 frame length) the pod sent on this connection.
    pub packets_from_pod: u64,
    pub bytes_from_pod: u64,
    /// Packets and bytes the pod received on this connection.
    pub packets_to_pod: u64,
    pub bytes_to_pod: u64,
    /// The endpoint's policy revision when the verdict was taken.
    pub policy_revision: u32,
    /// The rule behind the verdict (0 = none: allowed by default).
    pub rule_id: u32,
    /// A [`crate::Direction`] value: who opened the connection.
    pub direction: u8,
    /// A [`crate::Verdict`] value.
    pub verdict: u8,
    /// The [`crate::Mode`] the verdict was taken under.
    pub mode: u8,
    /// [`tcp_state`] bits.
    pub tcp_state: u8,
    pub _pad: [u8; 4],
}

const _: () = assert!(size_of::<ConntrackValue>() == 64);

impl ConntrackValue {
    /// How long this entry stays live without traffic.
    pub const fn lifetime_ns(&self, protocol: u8) -> u64 {
        if protocol != crate::proto::TCP {
            lifetime::NON_TCP
        } else if tcp_state::is_closing(self.tcp_state) {
            lifetime::TCP_CLOSING
        } else if tcp_state::is_established(self.tcp_state) {
            lifetime::TCP_ESTABLISHED
        } else {
            lifetime::TCP_SYN
        }
    }

    /// The entry no longer describes a live connection at `now_ns`.
    pub const fn is_expired(&self, protocol: u8, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.lifetime_ns(protocol)
    }

    /// Does a packet with TCP `flags` open a new connection over this entry? A bare SYN
    /// reuses a 5-tuple only once the old connection is closing; a retransmitted SYN of the
    /// handshake in progress does not.
    pub const fn reopened_by(&self, flags: u8) -> bool {
        flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
            && tcp_state::is_closing(self.tcp_state)
    }
}

/// The new TCP state after a packet with `flags` in the given direction.
pub const fn tcp_advance(state: u8, flags: u8, from_pod: bool) -> u8 {
    let mut next = state;
    if flags & tcp_flags::SYN != 0 {
        next |= if from_pod {
            tcp_state::SYN_FROM_POD
        } else {
            tcp_state::SYN_FROM_PEER
        };
    }
    if flags & tcp_flags::FIN != 0 {
        next |= if from_pod {
            tcp_state::FIN_FROM_POD
        } else {
            tcp_state::FIN_FROM_PEER
        };
    }
    if flags & tcp_flags::RST != 0 {
        next |= tcp_state::RST;
    }
    next
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding only (checked by the size assertions above).
unsafe impl aya::Pod for ConntrackKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for ConntrackValue {}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(state: u8, last_seen_ns: u64) -> ConntrackValue {
        ConntrackValue {
            created_ns: 0,
            last_seen_ns,
            packets_from_pod: 0,
            bytes_from_pod: 0,
            packets_to_pod: 0,
            bytes_to_pod: 0,
            policy_revision: 0,
            rule_id: 0,
            direction: 1,
            verdict: 1,
            mode: 1,
            tcp_state: state,
            _pad: [0; 4],
        }
    }

    #[test]
    fn handshake_then_close() {
        let s = tcp_advance(0, tcp_flags::SYN, true);
        assert!(!tcp_state::is_established(s));
        let s = tcp_advance(s, tcp_flags::SYN | tcp_flags::ACK, false);
        assert!(tcp_state::is_established(s));
        let s = tcp_advance(s, tcp_flags::FIN | tcp_flags::ACK, true);
        assert!(!tcp_state::is_closing(s), "one FIN is a half close");
        let s = tcp_advance(s, tcp_flags::FIN | tcp_flags::ACK, false);
        assert!(tcp_state::is_closing(s));
    }

    #[test]
    fn rst_closes_at_once() {
        let s = tcp_advance(tcp_state::SYN_FROM_POD, tcp_flags::RST, false);
        assert!(tcp_state::is_closing(s));
    }

    #[test]
    fn lifetimes_follow_state() {
        let tcp = crate::proto::TCP;
        assert_eq!(
            value(tcp_state::SYN_FROM_POD, 0).lifetime_ns(tcp),
            lifetime::TCP_SYN
        );
        let est = tcp_state::SYN_FROM_POD | tcp_state::SYN_FROM_PEER;
        assert_eq!(value(est, 0).lifetime_ns(tcp), lifetime::TCP_ESTABLISHED);
        assert_eq!(
            value(est | tcp_state::RST, 0).lifetime_ns(tcp),
            lifetime::TCP_CLOSING
        );
        assert_eq!(
            value(0, 0).lifetime_ns(crate::proto::UDP),
            lifetime::NON_TCP
        );
    }

    #[test]
    fn expiry_is_relative_to_last_packet() {
        let v = value(0, 1_000);
        assert!(!v.is_expired(crate::proto::UDP, 1_000 + lifetime::NON_TCP));
        assert!(v.is_expired(crate::proto::UDP, 1_001 + lifetime::NON_TCP));
        // A clock that reads earlier than last_seen (another CPU) is not expiry.
        assert!(!v.is_expired(crate::proto::UDP, 0));
    }

    #[test]
    fn only_a_bare_syn_on_a_closing_entry_reopens() {
        let closing = value(tcp_state::RST | tcp_state::SYN_FROM_POD, 0);
        assert!(closing.reopened_by(tcp_flags::SYN));
        assert!(!closing.reopened_by(tcp_flags::SYN | tcp_flags::ACK));
        let handshake = value(tcp_state::SYN_FROM_POD, 0);
        assert!(
            !handshake.reopened_by(tcp_flags::SYN),
            "a retransmitted SYN"
        );
    }
}
