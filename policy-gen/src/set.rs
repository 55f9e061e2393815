//! A policy set under review: NetworkPolicies, each with the workload it is for and the
//! evidence behind its rules, carried in annotations so they travel with the YAML through
//! git, `kubectl apply` and back.

use std::{collections::BTreeMap, path::PathBuf};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use model::evidence::RuleEvidence;

pub use model::evidence::{EVIDENCE_ANNOTATION, MANAGED_BY, WORKLOAD_ANNOTATION};

/// One policy under review.
#[derive(Clone, Debug, PartialEq)]
pub struct ReviewedPolicy {
    /// The policy as it is enforced (its annotations included).
    pub policy: NetworkPolicy,
    /// The workload it was proposed for (`namespace/Kind/name`), when known.
    pub workload: Option<String>,
    /// The evidence of its rules, as proposed; rules a reviewer added have none.
    pub evidence: Vec<RuleEvidence>,
    /// Where it was read from, when it was imported: the file and the document's text.
    pub source: Option<Source>,
}

/// Where an imported policy came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based document number in the file.
    pub document: usize,
    /// The document's text as the reviewer left it (comments and layout included), when
    /// the file has one policy per document (not a `kind: List`).
    pub text: String,
    /// The policy as read: while the set's copy equals it, an export writes `text` back.
    pub original: NetworkPolicy,
}

impl Source {
    pub fn unchanged(&self, policy: &NetworkPolicy) -> bool {
        !self.text.is_empty() && *policy == self.original
    }
}

impl ReviewedPolicy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        let m = &self.policy.metadata;
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or_default()
        )
    }

    pub fn namespace(&self) -> &str {
        self.policy
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        self.policy.metadata.name.as_deref().unwrap_or_default()
    }
}

/// Policies by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    pub policies: BTreeMap<String, ReviewedPolicy>,
}

impl PolicySet {
    pub fn insert(&mut self, policy: ReviewedPolicy) -> Option<ReviewedPolicy> {
        self.policies.insert(policy.id(), policy)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ReviewedPolicy> {
        self.policies.values()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}
