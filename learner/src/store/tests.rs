use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::baseline::Hour;

const T0: i64 = 1_764_324_000_000; // 2025-11-28T10:00:00Z
const DAY: i64 = DAY_MS;

/// A store in a fresh temporary folder (kept as long as the guard).
fn temp_store() -> (tempfile::TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learner.db");
    let store = Store::open(&path).unwrap();
    (dir, path, store)
}

fn hour(time_ms: i64) -> Hour {
    u32::try_from(time_ms.div_euclid(HOUR_MS)).unwrap()
}

fn workload_rule(b: &mut Batch, workload: &str, peer: &str, port: u16) -> RuleKey {
    RuleKey {
        workload: b.names.intern(workload),
        direction: Direction::Egress,
        protocol: Protocol::Tcp,
        port: Some(port),
        peer: PeerKey::Workload(b.names.intern(peer)),
    }
}

/// A connection of `rule` at `time_ms` from `pod`, with the bytes of its close.
fn conn(b: &mut Batch, rule: RuleKey, time_ms: i64, pod: Option<&str>, bytes: u64) {
    let pod = pod.map(|p| b.names.intern(p));
    let e = b.rules.entry((rule, hour(time_ms))).or_default();
    e.count_connection(time_ms, pod);
    e.bytes += bytes;
}

/// Every kind of rule: all peer kinds, both address families, with and without a DNS name
/// or port, a bucket with bytes but no connection, several hours and days.
fn varied_batch() -> Batch {
    let mut b = Batch::default();
    let api = workload_rule(
        &mut b,
        "shop/Deployment/frontend",
        "shop/Deployment/api",
        8080,
    );
    for i in 0..30 {
        let pod = ["shop/frontend-a", "shop/frontend-b"][i % 2];
        conn(
            &mut b,
            api,
            T0 - 3 * DAY + i as i64 * 7_000_000,
            Some(pod),
            100,
        );
    }
    let service = RuleKey {
        peer: PeerKey::Service(b.names.intern("shop/api")),
        port: Some(80),
        ..api
    };
    conn(&mut b, service, T0, Some("shop/frontend-a"), 0);
    let external = RuleKey {
        peer: PeerKey::External {
            ip: "203.0.113.10".parse().unwrap(),
            dns_name: Some(b.names.intern("payments.example.com")),
        },
        port: Some(443),
        ..api
    };
    conn(&mut b, external, T0 - DAY, None, 5000);
    // Bytes of a connection opened in an earlier hour, closed in this one.
    b.rules.entry((external, hour(T0))).or_default().bytes += 777;
    let external6 = RuleKey {
        peer: PeerKey::External {
            ip: "2001:db8::1".parse().unwrap(),
            dns_name: None,
        },
        protocol: Protocol::Udp,
        port: Some(53),
        ..api
    };
    conn(&mut b, external6, T0 + 1, None, 0);
    let probe = RuleKey {
        direction: Direction::Ingress,
        peer: PeerKey::Host,
        ..api
    };
    conn(&mut b, probe, T0 + 2, None, 0);
    let ping = RuleKey {
        protocol: Protocol::Icmp,
        port: None,
        peer: PeerKey::External {
            ip: "198.51.100.7".parse().unwrap(),
            dns_name: None,
        },
        ..api
    };
    conn(&mut b, ping, T0 + 3, Some("shop/frontend-b"), 64);
    let other = RuleKey {
        protocol: Protocol::Other(47),
        port: None,
        ..ping
    };
    conn(&mut b, other, T0 + 4, None, 0);
    b.unattributed = 3;
    b
}

type RuleView = (String, u64, u64, i64, i64, Vec<u32>, Vec<String>);

/// The baseline with names resolved, sorted: comparable whatever the names' numbers.
fn view(b: &Baseline) -> Vec<RuleView> {
    let mut v: Vec<RuleView> = b
        .rules
        .iter()
        .map(|(k, e)| {
            let peer = match k.peer {
                PeerKey::Workload(w) => format!("workload {}", b.names.get(w)),
                PeerKey::Service(s) => format!("service {}", b.names.get(s)),
                PeerKey::Host => "host".into(),
                PeerKey::External { ip, dns_name } => {
                    format!("external {ip} {:?}", dns_name.map(|n| b.names.get(n)))
                }
            };
            let rule = format!(
                "{} {:?} {:?} {:?} {peer}",
                b.names.get(k.workload),
                k.direction,
                k.protocol,
                k.port
            );
            let mut pods: Vec<String> = e
                .source_pods
                .iter()
                .map(|p| b.names.get(p).to_owned())
                .collect();
            pods.sort();
            (
                rule,
                e.connections,
                e.bytes,
                e.first_seen_ms,
                e.last_seen_ms,
                e.days.iter().collect(),
                pods,
            )
        })
        .collect();
    v.sort();
    v
}

fn folded(batches: &[&Batch]) -> Vec<RuleView> {
    let mut all = Baseline::default();
    for b in batches {
        all.merge(&(*b).clone().into_baseline());
    }
    view(&all)
}

fn checkpoint(offset: u64) -> Checkpoint {
    Checkpoint {
        source: "/var/log/palisade/flows.jsonl".into(),
        fingerprint: vec![1, 2, 3, 4],
        offset,
        records: offset / 100,
    }
}

#[test]
fn a_batch_comes_back_as_the_baseline_it_folds_into() {
    let (_dir, _, mut store) = temp_store();
    let batch = varied_batch();
    store.commit(&batch, None).unwrap();
    let loaded = store.baseline(None).unwrap();
    assert_eq!(view(&loaded), folded(&[&batch]));
    assert_eq!(loaded.len(), 7);
    let stats = store.stats().unwrap();
    assert_eq!(
        (stats.rules, stats.unattributed, stats.checkpoints),
        (7, 3, 0)
    );
    assert_eq!(stats.buckets, stats.hourly_buckets);
    assert_eq!(stats.buckets, batch.len() as u64);
}

#[test]
fn batches_add_up_and_since_keeps_the_recent_buckets() {
    let (_dir, _, mut store) = temp_store();
    let a = varied_batch();
    let mut b = Batch::default();
    b.names
        .intern("an unrelated name first, so the numbers differ");
    let api = workload_rule(
        &mut b,
        "shop/Deployment/frontend",
        "shop/Deployment/api",
        8080,
    );
    conn(&mut b, api, T0 + 10 * DAY, Some("shop/frontend-c"), 1);
    conn(&mut b, api, T0 - 3 * DAY, Some("shop/frontend-a"), 1);
    store.commit(&a, None).unwrap();
    store.commit(&b, None).unwrap();
    assert_eq!(view(&store.baseline(None).unwrap()), folded(&[&a, &b]));

    // Only the new connection's hour overlaps the last day.
    let recent = store.baseline(Some(T0 + 9 * DAY)).unwrap();
    let v = view(&recent);
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].1, v[0].3, v[0].6.clone()),
        (1, T0 + 10 * DAY, vec!["shop/frontend-c".to_owned()])
    );
}

#[test]
fn the_checkpoint_is_committed_with_its_batch_or_not_at_all() {
    let (_dir, path, mut store) = temp_store();
    assert_eq!(
        store.checkpoint("/var/log/palisade/flows.jsonl").unwrap(),
        None
    );
    let batch = varied_batch();
    store.commit(&batch, Some(&checkpoint(1000))).unwrap();
    assert_eq!(
        store.checkpoint("/var/log/palisade/flows.jsonl").unwrap(),
        Some(checkpoint(1000))
    );
    let before = view(&store.baseline(None).unwrap());

    // The commit fails at its last step, the checkpoint: its buckets go too.
    store
        .conn
        .execute_batch(
            "CREATE TEMP TRIGGER crash BEFORE INSERT ON main.checkpoints
             BEGIN SELECT RAISE(ABORT, 'simulated crash'); END",
        )
        .unwrap();
    let err = store.commit(&batch, Some(&checkpoint(2000))).unwrap_err();
    assert!(matches!(err, Error::Sqlite { .. }), "{err:?}");
    assert_eq!(view(&store.baseline(None).unwrap()), before);
    assert_eq!(
        store.checkpoint("/var/log/palisade/flows.jsonl").unwrap(),
        Some(checkpoint(1000))
    );
    store.conn.execute_batch("DROP TRIGGER crash").unwrap();

    // The process dies inside the transaction: written, never committed.
    let tx = store.conn.transaction().unwrap();
    write_batch(&tx, &mut Cache::default(), &batch, Some(&checkpoint(3000))).unwrap();
    std::mem::forget(tx);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(view(&store.baseline(None).unwrap()), before);
    assert_eq!(
        store.checkpoint("/var/log/palisade/flows.jsonl").unwrap(),
        Some(checkpoint(1000))
    );
}

#[test]
fn a_reopened_store_has_everything() {
    let (_dir, path, mut store) = temp_store();
    let batch = varied_batch();
    store.commit(&batch, Some(&checkpoint(1000))).unwrap();
    let stats = store.stats().unwrap();
    drop(store);
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.stats().unwrap(), stats);
    assert_eq!(view(&store.baseline(None).unwrap()), folded(&[&batch]));
    assert_eq!(
        store.checkpoint("/var/log/palisade/flows.jsonl").unwrap(),
        Some(checkpoint(1000))
    );
    // And it goes on adding up.
    store.commit(&batch, Some(&checkpoint(2000))).unwrap();
    assert_eq!(
        view(&store.baseline(None).unwrap()),
        folded(&[&batch, &batch])
    );
    store.check().unwrap();
}

#[test]
fn compaction_merges_hours_into_days_keeps_totals_and_expires_old_rules() {
    let (_dir, _, mut store) = temp_store();
    let mut b = Batch::default();
    let api = workload_rule(
        &mut b,
        "shop/Deployment/frontend",
        "shop/Deployment/api",
        8080,
    );
    // Every 50 minutes for five days, from two pods; the day's first hour included.
    let start = (T0 / DAY - 4) * DAY;
    let mut t = start;
    while t < T0 {
        conn(
            &mut b,
            api,
            t,
            Some(if t % 2 == 0 {
                "shop/frontend-a"
            } else {
                "shop/frontend-b"
            }),
            10,
        );
        t += 50 * 60_000;
    }
    // Seen 40 days ago only.
    let old = workload_rule(&mut b, "shop/Deployment/cron", "shop/Deployment/api", 8080);
    conn(&mut b, old, T0 - 40 * DAY, Some("shop/cron-1"), 10);
    store.commit(&b, None).unwrap();
    let before = view(&store.baseline(None).unwrap());
    let hourly_before = store.stats().unwrap().hourly_buckets;

    let now = T0 + HOUR_MS;
    let keep_all = Retention {
        keep_for: Duration::from_secs(100 * 86_400),
        sources_for: Duration::from_secs(100 * 86_400),
        ..Retention::default()
    };
    let done = store.compact(now, &keep_all).unwrap();
    assert!(done.hourly_merged > 0 && done.daily_written > 0, "{done:?}");
    assert_eq!(done.buckets_deleted + done.rules_deleted, 0);
    let after = view(&store.baseline(None).unwrap());
    assert_eq!(
        after, before,
        "totals, times, days and pods survive compaction"
    );
    assert_eq!(after[1].5.len(), 5, "five days seen");
    let stats = store.stats().unwrap();
    assert_eq!(stats.hourly_buckets + done.hourly_merged, hourly_before);
    assert_eq!(stats.buckets, stats.hourly_buckets + done.daily_written);
    // Only the hours of the last 48 (whole days) stay hourly.
    assert!(stats.hourly_buckets <= 72, "{stats:?}");
    assert_eq!(
        store.compact(now, &keep_all).unwrap(),
        Compacted::default(),
        "idempotent"
    );

    // A late hour of a merged day lands in its day.
    let mut late = Batch::default();
    let api_late = workload_rule(
        &mut late,
        "shop/Deployment/frontend",
        "shop/Deployment/api",
        8080,
    );
    conn(
        &mut late,
        api_late,
        start + 5 * HOUR_MS + 1,
        Some("shop/frontend-z"),
        1,
    );
    store.commit(&late, None).unwrap();
    assert_eq!(store.stats().unwrap().buckets, stats.buckets);
    assert_eq!(view(&store.baseline(None).unwrap()), folded(&[&b, &late]));

    // Thirty days: the old rule, its pod and names go; the rest stays.
    let done = store.compact(now, &Retention::default()).unwrap();
    assert_eq!(
        (
            done.buckets_deleted,
            done.rules_deleted,
            done.sources_deleted
        ),
        (1, 1, 1)
    );
    assert_eq!(
        done.names_deleted, 2,
        "shop/Deployment/cron and shop/cron-1"
    );
    let left = view(&store.baseline(None).unwrap());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, before[1].0);
    assert_eq!(
        store.compact(now, &Retention::default()).unwrap(),
        Compacted::default()
    );

    // Much later: nothing is left but the names of nothing.
    let done = store
        .compact(now + 40 * DAY, &Retention::default())
        .unwrap();
    assert_eq!(done.rules_deleted, 1);
    let stats = store.stats().unwrap();
    assert_eq!(
        (stats.rules, stats.buckets, stats.sources, stats.names),
        (0, 0, 0, 0)
    );
    store.check().unwrap();
}

fn assert_refused_untouched(path: &Path, check: impl Fn(&Error) -> bool) -> String {
    let bytes = std::fs::read(path).unwrap();
    let err = Store::open(path).unwrap_err();
    assert!(check(&err), "{err:?}");
    assert_eq!(std::fs::read(path).unwrap(), bytes, "the file was modified");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    message
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "this is not a database\n".repeat(180)).unwrap();
    let message = assert_refused_untouched(&path, |e| matches!(e, Error::NotADatabase { .. }));
    assert!(message.contains("not an SQLite database"), "{message}");
    // Short, too.
    std::fs::write(&path, "SQLite format 3\0").unwrap();
    let message = assert_refused_untouched(&path, |e| matches!(e, Error::NotADatabase { .. }));
    assert!(message.contains("16 bytes, shorter than"), "{message}");
    // An empty file holds nothing to lose: it becomes a store.
    std::fs::write(&path, "").unwrap();
    drop(Store::open(&path).unwrap());
    drop(Store::open(&path).unwrap());
}

#[test]
fn another_applications_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for wal in [false, true] {
        let path = dir.path().join(format!("app-{wal}.db"));
        let other = Connection::open(&path).unwrap();
        if wal {
            other
                .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                .unwrap();
        }
        other
            .execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');")
            .unwrap();
        drop(other);
        let message = assert_refused_untouched(&path, |e| matches!(e, Error::Foreign { .. }));
        assert!(message.contains("tables users"), "{message}");
    }
    // An empty database of someone else, too.
    let path = dir.path().join("empty.db");
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch("CREATE TABLE t (x); DROP TABLE t;")
        .unwrap();
    drop(other);
    assert_refused_untouched(&path, |e| matches!(e, Error::Foreign { .. }));
}

#[test]
fn a_store_of_another_schema_version_is_refused_and_left_alone() {
    let (_dir, path, mut store) = temp_store();
    store.commit(&varied_batch(), None).unwrap();
    drop(store);
    let raw = Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
        [SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(raw);
    let message = assert_refused_untouched(
        &path,
        |e| matches!(e, Error::SchemaVersion { found, .. } if *found == SCHEMA_VERSION + 1),
    );
    assert!(message.contains("newer"), "{message}");
}

#[test]
fn a_damaged_store_is_an_error_never_a_reset() {
    let (_dir, path, mut store) = temp_store();
    let mut b = Batch::default();
    let api = workload_rule(
        &mut b,
        "shop/Deployment/frontend",
        "shop/Deployment/api",
        8080,
    );
    for i in 0..5000 {
        conn(&mut b, api, T0 + i * HOUR_MS, Some("shop/frontend-a"), 1);
    }
    store.commit(&b, None).unwrap();
    drop(store);
    // Scribble over everything after the first page (the header and the schema).
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 8 * 4096, "{}", bytes.len());
    for (i, byte) in bytes[4096..].iter_mut().enumerate() {
        *byte = (i * 7 % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    let result = Store::open(&path).and_then(|s| {
        s.baseline(None)?;
        s.check()
    });
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("is corrupt"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

fn arbitrary_batch() -> impl Strategy<Value = Vec<(u8, u8, u16, i64, u8, u64)>> {
    // (workload, peer, port, time offset in minutes over 4 days, pod, bytes)
    prop::collection::vec(
        (
            0u8..4,
            0u8..5,
            prop::sample::select(vec![53u16, 80, 443]),
            0i64..(4 * 24 * 60),
            0u8..6,
            0u64..1000,
        ),
        1..60,
    )
}

fn batch_of(entries: &[(u8, u8, u16, i64, u8, u64)]) -> Batch {
    let mut b = Batch::default();
    for &(w, p, port, minute, pod, bytes) in entries {
        let workload = b.names.intern(&format!("ns/Deployment/w{w}"));
        let peer = match p {
            0 => PeerKey::Host,
            1 => PeerKey::Service(b.names.intern("ns/svc")),
            2 => PeerKey::External {
                ip: IpAddr::from([192, 0, 2, w]),
                dns_name: Some(b.names.intern("x.example.com")),
            },
            _ => PeerKey::Workload(b.names.intern(&format!("ns/Deployment/w{p}"))),
        };
        let rule = RuleKey {
            workload,
            direction: Direction::Egress,
            protocol: Protocol::Tcp,
            port: Some(port),
            peer,
        };
        let pod = format!("ns/w{w}-{pod}");
        conn(
            &mut b,
            rule,
            T0 + minute * 60_000,
            (pod.len() % 2 == 0).then_some(pod.as_str()),
            bytes,
        );
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Committing in any number of batches, compacting in between or not, is committing
    /// once.
    #[test]
    fn any_split_gives_the_same_baseline(
        entries in arbitrary_batch(),
        cuts in prop::collection::vec(0usize..60, 0..4),
        compact_between in any::<bool>(),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % entries.len()).collect();
        cuts.push(0);
        cuts.push(entries.len());
        cuts.sort_unstable();
        let whole = batch_of(&entries);
        let (_dir, _, mut store) = temp_store();
        for w in cuts.windows(2) {
            store.commit(&batch_of(&entries[w[0]..w[1]]), None).unwrap();
            if compact_between {
                store.compact(T0 + 5 * DAY, &Retention::default()).unwrap();
            }
        }
        prop_assert_eq!(view(&store.baseline(None).unwrap()), folded(&[&whole]));
    }
}

#[test]
fn what_the_store_remembers_between_commits_never_goes_stale() {
    // Two rules of the same names; the first expires, its names stay.
    let mut old = Batch::default();
    let expiring = workload_rule(
        &mut old,
        "shop/Deployment/frontend",
        "shop/Deployment/api",
        8080,
    );
    let staying = workload_rule(
        &mut old,
        "shop/Deployment/frontend",
        "shop/Deployment/api",
        9090,
    );
    conn(
        &mut old,
        expiring,
        T0 - 40 * DAY,
        Some("shop/frontend-a"),
        1,
    );
    conn(&mut old, staying, T0, Some("shop/frontend-a"), 1);
    let mut again = Batch::default();
    let back = workload_rule(
        &mut again,
        "shop/Deployment/frontend",
        "shop/Deployment/api",
        8080,
    );
    conn(&mut again, back, T0, Some("shop/frontend-b"), 1);

    for another_connection_compacts in [false, true] {
        let (_dir, path, mut store) = temp_store();
        store.commit(&old, None).unwrap();
        let done = if another_connection_compacts {
            Store::open(&path)
                .unwrap()
                .compact(T0, &Retention::default())
                .unwrap()
        } else {
            store.compact(T0, &Retention::default()).unwrap()
        };
        assert_eq!((done.rules_deleted, done.names_deleted), (1, 0));
        // The expired rule comes back: added again, not pointed at where it was.
        store.commit(&again, None).unwrap();
        let mut kept = old.clone();
        kept.rules.retain(|(rule, _), _| *rule == staying);
        assert_eq!(
            view(&store.baseline(None).unwrap()),
            folded(&[&kept, &again])
        );
        assert_eq!(store.stats().unwrap().rules, 2);
    }
}

#[test]
fn a_crash_while_creating_the_store_leaves_a_file_the_next_open_initialises() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learner.db");
    let crashed = dir.path().join("crashed.db");
    // The first transaction of a new file, as a crash in its commit leaves it: all pages
    // written (the header first), the journal of the empty file not yet deleted.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE t (x BLOB);
         INSERT INTO t VALUES (randomblob(10000));",
    )
    .unwrap();
    // The journal as its commit syncs it: with its magic number (written last, so that a
    // journal is never hot before it is whole) and its count of pages, none.
    let mut journal = std::fs::read(dir.path().join("learner.db-journal")).unwrap();
    journal[..8].copy_from_slice(&[0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7]);
    journal[8..12].fill(0);
    std::fs::write(dir.path().join("crashed.db-journal"), journal).unwrap();
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    std::fs::copy(&path, &crashed).unwrap();
    assert!(
        std::fs::read(&crashed)
            .unwrap()
            .starts_with(b"SQLite format 3\0")
    );

    // SQLite rolls the file back to nothing, which is no one's data: it becomes a store.
    let mut store = Store::open(&crashed).unwrap();
    store.commit(&varied_batch(), None).unwrap();
    assert_eq!(store.stats().unwrap().rules, 7);
}

/// Client pods are forgotten after `sources_for`, their rules and counts are not.
#[test]
fn client_pods_age_out_before_the_rules_they_used() {
    let (_dir, _path, mut store) = temp_store();
    let mut b = Batch::default();
    let api = workload_rule(&mut b, "shop/Deployment/web", "shop/Deployment/api", 8080);
    conn(&mut b, api, T0 - 10 * DAY, Some("shop/web-old"), 10);
    conn(&mut b, api, T0 - DAY, Some("shop/web-new"), 10);
    store.commit(&b, None).unwrap();
    let pods = |store: &Store| {
        let baseline = store.baseline(None).unwrap();
        let (_, e) = baseline.sorted()[0];
        let mut pods: Vec<String> = e
            .source_pods
            .iter()
            .map(|p| baseline.names.get(p).to_owned())
            .collect();
        pods.sort();
        (pods, e.connections)
    };
    assert_eq!(
        pods(&store),
        (vec!["shop/web-new".into(), "shop/web-old".into()], 2)
    );
    let done = store.compact(T0, &Retention::default()).unwrap();
    assert_eq!(done.sources_deleted, 1, "{done:?}");
    assert_eq!(pods(&store), (vec!["shop/web-new".into()], 2));
}
