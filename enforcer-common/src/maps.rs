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

/// LPM trie of [`crate::policy::PolicyKey`] -> [`crate::policy::PolicyValue`]. Every
/// endpoint's rules are held twice (the live generation and its ready spare), so the node
/// holds up to half this many rule entries.
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
/// Events are submitted without waking the agent (a wake-up per new connection costs the
/// node an interrupt per connection) until this much is waiting; the agent also drains the
/// ring every [`EVENTS_DRAIN_MS`] on its own.
pub const EVENTS_WAKEUP_BYTES: u64 = 256 << 10;
pub const EVENTS_DRAIN_MS: u64 = 100;

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

/// LPM trie of [`crate::policy::CidrKey`] -> rule id (`u32`): external CIDRs the uplink
/// prefilter drops (see [`crate::prefilter`]).
pub const PREFILTER: &str = "PREFILTER";
pub const PREFILTER_MAX: u32 = 1 << 18;

/// Per-CPU rule id (`u32`) -> packets dropped (`u64`), created on a rule's first drop.
pub const PREFILTER_DROPS: &str = "PREFILTER_DROPS";
pub const PREFILTER_DROPS_MAX: u32 = PREFILTER_MAX;

/// [`crate::prefilter::UplinkKey`] -> last seen (`u64`, ns), LRU: connections that left
/// through an uplink, whose replies the prefilter never drops.
pub const UPLINK_ALLOWED: &str = "UPLINK_ALLOWED";
pub const UPLINK_ALLOWED_MAX: u32 = CONNTRACK_MAX;

/// [`crate::policy::FragmentKey`] (endpoint 0) -> when its first fragment passed (`u64`,
/// ns), LRU: later fragments of replies the prefilter let through.
pub const PREFILTER_FRAGS: &str = "PREFILTER_FRAGS";
pub const PREFILTER_FRAGS_MAX: u32 = 4096;

/// Per-CPU `u64` counters indexed by [`crate::prefilter::PrefilterCounter`].
pub const PREFILTER_STATS: &str = "PREFILTER_STATS";
pub const PREFILTER_STATS_MAX: u32 = crate::prefilter::PrefilterCounter::COUNT;

/// Every map Palisade pins, for uninstall and for checks that nothing is left behind.
pub const ALL: [&str; 16] = [
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
    PREFILTER,
    PREFILTER_DROPS,
    UPLINK_ALLOWED,
    PREFILTER_FRAGS,
    PREFILTER_STATS,
];

/// Names of the kernel programs, as the ELF sections name them.
pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_TO_POD: &str = "to_pod";
/// XDP on a node uplink: drops traffic from denied external CIDRs.
pub const PROG_PREFILTER: &str = "prefilter";
/// TC (TCX) on a node uplink's egress: records the connections leaving, whose replies the
/// prefilter lets through.
pub const PROG_PREFILTER_OUT: &str = "prefilter_out";
