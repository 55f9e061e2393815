//! The compiled policy of one node as a file: rules per endpoint interface, identities of
//! pod and node addresses, and CIDR identities. (NetworkPolicy YAML compiles to this.)
//!
//! ```yaml
//! endpoints:
//!   pl-lab-1:
//!     ingress: isolated
//!     egress: open
//!     rules:
//!       - {id: 1, direction: ingress, peer: {identity: 300}, protocol: tcp, ports: {first: 80, last: 80}}
//! ipcache:
//!   10.244.0.3: 300
//! cidrs:
//!   203.0.113.0/24: 16777216
//! ```

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use ipnet::IpNet;
use model::{
    identity::Identity,
    rules::{EndpointRules, Service},
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::writer::Desired,
    error::{Error, Result},
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePolicy {
    /// Host-side interface name -> its rules.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointRules>,
    #[serde(default)]
    pub ipcache: BTreeMap<IpAddr, Identity>,
    #[serde(default)]
    pub cidrs: BTreeMap<IpNet, Identity>,
    #[serde(default)]
    pub services: Vec<Service>,
}

impl NodePolicy {
    /// Read a YAML or JSON file (JSON when its name ends in `.json`: the same document,
    /// parsed several times faster, for machine-written policies); errors name the file,
    /// line and column.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |e: Box<dyn std::error::Error + Send + Sync>| Error::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        };
        if path.extension().is_some_and(|e| e == "json") {
            return serde_json::from_str(&text).map_err(|e| invalid(e.into()));
        }
        // Enums as one-key maps (`peer: {identity: 300}`), as in JSON, rather than YAML tags.
        let document = serde_yaml::Deserializer::from_str(&text);
        serde_yaml::with::singleton_map_recursive::deserialize(document)
            .map_err(|e| invalid(e.into()))
    }

    /// Resolve interface names to ifindexes (with `ifindex_of`, in the node's namespace).
    pub fn resolve(&self, ifindex_of: impl Fn(&str) -> Result<u32>) -> Result<Desired> {
        let endpoints = self
            .endpoints
            .iter()
            .map(|(iface, rules)| Ok((ifindex_of(iface)?, rules.clone())))
            .collect::<Result<_>>()?;
        Ok(Desired {
            endpoints,
            ipcache: self.ipcache.clone(),
            cidrs: self.cidrs.iter().map(|(n, i)| (n.trunc(), *i)).collect(),
            services: self.services.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use model::{
        Direction, Protocol,
        rules::{Isolation, Peer, PortRange},
    };

    use super::*;

    const EXAMPLE: &str = r#"
endpoints:
  pl-lab-1:
    ingress: isolated
    egress: open
    rules:
      - {id: 1, direction: ingress, peer: {identity: 300}, protocol: tcp, ports: {first: 80, last: 80}}
      - {id: 2, direction: egress, peer: {cidr: {net: 203.0.113.0/24, except: [203.0.113.128/25]}}}
      - {id: 3, direction: egress, peer: any, protocol: udp}
ipcache:
  10.244.0.3: 300
cidrs:
  203.0.113.0/24: 16777216
"#;

    #[test]
    fn the_documented_example_parses_and_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let policy = NodePolicy::load(&path).unwrap();
        let rules = &policy.endpoints["pl-lab-1"];
        assert_eq!(rules.ingress, Isolation::Isolated);
        assert_eq!(rules.rules[0].peer, Peer::Identity(Identity(300)));
        assert_eq!(rules.rules[0].protocol, Some(Protocol::Tcp));
        assert_eq!(rules.rules[0].ports, Some(PortRange::single(80)));
        assert_eq!(rules.rules[2].peer, Peer::Any);
        assert_eq!(rules.rules[1].direction, Direction::Egress);
        let desired = policy.resolve(|_| Ok(7)).unwrap();
        assert!(desired.endpoints.contains_key(&7));
        assert_eq!(desired.cidrs.len(), 1);
    }

    #[test]
    fn json_and_yaml_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("node.yaml");
        std::fs::write(&yaml, EXAMPLE).unwrap();
        let policy = NodePolicy::load(&yaml).unwrap();
        let json = dir.path().join("node.json");
        std::fs::write(&json, serde_json::to_string(&policy).unwrap()).unwrap();
        assert_eq!(NodePolicy::load(&json).unwrap(), policy);
        std::fs::write(&json, "{\"endpoints\": {\n \"pl-x\": {\"ingress\": 1}}}").unwrap();
        let err = NodePolicy::load(&json).unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            text.contains("node.json") && text.contains("line 2"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_file_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "endpoints:\n  pl-x:\n    ingress: sometimes\n").unwrap();
        let err = NodePolicy::load(&path).unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            text.contains("bad.yaml") && text.contains("line 3"),
            "{text}"
        );
    }
}
