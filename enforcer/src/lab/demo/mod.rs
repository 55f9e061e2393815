//! `palisade lab demo`: the whole story on one machine, from the kernel's own records.
//!
//! 1. the built-in shop comes up with the datapath on every pod, in **learn** mode;
//! 2. a traffic generator plays a shop's day (periodic requests, bursts, a nightly-style
//!    job, DNS lookups, metrics scrapes, payments by name) for `--learn-for`;
//! 3. the learner turns the flow records into a baseline and one NetworkPolicy per
//!    workload, written with a review report into `--out`;
//! 4. **monitor** mode with the proposal: the shop's traffic again (nothing would be
//!    denied), then attacks (each would be);
//! 5. **enforce** mode: the shop's traffic still works, every probe listed; the attacks are
//!    dropped;
//! 6. a summary built from the agent's flow records (verdict, reason, pod, policy, and the
//!    record's line in the flows file) and the datapath's counters, never from what the demo
//!    meant to do. The demo fails (exit status 1) if any legitimate connection was denied
//!    or any attack was not.
//!
//! The lab is torn down at the end (also on Ctrl-C or error) unless `--keep`.

use std::{
    collections::BTreeMap,
    io::BufRead as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use model::{Direction, FlowKind, FlowRecord, Mode, Reason, Verdict};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use super::{Lab, ModeTarget, ProbeResult, Topology, UpOptions};

mod attacks;
mod review;
mod traffic;

/// Set by SIGINT/SIGTERM; the demo stops at its next step and tears down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Time for the agent's records of a connection to reach its output file.
const SETTLE: Duration = Duration::from_millis(1000);

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The `palisade` binary the lab runs its server and agent from.
    pub program: PathBuf,
    /// Leave the lab up afterwards.
    pub keep: bool,
    /// How long the traffic generator plays while Palisade learns.
    pub learn_for: Duration,
    /// Where the baseline, the proposal and the review report are written.
    pub out: PathBuf,
}

pub fn run(name: &str, options: &DemoOptions) -> anyhow::Result<()> {
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &handler) }.context("installing the Ctrl-C handler")?;
    }
    println!("Palisade lab demo: learn -> review -> monitor -> enforce, on a small shop.\n");

    println!(
        "[1/6] building lab {name:?}: the built-in shop, the datapath on every pod, learn mode"
    );
    let mut up = UpOptions::new(options.program.clone());
    up.mode = Mode::Learn;
    up.progress = |step| println!("      {step}");
    let mut lab = Lab::up(name, &Topology::default_shop(), &up)?;
    let _teardown = Teardown {
        name,
        keep: options.keep,
    };
    check_interrupted()?;

    println!(
        "\n[2/6] learning for {}: the shop's traffic (requests, bursts, a nightly job, DNS, scrapes, payments)",
        humantime::format_duration(options.learn_for)
    );
    let learned = learn(&lab, options.learn_for)?;
    println!(
        "      {} connections in {} rounds, {} failed",
        learned.connections, learned.rounds, learned.failed
    );
    std::thread::sleep(SETTLE);

    println!(
        "\n[3/6] review: baseline, proposed policies and report in {}",
        options.out.display()
    );
    let review = review::review(&lab, &options.out)?;
    println!("      {}", review.summary);
    check_interrupted()?;

    println!("\n[4/6] monitor mode with the proposal: would anything be denied?");
    lab.apply_policy_files(&review.policy_files)?;
    lab.set_mode(Mode::Monitor, &ModeTarget::All)?;
    let monitor = phase(&lab, false)?;

    println!("\n[5/6] enforce mode: the shop's traffic, then the attacks");
    lab.set_mode(Mode::Enforce, &ModeTarget::All)?;
    let counters_before = counters(&lab);
    let enforce = phase(&lab, true)?;
    let counters_after = counters(&lab);

    println!(
        "\n[6/6] summary, from the agent's flow records ({})",
        lab.flows_file().display()
    );
    let records = read_records(&lab.flows_file())?;
    let summary = Summary::build(&records, &monitor, &enforce, &review);
    print!("{}", summary.text());
    if let (Some(before), Some(after)) = (counters_before, counters_after) {
        let delta = |name: &str| {
            after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
        };
        println!(
            "      datapath counters while enforcing: {} packets dropped, {} spoofed, {} connections refused",
            delta("drops"),
            delta("spoofed"),
            delta("denied")
        );
    }
    if options.keep {
        println!(
            "\n      leaving lab {name:?} up (--keep): try `palisade lab --name {name} probe --port 8080`, \
             `palisade policy replay --policies {}/networkpolicies ...`, then `palisade lab --name {name} down`",
            options.out.display()
        );
    }
    if !summary.ok() {
        bail!("the demo's checks failed: see the summary above");
    }
    Ok(())
}

/// Tears the lab down when dropped, unless it is to be kept (and was not interrupted).
struct Teardown<'a> {
    name: &'a str,
    keep: bool,
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if self.keep && !INTERRUPTED.load(Ordering::SeqCst) {
            return;
        }
        println!("\n      tearing down lab {:?}", self.name);
        match super::down(self.name) {
            Ok(t) => println!(
                "      removed: {} processes, {} namespaces, {} pins",
                t.processes, t.namespaces, t.pins
            ),
            Err(e) => eprintln!(
                "      teardown failed: {e}; run `palisade lab --name {} down`",
                self.name
            ),
        }
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("\ninterrupted: tearing down");
        bail!("interrupted");
    }
    Ok(())
}

/// A step of the demo, as the lines the agent appended to its flows file while it ran
/// (and settled): its records, whatever their timestamps say.
#[derive(Clone, Debug)]
pub struct Window {
    pub label: String,
    /// Lines of the flows file before the step, and after it settled.
    pub start: usize,
    pub end: usize,
    /// The pod that acted in it (attacks), or none (the baseline round: every pod).
    pub pod: Option<String>,
    /// What the acting side itself saw.
    pub seen: String,
}

impl Window {
    fn contains(&self, line: usize) -> bool {
        line > self.start && line <= self.end
    }
}

/// Lines in the agent's flows file so far.
fn lines(lab: &Lab) -> usize {
    std::fs::read(lab.flows_file()).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

struct Learned {
    rounds: u32,
    connections: u32,
    failed: u32,
}

/// The traffic generator: rounds of the shop's connections until `duration` is over, with
/// a burst every fifth round and the nightly job once, half way.
fn learn(lab: &Lab, duration: Duration) -> anyhow::Result<Learned> {
    let started = Instant::now();
    let mut learned = Learned {
        rounds: 0,
        connections: 0,
        failed: 0,
    };
    let mut nightly_done = false;
    while started.elapsed() < duration || learned.rounds == 0 {
        check_interrupted()?;
        let round = learned.rounds;
        let mut results = traffic::round(lab, round)?;
        if round % 5 == 4 {
            results.extend(traffic::burst(lab)?);
        }
        if !nightly_done && started.elapsed() >= duration / 2 {
            results.extend(traffic::nightly(lab)?);
            nightly_done = true;
        }
        learned.rounds += 1;
        learned.connections += results.len() as u32;
        let failed: Vec<_> = results
            .iter()
            .filter(|(_, r)| *r != ProbeResult::Ok)
            .collect();
        learned.failed += failed.len() as u32;
        for (what, result) in failed {
            println!("\n      round {round}: {what}: {result:?}");
        }
        let line = format!(
            "      round {:>3}: {} connections so far, {:>4.0} s left",
            learned.rounds,
            learned.connections,
            duration.saturating_sub(started.elapsed()).as_secs_f64()
        );
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            print!("\r{line}   ");
            std::io::Write::flush(&mut std::io::stdout()).ok();
        } else if learned.rounds % 5 == 1 {
            println!("{line}");
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    if !nightly_done {
        learned.connections += traffic::nightly(lab)?.len() as u32;
    }
    println!();
    Ok(learned)
}

/// The shop's traffic once (its window), then each attack (a window each).
pub struct Phase {
    pub baseline: Window,
    pub probes: Vec<traffic::Connection>,
    pub attacks: Vec<Window>,
}

fn phase(lab: &Lab, list_probes: bool) -> anyhow::Result<Phase> {
    let start = lines(lab);
    let probes = traffic::round(lab, 0)?;
    std::thread::sleep(SETTLE);
    let end = lines(lab);
    let ok = probes.iter().filter(|(_, r)| *r == ProbeResult::Ok).count();
    println!(
        "      the shop's traffic: {ok} of {} connections answered",
        probes.len()
    );
    if list_probes {
        for (what, result) in &probes {
            println!("        {:<8} {what}", result.short());
        }
    }
    let baseline = Window {
        label: "the shop's traffic".into(),
        start,
        end,
        pod: None,
        seen: format!("{ok} of {} answered", probes.len()),
    };
    let mut windows = Vec::new();
    for attack in attacks::ATTACKS {
        check_interrupted()?;
        let start = lines(lab);
        let (pod, seen) = (attack.run)(lab)?;
        std::thread::sleep(SETTLE);
        let w = attacks::ATTACKS
            .iter()
            .map(|a| a.name.len())
            .max()
            .unwrap_or(0);
        println!("      {:<w$}  from {pod}: {seen}", attack.name);
        windows.push(Window {
            label: attack.name.to_owned(),
            start,
            end: lines(lab),
            pod: Some(pod),
            seen,
        });
    }
    Ok(Phase {
        baseline,
        probes,
        attacks: windows,
    })
}

/// The datapath's counters by name, read from the lab's pins.
fn counters(lab: &Lab) -> Option<BTreeMap<String, u64>> {
    crate::datapath::stats::counters(&lab.pins()).ok().map(|c| {
        c.into_iter()
            .map(|(k, v)| (k.name().to_owned(), v))
            .collect()
    })
}

/// The agent's records with their line numbers in the flows file.
fn read_records(path: &Path) -> anyhow::Result<Vec<(usize, FlowRecord)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if let Ok(r) = serde_json::from_str::<FlowRecord>(&line)
            && matches!(r.kind, FlowKind::New | FlowKind::Rejudged)
            && !is_link_chatter(&r)
        {
            out.push((i + 1, r));
        }
    }
    Ok(out)
}

/// Neighbour discovery, router solicitations and multicast listener reports every new
/// interface sends: real flows, but not the demo's story.
fn is_link_chatter(r: &FlowRecord) -> bool {
    [r.local.ip, r.remote.ip].iter().any(|ip| match ip {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_multicast() || v6.is_unicast_link_local(),
    })
}

/// What the records say about one window.
#[derive(Debug, Default)]
struct Verdicts {
    allow: usize,
    deny: usize,
    would_deny: usize,
    /// The first refusal: its line, pod, peer, reason and the policy isolating the pod.
    first: Option<String>,
}

impl Verdicts {
    fn of<'a>(
        records: impl Iterator<Item = &'a (usize, FlowRecord)>,
        review: &review::Review,
    ) -> Self {
        let mut v = Self::default();
        for (line, r) in records {
            match r.verdict {
                Verdict::Allow => v.allow += 1,
                Verdict::Deny => v.deny += 1,
                Verdict::WouldDeny => v.would_deny += 1,
            }
            if r.verdict != Verdict::Allow && v.first.is_none() {
                let side = match r.direction {
                    Direction::Egress => "egress",
                    Direction::Ingress => "ingress",
                };
                let reason = r.reason.map_or("-".to_owned(), reason_text);
                let policy = r
                    .local
                    .workload
                    .as_deref()
                    .and_then(|w| review.policy_of(w))
                    .unwrap_or_else(|| "no policy".into());
                let peer = r
                    .remote
                    .pod
                    .clone()
                    .or_else(|| r.remote.dns_name.clone())
                    .unwrap_or_else(|| r.remote.ip.to_string());
                let port = r.server_port().map(|p| format!(" {p}")).unwrap_or_default();
                v.first = Some(format!(
                    "line {line}: {} {side} to {peer} {}{port}: {reason}, {policy}",
                    r.local.pod.as_deref().unwrap_or(&r.interface),
                    r.protocol
                ));
            }
        }
        v
    }

    fn text(&self) -> String {
        match (self.deny, self.would_deny) {
            (0, 0) => format!("{} allowed", self.allow),
            (d, 0) => format!("{d} denied"),
            (0, w) => format!("{w} would-deny"),
            (d, w) => format!("{d} denied, {w} would-deny"),
        }
    }
}

fn reason_text(r: Reason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

struct Row {
    label: String,
    pod: String,
    monitor: Verdicts,
    enforce: Verdicts,
    ok: bool,
}

struct Summary {
    baseline_monitor: Verdicts,
    baseline_enforce: Verdicts,
    probes_ok: bool,
    rows: Vec<Row>,
}

impl Summary {
    fn build(
        records: &[(usize, FlowRecord)],
        monitor: &Phase,
        enforce: &Phase,
        review: &review::Review,
    ) -> Self {
        let in_window = |w: &Window| -> Vec<&(usize, FlowRecord)> {
            records
                .iter()
                .filter(|(line, _)| w.contains(*line))
                .filter(|(_, r)| match &w.pod {
                    // An attack's records: its pod's own, those that name it as the peer
                    // (the target's ingress), and spoofed packets.
                    Some(p) => {
                        r.local.pod.as_deref() == Some(p.as_str())
                            || r.remote.pod.as_deref() == Some(p.as_str())
                            || r.reason == Some(Reason::Spoofed)
                    }
                    None => true,
                })
                .collect()
        };
        let rows = monitor
            .attacks
            .iter()
            .zip(&enforce.attacks)
            .map(|(m, e)| {
                let monitor = Verdicts::of(in_window(m).into_iter(), review);
                let enforce = Verdicts::of(in_window(e).into_iter(), review);
                let ok = monitor.would_deny > 0 && monitor.deny == 0 && enforce.deny > 0;
                Row {
                    label: m.label.clone(),
                    pod: e.pod.clone().unwrap_or_default(),
                    monitor,
                    enforce,
                    ok,
                }
            })
            .collect();
        Self {
            baseline_monitor: Verdicts::of(in_window(&monitor.baseline).into_iter(), review),
            baseline_enforce: Verdicts::of(in_window(&enforce.baseline).into_iter(), review),
            probes_ok: enforce.probes.iter().all(|(_, r)| *r == ProbeResult::Ok),
            rows,
        }
    }

    fn baseline_ok(&self) -> bool {
        let clean = |v: &Verdicts| v.deny == 0 && v.would_deny == 0 && v.allow > 0;
        clean(&self.baseline_monitor) && clean(&self.baseline_enforce) && self.probes_ok
    }

    fn ok(&self) -> bool {
        self.baseline_ok() && self.rows.iter().all(|r| r.ok)
    }

    fn text(&self) -> String {
        let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
        let mut text = format!(
            "      {} the shop's traffic: monitor {}, enforce {}: nothing legitimate was denied{}\n",
            mark(self.baseline_ok()),
            self.baseline_monitor.text(),
            self.baseline_enforce.text(),
            if self.baseline_ok() {
                ""
            } else {
                " -- NOT SO, see above"
            },
        );
        let w = self.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        for r in &self.rows {
            text.push_str(&format!(
                "      {} {:<w$}  monitor: {:<16} enforce: {:<12} from {}\n",
                mark(r.ok),
                r.label,
                r.monitor.text(),
                r.enforce.text(),
                r.pod,
            ));
            if let Some(first) = &r.enforce.first {
                text.push_str(&format!("           {:<w$}  recorded at {first}\n", ""));
            }
        }
        text
    }
}
