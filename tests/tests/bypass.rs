//! No bypasses in enforce mode (issue 3, item 7), each case a real frame through the
//! kernel programs with BPF_PROG_TEST_RUN: IP options, IPv6 extension-header chains,
//! truncated headers, unclassifiable frames, fragments (tiny, later without a first,
//! overlapping), source spoofing and ARP spoofing. And what always passes: neighbour
//! discovery, and ARP for the pod's own address. Needs root.

use std::net::{IpAddr, Ipv6Addr};

use enforcer::datapath::writer::{Desired, PinnedWriter};
use model::{
    Direction, Protocol,
    identity::Identity,
    rules::{EndpointRules, Peer, PortRange, Rule},
};
use tests::{
    frames::{self, L4},
    kernel::{ENDPOINT, KernelNode, NEXT, POD4, POD6, SHOT},
    require_root,
};

const SYN: u8 = 0x02;

/// Egress allowed to TCP 443 and UDP 53 of anyone; nothing else either way.
fn node() -> KernelNode {
    let node = KernelNode::new();
    let rule = |id, protocol, port| Rule {
        id,
        direction: Direction::Egress,
        peer: Peer::Any,
        protocol: Some(protocol),
        ports: Some(PortRange::single(port)),
    };
    let desired = Desired {
        endpoints: [(
            ENDPOINT,
            EndpointRules::isolated(vec![
                rule(1, Protocol::Tcp, 443),
                rule(2, Protocol::Udp, 53),
            ]),
        )]
        .into(),
        ipcache: [("10.244.0.9".parse().unwrap(), Identity(300))].into(),
        ..Desired::default()
    };
    PinnedWriter::open(&node.pins)
        .unwrap()
        .apply(&desired)
        .unwrap();
    node
}

fn peer4() -> IpAddr {
    "203.0.113.9".parse().unwrap()
}

fn syn(dport: u16, sport: u16) -> Vec<u8> {
    frames::frame(
        POD4.into(),
        peer4(),
        L4::Tcp {
            src: sport,
            dst: dport,
            flags: SYN,
        },
        None,
    )
}

/// Insert IPv4 options (`words` 4-byte words of NOPs) into a frame built without them.
fn with_ipv4_options(mut frame: Vec<u8>, words: usize) -> Vec<u8> {
    let options = vec![1u8; words * 4];
    frame.splice(34..34, options);
    frame[14] = 0x45 + words as u8;
    frame
}

/// Insert IPv6 extension headers (hop-by-hop, destination, routing) before the transport.
fn with_ipv6_chain(mut frame: Vec<u8>) -> Vec<u8> {
    let transport = frame[20];
    // (next header, length in 8-byte units minus 1) chained: HOP -> DEST -> ROUTING -> L4.
    let chain = [(60u8, 0u8), (43, 1), (transport, 0)];
    let mut headers = Vec::new();
    for (next, len) in chain {
        let mut h = vec![0u8; (usize::from(len) + 1) * 8];
        h[0] = next;
        h[1] = len;
        headers.extend_from_slice(&h);
    }
    frame[20] = 0; // hop-by-hop first
    frame.splice(54..54, headers);
    frame
}

#[test]
fn options_and_extension_headers_are_judged_like_plain_packets() {
    require_root!();
    let node = node();
    assert_eq!(
        node.run(Direction::Egress, &with_ipv4_options(syn(443, 1000), 3)),
        NEXT
    );
    assert_eq!(
        node.run(Direction::Egress, &with_ipv4_options(syn(22, 1001), 3)),
        SHOT
    );
    let v6 = |dport, sport| {
        let peer: IpAddr = "2001:db8::9".parse().unwrap();
        frames::frame(
            POD6.into(),
            peer,
            L4::Tcp {
                src: sport,
                dst: dport,
                flags: SYN,
            },
            None,
        )
    };
    assert_eq!(
        node.run(Direction::Egress, &with_ipv6_chain(v6(443, 1002))),
        NEXT
    );
    assert_eq!(
        node.run(Direction::Egress, &with_ipv6_chain(v6(22, 1003))),
        SHOT
    );
}

#[test]
fn what_cannot_be_read_never_passes() {
    require_root!();
    let node = node();
    // Truncated TCP header (a tiny first fragment looks the same): 8 bytes of 20.
    let mut tiny = syn(443, 1100);
    tiny.truncate(14 + 20 + 8);
    assert_eq!(
        node.run(Direction::Egress, &tiny),
        SHOT,
        "truncated TCP header"
    );
    let tiny_first = {
        let mut f = frames::frame(
            POD4.into(),
            peer4(),
            L4::Tcp {
                src: 1101,
                dst: 443,
                flags: SYN,
            },
            Some((true, 0)),
        );
        f.truncate(14 + 20 + 8);
        f
    };
    assert_eq!(
        node.run(Direction::Egress, &tiny_first),
        SHOT,
        "tiny first fragment"
    );
    // An ethertype the parser does not know.
    let mut unknown = syn(443, 1102);
    unknown[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    assert_eq!(
        node.run(Direction::Egress, &unknown),
        SHOT,
        "unknown ethertype"
    );
    // An IPv4 header that says IHL 4.
    let mut bad = syn(443, 1103);
    bad[14] = 0x44;
    assert_eq!(node.run(Direction::Egress, &bad), SHOT, "invalid IHL");
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    require_root!();
    let node = node();
    let udp = |sport, dport, frag| {
        frames::frame(
            POD4.into(),
            peer4(),
            L4::Udp {
                src: sport,
                dst: dport,
            },
            frag,
        )
    };
    // A later fragment whose first was never seen.
    assert_eq!(
        node.run(Direction::Egress, &udp(1200, 53, Some((false, 10)))),
        SHOT
    );
    // An allowed first fragment lets its datagram's later fragments through (same IP id).
    assert_eq!(
        node.run(Direction::Egress, &udp(1201, 53, Some((true, 0)))),
        NEXT
    );
    assert_eq!(
        node.run(Direction::Egress, &udp(1201, 53, Some((false, 10)))),
        NEXT
    );
    // A refused first fragment takes its later fragments with it.
    let refused_first = frames::frame(
        POD4.into(),
        "198.51.100.9".parse().unwrap(),
        L4::Udp {
            src: 1202,
            dst: 9999,
        },
        Some((true, 0)),
    );
    assert_eq!(node.run(Direction::Egress, &refused_first), SHOT);
    let refused_later = frames::frame(
        POD4.into(),
        "198.51.100.9".parse().unwrap(),
        L4::Udp {
            src: 1202,
            dst: 9999,
        },
        Some((false, 10)),
    );
    assert_eq!(node.run(Direction::Egress, &refused_later), SHOT);
    // A TCP fragment at offset 8 would rewrite the header of an allowed first fragment.
    let first = frames::frame(
        POD4.into(),
        peer4(),
        L4::Tcp {
            src: 1203,
            dst: 443,
            flags: SYN,
        },
        Some((true, 0)),
    );
    assert_eq!(node.run(Direction::Egress, &first), NEXT);
    let overlap = frames::frame(
        POD4.into(),
        peer4(),
        L4::Tcp {
            src: 1203,
            dst: 22,
            flags: SYN,
        },
        Some((false, 1)),
    );
    assert_eq!(
        node.run(Direction::Egress, &overlap),
        SHOT,
        "overlapping fragment"
    );
}

#[test]
fn spoofed_sources_are_dropped_and_discovery_always_passes() {
    require_root!();
    let node = node();
    // The pod sends from an address that is not its own: even to an allowed port.
    let spoofed = frames::frame(
        "10.244.0.77".parse().unwrap(),
        peer4(),
        L4::Tcp {
            src: 1300,
            dst: 443,
            flags: SYN,
        },
        None,
    );
    assert_eq!(
        node.run(Direction::Egress, &spoofed),
        SHOT,
        "spoofed IPv4 source"
    );
    let spoofed6 = frames::frame(
        "fd00:10:244::77".parse().unwrap(),
        "2001:db8::9".parse().unwrap(),
        L4::Tcp {
            src: 1301,
            dst: 443,
            flags: SYN,
        },
        None,
    );
    assert_eq!(
        node.run(Direction::Egress, &spoofed6),
        SHOT,
        "spoofed IPv6 source"
    );
    // ARP: for its own address passes, for another address is dropped.
    assert_eq!(
        node.run(Direction::Egress, &arp(POD4.octets())),
        NEXT,
        "own ARP"
    );
    assert_eq!(
        node.run(Direction::Egress, &arp([10, 244, 0, 77])),
        SHOT,
        "ARP spoof"
    );
    assert_eq!(
        node.run(Direction::Ingress, &arp([10, 244, 0, 1])),
        NEXT,
        "ARP to the pod"
    );
    // Neighbour solicitation from the pod's link-local address passes, isolated or not.
    let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
    assert_eq!(
        node.run(Direction::Egress, &neighbour_solicitation(link_local)),
        NEXT
    );
    assert_eq!(
        node.run(Direction::Ingress, &neighbour_solicitation(link_local)),
        NEXT
    );
}

/// An ARP request from `sender`.
fn arp(sender: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[169, 254, 1, 1]);
    f
}

/// A neighbour solicitation (ICMPv6 type 135) from `src` to the solicited-node group.
fn neighbour_solicitation(src: Ipv6Addr) -> Vec<u8> {
    let mut f = vec![0x33, 0x33, 0xff, 0, 0, 1, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&24u16.to_be_bytes());
    ip[6] = 58;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&src.octets());
    let group: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    ip[24..40].copy_from_slice(&group.octets());
    f.extend_from_slice(&ip);
    let mut icmp = vec![0u8; 24];
    icmp[0] = 135;
    f.extend_from_slice(&icmp);
    f
}
