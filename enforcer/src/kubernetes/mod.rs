//! The agent on a Kubernetes node (`palisade agent --kubernetes`): the same agent loop as
//! standalone ([`crate::agent`]), steered by the API server instead of files.
//!
//! - identities and policies: the API server's pods, namespaces, nodes, Services and
//!   NetworkPolicies, mirrored by `k8s::watch` and compiled for this node's pods;
//! - endpoints: this node's pods found on the node's links ([`crate::endpoints`]), attached
//!   and detached as links come and go, and programmed on the CNI plugin's ADD before the
//!   pod's first packet ([`crate::cni`]);
//! - modes: per pod from `palisade.io/mode` on the pod or its namespace, else the default;
//! - flow records: to the metrics, to the learner over gRPC, as Events on denied
//!   connections, and optionally to a file.
//!
//! # Layout
//! - [`node`]: the mirror and the CNI's reports -> pods to protect, policy inputs, names
//!   (pure).
//! - [`control`]: the [`crate::agent::Control`] acting on them inside the agent's loop.
//! - [`sink`]: where flow records go.

pub mod control;
pub mod node;
pub mod sink;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use k8s::{modes::ModeDefaults, watch::ClusterWatch};
use model::{Mode, netpol::evaluate::DefaultAction};

use crate::{
    agent::{self, AgentConfig},
    cni::CniServer,
    datapath::{self, Pins},
    error::{Error, Result},
    http::{self, Check, Health, HttpState},
    metrics::Metrics,
    policy_source::{CompileConfig, SourceConfig},
};

/// How the Kubernetes agent runs (every field has a `PALISADE_*` variable; see `main.rs`).
#[derive(Clone, Debug)]
pub struct KubeAgentConfig {
    pub pins: Pins,
    /// This node's name (the downward API's `spec.nodeName`).
    pub node: String,
    /// The mode of pods whose pod and namespace say none.
    pub default_mode: Mode,
    /// For pods no policy selects, unless their namespace's `palisade.io/default` says.
    pub default_action: DefaultAction,
    /// Where identities are kept across restarts (None: in memory only).
    pub identities: Option<PathBuf>,
    /// Where the CNI plugin asks (None: no CNI chaining; endpoints are found on the node's
    /// links only, so a pod's first packets may pass before its endpoint is programmed).
    pub cni_socket: Option<PathBuf>,
    /// Metrics, liveness and readiness.
    pub http: Option<SocketAddr>,
    /// The learner's gRPC address.
    pub learner: Option<String>,
    /// Kubernetes Events on denied connections.
    pub deny_events: bool,
    /// Also write flow records to this file.
    pub output: Option<(PathBuf, model::wire::Format)>,
    pub stats_interval: Option<Duration>,
    pub sizing: datapath::Sizing,
}

/// Run until `shutdown` completes.
pub async fn run(
    config: KubeAgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
    let health = Health::new(Duration::from_secs(30), &Check::ALL);
    if let Some(addr) = config.http {
        let state = HttpState::new(health.clone(), Arc::clone(&metrics) as _).with_refresh(
            sink::datapath_refresh(config.pins.clone(), Arc::clone(&metrics)),
        );
        http::spawn(addr, state)
            .await
            .map_err(|e| Error::Http(Box::new(e)))?;
    }
    let client = kube::Client::try_default()
        .await
        .map_err(|e| Error::Kubernetes(Box::new(k8s::error::Error::Client(e))))?;
    let watch = ClusterWatch::start(client.clone(), &config.node);
    let cni = match &config.cni_socket {
        Some(path) => Some(CniServer::bind(path)?),
        None => None,
    };
    let sink = sink::KubeSink::open(&config, client, Arc::clone(&metrics))?;
    let defaults = ModeDefaults {
        mode: config.default_mode,
    };
    let control = control::KubeControl::new(control::Parts {
        watch,
        view: node::NodeView::new(defaults),
        cni,
        metrics,
        health: health.clone(),
    })
    .await?;
    let agent = AgentConfig {
        pins: config.pins.clone(),
        endpoints: Vec::new(),
        names_file: None,
        ready_file: None,
        stats_interval: config.stats_interval,
        policy: Some(SourceConfig::Pushed(CompileConfig {
            node: config.node.clone(),
            default: config.default_action,
            identities: config.identities.clone(),
        })),
        sizing: config.sizing,
    };
    agent::run_with(agent, sink, control, shutdown).await
}
