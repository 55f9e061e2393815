//! Kernel events and conntrack entries -> [`model::FlowRecord`]: the one place where the
//! kernel's numbers become the names people and the learner read.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant, SystemTime},
};

use enforcer_common::{
    self as abi,
    conntrack::{ConntrackKey, ConntrackValue},
    event::{EventKind, FlowEvent},
};
use model::{Counters, Direction, FlowKind, FlowRecord, Mode, Peer, Protocol, Reason, Verdict};
use nix::time::{ClockId, clock_gettime};

use super::rules::ip_from_kernel;
use crate::{dns::DnsCache, names::Names};

/// A field the kernel wrote that this agent does not understand (a newer datapath?).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {field} value {value} in a kernel record")]
pub struct DecodeError {
    pub field: &'static str,
    pub value: u8,
}

/// Converts the kernel's monotonic timestamps (`bpf_ktime_get_ns`) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero, in nanoseconds since the epoch.
    boot_wall_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        });
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            boot_wall_ns: wall - mono,
        }
    }

    /// Monotonic nanoseconds -> wall-clock time.
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (self.boot_wall_ns + i128::from(mono_ns)).max(0);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    /// Monotonic nanoseconds -> RFC 3339 with milliseconds.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_millis(self.wall(mono_ns)).to_string()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What a record needs besides the kernel's numbers: time, interface, pod and DNS names.
pub struct Namer {
    pub clock: Clock,
    pub names: Names,
    pub dns: DnsCache,
    /// Rule id -> where the rule comes from (a NetworkPolicy and its rule).
    pub rules: BTreeMap<u32, String>,
    interfaces: HashMap<u32, String>,
}

impl Namer {
    pub fn new(names: Names) -> Self {
        Self {
            clock: Clock::new(),
            names,
            dns: DnsCache::default(),
            rules: BTreeMap::new(),
            interfaces: HashMap::new(),
        }
    }

    /// The interface's name in this thread's namespace (cached; `if<N>` once it is gone).
    pub fn interface(&mut self, ifindex: u32) -> String {
        self.interfaces
            .entry(ifindex)
            .or_insert_with(|| {
                nix::net::if_::if_indextoname(ifindex)
                    .ok()
                    .and_then(|n| n.into_string().ok())
                    .unwrap_or_else(|| format!("if{ifindex}"))
            })
            .clone()
    }

    fn peer(&self, addr: &abi::addr::Addr, port: u16, interface: Option<&str>) -> Peer {
        let ip = ip_from_kernel(addr);
        let pod = interface
            .and_then(|i| self.names.interfaces.get(i))
            .or_else(|| self.names.addresses.get(&ip))
            .cloned();
        let dns_name = interface
            .is_none()
            .then(|| self.dns.name_of(ip, Instant::now()).map(str::to_owned))
            .flatten();
        // Only the remote side can be a ClusterIP: the pod's own address never is.
        let service = interface
            .is_none()
            .then(|| self.names.services.get(&ip).cloned())
            .flatten();
        let meta = pod.as_ref().and_then(|p| self.names.pods.get(p));
        Peer {
            ip,
            port,
            workload: meta.and_then(|m| m.workload.clone()),
            labels: meta.map(|m| m.labels.clone()).unwrap_or_default(),
            pod,
            dns_name,
            service,
        }
    }

    /// A ring-buffer event as a flow record.
    pub fn event(&mut self, ev: &FlowEvent) -> Result<FlowRecord, DecodeError> {
        let interface = self.interface(ev.ifindex);
        let kind = match EventKind::from_u8(ev.kind) {
            Some(EventKind::NewConnection) => FlowKind::New,
            Some(EventKind::Rejudged) => FlowKind::Rejudged,
            None => return Err(bad("kind", ev.kind)),
        };
        Ok(FlowRecord {
            time: self.clock.rfc3339(ev.timestamp_ns),
            // A new connection was first seen now; a rejudged one's start is not in the event.
            first_seen: None,
            kind,
            local: self.peer(&ev.pod_addr, ev.pod_port, Some(&interface)),
            remote: self.peer(&ev.peer_addr, ev.peer_port, None),
            interface,
            ifindex: ev.ifindex,
            endpoint: ev.endpoint,
            direction: direction(ev.direction)?,
            protocol: Protocol::from_number(ev.protocol),
            verdict: verdict(ev.verdict)?,
            mode: mode(ev.mode)?,
            rule: (ev.rule_id != 0).then_some(ev.rule_id),
            policy: self.rules.get(&ev.rule_id).cloned(),
            reason: Some(reason(ev.reason)?),
            counters: None,
        })
    }

    /// A conntrack entry as a flow record with counters.
    pub fn conntrack(
        &mut self,
        key: &ConntrackKey,
        value: &ConntrackValue,
    ) -> Result<FlowRecord, DecodeError> {
        // An endpoint's id is the ifindex of its interface (see `rules::register_endpoint`).
        let ifindex = key.endpoint;
        let interface = self.interface(ifindex);
        Ok(FlowRecord {
            time: self.clock.rfc3339(value.last_seen_ns),
            first_seen: (value.created_ns != 0).then(|| self.clock.rfc3339(value.created_ns)),
            kind: FlowKind::Stats,
            local: self.peer(&key.pod_addr, key.pod_port, Some(&interface)),
            remote: self.peer(&key.peer_addr, key.peer_port, None),
            interface,
            ifindex,
            endpoint: key.endpoint,
            direction: direction(value.direction)?,
            protocol: Protocol::from_number(key.protocol),
            verdict: verdict(value.verdict)?,
            mode: mode(value.mode)?,
            rule: (value.rule_id != 0).then_some(value.rule_id),
            policy: self.rules.get(&value.rule_id).cloned(),
            reason: None,
            counters: Some(Counters {
                packets_from_pod: value.packets_from_pod,
                bytes_from_pod: value.bytes_from_pod,
                packets_to_pod: value.packets_to_pod,
                bytes_to_pod: value.bytes_to_pod,
            }),
        })
    }
}

fn bad(field: &'static str, value: u8) -> DecodeError {
    DecodeError { field, value }
}

fn direction(v: u8) -> Result<Direction, DecodeError> {
    match abi::Direction::from_u8(v) {
        Some(abi::Direction::Egress) => Ok(Direction::Egress),
        Some(abi::Direction::Ingress) => Ok(Direction::Ingress),
        None => Err(bad("direction", v)),
    }
}

fn verdict(v: u8) -> Result<Verdict, DecodeError> {
    match abi::Verdict::from_u8(v) {
        Some(abi::Verdict::Allow) => Ok(Verdict::Allow),
        Some(abi::Verdict::Deny) => Ok(Verdict::Deny),
        Some(abi::Verdict::WouldDeny) => Ok(Verdict::WouldDeny),
        None => Err(bad("verdict", v)),
    }
}

fn reason(v: u8) -> Result<Reason, DecodeError> {
    use abi::event::Reason as R;
    Ok(match R::from_u8(v) {
        Some(R::Rule) => Reason::Rule,
        Some(R::Open) => Reason::Open,
        Some(R::Host) => Reason::Host,
        Some(R::Learn) => Reason::Learn,
        Some(R::NoRule) => Reason::NoRule,
        Some(R::Spoofed) => Reason::Spoofed,
        Some(R::Unclassified) => Reason::Unclassified,
        Some(R::Fragment) => Reason::Fragment,
        Some(R::Itself) => Reason::Itself,
        None => return Err(bad("reason", v)),
    })
}

fn mode(v: u8) -> Result<Mode, DecodeError> {
    super::rules::model_mode(v).ok_or_else(|| bad("mode", v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::rules::kernel_addr;

    fn event() -> FlowEvent {
        FlowEvent {
            timestamp_ns: 5_000_000_000,
            endpoint: 9,
            ifindex: 9,
            pod_addr: kernel_addr("10.244.0.2".parse().unwrap()),
            peer_addr: kernel_addr("203.0.113.10".parse().unwrap()),
            pod_port: 40_000,
            peer_port: 443,
            protocol: abi::proto::TCP,
            family: 4,
            direction: abi::Direction::Egress as u8,
            verdict: abi::Verdict::Deny as u8,
            mode: abi::Mode::Enforce as u8,
            kind: EventKind::NewConnection as u8,
            reason: abi::event::Reason::NoRule as u8,
            _pad: 0,
            rule_id: 3,
            packet_len: 74,
            peer_identity: 2,
        }
    }

    fn namer() -> Namer {
        let mut names = Names::default();
        names
            .addresses
            .insert("10.244.0.2".parse().unwrap(), "shop/frontend-0".into());
        names
            .addresses
            .insert("203.0.113.10".parse().unwrap(), "payments-api".into());
        Namer::new(names)
    }

    #[test]
    fn events_become_named_records() {
        let r = namer().event(&event()).unwrap();
        assert_eq!(r.kind, FlowKind::New);
        assert_eq!(r.direction, Direction::Egress);
        assert_eq!(r.verdict, Verdict::Deny);
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!(r.local.ip.to_string(), "10.244.0.2");
        assert_eq!(r.local.pod.as_deref(), Some("shop/frontend-0"));
        assert_eq!(r.remote.pod.as_deref(), Some("payments-api"));
        assert_eq!(r.server_port(), Some(443));
        assert_eq!(r.rule, Some(3));
    }

    #[test]
    fn cluster_ips_name_their_service() {
        let mut namer = namer();
        namer
            .names
            .services
            .insert("203.0.113.10".parse().unwrap(), "shop/payments".into());
        // The pod's own address is never a ClusterIP, whatever the names say.
        namer
            .names
            .services
            .insert("10.244.0.2".parse().unwrap(), "shop/frontend".into());
        let r = namer.event(&event()).unwrap();
        assert_eq!(r.remote.service.as_deref(), Some("shop/payments"));
        assert_eq!(r.local.service, None);
        assert_eq!(
            r.first_seen, None,
            "a new connection was first seen at `time`"
        );
    }

    #[test]
    fn conntrack_records_say_when_the_connection_was_first_seen() {
        let key = ConntrackKey {
            endpoint: 9,
            pod_addr: kernel_addr("10.244.0.2".parse().unwrap()),
            peer_addr: kernel_addr("203.0.113.10".parse().unwrap()),
            pod_port: 40_000,
            peer_port: 443,
            protocol: abi::proto::TCP,
            _pad: [0; 3],
        };
        let value = ConntrackValue {
            created_ns: 5_000_000_000,
            last_seen_ns: 65_250_000_000,
            packets_from_pod: 3,
            bytes_from_pod: 300,
            packets_to_pod: 2,
            bytes_to_pod: 2000,
            policy_revision: 1,
            rule_id: 0,
            direction: abi::Direction::Egress as u8,
            verdict: abi::Verdict::Allow as u8,
            mode: abi::Mode::Enforce as u8,
            tcp_state: 0,
            _pad: [0; 4],
        };
        let mut namer = namer();
        let r = namer.conntrack(&key, &value).unwrap();
        let first_seen = r.first_seen.as_deref().unwrap();
        assert_eq!(first_seen, namer.clock.rfc3339(value.created_ns));
        let first = humantime::parse_rfc3339(first_seen).unwrap();
        let last = humantime::parse_rfc3339(&r.time).unwrap();
        assert_eq!(
            last.duration_since(first).unwrap(),
            Duration::from_millis(60_250)
        );
        assert_eq!(r.remote.service, None);
        // An entry without a creation time (none the kernel writes) has no first_seen.
        let r = namer
            .conntrack(
                &key,
                &ConntrackValue {
                    created_ns: 0,
                    ..value
                },
            )
            .unwrap();
        assert_eq!(r.first_seen, None);
    }

    #[test]
    fn unknown_kernel_values_are_reported_not_guessed() {
        let mut ev = event();
        ev.verdict = 77;
        assert_eq!(namer().event(&ev).unwrap_err(), bad("verdict", 77));
    }

    #[test]
    fn monotonic_time_maps_to_wall_time() {
        let clock = Clock::new();
        let mono_now = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap();
        let mono_ns = mono_now.tv_sec() as u64 * 1_000_000_000 + mono_now.tv_nsec() as u64;
        let skew = SystemTime::now()
            .duration_since(clock.wall(mono_ns))
            .unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "{skew:?}");
    }
}
