//! `palisade flows`: flow records as a table people read, from an agent's output file
//! (JSON lines or protobuf) or a lab's, optionally following it.

use std::{fs::File, io::BufReader, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use model::{Direction, FlowKind, FlowRecord, Verdict, wire::FlowReader};

#[derive(Args)]
pub struct FlowsArgs {
    /// The agent's output file (`palisade agent --output`).
    #[arg(conflicts_with = "lab")]
    file: Option<PathBuf>,
    /// Or the flows of this lab (`palisade lab --name NAME`).
    #[arg(long)]
    lab: Option<String>,
    /// Keep printing records as they are written (until interrupted).
    #[arg(long)]
    follow: bool,
    /// Only records with this verdict.
    #[arg(long, value_parser = ["allow", "deny", "would-deny"])]
    verdict: Option<String>,
    /// Periodic counter exports too (left out by default).
    #[arg(long)]
    stats: bool,
}

pub fn run(args: FlowsArgs) -> Result<()> {
    // SAFETY: restoring a signal's default action before anything else runs, so
    // `palisade flows | head` ends quietly.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let path = match (&args.file, &args.lab) {
        (Some(file), _) => file.clone(),
        (None, Some(lab)) => enforcer::lab::flows_file_of(lab)?,
        (None, None) => bail!("give the agent's output file, or --lab NAME"),
    };
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = FlowReader::new(BufReader::new(file), path.display().to_string());
    println!(
        "{:<12}  {:<40} {:<3} {:<40} {:<12} {:<10} {:<10} POLICY",
        "TIME", "POD", "", "PEER", "PROTO/PORT", "VERDICT", "REASON"
    );
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                if wanted(&record, &args) {
                    println!("{}", row(&record));
                }
            }
            Ok(None) => {
                if !args.follow {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) if e.is_truncated() && args.follow => {
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) if e.is_truncated() => return Ok(()),
            Err(e) => eprintln!("{}", enforcer::error::chain(&e)),
        }
    }
}

fn wanted(r: &FlowRecord, args: &FlowsArgs) -> bool {
    let verdict = match r.verdict {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::WouldDeny => "would-deny",
    };
    (args.stats || r.kind != FlowKind::Stats)
        && args.verdict.as_deref().is_none_or(|v| v == verdict)
}

/// One record: time, the pod, the direction, the peer (pod, DNS name, Service or address),
/// protocol and server port, verdict, reason and the policy rule behind an allow.
pub fn row(r: &FlowRecord) -> String {
    let time = r.time.get(11..23).unwrap_or(&r.time);
    let arrow = match r.direction {
        Direction::Egress => "->",
        Direction::Ingress => "<-",
    };
    let pod = r.local.pod.clone().unwrap_or_else(|| r.interface.clone());
    let peer = r
        .remote
        .pod
        .clone()
        .or_else(|| r.remote.service.as_ref().map(|s| format!("svc/{s}")))
        .or_else(|| {
            r.remote
                .dns_name
                .as_ref()
                .map(|n| format!("{n} ({})", r.remote.ip))
        })
        .unwrap_or_else(|| r.remote.ip.to_string());
    let service = r.server_port().map_or_else(
        || r.protocol.to_string(),
        |port| format!("{}/{port}", r.protocol),
    );
    let text = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "-".into())
    };
    let verdict = text(serde_json::to_value(r.verdict));
    let reason = r
        .reason
        .map_or("-".into(), |x| text(serde_json::to_value(x)));
    let rejudged = if r.kind == FlowKind::Rejudged {
        " (re-judged)"
    } else {
        ""
    };
    format!(
        "{time:<12}  {pod:<40} {arrow:<3} {peer:<40} {service:<12} {verdict:<10} {reason:<10} {}{rejudged}",
        r.policy.as_deref().unwrap_or("-")
    )
}
