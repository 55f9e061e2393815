//! Ring-buffer events and per-CPU counters.

use core::mem::size_of;

use crate::addr::Addr;

/// Why an event was emitted.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The first packet of a connection on this endpoint.
    NewConnection = 1,
    /// A live connection was judged again after a mode or rule change and its verdict changed.
    Rejudged = 2,
}

impl EventKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::NewConnection),
            2 => Some(Self::Rejudged),
            _ => None,
        }
    }
}

/// One connection as an endpoint first saw it (or saw its verdict change). Never per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at the packet.
    pub timestamp_ns: u64,
    /// [`crate::endpoint::EndpointInfo::endpoint_id`].
    pub endpoint: u32,
    /// ifindex of the host-side interface the program ran on.
    pub ifindex: u32,
    /// Pod-oriented 5-tuple, exactly as in [`crate::conntrack::ConntrackKey`].
    pub pod_addr: Addr,
    pub peer_addr: Addr,
    pub pod_port: u16,
    pub peer_port: u16,
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// A [`crate::Direction`] value.
    pub direction: u8,
    /// A [`crate::Verdict`] value.
    pub verdict: u8,
    /// A [`crate::Mode`] value.
    pub mode: u8,
    /// An [`EventKind`] value.
    pub kind: u8,
    pub _pad: [u8; 2],
    /// The rule behind the verdict (0 = none).
    pub rule_id: u32,
    /// Length of the packet that created the event (L2 frame).
    pub packet_len: u32,
    pub _pad2: [u8; 4],
}

const _: () = assert!(size_of::<FlowEvent>() == 72);

/// Slots of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the programs ran on (endpoints only).
    Packets = 0,
    /// Connections created in conntrack.
    Connections = 1,
    /// Packets dropped.
    Drops = 2,
    /// Events that did not fit in the ring buffer.
    EventsLost = 3,
    /// Packets the parser could not classify (malformed, unknown ethertype).
    Unclassified = 4,
    /// Packets on an interface without an `ENDPOINTS` entry (passed untouched).
    NotAnEndpoint = 5,
    /// Non-first IP fragments (judged on the peer address alone).
    Fragments = 6,
}

impl Counter {
    pub const COUNT: u32 = 7;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Packets,
        Self::Connections,
        Self::Drops,
        Self::EventsLost,
        Self::Unclassified,
        Self::NotAnEndpoint,
        Self::Fragments,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Packets => "packets",
            Self::Connections => "connections",
            Self::Drops => "drops",
            Self::EventsLost => "events_lost",
            Self::Unclassified => "unclassified",
            Self::NotAnEndpoint => "not_an_endpoint",
            Self::Fragments => "fragments",
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding only (checked by the size assertion above).
unsafe impl aya::Pod for FlowEvent {}
