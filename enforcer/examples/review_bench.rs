//! Review benchmark: the learn -> propose -> export -> replay path at cluster scale.
//!
//! First generate flow records with the learner's ingest benchmark, keeping the file:
//! `cargo run --release -p learner --example ingest_bench -- 10000000 10000 --file /tmp/flows-2k.pb`
//! then `cargo run --release -p enforcer --example review_bench -- /tmp/flows-2k.pb`.
//!
//! The records are read into a baseline (in memory, on every core: `learner::parallel`), the
//! cluster is rebuilt from the workload names the generator uses (`team-NN/Deployment/
//! svc-NNNNN`, 3 pods each, labels `app` and `tier`), one NetworkPolicy per workload is
//! proposed, exported as files (timed), and the recorded connections are replayed against
//! the exported policies read back from the files (timed).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use learner::{
    baseline::Baseline,
    connections::connections,
    propose::{Options, propose},
};
use model::netpol::{
    cluster::{Cluster, Pod},
    evaluate::DefaultAction,
};
use policy_gen::{
    export::write_network_policies,
    import::import_dir,
    replay::{ReplayOptions, replay},
};

const PODS: u32 = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: review_bench FLOWS.pb (see the module docs)")?;

    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let read = learner::parallel::read_file(path.as_ref(), threads)?;
    let (baseline, records) = (read.baseline, read.records);
    let read = started.elapsed().as_secs_f64();
    println!(
        "read {records} records into {} rules in {read:.2} s ({threads} threads)",
        baseline.len()
    );

    let cluster = cluster_of(&baseline);
    let started = Instant::now();
    let proposal = propose(&baseline, &cluster, &Options::default());
    let set = enforcer::review::policy_set(&proposal);
    let rules: usize = set
        .iter()
        .filter_map(|p| p.policy.spec.as_ref())
        .map(|s| s.ingress.as_ref().map_or(0, Vec::len) + s.egress.as_ref().map_or(0, Vec::len))
        .sum();
    println!(
        "proposed {} policies with {rules} rules in {:.2} s",
        set.len(),
        started.elapsed().as_secs_f64()
    );

    // The export's folder: `PALISADE_BENCH_DIR` (e.g. /dev/shm, to leave the disk out), or
    // the temporary folder.
    let base = std::env::var_os("PALISADE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("palisade-review-bench-{}", std::process::id()));
    let started = Instant::now();
    let text: usize = set
        .iter()
        .map(|p| policy_gen::export::network_policy_text(p).len())
        .sum();
    println!(
        "the {} files' text ({:.1} MB) alone in {:.2} s",
        set.len(),
        text as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let written = write_network_policies(&dir, &set)?;
    let export = started.elapsed().as_secs_f64();
    let bytes: u64 = written
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    println!(
        "exported {} files ({:.1} MB) into {} in {export:.2} s",
        written.len(),
        bytes as f64 / 1e6,
        base.display()
    );

    let started = Instant::now();
    let reviewed = import_dir(&dir)?;
    let import = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let flows = connections(&baseline, &cluster);
    let folded = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let options = ReplayOptions {
        default: DefaultAction::Deny,
        new_since: None,
    };
    let result = replay(&reviewed, &cluster, &flows, &options)?;
    let replayed = started.elapsed().as_secs_f64();
    println!(
        "imported the files in {import:.2} s; {} connections ({} flows) from the baseline in {folded:.2} s; replayed in {replayed:.2} s: {:.1}% allowed, {} denied, {} rules unused",
        result.connections(),
        flows.len(),
        100.0 * result.coverage(),
        result.denied().count(),
        result.unused_rules.len()
    );
    println!(
        "replay of the {records} records end to end (read, fold, evaluate): {:.2} s",
        read + folded + replayed
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The generator's cluster, from the workload names in the baseline: `svc-N` has pods
/// 10.244.0.0 + 3N .. 3N+2, labelled `app: svc-N, tier: backend`.
fn cluster_of(baseline: &Baseline) -> Cluster {
    let mut cluster = Cluster::default();
    let workloads: std::collections::BTreeSet<&str> = baseline
        .rules
        .keys()
        .map(|k| baseline.names.get(k.workload))
        .collect();
    for workload in workloads {
        let mut parts = workload.splitn(3, '/');
        let (Some(namespace), Some(_), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(index) = name
            .strip_prefix("svc-")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        cluster.namespaces.entry(namespace.to_owned()).or_default();
        for pod in 0..PODS {
            let ip = Ipv4Addr::from((10u32 << 24) | (244 << 16) | (index * PODS + pod));
            cluster.pods.push(Pod {
                namespace: namespace.to_owned(),
                name: format!("{name}-7d9f8b6c5-{pod:05}"),
                labels: BTreeMap::from([
                    ("app".into(), name.to_owned()),
                    ("tier".into(), "backend".into()),
                ]),
                ips: vec![IpAddr::V4(ip)],
                ports: Vec::new(),
                node: "node".into(),
                workload: Some(workload.to_owned()),
            });
        }
    }
    cluster
}
