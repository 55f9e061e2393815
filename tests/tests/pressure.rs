//! The datapath under pressure, in the kernel with BPF_PROG_TEST_RUN: a flood of refused
//! attempts and a conntrack table filled past its size open nothing and cut no connection
//! the rules allow. Needs root.

use std::net::{IpAddr, Ipv4Addr};

use enforcer::datapath::{
    stats,
    writer::{Desired, PinnedWriter},
};
use enforcer_common::maps::{CONNTRACK_MAX, DENIED_MAX};
use model::{
    Direction, Protocol,
    identity::Identity,
    rules::{EndpointRules, Peer, PortRange, Rule},
};
use tests::{
    frames::{self, L4},
    kernel::{ENDPOINT, KernelNode, NEXT, POD4, SHOT},
    require_root,
};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PEER_ID: Identity = Identity(300);

fn pod() -> IpAddr {
    IpAddr::V4(POD4)
}

/// Egress TCP to port 8080 of anyone; nothing else, either way.
fn rules() -> Desired {
    let rules = EndpointRules::isolated(vec![Rule {
        id: 1,
        direction: Direction::Egress,
        peer: Peer::Any,
        protocol: Some(Protocol::Tcp),
        ports: Some(PortRange::single(8080)),
    }]);
    Desired {
        endpoints: [(ENDPOINT, rules)].into(),
        ipcache: [("10.244.0.20".parse().unwrap(), PEER_ID)].into(),
        ..Desired::default()
    }
}

fn out(peer: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frames::frame(
        pod(),
        peer,
        L4::Tcp {
            src: sport,
            dst: dport,
            flags,
        },
        None,
    )
}

fn inbound(peer: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frames::frame(
        peer,
        pod(),
        L4::Tcp {
            src: sport,
            dst: dport,
            flags,
        },
        None,
    )
}

/// The i-th address of 10.128.0.0/9 (distinct for i < 2^23).
fn nth_peer(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a80_0000 | (i & 0x007f_ffff)))
}

fn tracked(node: &KernelNode, peer: IpAddr, pod_port: u16) -> bool {
    let peer = enforcer::datapath::rules::kernel_addr(peer);
    stats::conntrack(&node.pins)
        .unwrap()
        .iter()
        .any(|(k, _)| k.peer_addr == peer && k.pod_port == pod_port)
}

#[test]
fn floods_and_a_full_conntrack_open_nothing_and_cut_nothing_allowed() {
    require_root!();
    let node = KernelNode::new();
    PinnedWriter::open(&node.pins)
        .unwrap()
        .apply(&rules())
        .unwrap();
    let server: IpAddr = "10.244.0.20".parse().unwrap();

    // A live, allowed connection.
    assert_eq!(
        node.run(Direction::Egress, &out(server, 40_000, 8080, SYN)),
        NEXT
    );
    assert_eq!(
        node.run(
            Direction::Ingress,
            &inbound(server, 8080, 40_000, SYN | ACK)
        ),
        NEXT
    );

    // A scan from the world, 1.5x the refused-attempts table: every attempt dropped, and
    // the live connection neither evicted nor disturbed.
    let flood = DENIED_MAX + DENIED_MAX / 2;
    for i in 0..flood {
        let attempt = inbound(nth_peer(i), 1024 + (i % 60_000) as u16, 22, SYN);
        assert_eq!(
            node.run(Direction::Ingress, &attempt),
            SHOT,
            "scan attempt {i}"
        );
    }
    assert!(
        tracked(&node, server, 40_000),
        "the flood evicted a live connection"
    );
    assert_eq!(
        node.run(Direction::Egress, &out(server, 40_000, 8080, ACK)),
        NEXT
    );

    // Allowed connections past conntrack's size: the LRU evicts the oldest, and nothing
    // that policy refuses gets through while it is full.
    let filled = CONNTRACK_MAX + CONNTRACK_MAX / 8;
    for i in 0..filled {
        let syn = out(nth_peer(i), 10_000 + (i % 50_000) as u16, 8080, SYN);
        assert_eq!(
            node.run(Direction::Egress, &syn),
            NEXT,
            "allowed connection {i}"
        );
        if i % 4096 == 0 {
            let refused = out(nth_peer(i), 10_000, 9090, SYN);
            assert_eq!(
                node.run(Direction::Egress, &refused),
                SHOT,
                "refused while filling, {i}"
            );
        }
    }
    // An evicted connection's next packet is judged again: the rules allow it, so it
    // flows; a mid-stream packet the rules refuse is never let through for lack of state.
    assert_eq!(
        node.run(Direction::Egress, &out(server, 40_000, 8080, ACK)),
        NEXT
    );
    assert_eq!(
        node.run(Direction::Egress, &out(server, 40_001, 9090, ACK)),
        SHOT
    );
    assert_eq!(
        node.run(Direction::Ingress, &inbound(server, 5555, 40_002, ACK)),
        SHOT
    );
}
