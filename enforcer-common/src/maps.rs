//! Map names and sizes. The kernel declares its maps with these; the agent opens them by
//! these names under the pin folder, so a rename or a resize happens in one place.

/// ifindex (host side of a pod veth) -> [`crate::endpoint::EndpointInfo`].
pub const ENDPOINTS: &str = "ENDPOINTS";
pub const ENDPOINTS_MAX: u32 = 4096;

/// [`crate::conntrack::ConntrackKey`] -> [`crate::conntrack::ConntrackValue`], LRU.
pub const CONNTRACK: &str = "CONNTRACK";
pub const CONNTRACK_MAX: u32 = 262_144;

/// Address -> [`crate::policy::IpcacheValue`]: pods and nodes.
pub const IPCACHE: &str = "IPCACHE";
pub const IPCACHE_MAX: u32 = 1 << 20;

/// LPM trie of [`crate::policy::CidrKey`] -> CIDR identity (`u32`).
pub const CIDRS: &str = "CIDRS";
pub const CIDRS_MAX: u32 = 1 << 18;

/// LPM trie of [`crate::policy::PolicyKey`] -> [`crate::policy::PolicyValue`].
pub const POLICY: &str = "POLICY";
pub const POLICY_MAX: u32 = 1 << 20;

/// [`crate::conntrack::ConntrackKey`] -> [`crate::policy::DeniedValue`], LRU.
pub const DENIED: &str = "DENIED";
pub const DENIED_MAX: u32 = 65_536;

/// [`crate::policy::FragmentKey`] -> [`crate::policy::FragmentValue`], LRU.
pub const FRAGMENTS: &str = "FRAGMENTS";
pub const FRAGMENTS_MAX: u32 = 16_384;

/// Ring buffer of [`crate::event::FlowEvent`].
pub const EVENTS: &str = "EVENTS";
/// 4 MiB: about 58,000 events between two reads by the agent.
pub const EVENTS_BYTES: u32 = 4 << 20;

/// Per-CPU `u64` counters indexed by [`crate::event::Counter`].
pub const COUNTERS: &str = "COUNTERS";
pub const COUNTERS_MAX: u32 = crate::event::Counter::COUNT;

/// Ring buffer of [`crate::dns::DnsEvent`].
pub const DNS_EVENTS: &str = "DNS_EVENTS";
/// 256 KiB: about 460 answers between two reads.
pub const DNS_EVENTS_BYTES: u32 = 256 << 10;

/// Per-CPU [`crate::event::EndpointCounterKey`] -> `u64`.
pub const ENDPOINT_COUNTERS: &str = "EP_COUNTERS";
pub const ENDPOINT_COUNTERS_MAX: u32 = 4 * ENDPOINTS_MAX;

/// Every map Palisade pins, for uninstall and for checks that nothing is left behind.
pub const ALL: [&str; 11] = [
    ENDPOINTS,
    CONNTRACK,
    IPCACHE,
    CIDRS,
    POLICY,
    DENIED,
    FRAGMENTS,
    EVENTS,
    COUNTERS,
    ENDPOINT_COUNTERS,
    DNS_EVENTS,
];

/// Names of the kernel programs, as the ELF sections name them.
pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_TO_POD: &str = "to_pod";
