//! Flow records: one connection as one endpoint saw it.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// Who opened the connection, from the pod's side. The side that opened it is the client,
/// the other the server: egress = the pod is the client, the remote side the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The pod opened it.
    Egress,
    /// A peer opened it to the pod.
    Ingress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allow,
    Deny,
    /// Monitor mode: a rule denies it, nothing was dropped.
    WouldDeny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Learn,
    Monitor,
    Enforce,
}

/// Transport protocol, named where Palisade knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
    /// Any other IP protocol, by number.
    #[serde(untagged)]
    Other(u8),
}

impl Protocol {
    pub const fn from_number(n: u8) -> Self {
        match n {
            6 => Self::Tcp,
            17 => Self::Udp,
            132 => Self::Sctp,
            1 => Self::Icmp,
            58 => Self::Icmpv6,
            other => Self::Other(other),
        }
    }

    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
            Self::Other(n) => n,
        }
    }

    /// Has port numbers (ICMP echo ids are not ports).
    pub const fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp | Self::Sctp)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("TCP"),
            Self::Udp => f.write_str("UDP"),
            Self::Sctp => f.write_str("SCTP"),
            Self::Icmp => f.write_str("ICMP"),
            Self::Icmpv6 => f.write_str("ICMPv6"),
            Self::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// Why the datapath gave its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A rule allows it (see `rule`).
    Rule,
    /// The direction is not isolated for this pod.
    Open,
    /// The peer is the pod's own node.
    Host,
    /// Learn mode.
    Learn,
    /// Isolated, and no rule allows it.
    NoRule,
    /// The pod sent from an address that is not its own.
    Spoofed,
    /// The packet could not be classified.
    Unclassified,
    /// A later IP fragment without an allowed first fragment.
    Fragment,
    /// The pod reaching itself (through a Service of its own): never blocked.
    Itself,
}

/// Why this record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowKind {
    /// The connection's first packet on this endpoint.
    New,
    /// The verdict of a live connection changed after a mode or rule change.
    Rejudged,
    /// Periodic counters of a live connection, read from conntrack.
    Stats,
    /// The connection ended (closed or idle past its lifetime): its final counters. The
    /// agent writes it when it removes the expired conntrack entry.
    Closed,
}

/// One side of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub ip: IpAddr,
    /// Port (TCP, UDP, SCTP) or ICMP echo id; 0 when there is none.
    pub port: u16,
    /// The pod's `namespace/name`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The DNS name the pod looked this address up by, when the agent saw the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// The Service (`namespace/name`) whose ClusterIP this address is: the pod reached it
    /// through that Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The pod's workload (`namespace/Kind/name`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The pod's identity-relevant labels, when known: records carry these, never the
    /// node-local identity numbers, so baselines from many nodes merge.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Packets and bytes (L2 frame lengths) in each direction, as the endpoint counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counters {
    pub packets_from_pod: u64,
    pub bytes_from_pod: u64,
    pub packets_to_pod: u64,
    pub bytes_to_pod: u64,
}

/// A connection as one endpoint saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowRecord {
    /// RFC 3339 wall-clock time of the event (with milliseconds): for `new` and
    /// `rejudged` records the packet's, for `stats` and `closed` records the connection's
    /// last packet's.
    pub time: String,
    /// RFC 3339 time the connection was first seen (its conntrack entry's creation), on
    /// `stats` and `closed` records; a `new` record's connection was first seen at `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    pub kind: FlowKind,
    /// The node's interface (host side of the pod's veth) and its ifindex.
    pub interface: String,
    pub ifindex: u32,
    pub endpoint: u32,
    pub direction: Direction,
    pub protocol: Protocol,
    /// The pod that owns the endpoint.
    pub local: Peer,
    /// The other side.
    pub remote: Peer,
    pub verdict: Verdict,
    pub mode: Mode,
    /// The rule behind an allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// Where that rule comes from, e.g. `shop/api-allow ingress[0]` (a NetworkPolicy, the
    /// direction and the index of the rule in it), when the node's policy has names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Why the verdict (absent in conntrack exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

impl FlowRecord {
    /// The connection's server port: the remote's when the pod opened it, the pod's own
    /// otherwise; `None` for protocols without ports.
    pub fn server_port(&self) -> Option<u16> {
        if !self.protocol.has_ports() {
            return None;
        }
        Some(match self.direction {
            Direction::Egress => self.remote.port,
            Direction::Ingress => self.local.port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(direction: Direction, protocol: Protocol) -> FlowRecord {
        FlowRecord {
            time: "2026-11-28T10:00:00.000Z".into(),
            first_seen: None,
            kind: FlowKind::New,
            interface: "pl-demo-1".into(),
            ifindex: 7,
            endpoint: 7,
            direction,
            protocol,
            local: Peer {
                ip: "10.244.0.2".parse().unwrap(),
                port: 40000,
                pod: Some("shop/frontend".into()),
                dns_name: None,
                service: None,
                workload: None,
                labels: BTreeMap::new(),
            },
            remote: Peer {
                ip: "10.244.0.3".parse().unwrap(),
                port: 8080,
                pod: None,
                dns_name: None,
                service: None,
                workload: None,
                labels: BTreeMap::new(),
            },
            verdict: Verdict::Allow,
            mode: Mode::Enforce,
            rule: None,
            policy: None,
            reason: None,
            counters: None,
        }
    }

    #[test]
    fn json_is_stable_and_round_trips() {
        let r = record(Direction::Egress, Protocol::Tcp);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""direction":"egress""#), "{json}");
        assert!(json.contains(r#""protocol":"tcp""#), "{json}");
        assert!(
            !json.contains("counters"),
            "absent counters are omitted: {json}"
        );
        assert_eq!(serde_json::from_str::<FlowRecord>(&json).unwrap(), r);
    }

    #[test]
    fn unknown_protocols_keep_their_number() {
        let json = serde_json::to_string(&Protocol::Other(47)).unwrap();
        assert_eq!(json, "47");
        assert_eq!(
            serde_json::from_str::<Protocol>("47").unwrap(),
            Protocol::Other(47)
        );
        assert_eq!(Protocol::from_number(6), Protocol::Tcp);
        assert_eq!(Protocol::Other(47).number(), 47);
    }

    #[test]
    fn server_port_follows_direction() {
        assert_eq!(
            record(Direction::Egress, Protocol::Tcp).server_port(),
            Some(8080)
        );
        assert_eq!(
            record(Direction::Ingress, Protocol::Tcp).server_port(),
            Some(40000)
        );
        assert_eq!(
            record(Direction::Egress, Protocol::Icmp).server_port(),
            None
        );
    }
}
