//! The agent's side of `palisade-cni`: a unix-socket server that turns each plugin
//! connection into a [`CniRequest`] for the agent's loop, and writes the loop's answer back.
//!
//! A pod must not start before its endpoint is in the kernel, so the plugin's ADD waits for
//! this answer. The server never lets a plugin hang past its own deadline: a request the
//! agent does not answer in time, or drops, is answered with an error that says so, shortly
//! before the plugin would give up, so the runtime's error carries the agent's reason
//! rather than a bare timeout.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_plugin::config::{DEFAULT_TIMEOUT, MAX_TIMEOUT};
use cni_plugin::protocol::{Command, MAX_MESSAGE_BYTES, Programmed, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::error::{Error, Result};

/// How long a connection may take to send its request: the plugin writes it right after
/// connecting, so a silent connection is not a plugin.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most the server answers ahead of the plugin's deadline, so its answer is read
/// before the plugin gives up.
const ANSWER_MARGIN: Duration = Duration::from_millis(200);

/// Requests waiting for the agent's loop. Beyond this, connections wait (within their
/// deadline) instead of piling up memory.
const QUEUE_DEPTH: usize = 64;

/// The agent's answer to one request: what was programmed (nothing for DEL, STATUS, or a
/// pod the agent does not manage), or why not.
pub type Answer = std::result::Result<Option<Programmed>, String>;

/// One plugin invocation waiting for the agent.
#[derive(Debug)]
pub struct CniRequest {
    pub request: Request,
    deadline: Instant,
    responder: oneshot::Sender<Answer>,
}

impl CniRequest {
    /// Answers the plugin. Dropping the request instead answers it with an error.
    pub fn respond(self, answer: Answer) {
        // The plugin may be gone (timed out, killed): then there is nobody to tell.
        if self.responder.send(answer).is_err() {
            debug!(container = %self.request.container_id, "the plugin left before the answer");
        }
    }

    /// When the server stops waiting and answers with an error for the agent.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether nobody waits for the answer any more (the deadline passed): the agent can
    /// still program the endpoint, but need not hurry.
    pub fn is_abandoned(&self) -> bool {
        self.responder.is_closed()
    }
}

/// The listening socket and the stream of requests it produces.
#[derive(Debug)]
pub struct CniServer {
    path: PathBuf,
    /// The socket file's (device, inode), so that dropping the server removes only its own
    /// file, not one a newer agent (a DaemonSet surge) put in its place.
    identity: (u64, u64),
    requests: mpsc::Receiver<CniRequest>,
    accept: JoinHandle<()>,
}

impl CniServer {
    /// Listens on `path` (mode 0600: only root may ask the agent to program endpoints),
    /// replacing a stale socket left by an earlier agent. Must run inside a tokio runtime.
    ///
    /// The socket is bound under a temporary name, restricted, then renamed into place, so
    /// it is never reachable with the umask's permissions and a plugin never finds the path
    /// missing during a restart.
    pub fn bind(path: &Path) -> Result<CniServer> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a socket; not replacing it",
                    ),
                });
            }
            _ => {}
        }
        let name = path
            .file_name()
            .map_or_else(|| "cni.sock".into(), |n| n.to_string_lossy().into_owned());
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        // A leftover from a crashed agent that had the same pid.
        let _ = std::fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp).map_err(io(&temp))?;
        let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&temp))
            .and_then(|()| std::fs::rename(&temp, path).map_err(io(path)))
            .and_then(|()| std::fs::metadata(path).map_err(io(path)));
        let meta = match placed {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let (tx, requests) = mpsc::channel(QUEUE_DEPTH);
        let accept = tokio::spawn(accept_loop(listener, tx));
        info!(socket = %path.display(), "listening for palisade-cni");
        Ok(CniServer {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            requests,
            accept,
        })
    }

    /// The next request for the agent; `None` once the listener failed for good.
    pub async fn next(&mut self) -> Option<CniRequest> {
        self.requests.recv().await
    }

    /// A request already queued, without waiting.
    pub fn try_next(&mut self) -> Option<CniRequest> {
        self.requests.try_recv().ok()
    }

    /// Where the server listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.accept.abort();
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn accept_loop(listener: UnixListener, requests: mpsc::Sender<CniRequest>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, requests.clone()));
            }
            Err(e) if is_transient(&e) => {
                // Out of file descriptors or memory: wait instead of spinning; the plugins
                // waiting in the backlog have their own deadlines.
                warn!(error = %e, "accepting a palisade-cni connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                error!(error = %e, "the palisade-cni socket failed; pods will not start");
                return;
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
                | libc::EAGAIN
        )
    )
}

/// One connection: one request line in, one response line out.
async fn serve(stream: UnixStream, requests: mpsc::Sender<CniRequest>) {
    let (read, mut write) = stream.into_split();
    let response = match read_request(read).await {
        Ok(request) => {
            let span = info_span!(
                "cni",
                command = ?request.command,
                container = %request.container_id,
                pod = %request
                    .pod
                    .as_ref()
                    .map_or_else(String::new, |p| format!("{}/{}", p.namespace, p.name)),
            );
            answer(request, requests).instrument(span).await
        }
        Err(reason) => {
            warn!(reason, "refusing a palisade-cni request");
            Response::error(reason)
        }
    };
    if let Err(e) = write.write_all(&response.to_line()).await {
        debug!(error = %e, "the plugin left before the answer");
    }
}

async fn read_request(
    read: tokio::net::unix::OwnedReadHalf,
) -> std::result::Result<Request, String> {
    let limit = u64::try_from(MAX_MESSAGE_BYTES).unwrap_or(u64::MAX) + 1;
    let mut reader = BufReader::new(read.take(limit));
    let mut line = Vec::new();
    match tokio::time::timeout(REQUEST_READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(format!("no request within {REQUEST_READ_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.pop() != Some(b'\n') {
        return Err(if line.len() >= MAX_MESSAGE_BYTES {
            format!("request longer than {MAX_MESSAGE_BYTES} bytes")
        } else {
            "the request ended without a newline".to_string()
        });
    }
    Request::from_line(&line).map_err(|e| crate::error::chain(&e))
}

/// How long the server waits for the agent: the plugin's timeout (bounded like the
/// plugin's own configuration), less a margin so that the answer arrives in time.
fn wait_for(request: &Request) -> Duration {
    let timeout = match request.timeout() {
        t if t.is_zero() => DEFAULT_TIMEOUT,
        t => t.min(MAX_TIMEOUT),
    };
    timeout - ANSWER_MARGIN.min(timeout / 10)
}

/// Hands the request to the agent's loop and waits for its answer until the deadline.
async fn answer(request: Request, requests: mpsc::Sender<CniRequest>) -> Response {
    let command = request.command;
    let wait = wait_for(&request);
    let deadline = Instant::now() + wait;
    let (responder, answered) = oneshot::channel();
    let pending = CniRequest {
        request,
        deadline,
        responder,
    };
    let outcome = tokio::time::timeout_at(deadline, async {
        requests
            .send(pending)
            .await
            .map_err(|_| "the agent is shutting down".to_string())?;
        answered
            .await
            .map_err(|_| "the agent dropped the request without answering".to_string())
    })
    .await;
    match outcome {
        Ok(Ok(Ok(programmed))) => {
            if command == Command::Add {
                info!(?programmed, "endpoint ready");
            } else {
                debug!(?programmed, "answered");
            }
            Response::ok(programmed)
        }
        Ok(Ok(Err(reason)) | Err(reason)) => {
            warn!(reason, "refused");
            Response::error(reason)
        }
        Err(_) => {
            let reason = format!(
                "the agent did not finish {} within {wait:?}",
                command_name(command)
            );
            warn!(reason, "timed out");
            Response::error(reason)
        }
    }
}

fn command_name(command: Command) -> &'static str {
    match command {
        Command::Add => "programming the endpoint",
        Command::Del => "removing the endpoint",
        Command::Check => "checking the endpoint",
        Command::Status => "the status check",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_plugin::protocol::{EndpointMode, PodRef};
    use cni_plugin::{Error as PluginError, client};

    fn request(command: Command, container: &str, timeout: Duration) -> Request {
        let mut request = Request::new(command, timeout);
        request.container_id = container.to_string();
        request.netns = format!("/var/run/netns/{container}");
        request.ifname = "eth0".into();
        request.pod = Some(PodRef {
            namespace: "shop".into(),
            name: container.to_string(),
            uid: None,
        });
        request
    }

    /// The real (blocking) plugin client, off the runtime's worker threads.
    fn ask(
        socket: &Path,
        request: Request,
    ) -> tokio::task::JoinHandle<cni_plugin::Result<Option<Programmed>>> {
        let socket = socket.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let timeout = request.timeout();
            client::call(&socket, &request, timeout)
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_plugin_client_gets_what_the_agent_programmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/cni.sock");
        let mut server = CniServer::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let sent = request(Command::Add, "web-0", Duration::from_secs(5));
        let client = ask(server.path(), sent.clone());
        let pending = server.next().await.unwrap();
        assert_eq!(pending.request, sent);
        assert!(!pending.is_abandoned());
        assert!(pending.deadline() > Instant::now());
        let programmed = Programmed {
            ifindex: 9,
            mode: EndpointMode::Learn,
        };
        pending.respond(Ok(Some(programmed)));
        assert_eq!(client.await.unwrap().unwrap(), Some(programmed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_each_get_their_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = CniServer::bind(&dir.path().join("cni.sock")).unwrap();
        let clients: Vec<_> = (0..12u32)
            .map(|i| {
                let sent = request(Command::Add, &format!("pod-{i}"), Duration::from_secs(10));
                (i, ask(server.path(), sent))
            })
            .collect();
        let mut pending = Vec::new();
        while pending.len() < clients.len() {
            pending.push(server.next().await.unwrap());
        }
        // Answer in another order than they arrived: answers follow their connection.
        pending.reverse();
        for p in pending {
            let index: u32 = p.request.container_id["pod-".len()..].parse().unwrap();
            p.respond(Ok(Some(Programmed {
                ifindex: 100 + index,
                mode: EndpointMode::Enforce,
            })));
        }
        for (i, client) in clients {
            let programmed = client.await.unwrap().unwrap().unwrap();
            assert_eq!(programmed.ifindex, 100 + i);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_request_is_answered_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = CniServer::bind(&dir.path().join("cni.sock")).unwrap();
        let client = ask(
            server.path(),
            request(Command::Check, "web-1", Duration::from_secs(5)),
        );
        drop(server.next().await.unwrap());
        let err = client.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, PluginError::Refused { reason } if reason.contains("dropped")),
            "{err:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_request_gets_the_agents_reason_before_the_plugin_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = CniServer::bind(&dir.path().join("cni.sock")).unwrap();
        let started = Instant::now();
        let client = ask(
            server.path(),
            request(Command::Add, "web-2", Duration::from_secs(2)),
        );
        let held = server.next().await.unwrap();
        let err = client.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, PluginError::Refused { reason }
                if reason.contains("did not finish programming the endpoint")),
            "{err:?}"
        );
        let took = started.elapsed();
        // The server answers 200 ms before the plugin's 2 s deadline.
        assert!(took >= Duration::from_millis(1800), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(held.is_abandoned());
        // Answering late is harmless.
        held.respond(Err("late".into()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_requests_get_an_error_answer() {
        let dir = tempfile::tempdir().unwrap();
        let server = CniServer::bind(&dir.path().join("cni.sock")).unwrap();
        for (line, expected) in [
            (&b"garbage\n"[..], "decoding"),
            (&br#"{"version":7,"command":"add"}"#[..], "version 7"),
        ] {
            let mut stream = UnixStream::connect(server.path()).await.unwrap();
            stream.write_all(line).await.unwrap();
            if !line.ends_with(b"\n") {
                stream.write_all(b"\n").await.unwrap();
            }
            let mut answer = String::new();
            BufReader::new(stream).read_line(&mut answer).await.unwrap();
            let response = Response::from_line(answer.trim_end().as_bytes()).unwrap();
            let reason = response.into_result().unwrap_err();
            assert!(reason.contains(expected), "{reason}");
        }
        // A request cut short (no newline) is not handed to the agent either.
        let mut stream = UnixStream::connect(server.path()).await.unwrap();
        stream.write_all(b"{\"version\":1").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await.unwrap();
        assert!(answer.contains("without a newline"), "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bind_replaces_a_stale_socket_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a stale socket file stays behind");
        let server = CniServer::bind(&path).unwrap();
        let client = ask(
            &path,
            request(Command::Status, "", Duration::from_millis(500)),
        );
        // Nobody calls next(): the status check times out with the server's reason.
        let err = client.await.unwrap().unwrap_err();
        assert!(matches!(err, PluginError::Refused { .. }), "{err:?}");
        drop(server);
        assert!(!path.exists(), "the server removes its socket");

        std::fs::write(&path, "not a socket").unwrap();
        let err = CniServer::bind(&path).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn the_wait_ends_before_the_plugins_deadline() {
        let wait = |ms| wait_for(&Request::new(Command::Add, Duration::from_millis(ms)));
        assert_eq!(wait(10_000), Duration::from_millis(9_800));
        assert_eq!(wait(500), Duration::from_millis(450));
        assert_eq!(wait(0), DEFAULT_TIMEOUT - ANSWER_MARGIN);
        assert_eq!(wait(3_600_000), MAX_TIMEOUT - ANSWER_MARGIN);
    }
}
