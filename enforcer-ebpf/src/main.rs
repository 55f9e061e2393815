//! Palisade's TC programs, attached to the host side of every pod veth.
//!
//! `from_pod` runs on host-side ingress (what the pod sends), `to_pod` on host-side egress
//! (what the pod receives). Both judge only the first packet of a connection (or the first
//! after the endpoint's mode or rules changed) and let the conntrack entry carry the verdict
//! for the rest; they emit one event per connection, never one per packet.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has atomic add but no compare-and-swap, so core's `AtomicU64::fetch_add`
// is not offered there; the intrinsic lowers to BPF's atomic add instruction.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "atomic add, see above")
)]

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use enforcer_common::{
    Direction, Mode, Verdict,
    conntrack::{ConntrackKey, ConntrackValue, tcp_advance},
    deny::{DenyKey, DenyValue},
    endpoint::EndpointInfo,
    event::{Counter, EventKind, FlowEvent},
    maps, proto, tc_action,
};
use enforcer_ebpf::{
    flow::{Hook, conntrack_key, deny_key, opener},
    packet::Packet,
    parse::{Fragment, Outcome, Parsed, parse},
};

#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(maps::ENDPOINTS_MAX, 0);

#[map]
static CONNTRACK: LruHashMap<ConntrackKey, ConntrackValue> =
    LruHashMap::pinned(maps::CONNTRACK_MAX, 0);

#[map]
static DENY: HashMap<DenyKey, DenyValue> = HashMap::pinned(maps::DENY_MAX, 0);

#[map]
static EVENTS: RingBuf = RingBuf::pinned(maps::EVENTS_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(maps::COUNTERS_MAX, 0);

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

    let p = match parse(&Skb(ctx)) {
        Outcome::Ip(p) => p,
        Outcome::Arp | Outcome::NeighbourDiscovery => return Ok(tc_action::NEXT),
        Outcome::Unclassified => {
            count(Counter::Unclassified);
            // Never let what we cannot read through an enforcing endpoint.
            return Ok(act(if mode == Mode::Enforce {
                Verdict::Deny
            } else {
                Verdict::Allow
            }));
        }
    };
    if p.fragment == Fragment::Later {
        count(Counter::Fragments);
        return Ok(act(judge_fragment(&ep, mode, &p, hook)));
    }

    let key = conntrack_key(ep.endpoint_id, &p, hook);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let len = u64::from(ctx.len());
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: the pointer into the map value stays valid for this program run; counters
        // are updated atomically, the rest is last-writer-wins like any conntrack.
        let entry = unsafe { &mut *entry };
        if !(entry.is_expired(p.protocol, now)
            || (p.protocol == proto::TCP && entry.reopened_by(p.tcp_flags)))
        {
            return Ok(existing(ctx, &ep, mode, &key, entry, &p, hook, now, len));
        }
    }
    Ok(new_connection(ctx, &ep, mode, &key, &p, hook, now, len))
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined hot path; a struct costs stack"
)]
fn existing(
    ctx: &TcContext,
    ep: &EndpointInfo,
    mode: Mode,
    key: &ConntrackKey,
    entry: &mut ConntrackValue,
    p: &Parsed,
    hook: Hook,
    now: u64,
    len: u64,
) -> i32 {
    let (packets, bytes) = match hook {
        Hook::FromPod => (&mut entry.packets_from_pod, &mut entry.bytes_from_pod),
        Hook::ToPod => (&mut entry.packets_to_pod, &mut entry.bytes_to_pod),
    };
    atomic_add(packets, 1);
    atomic_add(bytes, len);
    entry.last_seen_ns = now;
    if p.protocol == proto::TCP {
        entry.tcp_state = tcp_advance(entry.tcp_state, p.tcp_flags, hook == Hook::FromPod);
    }
    if entry.policy_revision != ep.policy_revision || entry.mode != mode as u8 {
        let direction = Direction::from_u8(entry.direction).unwrap_or(Direction::Egress);
        let (verdict, rule_id) = judge(mode, &deny_key(key, direction));
        let changed = entry.verdict != verdict as u8;
        entry.verdict = verdict as u8;
        entry.rule_id = rule_id;
        entry.mode = mode as u8;
        entry.policy_revision = ep.policy_revision;
        if changed {
            emit(
                ctx,
                EventKind::Rejudged,
                key,
                p.family,
                direction,
                verdict,
                mode,
                rule_id,
            );
        }
    }
    act(Verdict::from_u8(entry.verdict).unwrap_or(Verdict::Deny))
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined hot path; a struct costs stack"
)]
fn new_connection(
    ctx: &TcContext,
    ep: &EndpointInfo,
    mode: Mode,
    key: &ConntrackKey,
    p: &Parsed,
    hook: Hook,
    now: u64,
    len: u64,
) -> i32 {
    let direction = opener(p, hook);
    let (verdict, rule_id) = judge(mode, &deny_key(key, direction));
    let from_pod = hook == Hook::FromPod;
    let value = ConntrackValue {
        created_ns: now,
        last_seen_ns: now,
        packets_from_pod: u64::from(from_pod),
        bytes_from_pod: if from_pod { len } else { 0 },
        packets_to_pod: u64::from(!from_pod),
        bytes_to_pod: if from_pod { 0 } else { len },
        policy_revision: ep.policy_revision,
        rule_id,
        direction: direction as u8,
        verdict: verdict as u8,
        mode: mode as u8,
        tcp_state: if p.protocol == proto::TCP {
            tcp_advance(0, p.tcp_flags, from_pod)
        } else {
            0
        },
        _pad: [0; 4],
    };
    // On failure (map error) the connection is still judged; it is judged again next packet.
    let _ = CONNTRACK.insert(key, value, 0);
    count(Counter::Connections);
    emit(
        ctx,
        EventKind::NewConnection,
        key,
        p.family,
        direction,
        verdict,
        mode,
        rule_id,
    );
    act(verdict)
}

/// The verdict for a connection named by `deny` under `mode`, and the rule behind it.
#[inline(always)]
fn judge(mode: Mode, deny: &DenyKey) -> (Verdict, u32) {
    if mode == Mode::Learn {
        return (Verdict::Allow, 0);
    }
    // SAFETY: plain-data value copied out at once.
    let hit = unsafe {
        DENY.get(deny)
            .or_else(|| DENY.get(deny.any_port()))
            .or_else(|| DENY.get(deny.any_protocol()))
    }
    .copied();
    match (hit, mode) {
        (None, _) => (Verdict::Allow, 0),
        (Some(rule), Mode::Enforce) => (Verdict::Deny, rule.rule_id),
        (Some(rule), _) => (Verdict::WouldDeny, rule.rule_id),
    }
}

/// A later IP fragment has no ports: only a rule on the whole peer can apply to it.
#[inline(always)]
fn judge_fragment(ep: &EndpointInfo, mode: Mode, p: &Parsed, hook: Hook) -> Verdict {
    let peer = match hook {
        Hook::FromPod => p.dst,
        Hook::ToPod => p.src,
    };
    judge(mode, &DenyKey::new(ep.endpoint_id, peer, 0, 0)).0
}

#[inline(always)]
fn act(verdict: Verdict) -> i32 {
    if verdict == Verdict::Deny {
        count(Counter::Drops);
        tc_action::SHOT
    } else {
        tc_action::NEXT
    }
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "fields of one event")]
fn emit(
    ctx: &TcContext,
    kind: EventKind,
    key: &ConntrackKey,
    family: u8,
    direction: Direction,
    verdict: Verdict,
    mode: Mode,
    rule_id: u32,
) {
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    slot.write(FlowEvent {
        // SAFETY: no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        endpoint: key.endpoint,
        // SAFETY: as in try_judge.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        pod_addr: key.pod_addr,
        peer_addr: key.peer_addr,
        pod_port: key.pod_port,
        peer_port: key.peer_port,
        protocol: key.protocol,
        family,
        direction: direction as u8,
        verdict: verdict as u8,
        mode: mode as u8,
        kind: kind as u8,
        _pad: [0; 2],
        rule_id,
        packet_len: ctx.len(),
        _pad2: [0; 4],
    });
    slot.submit(0);
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
