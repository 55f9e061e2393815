//! A proposal as a review: the learner's proposed policies as a policy set (`policy-gen`),
//! written as the files people review, with what was left out.

use std::path::{Path, PathBuf};

use learner::propose::{Note, Proposal};
use policy_gen::{
    export::{self, write_network_policies},
    set::{PolicySet, ReviewedPolicy},
};

/// What the proposal leaves out, and why (next to the policy folders).
pub const NOTES_FILE: &str = "NOTES.md";

/// The proposal's policies, each with its workload and evidence.
pub fn policy_set(proposal: &Proposal) -> PolicySet {
    let mut set = PolicySet::default();
    for p in &proposal.policies {
        set.insert(ReviewedPolicy {
            policy: p.policy.clone(),
            workload: Some(p.workload.to_string()),
            evidence: p.evidence.clone(),
            source: None,
        });
    }
    set
}

/// Write `proposal` into `out`: `networkpolicies/<ns>/<name>.yaml` and `NOTES.md`. Returns
/// the policy files.
pub fn write_proposal(out: &Path, proposal: &Proposal) -> Result<Vec<PathBuf>, export::Error> {
    let written = write_network_policies(out, &policy_set(proposal))?;
    let notes = out.join(NOTES_FILE);
    export::write_if_changed(&notes, &notes_text(&proposal.notes))?;
    Ok(written)
}

/// The notes as Markdown: one line per observation left out.
pub fn notes_text(notes: &[Note]) -> String {
    let mut text = String::from("# Observed but not in the proposal\n\n");
    if notes.is_empty() {
        text.push_str("Nothing: every observed connection has a rule.\n");
    }
    for note in notes {
        text.push_str(&format!("- **{}**: {}\n", note.workload, note.message));
    }
    text
}
