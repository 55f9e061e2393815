//! The demo's review step: the lab's flow records into a baseline, the proposal, a replay
//! of what was recorded against it, and the report, all under the demo's output folder.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use learner::{
    connections::connections,
    ingest::{self, ingest_file},
    propose::{Options, policy_name, propose},
    store::Store,
    workload::WorkloadRef,
};
use model::netpol::{cluster::Cluster, evaluate::DefaultAction};
use policy_gen::{
    replay::{ReplayOptions, replay},
    report::{self, ReportInput},
};

use crate::{lab::Lab, review::write_proposal};

pub struct Review {
    pub policy_files: Vec<PathBuf>,
    /// One line for the demo's output.
    pub summary: String,
    /// Workload (`ns/Kind/name`) -> its policy (`ns/name`).
    policies: BTreeMap<String, String>,
}

impl Review {
    /// The proposed policy selecting `workload`'s pods.
    pub fn policy_of(&self, workload: &str) -> Option<String> {
        self.policies.get(workload).cloned()
    }
}

pub fn review(lab: &Lab, out: &Path) -> anyhow::Result<Review> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let db = out.join("baseline.db");
    // A fresh baseline each run: the lab's records are new.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let mut store = Store::open(&db)?;
    let ingested = ingest_file(
        &mut store,
        &lab.flows_file(),
        &ingest::Options::default(),
        &mut |_| {},
    )?;
    let baseline = store.baseline(None)?;
    let text = std::fs::read_to_string(lab.cluster_file())
        .with_context(|| format!("reading {}", lab.cluster_file().display()))?;
    let cluster: Cluster = serde_json::from_str(&text).context("the lab's cluster file")?;
    let proposal = propose(&baseline, &cluster, &Options::default());
    let proposal_dir = out.join("proposal");
    let policy_files = write_proposal(&proposal_dir, &proposal)?;
    let set = crate::review::policy_set(&proposal);
    let flows = connections(&baseline, &cluster);
    let options = ReplayOptions {
        default: DefaultAction::Allow,
        new_since: None,
    };
    let replayed = replay(&set, &cluster, &flows, &options)?;
    let notes: Vec<String> = proposal
        .notes
        .iter()
        .map(|n| format!("{}: {}", n.workload, n.message))
        .collect();
    let input = ReportInput {
        title: "Palisade lab demo: the shop's proposed policies",
        policies: &set,
        replay: Some(&replayed),
        diff: None,
        notes: &notes,
    };
    let html = out.join("review.html");
    std::fs::write(&html, report::html(&input))
        .with_context(|| format!("writing {}", html.display()))?;
    std::fs::write(out.join("review.md"), report::markdown(&input)).context("writing review.md")?;
    let policies = proposal
        .policies
        .iter()
        .map(|p| {
            let w: &WorkloadRef = &p.workload;
            (w.to_string(), format!("{}/{}", w.namespace, policy_name(w)))
        })
        .collect();
    let rules: usize = set
        .iter()
        .filter_map(|p| p.policy.spec.as_ref())
        .map(|s| s.ingress.as_ref().map_or(0, Vec::len) + s.egress.as_ref().map_or(0, Vec::len))
        .sum();
    Ok(Review {
        summary: format!(
            "{} records -> {} learned rules -> {} policies ({rules} rules) in {}; replayed: {:.1}% of {} recorded connections allowed; report: {}",
            ingested.records,
            baseline.len(),
            policy_files.len(),
            proposal_dir.display(),
            100.0 * replayed.coverage(),
            replayed.connections(),
            html.display()
        ),
        policy_files,
        policies,
    })
}
