//! Security identities: small numbers standing for a set of identity-relevant labels (or,
//! for the world, a CIDR). The kernel only ever sees these numbers; records that leave the
//! node carry labels and names instead.
//!
//! Numbers are allocated stably: the allocator persists its table, so a restarted agent
//! gives every label set the number it had before and live conntrack entries, policy
//! entries and ipcache entries keep meaning the same thing.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A security identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Identity(pub u32);

impl Identity {
    /// Not an identity: the wildcard "any peer" in compiled rules. No peer ever has it.
    pub const ANY: Self = Self(0);
    /// The pod's own node. Traffic between a pod and its node always passes.
    pub const HOST: Self = Self(1);
    /// Outside the cluster, in no CIDR any rule names.
    pub const WORLD: Self = Self(2);
    /// Inside the cluster but not (yet) known: a pod whose identity has not arrived.
    pub const UNKNOWN: Self = Self(3);
    /// Another node of the cluster.
    pub const REMOTE_NODE: Self = Self(6);
    /// First identity for label sets (below: reserved).
    pub const FIRST_LABELS: u32 = 256;
    /// First identity for Service ClusterIPs (label identities stay below).
    pub const FIRST_SERVICE: u32 = 1 << 23;
    /// First identity for CIDRs of the world (label identities stay below).
    pub const FIRST_CIDR: u32 = 1 << 24;

    pub const fn is_reserved(self) -> bool {
        self.0 < Self::FIRST_LABELS
    }

    pub const fn is_cidr(self) -> bool {
        self.0 >= Self::FIRST_CIDR
    }

    pub const fn is_service(self) -> bool {
        self.0 >= Self::FIRST_SERVICE && self.0 < Self::FIRST_CIDR
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ANY => f.write_str("any"),
            Self::HOST => f.write_str("reserved:host"),
            Self::WORLD => f.write_str("reserved:world"),
            Self::UNKNOWN => f.write_str("reserved:unknown"),
            Self::REMOTE_NODE => f.write_str("reserved:remote-node"),
            Self(n) => write!(f, "{n}"),
        }
    }
}

/// Labels Kubernetes and its controllers add that say nothing about what a pod is: two pods
/// of one workload differ in them, so they never enter an identity (or a rule).
pub const NOISE_LABELS: &[&str] = &[
    "pod-template-hash",
    // Palisade's own mode label: changing a pod's mode must not change who it is.
    "palisade.io/mode",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// Prefix of the namespace's own labels inside a label set.
pub const NAMESPACE_LABEL_PREFIX: &str = "io.kubernetes.pod.namespace.labels.";
/// The label naming the pod's namespace inside a label set.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// The identity-relevant labels of a pod: its namespace, the namespace's labels, and its own
/// labels minus noise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelSet(pub BTreeMap<String, String>);

impl LabelSet {
    pub fn for_pod(
        namespace: &str,
        namespace_labels: &BTreeMap<String, String>,
        pod_labels: &BTreeMap<String, String>,
    ) -> Self {
        let mut set = Self::for_namespace(namespace, namespace_labels);
        set.add_pod_labels(pod_labels, |k| !NOISE_LABELS.contains(&k));
        set
    }

    /// The part of a pod's label set that comes from its namespace (shared by all its pods).
    pub fn for_namespace(namespace: &str, namespace_labels: &BTreeMap<String, String>) -> Self {
        let mut set: BTreeMap<String, String> = namespace_labels
            .iter()
            .map(|(k, v)| (format!("{NAMESPACE_LABEL_PREFIX}{k}"), v.clone()))
            .collect();
        set.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
        Self(set)
    }

    /// Add the pod labels whose key `keep` accepts; the namespace's part is never
    /// overwritten.
    pub fn add_pod_labels(
        &mut self,
        pod_labels: &BTreeMap<String, String>,
        keep: impl Fn(&str) -> bool,
    ) {
        for (k, v) in pod_labels.iter().filter(|(k, _)| keep(k)) {
            self.0.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// The namespace these labels belong to, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.0.get(NAMESPACE_LABEL).map(String::as_str)
    }
}

/// Why an identity table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity table {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity table {path} is not valid")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("identity table {path}: identity {identity} is given twice")]
    Duplicate { path: PathBuf, identity: Identity },
    #[error("no identities left in the {kind} range")]
    Exhausted { kind: &'static str },
}

/// Hands out identities for label sets, Services and CIDRs, stably across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityAllocator {
    #[serde(default)]
    labels: Table<LabelSet>,
    #[serde(default)]
    cidrs: Table<IpNet>,
    /// Services by `namespace/name`.
    #[serde(default)]
    services: Table<String>,
    /// Something was allocated since the last [`Self::take_unsaved`].
    #[serde(skip)]
    unsaved: bool,
}

/// The identities of one kind, in the order they were handed out (which is what is
/// persisted), with an index and the next free number.
#[derive(Clone, Debug)]
struct Table<K> {
    entries: Vec<(K, Identity)>,
    index: HashMap<K, Identity>,
    /// Kept, not recomputed: allocating stays O(1). `None` until the first allocation.
    next: Option<u32>,
}

/// Two tables are equal when they hand out the same identities (the index and the next
/// number follow from the entries).
impl<K: PartialEq> PartialEq for Table<K> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<K: Eq> Eq for Table<K> {}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
            next: None,
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> Table<K> {
    /// The identity of `key`, and whether it is new: the next free number of
    /// `first..end` the first time.
    fn allocate(
        &mut self,
        key: &K,
        first: u32,
        end: u32,
        kind: &'static str,
    ) -> Result<(Identity, bool), IdentityError> {
        if let Some(id) = self.index.get(key) {
            return Ok((*id, false));
        }
        let entries = &self.entries;
        let next = *self.next.get_or_insert_with(|| {
            entries
                .iter()
                .map(|(_, id)| id.0 + 1)
                .max()
                .unwrap_or(first)
        });
        if next >= end {
            return Err(IdentityError::Exhausted { kind });
        }
        let id = Identity(next);
        self.next = Some(next + 1);
        self.entries.push((key.clone(), id));
        self.index.insert(key.clone(), id);
        Ok((id, true))
    }

    fn ids(&self) -> impl Iterator<Item = Identity> + '_ {
        self.entries.iter().map(|(_, id)| *id)
    }
}

impl<K: Serialize> Serialize for Table<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(s)
    }
}

impl<'de, K: Deserialize<'de> + Clone + Eq + std::hash::Hash> Deserialize<'de> for Table<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries: Vec<(K, Identity)> = Vec::deserialize(d)?;
        let index = entries.iter().cloned().collect();
        Ok(Self {
            entries,
            index,
            next: None,
        })
    }
}

impl IdentityAllocator {
    /// Load a persisted table; a missing file is an empty table. A corrupt file is an error,
    /// never silently reset: renumbering would change what live policy means.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(IdentityError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let table: Self = serde_json::from_str(&text).map_err(|source| IdentityError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
        let mut seen = std::collections::BTreeSet::new();
        let ids = table.labels.ids().chain(table.cidrs.ids());
        for id in ids.chain(table.services.ids()) {
            if !seen.insert(id) {
                return Err(IdentityError::Duplicate {
                    path: path.to_owned(),
                    identity: id,
                });
            }
        }
        Ok(table)
    }

    /// Persist atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| io(e.into()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The identity of `labels`, allocating the next free one the first time.
    pub fn for_labels(&mut self, labels: &LabelSet) -> Result<Identity, IdentityError> {
        let found = self.labels.allocate(
            labels,
            Identity::FIRST_LABELS,
            Identity::FIRST_SERVICE,
            "label",
        );
        self.note(found)
    }

    /// The identity of the world CIDR `net` (normalised to its network address).
    pub fn for_cidr(&mut self, net: IpNet) -> Result<Identity, IdentityError> {
        let found = self
            .cidrs
            .allocate(&net.trunc(), Identity::FIRST_CIDR, u32::MAX, "CIDR");
        self.note(found)
    }

    /// The identity standing for the ClusterIPs of Service `namespace/name`.
    pub fn for_service(&mut self, service: &str) -> Result<Identity, IdentityError> {
        let found = self.services.allocate(
            &service.to_owned(),
            Identity::FIRST_SERVICE,
            Identity::FIRST_CIDR,
            "Service",
        );
        self.note(found)
    }

    /// Remember that an allocation made the table need saving.
    fn note(
        &mut self,
        found: Result<(Identity, bool), IdentityError>,
    ) -> Result<Identity, IdentityError> {
        let (id, new) = found?;
        self.unsaved |= new;
        Ok(id)
    }

    /// Whether identities were allocated since the last call (the table needs saving).
    pub fn take_unsaved(&mut self) -> bool {
        std::mem::take(&mut self.unsaved)
    }

    /// The labels behind an identity, if it is a label identity of this table.
    pub fn labels_of(&self, id: Identity) -> Option<&LabelSet> {
        self.labels
            .entries
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(l, _)| l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn noise_labels_never_reach_an_identity() {
        let a = LabelSet::for_pod(
            "shop",
            &labels(&[("team", "web")]),
            &labels(&[("app", "api"), ("pod-template-hash", "5f6b9fd99d")]),
        );
        let b = LabelSet::for_pod(
            "shop",
            &labels(&[("team", "web")]),
            &labels(&[("app", "api"), ("pod-template-hash", "7c894687c4")]),
        );
        assert_eq!(a, b);
        assert_eq!(a.namespace(), Some("shop"));
        assert!(a.0.contains_key("io.kubernetes.pod.namespace.labels.team"));
        assert!(!a.0.contains_key("pod-template-hash"));
    }

    #[test]
    fn the_same_labels_in_another_namespace_are_another_identity() {
        let mut alloc = IdentityAllocator::default();
        let pod = labels(&[("app", "api")]);
        let a = alloc
            .for_labels(&LabelSet::for_pod("a", &BTreeMap::new(), &pod))
            .unwrap();
        let b = alloc
            .for_labels(&LabelSet::for_pod("b", &BTreeMap::new(), &pod))
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Identity(Identity::FIRST_LABELS));
    }

    #[test]
    fn identities_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        let mut alloc = IdentityAllocator::default();
        let web = LabelSet::for_pod("shop", &BTreeMap::new(), &labels(&[("app", "web")]));
        let db = LabelSet::for_pod("shop", &BTreeMap::new(), &labels(&[("app", "db")]));
        let (web_id, db_id) = (
            alloc.for_labels(&web).unwrap(),
            alloc.for_labels(&db).unwrap(),
        );
        let cidr = alloc.for_cidr("203.0.113.7/24".parse().unwrap()).unwrap();
        assert!(cidr.is_cidr());
        alloc.save(&path).unwrap();

        let mut again = IdentityAllocator::load(&path).unwrap();
        assert_eq!(again.for_labels(&db).unwrap(), db_id);
        assert_eq!(again.for_labels(&web).unwrap(), web_id);
        assert_eq!(
            again.for_cidr("203.0.113.0/24".parse().unwrap()).unwrap(),
            cidr
        );
        let new = LabelSet::for_pod("shop", &BTreeMap::new(), &labels(&[("app", "new")]));
        assert_eq!(again.for_labels(&new).unwrap(), Identity(db_id.0 + 1));
        assert_eq!(again.labels_of(web_id), Some(&web));
    }

    #[test]
    fn a_corrupt_table_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = IdentityAllocator::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("identities.json"));
        assert!(IdentityAllocator::load(&dir.path().join("missing.json")).is_ok());
    }

    #[test]
    fn reserved_identities_are_named() {
        assert_eq!(Identity::WORLD.to_string(), "reserved:world");
        assert!(Identity::HOST.is_reserved());
        assert!(!Identity(Identity::FIRST_LABELS).is_reserved());
    }
}
