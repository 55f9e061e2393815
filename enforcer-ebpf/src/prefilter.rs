//! The uplink prefilter: an XDP program on a node uplink that drops traffic from denied
//! external CIDRs before the network stack sees it, and a TC program on the same uplink's
//! egress that records what leaves, so the prefilter never drops a reply.
//!
//! `prefilter` (XDP) reads only the source address of each frame and looks it up in
//! `PREFILTER`; everything else costs nothing more. A packet from a denied CIDR still
//! passes when
//! - its source is a pod or node of the cluster (`IPCACHE`): the list is for external
//!   CIDRs, and a too-wide entry must not cut the node off its cluster;
//! - it belongs to a connection that left through an uplink (`UPLINK_ALLOWED`), or is an
//!   ICMP error about one, or a later fragment of a datagram whose first fragment passed;
//! - it is IPv6 neighbour discovery (which, like ARP, always passes in Palisade).
//!
//! Why `prefilter_out` records connections on the uplink's egress rather than `from_pod`
//! noting the connections it allows, or the prefilter looking them up in `CONNTRACK`:
//! `from_pod` and `CONNTRACK` see a pod's connection before the node masquerades it, but
//! on most clusters egress to the world is masqueraded to the node's address, so the reply
//! reaching the uplink carries addresses and ports neither of them knows. TC egress runs
//! after netfilter's POSTROUTING (where SNAT happens), so the key recorded there is exactly
//! the reply's, reversed, whatever NAT the node does. Whatever reaches the uplink's egress
//! was allowed by policy: `from_pod` drops denied connections before they are routed. The
//! node's own connections (host network) are recorded too; the host is always allowed.
//! Recording every connection that leaves (not only those to denied CIDRs) means adding a
//! CIDR to the list never cuts a live connection whose next packet happens to be inbound.
//!
//! Costs: `prefilter` does one LPM lookup per IP frame, and the slow path (a full parse,
//! two hash lookups) only for frames from denied CIDRs. `prefilter_out` reads the 5-tuple
//! of plain TCP and UDP straight from the frame (the full parser handles the rest) and
//! does one hash lookup; it writes only for a new connection or once a second per live
//! one. `UPLINK_ALLOWED` and `PREFILTER_FRAGS` are LRU maps: bounded, and under pressure
//! the connections idle the longest lose their exemption first.
//!
//! A connection is recorded on the uplink it leaves through and its replies are checked
//! on the uplink they arrive on; the map is shared, so both must carry the prefilter
//! (attach it to every uplink).

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, xdp_action},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use enforcer_common::{
    addr::{Addr, from_ipv4},
    maps,
    policy::{CidrKey, FragmentKey},
    prefilter::{PrefilterCounter, UplinkKey, lifetime},
    proto, tc_action,
};
use enforcer_ebpf::{
    packet::Packet,
    parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Fragment, Kind, Parsed, ethernet, parse_into},
};

use crate::{IPCACHE, Skb};

#[map]
static PREFILTER: LpmTrie<CidrKey, u32> = LpmTrie::pinned(maps::PREFILTER_MAX, 0);

// Not preallocated: a per-CPU slot for every possible rule would cost
// PREFILTER_MAX * 8 bytes per CPU; only rules that drop something get an entry.
#[map]
static PREFILTER_DROPS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::pinned(maps::PREFILTER_DROPS_MAX, BPF_F_NO_PREALLOC);

#[map]
static UPLINK_ALLOWED: LruHashMap<UplinkKey, u64> = LruHashMap::pinned(maps::UPLINK_ALLOWED_MAX, 0);

#[map]
static PREFILTER_FRAGS: LruHashMap<FragmentKey, u64> =
    LruHashMap::pinned(maps::PREFILTER_FRAGS_MAX, 0);

#[map]
static PREFILTER_STATS: PerCpuArray<u64> = PerCpuArray::pinned(maps::PREFILTER_STATS_MAX, 0);

/// A parsed packet per CPU and program, off the 512-byte BPF stack. Apart from `SCRATCH`
/// in main.rs, and one slot per program, so no run can ever overwrite another's packet.
#[map]
static PF_SCRATCH: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(2, 0);

const SLOT_XDP: u32 = 0;
const SLOT_TC: u32 = 1;

/// `frags`: on uplinks with jumbo frames, drivers hand XDP multi-buffer frames, and refuse
/// to attach a program that does not accept them.
#[xdp(frags)]
pub fn prefilter(ctx: XdpContext) -> u32 {
    match try_prefilter(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// Appended to the uplink's TCX egress chain (after anything that rewrites addresses);
/// never changes a packet's fate.
#[classifier]
pub fn prefilter_out(ctx: TcContext) -> i32 {
    record(&ctx);
    tc_action::NEXT
}

/// Frame bytes: read directly from the first buffer, with `bpf_xdp_load_bytes` for
/// anything beyond it (later buffers of a multi-buffer frame).
struct Frame<'a>(&'a XdpContext);

impl Packet for Frame<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        if start + offset + N <= self.0.data_end() {
            // SAFETY: bounds-checked against data_end just above (the verifier checks too).
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) });
        }
        let mut buf = [0u8; N];
        // SAFETY: `buf` is N writable bytes; the helper checks the offset against the frame.
        let ret = unsafe {
            bpf_xdp_load_bytes(self.0.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32)
        };
        (ret == 0).then_some(buf)
    }
}

#[inline(always)]
fn try_prefilter(ctx: &XdpContext) -> Result<u32, u32> {
    let Some((family, addr)) = source(&Frame(ctx)) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let key = Key::new(CidrKey::LOOKUP_BITS, CidrKey { family, addr });
    let Some(&rule) = PREFILTER.get(&key) else {
        return Ok(xdp_action::XDP_PASS);
    };
    count(PrefilterCounter::Matched);
    if IPCACHE.get_ptr(addr).is_some() {
        count(PrefilterCounter::Cluster);
        return Ok(xdp_action::XDP_PASS);
    }
    let why = exemption(ctx);
    if why != NOT_EXEMPT {
        count_slot(why);
        return Ok(xdp_action::XDP_PASS);
    }
    count(PrefilterCounter::Dropped);
    count_rule(rule);
    Ok(xdp_action::XDP_DROP)
}

/// The family and source address of an IP frame (after up to two VLAN tags); `None` for
/// anything else, which the prefilter leaves to the stack.
#[inline(always)]
fn source<P: Packet>(pkt: &P) -> Option<(u8, Addr)> {
    let (ethertype, off) = ethernet(pkt)?;
    match ethertype {
        ETH_P_IP => {
            let [version_ihl] = pkt.bytes::<1>(off)?;
            if version_ihl >> 4 != 4 {
                return None;
            }
            Some((4, from_ipv4(pkt.bytes::<4>(off + 12)?)))
        }
        ETH_P_IPV6 => {
            let [version] = pkt.bytes::<1>(off)?;
            if version >> 4 != 6 {
                return None;
            }
            Some((6, pkt.bytes::<16>(off + 8)?))
        }
        _ => None,
    }
}

/// What [`exemption`] returns when a frame has none.
const NOT_EXEMPT: u32 = u32::MAX;

/// Why a frame from a denied CIDR passes anyway, as the [`PrefilterCounter`] slot that
/// counts it, or [`NOT_EXEMPT`]. Out of line (a BPF subprogram: the full parse stays off
/// the fast path's stack frame), with a scalar result: subprograms cannot return
/// aggregates.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference: a copy of a 40-byte key would cost BPF stack"
)]
fn exemption(ctx: &XdpContext) -> u32 {
    let Some(p) = PF_SCRATCH.get_ptr_mut(SLOT_XDP) else {
        return NOT_EXEMPT;
    };
    // SAFETY: this CPU's slot for XDP; no other program uses it.
    let p = unsafe { &mut *p };
    match parse_into(&Frame(ctx), p) {
        Kind::Ip => {}
        // IPv6 neighbour discovery always passes, as everywhere in Palisade: a denied
        // on-link neighbour answers solicitations from its own address, and without the
        // answer the node could not even send it the replies this prefilter lets through.
        Kind::NeighbourDiscovery => return PrefilterCounter::Neighbours as u32,
        Kind::Arp | Kind::Unclassified => return NOT_EXEMPT,
    }
    let p: &Parsed = p;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if p.fragment == Fragment::Later {
        let first = PREFILTER_FRAGS.get_ptr(fragment_key(p));
        // SAFETY: a plain u64 inside the map value, read once.
        return match first.map(|t| unsafe { *t }) {
            Some(t) if now.saturating_sub(t) <= lifetime::FRAGMENT => {
                PrefilterCounter::Fragments as u32
            }
            _ => NOT_EXEMPT,
        };
    }
    let key = if p.has_quoted {
        // An ICMP error quotes the datagram that went out.
        let q = &p.quoted;
        UplinkKey::outgoing(q.src, q.dst, q.src_port, q.dst_port, q.protocol)
    } else {
        UplinkKey::incoming(p.src, p.dst, p.src_port, p.dst_port, p.protocol)
    };
    let Some(seen) = UPLINK_ALLOWED.get_ptr_mut(&key) else {
        return NOT_EXEMPT;
    };
    // SAFETY: valid for this run; the time stamp is last-writer-wins by design.
    let seen = unsafe { &mut *seen };
    let idle = now.saturating_sub(*seen);
    if idle > lifetime::of(key.protocol) {
        return NOT_EXEMPT;
    }
    // Replies keep the connection alive too, as in any conntrack.
    if idle > lifetime::REFRESH {
        *seen = now;
    }
    if p.fragment == Fragment::First {
        let _ = PREFILTER_FRAGS.insert(fragment_key(p), now, 0);
    }
    PrefilterCounter::Replies as u32
}

#[inline(always)]
fn fragment_key(p: &Parsed) -> FragmentKey {
    FragmentKey {
        // The prefilter is not per endpoint.
        endpoint: 0,
        id: p.fragment_id,
        src: p.src,
        dst: p.dst,
        protocol: p.protocol,
        _pad: [0; 3],
    }
}

/// Record the connection of a frame leaving through the uplink.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference: a copy of a 40-byte key would cost BPF stack"
)]
fn record(ctx: &TcContext) {
    let mut key = UplinkKey::outgoing([0; 16], [0; 16], 0, 0, 0);
    if !direct_key(&Skb(ctx), &mut key) && !parsed_key(ctx, &mut key) {
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match UPLINK_ALLOWED.get_ptr_mut(&key) {
        Some(seen) => {
            // SAFETY: valid for this run; last-writer-wins by design.
            let seen = unsafe { &mut *seen };
            if now.saturating_sub(*seen) > lifetime::REFRESH {
                *seen = now;
            }
        }
        None => {
            if UPLINK_ALLOWED.insert(&key, now, 0).is_ok() {
                count(PrefilterCounter::Recorded);
            }
        }
    }
}

/// The key of most of what leaves, read straight from the frame into registers: TCP or
/// UDP over untagged IPv4 (options allowed) or IPv6 (no extension headers), not
/// fragmented. `false` for anything else, which goes through the full parser. This
/// program runs on every packet the node sends, and the full parser, which writes into
/// per-CPU scratch memory, costs about 40 ns a packet more (BPF_PROG_TEST_RUN, 64-byte
/// TCP, on the project's machines). The key is the one the full parser gives for the same
/// packet: the prefilter builds replies' keys with it. Out of line, so its stack frame is
/// never stacked on the full parser's.
#[inline(never)]
fn direct_key<P: Packet>(pkt: &P, key: &mut UplinkKey) -> bool {
    let Some(ethertype) = pkt.be16_at(12) else {
        return false;
    };
    // Straight into `key`, field by field: values assembled in locals first cost stack
    // and, in this shape, gave code the verifier rejects (an uninitialised spill).
    let l4 = match ethertype {
        ETH_P_IP => {
            let Some(h) = pkt.bytes::<20>(ETH_HLEN) else {
                return false;
            };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            // Version 4, a valid header length, and neither More Fragments nor an offset.
            if h[0] >> 4 != 4 || ihl < 20 || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
                return false;
            }
            key.local = from_ipv4([h[12], h[13], h[14], h[15]]);
            key.remote = from_ipv4([h[16], h[17], h[18], h[19]]);
            key.protocol = h[9];
            ETH_HLEN + ihl
        }
        ETH_P_IPV6 => {
            let Some(fixed) = pkt.bytes::<8>(ETH_HLEN) else {
                return false;
            };
            if fixed[0] >> 4 != 6 {
                return false;
            }
            key.protocol = fixed[6];
            let Some(src) = pkt.bytes::<16>(ETH_HLEN + 8) else {
                return false;
            };
            key.local = src;
            let Some(dst) = pkt.bytes::<16>(ETH_HLEN + 24) else {
                return false;
            };
            key.remote = dst;
            ETH_HLEN + 40
        }
        _ => return false,
    };
    if key.protocol != proto::TCP && key.protocol != proto::UDP {
        return false;
    }
    let Some(ports) = pkt.bytes::<4>(l4) else {
        return false;
    };
    key.local_port = u16::from_be_bytes([ports[0], ports[1]]);
    key.remote_port = u16::from_be_bytes([ports[2], ports[3]]);
    true
}

/// The key of a frame [`direct_key`] leaves out (VLAN tags, IPv6 extension headers,
/// first fragments, ICMP, SCTP, ...), through the full parser; `false` when it has none:
/// later fragments carry no ports (their first fragment recorded the connection), and an
/// ICMP error is about a connection, not one. Out of line: only this path needs the
/// scratch memory and the parser's stack frames.
#[inline(never)]
fn parsed_key(ctx: &TcContext, key: &mut UplinkKey) -> bool {
    let Some(p) = PF_SCRATCH.get_ptr_mut(SLOT_TC) else {
        return false;
    };
    // SAFETY: this CPU's slot for `prefilter_out`; no other program uses it.
    let p = unsafe { &mut *p };
    if parse_into(&Skb(ctx), p) != Kind::Ip || p.fragment == Fragment::Later || p.has_quoted {
        return false;
    }
    *key = UplinkKey::outgoing(p.src, p.dst, p.src_port, p.dst_port, p.protocol);
    true
}

#[inline(always)]
fn count(counter: PrefilterCounter) {
    count_slot(counter as u32);
}

#[inline(always)]
fn count_slot(slot: u32) {
    if let Some(slot) = PREFILTER_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot: no other program run writes it concurrently.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count_rule(rule: u32) {
    let slot = PREFILTER_DROPS.get_ptr_mut(rule).or_else(|| {
        // The rule's first drop. Another CPU may create the entry at the same moment: then
        // this insert fails and the lookup finds that CPU's entry (with a slot for ours).
        let _ = PREFILTER_DROPS.insert(rule, 0, u64::from(BPF_NOEXIST));
        PREFILTER_DROPS.get_ptr_mut(rule)
    });
    if let Some(slot) = slot {
        // SAFETY: per-CPU value: no other program run writes it concurrently.
        unsafe { *slot += 1 };
    }
}
