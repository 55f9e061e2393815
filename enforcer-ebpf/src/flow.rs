//! Orienting a packet to the pod it belongs to.
//!
//! Programs run on the host side of the pod's veth: `from_pod` sees what the pod sends,
//! `to_pod` what it receives. Keys are written pod-first so both directions of a connection
//! meet in one conntrack entry.

use enforcer_common::{
    Direction,
    conntrack::{ConntrackKey, tcp_flags},
    deny::DenyKey,
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

/// The `DENY` key that names this connection's peer, protocol and server port.
#[inline(always)]
pub fn deny_key(key: &ConntrackKey, direction: Direction) -> DenyKey {
    DenyKey::new(
        key.endpoint,
        key.peer_addr,
        key.protocol,
        server_port(key, direction),
    )
}
