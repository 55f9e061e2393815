//! Map names and sizes. The kernel declares its maps with these; the agent opens them by
//! these names under the pin folder, so a rename or a resize happens in one place.

/// ifindex (host side of a pod veth) -> [`crate::endpoint::EndpointInfo`].
pub const ENDPOINTS: &str = "ENDPOINTS";
pub const ENDPOINTS_MAX: u32 = 4096;

/// [`crate::conntrack::ConntrackKey`] -> [`crate::conntrack::ConntrackValue`], LRU.
pub const CONNTRACK: &str = "CONNTRACK";
pub const CONNTRACK_MAX: u32 = 262_144;

/// [`crate::deny::DenyKey`] -> [`crate::deny::DenyValue`].
pub const DENY: &str = "DENY";
pub const DENY_MAX: u32 = 65_536;

/// Ring buffer of [`crate::event::FlowEvent`].
pub const EVENTS: &str = "EVENTS";
/// 4 MiB: about 58,000 events between two reads by the agent.
pub const EVENTS_BYTES: u32 = 4 << 20;

/// Per-CPU `u64` counters indexed by [`crate::event::Counter`].
pub const COUNTERS: &str = "COUNTERS";
pub const COUNTERS_MAX: u32 = crate::event::Counter::COUNT;

/// Every map Palisade pins, for uninstall and for checks that nothing is left behind.
pub const ALL: [&str; 5] = [ENDPOINTS, CONNTRACK, DENY, EVENTS, COUNTERS];

/// Names of the kernel programs, as the ELF sections name them.
pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_TO_POD: &str = "to_pod";
