//! Reading packet bytes without caring where they live.

/// Read access to the bytes of one packet, starting at the Ethernet header.
pub trait Packet {
    /// The `N` bytes at `offset`, or `None` when they run past the end of the packet.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    fn u8_at(&self, offset: usize) -> Option<u8> {
        self.bytes::<1>(offset).map(|[b]| b)
    }

    /// A big-endian (network order) `u16`, returned in host order.
    fn be16_at(&self, offset: usize) -> Option<u16> {
        self.bytes::<2>(offset).map(u16::from_be_bytes)
    }
}

impl Packet for [u8] {
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}
