//! A proposal as files for review: one NetworkPolicy per workload, each opening with the
//! evidence behind its rules as comments (which `kubectl apply` and the API server
//! ignore), `evidence.jsonl` with the same evidence for tools, and `NOTES.md` with what
//! was observed but left out, and why. Same proposal, same bytes.

use std::{
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

use model::Direction;

use model::evidence::RuleEvidence;

use crate::propose::{Proposal, ProposedPolicy};

pub const EVIDENCE_FILE: &str = "evidence.jsonl";
pub const NOTES_FILE: &str = "NOTES.md";

/// Write `proposal` into `dir` (created if needed), replacing files of the same names.
/// Returns the policy files written.
pub fn write_proposal(dir: &Path, proposal: &Proposal) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut evidence = String::new();
    for policy in &proposal.policies {
        let path = dir.join(file_name(policy));
        write_atomically(&path, &policy_text(policy))?;
        written.push(path);
        for e in &policy.evidence {
            evidence.push_str(&serde_json::to_string(e).map_err(io::Error::other)?);
            evidence.push('\n');
        }
    }
    write_atomically(&dir.join(EVIDENCE_FILE), &evidence)?;
    write_atomically(&dir.join(NOTES_FILE), &notes_text(proposal))?;
    Ok(written)
}

/// `<namespace>.<kind>.<name>.yaml`, lower case kind.
pub fn file_name(policy: &ProposedPolicy) -> String {
    let w = &policy.workload;
    format!(
        "{}.{}.{}.yaml",
        w.namespace,
        w.kind.to_ascii_lowercase(),
        w.name
    )
}

/// The policy's YAML after a comment block with the evidence of each rule.
pub fn policy_text(policy: &ProposedPolicy) -> String {
    let mut text = format!(
        "# Proposed by Palisade for {} from the traffic it was seen to need.\n\
         # Evidence per rule (connections, client pods, days seen, first and last seen,\n\
         # confidence 0-1):\n",
        policy.workload
    );
    let mut evidence: Vec<&RuleEvidence> = policy.evidence.iter().collect();
    evidence.sort_by_key(|e| (e.direction == Direction::Ingress, e.rule));
    for e in evidence {
        let _ = writeln!(text, "#   {}", evidence_line(e));
    }
    let dns = "#   egress: DNS to the cluster resolver (UDP and TCP 53), always included\n";
    text.push_str(dns);
    text.push_str(&serde_yaml::to_string(&policy.policy).expect("a NetworkPolicy serializes"));
    text
}

/// `egress[1] to workload shop/Deployment/api TCP 8080: 42 connections, 3 pods, 2 days,
/// 2026-11-27T09:00:00Z .. 2026-11-28T10:00:00Z, confidence 0.71`.
pub fn evidence_line(e: &RuleEvidence) -> String {
    let (dir, way) = match e.direction {
        Direction::Egress => ("egress", "to"),
        Direction::Ingress => ("ingress", "from"),
    };
    let port = e.port.map(|p| format!(" {p}")).unwrap_or_default();
    let pods = if e.source_pods_saturated {
        format!("{}+ pods", e.source_pods.len())
    } else {
        plural(e.source_pods.len() as u64, "pod")
    };
    let mut line = format!(
        "{dir}[{}] {way} {} {}{port}: {}, {pods}, {}, {} .. {}, confidence {:.2}",
        e.rule,
        e.peer,
        e.protocol,
        plural(e.connections, "connection"),
        plural(u64::from(e.days), "day"),
        trim_millis(&e.first_seen),
        trim_millis(&e.last_seen),
        e.confidence,
    );
    if let Some(w) = &e.widened {
        let _ = write!(line, " (as {}: {})", w.cidr, w.reason);
    }
    line
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn trim_millis(time: &str) -> &str {
    time.strip_suffix(".000Z")
        .map_or(time, |t| &time[..t.len()])
}

fn notes_text(proposal: &Proposal) -> String {
    let mut text = String::from("# Observed but not in the proposal\n\n");
    if proposal.notes.is_empty() {
        text.push_str("Nothing: every observed connection has a rule.\n");
    }
    for note in &proposal.notes {
        let _ = writeln!(text, "- **{}**: {}", note.workload, note.message);
    }
    text
}

/// Write through a temporary file and a rename, so a reader (an agent following the
/// folder) never sees half a file.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}
