//! Real traffic from inside a pod's network namespace, with chosen source ports so a test
//! knows the exact 5-tuple the datapath must report.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use enforcer::netns;
use socket2::{Domain, Protocol, Socket, Type};

pub const TIMEOUT: Duration = Duration::from_millis(1500);

fn bound(ty: Type, protocol: Protocol, local_port: u16, peer: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(peer), ty, Some(protocol))?;
    socket.set_reuse_address(true)?;
    let local: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], local_port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, local_port).into()
    };
    socket.bind(&local.into())?;
    Ok(socket)
}

fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    netns::run_in(name, f).map_err(io::Error::other)?
}

/// Connect from `local_port` in `netns_name` to `peer`, send `payload`, read the echo back,
/// close. Returns the echo.
pub fn tcp_echo(
    netns_name: &str,
    local_port: u16,
    peer: SocketAddr,
    payload: &[u8],
) -> io::Result<Vec<u8>> {
    in_netns(netns_name, || {
        let socket = bound(Type::STREAM, Protocol::TCP, local_port, peer)?;
        socket.connect_timeout(&peer.into(), TIMEOUT)?;
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.write_all(payload)?;
        let mut echo = vec![0u8; payload.len()];
        stream.read_exact(&mut echo)?;
        stream.shutdown(std::net::Shutdown::Both)?;
        Ok(echo)
    })
}

/// Does a TCP connection from `netns_name` to `peer` open within [`TIMEOUT`]?
pub fn tcp_connects(netns_name: &str, peer: SocketAddr) -> bool {
    in_netns(netns_name, || {
        let socket = Socket::new(Domain::for_address(peer), Type::STREAM, Some(Protocol::TCP))?;
        socket.connect_timeout(&peer.into(), TIMEOUT)
    })
    .is_ok()
}

/// Send `count` datagrams of `size` bytes from `local_port` to a UDP echo server at `peer`;
/// returns how many echoes came back.
pub fn udp_echo(
    netns_name: &str,
    local_port: u16,
    peer: SocketAddr,
    count: usize,
    size: usize,
) -> io::Result<usize> {
    in_netns(netns_name, || {
        let socket: UdpSocket = bound(Type::DGRAM, Protocol::UDP, local_port, peer)?.into();
        socket.connect(peer)?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        let payload = vec![0x5a; size];
        let mut echoed = 0;
        let mut buf = vec![0u8; size + 1];
        for _ in 0..count {
            socket.send(&payload)?;
            match socket.recv(&mut buf) {
                Ok(n) if n == size => echoed += 1,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(echoed)
    })
}

/// A TCP connection kept open across steps of a test.
pub struct TcpSession {
    stream: TcpStream,
}

impl TcpSession {
    pub fn open(netns_name: &str, peer: SocketAddr) -> io::Result<Self> {
        in_netns(netns_name, || {
            let socket = Socket::new(Domain::for_address(peer), Type::STREAM, Some(Protocol::TCP))?;
            socket.connect_timeout(&peer.into(), TIMEOUT)?;
            let stream: TcpStream = socket.into();
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.set_write_timeout(Some(TIMEOUT))?;
            Ok(Self { stream })
        })
    }

    /// Send `payload` and read its echo (an error when the connection is cut).
    pub fn echo(&mut self, payload: &[u8]) -> io::Result<()> {
        self.stream.write_all(payload)?;
        let mut echo = vec![0u8; payload.len()];
        self.stream.read_exact(&mut echo)?;
        if echo == payload {
            Ok(())
        } else {
            Err(io::Error::other("echo differs"))
        }
    }
}
