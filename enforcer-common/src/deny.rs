//! `DENY`: the first enforcement primitive, a per-endpoint list of denied peers.
//!
//! A new connection is looked up with its protocol and server port, then with its protocol
//! and port 0 (every port), then with protocol 0 and port 0 (the whole peer): at most three
//! hash lookups, and only for the first packet of a connection. The identity-based `POLICY` map of a
//! later revision replaces this map behind the same verdict path.

use core::mem::size_of;

use crate::addr::Addr;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DenyKey {
    /// [`crate::endpoint::EndpointInfo::endpoint_id`] of the pod the rule protects.
    pub endpoint: u32,
    /// The peer's address (network byte order, IPv4-mapped for IPv4).
    pub peer_addr: Addr,
    /// The connection's server port (host byte order): the peer's port when the pod opened
    /// the connection, the pod's port when the peer did. 0 with `protocol` 0 = any.
    pub server_port: u16,
    /// IP protocol number; 0 = any protocol (then `server_port` must be 0 too).
    pub protocol: u8,
    pub _pad: u8,
}

const _: () = assert!(size_of::<DenyKey>() == 24);

impl DenyKey {
    pub const fn new(endpoint: u32, peer_addr: Addr, protocol: u8, server_port: u16) -> Self {
        Self {
            endpoint,
            peer_addr,
            server_port,
            protocol,
            _pad: 0,
        }
    }

    /// The same peer and protocol, every port.
    pub const fn any_port(&self) -> Self {
        Self::new(self.endpoint, self.peer_addr, self.protocol, 0)
    }

    /// The same peer, every protocol and port.
    pub const fn any_protocol(&self) -> Self {
        Self::new(self.endpoint, self.peer_addr, 0, 0)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyValue {
    /// Reported with every verdict this entry causes.
    pub rule_id: u32,
}

const _: () = assert!(size_of::<DenyValue>() == 4);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding only (checked by the size assertions above).
unsafe impl aya::Pod for DenyKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for DenyValue {}
