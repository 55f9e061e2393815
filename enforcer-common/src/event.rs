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

/// Why the datapath gave a verdict.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A `POLICY` entry (rule) allows it.
    Rule = 1,
    /// The direction is not isolated for this endpoint.
    Open = 2,
    /// The peer is the pod's own node.
    Host = 3,
    /// Learn mode: everything passes.
    Learn = 4,
    /// The direction is isolated and no rule allows it.
    NoRule = 5,
    /// The pod sent from an address that is not its own.
    Spoofed = 6,
    /// The parser could not classify the packet.
    Unclassified = 7,
    /// A later IP fragment whose first fragment was not allowed (or not seen).
    Fragment = 8,
    /// The pod reaching itself (through a Service of its own): never blocked.
    Itself = 9,
}

impl Reason {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Rule),
            2 => Some(Self::Open),
            3 => Some(Self::Host),
            4 => Some(Self::Learn),
            5 => Some(Self::NoRule),
            6 => Some(Self::Spoofed),
            7 => Some(Self::Unclassified),
            8 => Some(Self::Fragment),
            9 => Some(Self::Itself),
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
    /// A [`Reason`] value: why the verdict.
    pub reason: u8,
    pub _pad: u8,
    /// The rule behind the verdict (0 = none).
    pub rule_id: u32,
    /// Length of the packet that created the event (L2 frame).
    pub packet_len: u32,
    /// The peer's identity as the datapath resolved it.
    pub peer_identity: u32,
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
    /// Non-first IP fragments.
    Fragments = 6,
    /// Packets a pod sent from an address not its own.
    Spoofed = 7,
    /// ICMP errors passed because they relate to a tracked connection.
    Related = 8,
    /// Connection attempts refused (entries created in `DENIED`).
    Denied = 9,
}

impl Counter {
    pub const COUNT: u32 = 10;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Packets,
        Self::Connections,
        Self::Drops,
        Self::EventsLost,
        Self::Unclassified,
        Self::NotAnEndpoint,
        Self::Fragments,
        Self::Spoofed,
        Self::Related,
        Self::Denied,
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
            Self::Spoofed => "spoofed",
            Self::Related => "related",
            Self::Denied => "denied",
        }
    }
}

/// Key of the per-CPU `ENDPOINT_COUNTERS` hash: one counter of one endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointCounterKey {
    pub endpoint: u32,
    /// An [`EndpointCounter`] value.
    pub counter: u32,
}

const _: () = assert!(size_of::<EndpointCounterKey>() == 8);

/// What `ENDPOINT_COUNTERS` counts per endpoint.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointCounter {
    /// Connections judged allowed.
    Allowed = 0,
    /// Connection attempts refused (enforce mode).
    Denied = 1,
    /// Connections a rule would deny, let through (monitor mode).
    WouldDeny = 2,
    /// Packets dropped.
    Dropped = 3,
}

impl EndpointCounter {
    pub const ALL: [Self; 4] = [Self::Allowed, Self::Denied, Self::WouldDeny, Self::Dropped];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::WouldDeny => "would_deny",
            Self::Dropped => "dropped",
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding only (checked by the size assertion above).
unsafe impl aya::Pod for FlowEvent {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for EndpointCounterKey {}
