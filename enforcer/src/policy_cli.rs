//! `palisade policy export|replay|diff|report`: policies people review, and what they would
//! do to the recorded traffic before anything is enforced.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use enforcer::args::DefaultArg;
use learner::store::Store;
use model::{evidence::ObservedFlow, netpol::cluster::Cluster};
use policy_gen::{
    diff::{Diff, diff},
    export::{write_cilium_policies, write_network_policies},
    import::import_dir,
    replay::{Outcome, Replay, ReplayOptions, replay},
    report::{self, ReportInput},
    set::PolicySet,
};

#[derive(Subcommand)]
pub enum ReviewCommand {
    /// Write a reviewed folder of NetworkPolicies (as `palisade learn propose` or a reviewer
    /// left it) as files for a pull request: networkpolicies/<namespace>/<name>.yaml, the
    /// evidence of each rule in comments and annotations; unchanged policies keep the
    /// reviewer's comments.
    Export {
        /// Folder of NetworkPolicy files (searched recursively).
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Also write CiliumNetworkPolicies (ciliumnetworkpolicies/<namespace>/<name>.yaml),
        /// with toFQDNs where DNS names were learned; Cilium 1.16 or later.
        #[arg(long)]
        cilium: bool,
    },
    /// Replay recorded connections against a folder of policies: what would be denied, per
    /// workload, which rules nothing used, which external destinations are new.
    Replay {
        /// Folder of NetworkPolicy files.
        #[arg(long)]
        policies: PathBuf,
        #[command(flatten)]
        traffic: Traffic,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A review report for a change request: Markdown, or a self-contained HTML page with a
    /// picture of the workload graph (by the --out file's extension, .md or .html).
    Report {
        /// Folder of NetworkPolicy files.
        #[arg(long)]
        policies: PathBuf,
        /// Compare with the policies enforced now (a folder, or `none`).
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        traffic: Traffic,
        /// What the proposal left out (the NOTES.md `palisade learn propose` writes).
        #[arg(long)]
        notes: Option<PathBuf>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare two folders of policies by what they do to the recorded connections.
    Diff {
        /// The policies enforced now (a folder; `none` for no policy at all).
        #[arg(long)]
        from: PathBuf,
        /// The policies proposed.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        traffic: Traffic,
        #[arg(long)]
        json: bool,
    },
}

/// The recorded connections and the cluster to replay them in.
#[derive(Args)]
pub struct Traffic {
    /// The learner's store (`palisade learn ingest --store`).
    #[arg(long, env = "PALISADE_LEARN_STORE", required_unless_present = "flows")]
    store: Option<PathBuf>,
    /// Or files of flow records (JSON lines or protobuf), read on every core.
    #[arg(long, num_args = 1..)]
    flows: Vec<PathBuf>,
    /// Only connections seen in this last period (e.g. 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// The cluster: namespaces, pods with labels, ports and workloads, Services (JSON).
    #[arg(long, env = "PALISADE_CLUSTER")]
    cluster: PathBuf,
    /// What pods no policy selects get.
    #[arg(long, value_enum, default_value_t = DefaultArg::Allow)]
    default: DefaultArg,
    /// External destinations first seen in this last period are listed as new.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    new_within: Duration,
}

pub fn run(command: ReviewCommand) -> Result<()> {
    match command {
        ReviewCommand::Export { from, out, cilium } => {
            let set = import(&from)?;
            let mut written = write_network_policies(&out, &set)?;
            if cilium {
                written.extend(write_cilium_policies(&out, &set)?);
            }
            for path in &written {
                println!("{}", path.display());
            }
            println!("{} files written under {}", written.len(), out.display());
            Ok(())
        }
        ReviewCommand::Report {
            policies,
            from,
            traffic,
            notes,
            title,
            out,
        } => {
            let set = import(&policies)?;
            let (cluster, flows, options) = traffic.load()?;
            let replayed = replay(&set, &cluster, &flows, &options)?;
            let compared = match from {
                Some(from) => {
                    let before = import_or_none(&from)?;
                    Some(diff(
                        &replay(&before, &cluster, &flows, &options)?,
                        &replayed,
                    ))
                }
                None => None,
            };
            let notes: Vec<String> = match notes {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .lines()
                    .filter_map(|l| l.strip_prefix("- "))
                    .map(|l| l.replace("**", ""))
                    .collect(),
                None => Vec::new(),
            };
            let title = title.unwrap_or_else(|| format!("Policy review: {}", policies.display()));
            let input = ReportInput {
                title: &title,
                policies: &set,
                replay: Some(&replayed),
                diff: compared.as_ref(),
                notes: &notes,
            };
            let text = match out.extension().and_then(|e| e.to_str()) {
                Some("md") => report::markdown(&input),
                Some("html" | "htm") => report::html(&input),
                _ => anyhow::bail!("{}: the report is .md or .html", out.display()),
            };
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}: {} policies, {} connections replayed, {:.1}% allowed, {} flows would be denied",
                out.display(),
                set.len(),
                replayed.connections(),
                100.0 * replayed.coverage(),
                replayed.denied().count()
            );
            Ok(())
        }
        ReviewCommand::Replay {
            policies,
            traffic,
            json,
        } => {
            let set = import(&policies)?;
            let (cluster, flows, options) = traffic.load()?;
            let result = replay(&set, &cluster, &flows, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{}", replay_text(&result));
            }
            Ok(())
        }
        ReviewCommand::Diff {
            from,
            to,
            traffic,
            json,
        } => {
            let before = import_or_none(&from)?;
            let after = import(&to)?;
            let (cluster, flows, options) = traffic.load()?;
            let d = diff(
                &replay(&before, &cluster, &flows, &options)?,
                &replay(&after, &cluster, &flows, &options)?,
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", diff_text(&d));
            }
            Ok(())
        }
    }
}

/// A folder of policies, or none at all (`none`).
fn import_or_none(dir: &Path) -> Result<PolicySet> {
    if dir.as_os_str() == "none" {
        Ok(PolicySet::default())
    } else {
        import(dir)
    }
}

fn import(dir: &Path) -> Result<PolicySet> {
    import_dir(dir).with_context(|| format!("reading the policies in {}", dir.display()))
}

impl Traffic {
    pub fn load(&self) -> Result<(Cluster, Vec<ObservedFlow>, ReplayOptions)> {
        let text = std::fs::read_to_string(&self.cluster)
            .with_context(|| format!("reading the cluster file {}", self.cluster.display()))?;
        let cluster: Cluster = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a cluster file", self.cluster.display()))?;
        let now = SystemTime::now();
        let since_ms = self.since.map(|s| millis(now - s));
        let baseline = match &self.store {
            Some(path) => Store::open(path)?.baseline(since_ms)?,
            None => {
                let threads = std::thread::available_parallelism().map_or(1, usize::from);
                let mut baseline = learner::baseline::Baseline::default();
                for file in &self.flows {
                    let read = learner::parallel::read_file(file, threads)
                        .with_context(|| format!("reading {}", file.display()))?;
                    if read.bad > 0 {
                        eprintln!(
                            "{}: {} records could not be read:",
                            file.display(),
                            read.bad
                        );
                        for e in &read.errors {
                            eprintln!("  {e}");
                        }
                    }
                    baseline.merge(&read.baseline);
                }
                if let Some(since) = since_ms {
                    baseline.rules.retain(|_, e| e.last_seen_ms >= since);
                }
                baseline
            }
        };
        let flows = learner::connections::connections(&baseline, &cluster);
        let options = ReplayOptions {
            default: self.default.into(),
            new_since: Some(humantime::format_rfc3339_millis(now - self.new_within).to_string()),
        };
        Ok((cluster, flows, options))
    }
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn flow_text(f: &ObservedFlow) -> String {
    let port = f.port.map(|p| format!(" {p}")).unwrap_or_default();
    format!("{} -> {} {}{port}", f.client, f.server, f.protocol)
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Allowed { rules } if rules.is_empty() => "allowed (not isolated)".into(),
        Outcome::Allowed { rules } => {
            let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
            format!("allowed by {}", rules.join(", "))
        }
        Outcome::Denied {
            direction,
            policies,
        } => {
            let side = match direction {
                model::Direction::Egress => "the client's egress",
                model::Direction::Ingress => "the server's ingress",
            };
            if policies.is_empty() {
                format!("denied at {side} (zero-trust default)")
            } else {
                format!("denied at {side}, isolated by {}", policies.join(", "))
            }
        }
        Outcome::Unknown { workload } => format!("not evaluated: {workload} has no pods"),
    }
}

pub fn replay_text(r: &Replay) -> String {
    let mut text = format!(
        "{} connections in {} flows: {:.1}% allowed; {} flows would be denied, {} rules unused, {} new external destinations\n",
        r.connections(),
        r.flows.len(),
        100.0 * r.coverage(),
        r.denied().count(),
        r.unused_rules.len(),
        r.new_externals.len()
    );
    text.push_str("\nper workload (coverage, connections, denied, isolated in/out):\n");
    for (w, s) in &r.workloads {
        let iso = |b: bool| if b { "yes" } else { "no" };
        text.push_str(&format!(
            "  {w:<50} {:>6.1}% {:>10} {:>8}  {}/{}\n",
            100.0 * s.coverage(),
            s.connections,
            s.denied,
            iso(s.isolation.ingress),
            iso(s.isolation.egress)
        ));
    }
    if r.denied().next().is_some() {
        text.push_str("\nwould be denied:\n");
        for (f, o) in r.denied() {
            text.push_str(&format!(
                "  {} ({} connections): {}\n",
                flow_text(f),
                f.connections,
                outcome_text(o)
            ));
        }
    }
    if !r.unused_rules.is_empty() {
        text.push_str("\nrules no recorded connection used:\n");
        for rule in &r.unused_rules {
            text.push_str(&format!("  {rule}\n"));
        }
    }
    if !r.new_externals.is_empty() {
        text.push_str("\nexternal destinations first seen recently:\n");
        for f in &r.new_externals {
            text.push_str(&format!(
                "  {} (first seen {})\n",
                flow_text(f),
                f.first_seen
            ));
        }
    }
    text
}

pub fn diff_text(d: &Diff) -> String {
    let mut text = format!(
        "{} flows become denied, {} become allowed, {} isolation changes\n",
        d.newly_denied.len(),
        d.newly_allowed.len(),
        d.isolation_changes.len()
    );
    for (title, flows) in [
        (
            "become denied (what the change would break)",
            &d.newly_denied,
        ),
        ("become allowed", &d.newly_allowed),
    ] {
        if !flows.is_empty() {
            text.push_str(&format!("\n{title}:\n"));
            for (f, o) in flows {
                text.push_str(&format!(
                    "  {} ({} connections): {}\n",
                    flow_text(f),
                    f.connections,
                    outcome_text(o)
                ));
            }
        }
    }
    if !d.isolation_changes.is_empty() {
        text.push_str("\nisolation:\n");
        for c in &d.isolation_changes {
            let dir = match c.direction {
                model::Direction::Ingress => "ingress",
                model::Direction::Egress => "egress",
            };
            let change = if c.isolated {
                "default-allow -> isolated"
            } else {
                "isolated -> default-allow"
            };
            text.push_str(&format!("  {} {dir}: {change}\n", c.workload));
        }
    }
    text
}
