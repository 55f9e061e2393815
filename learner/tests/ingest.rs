//! Ingesting files into the store: resumed where the last run stopped, records cut short
//! by a writer left for the next run, a rotated file read again, nothing counted twice.

use std::{fs::OpenOptions, io::Write as _, path::Path};

use learner::{
    ingest::{Options, Report, ingest_file},
    store::Store,
};
use model::{
    FlowRecord,
    wire::{FlowWriter, Format},
};

fn record(n: u64) -> FlowRecord {
    let mut r: FlowRecord = serde_json::from_str(
        r#"{"time":"2026-11-28T10:00:00.000Z","kind":"new","interface":"pl-x-1",
            "ifindex":7,"endpoint":7,"direction":"egress","protocol":"tcp",
            "local":{"ip":"10.244.0.2","port":40001,"pod":"shop/web-a",
                     "workload":"shop/Deployment/web","labels":{"app":"web"}},
            "remote":{"ip":"10.244.0.3","port":8080,"pod":"shop/api-a",
                      "workload":"shop/Deployment/api"},
            "verdict":"allow","mode":"learn","reason":"learn"}"#,
    )
    .unwrap();
    r.local.port = 40_000 + n as u16;
    r
}

fn encoded(format: Format, from: u64, to: u64) -> Vec<u8> {
    let mut w = FlowWriter::new(Vec::new(), format);
    for n in from..to {
        w.write(&record(n)).unwrap();
    }
    w.into_inner()
}

fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn ingest(store: &mut Store, path: &Path) -> Report {
    ingest_file(store, path, &Options::default(), &mut |_| {}).unwrap()
}

fn connections(store: &Store) -> u64 {
    store
        .baseline(None)
        .unwrap()
        .rules
        .values()
        .map(|e| e.connections)
        .sum()
}

fn follows_a_growing_file(format: Format) {
    let dir = tempfile::tempdir().unwrap();
    let (flows, db) = (dir.path().join("flows"), dir.path().join("baseline.db"));
    let mut store = Store::open(&db).unwrap();
    append(&flows, &encoded(format, 0, 3));
    let first = ingest(&mut store, &flows);
    assert_eq!((first.records, first.format), (3, Some(format)));
    assert_eq!(connections(&store), 3);

    // Two more records and half of a third, as a writer leaves them mid-write.
    let more = encoded(format, 3, 6);
    let third = encoded(format, 5, 6).len();
    let cut = more.len() - third / 2;
    append(&flows, &more[..cut]);
    let second = ingest(&mut store, &flows);
    assert_eq!(second.records, 2, "{second:?}");
    assert!(second.truncated_tail, "{second:?}");
    assert_eq!(connections(&store), 5);

    // The writer finishes; a restarted learner (a new store handle) goes on from there.
    append(&flows, &more[cut..]);
    drop(store);
    let mut store = Store::open(&db).unwrap();
    let third_run = ingest(&mut store, &flows);
    assert_eq!((third_run.records, third_run.truncated_tail), (1, false));
    assert_eq!(connections(&store), 6);
    assert_eq!(ingest(&mut store, &flows).records, 0, "nothing new");
    assert_eq!(connections(&store), 6, "nothing counted twice");

    // The agent's file was rotated: new content from its start is read from its start.
    std::fs::write(&flows, encoded(format, 100, 102)).unwrap();
    let rotated = ingest(&mut store, &flows);
    assert!(rotated.restarted, "{rotated:?}");
    assert_eq!(rotated.records, 2);
    assert_eq!(connections(&store), 8);
}

#[test]
fn json_lines_are_followed_and_never_counted_twice() {
    follows_a_growing_file(Format::JsonLines);
}

#[test]
fn protobuf_is_followed_and_never_counted_twice() {
    follows_a_growing_file(Format::Protobuf);
}

#[test]
fn bad_records_are_skipped_counted_and_located() {
    let dir = tempfile::tempdir().unwrap();
    let (flows, db) = (
        dir.path().join("flows.jsonl"),
        dir.path().join("baseline.db"),
    );
    let mut text = encoded(Format::JsonLines, 0, 2);
    text.extend_from_slice(b"{\"time\": \"not a flow record\"}\n");
    text.extend_from_slice(&encoded(Format::JsonLines, 2, 3));
    std::fs::write(&flows, text).unwrap();
    let mut store = Store::open(&db).unwrap();
    let report = ingest(&mut store, &flows);
    assert_eq!((report.records, report.bad), (4, 1), "{report:?}");
    assert!(
        report.errors[0].contains("flows.jsonl: line 3"),
        "{:?}",
        report.errors
    );
    assert_eq!(connections(&store), 3);
}
