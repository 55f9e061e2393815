//! Ingest benchmark: generate a file of flow records for a simulated cluster, then read it
//! the way `palisade learn ingest` does, and measure records per second on one core and
//! the memory each aggregated rule (edge) costs.
//!
//! `cargo run --release -p learner --example ingest_bench -- [RECORDS] [WORKLOADS] [--rate N]
//! [--store] [--file PATH]` (defaults: 10,000,000 records, 10,000 workloads, 2,000 records a
//! second cluster-wide). With `--store`, the file is also ingested into a SQLite store
//! (`learner::ingest::ingest_file`), commits included. `--file` keeps the generated file
//! (and reuses it when it exists).
//!
//! The cluster: workloads of 3 pods in 100 namespaces, each with 3 identity labels; each
//! workload calls 8 others (fixed at random) and every 8th also an external API by DNS
//! name. Each connection is recorded as the agent records it: `new` at the client's
//! endpoint, `new` at the server's, and `closed` with counters at the client's.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    fs::File,
    io::{BufReader, BufWriter, Write as _},
    path::PathBuf,
    sync::atomic::{AtomicIsize, Ordering},
    time::Instant,
};

use learner::{
    baseline::{Baseline, Batch},
    record_view::RecordView,
};
use model::wire::{FlowReader, v1};
use prost::Message as _;

/// Counts live heap bytes, to measure what the aggregate holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PODS: usize = 3;
const BATCH: u64 = 2_000_000;
const CALLS: usize = 8;
const T0: i64 = 1_764_324_000_000;

/// A tiny deterministic generator (xorshift), so every run writes the same file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Workload {
    namespace: String,
    name: String,
    calls: Vec<usize>,
    external: bool,
}

fn endpoint(w: &Workload, pod: usize, index: usize, port: u32) -> v1::Endpoint {
    let ip = (10u32 << 24) | (244 << 16) | (index * PODS + pod) as u32;
    v1::Endpoint {
        ip: ip.to_be_bytes().to_vec(),
        port,
        pod: format!("{}/{}-7d9f8b6c5-{pod:05}", w.namespace, w.name),
        workload: format!("{}/Deployment/{}", w.namespace, w.name),
        dns_name: String::new(),
        labels: BTreeMap::from([
            ("app".into(), w.name.clone()),
            ("tier".into(), "backend".into()),
            ("io.kubernetes.pod.namespace".into(), w.namespace.clone()),
        ]),
        service: String::new(),
    }
}

fn generate(path: &PathBuf, records: u64, workloads: usize, rate: i64) -> std::io::Result<u64> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cluster: Vec<Workload> = (0..workloads)
        .map(|i| Workload {
            namespace: format!("team-{:02}", i % 100),
            name: format!("svc-{i:05}"),
            calls: (0..CALLS).map(|_| rng.below(workloads)).collect(),
            external: i % 8 == 0,
        })
        .collect();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut buf = Vec::with_capacity(512);
    let mut written = 0;
    let mut n = 0u64;
    while n < records {
        let ci = rng.below(workloads);
        let client = &cluster[ci];
        let (cpod, spod) = (rng.below(PODS), rng.below(PODS));
        let time_unix_ms = T0 + (n as i64) * 1000 / rate;
        let ephemeral = 32_768 + rng.below(28_000) as u32;
        let external = client.external && rng.below(CALLS + 1) == 0;
        let (remote, server_local) = if external {
            let mut e = v1::Endpoint {
                ip: vec![203, 0, 113, (rng.below(4) + 1) as u8],
                port: 443,
                ..v1::Endpoint::default()
            };
            e.dns_name = "api.payments.example".into();
            (e, None)
        } else {
            let si = client.calls[rng.below(CALLS)];
            let server = &cluster[si];
            (endpoint(server, spod, si, 8080), Some((server, spod, si)))
        };
        let local = endpoint(client, cpod, ci, ephemeral);
        let base = v1::FlowRecord {
            time_unix_ms,
            first_seen_unix_ms: time_unix_ms,
            kind: v1::Kind::New.into(),
            interface: format!("pl-{ci:05}-{cpod}"),
            ifindex: 100 + ci as u32,
            endpoint: 100 + ci as u32,
            direction: v1::Direction::Egress.into(),
            protocol: 6,
            local: Some(local.clone()),
            remote: Some(remote.clone()),
            verdict: v1::Verdict::Allow.into(),
            mode: v1::Mode::Learn.into(),
            rule: 0,
            policy: String::new(),
            reason: v1::Reason::Learn.into(),
            counters: None,
        };
        let mut batch = vec![base.clone()];
        if let Some((server, spod, si)) = server_local {
            let mut ingress = base.clone();
            ingress.direction = v1::Direction::Ingress.into();
            ingress.local = Some(endpoint(server, spod, si, 8080));
            ingress.remote = Some(v1::Endpoint {
                port: ephemeral,
                ..endpoint(client, cpod, ci, ephemeral)
            });
            batch.push(ingress);
        }
        let mut closed = base;
        closed.kind = v1::Kind::Closed.into();
        closed.time_unix_ms += 1_500;
        closed.counters = Some(v1::Counters {
            packets_from_pod: 6,
            bytes_from_pod: 900,
            packets_to_pod: 5,
            bytes_to_pod: 4_200,
        });
        batch.push(closed);
        for record in batch {
            buf.clear();
            record.encode_length_delimited(&mut buf).expect("grows");
            out.write_all(&buf)?;
            written += buf.len() as u64;
            n += 1;
        }
    }
    out.flush()?;
    Ok(written)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Positional numbers: those that are not a flag's value.
    let numbers: Vec<u64> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !matches!(args[i - 1].as_str(), "--rate" | "--file"))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let records = numbers.first().copied().unwrap_or(10_000_000);
    let workloads = numbers.get(1).copied().unwrap_or(10_000) as usize;
    let with_store = args.iter().any(|a| a == "--store");
    // `--rate N`: records a second, cluster-wide (how many records share a rule-hour).
    let rate: i64 = args
        .iter()
        .position(|a| a == "--rate")
        .and_then(|i| args.get(i + 1))
        .map_or(2_000, |r| r.parse().expect("--rate N"));
    let dir = std::env::temp_dir().join(format!("palisade-ingest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // `--file PATH`: generate into PATH once and keep it (to profile the reading alone).
    let kept = args
        .iter()
        .position(|a| a == "--file")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let path = kept.clone().unwrap_or_else(|| dir.join("flows.pb"));
    if !path.exists() {
        let started = Instant::now();
        let bytes = generate(&path, records, workloads, rate)?;
        println!(
            "generated {records} records ({:.0} MB, {:.0} B/record) for {workloads} workloads, {rate} records/s over {:.1} h, in {:.1} s",
            bytes as f64 / 1e6,
            bytes as f64 / records as f64,
            records as f64 / rate as f64 / 3600.0,
            started.elapsed().as_secs_f64()
        );
    }

    // Read + aggregate, one thread: what `palisade learn ingest` does between commits,
    // with each batch of 2,000,000 records folded into the baseline (where the store
    // would take it).
    let live_before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut reader = FlowReader::new(
        BufReader::with_capacity(1 << 20, File::open(&path)?),
        "bench",
    );
    let mut view = RecordView::default();
    let mut batch = Batch::default();
    let mut baseline = Baseline::default();
    let mut read = 0u64;
    let mut entries = 0;
    while reader.next_frame(|bytes| view.decode(bytes))? {
        batch.observe(&view.observation()?);
        read += 1;
        if read.is_multiple_of(BATCH) {
            entries += batch.len();
            baseline.merge_batch(&batch);
            batch.clear();
        }
    }
    entries += batch.len();
    baseline.merge_batch(&batch);
    let secs = started.elapsed().as_secs_f64();
    drop((reader, batch));
    println!(
        "read and aggregated {read} records in {secs:.2} s: {:.2} M records/s on one core ({entries} rule-hours)",
        read as f64 / secs / 1e6,
    );

    // Memory per edge of the baseline.
    let held = LIVE.load(Ordering::Relaxed) - live_before;
    println!(
        "baseline: {} rules (edges), {} names; heap held {:.1} MB: {:.0} bytes per edge (names included)",
        baseline.len(),
        baseline.names.len(),
        held as f64 / 1e6,
        held as f64 / baseline.len() as f64
    );

    if with_store {
        let store_path = dir.join("baseline.db");
        let mut store = learner::store::Store::open(&store_path)?;
        let started = Instant::now();
        let report = learner::ingest::ingest_file(
            &mut store,
            &path,
            &learner::ingest::Options::default(),
            &mut |_| {},
        )?;
        let secs = started.elapsed().as_secs_f64();
        let stats = store.stats()?;
        println!(
            "ingest_file into SQLite: {} records in {secs:.2} s: {:.2} M records/s (commits included); store {} rules, {} buckets, {:.1} MB",
            report.records,
            report.records as f64 / secs / 1e6,
            stats.rules,
            stats.buckets,
            stats.file_bytes as f64 / 1e6
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
