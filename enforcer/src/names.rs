//! Names for what the datapath only knows by number: interface -> pod, address -> pod,
//! external host or Service. Whoever creates endpoints (the lab today, the Kubernetes watcher later)
//! writes this file; the agent reads it to name the pods in its flow records.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    /// Host-side interface name -> `namespace/pod`.
    #[serde(default)]
    pub interfaces: BTreeMap<String, String>,
    /// Address -> `namespace/pod`, or the name of an external host.
    #[serde(default)]
    pub addresses: BTreeMap<IpAddr, String>,
    /// `namespace/pod` -> what records say about it instead of identity numbers.
    #[serde(default)]
    pub pods: BTreeMap<String, PodMeta>,
    /// ClusterIP -> `namespace/name` of its Service: a pod that connects to the address
    /// reached the Service.
    #[serde(default)]
    pub services: BTreeMap<IpAddr, String>,
}

/// A pod as flow records describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    /// `namespace/Kind/name` of its workload; `None` for a bare pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Its identity-relevant labels (noise labels removed).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Names {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| io(path, source))?;
        serde_json::from_str(&text).map_err(|e| io(path, std::io::Error::other(e)))
    }

    /// Write atomically (temporary file + rename), so a reader never sees half a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let text = serde_json::to_string_pretty(self).map_err(|e| io(path, e.into()))?;
        std::fs::write(&tmp, text).map_err(|source| io(&tmp, source))?;
        std::fs::rename(&tmp, path).map_err(|source| io(path, source))
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("names.json");
        let mut names = Names::default();
        names
            .interfaces
            .insert("pl-t-1".into(), "shop/api-0".into());
        names
            .addresses
            .insert("10.244.0.2".parse().unwrap(), "shop/api-0".into());
        names
            .services
            .insert("10.96.0.10".parse().unwrap(), "shop/api".into());
        names.save(&path).unwrap();
        assert_eq!(Names::load(&path).unwrap(), names);
    }

    #[test]
    fn files_without_services_still_load() {
        // Written by a lab or watcher from before Services were named.
        let names: Names =
            serde_json::from_str(r#"{"interfaces": {"pl-t-1": "shop/api-0"}}"#).unwrap();
        assert!(names.services.is_empty());
        assert_eq!(names.interfaces["pl-t-1"], "shop/api-0");
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = Names::load(Path::new("/nonexistent/names.json")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/names.json"), "{err}");
    }
}
