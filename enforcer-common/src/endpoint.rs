//! `ENDPOINTS` values: what the datapath knows about one pod interface.

use core::mem::size_of;

use crate::Mode;

/// The value of `ENDPOINTS[ifindex]`, ifindex being the host side of the pod's veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Stable id of the endpoint on this node; keys conntrack and deny entries.
    pub endpoint_id: u32,
    /// Security identity of the pod (0 = not yet known). Filled by the policy compiler.
    pub identity: u32,
    /// Bumped by user space whenever the endpoint's rules or mode change: connections judged
    /// under an older revision are judged again on their next packet.
    pub policy_revision: u32,
    /// A [`Mode`] value.
    pub mode: u8,
    /// [`direction_policy`] bits for connections into the pod.
    pub ingress_policy: u8,
    /// [`direction_policy`] bits for connections the pod opens.
    pub egress_policy: u8,
    /// Which `POLICY` generation (0 or 1) is live for this endpoint.
    pub policy_generation: u8,
    /// The pod's IPv4 address, network byte order (0.0.0.0 = none).
    pub ipv4: [u8; 4],
    /// The pod's IPv6 address, network byte order (:: = none).
    pub ipv6: [u8; 16],
}

const _: () = assert!(size_of::<EndpointInfo>() == 36);

/// How one direction of an endpoint is judged ([`EndpointInfo::ingress_policy`],
/// [`EndpointInfo::egress_policy`]). All bits clear is the safe reading of an entry
/// written before a bit existed.
pub mod direction_policy {
    /// Isolated: only `POLICY` entries let connections through (clear: everything may).
    pub const ISOLATED: u8 = 1;
    /// No rule of this direction names a CIDR, so a peer whose identity `IPCACHE` knows
    /// needs no `CIDRS` lookup (a longest-prefix match, the costliest lookup of a new
    /// connection).
    pub const NO_CIDR_RULES: u8 = 2;
}

impl EndpointInfo {
    pub const fn new(endpoint_id: u32, mode: Mode) -> Self {
        Self {
            endpoint_id,
            identity: 0,
            policy_revision: 0,
            mode: mode as u8,
            ingress_policy: 0,
            egress_policy: 0,
            policy_generation: 0,
            ipv4: [0; 4],
            ipv6: [0; 16],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no implicit padding (checked by the size assertion above).
unsafe impl aya::Pod for EndpointInfo {}
