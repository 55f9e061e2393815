//! The 16-byte address form used in every key and event.

/// An IPv4 or IPv6 address as 16 bytes in network byte order; IPv4 is IPv4-mapped.
pub type Addr = [u8; 16];

/// `::ffff:a.b.c.d` for the IPv4 address `v4` (network byte order).
#[inline(always)]
pub const fn from_ipv4(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped address, if it is one.
pub const fn to_ipv4(addr: &Addr) -> Option<[u8; 4]> {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return None;
        }
        i += 1;
    }
    if addr[10] != 0xff || addr[11] != 0xff {
        return None;
    }
    Some([addr[12], addr[13], addr[14], addr[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapping_round_trips() {
        let a = from_ipv4([10, 244, 0, 7]);
        assert_eq!(to_ipv4(&a), Some([10, 244, 0, 7]));
    }

    #[test]
    fn native_ipv6_is_not_ipv4() {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = 1;
        assert_eq!(to_ipv4(&a), None);
        // ::ffff:0:0/96 is the only mapped prefix; the IPv4-compatible form is not.
        let compat = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1];
        assert_eq!(to_ipv4(&compat), None);
    }
}
