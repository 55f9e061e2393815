//! Palisade's TC programs, attached to the host side of every pod veth.
//!
//! `from_pod` runs on host-side ingress (what the pod sends), `to_pod` on host-side egress
//! (what the pod receives). Only the first packet of a connection is judged (and the first
//! after the endpoint's mode or rules changed): the peer's identity comes from `IPCACHE`
//! (and `CIDRS`), the verdict from at most three `POLICY` lookups, and the conntrack entry
//! carries it for the rest. Refused attempts live in `DENIED`, apart from live
//! connections. One event per connection (and per verdict change), never one per packet.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has atomic add but no compare-and-swap, so core's `AtomicU64::fetch_add`
// is not offered there; the intrinsic lowers to BPF's atomic add instruction.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "atomic add, see above")
)]

mod prefilter;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use enforcer_common::{
    Direction, Mode, Verdict,
    addr::{self, Addr},
    conntrack::{ConntrackKey, ConntrackValue, tcp_advance},
    dns::{DNS_PAYLOAD_MAX, DnsEvent},
    endpoint::{EndpointInfo, direction_policy},
    event::{Counter, EndpointCounter, EndpointCounterKey, EventKind, FlowEvent, Reason},
    maps,
    policy::{
        CidrKey, DeniedValue, FragmentKey, FragmentValue, IpcacheValue, PolicyKey, PolicyValue,
        identity, ipcache_flags,
    },
    proto, tc_action,
};
use enforcer_ebpf::{
    flow::{Hook, conntrack_key, opener, server_port},
    packet::Packet,
    parse::{Fragment, Kind, Parsed, Quoted, parse_into},
};

#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(maps::ENDPOINTS_MAX, 0);

#[map]
static CONNTRACK: LruHashMap<ConntrackKey, ConntrackValue> =
    LruHashMap::pinned(maps::CONNTRACK_MAX, 0);

#[map]
static IPCACHE: HashMap<Addr, IpcacheValue> = HashMap::pinned(maps::IPCACHE_MAX, 0);

#[map]
static CIDRS: LpmTrie<CidrKey, u32> = LpmTrie::pinned(maps::CIDRS_MAX, 0);

#[map]
static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(maps::POLICY_MAX, 0);

#[map]
static DENIED: LruHashMap<ConntrackKey, DeniedValue> = LruHashMap::pinned(maps::DENIED_MAX, 0);

#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentValue> =
    LruHashMap::pinned(maps::FRAGMENTS_MAX, 0);

#[map]
static EVENTS: RingBuf = RingBuf::pinned(maps::EVENTS_BYTES, 0);

#[map]
static DNS_EVENTS: RingBuf = RingBuf::pinned(maps::DNS_EVENTS_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(maps::COUNTERS_MAX, 0);

/// Per-CPU room for what one packet's handling works on: the BPF stack (512 bytes across
/// all frames of a call chain) is too small to hold it.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

struct Scratch {
    parsed: Parsed,
    key: ConntrackKey,
    value: ConntrackValue,
}

#[map]
static EP_COUNTERS: PerCpuHashMap<EndpointCounterKey, u64> =
    PerCpuHashMap::pinned(maps::ENDPOINT_COUNTERS_MAX, 0);

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    match try_judge(&ctx, Hook::FromPod) {
        Ok(action) | Err(action) => action,
    }
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    match try_judge(&ctx, Hook::ToPod) {
        Ok(action) | Err(action) => action,
    }
}

/// Packet bytes, read directly from the linear part of the skb (no helper call) and with
/// `bpf_skb_load_bytes` for anything beyond it (headers in paged data).
struct Skb<'a>(&'a TcContext);

impl Packet for Skb<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        if start + offset + N <= self.0.data_end() {
            // SAFETY: bounds-checked against data_end just above (the verifier checks too).
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) });
        }
        self.0.load::<[u8; N]>(offset).ok()
    }
}

/// A verdict with what it rests on.
#[derive(Clone, Copy)]
struct Judgment {
    verdict: Verdict,
    reason: Reason,
    rule_id: u32,
    peer_identity: u32,
}

/// What an event says besides the connection's key.
#[derive(Clone, Copy)]
struct Verdicted {
    kind: EventKind,
    family: u8,
    direction: Direction,
    judgment: Judgment,
}

/// What one packet's handling needs to know about where it is.
struct Here<'a> {
    ctx: &'a TcContext,
    ep: EndpointInfo,
    mode: Mode,
    hook: Hook,
    /// CLOCK_MONOTONIC (coarse: conntrack lifetimes are seconds, and events are read in
    /// milliseconds) when the packet arrived; read once per packet.
    now: u64,
}

#[inline(always)]
fn try_judge(ctx: &TcContext, hook: Hook) -> Result<i32, i32> {
    // SAFETY: the context pointer is the kernel's __sk_buff; the verifier rewrites the read.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain-data value copied out at once; user space updates entries whole.
    let Some(ep) = (unsafe { ENDPOINTS.get(ifindex) }).copied() else {
        count(Counter::NotAnEndpoint);
        return Ok(tc_action::NEXT);
    };
    count(Counter::Packets);
    let mode = Mode::from_u8(ep.mode).unwrap_or(Mode::Enforce);
    let here = Here {
        ctx,
        ep,
        mode,
        hook,
        // SAFETY: no preconditions.
        now: unsafe { bpf_ktime_get_coarse_ns() },
    };
    let fast = established_ipv4(&here);
    if fast != NOT_HANDLED {
        return Ok(fast);
    }

    let scratch = SCRATCH.get_ptr_mut(0).ok_or(tc_action::SHOT)?;
    // SAFETY: this CPU's slot, used by this program run only (TC programs do not nest).
    let scratch = unsafe { &mut *scratch };
    let p = &mut scratch.parsed;
    match parse_into(&Skb(ctx), p) {
        Kind::Ip => {}
        Kind::Arp => return Ok(arp(&here, &p.src)),
        Kind::NeighbourDiscovery => return Ok(tc_action::NEXT),
        Kind::Unclassified => {
            count(Counter::Unclassified);
            // Never let what we cannot read through an enforcing endpoint.
            return Ok(drop_if_enforcing(&here));
        }
    }
    let p: &Parsed = &scratch.parsed;
    if hook == Hook::FromPod && !owns(&here.ep, p) {
        count(Counter::Spoofed);
        if mode != Mode::Learn {
            return Ok(spoofed(&here, scratch));
        }
    }
    if p.fragment == Fragment::Later {
        count(Counter::Fragments);
        return Ok(later_fragment(&here, p));
    }
    if p.has_quoted && is_related(&here, &p.quoted) {
        count(Counter::Related);
        return Ok(tc_action::NEXT);
    }

    scratch.key = conntrack_key(ep.endpoint_id, p, hook);
    let now = here.now;
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by reference: a copy of the key would cost BPF stack"
    )]
    let entry = CONNTRACK.get_ptr_mut(&scratch.key);
    if let Some(entry) = entry {
        // SAFETY: the pointer into the map value stays valid for this program run; counters
        // are updated atomically, the rest is last-writer-wins like any conntrack.
        let entry = unsafe { &mut *entry };
        if !(entry.is_expired(p.protocol, now)
            || (p.protocol == proto::TCP && entry.reopened_by(p.tcp_flags)))
        {
            let action = existing(&here, &scratch.key, entry, &scratch.parsed);
            return Ok(after_verdict(&here, &scratch.parsed, action));
        }
    }
    let action = new_connection(&here, scratch);
    Ok(after_verdict(&here, &scratch.parsed, action))
}

/// [`established_ipv4`] did not handle the packet.
const NOT_HANDLED: i32 = i32::MIN;

/// The fast path, for most packets: plain IPv4 (no options, not fragmented) TCP or UDP of a
/// live connection whose verdict still stands. Headers are read straight into registers,
/// the key is built on the stack, and only conntrack is consulted; anything else (a new
/// connection, SYN/FIN/RST, a changed revision, IPv6, options, fragments, DNS answers,
/// another address than the pod's own) goes down the full path.
#[inline(never)]
fn established_ipv4(here: &Here) -> i32 {
    let pkt = Skb(here.ctx);
    let (Some(eth_type), Some(ip)) = (pkt.be16_at(12), pkt.bytes::<20>(14)) else {
        return NOT_HANDLED;
    };
    let protocol = ip[9];
    let plain = eth_type == 0x0800
        && ip[0] == 0x45
        && (ip[6] & 0x3f) == 0
        && ip[7] == 0
        && (protocol == proto::TCP || protocol == proto::UDP);
    let Some(l4) = pkt.bytes::<14>(34).filter(|_| plain) else {
        return NOT_HANDLED;
    };
    let syn_fin_rst = 0x07;
    if protocol == proto::TCP && l4[13] & syn_fin_rst != 0 {
        return NOT_HANDLED;
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let src_port = u16::from_be_bytes([l4[0], l4[1]]);
    let dst_port = u16::from_be_bytes([l4[2], l4[3]]);
    let (pod, peer, pod_port, peer_port) = match here.hook {
        Hook::FromPod if src == here.ep.ipv4 => (src, dst, src_port, dst_port),
        Hook::ToPod if src_port != DNS_PORT => (dst, src, dst_port, src_port),
        _ => return NOT_HANDLED,
    };
    let key = ConntrackKey {
        endpoint: here.ep.endpoint_id,
        pod_addr: addr::from_ipv4(pod),
        peer_addr: addr::from_ipv4(peer),
        pod_port,
        peer_port,
        protocol,
        _pad: [0; 3],
    };
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by reference: a copy of the key would cost BPF stack"
    )]
    let entry = CONNTRACK.get_ptr_mut(&key);
    let Some(entry) = entry else {
        return NOT_HANDLED;
    };
    // SAFETY: valid for this program run; see try_judge.
    let entry = unsafe { &mut *entry };
    if entry.policy_revision != here.ep.policy_revision
        || entry.mode != here.mode as u8
        || entry.is_expired(protocol, here.now)
    {
        return NOT_HANDLED;
    }
    account(here, entry);
    // A verdict that stands is Allow or WouldDeny: Deny never stays in conntrack.
    tc_action::NEXT
}

/// What follows an allowed packet: a DNS answer on its way to the pod is copied to user
/// space (which names external peers from it).
#[inline(always)]
fn after_verdict(here: &Here, p: &Parsed, action: i32) -> i32 {
    if action == tc_action::NEXT
        && here.hook == Hook::ToPod
        && p.src_port == DNS_PORT
        && (p.protocol == proto::UDP || p.protocol == proto::TCP)
        && p.payload_offset != 0
    {
        copy_dns_answer(here, p);
    }
    action
}

const DNS_PORT: u16 = 53;

#[inline(never)]
fn copy_dns_answer(here: &Here, p: &Parsed) {
    let offset = u32::from(p.payload_offset);
    let len = here.ctx.len().saturating_sub(offset);
    let Some(mut slot) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    if len == 0 {
        slot.discard(0);
        return;
    }
    // 1..=DNS_PAYLOAD_MAX in a form the verifier can bound (DNS_PAYLOAD_MAX is a power of
    // two): a plain min() leaves it a range that may be zero.
    let len = ((len.min(DNS_PAYLOAD_MAX as u32) - 1) & (DNS_PAYLOAD_MAX as u32 - 1)) + 1;
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` is reserved ring-buffer memory of DnsEvent's size; the copy writes at
    // most DNS_PAYLOAD_MAX bytes into `payload`, which holds exactly that many.
    let copied = unsafe {
        (*ev).endpoint = here.ep.endpoint_id;
        (*ev).ifindex = (*here.ctx.skb.skb).ifindex;
        (*ev).pod_addr = p.dst;
        (*ev).server_addr = p.src;
        (*ev).len = len as u16;
        (*ev).protocol = p.protocol;
        (*ev)._pad = [0; 5];
        bpf_skb_load_bytes(
            here.ctx.skb.skb as *const _,
            offset,
            (*ev).payload.as_mut_ptr().cast(),
            len,
        ) == 0
    };
    if copied {
        slot.submit(0);
    } else {
        slot.discard(0);
    }
}

/// A pod sending from an address not its own: refused (and reported once per attempt).
/// Out of line, with the key in scratch memory: the main frame has no room for it.
#[inline(never)]
fn spoofed(here: &Here, scratch: &mut Scratch) -> i32 {
    scratch.key = conntrack_key(here.ep.endpoint_id, &scratch.parsed, here.hook);
    let what = Verdicted {
        kind: EventKind::NewConnection,
        family: scratch.parsed.family,
        direction: Direction::Egress,
        judgment: refusal(here.mode, Reason::Spoofed, 0),
    };
    // Monitor mode drops nothing: the spoofed packet is recorded as would-deny (once per
    // attempt, like any refusal) and passes.
    let drop = here.mode != Mode::Monitor;
    refuse_or_record(here, &scratch.key, &what, drop)
}

/// ARP always passes, except a pod announcing an address that is not its own.
#[inline(always)]
fn arp(here: &Here, sender: &Addr) -> i32 {
    let own = here.ep.ipv4;
    if here.hook == Hook::ToPod
        || own == [0; 4]
        || *sender == addr::from_ipv4(own)
        || *sender == addr::from_ipv4([0; 4])
    {
        return tc_action::NEXT;
    }
    count(Counter::Spoofed);
    drop_if_enforcing(here)
}

/// Does the pod own the source address of `p`? Link-local and unspecified IPv6 sources
/// (neighbour discovery, DAD) are its own too; an endpoint without addresses is not checked.
#[inline(always)]
fn owns(ep: &EndpointInfo, p: &Parsed) -> bool {
    if p.family == 4 {
        ep.ipv4 == [0; 4] || p.src == addr::from_ipv4(ep.ipv4)
    } else {
        ep.ipv6 == [0; 16]
            || p.src == ep.ipv6
            || (p.src[0] == 0xfe && p.src[1] & 0xc0 == 0x80)
            || p.src == [0; 16]
    }
}

/// A later fragment follows the verdict of its datagram's first fragment; without one (or
/// when it would rewrite the TCP header, an overlap attack) an enforcing endpoint drops it.
#[inline(never)]
fn later_fragment(here: &Here, p: &Parsed) -> i32 {
    let overlaps_tcp_header = p.protocol == proto::TCP && p.fragment_offset < 20;
    let key = fragment_key(here.ep.endpoint_id, p);
    // SAFETY: plain-data value copied out at once.
    let first = unsafe { FRAGMENTS.get(key) }.map(|f| f.verdict);
    match first {
        Some(v) if v != Verdict::Deny as u8 && !overlaps_tcp_header => tc_action::NEXT,
        _ => drop_if_enforcing(here),
    }
}

#[inline(always)]
fn fragment_key(endpoint: u32, p: &Parsed) -> FragmentKey {
    FragmentKey {
        endpoint,
        id: p.fragment_id,
        src: p.src,
        dst: p.dst,
        protocol: p.protocol,
        _pad: [0; 3],
    }
}

/// An ICMP error about a connection this endpoint tracks and allowed.
#[inline(never)]
fn is_related(here: &Here, q: &Quoted) -> bool {
    // The quoted datagram travelled the other way: the pod sent it when the error comes in,
    // the peer sent it when the pod reports the error.
    let (pod_addr, peer_addr, pod_port, peer_port) = match here.hook {
        Hook::ToPod => (q.src, q.dst, q.src_port, q.dst_port),
        Hook::FromPod => (q.dst, q.src, q.dst_port, q.src_port),
    };
    let key = ConntrackKey {
        endpoint: here.ep.endpoint_id,
        pod_addr,
        peer_addr,
        pod_port,
        peer_port,
        protocol: q.protocol,
        _pad: [0; 3],
    };
    // SAFETY: plain-data value copied out at once.
    unsafe { CONNTRACK.get(key) }.is_some_and(|e| e.verdict != Verdict::Deny as u8)
}

#[inline(never)]
fn existing(here: &Here, key: &ConntrackKey, entry: &mut ConntrackValue, p: &Parsed) -> i32 {
    account(here, entry);
    if p.protocol == proto::TCP {
        entry.tcp_state = tcp_advance(entry.tcp_state, p.tcp_flags, here.hook == Hook::FromPod);
    }
    if entry.policy_revision != here.ep.policy_revision || entry.mode != here.mode as u8 {
        let direction = Direction::from_u8(entry.direction).unwrap_or(Direction::Egress);
        let judgment = judge(here, key, p.family, direction);
        if judgment.verdict == Verdict::Deny {
            // Cut: the connection leaves conntrack for the refused attempts.
            let _ = CONNTRACK.remove(key);
            let what = Verdicted {
                kind: EventKind::Rejudged,
                family: p.family,
                direction,
                judgment,
            };
            return refuse(here, key, &what);
        }
        let changed = entry.verdict != judgment.verdict as u8;
        entry.verdict = judgment.verdict as u8;
        entry.rule_id = judgment.rule_id;
        entry.mode = here.mode as u8;
        entry.policy_revision = here.ep.policy_revision;
        if changed {
            let what = Verdicted {
                kind: EventKind::Rejudged,
                family: p.family,
                direction,
                judgment,
            };
            emit(here, key, &what);
        }
    }
    remember_first_fragment(here, p, entry.verdict);
    tc_action::NEXT
}

#[inline(never)]
fn new_connection(here: &Here, scratch: &mut Scratch) -> i32 {
    let Scratch {
        parsed: p,
        key,
        value,
    } = scratch;
    let (p, key): (&Parsed, &ConntrackKey) = (p, key);
    let now = here.now;
    let len = u64::from(here.ctx.len());
    let direction = opener(p, here.hook);
    let judgment = judge(here, key, p.family, direction);
    if judgment.verdict == Verdict::Deny {
        remember_first_fragment(here, p, Verdict::Deny as u8);
        let what = Verdicted {
            kind: EventKind::NewConnection,
            family: p.family,
            direction,
            judgment,
        };
        return refuse(here, key, &what);
    }
    let from_pod = here.hook == Hook::FromPod;
    *value = ConntrackValue {
        created_ns: now,
        last_seen_ns: now,
        packets_from_pod: u64::from(from_pod),
        bytes_from_pod: if from_pod { len } else { 0 },
        packets_to_pod: u64::from(!from_pod),
        bytes_to_pod: if from_pod { 0 } else { len },
        policy_revision: here.ep.policy_revision,
        rule_id: judgment.rule_id,
        direction: direction as u8,
        verdict: judgment.verdict as u8,
        mode: here.mode as u8,
        tcp_state: if p.protocol == proto::TCP {
            tcp_advance(0, p.tcp_flags, from_pod)
        } else {
            0
        },
        _pad: [0; 4],
    };
    // On failure (map error) the connection is still judged; it is judged again next packet.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by reference: a copy of the value would cost BPF stack"
    )]
    let _ = CONNTRACK.insert(key, &*value, 0);
    count(Counter::Connections);
    count_endpoint(
        here.ep.endpoint_id,
        if judgment.verdict == Verdict::WouldDeny {
            EndpointCounter::WouldDeny
        } else {
            EndpointCounter::Allowed
        },
    );
    remember_first_fragment(here, p, judgment.verdict as u8);
    let what = Verdicted {
        kind: EventKind::NewConnection,
        family: p.family,
        direction,
        judgment,
    };
    emit(here, key, &what);
    tc_action::NEXT
}

/// Drop a refused attempt. The first packet of an attempt (per policy revision) is recorded
/// and reported; its retransmissions are only counted, so a scan or flood costs one
/// `DENIED` entry per attempt and never touches `CONNTRACK`.
#[inline(always)]
fn refuse(here: &Here, key: &ConntrackKey, what: &Verdicted) -> i32 {
    refuse_or_record(here, key, what, true)
}

/// [`refuse`], or with `drop` false only record the attempt (once, like a refusal) and let
/// the packet pass.
#[inline(never)]
fn refuse_or_record(here: &Here, key: &ConntrackKey, what: &Verdicted, drop: bool) -> i32 {
    let judgment = what.judgment;
    let action = if drop {
        count_endpoint(here.ep.endpoint_id, EndpointCounter::Dropped);
        count(Counter::Drops);
        tc_action::SHOT
    } else {
        tc_action::NEXT
    };
    let now = here.now;
    if let Some(seen) = DENIED.get_ptr_mut(key) {
        // SAFETY: valid for this run; a lost increment under a race only undercounts.
        let seen = unsafe { &mut *seen };
        if seen.policy_revision == here.ep.policy_revision {
            seen.last_ns = now;
            atomic_add(&mut seen.packets, 1);
            return action;
        }
    }
    let value = DeniedValue {
        first_ns: now,
        last_ns: now,
        packets: 1,
        policy_revision: here.ep.policy_revision,
        rule_id: judgment.rule_id,
    };
    let _ = DENIED.insert(key, value, 0);
    count(Counter::Denied);
    count_endpoint(here.ep.endpoint_id, EndpointCounter::Denied);
    emit(here, key, what);
    action
}

/// Record a first fragment's verdict for the datagram's later fragments.
#[inline(always)]
fn remember_first_fragment(here: &Here, p: &Parsed, verdict: u8) {
    if p.fragment != Fragment::First {
        return;
    }
    let value = FragmentValue {
        verdict,
        _pad: [0; 7],
        last_ns: here.now,
    };
    let _ = FRAGMENTS.insert(fragment_key(here.ep.endpoint_id, p), value, 0);
}

/// The verdict for a new connection (or a re-judged one) under the endpoint's mode.
#[inline(always)]
fn judge(here: &Here, key: &ConntrackKey, family: u8, direction: Direction) -> Judgment {
    let mut judgment = allow(Reason::Rule, 0, 0);
    judge_into(here, key, family | (direction as u8) << 4, &mut judgment);
    judgment
}

/// [`judge`], out of line. BPF subprograms take at most five arguments and cannot return
/// aggregates, so the family and direction share a byte and the result is written to `out`.
#[inline(never)]
fn judge_into(here: &Here, key: &ConntrackKey, family_direction: u8, out: &mut Judgment) {
    let family = family_direction & 0x0f;
    let direction = Direction::from_u8(family_direction >> 4).unwrap_or(Direction::Egress);
    *out = judgment_of(here, key, family, direction);
}

#[inline(always)]
fn judgment_of(here: &Here, key: &ConntrackKey, family: u8, direction: Direction) -> Judgment {
    let ep = &here.ep;
    // SAFETY: plain-data values copied out at once.
    let cached = unsafe { IPCACHE.get(key.peer_addr) }.copied();
    let known = cached.map(|v| v.identity);
    if known == Some(identity::HOST) {
        return allow(Reason::Host, 0, identity::HOST);
    }
    // A pod cannot block itself (Kubernetes): it meets itself here through a Service of its
    // own, after the node's DNAT.
    if key.peer_addr == key.pod_addr {
        return allow(Reason::Itself, 0, ep.identity);
    }
    let service = cached.is_some_and(|v| v.flags & ipcache_flags::SERVICE != 0);
    let policy = match direction {
        Direction::Egress => ep.egress_policy,
        Direction::Ingress => ep.ingress_policy,
    };
    // A known peer is looked up in CIDRS only when a rule of this direction names a CIDR
    // (an ipBlock may cover pod addresses); an unknown one always, for its identity.
    let cidr = if known.is_none() || policy & direction_policy::NO_CIDR_RULES == 0 {
        let cidr_key = Key::new(
            CidrKey::LOOKUP_BITS,
            CidrKey {
                family,
                addr: key.peer_addr,
            },
        );
        CIDRS.get(cidr_key).copied()
    } else {
        None
    };
    let peer = known.unwrap_or(identity::WORLD);
    let peer_identity = if known.is_none() {
        cidr.unwrap_or(identity::WORLD)
    } else {
        peer
    };
    if here.mode == Mode::Learn {
        return allow(Reason::Learn, 0, peer_identity);
    }
    if policy & direction_policy::ISOLATED == 0 {
        return allow(Reason::Open, 0, peer_identity);
    }
    // One key, rewritten between lookups: each key on the stack costs frame space.
    let mut lookup = Key::new(
        PolicyKey::FULL_BITS,
        PolicyKey::new(
            ep.endpoint_id,
            ep.policy_generation,
            direction as u8,
            peer,
            key.protocol,
            server_port(key, direction),
        ),
    );
    let mut hit = POLICY.get(&lookup).map(|v| v.rule_id);
    if hit.is_none()
        && !service
        && let Some(cidr) = cidr
    {
        lookup.data.identity = cidr.to_be_bytes();
        hit = POLICY.get(&lookup).map(|v| v.rule_id);
    }
    if hit.is_none() && !service {
        lookup.data.identity = identity::ANY.to_be_bytes();
        hit = POLICY.get(&lookup).map(|v| v.rule_id);
    }
    match hit {
        Some(rule_id) => allow(Reason::Rule, rule_id, peer_identity),
        None => Judgment {
            peer_identity,
            ..refusal(here.mode, Reason::NoRule, 0)
        },
    }
}

#[inline(always)]
fn allow(reason: Reason, rule_id: u32, peer_identity: u32) -> Judgment {
    Judgment {
        verdict: Verdict::Allow,
        reason,
        rule_id,
        peer_identity,
    }
}

/// What refusing means under `mode`: drop when enforcing, record when monitoring.
#[inline(always)]
fn refusal(mode: Mode, reason: Reason, peer_identity: u32) -> Judgment {
    let verdict = match mode {
        Mode::Enforce => Verdict::Deny,
        Mode::Monitor => Verdict::WouldDeny,
        Mode::Learn => Verdict::Allow,
    };
    Judgment {
        verdict,
        reason,
        rule_id: 0,
        peer_identity,
    }
}

#[inline(always)]
fn drop_if_enforcing(here: &Here) -> i32 {
    if here.mode == Mode::Enforce {
        count(Counter::Drops);
        count_endpoint(here.ep.endpoint_id, EndpointCounter::Dropped);
        tc_action::SHOT
    } else {
        tc_action::NEXT
    }
}

// Out of line (a BPF subprogram) in this and the other large steps: inlined together
// they exceed the 512-byte BPF stack.
#[inline(never)]
fn emit(here: &Here, key: &ConntrackKey, what: &Verdicted) {
    let Verdicted {
        kind,
        family,
        direction,
        judgment,
    } = *what;
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    // Field by field into the ring buffer: a FlowEvent built on the stack first would
    // cost 72 bytes of the 512-byte stack.
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points to reserved ring-buffer memory of FlowEvent's size and alignment;
    // every field is written before submit.
    unsafe {
        (*ev).timestamp_ns = here.now;
        (*ev).endpoint = key.endpoint;
        (*ev).ifindex = (*here.ctx.skb.skb).ifindex;
        (*ev).pod_addr = key.pod_addr;
        (*ev).peer_addr = key.peer_addr;
        (*ev).pod_port = key.pod_port;
        (*ev).peer_port = key.peer_port;
        (*ev).protocol = key.protocol;
        (*ev).family = family;
        (*ev).direction = direction as u8;
        (*ev).verdict = judgment.verdict as u8;
        (*ev).mode = here.mode as u8;
        (*ev).kind = kind as u8;
        (*ev).reason = judgment.reason as u8;
        (*ev)._pad = 0;
        (*ev).rule_id = judgment.rule_id;
        (*ev).packet_len = here.ctx.len();
        (*ev).peer_identity = judgment.peer_identity;
    }
    // Wake the agent only when this event takes the waiting data past the threshold: once
    // per pile-up, not once per event after it (a forced wake-up is an interrupt). Below the
    // threshold, or while the agent is behind, it drains the ring on its timer.
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let crossed = (maps::EVENTS_WAKEUP_BYTES..maps::EVENTS_WAKEUP_BYTES + RINGBUF_RECORD_BYTES)
        .contains(&waiting);
    let wakeup = if crossed {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(u64::from(wakeup));
}

/// Bytes one FlowEvent takes in the ring: the record and the ring's 8-byte header.
const RINGBUF_RECORD_BYTES: u64 = size_of::<FlowEvent>() as u64 + 8;

/// Count this packet on its connection (in the direction it travels) and mark it live.
#[inline(always)]
fn account(here: &Here, entry: &mut ConntrackValue) {
    let (packets, bytes) = match here.hook {
        Hook::FromPod => (&mut entry.packets_from_pod, &mut entry.bytes_from_pod),
        Hook::ToPod => (&mut entry.packets_to_pod, &mut entry.bytes_to_pod),
    };
    atomic_add(packets, 1);
    atomic_add(bytes, u64::from(here.ctx.len()));
    entry.last_seen_ns = here.now;
}

/// Add to a counter that packets on other CPUs may be adding to at the same time.
#[inline(always)]
fn atomic_add(counter: &mut u64, n: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `counter` is a valid, 8-byte aligned u64 inside a map value.
    unsafe {
        use core::intrinsics::{AtomicOrdering, atomic_xadd};
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n);
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        *counter += n;
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot: no other program run writes it concurrently.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count_endpoint(endpoint: u32, counter: EndpointCounter) {
    let key = EndpointCounterKey {
        endpoint,
        counter: counter as u32,
    };
    match EP_COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value: no other program run writes it concurrently.
        Some(slot) => unsafe { *slot += 1 },
        None => {
            let _ = EP_COUNTERS.insert(key, 1, 0);
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program in which a panic path is reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("enforcer-ebpf holds kernel programs; they are built for bpfel-unknown-none");
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
