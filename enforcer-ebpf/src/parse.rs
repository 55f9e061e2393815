//! Classifying a packet: Ethernet (with up to two VLAN tags), IPv4 (options, fragments),
//! IPv6 (extension header chain, fragments), then TCP, UDP, SCTP, ICMP or ICMPv6.
//!
//! The parser reports what it could not classify instead of guessing; the caller decides
//! what an unclassified packet means under the endpoint's mode.

use enforcer_common::{
    addr::{Addr, from_ipv4},
    proto,
};

use crate::packet::Packet;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const MAX_VLAN_TAGS: usize = 2;

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers followed before giving up. Real traffic carries one or two.
const MAX_IPV6_EXT_HEADERS: usize = 8;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Router solicitation .. redirect (133-137): neighbour discovery.
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;
/// Multicast listener discovery: query, v1 report, v1 done (130-132) and v2 report (143).
const MLD_QUERY: u8 = 130;
const MLD_V1_DONE: u8 = 132;
const MLD_V2_REPORT: u8 = 143;

/// Where a packet sits in its IP datagram's fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// The first fragment: it carries the transport header.
    First,
    /// A later fragment: no transport header, ports unknown.
    Later,
}

/// The 5-tuple of the datagram an ICMP error quotes, as that datagram was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub protocol: u8,
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Quoted {
    const EMPTY: Self = Self {
        protocol: 0,
        src: [0; 16],
        dst: [0; 16],
        src_port: 0,
        dst_port: 0,
    };
}

/// A classified packet. In the kernel it lives in per-CPU map memory, not on the 512-byte
/// stack, and the parser fills it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// 4 or 6.
    pub family: u8,
    /// Transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// For ARP: the sender's protocol address (IPv4-mapped).
    pub src: Addr,
    pub dst: Addr,
    /// Host order. For ICMP echo the echo id sits on the requester's side: `src_port` of a
    /// request, `dst_port` of a reply; 0 for other ICMP and for later fragments.
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    pub fragment: Fragment,
    /// IP identification of the datagram (IPv4: 16 bits; IPv6: the fragment header's 32
    /// bits; 0 when not fragmented).
    pub fragment_id: u32,
    /// Where this fragment's data starts in the datagram's payload, in bytes.
    pub fragment_offset: u16,
    /// Offset of the TCP or UDP payload in the frame (0 for other protocols).
    pub payload_offset: u16,
    /// An ICMP or ICMPv6 error quoting a datagram (in `quoted`), which belongs to the
    /// connection the error is about.
    pub has_quoted: bool,
    pub quoted: Quoted,
}

impl Parsed {
    pub const EMPTY: Self = Self {
        family: 0,
        protocol: 0,
        src: [0; 16],
        dst: [0; 16],
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        fragment: Fragment::None,
        fragment_id: 0,
        fragment_offset: 0,
        payload_offset: 0,
        has_quoted: false,
        quoted: Quoted::EMPTY,
    };
}

/// What the parser made of a frame. One byte, so out-of-line parsers return it in a
/// register (BPF subprograms cannot return aggregates).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An IP packet, described in the `Parsed`.
    Ip,
    /// ARP; the sender's address is in `Parsed::src`.
    Arp,
    /// ICMPv6 neighbour discovery or multicast listener discovery: always passes.
    NeighbourDiscovery,
    /// Truncated or invalid headers, an unknown ethertype, or an IPv6 extension header chain
    /// too long to reach the transport header.
    Unclassified,
}

/// Classify the frame in `pkt`, filling `p`. Whatever `p` held before is overwritten where
/// it matters (it is reused from packet to packet; clearing all of it costs per packet).
#[inline(always)]
pub fn parse_into<P: Packet + ?Sized>(pkt: &P, p: &mut Parsed) -> Kind {
    p.src_port = 0;
    p.dst_port = 0;
    p.tcp_flags = 0;
    p.fragment = Fragment::None;
    p.fragment_id = 0;
    p.fragment_offset = 0;
    p.payload_offset = 0;
    p.has_quoted = false;
    let Some((ethertype, l3)) = ethernet(pkt) else {
        return Kind::Unclassified;
    };
    match ethertype {
        ETH_P_IP => ipv4(pkt, l3, p),
        ETH_P_IPV6 => ipv6(pkt, l3, p),
        // Ethernet/IPv4 ARP: the sender protocol address sits 14 bytes in.
        ETH_P_ARP => match pkt.bytes::<4>(l3 + 14) {
            Some(sender) => {
                p.src = from_ipv4(sender);
                Kind::Arp
            }
            None => Kind::Unclassified,
        },
        _ => Kind::Unclassified,
    }
}

/// The ethertype after any VLAN tags (at most two), and the offset of the L3 header.
#[inline(always)]
pub fn ethernet<P: Packet + ?Sized>(pkt: &P) -> Option<(u16, usize)> {
    let mut off = ETH_HLEN;
    let mut ethertype = pkt.be16_at(12)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag: TCI (2 bytes), then the inner ethertype.
        ethertype = pkt.be16_at(off + 2)?;
        off += 4;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return None;
    }
    Some((ethertype, off))
}

fn fragment_kind(offset: u16, more: bool) -> Fragment {
    match (offset, more) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    }
}

// Out of line: in BPF each header parser gets its own stack frame.
#[inline(never)]
fn ipv4<P: Packet + ?Sized>(pkt: &P, off: usize, p: &mut Parsed) -> Kind {
    let Some(hdr) = pkt.bytes::<20>(off) else {
        return Kind::Unclassified;
    };
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if hdr[0] >> 4 != 4 || ihl < 20 {
        return Kind::Unclassified;
    }
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let offset = frag & 0x1fff;
    p.family = 4;
    p.protocol = hdr[9];
    p.src = from_ipv4([hdr[12], hdr[13], hdr[14], hdr[15]]);
    p.dst = from_ipv4([hdr[16], hdr[17], hdr[18], hdr[19]]);
    p.fragment = fragment_kind(offset, frag & 0x2000 != 0);
    if p.fragment != Fragment::None {
        p.fragment_id = u32::from(u16::from_be_bytes([hdr[4], hdr[5]]));
        p.fragment_offset = offset.wrapping_mul(8);
    }
    transport(pkt, off + ihl, p)
}

#[inline(never)]
fn ipv6<P: Packet + ?Sized>(pkt: &P, off: usize, p: &mut Parsed) -> Kind {
    let Some(fixed) = pkt.bytes::<8>(off) else {
        return Kind::Unclassified;
    };
    if fixed[0] >> 4 != 6 {
        return Kind::Unclassified;
    }
    let (Some(src), Some(dst)) = (pkt.bytes::<16>(off + 8), pkt.bytes::<16>(off + 24)) else {
        return Kind::Unclassified;
    };
    p.family = 6;
    p.src = src;
    p.dst = dst;
    let mut next = fixed[6];
    let mut l4 = off + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !matches!(
            next,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
        ) {
            break;
        }
        let Some(ext) = pkt.bytes::<8>(l4) else {
            return Kind::Unclassified;
        };
        let len = match next {
            NEXTHDR_FRAGMENT => {
                let offset = u16::from_be_bytes([ext[2], ext[3]]) >> 3;
                p.fragment = fragment_kind(offset, ext[3] & 1 != 0);
                p.fragment_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                p.fragment_offset = offset.wrapping_mul(8);
                8
            }
            // AH counts its length in 4-byte units, minus 2.
            NEXTHDR_AUTH => (usize::from(ext[1]) + 2) * 4,
            _ => (usize::from(ext[1]) + 1) * 8,
        };
        next = ext[0];
        l4 += len;
    }
    // Still inside the extension header chain: refuse to guess.
    if matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
    ) {
        return Kind::Unclassified;
    }
    p.protocol = next;
    transport(pkt, l4, p)
}

#[inline(always)]
fn transport<P: Packet + ?Sized>(pkt: &P, off: usize, p: &mut Parsed) -> Kind {
    if p.fragment == Fragment::Later {
        return Kind::Ip;
    }
    match p.protocol {
        proto::TCP => {
            let Some(h) = pkt.bytes::<14>(off) else {
                return Kind::Unclassified;
            };
            p.src_port = u16::from_be_bytes([h[0], h[1]]);
            p.dst_port = u16::from_be_bytes([h[2], h[3]]);
            p.tcp_flags = h[13];
            p.payload_offset = (off + usize::from(h[12] >> 4) * 4) as u16;
        }
        proto::UDP | proto::SCTP => {
            let Some(h) = pkt.bytes::<4>(off) else {
                return Kind::Unclassified;
            };
            p.src_port = u16::from_be_bytes([h[0], h[1]]);
            p.dst_port = u16::from_be_bytes([h[2], h[3]]);
            if p.protocol == proto::UDP {
                p.payload_offset = (off + 8) as u16;
            }
        }
        proto::ICMP if p.family == 4 => {
            let Some(h) = pkt.bytes::<8>(off) else {
                return Kind::Unclassified;
            };
            let id = u16::from_be_bytes([h[4], h[5]]);
            match h[0] {
                ICMP_ECHO_REQUEST => p.src_port = id,
                ICMP_ECHO_REPLY => p.dst_port = id,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    p.has_quoted = quoted_ipv4(pkt, off + 8, &mut p.quoted);
                }
                _ => {}
            }
        }
        proto::ICMPV6 if p.family == 6 => {
            let Some(h) = pkt.bytes::<8>(off) else {
                return Kind::Unclassified;
            };
            let id = u16::from_be_bytes([h[4], h[5]]);
            match h[0] {
                ICMPV6_ECHO_REQUEST => p.src_port = id,
                ICMPV6_ECHO_REPLY => p.dst_port = id,
                ICMPV6_ND_FIRST..=ICMPV6_ND_LAST | MLD_QUERY..=MLD_V1_DONE | MLD_V2_REPORT => {
                    return Kind::NeighbourDiscovery;
                }
                ICMPV6_DEST_UNREACH..=ICMPV6_PARAMETER_PROBLEM => {
                    p.has_quoted = quoted_ipv6(pkt, off + 8, &mut p.quoted);
                }
                _ => {}
            }
        }
        // Other protocols (GRE, ESP, ...) are classified by address and protocol alone.
        _ => {}
    }
    Kind::Ip
}

/// The IPv4 datagram quoted by an ICMP error, starting at `off`.
#[inline(never)]
fn quoted_ipv4<P: Packet + ?Sized>(pkt: &P, off: usize, q: &mut Quoted) -> bool {
    let Some(hdr) = pkt.bytes::<20>(off) else {
        return false;
    };
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if hdr[0] >> 4 != 4 || ihl < 20 {
        return false;
    }
    q.protocol = hdr[9];
    q.src = from_ipv4([hdr[12], hdr[13], hdr[14], hdr[15]]);
    q.dst = from_ipv4([hdr[16], hdr[17], hdr[18], hdr[19]]);
    quoted_ports(pkt, off + ihl, q)
}

/// The IPv6 datagram quoted by an ICMPv6 error (no extension headers followed: a quote
/// with them is judged as plain ICMPv6).
#[inline(never)]
fn quoted_ipv6<P: Packet + ?Sized>(pkt: &P, off: usize, q: &mut Quoted) -> bool {
    let Some(fixed) = pkt.bytes::<8>(off) else {
        return false;
    };
    let (Some(src), Some(dst)) = (pkt.bytes::<16>(off + 8), pkt.bytes::<16>(off + 24)) else {
        return false;
    };
    if fixed[0] >> 4 != 6 {
        return false;
    }
    q.protocol = fixed[6];
    q.src = src;
    q.dst = dst;
    quoted_ports(pkt, off + IPV6_HLEN, q)
}

#[inline(always)]
fn quoted_ports<P: Packet + ?Sized>(pkt: &P, off: usize, q: &mut Quoted) -> bool {
    // Errors quote at least 8 bytes of the transport header: enough for the ports.
    let Some(h) = pkt.bytes::<8>(off) else {
        return false;
    };
    let (src_port, dst_port) = match q.protocol {
        proto::TCP | proto::UDP | proto::SCTP => (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        ),
        proto::ICMP | proto::ICMPV6 => {
            let id = u16::from_be_bytes([h[4], h[5]]);
            match h[0] {
                ICMP_ECHO_REQUEST | ICMPV6_ECHO_REQUEST => (id, 0),
                _ => (0, id),
            }
        }
        _ => return false,
    };
    q.src_port = src_port;
    q.dst_port = dst_port;
    true
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    /// What the tests compare: the kind, and the packet when it is IP.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Ip(Parsed),
        Arp,
        NeighbourDiscovery,
        Unclassified,
    }

    fn parse(bytes: &[u8]) -> Outcome {
        let mut p = Parsed::EMPTY;
        match parse_into(bytes, &mut p) {
            Kind::Ip => Outcome::Ip(p),
            Kind::Arp => Outcome::Arp,
            Kind::NeighbourDiscovery => Outcome::NeighbourDiscovery,
            Kind::Unclassified => Outcome::Unclassified,
        }
    }

    /// Builds frames the way a NIC would hand them to TC.
    #[derive(Clone, Debug)]
    struct Frame {
        vlans: usize,
        l3: Vec<u8>,
        ethertype: u16,
    }

    impl Frame {
        fn bytes(&self) -> Vec<u8> {
            let mut f = Vec::new();
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
            for _ in 0..self.vlans {
                f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
                f.extend_from_slice(&[0x00, 0x64]);
            }
            f.extend_from_slice(&self.ethertype.to_be_bytes());
            f.extend_from_slice(&self.l3);
            f
        }
    }

    fn ipv4(protocol: u8, options: usize, frag: u16, l4: &[u8]) -> Frame {
        let ihl = 5 + options / 4;
        let mut h = std::vec![0u8; ihl * 4];
        h[0] = 0x40 | ihl as u8;
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = protocol;
        h[12..16].copy_from_slice(&[10, 244, 0, 2]);
        h[16..20].copy_from_slice(&[203, 0, 113, 10]);
        h.extend_from_slice(l4);
        Frame {
            vlans: 0,
            l3: h,
            ethertype: ETH_P_IP,
        }
    }

    /// IPv6 with the given extension headers (next-header value, total length in bytes).
    fn ipv6(ext: &[(u8, usize)], protocol: u8, l4: &[u8]) -> Frame {
        let mut h = std::vec![0u8; 40];
        h[0] = 0x60;
        h[6] = ext.first().map_or(protocol, |e| e.0);
        h[7] = 64;
        h[8] = 0xfd;
        h[23] = 2;
        h[24] = 0x20;
        h[25] = 0x01;
        h[26] = 0x0d;
        h[27] = 0xb8;
        h[39] = 10;
        for (i, &(kind, len)) in ext.iter().enumerate() {
            let next = ext.get(i + 1).map_or(protocol, |e| e.0);
            let mut e = std::vec![0u8; len];
            e[0] = next;
            e[1] = match kind {
                NEXTHDR_AUTH => (len / 4 - 2) as u8,
                NEXTHDR_FRAGMENT => 0,
                _ => (len / 8 - 1) as u8,
            };
            h.extend_from_slice(&e);
        }
        h.extend_from_slice(l4);
        Frame {
            vlans: 0,
            l3: h,
            ethertype: ETH_P_IPV6,
        }
    }

    fn tcp(src: u16, dst: u16, flags: u8) -> Vec<u8> {
        let mut h = std::vec![0u8; 20];
        h[0..2].copy_from_slice(&src.to_be_bytes());
        h[2..4].copy_from_slice(&dst.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        h
    }

    fn udp(src: u16, dst: u16) -> Vec<u8> {
        let mut h = std::vec![0u8; 8];
        h[0..2].copy_from_slice(&src.to_be_bytes());
        h[2..4].copy_from_slice(&dst.to_be_bytes());
        h
    }

    fn icmp(kind: u8, id: u16) -> Vec<u8> {
        let mut h = std::vec![0u8; 8];
        h[0] = kind;
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h
    }

    fn ip(frame: &Frame) -> Parsed {
        match parse(frame.bytes().as_slice()) {
            Outcome::Ip(p) => p,
            other => panic!("{other:?} for {frame:?}"),
        }
    }

    #[test]
    fn tcp_over_ipv4() {
        let p = ip(&ipv4(proto::TCP, 0, 0, &tcp(40000, 80, 0x02)));
        assert_eq!(p.family, 4);
        assert_eq!((p.src_port, p.dst_port, p.tcp_flags), (40000, 80, 0x02));
        assert_eq!(p.src, from_ipv4([10, 244, 0, 2]));
        assert_eq!(p.dst, from_ipv4([203, 0, 113, 10]));
        assert_eq!(p.fragment, Fragment::None);
        assert_eq!(p.payload_offset, 14 + 20 + 20, "after a 20-byte TCP header");
    }

    #[test]
    fn ipv4_options_move_the_transport_header() {
        let p = ip(&ipv4(proto::UDP, 12, 0, &udp(5353, 53)));
        assert_eq!((p.src_port, p.dst_port), (5353, 53));
        assert_eq!(p.payload_offset, 14 + 20 + 12 + 8);
    }

    #[test]
    fn vlan_tags_are_skipped() {
        for vlans in 1..=2 {
            let mut f = ipv4(proto::UDP, 0, 0, &udp(1, 2));
            f.vlans = vlans;
            assert_eq!(ip(&f).dst_port, 2);
        }
        let mut three = ipv4(proto::UDP, 0, 0, &udp(1, 2));
        three.vlans = 3;
        assert_eq!(parse(three.bytes().as_slice()), Outcome::Unclassified);
    }

    #[test]
    fn ipv4_fragments() {
        let first = ip(&ipv4(proto::UDP, 0, 0x2000, &udp(1000, 2000)));
        assert_eq!(first.fragment, Fragment::First);
        assert_eq!(first.dst_port, 2000);
        let later = ip(&ipv4(proto::UDP, 0, 185, &[0xaa; 8]));
        assert_eq!(later.fragment, Fragment::Later);
        assert_eq!(
            (later.src_port, later.dst_port),
            (0, 0),
            "no ports in later fragments"
        );
    }

    #[test]
    fn icmp_echo_ids_sit_on_the_requesters_side() {
        let req = ip(&ipv4(proto::ICMP, 0, 0, &icmp(ICMP_ECHO_REQUEST, 77)));
        assert_eq!((req.src_port, req.dst_port), (77, 0));
        let reply = ip(&ipv4(proto::ICMP, 0, 0, &icmp(ICMP_ECHO_REPLY, 77)));
        assert_eq!((reply.src_port, reply.dst_port), (0, 77));
        let unreachable = ip(&ipv4(proto::ICMP, 0, 0, &icmp(3, 77)));
        assert_eq!((unreachable.src_port, unreachable.dst_port), (0, 0));
    }

    #[test]
    fn ipv6_extension_headers_are_followed() {
        let chain = [
            (NEXTHDR_HOP, 8),
            (NEXTHDR_DEST, 16),
            (NEXTHDR_ROUTING, 24),
            (NEXTHDR_AUTH, 16),
        ];
        let p = ip(&ipv6(&chain, proto::TCP, &tcp(1234, 443, 0x12)));
        assert_eq!(p.family, 6);
        assert_eq!(p.protocol, proto::TCP);
        assert_eq!((p.src_port, p.dst_port, p.tcp_flags), (1234, 443, 0x12));
        assert_eq!(p.dst[..4], [0x20, 0x01, 0x0d, 0xb8]);
    }

    #[test]
    fn ipv6_fragment_header() {
        let mut frag = ipv6(&[(NEXTHDR_FRAGMENT, 8)], proto::UDP, &udp(7, 8));
        // First fragment: offset 0, M flag set.
        frag.l3[40 + 3] = 1;
        let first = ip(&frag);
        assert_eq!((first.fragment, first.dst_port), (Fragment::First, 8));
        // Later fragment: offset 16 (in 8-byte units, shifted by 3).
        frag.l3[40 + 2] = 0;
        frag.l3[40 + 3] = 16 << 3;
        assert_eq!(ip(&frag).fragment, Fragment::Later);
    }

    #[test]
    fn an_endless_extension_chain_is_unclassified() {
        let chain = [(NEXTHDR_DEST, 8); MAX_IPV6_EXT_HEADERS + 1];
        let f = ipv6(&chain, proto::TCP, &tcp(1, 2, 0));
        assert_eq!(parse(f.bytes().as_slice()), Outcome::Unclassified);
    }

    #[test]
    fn neighbour_discovery_and_arp_are_recognised() {
        let ns = ipv6(&[], proto::ICMPV6, &icmp(135, 0));
        assert_eq!(parse(ns.bytes().as_slice()), Outcome::NeighbourDiscovery);
        let echo = ip(&ipv6(&[], proto::ICMPV6, &icmp(ICMPV6_ECHO_REQUEST, 9)));
        assert_eq!(echo.src_port, 9);
        let arp = Frame {
            vlans: 0,
            l3: std::vec![0; 28],
            ethertype: ETH_P_ARP,
        };
        assert_eq!(parse(arp.bytes().as_slice()), Outcome::Arp);
    }

    #[test]
    fn a_reused_parsed_carries_nothing_over() {
        let fragment = ipv4(proto::UDP, 0, 0x2000, &udp(1000, 2000)).bytes();
        let icmp_error = ipv4(proto::ICMP, 0, 0, &icmp(3, 0)).bytes();
        let mut quoted_error = icmp_error.clone();
        quoted_error.extend_from_slice(&ipv4(proto::TCP, 0, 0, &tcp(5, 6, 0x12)).l3);
        let plain = ipv4(proto::ICMP, 0, 0, &icmp(ICMP_ECHO_REQUEST, 9)).bytes();
        let mut reused = Parsed::EMPTY;
        for earlier in [fragment, quoted_error] {
            parse_into(earlier.as_slice(), &mut reused);
            parse_into(plain.as_slice(), &mut reused);
            // `quoted` means something only with `has_quoted`.
            assert!(!reused.has_quoted);
            let meaningful = Parsed {
                quoted: Quoted::EMPTY,
                ..reused
            };
            assert_eq!(
                meaningful,
                ip(&ipv4(proto::ICMP, 0, 0, &icmp(ICMP_ECHO_REQUEST, 9)))
            );
        }
    }

    #[test]
    fn truncated_or_foreign_frames_are_unclassified() {
        let full = ipv4(proto::TCP, 0, 0, &tcp(1, 2, 0)).bytes();
        for len in [0, 13, 14, 33, 34 + 13] {
            assert_eq!(parse(&full[..len]), Outcome::Unclassified, "len {len}");
        }
        let mut bad_version = ipv4(proto::TCP, 0, 0, &tcp(1, 2, 0));
        bad_version.l3[0] = 0x65;
        assert_eq!(parse(bad_version.bytes().as_slice()), Outcome::Unclassified);
        let lldp = Frame {
            vlans: 0,
            l3: std::vec![0; 40],
            ethertype: 0x88cc,
        };
        assert_eq!(parse(lldp.bytes().as_slice()), Outcome::Unclassified);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(bytes.as_slice());
        }

        #[test]
        fn ports_and_flags_survive_any_ipv4_layout(
            src in any::<u16>(), dst in any::<u16>(), flags in any::<u8>(),
            options in 0usize..=10, vlans in 0usize..=2,
        ) {
            let mut f = ipv4(proto::TCP, options * 4, 0, &tcp(src, dst, flags));
            f.vlans = vlans;
            let p = ip(&f);
            prop_assert_eq!((p.src_port, p.dst_port, p.tcp_flags), (src, dst, flags));
        }

        #[test]
        fn ports_survive_any_ipv6_chain(
            src in any::<u16>(), dst in any::<u16>(),
            chain in proptest::collection::vec(
                prop_oneof![
                    Just((NEXTHDR_HOP, 8)), Just((NEXTHDR_DEST, 24)),
                    Just((NEXTHDR_ROUTING, 16)), Just((NEXTHDR_AUTH, 12)),
                ],
                0..=MAX_IPV6_EXT_HEADERS,
            ),
        ) {
            let p = ip(&ipv6(&chain, proto::UDP, &udp(src, dst)));
            prop_assert_eq!((p.protocol, p.src_port, p.dst_port), (proto::UDP, src, dst));
        }
    }
}
