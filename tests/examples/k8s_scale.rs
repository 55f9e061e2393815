//! How the Kubernetes agent's control plane scales with the cluster: the time to mirror a
//! cluster from the API server at start, the memory its stores take, and the cost of each
//! change (a snapshot of the mirror, then the policy compiled for one node), which every
//! node pays whenever anything it watches changes.
//!
//! The API server is the tests' fake (`tests::fake_apiserver`, HTTP on loopback), serving
//! real list and watch responses to kube's own watchers.
//!
//! ```sh
//! cargo run --release -p tests --example k8s_scale -- 10000 100 1000
//! #                                                  pods  nodes namespaces
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s::{modes::ModeDefaults, watch::ClusterWatch};
use kube::config::{KubeConfigOptions, Kubeconfig};
use model::{
    Mode,
    netpol::{compile::Compiler, evaluate::DefaultAction},
};
use serde_json::json;
use tests::fake_apiserver::FakeApiServer;

fn main() -> Result<()> {
    let arg = |i: usize, default: usize| -> Result<usize> {
        std::env::args()
            .nth(i)
            .map_or(Ok(default), |a| a.parse().context("a number"))
    };
    let (pods, nodes, namespaces) = (arg(1, 10_000)?, arg(2, 100)?, arg(3, 1_000)?);
    let api = FakeApiServer::start()?;
    let started = Instant::now();
    fill(&api, pods, nodes, namespaces)?;
    eprintln!(
        "fake API server filled: {pods} pods on {nodes} nodes in {namespaces} namespaces, {} Services, {} NetworkPolicies ({:.1} s)",
        namespaces * 2,
        namespaces * 2,
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let rss_before = rss_bytes();
        let started = Instant::now();
        let mut watch = ClusterWatch::start(client, "node-0");
        watch.synced().await?;
        let synced = started.elapsed();
        let rss_after = rss_bytes();
        println!(
            "mirror synced: {:.2} s; resident memory +{:.1} MiB ({:.0} bytes per pod)",
            synced.as_secs_f64(),
            (rss_after.saturating_sub(rss_before)) as f64 / 1048576.0,
            rss_after.saturating_sub(rss_before) as f64 / pods as f64
        );

        let defaults = ModeDefaults { mode: Mode::Enforce };
        let mut snapshot_times = Vec::new();
        let mut compile_times = Vec::new();
        let mut compiler = Compiler::default();
        let mut local = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let snapshot = watch.snapshot(&defaults);
            snapshot_times.push(t.elapsed());
            local = snapshot.local.len();
            let t = Instant::now();
            let default = |_: &model::netpol::cluster::Pod| DefaultAction::Allow;
            compiler
                .compile(&model::netpol::compile::Input {
                    cluster: &snapshot.cluster,
                    policies: &snapshot.policies,
                    node: "node-0",
                    default: &default,
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            compile_times.push(t.elapsed());
        }
        println!(
            "per change on a node with {local} local pods: snapshot {} ms, compile {} ms (median of 5)",
            median_ms(&mut snapshot_times),
            median_ms(&mut compile_times)
        );
        anyhow::Ok(())
    })
}

/// Namespaces `ns-i` with two workloads each (`web` -> `api`), a Service and a policy per
/// workload; pods spread over the namespaces and nodes.
fn fill(api: &FakeApiServer, pods: usize, nodes: usize, namespaces: usize) -> Result<()> {
    for n in 0..nodes {
        api.apply(
            "nodes",
            json!({"metadata": {"name": format!("node-{n}")},
                   "status": {"addresses": [{"type": "InternalIP",
                                             "address": format!("192.168.{}.{}", n / 250, n % 250 + 1)}]}}),
        )?;
    }
    for ns in 0..namespaces {
        let namespace = format!("ns-{ns}");
        api.apply(
            "namespaces",
            json!({"metadata": {"name": namespace, "labels": {"kubernetes.io/metadata.name": namespace}}}),
        )?;
        for (app, peer) in [("web", "api"), ("api", "web")] {
            api.apply(
                "services",
                json!({"metadata": {"name": app, "namespace": namespace},
                       "spec": {"selector": {"app": app}, "clusterIP": format!("10.96.{}.{}", ns / 120, (ns % 120) * 2 + usize::from(app == "api") + 1),
                                "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
            )?;
            api.apply(
                "networkpolicies",
                json!({"metadata": {"name": app, "namespace": namespace},
                       "spec": {"podSelector": {"matchLabels": {"app": app}},
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}],
                                             "ports": [{"port": 8080, "protocol": "TCP"}]}]}}),
            )?;
        }
    }
    for p in 0..pods {
        let namespace = format!("ns-{}", p % namespaces);
        let app = if p % 2 == 0 { "web" } else { "api" };
        let ip = format!("10.{}.{}.{}", 128 + p / 65536, (p / 256) % 256, p % 256);
        api.apply(
            "pods",
            json!({
                "metadata": {
                    "name": format!("{app}-{p}"), "namespace": namespace,
                    "labels": {"app": app, "pod-template-hash": "5d4f8b"},
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-28T10:00:00Z"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                         "name": format!("{app}-5d4f8b"), "uid": format!("rs-{p}"),
                                         "controller": true}],
                },
                "spec": {
                    "nodeName": format!("node-{}", p % nodes),
                    "containers": [{"name": app, "image": "registry.example/app:1",
                                    "ports": [{"containerPort": 8080, "name": "http"}],
                                    "env": [{"name": "MODE", "value": "production"}],
                                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
                },
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }),
        )?;
    }
    Ok(())
}

fn median_ms(times: &mut [Duration]) -> String {
    times.sort();
    format!("{:.1}", times[times.len() / 2].as_secs_f64() * 1000.0)
}

/// Resident memory of this process (the fake API server's objects included, allocated
/// before the first reading).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
