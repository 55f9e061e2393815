//! The agent's HTTP port: `/metrics` (OpenMetrics text), `/healthz` (liveness) and
//! `/readyz` (readiness), for Prometheus and the kubelet's probes.
//!
//! Liveness asks only "is the main loop still turning?": the agent [`Health::beat`]s on
//! each turn, and a loop that stopped turning (a deadlock, a blocking call that never
//! returns) is what a restart fixes. Readiness asks "is this node enforced as configured?":
//! the datapath installed, the cluster caches synced, the first policy applied. A restart
//! does not fix those, so they never fail liveness.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// The content type of the OpenMetrics text format `/metrics` serves.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long the main loop may go without a [`Health::beat`] before `/healthz` fails.
pub const DEFAULT_LIVENESS_BOUND: Duration = Duration::from_secs(30);

/// Errors of the HTTP server, with the address concerned.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} for metrics and health checks")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving metrics and health checks on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A condition `/readyz` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The datapath is installed and the starting endpoints attached.
    Datapath,
    /// The Kubernetes caches (pods, namespaces, policies, modes) have synced once.
    ClusterSynced,
    /// The first policy has been written to the maps.
    PolicyApplied,
}

impl Check {
    pub const ALL: [Self; 3] = [Self::Datapath, Self::ClusterSynced, Self::PolicyApplied];

    /// How `/readyz` names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Datapath => "datapath",
            Self::ClusterSynced => "cluster-synced",
            Self::PolicyApplied => "policy-applied",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// A clock, injectable so tests can age the heartbeat without sleeping.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The agent's liveness heartbeat and readiness checks: cheap to clone, lock-free to update.
#[derive(Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
}

struct HealthInner {
    clock: Clock,
    started: Instant,
    /// The last beat, in ms since `started`; `u64::MAX` before the first.
    last_beat_ms: AtomicU64,
    liveness_bound: Duration,
    /// Which checks readiness waits for (in [`Check::ALL`] order).
    required: [bool; Check::ALL.len()],
    passed: [AtomicBool; Check::ALL.len()],
}

const NEVER: u64 = u64::MAX;

impl Health {
    /// Readiness waits for `required` (a standalone agent has no cluster to sync, say);
    /// liveness fails once the last beat is older than `liveness_bound`.
    pub fn new(liveness_bound: Duration, required: &[Check]) -> Self {
        Self::with_clock(liveness_bound, required, Arc::new(Instant::now))
    }

    pub fn with_clock(liveness_bound: Duration, required: &[Check], clock: Clock) -> Self {
        let started = clock();
        Self {
            inner: Arc::new(HealthInner {
                clock,
                started,
                last_beat_ms: AtomicU64::new(NEVER),
                liveness_bound,
                required: Check::ALL.map(|c| required.contains(&c)),
                passed: Default::default(),
            }),
        }
    }

    /// The main loop turned.
    pub fn beat(&self) {
        let ms = self.elapsed().as_millis();
        self.inner
            .last_beat_ms
            .store(u64::try_from(ms).unwrap_or(NEVER - 1), Ordering::Relaxed);
    }

    /// Record whether `check` holds now (readiness can be lost again, e.g. when a watch
    /// falls out of sync).
    pub fn set(&self, check: Check, ok: bool) {
        let was = self.inner.passed[check.index()].swap(ok, Ordering::Relaxed);
        if was != ok {
            info!(check = check.name(), ok, "readiness check changed");
        }
    }

    /// `Ok` while alive, else why not.
    pub fn liveness(&self) -> Result<(), String> {
        let now = self.elapsed();
        let bound = self.inner.liveness_bound;
        let last = self.inner.last_beat_ms.load(Ordering::Relaxed);
        // Before the first beat the agent is starting; give it the same bound from start.
        let (since, what) = if last == NEVER {
            (now, "the main loop has not run since the agent started")
        } else {
            (
                now.saturating_sub(Duration::from_millis(last)),
                "the main loop last ran",
            )
        };
        if since <= bound {
            Ok(())
        } else {
            Err(format!(
                "{what} {} ago (bound {})",
                human(since),
                human(bound)
            ))
        }
    }

    /// The required checks that do not hold yet (empty = ready).
    pub fn not_ready(&self) -> Vec<Check> {
        Check::ALL
            .into_iter()
            .filter(|c| {
                self.inner.required[c.index()]
                    && !self.inner.passed[c.index()].load(Ordering::Relaxed)
            })
            .collect()
    }

    fn elapsed(&self) -> Duration {
        (self.inner.clock)().saturating_duration_since(self.inner.started)
    }
}

fn human(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Called before each `/metrics` encoding (on a blocking thread), to refresh values that
/// are read at scrape time (the datapath's per-CPU counters, say); it captures what it
/// updates.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Metrics as `/metrics` serves them: the agent's ([`Metrics`]) or the learner's.
pub trait Exposition: Send + Sync {
    /// Everything, as OpenMetrics text (ends with `# EOF`).
    fn encode(&self) -> String;
}

impl Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub health: Health,
    pub metrics: Arc<dyn Exposition>,
    pub refresh: Option<Refresh>,
}

impl HttpState {
    pub fn new(health: Health, metrics: Arc<dyn Exposition>) -> Self {
        Self {
            health,
            metrics,
            refresh: None,
        }
    }

    pub fn with_refresh(mut self, refresh: Refresh) -> Self {
        self.refresh = Some(refresh);
        self
    }
}

/// The routes, for embedding or testing without a socket.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// A bound listener: [`Server::local_addr`] tells which port `:0` got.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    pub async fn bind(addr: SocketAddr) -> Result<Self, HttpError> {
        let bind_error = |source| HttpError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` completes (requests in flight are finished).
    pub async fn run(
        self,
        state: HttpState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        let addr = self.addr;
        info!(%addr, "serving /metrics, /healthz and /readyz");
        axum::serve(self.listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| HttpError::Serve { addr, source })
    }
}

/// Bind `addr` and serve on a task of its own for as long as the runtime runs; the bound
/// address (`:0` gets a port).
pub async fn spawn(addr: SocketAddr, state: HttpState) -> Result<SocketAddr, HttpError> {
    let server = Server::bind(addr).await?;
    let bound = server.local_addr();
    tokio::spawn(async move {
        if let Err(e) = server.run(state, std::future::pending()).await {
            warn!(error = %e, "the metrics and health server stopped");
        }
    });
    Ok(bound)
}

/// Bind `addr` and serve until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    Server::bind(addr).await?.run(state, shutdown).await
}

async fn metrics(State(state): State<HttpState>) -> Response {
    if let Some(refresh) = state.refresh.clone() {
        // Reading the pinned maps is a syscall per entry: off the runtime's threads.
        if let Err(e) = tokio::task::spawn_blocking(move || refresh()).await {
            warn!(error = %e, "refreshing the metrics");
        }
    }
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(state): State<HttpState>) -> Response {
    match state.health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => {
            warn!(%reason, "liveness check failing");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
        }
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let missing = state.health.not_ready();
    if missing.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut text = String::from("not ready:");
    for check in &missing {
        let _ = write!(text, " {}", check.name());
    }
    text.push('\n');
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        sync::oneshot,
    };

    use super::*;

    /// A clock tests move by hand.
    fn manual_clock() -> (Clock, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    /// One GET over a fresh connection: (status, headers, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    async fn start(
        state: HttpState,
    ) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(state, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (addr, stop, task)
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_and_refreshed_per_scrape() {
        let metrics = Arc::new(Metrics::new("9.9.9"));
        let scrapes = Arc::new(AtomicU64::new(0));
        let counted = scrapes.clone();
        let refreshed = Arc::clone(&metrics);
        let state = HttpState::new(Health::new(DEFAULT_LIVENESS_BOUND, &[]), metrics).with_refresh(
            Arc::new(move || {
                let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
                refreshed.set_k8s_events_suppressed(n);
            }),
        );
        let (addr, stop, task) = start(state).await;

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{head}"
        );
        assert!(
            body.contains(r#"palisade_build_info{version="9.9.9"} 1"#),
            "{body}"
        );
        assert!(body.contains("palisade_k8s_events_suppressed_total 1\n"));
        assert!(body.ends_with("# EOF\n"));
        let (_, _, body) = get(addr, "/metrics").await;
        assert!(body.contains("palisade_k8s_events_suppressed_total 2\n"));

        let (status, _, _) = get(addr, "/nothing").await;
        assert_eq!(status, 404);
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn healthz_fails_once_the_heartbeat_is_stale() {
        let (clock, now) = manual_clock();
        let health = Health::with_clock(Duration::from_secs(30), &[], clock);
        let state = HttpState::new(health.clone(), Arc::new(Metrics::new("0")));
        let (addr, stop, task) = start(state).await;

        // Starting: alive within the bound even before the first beat.
        assert_eq!(get(addr, "/healthz").await.0, 200);
        *now.lock().unwrap() += Duration::from_secs(31);
        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!(status, 503);
        assert!(
            body.contains("has not run since the agent started"),
            "{body}"
        );

        health.beat();
        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        *now.lock().unwrap() += Duration::from_secs(45);
        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "the main loop last ran 45.0s ago (bound 30.0s)\n");

        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn readyz_lists_what_is_missing_until_everything_holds() {
        let health = Health::new(DEFAULT_LIVENESS_BOUND, &Check::ALL);
        let state = HttpState::new(health.clone(), Arc::new(Metrics::new("0")));
        let (addr, stop, task) = start(state).await;

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "not ready: datapath cluster-synced policy-applied\n");

        health.set(Check::Datapath, true);
        health.set(Check::PolicyApplied, true);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: cluster-synced\n")
        );

        health.set(Check::ClusterSynced, true);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));

        // Readiness can be lost again.
        health.set(Check::ClusterSynced, false);
        assert_eq!(get(addr, "/readyz").await.0, 503);

        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn checks_not_required_do_not_hold_readiness_back() {
        let health = Health::new(DEFAULT_LIVENESS_BOUND, &[Check::Datapath]);
        assert_eq!(health.not_ready(), [Check::Datapath]);
        health.set(Check::Datapath, true);
        assert!(health.not_ready().is_empty());
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_with_its_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let error = serve(
            addr,
            HttpState::new(
                Health::new(DEFAULT_LIVENESS_BOUND, &[]),
                Arc::new(Metrics::new("0")),
            ),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, HttpError::Bind { addr: a, .. } if a == addr));
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
