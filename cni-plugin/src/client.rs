//! The plugin's side of the conversation: a blocking client whose whole exchange (connect,
//! write, read) fits in one deadline.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::protocol::{MAX_MESSAGE_BYTES, Programmed, Request, Response};

/// Asks the agent listening on `socket` and waits at most `timeout` for the whole exchange.
///
/// Returns what the agent programmed (`None` when the command programs nothing, or the agent
/// had nothing to program), [`Error::Refused`] with the agent's reason, or why the agent
/// could not be asked.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Option<Programmed>> {
    let deadline = Instant::now() + timeout;
    let timed_out = |stage| Error::Timeout {
        socket: socket.to_path_buf(),
        timeout,
        stage,
    };
    let io = |source: std::io::Error, stage| {
        if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            timed_out(stage)
        } else {
            Error::Io {
                socket: socket.to_path_buf(),
                source,
            }
        }
    };

    let mut stream = connect(socket, timeout)?;
    let left = remaining(deadline).ok_or_else(|| timed_out("sending the request"))?;
    stream
        .set_write_timeout(Some(left))
        .map_err(|e| io(e, "sending the request"))?;
    stream
        .write_all(&request.to_line())
        .map_err(|e| io(e, "sending the request"))?;

    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    while !line.contains(&b'\n') {
        // Each read gets what is left of the deadline, so a peer trickling bytes cannot
        // stretch the wait.
        let left = remaining(deadline).ok_or_else(|| timed_out("waiting for the answer"))?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| io(e, "waiting for the answer"))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e, "waiting for the answer")),
        };
        if n == 0 {
            return Err(Error::Closed {
                socket: socket.to_path_buf(),
            });
        }
        line.extend_from_slice(&chunk[..n]);
        if line.len() > MAX_MESSAGE_BYTES {
            return Err(Error::TooLong {
                limit: MAX_MESSAGE_BYTES,
            });
        }
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    Response::from_line(&line[..end])?
        .into_result()
        .map_err(|reason| Error::Refused { reason })
}

/// What is left until `deadline`, or `None` once it passed (a zero timeout would mean
/// "block forever" to the socket calls).
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Connects within `timeout`. std has no connect timeout for unix sockets, and a connect to
/// an agent whose accept backlog is full blocks; the connect runs on its own thread, which
/// is left behind if it hangs (the plugin process exits right after).
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream> {
    let (tx, rx) = mpsc::channel();
    let path: PathBuf = socket.to_path_buf();
    std::thread::Builder::new()
        .name("palisade-cni-connect".into())
        .spawn(move || {
            // The receiver is gone when the caller stopped waiting; nothing to tell then.
            let _ = tx.send(UnixStream::connect(path));
        })
        .map_err(|source| Error::Io {
            socket: socket.to_path_buf(),
            source,
        })?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(Error::Connect {
            socket: socket.to_path_buf(),
            source,
        }),
        Err(_) => Err(Error::Timeout {
            socket: socket.to_path_buf(),
            timeout,
            stage: "connecting",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, EndpointMode};
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    /// A one-connection fake agent that answers with `answer` (raw bytes) after reading a line.
    fn fake_agent(
        answer: Vec<u8>,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Request>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            reader.get_mut().write_all(&answer).unwrap();
            Request::from_line(line.trim_end().as_bytes()).unwrap()
        });
        (dir, path, handle)
    }

    #[test]
    fn returns_what_the_agent_programmed() {
        let programmed = Programmed {
            ifindex: 12,
            mode: EndpointMode::Monitor,
        };
        let (_dir, path, agent) = fake_agent(Response::ok(Some(programmed)).to_line());
        let mut request = Request::new(Command::Add, Duration::from_secs(5));
        request.container_id = "c1".into();
        let got = call(&path, &request, Duration::from_secs(5)).unwrap();
        assert_eq!(got, Some(programmed));
        assert_eq!(agent.join().unwrap(), request);
    }

    #[test]
    fn the_agents_reason_is_kept() {
        let (_dir, path, _agent) = fake_agent(Response::error("no interface veth9").to_line());
        let request = Request::new(Command::Check, Duration::from_secs(5));
        let err = call(&path, &request, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&err, Error::Refused { reason } if reason == "no interface veth9"),
            "{err:?}"
        );
    }

    #[test]
    fn a_closed_connection_without_answer_is_named() {
        let (_dir, path, _agent) = fake_agent(Vec::new());
        let request = Request::new(Command::Del, Duration::from_secs(5));
        let err = call(&path, &request, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::Closed { .. }), "{err:?}");
    }

    #[test]
    fn a_silent_agent_times_out_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        // Listening but never accepting: the connect succeeds (backlog), the answer never comes.
        let _listener = UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let request = Request::new(Command::Add, Duration::from_millis(300));
        let err = call(&path, &request, Duration::from_millis(300)).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    stage: "waiting for the answer",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn a_missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let request = Request::new(Command::Status, Duration::from_secs(1));
        let err = call(&path, &request, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(&err, Error::Connect { socket, .. } if *socket == path),
            "{err:?}"
        );
        assert!(err.is_unavailability());
    }
}
