//! Where the Kubernetes agent's flow records go: the metrics, the learner (aggregated, over
//! gRPC), Kubernetes Events on denied connections, and optionally a file. None of them
//! may hold the agent's loop up: the stream and the Events merge or queue in memory, bounded,
//! and count what they had to drop.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use flow_stream::client::{FlowSender, FlowStreamer, StreamConfig};
use k8s::events::{DeniedConnection, DenyEvents, Limits, PodRef};
use kube::runtime::events::Reporter;
use model::{FlowKind, FlowRecord, Verdict, wire::FlowWriter};
use tracing::{info, warn};

use super::KubeAgentConfig;
use crate::{
    agent::RecordSink,
    datapath::Pins,
    error::{Error, Result},
    http::Refresh,
    metrics::{self, FlowStreamTotals, Metrics},
};

pub struct KubeSink {
    file: Option<FlowWriter<Box<dyn Write + Send>>>,
    metrics: Arc<Metrics>,
    stream: Option<(FlowSender, FlowStreamer)>,
    events: Option<DenyEvents>,
    /// Records the output file did not take.
    file_errors: u64,
}

impl KubeSink {
    pub fn open(
        config: &KubeAgentConfig,
        client: kube::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let file = match &config.output {
            Some((path, format)) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                let out: Box<dyn Write + Send> = Box::new(BufWriter::new(file));
                Some(FlowWriter::new(out, *format))
            }
            None => None,
        };
        let stream = match &config.learner {
            Some(url) => {
                let endpoint = url.parse().map_err(|e| Error::Grpc(Box::new(e)))?;
                let (sender, streamer) =
                    FlowStreamer::spawn(endpoint, config.node.clone(), StreamConfig::default());
                info!(
                    learner = url,
                    session = streamer.session(),
                    "streaming flows to the learner"
                );
                Some((sender, streamer))
            }
            None => None,
        };
        let events = config.deny_events.then(|| {
            let reporter = Reporter {
                controller: "palisade-agent".into(),
                instance: Some(config.node.clone()),
            };
            DenyEvents::new(client, reporter, Limits::default())
        });
        Ok(Self {
            file,
            metrics,
            stream,
            events,
            file_errors: 0,
        })
    }
}

impl RecordSink for KubeSink {
    fn write(&mut self, record: &FlowRecord) -> Result<()> {
        self.metrics.record(record);
        if let Some((sender, _)) = &self.stream {
            sender.offer(record);
        }
        if let Some(events) = &mut self.events
            && let Some(denied) = denied_connection(record)
        {
            events.offer(&denied, Instant::now());
        }
        if let Some(file) = &mut self.file
            && let Err(e) = RecordSink::write(file, record)
        {
            // The file is a copy for people; the agent keeps enforcing and streaming.
            self.file_errors += 1;
            if self.file_errors == 1 {
                warn!(error = %crate::error::chain(&e), "flow records not written to the output file");
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some((_, streamer)) = &self.stream {
            let stats = streamer.stats();
            self.metrics.set_flow_stream(FlowStreamTotals {
                sent: stats.sent,
                acked: stats.acked,
                resent: stats.resent,
                lost: stats.lost,
                connected: stats.connected,
            });
        }
        if let Some(events) = &self.events {
            let stats = events.stats();
            self.metrics
                .set_k8s_events_suppressed(stats.held_back + stats.dropped);
        }
        if let Some(file) = &mut self.file
            && let Err(e) = RecordSink::flush(file)
        {
            self.file_errors += 1;
            warn!(error = %crate::error::chain(&e), "flushing the output file");
        }
        Ok(())
    }
}

/// A denied (or, in monitor mode, would-be denied) new connection as an Event tells it,
/// about the local pod; `None` for anything else.
fn denied_connection(record: &FlowRecord) -> Option<DeniedConnection> {
    let enforced = match record.verdict {
        Verdict::Deny => true,
        Verdict::WouldDeny => false,
        Verdict::Allow => return None,
    };
    if record.kind != FlowKind::New {
        return None;
    }
    let (namespace, name) = record.local.pod.as_deref()?.split_once('/')?;
    let remote = &record.remote;
    let peer = match (
        &remote.workload,
        &remote.pod,
        &remote.service,
        &remote.dns_name,
    ) {
        (Some(workload), _, _, _) => format!("workload {workload} ({})", remote.ip),
        (None, Some(pod), _, _) => format!("pod {pod} ({})", remote.ip),
        (None, None, Some(service), _) => format!("service {service} ({})", remote.ip),
        (None, None, None, Some(dns)) => format!("{} ({dns})", remote.ip),
        (None, None, None, None) => remote.ip.to_string(),
    };
    let port = match record.direction {
        model::Direction::Egress => record.remote.port,
        model::Direction::Ingress => record.local.port,
    };
    Some(DeniedConnection {
        pod: PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: None,
        },
        direction: record.direction,
        peer,
        protocol: record.protocol,
        port: (port != 0).then_some(port),
        policy: record
            .policy
            .clone()
            .unwrap_or_else(|| match record.reason {
                Some(model::Reason::Spoofed) => "a source address that is not the pod's".into(),
                _ => "no rule of the policies selecting the pod allows it".into(),
            }),
        enforced,
    })
}

/// Refresh the datapath's counters and map fill levels when `/metrics` is scraped. The
/// connection table is walked at most once per [`CONNTRACK_WALK_EVERY`]: its fill level is
/// the one read that costs (one syscall per entry).
pub fn datapath_refresh(pins: Pins, m: Arc<Metrics>) -> Refresh {
    let last_walk = std::sync::Mutex::new(None::<(Instant, u64)>);
    Arc::new(move || {
        let mut last = last_walk.lock().unwrap_or_else(|e| e.into_inner());
        let known = last
            .filter(|(at, _)| at.elapsed() < CONNTRACK_WALK_EVERY)
            .map(|(_, entries)| entries);
        match metrics::read_datapath(&pins, known) {
            Ok(snapshot) => {
                if known.is_none()
                    && let Some(fill) = snapshot
                        .maps
                        .iter()
                        .find(|f| f.map == enforcer_common::maps::CONNTRACK)
                {
                    *last = Some((Instant::now(), fill.entries));
                }
                m.observe_datapath(&snapshot);
            }
            Err(e) => warn!(error = %e, "datapath counters not read"),
        }
    })
}

/// How often a scrape may walk the connection table.
pub const CONNTRACK_WALK_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn record(verdict: &str, kind: &str, remote: &str) -> FlowRecord {
        serde_json::from_str(&format!(
            r#"{{"time":"2026-11-28T10:00:00Z","kind":"{kind}","interface":"pl-x","ifindex":3,
                "endpoint":3,"direction":"egress","protocol":"tcp",
                "local":{{"ip":"10.244.1.4","port":40000,"pod":"shop/late"}},
                "remote":{remote},"verdict":"{verdict}","mode":"enforce"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_denied_new_connection_is_an_event_about_the_local_pod_and_the_server_port() {
        let denied = denied_connection(&record(
            "deny",
            "new",
            r#"{"ip":"10.244.1.3","port":8080,"pod":"shop/server-1","workload":"shop/Deployment/server"}"#,
        ))
        .unwrap();
        assert_eq!(
            (denied.pod.namespace.as_str(), denied.pod.name.as_str()),
            ("shop", "late")
        );
        assert_eq!(denied.peer, "workload shop/Deployment/server (10.244.1.3)");
        assert_eq!(denied.port, Some(8080));
        assert!(denied.enforced);

        let external = denied_connection(&record(
            "would-deny",
            "new",
            r#"{"ip":"203.0.113.7","port":443,"dns_name":"evil.example.org"}"#,
        ))
        .unwrap();
        assert_eq!(external.peer, "203.0.113.7 (evil.example.org)");
        assert!(!external.enforced, "monitor mode only records it");
    }

    #[test]
    fn allowed_connections_and_counters_are_not_events() {
        let remote = r#"{"ip":"10.244.1.3","port":8080}"#;
        assert!(denied_connection(&record("allow", "new", remote)).is_none());
        assert!(denied_connection(&record("deny", "stats", remote)).is_none());
    }
}
