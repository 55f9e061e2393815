//! How large and how fast the learner's store is for a large cluster's 30-day baseline.
//!
//! `cargo run --release -p learner --example store_size -- [--workloads N] [--days D]
//! [--rollout-every DAYS] [--keep PATH]`
//!
//! Each workload has 8 egress rules (6 to workloads, 1 to a Service, 1 to an external
//! name) and 8 ingress rules (from the workloads that call it); each workload runs 3 pods,
//! renamed every day by default (a daily rollout: the worst case for client pods and
//! names). The
//! last 48 hours have a bucket per rule and hour, committed an hour at a time; older days
//! have connections in 4 hours per rule, compacted into days as the learner would, once a
//! day. Prints what the store holds, its size, and the time to commit, compact, count,
//! check and load it.

use std::{
    error::Error,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use learner::{
    baseline::{Batch, HOUR_MS, PeerKey, RuleKey},
    evidence::Evidence,
    store::{Compacted, Retention, Store},
};
use model::{Direction, Protocol};

const DAY_MS: i64 = 24 * HOUR_MS;
const PODS: usize = 3;
const EGRESS: u32 = 8;
/// Hours with connections per rule and day, before the last 48 hours.
const OLD_HOURS: i64 = 4;

struct Args {
    workloads: u32,
    days: i64,
    rollout_every: i64,
    keep: Option<PathBuf>,
}

fn args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        workloads: 10_000,
        days: 30,
        rollout_every: 1,
        keep: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--workloads" => a.workloads = value.parse()?,
            "--days" => a.days = value.parse()?,
            "--rollout-every" => a.rollout_every = value.parse::<i64>()?.max(1),
            "--keep" => a.keep = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    Ok(a)
}

fn workload(w: u32) -> String {
    format!("team-{}/Deployment/service-{w}", w / 100)
}

fn pod(w: u32, rollout: i64, i: usize) -> String {
    format!(
        "team-{}/service-{w}-{:x}-{i:05}",
        w / 100,
        0x5f00_0000 + rollout
    )
}

/// Rule `k` of workload `w` (0..8 egress, 8..16 ingress), its client workload and the
/// index used to spread its hours.
fn rule(b: &mut Batch, n: u32, w: u32, k: u32) -> (RuleKey, u32) {
    let me = b.names.intern(&workload(w));
    let peer_of = |k: u32| (w + k * 37 + 1) % n;
    let (direction, peer, port, client) = if k < EGRESS {
        let peer = match k {
            6 => PeerKey::Service(
                b.names
                    .intern(&format!("team-{}/svc-{}", w / 100, peer_of(k))),
            ),
            7 => PeerKey::External {
                ip: IpAddr::from([203, 0, (w >> 8) as u8, w as u8]),
                dns_name: Some(
                    b.names
                        .intern(&format!("api{}.partner.example.com", w % 500)),
                ),
            },
            _ => PeerKey::Workload(b.names.intern(&workload(peer_of(k)))),
        };
        (Direction::Egress, peer, 8080 + k as u16, w)
    } else {
        // Called by the workloads whose egress rule k - 8 points here.
        let caller = (w + n * 64 - (k - EGRESS) * 37 - 1) % n;
        (
            Direction::Ingress,
            PeerKey::Workload(b.names.intern(&workload(caller))),
            8080 + (k - EGRESS) as u16,
            caller,
        )
    };
    let key = RuleKey {
        workload: me,
        direction,
        protocol: Protocol::Tcp,
        port: Some(port),
        peer,
    };
    (key, client)
}

/// One hour of the cluster: the rules with connections in `hour` (all of them when
/// `all`).
fn hour_batch(n: u32, hour: i64, all: bool, rollout_every: i64) -> Batch {
    let mut b = Batch::default();
    let day = hour.div_euclid(24);
    let h = hour.rem_euclid(24);
    for w in 0..n {
        for k in 0..2 * EGRESS {
            let spread = i64::from(w * 16 + k);
            if !all && !(0..OLD_HOURS).any(|j| (spread + day * 7 + j * 6) % 24 == h) {
                continue;
            }
            let (key, client) = rule(&mut b, n, w, k);
            let connections = 1 + (spread % 20) as u64;
            let mut e = Evidence {
                connections,
                bytes: connections * 1_500 + (spread % 7) as u64 * 10_000,
                first_seen_ms: hour * HOUR_MS + (spread * 7_919) % 600_000,
                last_seen_ms: hour * HOUR_MS + 3_000_000 + (spread * 104_729) % 600_000,
                ..Evidence::default()
            };
            e.days.insert(u32::try_from(day).expect("a day after 1970"));
            for i in 0..PODS {
                e.source_pods
                    .insert(b.names.intern(&pod(client, day / rollout_every, i)));
            }
            b.rules
                .insert((key, u32::try_from(hour).expect("an hour after 1970")), e);
        }
    }
    b
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let path = args
        .keep
        .clone()
        .unwrap_or_else(|| dir.path().join("learner.db"));
    let n = args.workloads;
    // Midnight UTC, 2026-11-28: the end of the simulated period.
    let end_ms = 1_795_824_000_000;
    let first_day = end_ms / DAY_MS - args.days;
    let retention = Retention::default();
    let mut store = Store::open(&path)?;
    println!(
        "{} workloads x {} rules, {} days, pods renamed every {} days, into {}",
        n,
        2 * EGRESS,
        args.days,
        args.rollout_every,
        path.display()
    );

    let (mut full_commits, mut full_entries, mut full_time) = (0u32, 0usize, Duration::ZERO);
    let (mut sparse_time, mut compact_time, mut compacted) =
        (Duration::ZERO, Duration::ZERO, Compacted::default());
    let (mut slowest, mut slowest_compaction) =
        (Duration::ZERO, (Duration::ZERO, Compacted::default()));
    let started = Instant::now();
    for day in first_day..end_ms / DAY_MS {
        let all = end_ms - day * DAY_MS <= 2 * DAY_MS;
        for hour in day * 24..day * 24 + 24 {
            let batch = hour_batch(n, hour, all, args.rollout_every);
            let t = Instant::now();
            store.commit(&batch, None)?;
            let took = t.elapsed();
            if all {
                full_commits += 1;
                full_entries += batch.len();
                full_time += took;
                slowest = slowest.max(took);
            } else {
                sparse_time += took;
            }
        }
        let t = Instant::now();
        let done = store.compact((day + 1) * DAY_MS, &retention)?;
        let took = t.elapsed();
        compact_time += took;
        if took > slowest_compaction.0 {
            slowest_compaction = (took, done);
        }
        compacted.hourly_merged += done.hourly_merged;
        compacted.daily_written += done.daily_written;
        compacted.buckets_deleted += done.buckets_deleted;
        compacted.rules_deleted += done.rules_deleted;
        compacted.sources_deleted += done.sources_deleted;
        compacted.names_deleted += done.names_deleted;
        if day % 5 == 0 {
            eprintln!(
                "  day {} of {} done after {:.0?}",
                day - first_day + 1,
                args.days,
                started.elapsed()
            );
        }
    }
    println!("simulated in {:.1?}", started.elapsed());
    println!(
        "commit, last 48 h: {} hourly batches of {} (rule, hour) entries: mean {:.0?}, slowest {:.0?} ({:.2} us per entry)",
        full_commits,
        full_entries / full_commits.max(1) as usize,
        full_time / full_commits.max(1),
        slowest,
        full_time.as_secs_f64() * 1e6 / full_entries.max(1) as f64
    );
    println!(
        "commit, older days: {:.1?} in total; compaction, once a day: {:.1?} in total, {:.0?} a day ({:?})",
        sparse_time,
        compact_time,
        compact_time / u32::try_from(args.days)?,
        compacted
    );
    println!(
        "slowest compaction: {:.1?} ({:?})",
        slowest_compaction.0, slowest_compaction.1
    );

    let t = Instant::now();
    let stats = store.stats()?;
    let stats_time = t.elapsed();
    println!("{stats:#?}");
    println!(
        "file: {:.1} MB ({:.1} MB free pages), {:.0} bytes per rule, {:.1} bytes per bucket; stats took {:.0?}",
        mb(stats.file_bytes),
        mb(stats.free_bytes),
        stats.file_bytes as f64 / stats.rules as f64,
        stats.file_bytes as f64 / stats.buckets as f64,
        stats_time
    );

    let t = Instant::now();
    let baseline = store.baseline(None)?;
    println!(
        "baseline, all 30 days: {} rules, {} names, loaded in {:.1?}",
        baseline.len(),
        baseline.names.len(),
        t.elapsed()
    );
    drop(baseline);
    let t = Instant::now();
    let week = store.baseline(Some(end_ms - 7 * DAY_MS))?;
    println!(
        "baseline, last 7 days: {} rules, loaded in {:.1?}",
        week.len(),
        t.elapsed()
    );
    drop(week);

    let t = Instant::now();
    let done = store.compact(end_ms, &retention)?;
    println!(
        "compaction again at the same time: {:.0?} ({done:?})",
        t.elapsed()
    );
    let t = Instant::now();
    store.check()?;
    println!("quick_check: {:.1?}", t.elapsed());
    drop(store);
    let t = Instant::now();
    let store = Store::open(&path)?;
    println!("open: {:.1?}", t.elapsed());
    drop(store);

    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut s =
        db.prepare("SELECT name, sum(pgsize), count(*) FROM dbstat GROUP BY name ORDER BY 2 DESC")?;
    let mut rows = s.query([])?;
    println!("by table or index:");
    while let Some(r) = rows.next()? {
        let (name, bytes, pages): (String, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        println!("  {name:<32} {:>8.1} MB {pages:>8} pages", mb(bytes as u64));
    }
    Ok(())
}
