//! Orienting a packet to the pod it belongs to.
//!
//! Programs run on the host side of the pod's veth: `from_pod` sees what the pod sends,
//! `to_pod` what it receives. Keys are written pod-first so both directions of a connection
//! meet in one conntrack entry.

use enforcer_common::{
    Direction,
    conntrack::{ConntrackKey, tcp_flags},
    proto,
};

use crate::parse::Parsed;

/// The hook a program runs on, named from the pod's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Host-side ingress: the pod is the sender.
    FromPod,
    /// Host-side egress: the pod is the receiver.
    ToPod,
}

/// The conntrack key of `p` on `endpoint`.
#[inline(always)]
pub fn conntrack_key(endpoint: u32, p: &Parsed, hook: Hook) -> ConntrackKey {
    let (pod_addr, peer_addr, pod_port, peer_port) = match hook {
        Hook::FromPod => (p.src, p.dst, p.src_port, p.dst_port),
        Hook::ToPod => (p.dst, p.src, p.dst_port, p.src_port),
    };
    ConntrackKey {
        endpoint,
        pod_addr,
        peer_addr,
        pod_port,
        peer_port,
        protocol: p.protocol,
        _pad: [0; 3],
    }
}

/// Who opened the connection whose first packet seen here is `p`. The sender did, unless
/// it is a TCP SYN-ACK (a handshake that started before we saw it): then the receiver did.
#[inline(always)]
pub fn opener(p: &Parsed, hook: Hook) -> Direction {
    let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
    let sender_is_server = p.protocol == proto::TCP && p.tcp_flags & syn_ack == syn_ack;
    match (hook, sender_is_server) {
        (Hook::FromPod, false) | (Hook::ToPod, true) => Direction::Egress,
        (Hook::ToPod, false) | (Hook::FromPod, true) => Direction::Ingress,
    }
}

/// The connection's server port: the peer's when the pod opened it, the pod's otherwise.
/// ICMP has no ports (the echo id identifies a conversation, not a service).
#[inline(always)]
pub fn server_port(key: &ConntrackKey, direction: Direction) -> u16 {
    if key.protocol == proto::ICMP || key.protocol == proto::ICMPV6 {
        return 0;
    }
    match direction {
        Direction::Egress => key.peer_port,
        Direction::Ingress => key.pod_port,
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::addr::from_ipv4;

    use super::*;

    const POD: [u8; 4] = [10, 244, 0, 2];
    const PEER: [u8; 4] = [10, 244, 0, 3];

    fn packet(from_pod: bool, protocol: u8, ports: (u16, u16), flags: u8) -> Parsed {
        let (src, dst) = if from_pod { (POD, PEER) } else { (PEER, POD) };
        Parsed {
            family: 4,
            protocol,
            src: from_ipv4(src),
            dst: from_ipv4(dst),
            src_port: ports.0,
            dst_port: ports.1,
            tcp_flags: flags,
            ..Parsed::EMPTY
        }
    }

    #[test]
    fn both_directions_of_a_connection_share_one_key() {
        let syn = packet(true, proto::TCP, (40000, 80), tcp_flags::SYN);
        let syn_ack = packet(
            false,
            proto::TCP,
            (80, 40000),
            tcp_flags::SYN | tcp_flags::ACK,
        );
        let out = conntrack_key(7, &syn, Hook::FromPod);
        assert_eq!(out, conntrack_key(7, &syn_ack, Hook::ToPod));
        assert_eq!((out.pod_port, out.peer_port), (40000, 80));
        assert_eq!(out.pod_addr, from_ipv4(POD));
    }

    #[test]
    fn each_endpoint_keys_its_own_entry() {
        // The same packet leaves pod A (endpoint 7) and reaches pod B (endpoint 8).
        let p = packet(true, proto::UDP, (5000, 53), 0);
        let a = conntrack_key(7, &p, Hook::FromPod);
        let b = conntrack_key(8, &p, Hook::ToPod);
        assert_ne!(a, b);
        assert_eq!(a.pod_addr, b.peer_addr);
        assert_eq!(opener(&p, Hook::FromPod), Direction::Egress);
        assert_eq!(opener(&p, Hook::ToPod), Direction::Ingress);
    }

    #[test]
    fn a_syn_ack_seen_first_means_the_receiver_opened() {
        let syn_ack = packet(
            false,
            proto::TCP,
            (80, 40000),
            tcp_flags::SYN | tcp_flags::ACK,
        );
        assert_eq!(opener(&syn_ack, Hook::ToPod), Direction::Egress);
        let key = conntrack_key(7, &syn_ack, Hook::ToPod);
        assert_eq!(server_port(&key, Direction::Egress), 80);
    }

    #[test]
    fn the_server_port_is_named_in_both_directions() {
        let out = packet(true, proto::TCP, (40000, 443), tcp_flags::SYN);
        let key = conntrack_key(7, &out, Hook::FromPod);
        assert_eq!(server_port(&key, Direction::Egress), 443);
        let inbound = packet(false, proto::TCP, (51000, 8080), tcp_flags::SYN);
        let key = conntrack_key(7, &inbound, Hook::ToPod);
        assert_eq!(server_port(&key, Direction::Ingress), 8080);
        assert_eq!(key.peer_addr, from_ipv4(PEER));
    }

    #[test]
    fn icmp_has_no_server_port() {
        let echo = packet(true, proto::ICMP, (77, 0), 0);
        let key = conntrack_key(7, &echo, Hook::FromPod);
        assert_eq!(server_port(&key, Direction::Egress), 0);
    }
}
