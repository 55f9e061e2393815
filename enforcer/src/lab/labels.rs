//! Changing the labels of pods and namespaces while the lab runs (`kubectl label`'s
//! `key=value` and `key-`), and the per-namespace zero-trust default, which is a namespace
//! label. Every change reaches the agent through the cluster and names files.

use std::{collections::BTreeMap, fmt, str::FromStr};

use model::netpol::{cluster::NAMESPACE_NAME_LABEL, evaluate::DefaultAction};

use super::{
    Lab,
    agent::{AgentOutcome, LogMark},
    error::{Error, Result},
    services,
    topology::{Labels, Namespace},
};
use crate::policy_source::DEFAULT_LABEL;

/// One change of a label: `key=value` sets it, `key-` removes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelEdit {
    Set(String, String),
    Remove(String),
}

impl FromStr for LabelEdit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Label {
            arg: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some((key, value)) = s.split_once('=') {
            if key.is_empty() {
                return Err(bad("the key is empty"));
            }
            return Ok(Self::Set(key.to_owned(), value.to_owned()));
        }
        match s.strip_suffix('-') {
            Some(key) if !key.is_empty() => Ok(Self::Remove(key.to_owned())),
            _ => Err(bad("expected key=value (set) or key- (remove)")),
        }
    }
}

impl fmt::Display for LabelEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Set(k, v) => write!(f, "{k}={v}"),
            Self::Remove(k) => write!(f, "{k}-"),
        }
    }
}

/// `labels` with `edits` applied in order, checked as the API server checks labels.
pub fn edit(
    labels: &BTreeMap<String, String>,
    edits: &[LabelEdit],
) -> Result<BTreeMap<String, String>> {
    let mut labels = labels.clone();
    for e in edits {
        match e {
            LabelEdit::Set(k, v) => {
                labels.insert(k.clone(), v.clone());
            }
            LabelEdit::Remove(k) => {
                labels.remove(k);
            }
        }
    }
    Labels::try_from(labels)
        .map(Into::into)
        .map_err(|e| Error::Label {
            arg: edits
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            reason: e.to_string(),
        })
}

/// The labels a pod or namespace has after a change, and what the agent made of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    pub labels: BTreeMap<String, String>,
    pub agent: AgentOutcome,
}

impl Lab {
    /// Change a pod's labels (`ns/pod`). Policies, services and flow records follow.
    pub fn label_pod(&mut self, pod: &str, edits: &[LabelEdit]) -> Result<Labelled> {
        let _lock = self.lock()?;
        self.reload()?;
        self.pod(pod)?;
        let index = self
            .state
            .pods
            .iter()
            .position(|p| p.name == pod)
            .expect("the pod exists");
        let labels = edit(&self.state.pods[index].labels, edits)?;
        self.state.pods[index].labels = labels.clone();
        self.state.save(&self.layout)?;
        // Services choose their backends by pod labels.
        services::apply(
            &self.layout.node_netns(),
            &services::render(&self.state.services, &self.state.pods),
        )?;
        let agent = self.publish_labels()?;
        Ok(Labelled { labels, agent })
    }

    /// Change a namespace's labels. `kubernetes.io/metadata.name` is the namespace's name
    /// and cannot change, as in Kubernetes.
    pub fn label_namespace(&mut self, namespace: &str, edits: &[LabelEdit]) -> Result<Labelled> {
        let _lock = self.lock()?;
        self.reload()?;
        self.namespace(namespace)?;
        if let Some(e) = edits.iter().find(|e| match e {
            LabelEdit::Set(k, v) => k == NAMESPACE_NAME_LABEL && v != namespace,
            LabelEdit::Remove(k) => k == NAMESPACE_NAME_LABEL,
        }) {
            return Err(Error::Label {
                arg: e.to_string(),
                reason: format!("{NAMESPACE_NAME_LABEL} is always the namespace's name"),
            });
        }
        let ns = self
            .state
            .topology
            .namespaces
            .iter_mut()
            .find(|n| n.name.as_str() == namespace)
            .expect("the namespace exists");
        let labels = edit(ns.labels.map(), edits)?;
        ns.labels = Labels::try_from(labels).expect("checked by edit");
        self.state.save(&self.layout)?;
        let agent = self.publish_labels()?;
        Ok(Labelled {
            labels: self.state.topology.namespace_labels(namespace),
            agent,
        })
    }

    /// A namespace's own default for pods no policy selects (the `palisade.io/default`
    /// label); `None` removes it, so the lab's default applies.
    pub fn set_namespace_default(
        &mut self,
        namespace: &str,
        default: Option<DefaultAction>,
    ) -> Result<Labelled> {
        let edit = match default {
            Some(DefaultAction::Allow) => LabelEdit::Set(DEFAULT_LABEL.into(), "allow".into()),
            Some(DefaultAction::Deny) => LabelEdit::Set(DEFAULT_LABEL.into(), "deny".into()),
            None => LabelEdit::Remove(DEFAULT_LABEL.into()),
        };
        self.label_namespace(namespace, &[edit])
    }

    /// The namespace's own default, if its label sets one.
    pub fn namespace_default(&self, namespace: &str) -> Option<DefaultAction> {
        match self
            .state
            .topology
            .namespace_labels(namespace)
            .get(DEFAULT_LABEL)
            .map(String::as_str)
        {
            Some("allow") => Some(DefaultAction::Allow),
            Some("deny") => Some(DefaultAction::Deny),
            _ => None,
        }
    }

    /// A namespace of the topology.
    pub(super) fn namespace(&self, name: &str) -> Result<&Namespace> {
        let namespaces = &self.state.topology.namespaces;
        namespaces
            .iter()
            .find(|n| n.name.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<String> = namespaces.iter().map(|n| n.name.to_string()).collect();
                self.unknown("namespace", name, known.iter())
            })
    }

    /// Rewrite the files the agent compiles from and wait for its answer.
    fn publish_labels(&self) -> Result<AgentOutcome> {
        let mark = LogMark::new(&self.layout.agent_log());
        self.state.write_agent_files(&self.layout)?;
        Ok(self.agent_answer(&mark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(args: &[&str]) -> Vec<LabelEdit> {
        args.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn kubectl_syntax() {
        assert_eq!(
            edits(&["app=web", "tier-", "empty="]),
            [
                LabelEdit::Set("app".into(), "web".into()),
                LabelEdit::Remove("tier".into()),
                LabelEdit::Set("empty".into(), String::new()),
            ]
        );
        for bad in ["app", "-", "=x"] {
            assert!(bad.parse::<LabelEdit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn edits_apply_in_order_and_are_checked() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let after = edit(&labels, &edits(&["app-", "role=db", "x.io/y=1"])).unwrap();
        assert_eq!(
            after,
            BTreeMap::from([
                ("role".to_owned(), "db".to_owned()),
                ("x.io/y".to_owned(), "1".to_owned()),
            ])
        );
        let err = edit(&labels, &edits(&["app=-bad"])).unwrap_err();
        assert!(err.to_string().contains("app=-bad"), "{err}");
        assert!(edit(&labels, &edits(&["Bad Key=x"])).is_err());
        // Removing a label that is not there is fine, as with kubectl.
        assert_eq!(edit(&labels, &edits(&["nope-"])).unwrap(), labels);
    }
}
