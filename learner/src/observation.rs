//! What the learner reads from a flow record, borrowed from it: the same for a record
//! decoded from JSON (`model::FlowRecord`) and one decoded from protobuf (the wire
//! message, read without converting), so one aggregation serves both.

use std::net::IpAddr;

use model::{Direction, FlowKind, FlowRecord, Protocol, Reason};

/// One side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Side<'a> {
    pub ip: IpAddr,
    pub port: u16,
    /// `namespace/name`.
    pub pod: Option<&'a str>,
    /// `namespace/Kind/name`.
    pub workload: Option<&'a str>,
    pub dns_name: Option<&'a str>,
    /// The Service (`namespace/name`) whose ClusterIP this address is.
    pub service: Option<&'a str>,
}

impl Side<'_> {
    /// The pod's workload, or `namespace/Pod/name` for a pod that has none. Written into
    /// `buf` for bare pods, so no allocation is needed for the common case.
    pub fn workload<'b>(&'b self, buf: &'b mut String) -> Option<&'b str> {
        if let Some(w) = self.workload {
            return Some(w);
        }
        let (namespace, name) = self.pod?.split_once('/')?;
        buf.clear();
        buf.push_str(namespace);
        buf.push_str("/Pod/");
        buf.push_str(name);
        Some(buf)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation<'a> {
    pub kind: FlowKind,
    /// Unix milliseconds of the event.
    pub time_ms: i64,
    pub direction: Direction,
    pub protocol: Protocol,
    /// The endpoint's pod.
    pub local: Side<'a>,
    pub remote: Side<'a>,
    /// The peer is the pod's own node.
    pub host_peer: bool,
    /// Bytes both ways, when the record has counters.
    pub bytes: Option<u64>,
}

impl Observation<'_> {
    /// The connection's server port: the remote's when the pod opened it, the pod's own
    /// otherwise; `None` for protocols without ports.
    pub fn server_port(&self) -> Option<u16> {
        self.protocol.has_ports().then_some(match self.direction {
            Direction::Egress => self.remote.port,
            Direction::Ingress => self.local.port,
        })
    }

    /// The side that opened the connection.
    pub fn client(&self) -> &Side<'_> {
        match self.direction {
            Direction::Egress => &self.local,
            Direction::Ingress => &self.remote,
        }
    }
}

/// A record the learner cannot read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("time {0:?} is not an RFC 3339 time")]
    Time(String),
    #[error("{field} is {value}")]
    Field { field: &'static str, value: String },
}

impl<'a> Observation<'a> {
    pub fn from_record(record: &'a FlowRecord) -> Result<Self, BadRecord> {
        let time_ms =
            parse_time_ms(&record.time).ok_or_else(|| BadRecord::Time(record.time.clone()))?;
        Ok(Self {
            kind: record.kind,
            time_ms,
            direction: record.direction,
            protocol: record.protocol,
            local: side(&record.local),
            remote: side(&record.remote),
            host_peer: record.reason == Some(Reason::Host),
            bytes: record.counters.map(|c| c.bytes_from_pod + c.bytes_to_pod),
        })
    }
}

fn side(peer: &model::Peer) -> Side<'_> {
    Side {
        ip: peer.ip,
        port: peer.port,
        pod: peer.pod.as_deref(),
        workload: peer.workload.as_deref(),
        dns_name: peer.dns_name.as_deref(),
        service: peer.service.as_deref(),
    }
}

/// Unix milliseconds of an RFC 3339 time.
pub fn parse_time_ms(time: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(time).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_that_is_not_rfc_3339_is_named() {
        let mut record: FlowRecord = serde_json::from_str(
            r#"{"time":"2026-11-28T10:00:00.250Z","kind":"new","interface":"pl-x-1",
                "ifindex":7,"endpoint":7,"direction":"ingress","protocol":"udp",
                "local":{"ip":"10.244.0.2","port":53,"pod":"kube-system/dns-1"},
                "remote":{"ip":"10.244.0.3","port":40000,"pod":"shop/web-1"},
                "verdict":"allow","mode":"learn"}"#,
        )
        .unwrap();
        let o = Observation::from_record(&record).unwrap();
        assert_eq!(
            o.time_ms,
            parse_time_ms("2026-11-28T10:00:00.250Z").unwrap()
        );
        assert_eq!(
            (o.server_port(), o.client().pod),
            (Some(53), Some("shop/web-1"))
        );
        let mut buf = String::new();
        assert_eq!(o.local.workload(&mut buf), Some("kube-system/Pod/dns-1"));
        record.time = "yesterday".into();
        let err = Observation::from_record(&record).unwrap_err();
        assert!(err.to_string().contains("yesterday"), "{err}");
    }
}
