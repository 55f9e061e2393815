//! Files of flow records into the store: read from where the last run stopped, aggregated
//! per hour, committed in batches together with how far the file was read, so a restart
//! neither loses nor double counts a record.
//!
//! A source is a file, named by its canonical path and recognised by its first bytes: an
//! agent's output file that was rotated (new content at its start) is read from the
//! beginning again. Records that do not parse are skipped, counted, and the first few
//! reported with where they are; a file that is not a file of flow records stops with an
//! error. A record cut short at the end (a writer still writing it) is left for the next
//! run (`palisade learn --follow` polls).

use std::{
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use model::wire::{FlowReader, Format, ReadError};

use crate::{
    baseline::Batch,
    observation::Observation,
    record_view::RecordView,
    store::{self, Checkpoint, Store},
};

/// Bytes of a file's start that identify it.
const FINGERPRINT_BYTES: usize = 64;

/// Errors kept in a report; more are only counted.
pub(crate) const ERRORS_KEPT: usize = 5;

#[derive(Clone, Debug)]
pub struct Options {
    /// Records aggregated in memory before a commit.
    pub batch_records: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batch_records: 2_000_000,
        }
    }
}

/// How far ingestion got, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the file read.
    pub position: u64,
    pub size: u64,
    /// Records read in this run.
    pub records: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub source: String,
    pub format: Option<Format>,
    /// Where this run started: 0, or where the last run stopped.
    pub resumed_from: u64,
    /// The file's start changed since the last run (rotated or replaced): read again from 0.
    pub restarted: bool,
    /// Where this run stopped (everything before it is in the store).
    pub position: u64,
    /// Records read before this run, in this run, and those that could not be read or
    /// attributed.
    pub records_before: u64,
    pub records: u64,
    pub bad: u64,
    pub unattributed: u64,
    pub errors: Vec<String>,
    /// The file ends inside a record (a writer is still writing it).
    pub truncated_tail: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Read `path` into `store`, from where the last run stopped.
pub fn ingest_file(
    store: &mut Store,
    path: &Path,
    options: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let source = path.canonicalize().map_err(io)?.display().to_string();
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut fingerprint = Vec::with_capacity(FINGERPRINT_BYTES);
    (&mut file)
        .take(FINGERPRINT_BYTES as u64)
        .read_to_end(&mut fingerprint)
        .map_err(io)?;
    let last = store.checkpoint(&source)?;
    let (start, records_before) = match &last {
        Some(c) if c.fingerprint == fingerprint && c.offset <= size => (c.offset, c.records),
        _ => (0, 0),
    };
    let mut report = Report {
        source: source.clone(),
        resumed_from: start,
        restarted: last.is_some() && start == 0,
        position: start,
        records_before,
        ..Report::default()
    };
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut reader = FlowReader::resume(
        BufReader::with_capacity(1 << 20, file),
        path.display().to_string(),
        start,
    );
    let mut batch = Batch::default();
    let mut in_batch = 0u64;
    let mut checkpoint = Checkpoint {
        source,
        fingerprint,
        offset: start,
        records: records_before,
    };
    let mut view = RecordView::default();
    let json = reader.detect_format()? == Some(Format::JsonLines);
    loop {
        let read = if json {
            reader.next_record().map(|r| {
                r.map(|record| Observation::from_record(&record).map(|o| batch.observe(&o)))
            })
        } else {
            reader
                .next_frame(|bytes| view.decode(bytes))
                .map(|more| more.then(|| view.observation().map(|o| batch.observe(&o))))
        };
        match read {
            Ok(None) => break,
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(bad))) => report.note_bad(format!(
                "{}: record {}: {bad}",
                reader.name(),
                reader.records()
            )),
            Err(e) if e.is_truncated() => {
                report.truncated_tail = true;
                break;
            }
            Err(e @ ReadError::TooLong { .. }) | Err(e @ ReadError::Io { .. }) => {
                commit(store, &mut batch, &mut checkpoint, &reader, &mut report)?;
                return Err(e.into());
            }
            Err(e) => report.note_bad(e.to_string()),
        }
        report.records += 1;
        in_batch += 1;
        if in_batch >= options.batch_records {
            commit(store, &mut batch, &mut checkpoint, &reader, &mut report)?;
            in_batch = 0;
            progress(&Progress {
                position: reader.position(),
                size,
                records: report.records,
            });
        }
    }
    report.format = reader.format();
    commit(store, &mut batch, &mut checkpoint, &reader, &mut report)?;
    progress(&Progress {
        position: reader.position(),
        size,
        records: report.records,
    });
    Ok(report)
}

/// Persist the batch with how far the file was read, in one transaction.
fn commit<R: std::io::BufRead>(
    store: &mut Store,
    batch: &mut Batch,
    checkpoint: &mut Checkpoint,
    reader: &FlowReader<R>,
    report: &mut Report,
) -> Result<(), Error> {
    checkpoint.records = report.records_before + reader.records();
    checkpoint.offset = reader.position();
    report.unattributed += batch.unattributed;
    store.commit(batch, Some(checkpoint))?;
    batch.clear();
    report.position = reader.position();
    Ok(())
}

impl Report {
    fn note_bad(&mut self, error: String) {
        self.bad += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(error);
        }
    }
}
