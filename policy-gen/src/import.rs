//! Reviewed files back into a policy set: what is enforced is what the reviewer left in the
//! files. Every `*.yaml`, `*.yml` and `*.json` under a folder (namespace folders included) is
//! read as the API server would read it (`model::netpol::load`: a policy it would refuse is
//! an error naming the file, document, line and field); the workload and the evidence come
//! back from their annotations, and each document's text is kept so an unchanged policy is
//! written back byte for byte.

use std::{
    fs,
    path::{Path, PathBuf},
};

use model::{
    evidence::RuleEvidence,
    netpol::load::{LoadError, is_policy_file, load_str},
};

use crate::set::{EVIDENCE_ANNOTATION, PolicySet, ReviewedPolicy, Source, WORKLOAD_ANNOTATION};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{file}: document {document}: metadata.annotations[{EVIDENCE_ANNOTATION:?}]: not \
         Palisade's evidence: {message}"
    )]
    Evidence {
        file: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{id} is defined twice: {first} and {second}")]
    Duplicate {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Every policy file under `dir` (recursively; hidden files and folders ignored), in path
/// order.
pub fn import_dir(dir: &Path) -> Result<PolicySet, Error> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut set = PolicySet::default();
    for file in files {
        for policy in import_file(&file)? {
            let id = policy.id();
            if let Some(first) = set.policies.get(&id) {
                return Err(Error::Duplicate {
                    id,
                    first: first
                        .source
                        .as_ref()
                        .map(|s| s.file.clone())
                        .unwrap_or_default(),
                    second: file,
                });
            }
            set.insert(policy);
        }
    }
    Ok(set)
}

/// The policies of one file.
pub fn import_file(path: &Path) -> Result<Vec<ReviewedPolicy>, Error> {
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let loaded = load_str(&text, path)?;
    let documents = split_documents(&text);
    // Texts only when each document is one policy (not a List, not JSON).
    let texts = (documents.len() == loaded.len()).then_some(documents);
    loaded
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let annotations = l.policy.metadata.annotations.clone().unwrap_or_default();
            let evidence = match annotations.get(EVIDENCE_ANNOTATION) {
                None => Vec::new(),
                Some(json) => serde_json::from_str::<Vec<RuleEvidence>>(json).map_err(|e| {
                    Error::Evidence {
                        file: path.to_owned(),
                        document: l.document,
                        message: e.to_string(),
                    }
                })?,
            };
            Ok(ReviewedPolicy {
                workload: annotations.get(WORKLOAD_ANNOTATION).cloned(),
                evidence,
                source: Some(Source {
                    file: path.to_owned(),
                    document: l.document,
                    text: texts.as_ref().map(|t| t[i].clone()).unwrap_or_default(),
                    original: l.policy.clone(),
                }),
                policy: l.policy,
            })
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().as_encoded_bytes().starts_with(b".");
        if path.is_dir() && !hidden {
            collect(&path, files)?;
        } else if is_policy_file(&path) {
            files.push(path);
        }
    }
    Ok(())
}

/// A YAML file's documents, each with the comments before it: split at `---` lines, empty
/// documents (only comments or blanks) joined to the next one. A JSON file is one document.
fn split_documents(text: &str) -> Vec<String> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let has_content = |doc: &str| {
        doc.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---")
    };
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" && has_content(&current) {
            documents.push(std::mem::take(&mut current));
            continue;
        }
        if line.trim_end() == "---" {
            continue;
        }
        current.push_str(line);
    }
    if has_content(&current) {
        documents.push(current);
    }
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_comments() {
        let docs = split_documents("# a\nkind: A\n---\n# b\n\n---\nkind: B\n---\n");
        assert_eq!(docs, ["# a\nkind: A\n", "# b\n\nkind: B\n"]);
        assert_eq!(split_documents("---\nkind: A\n"), ["kind: A\n"]);
    }
}
