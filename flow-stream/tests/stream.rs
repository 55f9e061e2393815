//! End to end on 127.0.0.1: a real tonic collector (in its own runtime, so stopping it
//! drops every connection, as a learner crash would) and the agent's streamer.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flow_stream::{
    Batch, Collector, CollectorConfig, CollectorStats, FlowSink, FlowStreamer, Offered, SinkError,
    StreamConfig,
    v1::{FlowBatch, flow_collector_client::FlowCollectorClient},
};
use model::wire::v1::{self as wire, Counters, Direction, Endpoint, Kind, Mode, Verdict};
use tokio::sync::{Notify, oneshot};
use tonic::transport::{Server, Uri};

const T0: i64 = 1_795_000_000_000;

/// An egress TCP record from 10.244.0.2:`client_port` to 10.244.0.3:`server_port`.
fn record(kind: Kind, client_port: u32, server_port: u32) -> wire::FlowRecord {
    let endpoint = |ip: [u8; 4], port: u32, pod: &str| Endpoint {
        ip: ip.to_vec(),
        port,
        pod: pod.into(),
        workload: String::new(),
        dns_name: String::new(),
        labels: BTreeMap::new(),
        service: String::new(),
    };
    wire::FlowRecord {
        time_unix_ms: T0 + i64::from(client_port),
        first_seen_unix_ms: T0,
        kind: kind as i32,
        interface: "pl-veth-1".into(),
        ifindex: 7,
        endpoint: 7,
        direction: Direction::Egress as i32,
        protocol: 6,
        local: Some(endpoint([10, 244, 0, 2], client_port, "shop/frontend")),
        remote: Some(endpoint([10, 244, 0, 3], server_port, "shop/api")),
        verdict: Verdict::Allow as i32,
        mode: Mode::Learn as i32,
        rule: 0,
        policy: String::new(),
        reason: 0,
        counters: (kind == Kind::Closed).then_some(Counters {
            packets_from_pod: 1,
            bytes_from_pod: 100,
            packets_to_pod: 1,
            bytes_to_pod: 1000,
        }),
    }
}

/// Connections and bytes per (kind, server port).
type Totals = BTreeMap<(i32, u32), (u64, u64)>;

fn totals<'a>(
    flows: impl IntoIterator<Item = &'a wire::FlowRecord>,
    weight: impl Fn(usize) -> u64,
) -> Totals {
    let mut t = Totals::new();
    for (i, r) in flows.into_iter().enumerate() {
        let entry = t
            .entry((r.kind, r.remote.as_ref().unwrap().port))
            .or_default();
        entry.0 += weight(i);
        entry.1 += r.counters.map_or(0, |c| c.bytes_from_pod + c.bytes_to_pod);
    }
    t
}

fn offered_totals(records: &[wire::FlowRecord]) -> Totals {
    totals(records, |_| 1)
}

/// A learner's store in memory: it keeps every batch and the highest sequence per
/// session, as a durable store would.
#[derive(Default)]
struct MemorySink {
    batches: Mutex<Vec<Batch>>,
    /// How long storing a batch takes.
    delay: Duration,
    /// Store this sequence, signal `stored`, then never return (the learner dies there).
    hang_after: Mutex<Option<u64>>,
    stored: Notify,
}

impl MemorySink {
    fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    fn batches(&self) -> Vec<Batch> {
        self.batches.lock().unwrap().clone()
    }

    fn totals(&self) -> Totals {
        let batches = self.batches();
        let flows: Vec<_> = batches.iter().flat_map(|b| &b.flows).collect();
        totals(flows.iter().map(|f| f.record.as_ref().unwrap()), |i| {
            flows[i].connections
        })
    }

    fn connections(&self) -> u64 {
        self.totals().values().map(|(c, _)| c).sum()
    }
}

impl FlowSink for MemorySink {
    async fn accept(&self, batch: Batch) -> Result<(), SinkError> {
        tokio::time::sleep(self.delay).await;
        let sequence = batch.sequence;
        self.batches.lock().unwrap().push(batch);
        if *self.hang_after.lock().unwrap() == Some(sequence) {
            self.stored.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn last_sequence(&self, node: &str, session: u64) -> Result<Option<u64>, SinkError> {
        let batches = self.batches.lock().unwrap();
        Ok(batches
            .iter()
            .filter(|b| b.node == node && b.session == session)
            .map(|b| b.sequence)
            .max())
    }
}

/// A collector serving on `addr` from a runtime of its own: stopping it drops the
/// runtime, and with it every connection and every batch being stored.
struct TestServer {
    addr: SocketAddr,
    collector: Collector<Arc<MemorySink>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(addr: SocketAddr, sink: Arc<MemorySink>) -> Self {
        let collector = Collector::new(sink, CollectorConfig::default());
        let service = collector.clone().into_service();
        let (stop, stopped) = oneshot::channel();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                bound_tx.send(listener.local_addr().unwrap()).unwrap();
                let serve = Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
                tokio::select! {
                    result = serve => result.unwrap(),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here cancels the connections' tasks.
            drop(rt);
        });
        let addr = bound_rx.recv().unwrap();
        Self {
            addr,
            collector,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn uri(&self) -> Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    fn stats(&self) -> CollectorStats {
        self.collector.stats()
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn quick() -> StreamConfig {
    StreamConfig {
        flush_interval: Duration::from_millis(20),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..StreamConfig::default()
    }
}

/// Wait until `done` holds, checking every 10 ms; panics with `what` after 15 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_sequences_contiguous(batches: &[FlowBatch]) {
    let mut seqs: Vec<u64> = batches.iter().map(|b| b.sequence).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "each batch stored once, none missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_reach_the_sink_with_their_counts() {
    let sink = Arc::new(MemorySink::default());
    let server = TestServer::start(any_port(), Arc::clone(&sink));
    let (sender, streamer) = FlowStreamer::spawn(server.uri(), "node-a", quick());

    let mut records = Vec::new();
    for client in 0..10 {
        records.push(record(Kind::New, 40000 + client, 8080));
    }
    for client in 0..3 {
        records.push(record(Kind::New, 41000 + client, 5432));
    }
    records.push(record(Kind::Closed, 40000, 8080));
    records.push(record(Kind::Closed, 40001, 8080));
    for r in &records {
        sender.offer(r.clone());
    }
    // The agent's own record type goes in as well.
    let model_record = model::FlowRecord::try_from(record(Kind::New, 40077, 8080)).unwrap();
    sender.offer(&model_record);
    records.push(record(Kind::New, 40077, 8080));

    eventually("every connection stored", || {
        sink.connections() == records.len() as u64
    })
    .await;
    assert_eq!(sink.totals(), offered_totals(&records));
    let expected = Totals::from([
        ((Kind::New as i32, 8080), (11, 0)),
        ((Kind::New as i32, 5432), (3, 0)),
        ((Kind::Closed as i32, 8080), (2, 2200)),
    ]);
    assert_eq!(sink.totals(), expected);

    let batches = sink.batches();
    assert!(
        batches
            .iter()
            .all(|b| b.node == "node-a" && b.session == streamer.session())
    );
    assert_sequences_contiguous(&batches);
    let aggregates: usize = batches.iter().map(|b| b.flows.len()).sum();
    assert!(aggregates <= 4, "merged, not one per record: {aggregates}");

    let session = streamer.session();
    streamer.close(Duration::from_secs(5)).await.unwrap();
    let stats = server.stats();
    assert_eq!(stats.accepted, batches.len() as u64);
    assert_eq!(stats.duplicates, 0);
    assert_ne!(session, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_collector_gets_every_aggregate_exactly_once() {
    let sink = Arc::new(MemorySink::default());
    let server = TestServer::start(any_port(), Arc::clone(&sink));
    let addr = server.addr;
    let (sender, streamer) = FlowStreamer::spawn(server.uri(), "node-b", quick());
    let mut offered = Vec::new();
    let mut offer = |r: wire::FlowRecord| {
        assert_ne!(sender.offer(r.clone()), Offered::Lost);
        offered.push(r);
    };

    for i in 0..20 {
        offer(record(Kind::New, 40000 + i, 8000 + i % 4));
    }
    eventually("the first records stored", || sink.connections() == 20).await;

    // The learner dies while storing a batch, after the store made it durable and before
    // the ack went out.
    *sink.hang_after.lock().unwrap() = Some(sink.batches().len() as u64 + 1);
    let stored = sink.stored.notified();
    offer(record(Kind::Closed, 40000, 8000));
    stored.await;
    server.stop();

    // The agent keeps aggregating while the collector is away.
    eventually("the agent to notice", || !streamer.stats().connected).await;
    for i in 0..30 {
        offer(record(Kind::New, 50000 + i, 8000 + i % 6));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = streamer.stats();
    assert!(!stats.connected);
    assert!(stats.in_flight >= 1, "the unacked batch is kept: {stats:?}");
    assert!(stats.pending > 0, "records aggregate meanwhile: {stats:?}");

    *sink.hang_after.lock().unwrap() = None;
    let server = TestServer::start(addr, Arc::clone(&sink));
    for i in 0..10 {
        offer(record(Kind::Closed, 50000 + i, 8000 + i % 6));
    }
    eventually("every record stored", || {
        sink.connections() >= offered.len() as u64 && streamer.stats().in_flight == 0
    })
    .await;
    streamer.close(Duration::from_secs(5)).await.unwrap();

    assert_eq!(
        sink.totals(),
        offered_totals(&offered),
        "no loss, no double count"
    );
    assert_sequences_contiguous(&sink.batches());
    let server_stats = server.stats();
    assert!(
        server_stats.duplicates >= 1,
        "the unacked batch came again: {server_stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_keeps_the_window_bounded_while_aggregation_goes_on() {
    let sink = Arc::new(MemorySink::slow(Duration::from_millis(150)));
    let server = TestServer::start(any_port(), Arc::clone(&sink));
    let config = StreamConfig {
        max_in_flight: 2,
        max_batch_flows: 1,
        ..quick()
    };
    let (sender, streamer) = FlowStreamer::spawn(server.uri(), "node-c", config);

    let mut offered = Vec::new();
    let mut max_in_flight = 0;
    let mut saw_pending = false;
    for round in 0..40u32 {
        for key in 0..5u32 {
            let r = record(Kind::New, 40000 + round * 5 + key, 9000 + key);
            sender.offer(r.clone());
            offered.push(r);
        }
        let stats = streamer.stats();
        max_in_flight = max_in_flight.max(stats.in_flight);
        saw_pending |= stats.in_flight == 2 && stats.pending > 0;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(max_in_flight <= 2, "window exceeded: {max_in_flight}");
    assert!(saw_pending, "a full window leaves records aggregating");

    eventually("every record stored", || {
        sink.connections() == offered.len() as u64
    })
    .await;
    streamer.close(Duration::from_secs(10)).await.unwrap();
    assert_eq!(sink.totals(), offered_totals(&offered));
    // 200 records, 600 ms of offering against ~150 ms per batch: far fewer aggregates.
    let aggregates: usize = sink.batches().iter().map(|b| b.flows.len()).sum();
    assert!(
        aggregates < 60,
        "backpressure merges more: {aggregates} aggregates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_loses_new_keys_and_reports_them() {
    // A port nobody listens on yet.
    let addr = std::net::TcpListener::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap();
    let config = StreamConfig {
        max_keys: 4,
        ..quick()
    };
    let uri: Uri = format!("http://{addr}").parse().unwrap();
    let (sender, streamer) = FlowStreamer::spawn(uri, "node-d", config);
    let mut outcomes = HashMap::<Offered, u32>::new();
    for key in 0..10 {
        *outcomes
            .entry(sender.offer(record(Kind::New, 40000, 7000 + key)))
            .or_default() += 1;
    }
    // Keys already held still merge.
    assert_eq!(
        sender.offer(record(Kind::New, 40001, 7000)),
        Offered::Merged
    );
    assert_eq!(outcomes[&Offered::Added], 4);
    assert_eq!(outcomes[&Offered::Lost], 6);
    let stats = streamer.stats();
    assert_eq!((stats.lost, stats.pending, stats.offered), (6, 4, 11));
    assert!(!stats.connected);

    let sink = Arc::new(MemorySink::default());
    let _server = TestServer::start(addr, Arc::clone(&sink));
    eventually("the held aggregates stored", || sink.connections() == 5).await;
    let lost: u64 = sink.batches().iter().map(|b| b.lost_records).sum();
    assert_eq!(lost, 6, "the learner hears of the loss");
    streamer.close(Duration::from_secs(5)).await.unwrap();
}

fn batch(node: &str, session: u64, sequence: u64) -> FlowBatch {
    FlowBatch {
        node: node.into(),
        session,
        sequence,
        created_unix_ms: T0,
        flows: vec![flow_stream::v1::AggregatedFlow {
            record: Some(record(Kind::New, 0, 443)),
            connections: 1,
        }],
        lost_records: 0,
    }
}

/// Push `batches` on a new stream; the acks, as (sequence, duplicate), or the status.
async fn push(uri: &Uri, batches: Vec<FlowBatch>) -> Result<Vec<(u64, bool)>, tonic::Status> {
    let mut client = FlowCollectorClient::connect(uri.clone()).await.unwrap();
    let n = batches.len();
    let mut acks = client
        .push(futures::stream::iter(batches))
        .await?
        .into_inner();
    let mut got = Vec::new();
    while got.len() < n {
        match acks.message().await? {
            Some(ack) => got.push((ack.sequence, ack.duplicate)),
            None => break,
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_stores_each_batch_once_and_refuses_malformed_ones() {
    let sink = Arc::new(MemorySink::default());
    let server = TestServer::start(any_port(), Arc::clone(&sink));
    let uri = server.uri();

    let first = push(&uri, vec![batch("n1", 7, 1), batch("n1", 7, 2)])
        .await
        .unwrap();
    assert_eq!(first, [(1, false), (2, false)]);
    // A reconnected agent sends its unacked batches again, then new ones.
    let again = push(
        &uri,
        vec![batch("n1", 7, 1), batch("n1", 7, 2), batch("n1", 7, 3)],
    )
    .await
    .unwrap();
    assert_eq!(again, [(1, true), (2, true), (3, false)]);
    // Another node's session 7 is another session.
    assert_eq!(
        push(&uri, vec![batch("n2", 7, 1)]).await.unwrap(),
        [(1, false)]
    );
    assert_eq!(sink.batches().len(), 4);

    let status = push(&uri, vec![batch("n1", 0, 1)]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    let status = push(&uri, vec![batch("", 9, 1)]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert_eq!(sink.batches().len(), 4);

    let stats = server.stats();
    assert_eq!(
        (stats.accepted, stats.duplicates, stats.sessions),
        (4, 2, 2)
    );

    server.collector.shutdown();
    let status = push(&uri, vec![batch("n1", 7, 4)]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
}
