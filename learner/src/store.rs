//! The baseline persisted in SQLite: aggregates, never raw flows, in hourly buckets that
//! compaction folds into days, so a large cluster keeps weeks of baseline in a file of a
//! few hundred megabytes.
//!
//! - A [`Batch`] and the position the learner reached in its source ([`Checkpoint`]) are
//!   committed in one transaction: after a crash the learner rereads from the checkpoint,
//!   and nothing is lost or counted twice.
//! - A file that is not a Palisade store, has another schema version or is damaged is an
//!   [`Error`] naming it and the problem; it is never reset or rewritten.
//! - Buckets are keyed by (hour, rule), not (rule, hour): an hour's commit appends to the
//!   end of the table and compacting a day rewrites one contiguous range, where the other
//!   order would touch every rule's pages on every commit.
//!
//! # Schema (version [`SCHEMA_VERSION`])
//! - `meta(key, value)`: `schema_version`, `merged_before_hour` (every bucket that starts
//!   before it is a day bucket), `sources_cut_day` (the last expiry of client pods),
//!   `unattributed` (records without a pod, in total).
//! - `names(id, name)`: workloads, pods, Services and DNS names, each once; id 0 is none.
//! - `rules(id, workload, direction, protocol, port, peer_kind, peer_name, peer_ip,
//!   dns_name, last_day)`: one row per [`RuleKey`], unique; no NULLs in the key (SQLite
//!   holds NULLs distinct in a UNIQUE constraint): no port is -1, no name 0, no IP an
//!   empty blob. `last_day` is the UTC day of the rule's newest bucket, so expiry needs no
//!   index on buckets by rule (and an hourly commit does not rewrite every rule).
//! - `buckets(start_hour, rule, hours, connections, bytes, first_ms, last_ms)`: `hours` is
//!   1 or 24 (a UTC day), `first_ms`/`last_ms` are offsets from the bucket's start (3 or 4
//!   bytes instead of 6), NULL when the bucket has bytes but no connection.
//! - `sources(pod, rule, last_day)`: client pods, with the last UTC day they were seen (a
//!   day, so hourly commits do not rewrite them); keyed by pod first, as new pods appear
//!   together.
//! - `checkpoints(source, fingerprint, offset_bytes, records)`.

mod error;
#[cfg(test)]
mod tests;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use model::{Direction, Protocol};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use rustc_hash::{FxHashMap, FxHashSet};

pub use self::error::{Error, Result};
use crate::{
    baseline::{Baseline, Batch, HOUR_MS, PeerKey, RuleKey},
    evidence::Evidence,
    intern::Name,
};

/// The schema this build reads and writes; a store of another version is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// The header's application id ("PLSD"): tells a Palisade store from another program's
/// SQLite file before any table is read.
const APPLICATION_ID: i32 = 0x504c_5344;

const DAY_MS: i64 = 24 * HOUR_MS;

const SCHEMA: &str = "
CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE names (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
) STRICT;
CREATE TABLE rules (
    id INTEGER PRIMARY KEY,
    workload INTEGER NOT NULL,
    direction INTEGER NOT NULL,
    protocol INTEGER NOT NULL,
    port INTEGER NOT NULL,
    peer_kind INTEGER NOT NULL,
    peer_name INTEGER NOT NULL,
    peer_ip BLOB NOT NULL,
    dns_name INTEGER NOT NULL,
    last_day INTEGER NOT NULL,
    UNIQUE (workload, direction, protocol, port, peer_kind, peer_name, peer_ip, dns_name)
) STRICT;
CREATE TABLE buckets (
    start_hour INTEGER NOT NULL,
    rule INTEGER NOT NULL,
    hours INTEGER NOT NULL,
    connections INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    first_ms INTEGER,
    last_ms INTEGER,
    PRIMARY KEY (start_hour, rule)
) STRICT, WITHOUT ROWID;
CREATE TABLE sources (
    pod INTEGER NOT NULL,
    rule INTEGER NOT NULL,
    last_day INTEGER NOT NULL,
    PRIMARY KEY (pod, rule)
) STRICT, WITHOUT ROWID;
CREATE TABLE checkpoints (
    source TEXT PRIMARY KEY NOT NULL,
    fingerprint BLOB NOT NULL,
    offset_bytes INTEGER NOT NULL,
    records INTEGER NOT NULL
) STRICT;
";

/// Adds a bucket's counts into the one already there: counts summed, first and last the
/// earliest and latest (NULL: no connection).
const BUCKET_UPSERT: &str = "
INSERT INTO buckets (start_hour, rule, hours, connections, bytes, first_ms, last_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (start_hour, rule) DO UPDATE SET
    connections = connections + excluded.connections,
    bytes = bytes + excluded.bytes,
    first_ms = min(coalesce(first_ms, excluded.first_ms), coalesce(excluded.first_ms, first_ms)),
    last_ms = max(coalesce(last_ms, excluded.last_ms), coalesce(excluded.last_ms, last_ms))";

/// Where a reader of flow records is in one source: everything before `offset` is in the
/// store, committed with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The source, e.g. a file's canonical path.
    pub source: String,
    /// What identifies the source's content from its start (e.g. a hash of its first
    /// record), so a file replaced by another of the same name is read from its start.
    pub fingerprint: Vec<u8>,
    /// Bytes of the source fully counted.
    pub offset: u64,
    /// Records counted.
    pub records: u64,
}

/// How long buckets are kept, and how long at an hour's resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Hourly buckets of UTC days that ended more than this ago are merged into one bucket
    /// per day.
    pub hourly_for: Duration,
    /// Buckets that ended more than this ago are deleted; so are the rules left without
    /// one, and names nothing refers to any more.
    pub keep_for: Duration,
    /// Client pods not seen for this long are forgotten (at most `keep_for`): pod names
    /// change with every rollout, so a month of them would be a third of the store, and a
    /// rule's evidence counts the client pods of its recent past.
    pub sources_for: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            hourly_for: Duration::from_secs(48 * 3600),
            keep_for: Duration::from_secs(30 * 86_400),
            sources_for: Duration::from_secs(7 * 86_400),
        }
    }
}

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Hourly buckets merged into day buckets.
    pub hourly_merged: u64,
    /// Day buckets those became.
    pub daily_written: u64,
    pub buckets_deleted: u64,
    pub rules_deleted: u64,
    pub sources_deleted: u64,
    pub names_deleted: u64,
}

/// What the store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub rules: u64,
    pub buckets: u64,
    /// Of `buckets`, those of one hour (the others are days).
    pub hourly_buckets: u64,
    /// (client pod, rule) pairs.
    pub sources: u64,
    pub names: u64,
    pub checkpoints: u64,
    /// Records that could not be attributed to a workload, since the store was created.
    pub unattributed: u64,
    /// The database's size (WAL not included).
    pub file_bytes: u64,
    /// Of `file_bytes`, free pages that later commits reuse.
    pub free_bytes: u64,
}

/// The learner's store: one SQLite file (and its `-wal` and `-shm` while open).
pub struct Store {
    conn: Connection,
    path: PathBuf,
    cache: Cache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Open the store at `path`, creating it (and its schema) when there is no file or an
    /// empty one. Anything else that is not a Palisade store of [`SCHEMA_VERSION`] is
    /// refused and left as it is.
    ///
    /// Open checks the file's header, the application id and the schema version, in well
    /// under a millisecond. It does not read every page ([`Store::check`] does, at about
    /// half a second per 100 MB, 3 s for a 10,000-workload store): damage elsewhere
    /// surfaces as [`Error::Corrupt`] from the operation that reads it, at the latest
    /// [`Store::baseline`], which reads every name, rule, bucket and client pod.
    pub fn open(path: &Path) -> Result<Store> {
        let fresh = match read_header(path)? {
            None => true,
            Some(header) if header.is_empty() => true,
            Some(header) => {
                check_header(path, &header)?;
                false
            }
        };
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if fresh {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
            cache: Cache::default(),
        };
        let op = "opening";
        store
            .conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(store.err(op))?;
        if fresh || store.check_identity()? == Identity::Empty {
            store.create().map_err(store.err("creating the schema"))?;
        }
        store.configure().map_err(store.err(op))?;
        Ok(store)
    }

    /// The file this store is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| Error::sqlite(&self.path, op, e)
    }

    fn corrupt(&self, problem: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            problem,
            source: None,
        }
    }

    /// The schema, in one transaction before the switch to WAL: a crash leaves an empty
    /// file (which the next open initialises) or a whole store, never half a schema.
    fn create(&mut self) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.execute_batch(SCHEMA)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES
                ('schema_version', ?1), ('merged_before_hour', 0), ('unattributed', 0)",
            [SCHEMA_VERSION],
        )?;
        tx.commit()
    }

    /// Is this an SQLite file of ours, of our schema version? Reads only.
    fn check_identity(&self) -> Result<Identity> {
        let op = "reading the header";
        let app_id: i32 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(self.err(op))?;
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(self.err(op))?;
        if pages == 0 {
            // What a crash during the creating transaction leaves once SQLite has rolled it
            // back: nothing to lose.
            return Ok(Identity::Empty);
        }
        if app_id != APPLICATION_ID {
            let mut tables: Vec<String> = self
                .conn
                .prepare(
                    "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name LIMIT 6",
                )
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(self.err(op))?;
            if tables.len() > 5 {
                tables[5] = "...".into();
            }
            let tables = if tables.is_empty() {
                "no tables".to_owned()
            } else {
                format!("tables {}", tables.join(", "))
            };
            return Err(Error::Foreign {
                path: self.path.clone(),
                what: format!("application id {app_id:#010x}, {tables}"),
            });
        }
        let version: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| match e.sqlite_error_code() {
                // Not a schema change of ours: a version without meta never existed.
                Some(rusqlite::ErrorCode::Unknown) | None => self.corrupt(format!(
                    "it carries Palisade's application id but its meta table cannot be read ({e})"
                )),
                _ => Error::sqlite(&self.path, "reading the schema version", e),
            })?;
        match version {
            Some(SCHEMA_VERSION) => Ok(Identity::Ours),
            Some(found) => Err(Error::SchemaVersion {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            }),
            None => Err(self.corrupt("its meta table has no schema version".into())),
        }
    }

    fn configure(&self) -> rusqlite::Result<()> {
        // Where the file system cannot do WAL, SQLite keeps the rollback journal: slower,
        // as safe.
        let _mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        // A crash may lose the last commits (with their checkpoints), never consistency.
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        // A day's compaction writes a large WAL once; do not keep it that large.
        self.conn
            .pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        // 32 MiB of page cache: the rules and names indexes stay in memory.
        self.conn.pragma_update(None, "cache_size", -32 * 1024)?;
        self.conn.set_prepared_statement_cache_capacity(32);
        Ok(())
    }

    /// Read every page and check its structure (`PRAGMA quick_check`): the whole file, at
    /// about half a second per 100 MB (`examples/store_size.rs`); [`Store::open`] does not.
    pub fn check(&self) -> Result<()> {
        let problems: Vec<String> = self
            .conn
            .prepare("PRAGMA quick_check(10)")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(self.err("checking the file"))?;
        if problems.len() == 1 && problems[0] == "ok" {
            return Ok(());
        }
        Err(self.corrupt(format!("quick_check: {}", problems.join("; "))))
    }

    /// Add `batch` to the store and record `checkpoint`, in one transaction.
    ///
    /// One writer per store: another process committing to the same file is noticed and
    /// safe, but both would count what they read.
    pub fn commit(&mut self, batch: &Batch, checkpoint: Option<&Checkpoint>) -> Result<()> {
        let op = "committing a batch";
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                write_batch(&tx, &mut self.cache, batch, checkpoint)?;
                tx.commit()
            });
        result.map_err(|e| {
            // It may remember rows that were rolled back.
            self.cache = Cache::default();
            Error::sqlite(&self.path, op, e)
        })
    }

    /// Where the learner is in `source`, as last committed.
    pub fn checkpoint(&self, source: &str) -> Result<Option<Checkpoint>> {
        self.conn
            .prepare_cached(
                "SELECT fingerprint, offset_bytes, records FROM checkpoints WHERE source = ?1",
            )
            .and_then(|mut s| {
                s.query_row([source], |r| {
                    Ok(Checkpoint {
                        source: source.to_owned(),
                        fingerprint: r.get(0)?,
                        offset: to_u64(r.get(1)?),
                        records: to_u64(r.get(2)?),
                    })
                })
                .optional()
            })
            .map_err(self.err("reading a checkpoint"))
    }

    /// The rules with a bucket that ends after `since_ms` (all when `None`), each with its
    /// buckets folded: counts summed, first and last seen, the UTC days of its buckets
    /// with connections, and the client pods seen since `since_ms`'s day. A bucket that
    /// straddles `since_ms` counts whole. The names are the baseline's own; it may hold
    /// names no rule uses. `unattributed` is 0: the store counts it in total only
    /// ([`StoreStats::unattributed`]).
    pub fn baseline(&self, since_ms: Option<i64>) -> Result<Baseline> {
        // One read transaction: names, rules and buckets of the same commit.
        let tx = self.conn.unchecked_transaction();
        tx.map_err(Invalid::Sql)
            .and_then(|tx| load(&tx, since_ms.unwrap_or(i64::MIN)))
            .map_err(|e| match e {
                Invalid::Sql(e) => Error::sqlite(&self.path, "loading the baseline", e),
                Invalid::Row(problem) => self.corrupt(problem),
            })
    }

    /// Merge hourly buckets into days and delete what `policy` no longer keeps, as of
    /// `now_ms`, in one transaction. Running it again at the same time changes nothing.
    pub fn compact(&mut self, now_ms: i64, policy: &Retention) -> Result<Compacted> {
        let op = "compacting";
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                let done = compact(&tx, now_ms, policy)?;
                tx.commit()?;
                Ok(done)
            });
        match result {
            Ok(done) => {
                if done.rules_deleted + done.sources_deleted + done.names_deleted > 0 {
                    self.cache = Cache::default();
                }
                Ok(done)
            }
            Err(e) => {
                self.cache = Cache::default();
                Err(Error::sqlite(&self.path, op, e))
            }
        }
    }

    /// What the store holds (counting scans every table: up to a second or so for a
    /// large store).
    pub fn stats(&self) -> Result<StoreStats> {
        let op = "counting";
        let tx = self.conn.unchecked_transaction().map_err(self.err(op))?;
        let count = |sql: &str| -> Result<u64> {
            tx.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(to_u64)
                .map_err(self.err(op))
        };
        let page_size = count("PRAGMA page_size")?;
        Ok(StoreStats {
            rules: count("SELECT count(*) FROM rules")?,
            buckets: count("SELECT count(*) FROM buckets")?,
            hourly_buckets: count(
                "SELECT count(*) FROM buckets WHERE start_hour >=
                    (SELECT value FROM meta WHERE key = 'merged_before_hour') AND hours = 1",
            )?,
            sources: count("SELECT count(*) FROM sources")?,
            names: count("SELECT count(*) FROM names")?,
            checkpoints: count("SELECT count(*) FROM checkpoints")?,
            unattributed: count("SELECT value FROM meta WHERE key = 'unattributed'")?,
            file_bytes: count("PRAGMA page_count")? * page_size,
            free_bytes: count("PRAGMA freelist_count")? * page_size,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    /// A store of this schema version.
    Ours,
    /// An SQLite database without a single page.
    Empty,
}

/// The file's first 100 bytes (SQLite's header), fewer if it is shorter; `None` when
/// there is no file.
fn read_header(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let read = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(e)),
    };
    let mut header = Vec::with_capacity(100);
    file.take(100).read_to_end(&mut header).map_err(read)?;
    Ok(Some(header))
}

fn check_header(path: &Path, header: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"SQLite format 3\0";
    let detail = if !header.starts_with(MAGIC) {
        let start = String::from_utf8_lossy(&header[..header.len().min(16)]);
        format!("it is not an SQLite database (it starts with {start:?})")
    } else if header.len() < 100 {
        format!(
            "it is {} bytes, shorter than an SQLite header",
            header.len()
        )
    } else {
        return Ok(());
    };
    Err(Error::NotADatabase {
        path: path.to_owned(),
        detail,
    })
}

fn write_batch(
    tx: &Transaction<'_>,
    cache: &mut Cache,
    batch: &Batch,
    checkpoint: Option<&Checkpoint>,
) -> rusqlite::Result<()> {
    let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    if cache.data_version != Some(version) {
        // New, or another connection wrote: nothing remembered can be trusted.
        *cache = Cache {
            data_version: Some(version),
            ..Cache::default()
        };
    }
    let merged_before: i64 = tx
        .prepare_cached("SELECT value FROM meta WHERE key = 'merged_before_hour'")?
        .query_row([], |r| r.get(0))?;

    let mut ids = Ids::default();
    // Buckets in key order: appends, and pages touched once.
    let mut buckets = Vec::with_capacity(batch.rules.len());
    for (&(rule, hour), e) in &batch.rules {
        let id = ids.rule(tx, cache, batch, rule)?;
        let hour = i64::from(hour);
        // A late hour of a day already merged goes straight into its day.
        let (start, hours) = if hour < merged_before {
            (hour.div_euclid(24) * 24, 24)
        } else {
            (hour, 1)
        };
        buckets.push((start, id, hours, hour, e));
    }
    buckets.sort_unstable_by_key(|b| (b.0, b.1));

    let mut newest: FxHashMap<i64, i64> = FxHashMap::default();
    let mut sources = Vec::new();
    {
        let mut upsert = tx.prepare_cached(BUCKET_UPSERT)?;
        for &(start, rule, hours, hour, e) in &buckets {
            let offset = (hour - start) * HOUR_MS;
            let seen = e.first_seen_ms != 0;
            let first = seen.then(|| e.first_seen_ms - hour * HOUR_MS + offset);
            let last = seen.then(|| e.last_seen_ms - hour * HOUR_MS + offset);
            upsert.execute(params![
                start,
                rule,
                hours,
                to_i64(e.connections),
                to_i64(e.bytes),
                first,
                last
            ])?;
            let newest = newest.entry(rule).or_default();
            *newest = (*newest).max(start.div_euclid(24));
            let day = if seen {
                e.last_seen_ms.div_euclid(DAY_MS)
            } else {
                hour.div_euclid(24)
            };
            for pod in e.source_pods.iter() {
                sources.push((ids.name(tx, batch, pod)?, rule, day));
            }
        }
    }

    {
        let mut touch =
            tx.prepare_cached("UPDATE rules SET last_day = ?2 WHERE id = ?1 AND last_day < ?2")?;
        let mut newer: Vec<_> = newest
            .into_iter()
            .filter(|(rule, day)| cache.last_day.get(rule).is_none_or(|known| known < day))
            .collect();
        newer.sort_unstable();
        for (rule, day) in newer {
            touch.execute([rule, day])?;
            cache.last_day.insert(rule, day);
        }
    }

    {
        // Newest day per (pod, rule), in key order; those already recorded for the newest
        // day skipped.
        sources.sort_unstable_by(|a, b| (a.0, a.1, b.2).cmp(&(b.0, b.1, a.2)));
        sources.dedup_by_key(|s| (s.0, s.1));
        let mut upsert = tx.prepare_cached(
            "INSERT INTO sources (pod, rule, last_day) VALUES (?1, ?2, ?3)
             ON CONFLICT (pod, rule) DO UPDATE SET last_day = excluded.last_day
             WHERE excluded.last_day > last_day",
        )?;
        for (pod, rule, day) in sources {
            if day == cache.sources_day && cache.sources.contains(&(pod, rule)) {
                continue;
            }
            upsert.execute([pod, rule, day])?;
            if day > cache.sources_day {
                cache.sources_day = day;
                cache.sources.clear();
            }
            if day == cache.sources_day {
                cache.sources.insert((pod, rule));
            }
        }
    }

    if batch.unattributed > 0 {
        tx.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = 'unattributed'")?
            .execute([to_i64(batch.unattributed)])?;
    }

    if let Some(c) = checkpoint {
        tx.prepare_cached(
            "INSERT INTO checkpoints (source, fingerprint, offset_bytes, records)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (source) DO UPDATE SET fingerprint = excluded.fingerprint,
                 offset_bytes = excluded.offset_bytes, records = excluded.records",
        )?
        .execute(params![
            c.source,
            c.fingerprint,
            to_i64(c.offset),
            to_i64(c.records)
        ])?;
    }
    Ok(())
}

/// What the store remembers between commits, so that a steady stream of batches costs
/// little more than its appends: the ids of rules (and the end of their newest bucket) and
/// the client pods already recorded for the newest day. Dropped whenever it may be wrong:
/// after a failed commit, a compaction that deleted anything, or another connection's
/// commit (`PRAGMA data_version`).
#[derive(Default)]
struct Cache {
    data_version: Option<i64>,
    rules: FxHashMap<RuleRow, i64>,
    /// `last_day` by rule id, as stored.
    last_day: FxHashMap<i64, i64>,
    sources_day: i64,
    /// (pod, rule) with `last_day >= sources_day` in the store.
    sources: FxHashSet<(i64, i64)>,
}

/// A batch's names and rules by their ids in the store, looked up or added once per batch.
#[derive(Default)]
struct Ids {
    names: FxHashMap<Name, i64>,
    rules: FxHashMap<RuleKey, i64>,
}

impl Ids {
    fn name(&mut self, tx: &Transaction<'_>, batch: &Batch, name: Name) -> rusqlite::Result<i64> {
        if let Some(&id) = self.names.get(&name) {
            return Ok(id);
        }
        let text = batch.names.get(name);
        let found = tx
            .prepare_cached("SELECT id FROM names WHERE name = ?1")?
            .query_row([text], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => tx
                .prepare_cached("INSERT INTO names (name) VALUES (?1)")?
                .insert([text])?,
        };
        self.names.insert(name, id);
        Ok(id)
    }

    fn rule(
        &mut self,
        tx: &Transaction<'_>,
        cache: &mut Cache,
        batch: &Batch,
        rule: RuleKey,
    ) -> rusqlite::Result<i64> {
        if let Some(&id) = self.rules.get(&rule) {
            return Ok(id);
        }
        let row = RuleRow::encode(rule, &mut |n| self.name(tx, batch, n))?;
        let id = match cache.rules.get(&row) {
            Some(&id) => id,
            None => {
                let key = params![
                    row.workload,
                    row.direction,
                    row.protocol,
                    row.port,
                    row.peer_kind,
                    row.peer_name,
                    row.peer_ip.as_slice(),
                    row.dns_name
                ];
                let found: Option<(i64, i64)> = tx
                    .prepare_cached(
                        "SELECT id, last_day FROM rules WHERE workload = ?1 AND direction = ?2
                         AND protocol = ?3 AND port = ?4 AND peer_kind = ?5 AND peer_name = ?6
                         AND peer_ip = ?7 AND dns_name = ?8",
                    )?
                    .query_row(key, |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let (id, last_day) = match found {
                    Some(found) => found,
                    None => {
                        let id = tx
                            .prepare_cached(
                                "INSERT INTO rules (workload, direction, protocol, port,
                                     peer_kind, peer_name, peer_ip, dns_name, last_day)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)",
                            )?
                            .insert(key)?;
                        (id, 0)
                    }
                };
                cache.rules.insert(row, id);
                cache.last_day.insert(id, last_day);
                id
            }
        };
        self.rules.insert(rule, id);
        Ok(id)
    }
}

const PEER_WORKLOAD: i64 = 0;
const PEER_SERVICE: i64 = 1;
const PEER_HOST: i64 = 2;
const PEER_EXTERNAL: i64 = 3;

/// A rule as stored: names by their ids in `names`, no NULLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RuleRow {
    workload: i64,
    direction: i64,
    protocol: i64,
    port: i64,
    peer_kind: i64,
    peer_name: i64,
    peer_ip: IpBytes,
    dns_name: i64,
}

/// An address's bytes (4 or 16), or none.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
struct IpBytes {
    len: u8,
    bytes: [u8; 16],
}

impl IpBytes {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl RuleRow {
    fn encode(
        rule: RuleKey,
        name: &mut impl FnMut(Name) -> rusqlite::Result<i64>,
    ) -> rusqlite::Result<RuleRow> {
        let none = IpBytes::default();
        let (peer_kind, peer_name, peer_ip, dns_name) = match rule.peer {
            PeerKey::Workload(w) => (PEER_WORKLOAD, name(w)?, none, 0),
            PeerKey::Service(s) => (PEER_SERVICE, name(s)?, none, 0),
            PeerKey::Host => (PEER_HOST, 0, none, 0),
            PeerKey::External { ip, dns_name } => {
                let mut bytes = [0; 16];
                let len = match ip {
                    IpAddr::V4(a) => {
                        bytes[..4].copy_from_slice(&a.octets());
                        4
                    }
                    IpAddr::V6(a) => {
                        bytes = a.octets();
                        16
                    }
                };
                let dns = dns_name.map(&mut *name).transpose()?.unwrap_or(0);
                (PEER_EXTERNAL, 0, IpBytes { len, bytes }, dns)
            }
        };
        Ok(RuleRow {
            workload: name(rule.workload)?,
            direction: match rule.direction {
                Direction::Egress => 0,
                Direction::Ingress => 1,
            },
            protocol: i64::from(rule.protocol.number()),
            port: rule.port.map_or(-1, i64::from),
            peer_kind,
            peer_name,
            peer_ip,
            dns_name,
        })
    }

    /// The id and the row, from `SELECT id, workload, ..., dns_name`; an address that is
    /// neither 0, 4 nor 16 bytes is what is wrong with the row.
    fn read(
        r: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<(i64, std::result::Result<RuleRow, String>)> {
        let id: i64 = r.get(0)?;
        let ip = r.get_ref(7)?.as_blob()?;
        let mut peer_ip = IpBytes::default();
        if !matches!(ip.len(), 0 | 4 | 16) {
            return Ok((id, Err(format!("rule {id} has peer address {ip:?}"))));
        }
        peer_ip.bytes[..ip.len()].copy_from_slice(ip);
        peer_ip.len = ip.len() as u8;
        Ok((
            id,
            Ok(RuleRow {
                workload: r.get(1)?,
                direction: r.get(2)?,
                protocol: r.get(3)?,
                port: r.get(4)?,
                peer_kind: r.get(5)?,
                peer_name: r.get(6)?,
                peer_ip,
                dns_name: r.get(8)?,
            }),
        ))
    }

    /// The rule, or what is wrong with the row.
    fn decode(&self, id: i64, names: &IdMap<Name>) -> std::result::Result<RuleKey, String> {
        let bad =
            |what: &str, value: &dyn std::fmt::Debug| format!("rule {id} has {what} {value:?}");
        let name = |n: i64, what: &str| {
            names.get(n).ok_or_else(|| {
                format!("rule {id} refers to {what} name {n}, which is not in names")
            })
        };
        let direction = match self.direction {
            0 => Direction::Egress,
            1 => Direction::Ingress,
            d => return Err(bad("direction", &d)),
        };
        let protocol = u8::try_from(self.protocol)
            .map(Protocol::from_number)
            .map_err(|_| bad("protocol", &self.protocol))?;
        let port = match self.port {
            -1 => None,
            p => Some(u16::try_from(p).map_err(|_| bad("port", &p))?),
        };
        let peer = match self.peer_kind {
            PEER_WORKLOAD => PeerKey::Workload(name(self.peer_name, "a peer workload's")?),
            PEER_SERVICE => PeerKey::Service(name(self.peer_name, "a Service's")?),
            PEER_HOST => PeerKey::Host,
            PEER_EXTERNAL => PeerKey::External {
                ip: if let Ok(v4) = <[u8; 4]>::try_from(self.peer_ip.as_slice()) {
                    IpAddr::V4(Ipv4Addr::from(v4))
                } else if let Ok(v6) = <[u8; 16]>::try_from(self.peer_ip.as_slice()) {
                    IpAddr::V6(Ipv6Addr::from(v6))
                } else {
                    return Err(bad("peer address", &self.peer_ip.as_slice()));
                },
                dns_name: match self.dns_name {
                    0 => None,
                    n => Some(name(n, "a DNS")?),
                },
            },
            k => return Err(bad("peer kind", &k)),
        };
        Ok(RuleKey {
            workload: name(self.workload, "its workload's")?,
            direction,
            protocol,
            port,
            peer,
        })
    }
}

/// What stops a load: SQLite, or a row that makes no sense.
enum Invalid {
    Sql(rusqlite::Error),
    Row(String),
}

impl From<rusqlite::Error> for Invalid {
    fn from(e: rusqlite::Error) -> Self {
        Invalid::Sql(e)
    }
}

fn load(tx: &Transaction<'_>, since: i64) -> std::result::Result<Baseline, Invalid> {
    let mut out = Baseline::default();

    let mut names = Vec::new();
    {
        let mut s = tx.prepare("SELECT id, name FROM names ORDER BY id")?;
        let mut rows = s.query([])?;
        while let Some(r) = rows.next()? {
            let name = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            names.push((r.get(0)?, out.names.intern(name)));
        }
    }
    let names = IdMap::new(names);

    // Rules by a dense index: buckets come in rule order within each hour, so the
    // evidence is walked in order, not hashed into at random.
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    {
        let mut s = tx.prepare(
            "SELECT id, workload, direction, protocol, port, peer_kind, peer_name,
                    peer_ip, dns_name
             FROM rules ORDER BY id",
        )?;
        let mut rows = s.query([])?;
        while let Some(r) = rows.next()? {
            let (id, row) = RuleRow::read(r)?;
            let key = row.and_then(|row| row.decode(id, &names));
            keys.push(key.map_err(Invalid::Row)?);
            ids.push((id, u32::try_from(ids.len()).expect("fewer than 2^32 rules")));
        }
    }
    let rules = IdMap::new(ids);
    let mut evidence = vec![Evidence::default(); keys.len()];
    let mut found = vec![false; keys.len()];

    let since_hour = since.div_euclid(HOUR_MS);
    {
        let mut s = tx.prepare(
            "SELECT rule, start_hour, connections, bytes, first_ms, last_ms
             FROM buckets WHERE start_hour >= ?1 AND start_hour + hours > ?2",
        )?;
        let mut rows = s.query(params![since_hour.saturating_sub(23), since_hour])?;
        while let Some(r) = rows.next()? {
            let rule: i64 = r.get(0)?;
            let start_hour: i64 = r.get(1)?;
            let Some(at) = rules.get(rule) else {
                return Err(Invalid::Row(format!(
                    "a bucket at hour {start_hour} belongs to rule {rule}, which is not in rules"
                )));
            };
            let at = at as usize;
            found[at] = true;
            let e = &mut evidence[at];
            e.connections += to_u64(r.get(2)?);
            e.bytes += to_u64(r.get(3)?);
            if let (Some(first), Some(last)) =
                (r.get::<_, Option<i64>>(4)?, r.get::<_, Option<i64>>(5)?)
            {
                let start_ms = start_hour * HOUR_MS;
                let (first, last) = (start_ms + first, start_ms + last);
                if e.first_seen_ms == 0 || first < e.first_seen_ms {
                    e.first_seen_ms = first;
                }
                e.last_seen_ms = e.last_seen_ms.max(last);
                e.days.insert(day_of_hour(start_hour));
            }
        }
    }

    {
        let mut s = tx.prepare("SELECT rule, pod FROM sources WHERE last_day >= ?1")?;
        let mut rows = s.query([since.div_euclid(DAY_MS)])?;
        while let Some(r) = rows.next()? {
            let rule: i64 = r.get(0)?;
            if let Some(at) = rules.get(rule).map(|at| at as usize)
                && found[at]
            {
                let pod: i64 = r.get(1)?;
                let pod = names.get(pod).ok_or_else(|| {
                    Invalid::Row(format!(
                        "rule {rule} has client pod {pod}, which is not in names"
                    ))
                })?;
                evidence[at].source_pods.insert(pod);
            }
        }
    }

    for ((key, e), found) in keys.into_iter().zip(evidence).zip(found) {
        if found {
            out.rules.entry(key).or_default().merge(&e);
        }
    }
    Ok(out)
}

/// Store ids to what they stand for in memory: a table when the ids are dense (rowids
/// mostly are), a hash map otherwise.
enum IdMap<T> {
    Dense { first: i64, slots: Vec<Option<T>> },
    Sparse(FxHashMap<i64, T>),
}

impl<T: Copy> IdMap<T> {
    /// From pairs sorted by id.
    fn new(pairs: Vec<(i64, T)>) -> Self {
        let (Some(&(first, _)), Some(&(last, _))) = (pairs.first(), pairs.last()) else {
            return IdMap::Sparse(FxHashMap::default());
        };
        let span = usize::try_from(last.saturating_sub(first)).unwrap_or(usize::MAX);
        if span > 4 * pairs.len() + 1024 {
            return IdMap::Sparse(pairs.into_iter().collect());
        }
        let mut slots = vec![None; span + 1];
        for (id, v) in pairs {
            slots[(id - first) as usize] = Some(v);
        }
        IdMap::Dense { first, slots }
    }

    fn get(&self, id: i64) -> Option<T> {
        match self {
            IdMap::Dense { first, slots } => usize::try_from(id.checked_sub(*first)?)
                .ok()
                .and_then(|i| slots.get(i).copied().flatten()),
            IdMap::Sparse(map) => map.get(&id).copied(),
        }
    }
}

fn compact(tx: &Transaction<'_>, now_ms: i64, policy: &Retention) -> rusqlite::Result<Compacted> {
    let mut done = Compacted::default();
    let meta = |key: &str| -> rusqlite::Result<i64> {
        tx.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
    };
    let set_meta = |key: &str, value: i64| -> rusqlite::Result<()> {
        tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute(params![key, value])
            .map(drop)
    };
    let count = |sql: &str, p: &[i64]| -> rusqlite::Result<u64> {
        tx.prepare_cached(sql)?
            .query_row(rusqlite::params_from_iter(p), |r| r.get::<_, i64>(0))
            .map(to_u64)
    };
    let exec = |sql: &str, p: &[i64]| -> rusqlite::Result<u64> {
        tx.prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(p))
            .map(|n| n as u64)
    };

    // Days that ended before now - hourly_for, from the first not merged yet.
    let hourly_cut = now_ms
        .saturating_sub(to_ms(policy.hourly_for))
        .div_euclid(HOUR_MS);
    let merge_before = hourly_cut.div_euclid(24) * 24;
    let merged_before = meta("merged_before_hour")?;
    if merge_before > merged_before {
        let mut day = merged_before;
        loop {
            // The next day with buckets (days without any cost nothing).
            let next: Option<i64> = tx
                .prepare_cached("SELECT min(start_hour) FROM buckets WHERE start_hour >= ?1")?
                .query_row([day], |r| r.get(0))?;
            match next {
                Some(h) if h < merge_before => day = h.div_euclid(24) * 24,
                _ => break,
            }
            let hourly = count(
                "SELECT count(*) FROM buckets WHERE start_hour >= ?1 AND start_hour < ?1 + 24",
                &[day],
            )?;
            if hourly > 0 {
                // The day's hours after its first into one bucket at the day's start, added
                // to the first hour's bucket where there is one (which is then the day's);
                // offsets move to the day's start.
                exec(
                    "INSERT INTO buckets
                         (start_hour, rule, hours, connections, bytes, first_ms, last_ms)
                     SELECT ?1, rule, 24, sum(connections), sum(bytes),
                            min(first_ms + (start_hour - ?1) * 3600000),
                            max(last_ms + (start_hour - ?1) * 3600000)
                     FROM buckets WHERE start_hour > ?1 AND start_hour < ?1 + 24
                     GROUP BY rule
                     ON CONFLICT (start_hour, rule) DO UPDATE SET
                         hours = 24,
                         connections = connections + excluded.connections,
                         bytes = bytes + excluded.bytes,
                         first_ms = min(coalesce(first_ms, excluded.first_ms),
                                        coalesce(excluded.first_ms, first_ms)),
                         last_ms = max(coalesce(last_ms, excluded.last_ms),
                                       coalesce(excluded.last_ms, last_ms))",
                    &[day],
                )?;
                exec(
                    "UPDATE buckets SET hours = 24 WHERE start_hour = ?1 AND hours = 1",
                    &[day],
                )?;
                exec(
                    "DELETE FROM buckets WHERE start_hour > ?1 AND start_hour < ?1 + 24",
                    &[day],
                )?;
                done.hourly_merged += hourly;
                done.daily_written +=
                    count("SELECT count(*) FROM buckets WHERE start_hour = ?1", &[day])?;
            }
            day += 24;
        }
        set_meta("merged_before_hour", merge_before)?;
    }

    let keep_ms = now_ms.saturating_sub(to_ms(policy.keep_for));
    let cut_hour = keep_ms.div_euclid(HOUR_MS);
    done.buckets_deleted = exec(
        "DELETE FROM buckets WHERE start_hour < ?1 AND start_hour + hours <= ?1",
        &[cut_hour],
    )?;
    // Rules and client pods age by day: a rule whose newest bucket was an hour of a day
    // that is not over keep_for ago yet stays until it is, bucketless (and so out of the
    // baseline) for at most a day.
    let cut_day = keep_ms.div_euclid(DAY_MS);
    done.rules_deleted = exec("DELETE FROM rules WHERE last_day < ?1", &[cut_day])?;
    // Scan the client pods when a day has passed since the last scan or rules went away,
    // not on every compaction.
    let sources_ms = now_ms.saturating_sub(to_ms(policy.sources_for.min(policy.keep_for)));
    let sources_cut = sources_ms.div_euclid(DAY_MS);
    if done.rules_deleted > 0
        || sources_cut > meta("sources_cut_day").optional()?.unwrap_or(i64::MIN)
    {
        done.sources_deleted = exec(
            "DELETE FROM sources WHERE last_day < ?1 OR rule NOT IN (SELECT id FROM rules)",
            &[sources_cut],
        )?;
        set_meta("sources_cut_day", sources_cut)?;
    }
    if done.rules_deleted > 0 || done.sources_deleted > 0 {
        done.names_deleted = exec(
            "DELETE FROM names WHERE id NOT IN (
                 SELECT workload FROM rules UNION ALL SELECT peer_name FROM rules
                 UNION ALL SELECT dns_name FROM rules)
             AND NOT EXISTS (SELECT 1 FROM sources WHERE pod = names.id)",
            &[],
        )?;
    }
    Ok(done)
}

fn day_of_hour(hour: i64) -> u32 {
    u32::try_from(hour.div_euclid(24)).unwrap_or(0)
}

fn to_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Counts beyond i64 (SQLite's integers) saturate; they never get there.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
