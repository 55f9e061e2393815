//! `palisade learn`: flow records -> the baseline store -> proposed policies.

use std::{
    io::IsTerminal as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use enforcer::learner_service::{self, LearnerServiceConfig};
use learner::{
    baseline::Baseline,
    ingest::{self, Progress},
    propose::{self, Options},
    store::{Retention, Store},
    widen::{CidrGroup, Widening},
};
use model::netpol::cluster::{Cluster, Resolver};

#[derive(Subcommand)]
pub enum LearnCommand {
    /// Read flow records (JSON lines or length-delimited protobuf, as `palisade agent
    /// --output` writes them) into the baseline store. Each file is read from where the
    /// last run stopped, so running it again (or after a crash) never counts a record twice.
    Ingest {
        #[arg(long, env = "PALISADE_LEARN_STORE")]
        store: PathBuf,
        /// Keep reading the files as a running agent appends to them (until interrupted).
        #[arg(long)]
        follow: bool,
        /// With --follow: how often to look for new records.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The baseline: every learned rule with its evidence, and whether it is stable.
    Show {
        #[arg(long, env = "PALISADE_LEARN_STORE")]
        store: PathBuf,
        /// Only what was seen in this last period (e.g. 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// The baseline is stable once no new rule appeared for this long.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        stable_after: Duration,
    },
    /// Propose one NetworkPolicy per workload from the baseline, with the evidence of every
    /// rule, into a folder (networkpolicies/<namespace>/<name>.yaml, and NOTES.md with what
    /// was seen but left out).
    Propose {
        #[arg(long, env = "PALISADE_LEARN_STORE")]
        store: PathBuf,
        /// The cluster: namespaces, pods with their labels and workloads, Services (JSON).
        #[arg(long, env = "PALISADE_CLUSTER")]
        cluster: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Only what was seen in this last period (e.g. 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        #[command(flatten)]
        options: ProposeArgs,
    },
    /// The learner as a service: agents stream flow records to it over gRPC
    /// (`palisade agent --learner-url`); it counts them into the store and proposes on a
    /// period, as files and (with --kubernetes) as WorkloadBaseline resources.
    Serve {
        #[arg(long, env = "PALISADE_LEARN_STORE")]
        store: PathBuf,
        /// Where agents connect.
        #[arg(long, env = "PALISADE_LISTEN", default_value = "0.0.0.0:50051")]
        listen: SocketAddr,
        /// Where proposals are written (networkpolicies/<namespace>/<name>.yaml, NOTES.md).
        #[arg(long, env = "PALISADE_PROPOSAL_DIR")]
        proposal_dir: PathBuf,
        /// How often to propose.
        #[arg(long, env = "PALISADE_PROPOSE_EVERY", default_value = "10m", value_parser = humantime::parse_duration)]
        propose_every: Duration,
        /// Read the cluster from the Kubernetes API server and publish a WorkloadBaseline
        /// per workload.
        #[arg(long, env = "PALISADE_KUBERNETES", conflicts_with = "cluster")]
        kubernetes: bool,
        /// Without --kubernetes: the cluster file proposals select pods in (read again for
        /// every proposal).
        #[arg(long, env = "PALISADE_CLUSTER")]
        cluster: Option<PathBuf>,
        /// Serve /metrics, /healthz and /readyz on this address.
        #[arg(long, env = "PALISADE_HTTP")]
        http: Option<SocketAddr>,
        /// The baseline is stable once no new rule appeared for this long.
        #[arg(long, env = "PALISADE_STABLE_AFTER", default_value = "24h", value_parser = humantime::parse_duration)]
        stable_after: Duration,
        #[command(flatten)]
        options: ProposeArgs,
    },
    /// Merge old hourly buckets into days and delete what is older than the retention.
    Compact {
        #[arg(long, env = "PALISADE_LEARN_STORE")]
        store: PathBuf,
        #[arg(long, default_value = "48h", value_parser = humantime::parse_duration)]
        hourly_for: Duration,
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        keep_for: Duration,
        /// Client pods not seen for this long are forgotten (rollouts rename them).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        sources_for: Duration,
    },
}

/// How proposals are made.
#[derive(Args)]
pub struct ProposeArgs {
    /// The cluster's DNS resolver, as NAMESPACE/KEY=VALUE[,KEY=VALUE].
    #[arg(long, env = "PALISADE_RESOLVER", default_value = "kube-system/k8s-app=kube-dns", value_parser = parse_resolver)]
    resolver: Resolver,
    /// External addresses inside this range become the range: NAME=CIDR (repeatable).
    #[arg(
        long = "cidr-group",
        env = "PALISADE_CIDR_GROUPS",
        value_delimiter = ' '
    )]
    cidr_groups: Vec<CidrGroup>,
    /// Distinct addresses under one DNS name before they widen to their common prefix.
    #[arg(long, env = "PALISADE_DNS_MIN_ADDRESSES", default_value_t = Widening::default().dns_min_addresses)]
    dns_min_addresses: usize,
    /// Leave out rules whose confidence is below this (0-1).
    #[arg(long, env = "PALISADE_MIN_CONFIDENCE", default_value_t = 0.0)]
    min_confidence: f64,
}

impl ProposeArgs {
    fn options(self) -> Options {
        Options {
            resolver: self.resolver,
            widening: Widening {
                groups: self.cidr_groups,
                dns_min_addresses: self.dns_min_addresses,
                ..Widening::default()
            },
            min_confidence: self.min_confidence,
        }
    }
}

pub fn run(command: LearnCommand) -> Result<()> {
    // Printing into a closed pipe (`palisade learn show | head`) ends the program quietly,
    // as for other command-line tools, instead of panicking.
    // SAFETY: restoring a signal's default action; nothing else runs yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match command {
        LearnCommand::Ingest {
            store,
            follow,
            interval,
            files,
        } => ingest(&store, &files, follow.then_some(interval)),
        LearnCommand::Show {
            store,
            since,
            stable_after,
        } => show(&open(&store)?, since, stable_after),
        LearnCommand::Propose {
            store,
            cluster,
            out,
            since,
            options,
        } => propose(&open(&store)?, &cluster, &out, since, &options.options()),
        LearnCommand::Serve {
            store,
            listen,
            proposal_dir,
            propose_every,
            kubernetes,
            cluster,
            http,
            stable_after,
            options,
        } => {
            let config = LearnerServiceConfig {
                listen,
                http,
                store,
                proposal_dir,
                propose_every,
                kubernetes,
                cluster,
                stable_after,
                options: options.options(),
            };
            crate::services_runtime()?
                .block_on(learner_service::serve(config, crate::shutdown_signal()))?;
            Ok(())
        }
        LearnCommand::Compact {
            store,
            hourly_for,
            keep_for,
            sources_for,
        } => {
            let mut store = open(&store)?;
            let done = store.compact(
                now_ms(),
                &Retention {
                    hourly_for,
                    keep_for,
                    sources_for,
                },
            )?;
            println!(
                "merged {} hourly buckets into {} days; deleted {} buckets, {} rules, {} client pods, {} names",
                done.hourly_merged,
                done.daily_written,
                done.buckets_deleted,
                done.rules_deleted,
                done.sources_deleted,
                done.names_deleted
            );
            Ok(())
        }
    }
}

fn open(path: &Path) -> Result<Store> {
    Ok(Store::open(path)?)
}

fn ingest(store_path: &Path, files: &[PathBuf], follow: Option<Duration>) -> Result<()> {
    let mut store = open(store_path)?;
    let options = ingest::Options::default();
    let stop = follow.map(|_| stop_flag()).transpose()?;
    loop {
        for file in files {
            let started = Instant::now();
            let mut shown = ProgressLine::new(file, follow.is_none());
            let report = ingest::ingest_file(&mut store, file, &options, &mut |p| {
                shown.update(p, started);
            })
            .with_context(|| format!("reading {} into {}", file.display(), store_path.display()))?;
            shown.finish();
            if follow.is_none() || report.records > 0 || report.bad > 0 {
                let rate = report.records as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let mut line = format!(
                    "{}: {} records ({}), {:.0} records/s",
                    file.display(),
                    report.records,
                    report.format.map_or("empty".to_owned(), |f| f.to_string()),
                    rate
                );
                if report.resumed_from > 0 {
                    line.push_str(&format!(", resumed at byte {}", report.resumed_from));
                }
                if report.restarted {
                    line.push_str(", the file changed since the last run: read from its start");
                }
                if report.unattributed > 0 {
                    line.push_str(&format!(", {} without a pod", report.unattributed));
                }
                if report.truncated_tail {
                    line.push_str(", its last record is still being written");
                }
                println!("{line}");
                if report.bad > 0 {
                    eprintln!(
                        "{}: {} records could not be read:",
                        file.display(),
                        report.bad
                    );
                    for e in &report.errors {
                        eprintln!("  {e}");
                    }
                }
            }
        }
        let Some(interval) = follow else { break };
        if stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            break;
        }
        std::thread::sleep(interval);
    }
    let stats = store.stats()?;
    println!(
        "{}: {} rules, {} buckets ({} hourly), {} client pods, {:.1} MB",
        store_path.display(),
        stats.rules,
        stats.buckets,
        stats.hourly_buckets,
        stats.sources,
        stats.file_bytes as f64 / 1e6
    );
    Ok(())
}

/// Set on SIGINT or SIGTERM, so `--follow` stops between commits.
fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook_flag(signal, &flag)?;
    }
    Ok(flag)
}

fn signal_hook_flag(
    signal: libc::c_int,
    flag: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(flag) = FLAG.get() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _ = FLAG.set(flag.clone());
    let handler = nix::sys::signal::SigHandler::Handler(on_signal);
    let signal = nix::sys::signal::Signal::try_from(signal)?;
    // SAFETY: the handler only stores to an atomic.
    unsafe { nix::sys::signal::signal(signal, handler) }.context("installing a signal handler")?;
    Ok(())
}

/// Progress of a long read on standard error: rewritten in place on a terminal, a line
/// every few seconds otherwise.
struct ProgressLine {
    file: String,
    terminal: bool,
    enabled: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl ProgressLine {
    fn new(file: &Path, enabled: bool) -> Self {
        Self {
            file: file.display().to_string(),
            terminal: std::io::stderr().is_terminal(),
            enabled,
            last: None,
            drawn: false,
        }
    }

    fn update(&mut self, p: &Progress, started: Instant) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !self.enabled || self.last.is_some_and(|l| l.elapsed() < every) || p.size == 0 {
            return;
        }
        self.last = Some(Instant::now());
        let percent = 100.0 * p.position as f64 / p.size as f64;
        let rate = p.records as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let text = format!(
            "{}: {percent:5.1}% of {:.1} MB, {} records, {:.0} records/s",
            self.file,
            p.size as f64 / 1e6,
            p.records,
            rate
        );
        if self.terminal {
            eprint!("\r\x1b[2K{text}");
            self.drawn = true;
        } else {
            eprintln!("{text}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
        }
    }
}

fn show(store: &Store, since: Option<Duration>, stable_after: Duration) -> Result<()> {
    let baseline = store.baseline(since.map(|s| now_ms() - millis(s)))?;
    print!("{}", learner::report::baseline_table(&baseline));
    let now = SystemTime::now();
    if baseline.is_stable(now, stable_after) {
        println!(
            "stable: no new rule for {}",
            humantime::format_duration(stable_after)
        );
    } else if !baseline.is_empty() {
        println!(
            "not stable yet: a rule appeared in the last {}",
            humantime::format_duration(stable_after)
        );
    }
    Ok(())
}

fn propose(
    store: &Store,
    cluster: &Path,
    out: &Path,
    since: Option<Duration>,
    options: &Options,
) -> Result<()> {
    let text = std::fs::read_to_string(cluster)
        .with_context(|| format!("reading the cluster file {}", cluster.display()))?;
    let cluster: Cluster = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a cluster file", cluster.display()))?;
    let baseline: Baseline = store.baseline(since.map(|s| now_ms() - millis(s)))?;
    if baseline.is_empty() {
        bail!(
            "the baseline in {} is empty: ingest flow records first",
            store.path().display()
        );
    }
    let proposal = propose::propose(&baseline, &cluster, options);
    let written = enforcer::review::write_proposal(out, &proposal)
        .with_context(|| format!("writing the proposal into {}", out.display()))?;
    for path in &written {
        println!("{}", path.display());
    }
    println!(
        "{} policies from {} rules; {} observations left out (see {})",
        written.len(),
        baseline.len(),
        proposal.notes.len(),
        out.join(enforcer::review::NOTES_FILE).display()
    );
    Ok(())
}

fn parse_resolver(s: &str) -> Result<Resolver, String> {
    let (namespace, labels) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected NAMESPACE/KEY=VALUE[,KEY=VALUE]"))?;
    let labels = labels
        .split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{kv:?}: expected KEY=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Resolver {
        namespace: namespace.to_owned(),
        labels,
    })
}

fn now_ms() -> i64 {
    millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
