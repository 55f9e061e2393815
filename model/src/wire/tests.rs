use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message as _;

use super::*;

/// A `stats` record as the agent writes it, with every field set.
const STATS: &str = r#"{
    "time": "2026-11-28T10:00:05.250Z",
    "first_seen": "2026-11-28T09:59:58.001Z",
    "kind": "stats",
    "interface": "pl-demo-1",
    "ifindex": 7,
    "endpoint": 7,
    "direction": "egress",
    "protocol": "tcp",
    "local": {
        "ip": "10.244.0.2", "port": 40000, "pod": "shop/frontend-0",
        "workload": "shop/StatefulSet/frontend",
        "labels": {"app": "frontend", "io.kubernetes.pod.namespace": "shop"}
    },
    "remote": {
        "ip": "10.96.0.10", "port": 8080, "pod": "shop/api-1", "service": "shop/api",
        "dns_name": "api.shop.svc.cluster.local", "workload": "shop/Deployment/api",
        "labels": {"app": "api"}
    },
    "verdict": "allow",
    "mode": "enforce",
    "rule": 3,
    "policy": "shop/api-allow ingress[0]",
    "counters": {
        "packets_from_pod": 10, "bytes_from_pod": 1500,
        "packets_to_pod": 8, "bytes_to_pod": 9000
    }
}"#;

/// A `new` record with as little as a record has: IPv6, a protocol without a name.
const NEW: &str = r#"{
    "time": "2026-11-28T10:00:00.000Z",
    "kind": "new",
    "interface": "pl-demo-2",
    "ifindex": 8,
    "endpoint": 8,
    "direction": "ingress",
    "protocol": 47,
    "local": {"ip": "fd00:10:244::2", "port": 0},
    "remote": {"ip": "2001:db8::1", "port": 0},
    "verdict": "would-deny",
    "mode": "monitor",
    "reason": "no-rule"
}"#;

fn record(json: &str) -> FlowRecord {
    serde_json::from_str(json).unwrap()
}

fn round_trip(r: &FlowRecord) -> FlowRecord {
    let bytes = v1::FlowRecord::from(r).encode_to_vec();
    let decoded = v1::FlowRecord::decode(bytes.as_slice()).unwrap();
    FlowRecord::try_from(decoded).unwrap()
}

#[test]
fn json_records_survive_protobuf() {
    for json in [STATS, NEW] {
        let r = record(json);
        assert_eq!(round_trip(&r), r, "{json}");
    }
}

#[test]
fn the_wire_form_says_what_the_json_says() {
    let msg = v1::FlowRecord::from(&record(STATS));
    assert_eq!(msg.time_unix_ms, 1_795_860_005_250);
    assert_eq!(msg.first_seen_unix_ms, 1_795_859_998_001);
    assert_eq!(msg.kind(), v1::Kind::Stats);
    assert_eq!(msg.direction(), v1::Direction::Egress);
    assert_eq!(msg.protocol, 6);
    assert_eq!(msg.reason(), v1::Reason::Unspecified, "absent reason");
    let remote = msg.remote.as_ref().unwrap();
    assert_eq!(remote.ip, [10, 96, 0, 10], "network byte order");
    assert_eq!(remote.service, "shop/api");
    assert_eq!(msg.local.as_ref().unwrap().service, "", "absent = empty");
    assert_eq!(msg.counters.unwrap().bytes_to_pod, 9000);

    let new = v1::FlowRecord::from(&record(NEW));
    assert_eq!(
        new.first_seen_unix_ms, new.time_unix_ms,
        "a new connection was first seen now"
    );
    assert_eq!(new.local.unwrap().ip.len(), 16);
    assert_eq!(new.protocol, 47);
    assert_eq!(new.rule, 0);
    assert!(new.counters.is_none());
}

#[test]
fn rejudged_records_do_not_know_when_the_connection_began() {
    let mut r = record(NEW);
    r.kind = FlowKind::Rejudged;
    let msg = v1::FlowRecord::from(&r);
    assert_eq!(msg.first_seen_unix_ms, 0);
    assert_eq!(FlowRecord::try_from(msg).unwrap(), r);
}

fn wire(json: &str) -> v1::FlowRecord {
    v1::FlowRecord::from(&record(json))
}

#[test]
fn bad_wire_records_name_the_field_and_value() {
    let mut msg = wire(STATS);
    msg.remote.as_mut().unwrap().ip = vec![10, 0, 0];
    let err = FlowRecord::try_from(msg).unwrap_err();
    assert_eq!(
        err,
        ConvertError::IpLength {
            field: "remote.ip",
            len: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "field remote.ip: an address is 4 or 16 bytes, not 3"
    );

    let mut msg = wire(STATS);
    msg.direction = 0;
    assert_eq!(
        FlowRecord::try_from(msg).unwrap_err().to_string(),
        "field direction is unspecified (0)"
    );

    let mut msg = wire(STATS);
    msg.verdict = 42;
    assert_eq!(
        FlowRecord::try_from(msg).unwrap_err(),
        ConvertError::UnknownEnum {
            field: "verdict",
            value: 42
        }
    );

    let mut msg = wire(STATS);
    msg.local.as_mut().unwrap().port = 70_000;
    assert_eq!(
        FlowRecord::try_from(msg).unwrap_err().to_string(),
        "field local.port: 70000 is out of range (at most 65535)"
    );

    let mut msg = wire(STATS);
    msg.protocol = 256;
    assert!(matches!(
        FlowRecord::try_from(msg).unwrap_err(),
        ConvertError::OutOfRange {
            field: "protocol",
            value: 256,
            ..
        }
    ));

    let mut msg = wire(STATS);
    msg.remote = None;
    assert_eq!(
        FlowRecord::try_from(msg).unwrap_err(),
        ConvertError::Missing { field: "remote" }
    );

    for (time, bad) in [(0, 0), (-5, -5), (END_OF_TIME_MS, END_OF_TIME_MS)] {
        let mut msg = wire(STATS);
        msg.time_unix_ms = time;
        assert_eq!(
            FlowRecord::try_from(msg).unwrap_err(),
            ConvertError::Time {
                field: "time_unix_ms",
                value: bad
            }
        );
    }
}

#[test]
fn the_last_millisecond_humantime_writes_is_a_time() {
    let mut msg = wire(STATS);
    msg.time_unix_ms = END_OF_TIME_MS - 1;
    assert_eq!(
        FlowRecord::try_from(msg).unwrap().time,
        "9999-12-31T23:59:59.999Z"
    );
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    let name = || proptest::option::of("[a-z]{1,8}/[a-z0-9-]{1,12}");
    (
        any::<IpAddr>(),
        any::<u16>(),
        name(),
        name(),
        name(),
        name(),
        proptest::collection::btree_map("[a-z./]{1,10}", "[a-z0-9]{0,6}", 0..4),
    )
        .prop_map(
            |(ip, port, pod, dns_name, service, workload, labels)| Peer {
                ip,
                port,
                pod,
                dns_name,
                service,
                workload,
                labels,
            },
        )
}

fn arb_time() -> impl Strategy<Value = String> {
    (1..END_OF_TIME_MS).prop_map(|ms| rfc3339("test", ms).unwrap())
}

prop_compose! {
    fn arb_record()(
        time in arb_time(),
        first_seen in proptest::option::of(arb_time()),
        kind in prop_oneof![
            Just(FlowKind::New),
            Just(FlowKind::Rejudged),
            Just(FlowKind::Stats),
            Just(FlowKind::Closed),
        ],
        interface in "[a-z0-9-]{0,15}",
        ifindex in any::<u32>(),
        endpoint in any::<u32>(),
        egress in any::<bool>(),
        protocol in any::<u8>(),
        local in arb_peer(),
        remote in arb_peer(),
        verdict in prop_oneof![Just(Verdict::Allow), Just(Verdict::Deny), Just(Verdict::WouldDeny)],
        mode in prop_oneof![Just(Mode::Learn), Just(Mode::Monitor), Just(Mode::Enforce)],
        rule in proptest::option::of(1..u32::MAX),
        policy in proptest::option::of("[a-z/ \\[\\]0-9-]{1,20}"),
        reason in proptest::option::of(prop_oneof![
            Just(Reason::Rule), Just(Reason::Open), Just(Reason::Host), Just(Reason::Learn),
            Just(Reason::NoRule), Just(Reason::Spoofed), Just(Reason::Unclassified),
            Just(Reason::Fragment), Just(Reason::Itself),
        ]),
        counters in proptest::option::of(any::<[u64; 4]>()),
    ) -> FlowRecord {
        // The one thing the wire form cannot say: a `new` record first seen at its own time
        // (the JSON form leaves that out).
        let first_seen = first_seen.filter(|t| kind != FlowKind::New || *t != time);
        FlowRecord {
            time,
            first_seen,
            kind,
            interface,
            ifindex,
            endpoint,
            direction: if egress { Direction::Egress } else { Direction::Ingress },
            protocol: Protocol::from_number(protocol),
            local,
            remote,
            verdict,
            mode,
            rule,
            policy,
            reason,
            counters: counters.map(|[a, b, c, d]| Counters {
                packets_from_pod: a,
                bytes_from_pod: b,
                packets_to_pod: c,
                bytes_to_pod: d,
            }),
        }
    }
}

proptest! {
    #[test]
    fn every_record_survives_protobuf(r in arb_record()) {
        prop_assert_eq!(round_trip(&r), r);
    }
}

#[test]
fn labels_move_in_order() {
    let mut r = record(STATS);
    r.local.labels = BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]);
    let msg = v1::FlowRecord::from(r);
    let keys: Vec<_> = msg.local.unwrap().labels.into_keys().collect();
    assert_eq!(keys, ["a", "b"]);
}
