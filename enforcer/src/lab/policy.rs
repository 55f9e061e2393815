//! The lab's NetworkPolicies: the folder the agent enforces (`<run dir>/policies/`), one
//! policy per file named `<namespace>.<name>.yaml`, written atomically. `apply` checks a
//! file as the API server would before anything is written, so a bad file changes nothing.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use model::netpol::{
    load::{self, Loaded, is_policy_file},
    policy::Policy,
    selector::{Operator, Selector},
};

use super::{
    Lab,
    agent::{AgentOutcome, LogMark},
    error::{Error, Result},
    state::write_atomically,
};

/// What happened to one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyChange {
    /// `namespace/name`.
    pub name: String,
    pub action: Action,
    pub file: PathBuf,
}

/// What a policy command changed, and the agent's answer (`None` when nothing changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyChanges {
    pub changes: Vec<PolicyChange>,
    pub agent: Option<AgentOutcome>,
}

/// One policy of the lab, summarised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEntry {
    /// `namespace/name`.
    pub name: String,
    /// The pods it selects, as `kubectl` writes selectors; `(all pods)` for `{}`.
    pub pod_selector: String,
    /// `Ingress`, `Egress`, or both, after defaulting.
    pub types: Vec<&'static str>,
    pub ingress_rules: usize,
    pub egress_rules: usize,
    pub file: PathBuf,
}

impl Lab {
    pub fn policies_dir(&self) -> PathBuf {
        self.layout.policies_dir()
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.layout.cluster_file()
    }

    /// Apply the policies in `files` (YAML, several documents allowed, or JSON): each
    /// replaces the lab's policy of the same namespace and name. Every file is read and
    /// checked before anything is written.
    pub fn apply_policy_files(&mut self, files: &[PathBuf]) -> Result<PolicyChanges> {
        let mut loaded = Vec::new();
        for file in files {
            loaded.extend(load::load_file(file).map_err(|source| Error::PolicyFile { source })?);
        }
        self.apply_loaded(loaded)
    }

    /// The same, from text; `source` names it in errors (`.json`: JSON, else YAML).
    pub fn apply_policy_text(&mut self, text: &str, source: &Path) -> Result<PolicyChanges> {
        let loaded = load::load_str(text, source).map_err(|source| Error::PolicyFile { source })?;
        self.apply_loaded(loaded)
    }

    fn apply_loaded(&mut self, loaded: Vec<Loaded>) -> Result<PolicyChanges> {
        let _lock = self.lock()?;
        self.reload()?;
        let mut writes: Vec<(String, PathBuf, String)> = Vec::new();
        for l in &loaded {
            let policy = Policy::from_k8s(&l.policy).map_err(|message| Error::Policy {
                file: l.file.clone(),
                document: l.document,
                message,
            })?;
            let name = policy.name.to_string();
            self.namespace(&policy.name.namespace)?;
            if let Some((_, first, _)) = writes.iter().find(|(n, _, _)| *n == name) {
                return Err(Error::Policy {
                    file: l.file.clone(),
                    document: l.document,
                    message: format!(
                        "NetworkPolicy {name} is given twice (first in {})",
                        first.display()
                    ),
                });
            }
            let text = serde_yaml::to_string(&l.policy).map_err(|e| Error::Policy {
                file: l.file.clone(),
                document: l.document,
                message: e.to_string(),
            })?;
            let file = self
                .layout
                .policies_dir()
                .join(file_name(&policy.name.namespace, &policy.name.name));
            writes.push((name, file, text));
        }
        let mark = LogMark::new(&self.layout.agent_log());
        let mut changes = Vec::new();
        for (name, file, text) in writes {
            let action = match std::fs::read_to_string(&file) {
                Ok(old) if old == text => Action::Unchanged,
                Ok(_) => Action::Configured,
                Err(_) => Action::Created,
            };
            if action != Action::Unchanged {
                write_atomically(&file, text.as_bytes())?;
            }
            changes.push(PolicyChange { name, action, file });
        }
        let changed = changes.iter().any(|c| c.action != Action::Unchanged);
        Ok(PolicyChanges {
            changes,
            agent: changed.then(|| self.agent_answer(&mark)),
        })
    }

    /// Delete policies by `namespace/name`. Nothing is deleted if one of them does not
    /// exist.
    pub fn delete_policies(&mut self, names: &[String]) -> Result<PolicyChanges> {
        let _lock = self.lock()?;
        self.reload()?;
        let policies = self.loaded_policies()?;
        let mut files = Vec::new();
        for name in names {
            let Some(found) = policies.iter().find(|(n, _)| n == name) else {
                let known: Vec<String> = policies.iter().map(|(n, _)| n.clone()).collect();
                return Err(self.unknown("NetworkPolicy", name, known.iter()));
            };
            let file = found.1.file.clone();
            let shared = policies.iter().filter(|(_, l)| l.file == file).count();
            if shared > 1 {
                return Err(Error::Policy {
                    file,
                    document: found.1.document,
                    message: format!(
                        "NetworkPolicy {name} shares its file with other policies: edit it by hand"
                    ),
                });
            }
            files.push((name.clone(), file));
        }
        self.remove_policy_files(files)
    }

    /// Delete every policy of the lab.
    pub fn delete_all_policies(&mut self) -> Result<PolicyChanges> {
        let _lock = self.lock()?;
        self.reload()?;
        let mut files = Vec::new();
        for file in self.policy_files()? {
            // A file that does not load is deleted too, named by its file.
            let name = match load::load_file(&file) {
                Ok(loaded) => loaded
                    .iter()
                    .map(policy_name)
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(_) => file.display().to_string(),
            };
            files.push((name, file));
        }
        self.remove_policy_files(files)
    }

    /// The lab's policies, in file-name order.
    pub fn policies(&self) -> Result<Vec<PolicyEntry>> {
        self.loaded_policies()?
            .into_iter()
            .map(|(name, l)| {
                let policy = Policy::from_k8s(&l.policy).map_err(|message| Error::Policy {
                    file: l.file.clone(),
                    document: l.document,
                    message,
                })?;
                let mut types = Vec::new();
                if policy.ingress.is_some() {
                    types.push("Ingress");
                }
                if policy.egress.is_some() {
                    types.push("Egress");
                }
                Ok(PolicyEntry {
                    name,
                    pod_selector: render_selector(&policy.pod_selector),
                    types,
                    ingress_rules: policy.ingress.as_ref().map_or(0, Vec::len),
                    egress_rules: policy.egress.as_ref().map_or(0, Vec::len),
                    file: l.file,
                })
            })
            .collect()
    }

    fn remove_policy_files(&self, files: Vec<(String, PathBuf)>) -> Result<PolicyChanges> {
        let mark = LogMark::new(&self.layout.agent_log());
        let mut changes = Vec::new();
        for (name, file) in files {
            std::fs::remove_file(&file).map_err(|e| Error::io(&file, e))?;
            changes.push(PolicyChange {
                name,
                action: Action::Deleted,
                file,
            });
        }
        let agent = (!changes.is_empty()).then(|| self.agent_answer(&mark));
        Ok(PolicyChanges { changes, agent })
    }

    /// `namespace/name` and the loaded policy, for every policy of the folder.
    fn loaded_policies(&self) -> Result<Vec<(String, Loaded)>> {
        let dir = self.layout.policies_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let loaded = load::load_dir(&dir).map_err(|source| Error::PolicyFile { source })?;
        Ok(loaded.into_iter().map(|l| (policy_name(&l), l)).collect())
    }

    /// The policy files of the folder (those the agent reads).
    fn policy_files(&self) -> Result<Vec<PathBuf>> {
        let dir = self.layout.policies_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| is_policy_file(p))
            .collect();
        files.sort();
        Ok(files)
    }
}

/// `<namespace>.<name>.yaml`: a namespace has no dots, so the name is what follows the first.
pub fn file_name(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}.yaml")
}

/// `namespace/name` of a loaded policy (the loader fills the namespace in).
fn policy_name(loaded: &Loaded) -> String {
    let meta = &loaded.policy.metadata;
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// A selector as `kubectl` writes it: `app=web,tier in (a,b),!legacy`.
pub fn render_selector(selector: &Selector) -> String {
    if selector.requirements.is_empty() {
        return "(all pods)".into();
    }
    selector
        .requirements
        .iter()
        .map(|r| match &r.operator {
            Operator::In(values) if values.len() == 1 => format!("{}={}", r.key, values[0]),
            Operator::In(values) => format!("{} in ({})", r.key, values.join(",")),
            Operator::NotIn(values) => format!("{} notin ({})", r.key, values.join(",")),
            Operator::Exists => r.key.clone(),
            Operator::DoesNotExist => format!("!{}", r.key),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use model::netpol::selector::Requirement;

    use super::*;

    #[test]
    fn selectors_read_like_kubectl() {
        let req = |key: &str, operator| Requirement {
            key: key.into(),
            operator,
        };
        let selector = Selector {
            requirements: vec![
                req("app", Operator::In(vec!["web".into()])),
                req("tier", Operator::In(vec!["a".into(), "b".into()])),
                req("env", Operator::NotIn(vec!["dev".into()])),
                req("team", Operator::Exists),
                req("legacy", Operator::DoesNotExist),
            ],
        };
        assert_eq!(
            render_selector(&selector),
            "app=web,tier in (a,b),env notin (dev),team,!legacy"
        );
        assert_eq!(render_selector(&Selector::default()), "(all pods)");
    }

    #[test]
    fn example_policies_load_and_fit_the_shop() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab/policies");
        let shop = crate::lab::Topology::default_shop();
        let loaded = load::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!loaded.is_empty(), "examples in {}", dir.display());
        for l in &loaded {
            let policy = Policy::from_k8s(&l.policy).unwrap();
            assert!(
                shop.namespaces
                    .iter()
                    .any(|n| n.name.as_str() == policy.name.namespace),
                "{}: {} is not a namespace of the shop",
                l.file.display(),
                policy.name.namespace
            );
        }
    }

    #[test]
    fn a_policy_is_written_as_a_document_that_loads_back() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {}}]\n    ports: [{port: 80, endPort: 81}]\n";
        let loaded = load::load_str(text, Path::new("in.yaml")).unwrap();
        let written = serde_yaml::to_string(&loaded[0].policy).unwrap();
        let again = load::load_str(&written, Path::new("out.yaml")).unwrap();
        assert_eq!(again[0].policy, loaded[0].policy, "{written}");
        assert!(written.contains("kind: NetworkPolicy"), "{written}");
        assert_eq!(file_name("x", "web.v2"), "x.web.v2.yaml");
    }
}
