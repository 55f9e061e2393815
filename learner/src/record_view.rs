//! The learner's fast path for protobuf records: only the fields it reads, decoded in place
//! into buffers reused from record to record, so reading a record allocates nothing.
//!
//! Decoding the generated `v1::FlowRecord` costs a dozen allocations per record (every
//! string, every label), and `prost` drops the nested messages on `clear`. Protobuf
//! readers may skip fields they do not know, so this view reads the schema's field numbers
//! it needs (see `model/proto/palisade/flow/v1/flow.proto`) and skips the others (labels,
//! interface names, policy names). A test checks it reads what the generated code writes.

use std::net::IpAddr;

use model::{Direction, FlowKind, Protocol, wire::v1};
use prost::{
    DecodeError,
    encoding::{DecodeContext, WireType, check_wire_type, decode_key, decode_varint, skip_field},
};

use crate::observation::{BadRecord, Observation, Side};

/// The fields of `palisade.flow.v1.FlowRecord` the learner reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordView {
    time_unix_ms: i64,
    kind: i32,
    direction: i32,
    protocol: u32,
    local: EndpointView,
    remote: EndpointView,
    reason: i32,
    bytes: Option<u64>,
}

/// The fields of `palisade.flow.v1.Endpoint` the learner reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct EndpointView {
    present: bool,
    ip: Vec<u8>,
    port: u32,
    pod: String,
    workload: String,
    dns_name: String,
    service: String,
}

impl EndpointView {
    fn clear(&mut self) {
        self.present = false;
        self.ip.clear();
        self.port = 0;
        self.pod.clear();
        self.workload.clear();
        self.dns_name.clear();
        self.service.clear();
    }

    fn merge(&mut self, wire_type: WireType, tag: u32, buf: &mut &[u8]) -> Result<(), DecodeError> {
        let mut body = nested(wire_type, tag, buf)?;
        self.present = true;
        let ctx = DecodeContext::default();
        while !body.is_empty() {
            let (tag, wire_type) = decode_key(&mut body)?;
            let ctx = ctx.clone();
            match tag {
                // Not `bytes::merge`, which goes through a `Bytes` (an allocation).
                1 => {
                    let ip = nested(wire_type, tag, &mut body)?;
                    self.ip.clear();
                    self.ip.extend_from_slice(ip);
                }
                2 => prost::encoding::uint32::merge(wire_type, &mut self.port, &mut body, ctx)?,
                3 => prost::encoding::string::merge(wire_type, &mut self.pod, &mut body, ctx)?,
                4 => prost::encoding::string::merge(wire_type, &mut self.workload, &mut body, ctx)?,
                5 => prost::encoding::string::merge(wire_type, &mut self.dns_name, &mut body, ctx)?,
                7 => prost::encoding::string::merge(wire_type, &mut self.service, &mut body, ctx)?,
                _ => skip_field(wire_type, tag, &mut body, ctx)?,
            }
        }
        Ok(())
    }

    fn side(&self, field: &'static str) -> Result<Side<'_>, BadRecord> {
        if !self.present {
            return Err(BadRecord::Field {
                field,
                value: "absent".into(),
            });
        }
        let ip = match self.ip.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(&self.ip[..]).expect("4 bytes")),
            16 => IpAddr::from(<[u8; 16]>::try_from(&self.ip[..]).expect("16 bytes")),
            n => {
                return Err(BadRecord::Field {
                    field,
                    value: format!("an address of {n} bytes"),
                });
            }
        };
        Ok(Side {
            ip,
            port: u16::try_from(self.port).map_err(|_| BadRecord::Field {
                field,
                value: format!("port {}", self.port),
            })?,
            pod: text(&self.pod),
            workload: text(&self.workload),
            dns_name: text(&self.dns_name),
            service: text(&self.service),
        })
    }
}

/// Empty strings are absent values in protobuf.
fn text(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The body of the length-delimited field `tag`, taken off `buf` (prost checks that it
/// fits in what is left).
fn nested<'a>(wire_type: WireType, tag: u32, buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let mut rest = *buf;
    skip_field(wire_type, tag, &mut rest, DecodeContext::default())?;
    let mut body = &buf[..buf.len() - rest.len()];
    decode_varint(&mut body)?;
    *buf = rest;
    Ok(body)
}

impl RecordView {
    /// Decode one record's message bytes, replacing what the view held.
    pub fn decode(&mut self, mut buf: &[u8]) -> Result<(), DecodeError> {
        self.time_unix_ms = 0;
        self.kind = 0;
        self.direction = 0;
        self.protocol = 0;
        self.local.clear();
        self.remote.clear();
        self.reason = 0;
        self.bytes = None;
        let ctx = DecodeContext::default();
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            let ctx = ctx.clone();
            match tag {
                1 => {
                    prost::encoding::int64::merge(wire_type, &mut self.time_unix_ms, &mut buf, ctx)?
                }
                3 => prost::encoding::int32::merge(wire_type, &mut self.kind, &mut buf, ctx)?,
                7 => prost::encoding::int32::merge(wire_type, &mut self.direction, &mut buf, ctx)?,
                8 => prost::encoding::uint32::merge(wire_type, &mut self.protocol, &mut buf, ctx)?,
                9 => self.local.merge(wire_type, tag, &mut buf)?,
                10 => self.remote.merge(wire_type, tag, &mut buf)?,
                15 => prost::encoding::int32::merge(wire_type, &mut self.reason, &mut buf, ctx)?,
                16 => {
                    let mut counters = v1::Counters::default();
                    prost::encoding::message::merge(wire_type, &mut counters, &mut buf, ctx)?;
                    self.bytes = Some(counters.bytes_from_pod + counters.bytes_to_pod);
                }
                _ => skip_field(wire_type, tag, &mut buf, ctx)?,
            }
        }
        Ok(())
    }

    /// What the learner reads of it.
    pub fn observation(&self) -> Result<Observation<'_>, BadRecord> {
        let bad = |field, value: i64| BadRecord::Field {
            field,
            value: value.to_string(),
        };
        let kind = match v1::Kind::try_from(self.kind) {
            Ok(v1::Kind::New) => FlowKind::New,
            Ok(v1::Kind::Rejudged) => FlowKind::Rejudged,
            Ok(v1::Kind::Stats) => FlowKind::Stats,
            Ok(v1::Kind::Closed) => FlowKind::Closed,
            _ => return Err(bad("kind", self.kind.into())),
        };
        let direction = match v1::Direction::try_from(self.direction) {
            Ok(v1::Direction::Egress) => Direction::Egress,
            Ok(v1::Direction::Ingress) => Direction::Ingress,
            _ => return Err(bad("direction", self.direction.into())),
        };
        let protocol =
            u8::try_from(self.protocol).map_err(|_| bad("protocol", self.protocol.into()))?;
        Ok(Observation {
            kind,
            time_ms: self.time_unix_ms,
            direction,
            protocol: Protocol::from_number(protocol),
            local: self.local.side("local")?,
            remote: self.remote.side("remote")?,
            host_peer: self.reason == v1::Reason::Host as i32,
            bytes: self.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use model::{Counters, FlowRecord};
    use prost::Message as _;

    use super::*;

    fn record() -> FlowRecord {
        serde_json::from_str(
            r#"{"time":"2026-11-28T10:00:00.250Z","kind":"closed","interface":"pl-x-1",
                "ifindex":7,"endpoint":7,"direction":"egress","protocol":"tcp",
                "local":{"ip":"10.244.0.2","port":40001,"pod":"shop/frontend-a",
                         "workload":"shop/Deployment/frontend","labels":{"app":"frontend"}},
                "remote":{"ip":"fd00:10:96::10","port":80,"service":"shop/api",
                          "dns_name":"api.shop.svc"},
                "verdict":"allow","mode":"learn","reason":"host","policy":"x/y ingress[0]"}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_view_reads_what_the_generated_code_writes() {
        let mut json = record();
        json.counters = Some(Counters {
            bytes_from_pod: 10,
            bytes_to_pod: 90,
            ..Counters::default()
        });
        let bytes = v1::FlowRecord::from(&json).encode_to_vec();
        let mut view = RecordView::default();
        // Twice: the second decode reuses the buffers and must not keep anything.
        let mut other = record();
        other.remote.service = None;
        view.decode(&v1::FlowRecord::from(&other).encode_to_vec())
            .unwrap();
        view.decode(&bytes).unwrap();
        let a = Observation::from_record(&json).unwrap();
        let b = view.observation().unwrap();
        assert_eq!(a, b);
        assert_eq!(
            (b.bytes, b.host_peer, b.remote.service),
            (Some(100), true, Some("shop/api"))
        );
        assert_eq!(b.remote.dns_name, Some("api.shop.svc"));
    }

    #[test]
    fn what_is_wrong_with_a_record_is_named() {
        let mut wire = v1::FlowRecord::from(&record());
        wire.remote.as_mut().unwrap().ip = vec![1, 2, 3];
        let mut view = RecordView::default();
        view.decode(&wire.encode_to_vec()).unwrap();
        let err = view.observation().unwrap_err();
        assert_eq!(err.to_string(), "remote is an address of 3 bytes");
        wire.remote = None;
        view.decode(&wire.encode_to_vec()).unwrap();
        assert_eq!(
            view.observation().unwrap_err().to_string(),
            "remote is absent"
        );
        wire.direction = 0;
        view.decode(&wire.encode_to_vec()).unwrap();
        assert!(
            view.observation()
                .unwrap_err()
                .to_string()
                .starts_with("direction")
        );
        let cut = v1::FlowRecord::from(&record()).encode_to_vec();
        assert!(
            view.decode(&cut[..cut.len() - 3]).is_err(),
            "a record cut short"
        );
    }
}
