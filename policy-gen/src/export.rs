//! A policy set as files for a pull request: one NetworkPolicy per file at
//! `networkpolicies/<namespace>/<name>.yaml`. Each file opens with the evidence of its rules
//! as comments for the reviewer; the same evidence travels in the `palisade.io/evidence`
//! annotation (JSON) so it survives `kubectl apply`, `kubectl get -o yaml` and the import.
//! Same set, same bytes.
//!
//! A policy read from a file ([`crate::import`]) and not changed since is written back as
//! the reviewer left it, byte for byte: their comments and layout stay.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

use model::{Direction, evidence::RuleEvidence};

use crate::set::{EVIDENCE_ANNOTATION, PolicySet, ReviewedPolicy, WORKLOAD_ANNOTATION};

/// The folder NetworkPolicy files go in.
pub const NETWORK_POLICIES: &str = "networkpolicies";
/// The folder CiliumNetworkPolicy files go in.
pub const CILIUM_POLICIES: &str = "ciliumnetworkpolicies";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cilium(#[from] crate::cilium::Error),
}

/// Write every policy of `set` under `dir` (see the module docs); files of an earlier export
/// that are no longer in the set are removed, other files are left alone. Returns the
/// files written.
pub fn write_network_policies(dir: &Path, set: &PolicySet) -> Result<Vec<PathBuf>, Error> {
    write_all(&dir.join(NETWORK_POLICIES), set, &|policy| {
        Ok(match &policy.source {
            Some(source) if source.unchanged(&policy.policy) => source.text.clone(),
            _ => network_policy_text(policy),
        })
    })
}

/// Write every policy of `set` as a CiliumNetworkPolicy at
/// `ciliumnetworkpolicies/<namespace>/<name>.yaml` (for clusters that run Cilium; see
/// [`crate::cilium`]). A policy Cilium cannot express faithfully is an error naming it and
/// the field, and nothing is written.
pub fn write_cilium_policies(dir: &Path, set: &PolicySet) -> Result<Vec<PathBuf>, Error> {
    // Convert everything first: a refusal leaves the folder as it was.
    for policy in set.iter() {
        crate::cilium::to_yaml(policy)?;
    }
    write_all(&dir.join(CILIUM_POLICIES), set, &|policy| {
        Ok(crate::cilium::to_yaml(policy)?)
    })
}

type Render = dyn Fn(&ReviewedPolicy) -> Result<String, Error> + Sync;

fn write_all(root: &Path, set: &PolicySet, render: &Render) -> Result<Vec<PathBuf>, Error> {
    let root = root.to_owned();
    let policies: Vec<&ReviewedPolicy> = set.iter().collect();
    // Files are independent: written by a few threads, in set order within each.
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    let chunk = policies.len().div_ceil(threads).max(1);
    let written: Vec<PathBuf> = std::thread::scope(|scope| {
        let workers: Vec<_> = policies
            .chunks(chunk)
            .map(|part| scope.spawn(|| write_files(&root, part, render)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("an export thread panicked"))
            .collect::<Result<Vec<Vec<PathBuf>>, Error>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    remove_stale(&root, &written)?;
    Ok(written)
}

fn write_files(
    root: &Path,
    policies: &[&ReviewedPolicy],
    render: &Render,
) -> Result<Vec<PathBuf>, Error> {
    let mut written = Vec::with_capacity(policies.len());
    for policy in policies {
        let path = root.join(relative_path(policy));
        write_if_changed(&path, &render(policy)?)?;
        written.push(path);
    }
    Ok(written)
}

/// `<namespace>/<name>.yaml`, under the format's folder.
pub fn relative_path(policy: &ReviewedPolicy) -> PathBuf {
    Path::new(policy.namespace()).join(format!("{}.yaml", policy.name()))
}

/// The policy's file: the evidence as comments, then the YAML with the evidence and the
/// workload in annotations.
pub fn network_policy_text(policy: &ReviewedPolicy) -> String {
    let mut text = String::new();
    if let Some(workload) = &policy.workload {
        let _ = writeln!(
            text,
            "# Proposed by Palisade for {workload} from the traffic it was seen to need."
        );
    }
    if !policy.evidence.is_empty() {
        text.push_str(
            "# Evidence per rule (connections, client pods, days seen, first and last seen,\n\
             # confidence 0-1):\n",
        );
        let mut evidence: Vec<&RuleEvidence> = policy.evidence.iter().collect();
        evidence.sort_by_key(|e| (e.direction == Direction::Ingress, e.rule));
        for e in evidence {
            let _ = writeln!(text, "#   {}", evidence_line(e));
        }
    }
    let mut object = policy.policy.clone();
    let annotations = object
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    if let Some(workload) = &policy.workload {
        annotations.insert(WORKLOAD_ANNOTATION.into(), workload.clone());
    }
    if !policy.evidence.is_empty() {
        annotations.insert(
            EVIDENCE_ANNOTATION.into(),
            evidence_annotation(&policy.evidence),
        );
    }
    text.push_str(&serde_yaml::to_string(&object).expect("a NetworkPolicy serializes"));
    text
}

/// The evidence as the annotation holds it: a JSON array, one object per rule.
pub fn evidence_annotation(evidence: &[RuleEvidence]) -> String {
    serde_json::to_string(evidence).expect("evidence serializes")
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

fn trim_millis(time: &str) -> String {
    match time.strip_suffix(".000Z") {
        Some(t) => format!("{t}Z"),
        None => time.to_owned(),
    }
}

/// Write through a temporary file and a rename (a reader following the folder never sees
/// half a file); a file that already holds `text` is not touched.
pub fn write_if_changed(path: &Path, text: &str) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, text).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// Remove `*.yaml` files under `root` (one level of namespace folders) that an earlier export
/// wrote and this one did not: a policy dropped from the set must not linger in the PR.
fn remove_stale(root: &Path, written: &[PathBuf]) -> Result<(), Error> {
    let Ok(namespaces) = fs::read_dir(root) else {
        return Ok(());
    };
    let written: HashSet<&PathBuf> = written.iter().collect();
    for ns in namespaces.flatten() {
        let Ok(files) = fs::read_dir(ns.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if written.contains(&path) {
                continue;
            }
            let ours = path.extension().is_some_and(|e| e == "yaml")
                && fs::read_to_string(&path).is_ok_and(|t| {
                    t.contains(crate::set::MANAGED_BY.1) && t.contains(WORKLOAD_ANNOTATION)
                });
            if ours {
                fs::remove_file(&path).map_err(|source| Error::Write { path, source })?;
            }
        }
    }
    Ok(())
}
