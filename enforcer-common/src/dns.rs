//! `DNS_EVENTS`: DNS answers delivered to pods, copied to user space so it can name the
//! external peers pods connect to. DNS is low volume; only the first 512 bytes of a
//! message are copied (enough for the answers of ordinary lookups).

use core::mem::size_of;

use crate::addr::Addr;

/// Bytes of DNS message copied per answer.
pub const DNS_PAYLOAD_MAX: usize = 512;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub endpoint: u32,
    pub ifindex: u32,
    /// The pod that received the answer.
    pub pod_addr: Addr,
    /// The resolver that sent it.
    pub server_addr: Addr,
    /// Bytes of `payload` filled.
    pub len: u16,
    /// UDP or TCP (a TCP payload starts with the 2-byte message length).
    pub protocol: u8,
    pub _pad: [u8; 5],
    pub payload: [u8; DNS_PAYLOAD_MAX],
}

const _: () = assert!(size_of::<DnsEvent>() == 48 + DNS_PAYLOAD_MAX);
// The kernel bounds copy lengths with a mask.
const _: () = assert!(DNS_PAYLOAD_MAX.is_power_of_two());

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding only (checked by the size assertion above).
unsafe impl aya::Pod for DnsEvent {}
