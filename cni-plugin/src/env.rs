//! The runtime's side of a CNI invocation: the `CNI_*` environment variables and the
//! `KEY=VALUE;...` pairs of `CNI_ARGS`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::protocol::PodRef;

/// The CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Version,
    /// CNI 1.1: can the plugin serve ADD?
    Status,
    /// CNI 1.1: garbage-collect attachments that are no longer valid.
    Gc,
}

impl CniCommand {
    fn parse(command: &str) -> Result<CniCommand> {
        Ok(match command {
            "ADD" => CniCommand::Add,
            "DEL" => CniCommand::Del,
            "CHECK" => CniCommand::Check,
            "VERSION" => CniCommand::Version,
            "STATUS" => CniCommand::Status,
            "GC" => CniCommand::Gc,
            _ => {
                return Err(Error::UnknownCommand {
                    command: command.to_string(),
                });
            }
        })
    }

    /// The spec's name of the command.
    pub fn name(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }
}

/// The `CNI_*` variables of one invocation. Which ones are required depends on the
/// command, so they are kept optional here and required by [`CniEnv::require`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: CniCommand,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: CniArgs,
}

impl CniEnv {
    /// Reads the variables through `var` (the process environment in the binary, a map in
    /// tests). Empty values count as absent, as runtimes set some of them to "" on DEL.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<CniEnv> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = get("CNI_COMMAND").ok_or(Error::MissingEnv {
            name: "CNI_COMMAND",
        })?;
        Ok(CniEnv {
            command: CniCommand::parse(&command)?,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?,
        })
    }

    /// The value of a variable the current command cannot do without.
    pub fn require<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str> {
        value.as_deref().ok_or(Error::MissingEnv { name })
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(BTreeMap<String, String>);

impl CniArgs {
    /// Parses `CNI_ARGS`. Empty entries (a trailing `;`) are skipped; a value may contain
    /// `=`, only the first one separates.
    pub fn parse(text: &str) -> Result<CniArgs> {
        let mut pairs = BTreeMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (key, value) = entry.split_once('=').ok_or_else(|| Error::BadCniArgs {
                entry: entry.to_string(),
            })?;
            if key.is_empty() {
                return Err(Error::BadCniArgs {
                    entry: entry.to_string(),
                });
            }
            pairs.insert(key.to_string(), value.to_string());
        }
        Ok(CniArgs(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The Kubernetes pod the sandbox belongs to, when the runtime says (kubelet's CRI
    /// runtimes pass `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, most also `K8S_POD_UID`).
    pub fn pod(&self) -> Option<PodRef> {
        Some(PodRef {
            namespace: self.get("K8S_POD_NAMESPACE")?.to_string(),
            name: self.get("K8S_POD_NAME")?.to_string(),
            uid: self.get("K8S_POD_UID").map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn cni_args_give_the_pod() {
        let args = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d9f;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0b5e-11;",
        )
        .unwrap();
        assert_eq!(args.get("IgnoreUnknown"), Some("1"));
        assert_eq!(
            args.pod(),
            Some(PodRef {
                namespace: "shop".into(),
                name: "web-7d9f".into(),
                uid: Some("0b5e-11".into()),
            })
        );
    }

    #[test]
    fn cni_args_without_uid_or_name() {
        let args = CniArgs::parse("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web").unwrap();
        assert_eq!(args.pod().unwrap().uid, None);
        let args = CniArgs::parse("K8S_POD_NAMESPACE=shop").unwrap();
        assert_eq!(args.pod(), None);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn cni_args_values_keep_later_equals_signs() {
        let args = CniArgs::parse("A=b=c; B = x").unwrap();
        assert_eq!(args.get("A"), Some("b=c"));
        assert_eq!(args.get("B "), Some(" x"));
    }

    #[test]
    fn cni_args_entries_without_equals_are_refused() {
        let err = CniArgs::parse("K8S_POD_NAME=web;garbage").unwrap_err();
        assert!(matches!(&err, Error::BadCniArgs { entry } if entry == "garbage"));
        assert!(CniArgs::parse("=value").is_err());
    }

    #[test]
    fn env_reads_the_variables_and_treats_empty_as_absent() {
        let vars: HashMap<&str, &str> = HashMap::from([
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"),
        ]);
        let env = CniEnv::from_vars(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(env.command, CniCommand::Del);
        assert_eq!(env.netns, None);
        assert_eq!(CniEnv::require(&env.ifname, "CNI_IFNAME").unwrap(), "eth0");
        assert!(matches!(
            CniEnv::require(&env.netns, "CNI_NETNS"),
            Err(Error::MissingEnv { name: "CNI_NETNS" })
        ));
        assert_eq!(env.args.pod().unwrap().name, "b");
    }

    #[test]
    fn env_needs_a_known_command() {
        assert!(matches!(
            CniEnv::from_vars(|_| None),
            Err(Error::MissingEnv {
                name: "CNI_COMMAND"
            })
        ));
        let err =
            CniEnv::from_vars(|k| (k == "CNI_COMMAND").then(|| "UPGRADE".into())).unwrap_err();
        assert!(matches!(err, Error::UnknownCommand { .. }));
    }
}
