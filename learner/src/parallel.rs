//! A whole file of protobuf flow records read on every core: one thread cuts the file into
//! chunks of whole records, the others decode and aggregate them, each into a baseline of
//! its own, merged at the end. For reading a file at once (replay, benchmarks); `ingest`
//! reads one record after another because it commits where it stops. JSON lines are read
//! on one thread.

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
};

use model::wire::{FlowReader, Format, ReadError};

use crate::{
    baseline::{Baseline, Batch},
    ingest::ERRORS_KEPT,
    observation::{BadRecord, Observation},
    record_view::RecordView,
};

/// Bytes of records handed to a worker at once.
const CHUNK_BYTES: usize = 4 << 20;
/// Records a worker aggregates per hour-keyed batch before folding it into its baseline.
const BATCH_RECORDS: u64 = 2_000_000;

/// What a file held.
#[derive(Debug, Default)]
pub struct FileBaseline {
    pub baseline: Baseline,
    pub records: u64,
    /// Records that could not be read, and the first few problems.
    pub bad: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Read `path` on `threads` worker threads (at least one).
pub fn read_file(path: &Path, threads: usize) -> Result<FileBaseline, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    let name = path.display().to_string();
    let mut reader = FlowReader::new(BufReader::with_capacity(1 << 20, file), name.clone());
    if reader.detect_format()? == Some(Format::JsonLines) {
        return read_json(&mut reader);
    }
    let (send, receive) = mpsc::sync_channel::<Vec<u8>>(threads.max(1) * 2);
    let receive = Arc::new(Mutex::new(receive));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let receive = Arc::clone(&receive);
                let name = name.clone();
                scope.spawn(move || aggregate(&receive, &name))
            })
            .collect();
        let cut = cut_chunks(&mut reader, &send);
        drop(send);
        let mut out = FileBaseline::default();
        for worker in workers {
            let part = worker.join().expect("a reading thread panicked");
            out.baseline.merge(&part.baseline);
            out.records += part.records;
            out.bad += part.bad;
            out.errors.extend(part.errors);
        }
        cut?;
        out.errors.truncate(ERRORS_KEPT);
        Ok(out)
    })
}

/// Cut the input into chunks of whole records: `[u32 length, little endian][message]...`.
fn cut_chunks<R: std::io::BufRead>(
    reader: &mut FlowReader<R>,
    send: &mpsc::SyncSender<Vec<u8>>,
) -> Result<(), Error> {
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
    loop {
        let more = match reader.next_frame(|bytes| {
            chunk.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            chunk.extend_from_slice(bytes);
            Ok(())
        }) {
            Ok(more) => more,
            // A record cut short at the end: a writer is still writing it.
            Err(e) if e.is_truncated() => false,
            Err(e) => return Err(e.into()),
        };
        if chunk.len() >= CHUNK_BYTES || (!more && !chunk.is_empty()) {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES + 4096));
            if send.send(full).is_err() {
                break;
            }
        }
        if !more {
            return Ok(());
        }
    }
    Ok(())
}

/// A worker: decode and aggregate chunks until there are no more.
fn aggregate(receive: &Mutex<mpsc::Receiver<Vec<u8>>>, name: &str) -> FileBaseline {
    let mut out = FileBaseline::default();
    let mut batch = Batch::default();
    let mut view = RecordView::default();
    loop {
        let Ok(chunk) = receive.lock().expect("the queue's lock").recv() else {
            break;
        };
        let mut rest = &chunk[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let (message, next) = rest[4..].split_at(len);
            rest = next;
            out.records += 1;
            let read = view
                .decode(message)
                .map_err(|e| e.to_string())
                .and_then(|()| view.observation().map_err(|e: BadRecord| e.to_string()));
            match read {
                Ok(obs) => batch.observe(&obs),
                Err(e) => out.note(format!("{name}: {e}")),
            }
            if out.records.is_multiple_of(BATCH_RECORDS) {
                out.baseline.merge_batch(&batch);
                batch.clear();
            }
        }
    }
    out.baseline.merge_batch(&batch);
    out
}

fn read_json<R: std::io::BufRead>(reader: &mut FlowReader<R>) -> Result<FileBaseline, Error> {
    let mut out = FileBaseline::default();
    let mut batch = Batch::default();
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(record)) => match Observation::from_record(&record) {
                Ok(obs) => batch.observe(&obs),
                Err(e) => out.note(format!(
                    "{}: record {}: {e}",
                    reader.name(),
                    reader.records()
                )),
            },
            Err(e) if e.is_truncated() => break,
            Err(e @ (ReadError::TooLong { .. } | ReadError::Io { .. })) => return Err(e.into()),
            Err(e) => out.note(e.to_string()),
        }
        out.records += 1;
    }
    out.baseline.merge_batch(&batch);
    Ok(out)
}

impl FileBaseline {
    fn note(&mut self, error: String) {
        self.bad += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use model::wire::FlowWriter;

    use super::*;

    fn records(n: u64, format: Format) -> Vec<u8> {
        let mut w = FlowWriter::new(Vec::new(), format);
        for i in 0..n {
            let mut r: model::FlowRecord = serde_json::from_str(
                r#"{"time":"2026-11-28T10:00:00.000Z","kind":"new","interface":"pl-x-1",
                    "ifindex":7,"endpoint":7,"direction":"egress","protocol":"tcp",
                    "local":{"ip":"10.244.0.2","port":40001,"pod":"shop/web-a",
                             "workload":"shop/Deployment/web"},
                    "remote":{"ip":"10.244.0.3","port":8080,"pod":"shop/api-a",
                              "workload":"shop/Deployment/api"},
                    "verdict":"allow","mode":"learn","reason":"learn"}"#,
            )
            .unwrap();
            r.remote.port = 8080 + (i % 3) as u16;
            w.write(&r).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn every_thread_count_and_format_reads_the_same_baseline() {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Protobuf, Format::JsonLines] {
            let path = dir.path().join(format.name());
            // Enough for several chunks.
            std::fs::write(&path, records(30_000, format)).unwrap();
            for threads in [1, 2, 3] {
                let read = read_file(&path, threads).unwrap();
                assert_eq!((read.records, read.bad), (30_000, 0), "{format} {threads}");
                let mut by_port: Vec<(Option<u16>, u64)> = read
                    .baseline
                    .rules
                    .iter()
                    .map(|(k, e)| (k.port, e.connections))
                    .collect();
                by_port.sort();
                assert_eq!(
                    by_port,
                    [
                        (Some(8080), 10_000),
                        (Some(8081), 10_000),
                        (Some(8082), 10_000)
                    ],
                    "{format} {threads}"
                );
            }
        }
    }
}
