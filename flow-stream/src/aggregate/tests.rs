use std::collections::BTreeMap;

use model::wire::v1::{Endpoint, Mode, Verdict};
use proptest::prelude::*;
use prost::Message as _;

use super::*;

const T0: i64 = 1_795_000_000_000;

fn endpoint(ip: [u8; 4], port: u32, pod: &str) -> Endpoint {
    Endpoint {
        ip: ip.to_vec(),
        port,
        pod: pod.into(),
        workload: String::new(),
        dns_name: String::new(),
        labels: BTreeMap::from([("app".into(), pod.into())]),
        service: String::new(),
    }
}

/// An egress TCP connection from `frontend` (client port `client_port`) to `api:8080`.
fn record(kind: Kind, client_port: u32, time: i64) -> wire::FlowRecord {
    wire::FlowRecord {
        time_unix_ms: time,
        first_seen_unix_ms: if kind == Kind::New { time } else { 0 },
        kind: kind as i32,
        interface: "pl-veth-1".into(),
        ifindex: 7,
        endpoint: 7,
        direction: Direction::Egress as i32,
        protocol: 6,
        local: Some(endpoint([10, 244, 0, 2], client_port, "shop/frontend")),
        remote: Some(endpoint([10, 244, 0, 3], 8080, "shop/api")),
        verdict: Verdict::Allow as i32,
        mode: Mode::Enforce as i32,
        rule: 3,
        policy: "shop/api-allow egress[0]".into(),
        reason: 0,
        counters: None,
    }
}

fn with_counters(mut r: wire::FlowRecord, bytes: u64, first_seen: i64) -> wire::FlowRecord {
    r.first_seen_unix_ms = first_seen;
    r.counters = Some(Counters {
        packets_from_pod: 1,
        bytes_from_pod: bytes,
        packets_to_pod: 2,
        bytes_to_pod: 2 * bytes,
    });
    r
}

fn by_kind(flows: &[AggregatedFlow], kind: Kind) -> &AggregatedFlow {
    let mut of_kind = flows
        .iter()
        .filter(|f| f.record.as_ref().unwrap().kind == kind as i32);
    let found = of_kind.next().expect("an aggregate of that kind");
    assert!(of_kind.next().is_none(), "one aggregate per kind");
    found
}

#[test]
fn client_ports_and_times_fold_into_one_aggregate() {
    let mut agg = Aggregator::new(16);
    assert_eq!(agg.offer(record(Kind::New, 40001, T0 + 5)), Offered::Added);
    assert_eq!(agg.offer(record(Kind::New, 40002, T0)), Offered::Merged);
    assert_eq!(agg.offer(record(Kind::New, 40003, T0 + 9)), Offered::Merged);
    let flows = agg.drain(usize::MAX);
    assert!(agg.is_empty());
    assert_eq!(flows.len(), 1);
    let r = flows[0].record.as_ref().unwrap();
    assert_eq!(flows[0].connections, 3);
    assert_eq!((r.first_seen_unix_ms, r.time_unix_ms), (T0, T0 + 9));
    assert_eq!(
        r.local.as_ref().unwrap().port,
        0,
        "the client port is dropped"
    );
    assert_eq!(
        r.remote.as_ref().unwrap().port,
        8080,
        "the server port stays"
    );
    assert_eq!(r.counters, None);
}

#[test]
fn ingress_keeps_the_pods_port_and_drops_the_peers() {
    let mut agg = Aggregator::new(16);
    for client in [50000, 50001] {
        let mut r = record(Kind::New, 8080, T0);
        r.direction = Direction::Ingress as i32;
        r.remote.as_mut().unwrap().port = client;
        agg.offer(r);
    }
    let flows = agg.drain(usize::MAX);
    assert_eq!(flows.len(), 1);
    let r = flows[0].record.as_ref().unwrap();
    assert_eq!(r.local.as_ref().unwrap().port, 8080);
    assert_eq!(r.remote.as_ref().unwrap().port, 0);
}

#[test]
fn icmp_echo_ids_are_not_ports() {
    let mut agg = Aggregator::new(16);
    for id in [1, 2, 3] {
        let mut r = record(Kind::New, id, T0);
        r.protocol = 1;
        r.remote.as_mut().unwrap().port = id;
        agg.offer(r);
    }
    assert_eq!(agg.len(), 1);
}

#[test]
fn what_the_key_keeps_stays_apart() {
    let mut agg = Aggregator::new(16);
    agg.offer(record(Kind::New, 40001, T0));
    let mut other_port = record(Kind::New, 40001, T0);
    other_port.remote.as_mut().unwrap().port = 9090;
    agg.offer(other_port);
    let mut denied = record(Kind::New, 40001, T0);
    denied.verdict = Verdict::Deny as i32;
    agg.offer(denied);
    let mut other_labels = record(Kind::New, 40001, T0);
    other_labels
        .remote
        .as_mut()
        .unwrap()
        .labels
        .insert("tier".into(), "db".into());
    agg.offer(other_labels);
    agg.offer(record(Kind::Closed, 40001, T0));
    assert_eq!(agg.len(), 5);
}

#[test]
fn only_closed_records_carry_bytes() {
    let mut agg = Aggregator::new(16);
    agg.offer(record(Kind::New, 40001, T0));
    // The same connection's running totals, then its final ones: only the final count.
    agg.offer(with_counters(record(Kind::Stats, 40001, T0 + 10), 100, T0));
    agg.offer(with_counters(record(Kind::Stats, 40001, T0 + 20), 300, T0));
    agg.offer(with_counters(record(Kind::Closed, 40001, T0 + 30), 500, T0));
    agg.offer(with_counters(
        record(Kind::Closed, 40002, T0 + 40),
        50,
        T0 + 1,
    ));
    let flows = agg.drain(usize::MAX);
    assert_eq!(flows.len(), 3);

    let closed = by_kind(&flows, Kind::Closed);
    assert_eq!(closed.connections, 2);
    let r = closed.record.as_ref().unwrap();
    let c = r.counters.unwrap();
    assert_eq!(
        (c.bytes_from_pod, c.bytes_to_pod, c.packets_to_pod),
        (550, 1100, 4)
    );
    assert_eq!((r.first_seen_unix_ms, r.time_unix_ms), (T0, T0 + 40));

    let stats = by_kind(&flows, Kind::Stats);
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.record.as_ref().unwrap().counters, None);
    assert_eq!(stats.record.as_ref().unwrap().time_unix_ms, T0 + 20);
    assert_eq!(by_kind(&flows, Kind::New).connections, 1);
}

#[test]
fn a_full_aggregator_loses_new_keys_and_still_merges_known_ones() {
    let mut agg = Aggregator::new(2);
    agg.offer(record(Kind::New, 40001, T0));
    agg.offer(record(Kind::Closed, 40001, T0));
    let mut new_key = record(Kind::New, 40001, T0);
    new_key.remote.as_mut().unwrap().port = 9090;
    assert_eq!(agg.offer(new_key.clone()), Offered::Lost);
    assert_eq!(agg.offer(new_key), Offered::Lost);
    assert_eq!(agg.offer(record(Kind::New, 40002, T0)), Offered::Merged);
    assert_eq!((agg.len(), agg.lost()), (2, 2));
    assert_eq!(agg.take_lost(), 2);
    assert_eq!(agg.lost(), 0);
    assert_eq!(by_kind(&agg.drain(usize::MAX), Kind::New).connections, 2);
}

#[test]
fn a_partial_drain_leaves_the_rest_merging() {
    let mut agg = Aggregator::new(16);
    for port in 1..=5 {
        let mut r = record(Kind::New, 40001, T0);
        r.remote.as_mut().unwrap().port = port;
        agg.offer(r);
    }
    let first = agg.drain(2);
    assert_eq!((first.len(), agg.len()), (2, 3));
    let rest = agg.drain(10);
    assert_eq!((rest.len(), agg.len()), (3, 0));
    let mut ports: Vec<u32> = first
        .iter()
        .chain(&rest)
        .map(|f| f.record.as_ref().unwrap().remote.as_ref().unwrap().port)
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [1, 2, 3, 4, 5]);
}

#[test]
fn merging_aggregates_equals_offering_their_records() {
    let records = [
        record(Kind::New, 40001, T0 + 3),
        record(Kind::New, 40002, T0 + 1),
        with_counters(record(Kind::Closed, 40001, T0 + 8), 10, T0 + 3),
    ];
    let mut all = Aggregator::new(16);
    let mut halves = [Aggregator::new(16), Aggregator::new(16)];
    for (i, r) in records.iter().enumerate() {
        all.offer(r.clone());
        halves[i % 2].offer(r.clone());
    }
    let mut merged = Aggregator::new(16);
    for half in &mut halves {
        for flow in half.drain(usize::MAX) {
            merged.merge(flow);
        }
    }
    assert_eq!(
        canonical(all.drain(usize::MAX)),
        canonical(merged.drain(usize::MAX))
    );
}

/// Aggregates in a comparable order: by their encoding (deterministic: labels are ordered).
fn canonical(flows: Vec<AggregatedFlow>) -> Vec<Vec<u8>> {
    let mut encoded: Vec<Vec<u8>> = flows.iter().map(|f| f.encode_to_vec()).collect();
    encoded.sort();
    encoded
}

/// Records from a small space, so that many share keys.
fn any_record() -> impl Strategy<Value = wire::FlowRecord> {
    (
        prop_oneof![
            Just(Kind::New),
            Just(Kind::Rejudged),
            Just(Kind::Stats),
            Just(Kind::Closed)
        ],
        prop_oneof![Just(Direction::Egress), Just(Direction::Ingress)],
        prop_oneof![Just(6u32), Just(17), Just(1)],
        40000u32..40004,
        prop_oneof![Just(53u32), Just(8080)],
        any::<bool>(),
        0i64..100_000,
        0i64..1000,
        0u64..1_000_000,
    )
        .prop_map(
            |(kind, direction, protocol, client, server, deny, time, age, bytes)| {
                let mut r = record(kind, client, T0 + time);
                r.direction = direction as i32;
                r.protocol = protocol;
                if direction == Direction::Ingress {
                    r.local.as_mut().unwrap().port = server;
                    r.remote.as_mut().unwrap().port = client;
                } else {
                    r.remote.as_mut().unwrap().port = server;
                }
                if deny {
                    r.verdict = Verdict::Deny as i32;
                }
                if matches!(kind, Kind::Stats | Kind::Closed) {
                    r = with_counters(r, bytes, T0 + time - age);
                }
                r
            },
        )
}

/// Aggregate `records` in chunks (each chunk's aggregator drained in pieces of `piece`),
/// then merge every chunk's aggregates into one aggregator.
fn split_then_merge(records: &[wire::FlowRecord], chunk: usize, piece: usize) -> Vec<Vec<u8>> {
    let mut merged = Aggregator::new(usize::MAX);
    for part in records.chunks(chunk) {
        let mut agg = Aggregator::new(usize::MAX);
        for r in part {
            agg.offer(r.clone());
        }
        while !agg.is_empty() {
            for flow in agg.drain(piece) {
                merged.merge(flow);
            }
        }
    }
    canonical(merged.drain(usize::MAX))
}

fn closed_bytes(records: impl IntoIterator<Item = wire::FlowRecord>) -> u64 {
    records
        .into_iter()
        .filter(|r| r.kind == Kind::Closed as i32)
        .filter_map(|r| r.counters)
        .map(|c| c.bytes_from_pod + c.bytes_to_pod)
        .sum()
}

proptest! {
    #[test]
    fn any_order_and_split_gives_the_same_aggregates(
        (records, order) in prop::collection::vec(any_record(), 0..60)
            .prop_flat_map(|rs| {
                let n = rs.len();
                (Just(rs), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
            }),
        chunk in 1usize..20,
        piece in 1usize..8,
    ) {
        let mut whole = Aggregator::new(usize::MAX);
        for r in &records {
            whole.offer(r.clone());
        }
        let flows = whole.drain(usize::MAX);

        // Totals: every record is one connection of its kind; CLOSED bytes are all there.
        let connections: u64 = flows.iter().map(|f| f.connections).sum();
        prop_assert_eq!(connections, records.len() as u64);
        let aggregated = flows.iter().filter_map(|f| f.record.clone());
        prop_assert_eq!(closed_bytes(aggregated), closed_bytes(records.iter().cloned()));

        let expected = canonical(flows);
        let shuffled: Vec<_> = order.iter().map(|&i| records[i].clone()).collect();
        prop_assert_eq!(&split_then_merge(&shuffled, chunk, piece), &expected);
        prop_assert_eq!(&split_then_merge(&records, records.len().max(1), piece), &expected);
    }

    #[test]
    fn a_bounded_aggregator_accounts_for_every_record(
        records in prop::collection::vec(any_record(), 0..80),
        max_keys in 1usize..10,
    ) {
        let mut agg = Aggregator::new(max_keys);
        let mut outcomes = [0u64; 3];
        for r in &records {
            outcomes[agg.offer(r.clone()) as usize] += 1;
        }
        prop_assert!(agg.len() <= max_keys);
        prop_assert_eq!(agg.lost(), outcomes[Offered::Lost as usize]);
        prop_assert_eq!(agg.len() as u64, outcomes[Offered::Added as usize]);
        let lost = agg.lost();
        let kept: u64 = agg.drain(usize::MAX).iter().map(|f| f.connections).sum();
        prop_assert_eq!(kept + lost, records.len() as u64);
    }
}
