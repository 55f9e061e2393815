//! The learner as a service (`palisade learn serve`, a Deployment in Kubernetes): agents
//! stream aggregated flow records to it over gRPC (`flow-stream`); it counts them into its
//! baseline store, and on a period proposes one NetworkPolicy per workload, written as the
//! files people review and, in a cluster, as `WorkloadBaseline` custom resources.
//!
//! An agent's batch is acked only once it is committed to the store together with its
//! sequence number, in one transaction: a batch sent again after a lost ack, even across a
//! learner restart, is never counted twice.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use flow_stream::{
    SinkError,
    server::{Batch, Collector, CollectorConfig, FlowSink},
};
use k8s::{
    apply,
    crd::{self, ResourceOptions},
    modes::ModeDefaults,
    watch::ClusterWatch,
};
use learner::{
    baseline,
    observation::Observation,
    propose::{self, Options},
    store::{Checkpoint, Store},
};
use model::{FlowRecord, Mode, netpol::cluster::Cluster};
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    http::{self, Check, Health, HttpState},
    metrics::{CollectorTotals, LearnerMetrics},
};

/// How the learner service runs.
#[derive(Clone, Debug)]
pub struct LearnerServiceConfig {
    /// Where agents connect (gRPC).
    pub listen: SocketAddr,
    /// Metrics, liveness and readiness.
    pub http: Option<SocketAddr>,
    /// The baseline store (SQLite).
    pub store: PathBuf,
    /// Where proposals are written (`networkpolicies/<ns>/<name>.yaml`, `NOTES.md`).
    pub proposal_dir: PathBuf,
    /// How often to propose.
    pub propose_every: Duration,
    /// Publish `WorkloadBaseline` resources (and read the cluster) through the API server.
    pub kubernetes: bool,
    /// Otherwise, the cluster the proposals select pods in (JSON, as `palisade learn
    /// propose --cluster` reads it), read again for every proposal.
    pub cluster: Option<PathBuf>,
    /// The baseline counts as stable once no new rule appeared for this long.
    pub stable_after: Duration,
    pub options: Options,
}

/// The store as the collector's sink.
pub struct StoreSink {
    store: Arc<Mutex<Store>>,
}

impl StoreSink {
    pub fn new(store: Arc<Mutex<Store>>) -> Self {
        Self { store }
    }
}

/// Where the store keeps how far it counted one agent session's batches.
fn checkpoint_source(node: &str, session: u64) -> String {
    format!("grpc://{node}/{session:016x}")
}

/// The learner's batch of an agent's batch: each aggregate counted as the connections it
/// stands for. Records that cannot be read or attributed are counted, not fatal.
fn count_in(batch: &Batch) -> (baseline::Batch, u64) {
    let mut counted = baseline::Batch::default();
    let mut bad = 0;
    for flow in &batch.flows {
        let Some(record) = flow.record.clone() else {
            bad += 1;
            continue;
        };
        let record = match FlowRecord::try_from(record) {
            Ok(record) => record,
            Err(_) => {
                bad += 1;
                continue;
            }
        };
        match Observation::from_record(&record) {
            Ok(obs) => counted.observe_aggregate(&obs, flow.connections.max(1)),
            Err(_) => bad += 1,
        }
    }
    (counted, bad)
}

impl FlowSink for StoreSink {
    async fn accept(&self, batch: Batch) -> Result<(), SinkError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let (counted, bad) = count_in(&batch);
            if bad > 0 {
                warn!(
                    node = batch.node,
                    bad, "records in a batch could not be read"
                );
            }
            let source = checkpoint_source(&batch.node, batch.session);
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            let before = store
                .checkpoint(&source)
                .map_err(|e| SinkError::new("reading the session's checkpoint", e))?
                .map_or(0, |c| c.records);
            let checkpoint = Checkpoint {
                source,
                fingerprint: batch.session.to_be_bytes().to_vec(),
                offset: batch.sequence,
                records: before + batch.flows.len() as u64,
            };
            store
                .commit(&counted, Some(&checkpoint))
                .map_err(|e| SinkError::new("committing a batch to the store", e))
        })
        .await
        .map_err(|e| SinkError::new("the store's writer thread", e))?
    }

    async fn last_sequence(&self, node: &str, session: u64) -> Result<Option<u64>, SinkError> {
        let store = Arc::clone(&self.store);
        let source = checkpoint_source(node, session);
        tokio::task::spawn_blocking(move || {
            let store = store.lock().unwrap_or_else(|e| e.into_inner());
            store
                .checkpoint(&source)
                .map(|c| c.map(|c| c.offset))
                .map_err(|e| SinkError::new("reading the session's checkpoint", e))
        })
        .await
        .map_err(|e| SinkError::new("the store's reader thread", e))?
    }
}

/// Serve until `shutdown` completes.
pub async fn serve(
    config: LearnerServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let required: &[Check] = if config.kubernetes {
        &[Check::ClusterSynced]
    } else {
        &[]
    };
    let health = Health::new(Duration::from_secs(30), required);
    let metrics = Arc::new(LearnerMetrics::new(env!("CARGO_PKG_VERSION")));
    let store = Store::open(&config.store).map_err(|e| Error::Learner(Box::new(e)))?;
    let store = Arc::new(Mutex::new(store));
    let (client, mut watch) = if config.kubernetes {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| Error::Kubernetes(Box::new(k8s::error::Error::Client(e))))?;
        // The learner needs the whole cluster, no node's pods in particular.
        let watch = ClusterWatch::start(client.clone(), "");
        (Some(client), Some(watch))
    } else {
        (None, None)
    };
    if let Some(watch) = &mut watch {
        watch
            .synced()
            .await
            .map_err(|e| Error::Kubernetes(Box::new(e)))?;
        health.set(Check::ClusterSynced, true);
    }
    let collector = Collector::new(
        StoreSink::new(Arc::clone(&store)),
        CollectorConfig::default(),
    );
    let service = collector.clone().into_service();
    if let Some(addr) = config.http {
        let (scraped, stats) = (Arc::clone(&metrics), collector.clone());
        let refresh = Arc::new(move || {
            let s = stats.stats();
            scraped.set_collector(CollectorTotals {
                accepted: s.accepted,
                duplicates: s.duplicates,
                sink_errors: s.sink_errors,
                streams: s.streams,
                sessions: s.sessions as u64,
            });
        });
        let state = HttpState::new(health.clone(), Arc::clone(&metrics) as _).with_refresh(refresh);
        http::spawn(addr, state)
            .await
            .map_err(|e| Error::Http(Box::new(e)))?;
    }
    info!(listen = %config.listen, store = %config.store.display(), "learner listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut grpc_stopped = stopped.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_shutdown(config.listen, async move {
                let _ = grpc_stopped.wait_for(|s| *s).await;
            }),
    );
    let mut ticker = tokio::time::interval(config.propose_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => health.beat(),
            _ = ticker.tick() => {
                let cluster = match (&watch, &config.cluster) {
                    (Some(w), _) => Ok(w.snapshot(&ModeDefaults { mode: Mode::Learn }).cluster),
                    (None, Some(path)) => crate::policy_source::load_cluster(path),
                    (None, None) => Ok(Cluster::default()),
                };
                let proposed = match cluster {
                    Ok(cluster) => {
                        propose_now(&config, &store, cluster, client.as_ref(), &metrics).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = proposed {
                    metrics.not_proposed("failed");
                    warn!(error = %crate::error::chain(&e), "no proposal this time");
                }
            }
            () = &mut shutdown => break,
        }
    }
    // Open agent streams would hold tonic's graceful shutdown up forever.
    collector.shutdown();
    let _ = stop.send(true);
    drop(stopped);
    match grpc.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Grpc(Box::new(e))),
        Err(e) => Err(Error::Grpc(Box::new(e))),
    }
}

/// Propose from the whole baseline: files always, custom resources when in a cluster. The
/// store, the proposal and the files are worked on a blocking thread, off the runtime that
/// serves agents and the health endpoints.
async fn propose_now(
    config: &LearnerServiceConfig,
    store: &Arc<Mutex<Store>>,
    cluster: Cluster,
    client: Option<&kube::Client>,
    metrics: &LearnerMetrics,
) -> Result<()> {
    let (proposal, stable) = {
        let store = Arc::clone(store);
        let config = config.clone();
        tokio::task::spawn_blocking(move || propose_files(&config, &store, &cluster))
            .await
            .map_err(|e| Error::Grpc(Box::new(e)))??
    };
    match &proposal {
        Some((proposal, rules)) => metrics.proposed(*rules, proposal.policies.len()),
        None => metrics.not_proposed("empty"),
    }
    let (Some((proposal, _)), Some(client)) = (proposal, client) else {
        return Ok(());
    };
    let options = ResourceOptions {
        stable,
        ..ResourceOptions::default()
    };
    let resources = crd::baseline_resources(&proposal, &options);
    let published = apply::publish(client, resources)
        .await
        .map_err(|e| Error::Kubernetes(Box::new(e)))?;
    for failed in &published.failed {
        warn!(error = %crate::error::chain(failed), "WorkloadBaseline not published");
    }
    info!(
        applied = published.applied.len(),
        deleted = published.deleted.len(),
        failed = published.failed.len(),
        "WorkloadBaselines published"
    );
    Ok(())
}

/// The proposal and the rules it came from (`None` while nothing is learned: an empty
/// baseline, after a lost store say, must not delete every published baseline) written as
/// files, and whether the baseline is stable.
fn propose_files(
    config: &LearnerServiceConfig,
    store: &Mutex<Store>,
    cluster: &Cluster,
) -> Result<(Option<(propose::Proposal, usize)>, bool)> {
    let baseline = {
        let store = store.lock().unwrap_or_else(|e| e.into_inner());
        store
            .baseline(None)
            .map_err(|e| Error::Learner(Box::new(e)))?
    };
    if baseline.is_empty() {
        info!("nothing learned yet");
        return Ok((None, false));
    }
    let proposal = propose::propose(&baseline, cluster, &config.options);
    let written =
        crate::review::write_proposal(&config.proposal_dir, &proposal).map_err(|e| Error::Io {
            path: config.proposal_dir.clone(),
            source: std::io::Error::other(e),
        })?;
    info!(
        policies = written.len(),
        rules = baseline.len(),
        notes = proposal.notes.len(),
        dir = %config.proposal_dir.display(),
        "proposal written"
    );
    let stable = baseline.is_stable(SystemTime::now(), config.stable_after);
    Ok((Some((proposal, baseline.len())), stable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::wire::v1;

    fn record(port: u32, kind: i32) -> v1::FlowRecord {
        let text = format!(
            r#"{{"time":"2026-11-28T10:00:00Z","kind":"new","interface":"pl-x","ifindex":3,"endpoint":3,
               "direction":"egress","protocol":"tcp",
               "local":{{"ip":"10.0.0.1","port":{port},"pod":"shop/web-1","workload":"shop/Deployment/web"}},
               "remote":{{"ip":"10.0.0.2","port":80,"pod":"shop/api-1","workload":"shop/Deployment/api"}},
               "verdict":"allow","mode":"learn"}}"#
        );
        let record: FlowRecord = serde_json::from_str(&text).unwrap();
        let mut wire = v1::FlowRecord::from(record);
        wire.kind = kind;
        wire
    }

    fn batch(node: &str, session: u64, sequence: u64, connections: u64) -> Batch {
        Batch {
            node: node.into(),
            session,
            sequence,
            flows: vec![flow_stream::v1::AggregatedFlow {
                record: Some(record(40000, v1::Kind::New as i32)),
                connections,
            }],
            ..Batch::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flows_streamed_by_an_agent_become_a_proposal_on_the_learners_period() {
        let dir = tempfile::tempdir().unwrap();
        // A free loopback port for the collector.
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = LearnerServiceConfig {
            listen,
            http: None,
            store: dir.path().join("baseline.db"),
            proposal_dir: dir.path().join("proposal"),
            propose_every: Duration::from_millis(300),
            kubernetes: false,
            cluster: Some(dir.path().join("cluster.json")),
            stable_after: Duration::from_secs(3600),
            options: Options::default(),
        };
        std::fs::write(
            dir.path().join("cluster.json"),
            serde_json::json!({
                "pods": [
                    {"namespace": "shop", "name": "web-1", "labels": {"app": "web"}, "node": "n",
                     "ips": ["10.0.0.1"], "workload": "shop/Deployment/web"},
                    {"namespace": "shop", "name": "api-1", "labels": {"app": "api"}, "node": "n",
                     "ips": ["10.0.0.2"], "workload": "shop/Deployment/api"},
                ],
            })
            .to_string(),
        )
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let learner = tokio::spawn(serve(config, async {
            let _ = stopped.await;
        }));

        let stream = flow_stream::StreamConfig {
            flush_interval: Duration::from_millis(100),
            ..flow_stream::StreamConfig::default()
        };
        let endpoint = format!("http://{listen}").parse().unwrap();
        let (sender, streamer) = flow_stream::FlowStreamer::spawn(endpoint, "node-a", stream);
        for port in 0..20 {
            let mut wire = record(40000 + port, v1::Kind::New as i32);
            if let Some(local) = wire.local.as_mut() {
                local.labels = [("app".to_owned(), "web".to_owned())].into();
            }
            if let Some(remote) = wire.remote.as_mut() {
                remote.labels = [("app".to_owned(), "api".to_owned())].into();
            }
            sender.offer(FlowRecord::try_from(wire).unwrap());
        }

        let policy = dir.path().join("proposal/networkpolicies/shop");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let text = loop {
            let found = std::fs::read_dir(&policy).ok().and_then(|entries| {
                entries
                    .flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .find(|text| text.contains("app: web"))
            });
            if let Some(text) = found {
                break text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no proposal for the web workload in {} (stream: {:?}; notes: {:?})",
                policy.display(),
                streamer.stats(),
                std::fs::read_to_string(dir.path().join("proposal/NOTES.md")).ok()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // One aggregate of 20 connections, counted as 20.
        assert!(text.contains("20 connections"), "{text}");
        assert!(text.contains("port: 80"), "{text}");
        streamer.close(Duration::from_secs(5)).await.unwrap();
        stop.send(()).unwrap();
        learner.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn batches_are_counted_with_their_connections_and_their_sequence_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baseline.db");
        let sink = StoreSink::new(Arc::new(Mutex::new(Store::open(&path).unwrap())));
        sink.accept(batch("node-a", 7, 1, 5)).await.unwrap();
        sink.accept(batch("node-a", 7, 2, 3)).await.unwrap();
        assert_eq!(sink.last_sequence("node-a", 7).await.unwrap(), Some(2));
        assert_eq!(sink.last_sequence("node-a", 8).await.unwrap(), None);
        assert_eq!(sink.last_sequence("node-b", 7).await.unwrap(), None);
        drop(sink);

        // A restarted learner knows how far each session got, from the store alone.
        let store = Store::open(&path).unwrap();
        let baseline = store.baseline(None).unwrap();
        let (_, evidence) = baseline.sorted()[0];
        assert_eq!(evidence.connections, 8);
        let sink = StoreSink::new(Arc::new(Mutex::new(store)));
        assert_eq!(sink.last_sequence("node-a", 7).await.unwrap(), Some(2));
    }
}
