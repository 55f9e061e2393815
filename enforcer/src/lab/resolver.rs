//! The lab's cluster DNS: what the pods of a `k8s-app: kube-dns` workload answer on UDP 53,
//! and DNS lookups from pods, so a pod can look a name up and connect like a real pod (and
//! the agent, which copies the answers pods receive, names the peer it then connects to).
//!
//! The [`Zone`] holds the names the lab knows, all with [`TTL`]:
//! - every external host by its exact name (`payments-gateway.example.com`; no subdomains);
//! - every Service as `<name>.<namespace>.svc.cluster.local`, with its ClusterIPs.
//!
//! Pods have no names, as in most clusters' DNS policies that matter here. Anything else is
//! NXDOMAIN, with the question echoed. The lab's server builds the zone from the lab's state
//! when it starts; the lab restarts the server whenever pods change (see
//! [`super::servers`]), so new resolver pods serve too. External hosts and Services never
//! change once the lab is up.
//!
//! A datagram that is not a DNS query gets no answer, like a real resolver: except the lab's
//! own echo probes, which keep getting their echo so `lab probe` still tells whether UDP 53
//! of a resolver pod is reachable.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use simple_dns::{
    CLASS, Name, OPCODE, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE,
    rdata::RData,
};

use super::{
    Lab,
    error::{Error, Result},
    probe::{Family, ProbeResult},
    state::{ExternalHost, Pod, ServiceInfo},
    topology::Protocol,
};
use crate::netns;

/// The port the resolver answers on (UDP).
pub const DNS_PORT: u16 = 53;
/// The TTL of every answer.
pub const TTL: u32 = 30;
/// The label that makes a pod a resolver, as CoreDNS's in a real cluster.
pub const RESOLVER_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
/// The Service pods send their lookups to (`ns/name`).
pub const RESOLVER_SERVICE: &str = "kube-system/kube-dns";
/// The cluster's domain: Services are `<name>.<namespace>.svc.<domain>`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// How long [`Lab::resolve_and_probe`] waits for the resolver.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers larger than this are truncated (TC set): without EDNS, UDP DNS messages are at
/// most 512 bytes (RFC 1035).
const MAX_UDP_ANSWER: usize = 512;
/// Queries sent per lookup, spread over its timeout: the first may be lost while the node
/// resolves the resolver's neighbour entry.
const ATTEMPTS: u32 = 3;
/// What the lab's echo probes start with (see [`super::probe::probe`]).
const PROBE_PREFIX: &[u8] = b"palisade-probe ";

/// Is this pod one of the cluster's resolvers?
pub fn is_resolver(pod: &Pod) -> bool {
    let (key, value) = RESOLVER_LABEL;
    pod.labels.get(key).is_some_and(|v| v == value)
}

/// The DNS name of a Service: `<name>.<namespace>.svc.cluster.local`.
pub fn service_name(service: &ServiceInfo) -> String {
    let name = service
        .name
        .rsplit_once('/')
        .map_or(service.name.as_str(), |(_, name)| name);
    format!("{name}.{}.svc.{CLUSTER_DOMAIN}", service.namespace)
}

/// The names the lab's resolver answers for, lowercase and without the final dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    names: BTreeMap<String, Vec<IpAddr>>,
}

impl Zone {
    pub fn new(externals: &[ExternalHost], services: &[ServiceInfo]) -> Self {
        let mut names: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for external in externals {
            names
                .entry(normalize(&external.name))
                .or_default()
                .extend(&external.addresses);
        }
        for service in services {
            names
                .entry(normalize(&service_name(service)))
                .or_default()
                .extend(service.addresses());
        }
        Self { names }
    }

    /// The addresses of `name` (any case, with or without the final dot).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.names.get(&normalize(name)).map(Vec::as_slice)
    }

    /// The names it knows, with their addresses.
    pub fn names(&self) -> impl Iterator<Item = (&str, &[IpAddr])> {
        self.names.iter().map(|(n, a)| (n.as_str(), a.as_slice()))
    }

    /// The reply to one UDP datagram; `None` when it is not a query this resolver answers
    /// (unparseable, or itself a response, which must never be answered).
    ///
    /// A known name gets its addresses of the asked type (A, AAAA, or both for ANY; none
    /// for other types), an unknown one NXDOMAIN. The question is echoed either way.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let query = Packet::parse(query).ok()?;
        if query.has_flags(PacketFlag::RESPONSE) {
            return None;
        }
        let mut reply = Packet::new_reply(query.id());
        let mut flags = PacketFlag::RECURSION_AVAILABLE;
        if query.has_flags(PacketFlag::RECURSION_DESIRED) {
            flags |= PacketFlag::RECURSION_DESIRED;
        }
        reply.set_flags(flags);
        match (query.opcode(), query.questions.as_slice()) {
            (OPCODE::StandardQuery, [question]) => {
                reply.questions.push(question.clone());
                if !matches!(question.qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY) {
                    *reply.rcode_mut() = RCODE::NotImplemented;
                } else if let Some(addresses) = self.lookup(&question.qname.to_string()) {
                    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
                    reply.answers = records(question, addresses);
                } else {
                    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
                    *reply.rcode_mut() = RCODE::NameError;
                }
            }
            (OPCODE::StandardQuery, _) => *reply.rcode_mut() = RCODE::FormatError,
            (opcode, _) => {
                *reply.opcode_mut() = opcode;
                *reply.rcode_mut() = RCODE::NotImplemented;
            }
        }
        let bytes = reply.build_bytes_vec_compressed().ok()?;
        if bytes.len() <= MAX_UDP_ANSWER {
            return Some(bytes);
        }
        // The client is to ask again over TCP; the lab's TCP 53 only echoes, but no
        // topology's host has enough addresses to get here.
        reply.answers.clear();
        reply.set_flags(PacketFlag::TRUNCATION);
        reply.build_bytes_vec_compressed().ok()
    }

    /// What the resolver sends back for one datagram: the answer to a DNS query, the
    /// datagram itself for the lab's echo probes, nothing for anything else.
    pub fn respond(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        if datagram.starts_with(PROBE_PREFIX) {
            return Some(datagram.to_vec());
        }
        self.answer(datagram)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The answer records for `question` from a known name's addresses.
fn records<'a>(question: &Question<'a>, addresses: &[IpAddr]) -> Vec<ResourceRecord<'a>> {
    let (v4, v6) = match question.qtype {
        QTYPE::TYPE(TYPE::A) => (true, false),
        QTYPE::TYPE(TYPE::AAAA) => (false, true),
        QTYPE::ANY => (true, true),
        _ => (false, false),
    };
    addresses
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) if v4 => Some(RData::A(simple_dns::rdata::A::from(*a))),
            IpAddr::V6(a) if v6 => Some(RData::AAAA(simple_dns::rdata::AAAA::from(*a))),
            _ => None,
        })
        .map(|data| ResourceRecord::new(question.qname.clone(), CLASS::IN, TTL, data))
        .collect()
}

/// The record types a lookup can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    A,
    Aaaa,
    /// What DNS tunnels mostly ask for: the answer carries the most data.
    Txt,
}

impl RecordType {
    /// A for IPv4, AAAA for IPv6.
    pub fn for_family(family: Family) -> Self {
        match family {
            Family::V4 => Self::A,
            Family::V6 => Self::Aaaa,
        }
    }

    fn qtype(self) -> QTYPE {
        QTYPE::TYPE(match self {
            Self::A => TYPE::A,
            Self::Aaaa => TYPE::AAAA,
            Self::Txt => TYPE::TXT,
        })
    }
}

/// How a lookup went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    /// NOERROR, with the A and AAAA addresses of the answer (none: the name exists without
    /// a record of that type, or the type has no addresses).
    Answered(Vec<IpAddr>),
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// Another response code (SERVFAIL 2, NOTIMP 4, REFUSED 5, ...).
    Failed(u16),
    /// What came back is not an answer to the query: an echo server sent the query back,
    /// or something that is not DNS.
    NotAnAnswer,
    /// Nobody listens (ICMP port unreachable).
    Refused,
    /// No answer in time (what a dropping datapath looks like).
    Timeout,
    /// Anything else (the name cannot be put in a query, no route, ...), with what happened.
    Error(String),
}

impl DnsOutcome {
    /// A short label for tables.
    pub fn short(&self) -> &'static str {
        match self {
            Self::Answered(_) => "answered",
            Self::NxDomain => "nxdomain",
            Self::Failed(_) => "failed",
            Self::NotAnAnswer => "not-dns",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Error(_) => "error",
        }
    }
}

/// Where pods send their lookups: the [`RESOLVER_SERVICE`]'s ClusterIP of `family`, port 53.
/// An error naming the Service when the lab has none.
pub fn cluster_dns(lab: &Lab, family: Family) -> Result<SocketAddr> {
    let service = lab.service(RESOLVER_SERVICE)?;
    let ip: IpAddr = match family {
        Family::V4 => service.ipv4.into(),
        Family::V6 => service.ipv6.into(),
    };
    Ok(SocketAddr::new(ip, DNS_PORT))
}

/// Send one DNS query for `name` from the pod `pod`'s namespace to `server` (any address
/// and port: the cluster's resolver, or an external host), and wait up to `timeout` for the
/// answer. The query is resent a few times within the timeout, with the same id.
pub fn query_in_pod(
    lab: &Lab,
    pod: &str,
    server: SocketAddr,
    name: &str,
    record: RecordType,
    timeout: Duration,
) -> Result<DnsOutcome> {
    let netns = &lab.pod(pod)?.netns;
    netns::run_in(netns, || query(server, name, record, timeout)).map_err(|source| Error::Netns {
        netns: netns.clone(),
        source,
    })
}

/// Send one query from the calling thread's namespace.
pub fn query(server: SocketAddr, name: &str, record: RecordType, timeout: Duration) -> DnsOutcome {
    let id = rand::random::<u16>();
    let message = match build_query(id, name, record) {
        Ok(message) => message,
        Err(e) => return DnsOutcome::Error(format!("{name:?} cannot be asked for: {e}")),
    };
    exchange(server, id, &message, timeout).unwrap_or_else(|e| match e.kind() {
        ErrorKind::ConnectionRefused => DnsOutcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => DnsOutcome::Timeout,
        _ => DnsOutcome::Error(e.to_string()),
    })
}

fn build_query(id: u16, name: &str, record: RecordType) -> simple_dns::Result<Vec<u8>> {
    let mut query = Packet::new_query(id);
    query.set_flags(PacketFlag::RECURSION_DESIRED);
    query.questions.push(Question::new(
        Name::new(name)?,
        record.qtype(),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    query.build_bytes_vec()
}

fn exchange(
    server: SocketAddr,
    id: u16,
    message: &[u8],
    timeout: Duration,
) -> std::io::Result<DnsOutcome> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    // Connected: only the server's datagrams arrive, and an ICMP port unreachable surfaces
    // as "refused".
    socket.connect(server)?;
    let mut buf = vec![0u8; 65_536];
    let mut strange = false;
    let start = Instant::now();
    for attempt in 1..=ATTEMPTS {
        socket.send(message)?;
        let until = start + timeout * attempt / ATTEMPTS;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(e) => return Err(e),
            };
            match read_reply(&buf[..n], id) {
                Some(outcome) => return Ok(outcome),
                // A late answer to another lookup on a reused port, or garbage.
                None => strange = true,
            }
        }
    }
    Ok(if strange {
        DnsOutcome::NotAnAnswer
    } else {
        DnsOutcome::Timeout
    })
}

/// What a datagram from the server says about the query `id`; `None` when it says nothing.
fn read_reply(datagram: &[u8], id: u16) -> Option<DnsOutcome> {
    let packet = Packet::parse(datagram).ok()?;
    if packet.id() != id {
        return None;
    }
    if !packet.has_flags(PacketFlag::RESPONSE) {
        // Our own query, sent back by an echo server.
        return Some(DnsOutcome::NotAnAnswer);
    }
    Some(match packet.rcode() {
        RCODE::NoError => DnsOutcome::Answered(
            packet
                .answers
                .iter()
                .filter_map(|a| match &a.rdata {
                    RData::A(a) => Some(IpAddr::from(Ipv4Addr::from(a.address))),
                    RData::AAAA(a) => Some(IpAddr::from(Ipv6Addr::from(a.address))),
                    _ => None,
                })
                .collect(),
        ),
        RCODE::NameError => DnsOutcome::NxDomain,
        rcode => DnsOutcome::Failed(rcode as u16),
    })
}

impl Lab {
    /// Look `name` up from the pod `from_pod` as a pod does: a real DNS query (A for IPv4,
    /// AAAA for IPv6) to the ClusterIP of the `kube-system/kube-dns` Service of `family`,
    /// then probe `port` of the first address of the answer (TCP: connect and echo; UDP:
    /// echo), with the default timeout.
    ///
    /// Returns the address probed and how the probe went. Without an address, the probe
    /// result says why there is none: `Error("... NXDOMAIN")` for an unknown name (the
    /// agent sees the answer all the same), `Timeout` or `Refused` when the resolver did
    /// not answer, `Error` otherwise. An error when the lab has no `kube-system/kube-dns`
    /// Service or no pod `from_pod`.
    pub fn resolve_and_probe(
        &self,
        from_pod: &str,
        name: &str,
        family: Family,
        port: u16,
        protocol: Protocol,
    ) -> Result<(Option<IpAddr>, ProbeResult)> {
        let server = cluster_dns(self, family)?;
        let record = RecordType::for_family(family);
        let outcome = query_in_pod(self, from_pod, server, name, record, DNS_TIMEOUT)?;
        let addresses = match outcome {
            DnsOutcome::Answered(addresses) => addresses,
            DnsOutcome::NxDomain => {
                return Ok((None, ProbeResult::Error(format!("{name}: NXDOMAIN"))));
            }
            DnsOutcome::Refused => return Ok((None, ProbeResult::Refused)),
            DnsOutcome::Timeout => return Ok((None, ProbeResult::Timeout)),
            DnsOutcome::Failed(rcode) => {
                return Ok((
                    None,
                    ProbeResult::Error(format!("{name}: the resolver answered rcode {rcode}")),
                ));
            }
            DnsOutcome::NotAnAnswer => {
                return Ok((
                    None,
                    ProbeResult::Error(format!("{server} sent no DNS answer for {name}")),
                ));
            }
            DnsOutcome::Error(e) => return Ok((None, ProbeResult::Error(e))),
        };
        let Some(address) = addresses.into_iter().find(|a| Family::of(*a) == family) else {
            return Ok((
                None,
                ProbeResult::Error(format!("{name} has no {record:?} record")),
            ));
        };
        let result = self.probe_one(from_pod, address, port, protocol)?;
        Ok((Some(address), result))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, num::NonZeroU16};

    use proptest::prelude::*;

    use super::{super::probe, *};

    fn zone() -> Zone {
        let external = ExternalHost {
            name: "api.example.com".into(),
            addresses: vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
            ports: Vec::new(),
            slot: 1,
            netns: "x".into(),
            host_interface: "x".into(),
        };
        let service = ServiceInfo {
            name: "kube-system/kube-dns".into(),
            namespace: "kube-system".into(),
            selector: BTreeMap::new(),
            ports: Vec::new(),
            ipv4: "10.96.0.10".parse().unwrap(),
            ipv6: "fd00:10:96::a".parse().unwrap(),
        };
        Zone::new(&[external], &[service])
    }

    fn ask(zone: &Zone, id: u16, name: &str, record: RecordType) -> Vec<u8> {
        let query = build_query(id, name, record).unwrap();
        zone.answer(&query).expect("an answer")
    }

    fn addresses(reply: &[u8]) -> Vec<IpAddr> {
        let id = Packet::parse(reply).unwrap().id();
        match read_reply(reply, id) {
            Some(DnsOutcome::Answered(a)) => a,
            other => panic!("not an answer: {other:?}"),
        }
    }

    #[test]
    fn externals_and_services_have_a_and_aaaa_records() {
        let zone = zone();
        let bytes = ask(&zone, 7, "api.example.com", RecordType::A);
        let reply = Packet::parse(&bytes).unwrap();
        assert_eq!(reply.id(), 7);
        assert!(reply.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_DESIRED));
        assert_eq!(reply.rcode(), RCODE::NoError);
        assert_eq!(reply.questions.len(), 1);
        assert_eq!(reply.questions[0].qname.to_string(), "api.example.com");
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].ttl, TTL);
        assert_eq!(reply.answers[0].name.to_string(), "api.example.com");
        assert_eq!(
            addresses(&bytes),
            ["203.0.113.7".parse::<IpAddr>().unwrap()]
        );

        let reply = ask(&zone, 8, "API.Example.com.", RecordType::Aaaa);
        assert_eq!(
            addresses(&reply),
            ["2001:db8::7".parse::<IpAddr>().unwrap()]
        );

        let service = "kube-dns.kube-system.svc.cluster.local";
        let reply = ask(&zone, 9, service, RecordType::A);
        assert_eq!(addresses(&reply), ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        let reply = ask(&zone, 10, service, RecordType::Aaaa);
        assert_eq!(
            addresses(&reply),
            ["fd00:10:96::a".parse::<IpAddr>().unwrap()]
        );

        // The name exists without records of the type: NOERROR, no answers.
        let bytes = ask(&zone, 11, "api.example.com", RecordType::Txt);
        let reply = Packet::parse(&bytes).unwrap();
        assert_eq!(reply.rcode(), RCODE::NoError);
        assert!(reply.answers.is_empty());
    }

    #[test]
    fn unknown_names_are_nxdomain_with_the_question_echoed() {
        let zone = zone();
        for name in [
            "nope.example.com",
            // Exact names only, and no search-domain shortcuts.
            "www.api.example.com",
            "kube-dns.kube-system",
            "example.com",
        ] {
            let bytes = ask(&zone, 42, name, RecordType::A);
            let reply = Packet::parse(&bytes).unwrap();
            assert_eq!(reply.rcode(), RCODE::NameError, "{name}");
            assert_eq!(reply.id(), 42);
            assert!(reply.has_flags(PacketFlag::RESPONSE));
            assert_eq!(reply.questions.len(), 1);
            assert_eq!(reply.questions[0].qname.to_string(), name);
            assert_eq!(reply.questions[0].qtype, QTYPE::TYPE(TYPE::A));
            assert!(reply.answers.is_empty());
            assert_eq!(read_reply(&bytes, 42), Some(DnsOutcome::NxDomain));
        }
    }

    #[test]
    fn malformed_packets_and_responses_get_no_answer() {
        let zone = zone();
        let query = build_query(1, "api.example.com", RecordType::A).unwrap();
        for bad in [
            &b""[..],
            b"\x00",
            b"not dns at all, not even close",
            &query[..query.len() - 3],
            &query[..12],
        ] {
            assert_eq!(zone.answer(bad), None, "{bad:?}");
        }
        // Well-formed but without a question: FORMERR.
        let empty = Packet::new_query(1).build_bytes_vec().unwrap();
        let reply = zone.answer(&empty).unwrap();
        assert_eq!(Packet::parse(&reply).unwrap().rcode(), RCODE::FormatError);
        // An answer is never answered (two resolvers must not ping-pong).
        let answer = zone.answer(&query).unwrap();
        assert_eq!(zone.answer(&answer), None);
        // Garbage gets nothing back, the lab's echo probes their echo.
        assert_eq!(zone.respond(b"garbage"), None);
        let probe = b"palisade-probe 0123456789abcdef\n";
        assert_eq!(zone.respond(probe).as_deref(), Some(&probe[..]));
    }

    #[test]
    fn replies_that_are_not_answers_are_told_apart() {
        let query = build_query(5, "x.example.com", RecordType::A).unwrap();
        // An echo server sends the query back.
        assert_eq!(read_reply(&query, 5), Some(DnsOutcome::NotAnAnswer));
        // Another lookup's answer, or garbage, says nothing about this one.
        assert_eq!(read_reply(&query, 6), None);
        assert_eq!(read_reply(b"garbage", 5), None);
        let mut refused = Packet::new_reply(5);
        *refused.rcode_mut() = RCODE::Refused;
        let refused = refused.build_bytes_vec().unwrap();
        assert_eq!(read_reply(&refused, 5), Some(DnsOutcome::Failed(5)));
    }

    #[test]
    fn names_that_cannot_be_asked_for_are_errors() {
        let label = "a".repeat(64);
        let outcome = query(
            "127.0.0.1:9".parse().unwrap(),
            &format!("{label}.example.com"),
            RecordType::A,
            Duration::from_millis(10),
        );
        assert!(matches!(outcome, DnsOutcome::Error(_)), "{outcome:?}");
    }

    #[test]
    fn only_kube_dns_pods_are_resolvers() {
        let mut pod = Pod::new(
            "lab",
            3,
            super::super::plan::NewPod {
                namespace: "kube-system".into(),
                name: "coredns-0".into(),
                workload: None,
                labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
                ports: vec![super::super::topology::Port {
                    port: NonZeroU16::new(53).unwrap(),
                    protocol: Protocol::Udp,
                    name: None,
                }],
            },
        );
        assert!(is_resolver(&pod));
        pod.labels.insert("k8s-app".into(), "other".into());
        assert!(!is_resolver(&pod));
    }

    /// A query, a lookup and the lab's echo probe against a resolver socket on loopback
    /// (no root needed).
    #[test]
    fn a_lookup_over_udp_gets_the_zone_s_answer() {
        let zone = zone();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let serving = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            for _ in 0..3 {
                let (n, peer) = server.recv_from(&mut buf).unwrap();
                if let Some(reply) = zone.respond(&buf[..n]) {
                    server.send_to(&reply, peer).unwrap();
                }
            }
        });
        let timeout = Duration::from_secs(2);
        assert_eq!(
            query(addr, "api.example.com", RecordType::A, timeout),
            DnsOutcome::Answered(vec!["203.0.113.7".parse().unwrap()])
        );
        assert_eq!(
            query(addr, "unknown.example.com", RecordType::Aaaa, timeout),
            DnsOutcome::NxDomain
        );
        assert_eq!(probe::probe(addr, Protocol::Udp, timeout), ProbeResult::Ok);
        serving.join().unwrap();
    }

    proptest! {
        /// Whatever arrives, the resolver does not panic, and answers only with a response
        /// that parses and carries the query's id.
        #[test]
        fn any_datagram_is_answered_sanely_or_not_at_all(
            datagram in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            if let Some(reply) = zone().answer(&datagram) {
                let reply = Packet::parse(&reply).unwrap();
                prop_assert!(reply.has_flags(PacketFlag::RESPONSE));
                prop_assert_eq!(reply.id(), u16::from_be_bytes([datagram[0], datagram[1]]));
            }
        }

        /// Mutated real queries, which get further into the parser than random bytes.
        #[test]
        fn mutated_queries_do_not_crash_the_resolver(
            flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..8),
            cut in 0usize..64,
        ) {
            let mut query = build_query(3, "api.example.com", RecordType::A).unwrap();
            for (at, byte) in flips {
                let at = at % query.len();
                query[at] = byte;
            }
            query.truncate(query.len().saturating_sub(cut % 8));
            let _ = zone().answer(&query);
        }
    }
}
