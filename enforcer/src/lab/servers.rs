//! The lab's server process (`palisade lab serve`): TCP echo and UDP echo on every port of
//! every pod and external host, over IPv4 and IPv6; on UDP 53 of the cluster's resolver
//! pods (`k8s-app: kube-dns`), DNS answers from the lab's [`Zone`] instead.
//!
//! One process serves the whole lab. It binds every socket from a thread inside the owning
//! namespace (a socket belongs to the namespace it was created in, for good), then serves
//! them all from one small tokio runtime. Resources are bounded: a fixed number of
//! connections per listener (further clients wait in the backlog), a fixed buffer per
//! connection and per UDP socket, and idle connections are closed.
//!
//! The lab restarts this process whenever pods change: the sockets it holds would otherwise
//! keep a deleted pod's namespace alive. Restarted, it reads the state again, so new pods
//! serve their ports, new resolver pods included (the zone's external hosts and Services do
//! not change once the lab is up).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use super::{
    error::{Error, Result},
    process,
    resolver::{self, Zone},
    state::{Layout, State},
    topology::{Port, Protocol},
};
use crate::netns;

/// Concurrent echo connections per listener.
const MAX_CONNECTIONS: usize = 64;
/// An echo connection with no data for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const TCP_BUFFER: usize = 4096;
/// The largest UDP payload.
const UDP_BUFFER: usize = 65_536;

/// A bound socket, where it lives (for logs), and what it serves.
struct Bound {
    netns: String,
    port: u16,
    protocol: Protocol,
    socket: Listener,
    /// DNS answers from this zone instead of echoes (UDP only).
    dns: Option<Arc<Zone>>,
}

enum Listener {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// Serve the lab `name` until killed. Writes the lab's server ready marker (its PID) once
/// every socket is bound.
pub fn serve(name: &str) -> Result<()> {
    let layout = Layout::new(name)?;
    let state = State::load(&layout)?.ok_or_else(|| Error::NotUp {
        name: name.to_owned(),
        state_dir: layout.dir.clone(),
    })?;
    let zone = Arc::new(Zone::new(&state.externals, &state.services));
    let hosts = state
        .pods
        .iter()
        .map(|p| (&p.netns, &p.ports, resolver::is_resolver(p)))
        .chain(state.externals.iter().map(|e| (&e.netns, &e.ports, false)));
    let mut bound = Vec::new();
    let mut resolvers = 0;
    for (ns, ports, is_resolver) in hosts {
        if ports.is_empty() {
            continue;
        }
        let dns = is_resolver.then_some(&zone);
        let sockets =
            netns::run_in(ns, || bind_all(ns, ports, dns)).map_err(|source| Error::Netns {
                netns: ns.clone(),
                source,
            })??;
        resolvers += sockets.iter().filter(|b| b.dns.is_some()).count();
        bound.extend(sockets);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| Error::Spawn {
            program: "the server's async runtime".into(),
            source,
        })?;
    runtime.block_on(async {
        let count = bound.len();
        for b in bound {
            spawn_server(b)?;
        }
        process::write_ready(&layout.server_ready())?;
        info!(
            lab = name,
            sockets = count,
            dns_sockets = resolvers,
            names = zone.names().count(),
            "serving"
        );
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Every port on the unspecified address of both families (IPv6 sockets are IPv6-only, so
/// the two never collide). With a zone, UDP 53 answers DNS.
fn bind_all(netns: &str, ports: &[Port], zone: Option<&Arc<Zone>>) -> Result<Vec<Bound>> {
    let mut bound = Vec::with_capacity(ports.len() * 2);
    for port in ports {
        for ip in [Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()] {
            let addr = SocketAddr::new(ip, port.port.get());
            let socket = bind(addr, port.protocol).map_err(|source| Error::Bind {
                netns: netns.to_owned(),
                protocol: port.protocol.as_str(),
                port: port.port.get(),
                source,
            })?;
            let dns = zone
                .filter(|_| port.protocol == Protocol::Udp && port.port.get() == resolver::DNS_PORT)
                .cloned();
            bound.push(Bound {
                netns: netns.to_owned(),
                port: port.port.get(),
                protocol: port.protocol,
                socket,
                dns,
            });
        }
    }
    Ok(bound)
}

fn bind(addr: SocketAddr, protocol: Protocol) -> std::io::Result<Listener> {
    let kind = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let socket = Socket::new(Domain::for_address(addr), kind, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A restarted server rebinds ports whose old connections may sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(match protocol {
        Protocol::Tcp => {
            socket.listen(128)?;
            Listener::Tcp(socket.into())
        }
        Protocol::Udp => Listener::Udp(socket.into()),
    })
}

fn spawn_server(bound: Bound) -> Result<()> {
    let Bound {
        netns,
        port,
        protocol,
        socket,
        dns,
    } = bound;
    let converted = match socket {
        Listener::Tcp(l) => tokio::net::TcpListener::from_std(l).map(|l| {
            tokio::spawn(tcp_echo(l, netns.clone(), port));
        }),
        Listener::Udp(s) => tokio::net::UdpSocket::from_std(s).map(|s| match dns {
            Some(zone) => {
                tokio::spawn(udp_dns(s, zone, netns.clone(), port));
            }
            None => {
                tokio::spawn(udp_echo(s, netns.clone(), port));
            }
        }),
    };
    converted.map_err(|source| Error::Bind {
        netns,
        protocol: protocol.as_str(),
        port,
        source,
    })
}

async fn tcp_echo(listener: tokio::net::TcpListener, netns: String, port: u16) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Waiting for a free slot before accepting leaves extra clients in the backlog.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(netns, port, %peer, "accepted");
                tokio::spawn(async move {
                    echo_connection(stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(netns, port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn echo_connection(mut stream: tokio::net::TcpStream) {
    let mut buf = [0u8; TCP_BUFFER];
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => n,
        };
        match tokio::time::timeout(IDLE_TIMEOUT, stream.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

async fn udp_echo(socket: tokio::net::UdpSocket, netns: String, port: u16) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                if let Err(e) = socket.send_to(&buf[..n], peer).await {
                    debug!(netns, port, %peer, error = %e, "echo failed");
                }
            }
            Err(e) => {
                debug!(netns, port, error = %e, "receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Answer DNS queries from `zone`; anything else gets nothing (but the lab's echo probes,
/// see [`Zone::respond`]).
async fn udp_dns(socket: tokio::net::UdpSocket, zone: Arc<Zone>, netns: String, port: u16) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let Some(reply) = zone.respond(&buf[..n]) else {
                    continue;
                };
                if let Err(e) = socket.send_to(&reply, peer).await {
                    debug!(netns, port, %peer, error = %e, "answer failed");
                }
            }
            Err(e) => {
                debug!(netns, port, error = %e, "receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// The echo servers, on loopback in the test's own namespace (no root needed).
    #[test]
    fn echoes_tcp_and_udp_on_both_families() {
        // Worker threads drive the servers while this thread plays the clients.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tcp4 = bind("127.0.0.1:0".parse().unwrap(), Protocol::Tcp).unwrap();
        let udp6 = bind("[::1]:0".parse().unwrap(), Protocol::Udp).unwrap();
        let (Listener::Tcp(t), Listener::Udp(u)) = (tcp4, udp6) else {
            unreachable!()
        };
        let tcp_addr = t.local_addr().unwrap();
        let udp_addr = u.local_addr().unwrap();
        runtime.block_on(async {
            for socket in [Listener::Tcp(t), Listener::Udp(u)] {
                let protocol = match socket {
                    Listener::Tcp(_) => Protocol::Tcp,
                    Listener::Udp(_) => Protocol::Udp,
                };
                let bound = Bound {
                    netns: "test".into(),
                    port: 0,
                    protocol,
                    socket,
                    dns: None,
                };
                spawn_server(bound).unwrap();
            }
        });

        let mut stream = std::net::TcpStream::connect(tcp_addr).unwrap();
        stream.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        let client = std::net::UdpSocket::bind("[::1]:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.send_to(b"ping", udp_addr).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], udp_addr));
        runtime.shutdown_background();
    }

    /// A UDP socket with a zone answers DNS (and the lab's echo probes), on loopback.
    #[test]
    fn a_resolver_socket_answers_dns() {
        use super::super::{
            probe::{self, ProbeResult},
            resolver::{DnsOutcome, RecordType, query},
            state::ExternalHost,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let Listener::Udp(u) = bind("127.0.0.1:0".parse().unwrap(), Protocol::Udp).unwrap() else {
            unreachable!()
        };
        let addr = u.local_addr().unwrap();
        let external = ExternalHost {
            name: "db.example.net".into(),
            addresses: vec!["198.51.100.7".parse().unwrap()],
            ports: Vec::new(),
            slot: 1,
            netns: "x".into(),
            host_interface: "x".into(),
        };
        let zone = Arc::new(Zone::new(&[external], &[]));
        runtime.block_on(async {
            let bound = Bound {
                netns: "test".into(),
                port: 0,
                protocol: Protocol::Udp,
                socket: Listener::Udp(u),
                dns: Some(zone),
            };
            spawn_server(bound).unwrap();
        });
        let timeout = Duration::from_secs(2);
        assert_eq!(
            query(addr, "db.example.net", RecordType::A, timeout),
            DnsOutcome::Answered(vec!["198.51.100.7".parse().unwrap()])
        );
        assert_eq!(
            query(addr, "db.example.org", RecordType::A, timeout),
            DnsOutcome::NxDomain
        );
        assert_eq!(probe::probe(addr, Protocol::Udp, timeout), ProbeResult::Ok);
        // Garbage is not answered.
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        client.send_to(b"garbage", addr).unwrap();
        assert!(client.recv(&mut [0u8; 64]).is_err());
        runtime.shutdown_background();
    }
}
