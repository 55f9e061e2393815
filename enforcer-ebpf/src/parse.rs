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

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const MAX_VLAN_TAGS: usize = 2;

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_NONE: u8 = 59;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers followed before giving up. Real traffic carries one or two.
const MAX_IPV6_EXT_HEADERS: usize = 8;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Router solicitation .. redirect (133-137): neighbour discovery.
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;

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

/// An IP packet the parser classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// 4 or 6.
    pub family: u8,
    /// Transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    pub src: Addr,
    pub dst: Addr,
    /// Host order. For ICMP echo the echo id sits on the requester's side: `src_port` of a
    /// request, `dst_port` of a reply; 0 for other ICMP and for later fragments.
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    pub fragment: Fragment,
}

/// What the parser made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ip(Parsed),
    /// ARP: always passes.
    Arp,
    /// ICMPv6 neighbour discovery (RS, RA, NS, NA, redirect): always passes.
    NeighbourDiscovery,
    /// Truncated or invalid headers, an unknown ethertype, or an IPv6 extension header chain
    /// too long to reach the transport header.
    Unclassified,
}

/// Classify the frame in `pkt`.
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(pkt: &P) -> Outcome {
    let Some((ethertype, l3)) = ethernet(pkt) else {
        return Outcome::Unclassified;
    };
    let parsed = match ethertype {
        ETH_P_IP => ipv4(pkt, l3),
        ETH_P_IPV6 => ipv6(pkt, l3),
        ETH_P_ARP => return Outcome::Arp,
        _ => None,
    };
    match parsed {
        Some(Classified::Ip(p)) => Outcome::Ip(p),
        Some(Classified::NeighbourDiscovery) => Outcome::NeighbourDiscovery,
        None => Outcome::Unclassified,
    }
}

enum Classified {
    Ip(Parsed),
    NeighbourDiscovery,
}

/// The ethertype after any VLAN tags, and the offset of the L3 header.
#[inline(always)]
fn ethernet<P: Packet + ?Sized>(pkt: &P) -> Option<(u16, usize)> {
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

#[inline(always)]
fn ipv4<P: Packet + ?Sized>(pkt: &P, off: usize) -> Option<Classified> {
    let hdr: [u8; 20] = pkt.bytes(off)?;
    if hdr[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let fragment = match (offset, more_fragments) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let src = from_ipv4([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let dst = from_ipv4([hdr[16], hdr[17], hdr[18], hdr[19]]);
    transport(pkt, off + ihl, 4, hdr[9], src, dst, fragment)
}

#[inline(always)]
fn ipv6<P: Packet + ?Sized>(pkt: &P, off: usize) -> Option<Classified> {
    let fixed: [u8; 8] = pkt.bytes(off)?;
    if fixed[0] >> 4 != 6 {
        return None;
    }
    let src: Addr = pkt.bytes(off + 8)?;
    let dst: Addr = pkt.bytes(off + 24)?;
    let mut next = fixed[6];
    let mut l4 = off + IPV6_HLEN;
    let mut fragment = Fragment::None;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let ext: [u8; 4] = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT => {
                pkt.bytes(l4)?
            }
            _ => return transport(pkt, l4, 6, next, src, dst, fragment),
        };
        let len = match next {
            NEXTHDR_FRAGMENT => {
                let offset = u16::from_be_bytes([ext[2], ext[3]]) >> 3;
                let more = ext[3] & 1 != 0;
                fragment = match (offset, more) {
                    (0, false) => Fragment::None,
                    (0, true) => Fragment::First,
                    _ => Fragment::Later,
                };
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
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT => None,
        _ => transport(pkt, l4, 6, next, src, dst, fragment),
    }
}

#[inline(always)]
fn transport<P: Packet + ?Sized>(
    pkt: &P,
    off: usize,
    family: u8,
    protocol: u8,
    src: Addr,
    dst: Addr,
    fragment: Fragment,
) -> Option<Classified> {
    let mut parsed = Parsed {
        family,
        protocol,
        src,
        dst,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        fragment,
    };
    if fragment == Fragment::Later {
        return Some(Classified::Ip(parsed));
    }
    match protocol {
        proto::TCP => {
            let h: [u8; 14] = pkt.bytes(off)?;
            parsed.src_port = u16::from_be_bytes([h[0], h[1]]);
            parsed.dst_port = u16::from_be_bytes([h[2], h[3]]);
            parsed.tcp_flags = h[13];
        }
        proto::UDP | proto::SCTP => {
            let h: [u8; 4] = pkt.bytes(off)?;
            parsed.src_port = u16::from_be_bytes([h[0], h[1]]);
            parsed.dst_port = u16::from_be_bytes([h[2], h[3]]);
        }
        proto::ICMP if family == 4 => {
            let h: [u8; 8] = pkt.bytes(off)?;
            let id = u16::from_be_bytes([h[4], h[5]]);
            match h[0] {
                ICMP_ECHO_REQUEST => parsed.src_port = id,
                ICMP_ECHO_REPLY => parsed.dst_port = id,
                _ => {}
            }
        }
        proto::ICMPV6 if family == 6 => {
            let h: [u8; 8] = pkt.bytes(off)?;
            let id = u16::from_be_bytes([h[4], h[5]]);
            match h[0] {
                ICMPV6_ECHO_REQUEST => parsed.src_port = id,
                ICMPV6_ECHO_REPLY => parsed.dst_port = id,
                ICMPV6_ND_FIRST..=ICMPV6_ND_LAST => return Some(Classified::NeighbourDiscovery),
                _ => {}
            }
        }
        NEXTHDR_NONE => {}
        // Other protocols (GRE, ESP, ...) are classified by address and protocol alone.
        _ => {}
    }
    Some(Classified::Ip(parsed))
}
