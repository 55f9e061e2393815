//! Probes: connect from a pod's namespace, send a payload, expect it echoed back.
//!
//! A probe runs on a thread that has entered the source pod's namespace, so its socket
//! belongs there; a matrix of probes runs on a bounded pool of such threads. TCP: connect,
//! write, read back. UDP: a connected socket (so an ICMP port unreachable surfaces as
//! "refused"), resent a few times within the timeout.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{Mutex, atomic::AtomicUsize, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};

use super::topology::Protocol;
use crate::netns;

/// How long a probe waits for a connection, and then for the echo.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many probes run at once. Probes mostly wait (a denied one waits out its
/// timeout), so a 9x9 matrix over both families (144 probes) takes about two timeouts.
pub const MAX_THREADS: usize = 96;
/// UDP datagrams sent per probe (spread over its timeout): the first may be lost while the
/// node resolves the peer's neighbour entry.
const UDP_ATTEMPTS: u32 = 3;

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "detail", rename_all = "lowercase")]
pub enum ProbeResult {
    /// Connected and the payload came back.
    Ok,
    /// Nobody listens (TCP reset, ICMP port unreachable).
    Refused,
    /// No answer in time (what a dropping datapath looks like).
    Timeout,
    /// Anything else (no route, unreachable, a wrong echo), with what happened.
    Error(String),
}

impl ProbeResult {
    /// A short label for tables.
    pub fn short(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Error(_) => "error",
        }
    }
}

/// IP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    #[serde(rename = "4")]
    V4,
    #[serde(rename = "6")]
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Self::V4 => 4,
            Self::V6 => 6,
        }
    }
}

/// Probe `target` from the calling thread's namespace.
pub fn probe(target: SocketAddr, protocol: Protocol, timeout: Duration) -> ProbeResult {
    let payload = format!("palisade-probe {:016x}\n", rand::random::<u64>());
    match protocol {
        Protocol::Tcp => tcp(target, payload.as_bytes(), timeout),
        Protocol::Udp => udp(target, payload.as_bytes(), timeout),
    }
}

fn tcp(target: SocketAddr, payload: &[u8], timeout: Duration) -> ProbeResult {
    let run = || -> std::io::Result<ProbeResult> {
        let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
        socket.connect_timeout(&target.into(), timeout)?;
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(payload)?;
        let mut echo = vec![0u8; payload.len()];
        stream.read_exact(&mut echo)?;
        Ok(if echo == payload {
            ProbeResult::Ok
        } else {
            ProbeResult::Error("the echo differs from what was sent".into())
        })
    };
    run().unwrap_or_else(classify)
}

fn udp(target: SocketAddr, payload: &[u8], timeout: Duration) -> ProbeResult {
    let run = || -> std::io::Result<ProbeResult> {
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
            SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(target)?;
        let mut buf = vec![0u8; payload.len() + 1];
        let start = Instant::now();
        for attempt in 1..=UDP_ATTEMPTS {
            socket.send(payload)?;
            // Every attempt sends the same payload: an echo of any of them will do.
            let until = start + timeout * attempt / UDP_ATTEMPTS;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv(&mut buf) {
                    Ok(n) if buf[..n] == *payload => return Ok(ProbeResult::Ok),
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(ProbeResult::Timeout)
    };
    run().unwrap_or_else(classify)
}

fn classify(e: std::io::Error) -> ProbeResult {
    match e.kind() {
        ErrorKind::ConnectionRefused => ProbeResult::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ProbeResult::Timeout,
        ErrorKind::UnexpectedEof => ProbeResult::Error("closed before echoing".into()),
        _ => ProbeResult::Error(e.to_string()),
    }
}

/// One probe of a matrix: from a namespace to an address.
#[derive(Clone, Debug)]
pub struct Job {
    pub netns: String,
    pub target: SocketAddr,
    pub protocol: Protocol,
}

/// Run `jobs` on at most [`MAX_THREADS`] threads; results in the jobs' order. A worker
/// enters a job's namespace only when it differs from the one it is in.
pub fn run_all(jobs: &[Job], timeout: Duration) -> Vec<ProbeResult> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<ProbeResult>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let threads = jobs.len().clamp(1, MAX_THREADS);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut current: Option<&str> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { return };
                    let result = if current == Some(job.netns.as_str()) {
                        probe(job.target, job.protocol, timeout)
                    } else {
                        match netns::enter(&job.netns) {
                            Ok(()) => {
                                current = Some(&job.netns);
                                probe(job.target, job.protocol, timeout)
                            }
                            Err(e) => {
                                current = None;
                                ProbeResult::Error(format!("{e}: {}", source_text(&e)))
                            }
                        }
                    };
                    *results[i].lock().expect("no worker panics holding it") = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("no worker panics holding it")
                .expect("every job ran")
        })
        .collect()
}

fn source_text(e: &crate::Error) -> String {
    std::error::Error::source(e).map_or_else(String::new, |s| s.to_string())
}

/// What a probe can be aimed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Pod,
    External,
    Service,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `namespace/pod`, the external host's name, or `namespace/Service/name`.
    pub name: String,
    pub kind: TargetKind,
    pub address: IpAddr,
}

/// Every source pod against every target, for one family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    pub family: Family,
    pub sources: Vec<String>,
    pub targets: Vec<Target>,
    /// source -> target -> result. A pod is not probed against itself.
    pub results: BTreeMap<String, BTreeMap<String, ProbeResult>>,
}

impl Matrix {
    /// Counts of each result, in the order ok, refused, timeout, error.
    pub fn counts(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for r in self.results.values().flat_map(BTreeMap::values) {
            counts[match r {
                ProbeResult::Ok => 0,
                ProbeResult::Refused => 1,
                ProbeResult::Timeout => 2,
                ProbeResult::Error(_) => 3,
            }] += 1;
        }
        counts
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub port: u16,
    pub protocol: Protocol,
    pub matrices: Vec<Matrix>,
}

impl Report {
    /// Counts of each result over all matrices, in the order ok, refused, timeout, error.
    pub fn counts(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for m in &self.matrices {
            for (total, n) in counts.iter_mut().zip(m.counts()) {
                *total += n;
            }
        }
        counts
    }

    /// A table per family: rows are sources, columns numbered targets, then the legend.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for m in &self.matrices {
            render_matrix(&mut out, self.protocol, self.port, m);
        }
        out
    }
}

fn render_matrix(out: &mut String, protocol: Protocol, port: u16, m: &Matrix) {
    let summary: Vec<String> = ["ok", "refused", "timeout", "error"]
        .iter()
        .zip(m.counts())
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    let _ = writeln!(
        out,
        "{protocol}/{port} over IPv{}: {}",
        m.family.number(),
        if summary.is_empty() {
            "nothing to probe".to_owned()
        } else {
            summary.join(", ")
        }
    );
    if m.sources.is_empty() || m.targets.is_empty() {
        return;
    }
    let index = |i: usize| format!("[{}]", i + 1);
    let cell = (m.targets.len().to_string().len() + 2).max("refused".len());
    let label = m.sources.iter().map(String::len).max().unwrap_or(0);
    let _ = write!(out, "  {:label$}", "");
    for i in 0..m.targets.len() {
        let _ = write!(out, " {:>cell$}", index(i));
    }
    out.push('\n');
    for source in &m.sources {
        let _ = write!(out, "  {source:label$}");
        for target in &m.targets {
            let text = m
                .results
                .get(source)
                .and_then(|row| row.get(&target.name))
                .map_or("-", ProbeResult::short);
            let _ = write!(out, " {text:>cell$}");
        }
        out.push('\n');
    }
    for (i, t) in m.targets.iter().enumerate() {
        let _ = writeln!(out, "  {:>6} {} ({})", index(i), t.name, t.address);
    }
    let errors: Vec<String> = m
        .results
        .iter()
        .flat_map(|(s, row)| {
            row.iter().filter_map(move |(t, r)| match r {
                ProbeResult::Error(why) => Some(format!("  {s} -> {t}: {why}")),
                _ => None,
            })
        })
        .collect();
    for e in errors {
        let _ = writeln!(out, "{e}");
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn tcp_probes_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            s.write_all(&buf[..n]).unwrap();
        });
        assert_eq!(
            probe(addr, Protocol::Tcp, Duration::from_secs(2)),
            ProbeResult::Ok
        );
        echo.join().unwrap();
        // Nothing listens there any more.
        assert_eq!(
            probe(addr, Protocol::Tcp, Duration::from_secs(2)),
            ProbeResult::Refused
        );
    }

    #[test]
    fn udp_probes_on_loopback() {
        let server = UdpSocket::bind("[::1]:0").unwrap();
        let addr = server.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            server.send_to(&buf[..n], peer).unwrap();
        });
        assert_eq!(
            probe(addr, Protocol::Udp, Duration::from_secs(2)),
            ProbeResult::Ok
        );
        echo.join().unwrap();
        assert_eq!(
            probe(addr, Protocol::Udp, Duration::from_secs(2)),
            ProbeResult::Refused
        );
    }

    #[test]
    fn a_silent_peer_times_out() {
        // Bound but never answering: the datagrams are swallowed.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let result = probe(
            silent.local_addr().unwrap(),
            Protocol::Udp,
            Duration::from_millis(300),
        );
        assert_eq!(result, ProbeResult::Timeout);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn results_serialize_as_tagged_objects() {
        let json = serde_json::to_string(&[
            ProbeResult::Ok,
            ProbeResult::Error("no route to host".into()),
        ])
        .unwrap();
        assert_eq!(
            json,
            r#"[{"result":"ok"},{"result":"error","detail":"no route to host"}]"#
        );
    }

    #[test]
    fn renders_a_numbered_table() {
        let target = |name: &str, kind, ip: &str| Target {
            name: name.into(),
            kind,
            address: ip.parse().unwrap(),
        };
        let report = Report {
            port: 80,
            protocol: Protocol::Tcp,
            matrices: vec![Matrix {
                family: Family::V4,
                sources: vec!["s/a".into(), "s/b".into()],
                targets: vec![
                    target("s/a", TargetKind::Pod, "10.244.0.2"),
                    target("s/b", TargetKind::Pod, "10.244.0.3"),
                    target("ext", TargetKind::External, "203.0.113.1"),
                ],
                results: BTreeMap::from([
                    (
                        "s/a".into(),
                        BTreeMap::from([
                            ("s/b".into(), ProbeResult::Ok),
                            ("ext".into(), ProbeResult::Error("no route".into())),
                        ]),
                    ),
                    (
                        "s/b".into(),
                        BTreeMap::from([
                            ("s/a".into(), ProbeResult::Refused),
                            ("ext".into(), ProbeResult::Timeout),
                        ]),
                    ),
                ]),
            }],
        };
        assert_eq!(report.counts(), [1, 1, 1, 1]);
        let expected = "\
TCP/80 over IPv4: 1 ok, 1 refused, 1 timeout, 1 error
          [1]     [2]     [3]
  s/a       -      ok   error
  s/b refused       - timeout
     [1] s/a (10.244.0.2)
     [2] s/b (10.244.0.3)
     [3] ext (203.0.113.1)
  s/a -> ext: no route

";
        assert_eq!(report.render(), expected, "got:\n{}", report.render());
    }
}
