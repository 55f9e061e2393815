//! Pure planning, no system calls: the names the lab gives namespaces and interfaces, the
//! addresses it hands out, and how workloads become pods with the names and noise labels
//! Kubernetes would give them.
//!
//! Every network namespace and host-side interface outside the node gets a *slot*, a number
//! that grows for the lab's whole life: slot 7 is namespace `palisade-<lab>-7`, interface
//! `pl-<lab>-7`, and for a pod the addresses 10.244.0.8 and fd00:10:244::8. Slots are never
//! reused, so neither are addresses: a restarted pod is a new peer to the datapath, as in a
//! cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    error::{Error, Result},
    topology::{Kind, Port, Workload},
};

/// The pods' default gateway: a link-local address every pod reaches through a permanent
/// neighbour entry to its host-side interface, as Calico does.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 default gateway, on every host-side interface.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The node's own IPv6 address (on its loopback): the source of hairpin service traffic.
/// The node's IPv4 address is [`GATEWAY_V4`], also on its loopback.
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);

pub const POD_RANGE_V4: &str = "10.244.0.0/16";
pub const POD_RANGE_V6: &str = "fd00:10:244::/64";
pub const SERVICE_RANGE_V4: &str = "10.96.0.0/16";
pub const SERVICE_RANGE_V6: &str = "fd00:10:96::/112";

/// Lab names are short: interfaces are `pl-<lab>-<slot>` and must fit in 15 bytes.
pub const MAX_LAB_NAME: usize = 6;
/// The last slot whose pod address is still inside 10.244.0.0/16 (and whose interface
/// name fits).
pub const MAX_SLOT: u32 = 65_533;

/// Check a lab name: 1-6 lowercase letters or digits. No '-', so that `palisade-<lab>-*`
/// never matches another lab's namespaces.
pub fn check_lab_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > MAX_LAB_NAME {
        Some("it must be 1 to 6 characters (interface names pl-<lab>-<n> must fit in 15 bytes)")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Some("it must be lowercase letters and digits only")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::LabName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

pub fn node_netns(lab: &str) -> String {
    format!("palisade-{lab}-node")
}

/// The node's name in the cluster file: its namespace's name.
pub fn node_name(lab: &str) -> String {
    node_netns(lab)
}

pub fn host_netns(lab: &str, slot: u32) -> String {
    format!("palisade-{lab}-{slot}")
}

pub fn host_interface(lab: &str, slot: u32) -> String {
    format!("pl-{lab}-{slot}")
}

/// Is `netns` one of this lab's namespace names (`palisade-<lab>-node` or
/// `palisade-<lab>-<slot>`)? Used to find what a crashed run left behind.
pub fn is_lab_netns(lab: &str, netns: &str) -> bool {
    netns
        .strip_prefix("palisade-")
        .and_then(|rest| rest.strip_prefix(lab))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|suffix| {
            suffix == "node" || (!suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The host-side MAC of a slot: locally administered, `02:70:6c` ("pl") + the slot. Fixed
/// so the pod's permanent gateway neighbour entry can be written with the veth.
pub fn host_mac(slot: u32) -> String {
    let [_, a, b, c] = slot.to_be_bytes();
    format!("02:70:6c:{a:02x}:{b:02x}:{c:02x}")
}

pub fn pod_ipv4(slot: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + slot + 1)
}

pub fn pod_ipv6(slot: u32) -> Ipv6Addr {
    Ipv6Addr::from(
        u128::from(Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0)) + u128::from(slot) + 1,
    )
}

/// ClusterIPs of the `index`-th service (10.96.0.1, fd00:10:96::1, ...).
pub fn cluster_ips(index: usize) -> Result<(Ipv4Addr, Ipv6Addr)> {
    let offset = u32::try_from(index + 1)
        .ok()
        .filter(|o| *o < 0xffff)
        .ok_or(Error::Exhausted {
            what: "ClusterIPs",
            range: SERVICE_RANGE_V6,
        })?;
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + offset);
    let v6 = Ipv6Addr::from(
        u128::from(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0)) + u128::from(offset),
    );
    Ok((v4, v6))
}

/// The slot counter, persisted with the lab: only ever counts up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    next: u32,
}

impl Default for Slots {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl Slots {
    pub fn take(&mut self) -> Result<u32> {
        if self.next > MAX_SLOT {
            return Err(Error::Exhausted {
                what: "pod addresses",
                range: POD_RANGE_V4,
            });
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// What the lab remembers about a workload between commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadState {
    /// `namespace/name`.
    pub id: String,
    pub kind: Kind,
    /// Bumped by every restart: a new pod template, hence a new template hash.
    pub revision: u32,
    pub replicas: u32,
    /// A Job's `controller-uid` (a restart recreates the Job, with a new uid).
    pub uid: String,
}

impl WorkloadState {
    pub fn new(w: &Workload, rng: &mut impl Rng) -> Self {
        Self {
            id: w.id(),
            kind: w.kind,
            revision: 1,
            replicas: w.replicas(),
            uid: uuid(rng),
        }
    }

    /// A restart: what `kubectl rollout restart` (or recreating a Job) changes.
    pub fn restart(&mut self, rng: &mut impl Rng) {
        self.revision += 1;
        self.uid = uuid(rng);
    }
}

/// A pod to create, before it has a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPod {
    pub namespace: String,
    pub name: String,
    /// `namespace/Kind/name` of the owning workload.
    pub workload: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
}

/// How pods name their workload: `namespace/Kind/name`.
pub fn owner(w: &Workload) -> String {
    format!("{}/{}/{}", w.namespace, w.kind, w.name)
}

/// Label holding a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Kubernetes' alphabet for generated names (no vowels, no confusable characters).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A workload's next pod, named and labelled as its Kubernetes controller would:
/// - Deployment: `<name>-<template hash>-<5 random>` + `pod-template-hash`;
/// - StatefulSet: `<name>-<ordinal>` + `controller-revision-hash`,
///   `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`;
/// - DaemonSet: `<name>-<5 random>` + `controller-revision-hash`, `pod-template-generation`;
/// - Job: `<name>-<5 random>` + `job-name`, `controller-uid` and their `batch.kubernetes.io/`
///   twins.
///
/// `taken` holds the `namespace/name` of every pod; the new one is added to it.
pub fn new_pod(
    w: &Workload,
    state: &WorkloadState,
    ordinal: u32,
    taken: &mut BTreeSet<String>,
    rng: &mut impl Rng,
) -> NewPod {
    let hash = template_hash(w, state.revision);
    let mut labels = w.labels.map().clone();
    let mut label = |k: &str, v: String| labels.insert(k.to_owned(), v);
    let name = match w.kind {
        Kind::Deployment => {
            label("pod-template-hash", hash.clone());
            unique_name(
                &w.namespace.to_string(),
                &format!("{}-{hash}-", w.name),
                taken,
                rng,
            )
        }
        Kind::StatefulSet => {
            let name = format!("{}-{ordinal}", w.name);
            label("controller-revision-hash", format!("{}-{hash}", w.name));
            label("statefulset.kubernetes.io/pod-name", name.clone());
            label(POD_INDEX_LABEL, ordinal.to_string());
            taken.insert(format!("{}/{name}", w.namespace));
            name
        }
        Kind::DaemonSet => {
            label("controller-revision-hash", hash);
            label("pod-template-generation", state.revision.to_string());
            unique_name(
                &w.namespace.to_string(),
                &format!("{}-", w.name),
                taken,
                rng,
            )
        }
        Kind::Job => {
            for prefix in ["", "batch.kubernetes.io/"] {
                label(&format!("{prefix}job-name"), w.name.to_string());
                label(&format!("{prefix}controller-uid"), state.uid.clone());
            }
            unique_name(
                &w.namespace.to_string(),
                &format!("{}-", w.name),
                taken,
                rng,
            )
        }
    };
    NewPod {
        namespace: w.namespace.to_string(),
        name,
        workload: Some(owner(w)),
        labels,
        ports: w.ports.clone(),
    }
}

/// Which pods a scale to `replicas` adds and removes, given the current pods as
/// `(ordinal, slot, name)`. StatefulSets fill the lowest free ordinals and shed the highest,
/// as Kubernetes does; other kinds shed their newest pods.
pub fn scale(
    kind: Kind,
    current: &[(Option<u32>, u32, String)],
    replicas: u32,
) -> (Vec<u32>, Vec<String>) {
    let mut current = current.to_vec();
    current.sort_by_key(|(ordinal, slot, _)| (*ordinal, *slot));
    let have = current.len();
    let want = replicas as usize;
    if want <= have {
        let remove = current
            .drain(want..)
            .map(|(_, _, name)| name)
            .rev()
            .collect();
        return (Vec::new(), remove);
    }
    let add = if kind == Kind::StatefulSet {
        let used: BTreeSet<u32> = current.iter().filter_map(|(o, _, _)| *o).collect();
        (0..)
            .filter(|o| !used.contains(o))
            .take(want - have)
            .collect()
    } else {
        (0..).take(want - have).collect()
    };
    (add, Vec::new())
}

fn unique_name(
    namespace: &str,
    prefix: &str,
    taken: &mut BTreeSet<String>,
    rng: &mut impl Rng,
) -> String {
    loop {
        let name = format!("{prefix}{}", random_suffix(rng));
        if taken.insert(format!("{namespace}/{name}")) {
            return name;
        }
    }
}

fn random_suffix(rng: &mut impl Rng) -> String {
    (0..5)
        .map(|_| ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char)
        .collect()
}

/// Kubernetes' `ComputeHash`: FNV-32a of the pod template, its decimal digits mapped onto
/// Kubernetes' name alphabet (so 8 to 10 characters, like `5d59d67564`). The template here is what the
/// topology says of the workload, plus the revision a restart bumps.
pub fn template_hash(w: &Workload, revision: u32) -> String {
    let template = format!(
        "{}\n{}\n{}\n{:?}\n{:?}\n{revision}",
        w.kind,
        w.namespace,
        w.name,
        w.labels.map(),
        w.ports
    );
    fnv32a(template.as_bytes())
        .to_string()
        .bytes()
        .map(|digit| ALPHANUMS[digit as usize % ALPHANUMS.len()] as char)
        .collect()
}

fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A random (version 4) UUID, as Kubernetes gives each object.
fn uuid(rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn workload(kind: Kind, replicas: Option<u32>) -> Workload {
        serde_yaml::from_str(&format!(
            "{{kind: {kind}, name: web, namespace: shop, labels: {{app: web}}, ports: [{{port: 8080}}]{}}}",
            replicas.map(|r| format!(", replicas: {r}")).unwrap_or_default()
        ))
        .unwrap()
    }

    fn expand(kind: Kind, replicas: u32) -> Vec<NewPod> {
        let w = workload(kind, (kind != Kind::DaemonSet).then_some(replicas));
        let rng = &mut StdRng::seed_from_u64(7);
        let state = WorkloadState::new(&w, rng);
        let mut taken = BTreeSet::new();
        (0..w.replicas())
            .map(|i| new_pod(&w, &state, i, &mut taken, rng))
            .collect()
    }

    fn is_alphanum(s: &str) -> bool {
        s.bytes().all(|b| ALPHANUMS.contains(&b))
    }

    #[test]
    fn deployment_pods_look_like_kubernetes_pods() {
        let pods = expand(Kind::Deployment, 3);
        let hash = &pods[0].labels["pod-template-hash"];
        assert!(
            (8..=10).contains(&hash.len()) && is_alphanum(hash),
            "{hash}"
        );
        for p in &pods {
            let rest = p.name.strip_prefix(&format!("web-{hash}-")).unwrap();
            assert!(rest.len() == 5 && is_alphanum(rest), "{}", p.name);
            assert_eq!(p.labels["app"], "web");
            assert_eq!(p.labels["pod-template-hash"], *hash);
            assert_eq!(p.workload.as_deref(), Some("shop/Deployment/web"));
        }
        let names: BTreeSet<_> = pods.iter().map(|p| &p.name).collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn statefulset_pods_are_numbered() {
        let pods = expand(Kind::StatefulSet, 2);
        assert_eq!(pods[0].name, "web-0");
        assert_eq!(pods[1].name, "web-1");
        assert_eq!(
            pods[1].labels["statefulset.kubernetes.io/pod-name"],
            "web-1"
        );
        assert_eq!(pods[1].labels[POD_INDEX_LABEL], "1");
        assert!(pods[0].labels["controller-revision-hash"].starts_with("web-"));
    }

    #[test]
    fn daemonset_and_job_noise_labels() {
        let ds = expand(Kind::DaemonSet, 1);
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].labels["pod-template-generation"], "1");
        assert!(is_alphanum(&ds[0].labels["controller-revision-hash"]));
        assert!(ds[0].name.starts_with("web-") && ds[0].name.len() == 9);

        let job = expand(Kind::Job, 2);
        let uid = &job[0].labels["controller-uid"];
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4", "version 4 uuid: {uid}");
        for p in &job {
            assert_eq!(p.labels["job-name"], "web");
            assert_eq!(p.labels["batch.kubernetes.io/job-name"], "web");
            assert_eq!(p.labels["batch.kubernetes.io/controller-uid"], *uid);
        }
    }

    #[test]
    fn a_restart_changes_the_template_hash_and_uid() {
        let w = workload(Kind::Deployment, Some(1));
        let rng = &mut StdRng::seed_from_u64(1);
        let mut state = WorkloadState::new(&w, rng);
        let before = (template_hash(&w, state.revision), state.uid.clone());
        state.restart(rng);
        assert_ne!(template_hash(&w, state.revision), before.0);
        assert_ne!(state.uid, before.1);
        assert_eq!(
            template_hash(&w, 1),
            before.0,
            "the hash is a function of the template"
        );
    }

    #[test]
    fn fnv32a_matches_the_reference() {
        // Test vectors of the FNV reference implementation.
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn slots_and_addresses_are_never_reused() {
        let mut slots = Slots::default();
        let taken: Vec<u32> = (0..1000).map(|_| slots.take().unwrap()).collect();
        let v4: BTreeSet<_> = taken.iter().map(|s| pod_ipv4(*s)).collect();
        let v6: BTreeSet<_> = taken.iter().map(|s| pod_ipv6(*s)).collect();
        assert_eq!((v4.len(), v6.len()), (1000, 1000));
        assert_eq!(pod_ipv4(1), Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(pod_ipv6(1), "fd00:10:244::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(pod_ipv4(300), Ipv4Addr::new(10, 244, 1, 45));
        assert!(!v4.contains(&GATEWAY_V4) && !v6.contains(&NODE_V6));
    }

    #[test]
    fn the_slot_counter_stops_inside_the_pod_range() {
        let mut slots = Slots { next: MAX_SLOT };
        assert_eq!(
            pod_ipv4(slots.take().unwrap()),
            Ipv4Addr::new(10, 244, 255, 254)
        );
        assert!(matches!(slots.take(), Err(Error::Exhausted { .. })));
        assert!(host_interface("abcdef", MAX_SLOT).len() <= 15);
    }

    #[test]
    fn cluster_ips_are_sequential() {
        assert_eq!(
            cluster_ips(0).unwrap(),
            (
                Ipv4Addr::new(10, 96, 0, 1),
                "fd00:10:96::1".parse().unwrap()
            )
        );
        assert_eq!(cluster_ips(255).unwrap().0, Ipv4Addr::new(10, 96, 1, 0));
        assert!(cluster_ips(70_000).is_err());
    }

    #[test]
    fn names_of_namespaces_and_interfaces() {
        assert_eq!(node_netns("lab"), "palisade-lab-node");
        assert_eq!(host_netns("lab", 3), "palisade-lab-3");
        assert_eq!(host_interface("lab", 3), "pl-lab-3");
        assert_eq!(host_mac(0x01_02_03), "02:70:6c:01:02:03");
        assert!(is_lab_netns("lab", "palisade-lab-node"));
        assert!(is_lab_netns("lab", "palisade-lab-12"));
        assert!(!is_lab_netns("lab", "palisade-lab2-1"));
        assert!(!is_lab_netns("lab", "palisade-lab-"));
        assert!(!is_lab_netns("lab", "palisade-lab-1x"));
        assert!(!is_lab_netns("la", "palisade-lab-1"));
    }

    #[test]
    fn lab_names() {
        assert!(check_lab_name("lab").is_ok());
        assert!(check_lab_name("a1b2c3").is_ok());
        for bad in ["", "toolong7", "Lab", "a-b", "a_b"] {
            assert!(check_lab_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scaling_statefulsets_fills_and_sheds_ordinals() {
        let current = vec![
            (Some(0), 4, "db-0".to_owned()),
            (Some(2), 6, "db-2".to_owned()),
        ];
        assert_eq!(scale(Kind::StatefulSet, &current, 4), (vec![1, 3], vec![]));
        assert_eq!(
            scale(Kind::StatefulSet, &current, 1),
            (vec![], vec!["db-2".to_owned()])
        );
        assert_eq!(scale(Kind::StatefulSet, &current, 2), (vec![], vec![]));
    }

    #[test]
    fn scaling_deployments_sheds_the_newest() {
        let current = vec![
            (None, 9, "web-b".to_owned()),
            (None, 3, "web-a".to_owned()),
            (None, 12, "web-c".to_owned()),
        ];
        assert_eq!(
            scale(Kind::Deployment, &current, 1),
            (vec![], vec!["web-c".to_owned(), "web-b".to_owned()])
        );
        assert_eq!(scale(Kind::Deployment, &current, 5).0.len(), 2);
    }
}
