//! Ethernet frames built byte by byte, for feeding the programs with BPF_PROG_TEST_RUN.

use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// What to put after the IP header.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    /// TCP with these flags.
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    /// ICMP or ICMPv6 echo request with this id.
    EchoRequest {
        id: u16,
    },
}

/// Fragmentation of an IPv4 frame: (more fragments, offset in 8-byte units).
pub type Frag = Option<(bool, u16)>;

/// A frame from `src` to `dst` (same family), with `l4`; `frag` for IPv4 fragments.
pub fn frame(src: IpAddr, dst: IpAddr, l4: L4, frag: Frag) -> Vec<u8> {
    let (protocol, transport) = match l4 {
        L4::Tcp { src, dst, flags } => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&src.to_be_bytes());
            h[2..4].copy_from_slice(&dst.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = flags;
            (TCP, h)
        }
        L4::Udp { src, dst } => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&src.to_be_bytes());
            h[2..4].copy_from_slice(&dst.to_be_bytes());
            h[4..6].copy_from_slice(&16u16.to_be_bytes());
            h.extend_from_slice(&[0u8; 8]);
            (UDP, h)
        }
        L4::EchoRequest { id } => {
            let mut h = vec![0u8; 16];
            h[0] = if src.is_ipv4() { 8 } else { 128 };
            h[4..6].copy_from_slice(&id.to_be_bytes());
            (if src.is_ipv4() { 1 } else { 58 }, h)
        }
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(20 + transport.len() as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            if let Some((more, offset)) = frag {
                let field = (u16::from(more) << 13) | (offset & 0x1fff);
                ip[6..8].copy_from_slice(&field.to_be_bytes());
            }
            ip[8] = 64;
            ip[9] = protocol;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(transport.len() as u16).to_be_bytes());
            ip[6] = protocol;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&ip);
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(&transport);
    f
}
