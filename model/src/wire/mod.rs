//! Flow records on the wire: the protobuf schema (`proto/palisade/flow/v1/flow.proto`)
//! shared by the agent and the learner, its conversions to and from [`crate::FlowRecord`],
//! and files of records in either form.
//!
//! # Layout
//! - [`v1`]: the code prost generates from the schema (built by `build.rs`, no protoc).
//! - this module: `model::FlowRecord` <-> `v1::FlowRecord`.
//! - [`io`]: [`FlowWriter`] and [`FlowReader`]: JSON lines or length-delimited protobuf.
//! - [`error`]: [`ConvertError`] and [`ReadError`].
//!
//! The JSON form keeps times as RFC 3339 strings and absent values as absent keys; the
//! protobuf form keeps times as milliseconds since the epoch and absent values as empty
//! strings, 0 or the enums' `UNSPECIFIED`. A record converted one way and back is the
//! same record (times have millisecond precision in both).

pub mod error;
pub mod io;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

pub use error::{ConvertError, ReadError};
pub use io::{FlowReader, FlowWriter, Format};

use crate::{Counters, Direction, FlowKind, FlowRecord, Mode, Peer, Protocol, Reason, Verdict};

/// The generated protobuf types of `palisade.flow.v1`. Enum fields are `i32` in the
/// messages (so unknown values survive decoding); the enums' `try_from(i32)` name them.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/palisade.flow.v1.rs"));
}

/// The first millisecond humantime cannot write (year 10000).
const END_OF_TIME_MS: i64 = 253_402_300_800_000;

impl From<&FlowRecord> for v1::FlowRecord {
    fn from(record: &FlowRecord) -> Self {
        Self::from(record.clone())
    }
}

/// Strings move; a time that is not RFC 3339 (never one the agent writes) becomes 0.
impl From<FlowRecord> for v1::FlowRecord {
    fn from(r: FlowRecord) -> Self {
        let time_unix_ms = unix_ms(&r.time).unwrap_or(0);
        let first_seen_unix_ms = match (&r.first_seen, r.kind) {
            (Some(t), _) => unix_ms(t).unwrap_or(0),
            (None, FlowKind::New) => time_unix_ms,
            (None, _) => 0,
        };
        Self {
            time_unix_ms,
            first_seen_unix_ms,
            kind: match r.kind {
                FlowKind::New => v1::Kind::New,
                FlowKind::Rejudged => v1::Kind::Rejudged,
                FlowKind::Stats => v1::Kind::Stats,
                FlowKind::Closed => v1::Kind::Closed,
            }
            .into(),
            interface: r.interface,
            ifindex: r.ifindex,
            endpoint: r.endpoint,
            direction: match r.direction {
                Direction::Egress => v1::Direction::Egress,
                Direction::Ingress => v1::Direction::Ingress,
            }
            .into(),
            protocol: r.protocol.number().into(),
            local: Some(r.local.into()),
            remote: Some(r.remote.into()),
            verdict: match r.verdict {
                Verdict::Allow => v1::Verdict::Allow,
                Verdict::Deny => v1::Verdict::Deny,
                Verdict::WouldDeny => v1::Verdict::WouldDeny,
            }
            .into(),
            mode: match r.mode {
                Mode::Learn => v1::Mode::Learn,
                Mode::Monitor => v1::Mode::Monitor,
                Mode::Enforce => v1::Mode::Enforce,
            }
            .into(),
            rule: r.rule.unwrap_or(0),
            policy: r.policy.unwrap_or_default(),
            reason: r
                .reason
                .map_or(v1::Reason::Unspecified, reason_to_wire)
                .into(),
            counters: r.counters.map(|c| v1::Counters {
                packets_from_pod: c.packets_from_pod,
                bytes_from_pod: c.bytes_from_pod,
                packets_to_pod: c.packets_to_pod,
                bytes_to_pod: c.bytes_to_pod,
            }),
        }
    }
}

impl From<Peer> for v1::Endpoint {
    fn from(p: Peer) -> Self {
        Self {
            ip: match p.ip {
                IpAddr::V4(ip) => ip.octets().to_vec(),
                IpAddr::V6(ip) => ip.octets().to_vec(),
            },
            port: p.port.into(),
            pod: p.pod.unwrap_or_default(),
            workload: p.workload.unwrap_or_default(),
            dns_name: p.dns_name.unwrap_or_default(),
            labels: p.labels,
            service: p.service.unwrap_or_default(),
        }
    }
}

fn reason_to_wire(reason: Reason) -> v1::Reason {
    match reason {
        Reason::Rule => v1::Reason::Rule,
        Reason::Open => v1::Reason::Open,
        Reason::Host => v1::Reason::Host,
        Reason::Learn => v1::Reason::Learn,
        Reason::NoRule => v1::Reason::NoRule,
        Reason::Spoofed => v1::Reason::Spoofed,
        Reason::Unclassified => v1::Reason::Unclassified,
        Reason::Fragment => v1::Reason::Fragment,
        Reason::Itself => v1::Reason::Itself,
    }
}

/// Strings move. A `first_seen_unix_ms` of 0, or equal to the time of a `new` record,
/// becomes `None` (the JSON form leaves it out there).
impl TryFrom<v1::FlowRecord> for FlowRecord {
    type Error = ConvertError;

    fn try_from(r: v1::FlowRecord) -> Result<Self, ConvertError> {
        let kind = match enum_value::<v1::Kind>("kind", r.kind)? {
            v1::Kind::Unspecified => return Err(ConvertError::Unspecified { field: "kind" }),
            v1::Kind::New => FlowKind::New,
            v1::Kind::Rejudged => FlowKind::Rejudged,
            v1::Kind::Stats => FlowKind::Stats,
            v1::Kind::Closed => FlowKind::Closed,
        };
        let first_seen = match r.first_seen_unix_ms {
            0 => None,
            t if kind == FlowKind::New && t == r.time_unix_ms => None,
            t => Some(rfc3339("first_seen_unix_ms", t)?),
        };
        let direction = match enum_value::<v1::Direction>("direction", r.direction)? {
            v1::Direction::Unspecified => {
                return Err(ConvertError::Unspecified { field: "direction" });
            }
            v1::Direction::Egress => Direction::Egress,
            v1::Direction::Ingress => Direction::Ingress,
        };
        let verdict = match enum_value::<v1::Verdict>("verdict", r.verdict)? {
            v1::Verdict::Unspecified => return Err(ConvertError::Unspecified { field: "verdict" }),
            v1::Verdict::Allow => Verdict::Allow,
            v1::Verdict::Deny => Verdict::Deny,
            v1::Verdict::WouldDeny => Verdict::WouldDeny,
        };
        let mode = match enum_value::<v1::Mode>("mode", r.mode)? {
            v1::Mode::Unspecified => return Err(ConvertError::Unspecified { field: "mode" }),
            v1::Mode::Learn => Mode::Learn,
            v1::Mode::Monitor => Mode::Monitor,
            v1::Mode::Enforce => Mode::Enforce,
        };
        let reason = match enum_value::<v1::Reason>("reason", r.reason)? {
            v1::Reason::Unspecified => None,
            v1::Reason::Rule => Some(Reason::Rule),
            v1::Reason::Open => Some(Reason::Open),
            v1::Reason::Host => Some(Reason::Host),
            v1::Reason::Learn => Some(Reason::Learn),
            v1::Reason::NoRule => Some(Reason::NoRule),
            v1::Reason::Spoofed => Some(Reason::Spoofed),
            v1::Reason::Unclassified => Some(Reason::Unclassified),
            v1::Reason::Fragment => Some(Reason::Fragment),
            v1::Reason::Itself => Some(Reason::Itself),
        };
        let protocol = u8::try_from(r.protocol).map_err(|_| ConvertError::OutOfRange {
            field: "protocol",
            value: r.protocol,
            max: u8::MAX.into(),
        })?;
        Ok(Self {
            time: rfc3339("time_unix_ms", r.time_unix_ms)?,
            first_seen,
            kind,
            interface: r.interface,
            ifindex: r.ifindex,
            endpoint: r.endpoint,
            direction,
            protocol: Protocol::from_number(protocol),
            local: peer(r.local, &LOCAL)?,
            remote: peer(r.remote, &REMOTE)?,
            verdict,
            mode,
            rule: (r.rule != 0).then_some(r.rule),
            policy: non_empty(r.policy),
            reason,
            counters: r.counters.map(|c| Counters {
                packets_from_pod: c.packets_from_pod,
                bytes_from_pod: c.bytes_from_pod,
                packets_to_pod: c.packets_to_pod,
                bytes_to_pod: c.bytes_to_pod,
            }),
        })
    }
}

/// The names of one side's fields, for errors.
struct Side {
    endpoint: &'static str,
    ip: &'static str,
    port: &'static str,
}

const LOCAL: Side = Side {
    endpoint: "local",
    ip: "local.ip",
    port: "local.port",
};
const REMOTE: Side = Side {
    endpoint: "remote",
    ip: "remote.ip",
    port: "remote.port",
};

fn peer(endpoint: Option<v1::Endpoint>, side: &Side) -> Result<Peer, ConvertError> {
    let e = endpoint.ok_or(ConvertError::Missing {
        field: side.endpoint,
    })?;
    let ip = if let Ok(v4) = <[u8; 4]>::try_from(e.ip.as_slice()) {
        IpAddr::V4(Ipv4Addr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(e.ip.as_slice()) {
        IpAddr::V6(Ipv6Addr::from(v6))
    } else {
        return Err(ConvertError::IpLength {
            field: side.ip,
            len: e.ip.len(),
        });
    };
    let port = u16::try_from(e.port).map_err(|_| ConvertError::OutOfRange {
        field: side.port,
        value: e.port,
        max: u16::MAX.into(),
    })?;
    Ok(Peer {
        ip,
        port,
        pod: non_empty(e.pod),
        dns_name: non_empty(e.dns_name),
        service: non_empty(e.service),
        workload: non_empty(e.workload),
        labels: e.labels,
    })
}

fn enum_value<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E, ConvertError> {
    E::try_from(value).map_err(|_| ConvertError::UnknownEnum { field, value })
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// RFC 3339 (as the JSON form writes it) -> milliseconds since the epoch.
fn unix_ms(time: &str) -> Option<i64> {
    let since_epoch = humantime::parse_rfc3339_weak(time)
        .ok()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?;
    i64::try_from(since_epoch.as_millis()).ok()
}

/// Milliseconds since the epoch -> RFC 3339 with milliseconds, as the agent writes it.
fn rfc3339(field: &'static str, ms: i64) -> Result<String, ConvertError> {
    if !(1..END_OF_TIME_MS).contains(&ms) {
        return Err(ConvertError::Time { field, value: ms });
    }
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    Ok(humantime::format_rfc3339_millis(t).to_string())
}

#[cfg(test)]
mod tests;
