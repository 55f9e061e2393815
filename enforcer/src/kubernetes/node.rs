//! This node as the Kubernetes agent sees it: the API server's mirror ([`Snapshot`]) plus
//! what the CNI plugin said about pods being created, turned into what the datapath needs:
//! the pods to protect and their modes, the policy inputs, and the names flow records use.
//!
//! Pure: no API server, netlink or maps here, so every rule below is unit tested.
//!
//! A pod is protected from its first packet: the CNI plugin's ADD comes before the kubelet
//! writes the pod's addresses into its status, so the addresses the plugin reports are the
//! pod's until the status says the same (a recreated sandbox may get new addresses while
//! the status still has the old ones), or the plugin's DEL for that sandbox comes. A pod the API server's mirror does not know yet (no labels,
//! so no identity and no rules) is still protected, isolated, in its namespace's mode or
//! the cluster default: never silently allowed in enforce mode.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s::{
    modes::ModeDefaults,
    watch::{LocalPod, Snapshot},
};
use model::{Mode, identity::LabelSet, netpol::compile::PodKey};

use crate::{
    endpoints::{Attached, WantedPod},
    names::{Names, PodMeta},
    policy_source::ClusterInputs,
};

/// A pod as the CNI plugin described it in its ADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniPod {
    /// The sandbox (a DEL for another, older sandbox of the pod does not remove this one).
    pub container_id: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
}

/// The API server's mirror and the CNI's reports, combined.
#[derive(Clone, Debug)]
pub struct NodeView {
    defaults: ModeDefaults,
    snapshot: Option<Snapshot>,
    cni: BTreeMap<PodKey, CniPod>,
}

impl NodeView {
    pub fn new(defaults: ModeDefaults) -> Self {
        Self {
            defaults,
            snapshot: None,
            cni: BTreeMap::new(),
        }
    }

    pub fn defaults(&self) -> &ModeDefaults {
        &self.defaults
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The API server's view changed. CNI reports whose addresses the status now carries
    /// are no longer needed.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.cni.retain(|key, reported| {
            let status = snapshot
                .local
                .iter()
                .find(|p| p.namespace == key.0 && p.name == key.1)
                .map(|p| &p.ips);
            // Not in the mirror yet (the watch is behind the kubelet), or the status is not
            // the sandbox's yet: keep it.
            !status.is_some_and(|ips| same_addresses(ips, &reported.ips))
        });
        self.snapshot = Some(snapshot);
    }

    /// The CNI plugin's ADD for a pod.
    pub fn cni_added(&mut self, pod: PodKey, reported: CniPod) {
        self.cni.insert(pod, reported);
    }

    /// The CNI plugin's DEL for a pod's sandbox `container_id`; a DEL for an older sandbox
    /// (it can come after the new one's ADD) leaves the new one's report.
    pub fn cni_deleted(&mut self, pod: &PodKey, container_id: &str) {
        if self
            .cni
            .get(pod)
            .is_some_and(|r| r.container_id == container_id || container_id.is_empty())
        {
            self.cni.remove(pod);
        }
    }

    /// A pod's addresses: the CNI's for a sandbox it reported, else the status's.
    fn addresses<'a>(&'a self, key: &PodKey, status: &'a [IpAddr]) -> &'a [IpAddr] {
        self.cni.get(key).map_or(status, |r| r.ips.as_slice())
    }

    /// The mode of a pod of `namespace` that the mirror does not know: its namespace's,
    /// else the cluster default.
    fn namespace_mode(&self, namespace: &str) -> Mode {
        self.snapshot
            .as_ref()
            .and_then(|s| s.namespace_modes.get(namespace))
            .copied()
            .unwrap_or(self.defaults.mode)
    }

    fn local(&self) -> impl Iterator<Item = &LocalPod> {
        self.snapshot.iter().flat_map(|s| s.local.iter())
    }

    /// Every pod this node protects, with its addresses and mode. Endpoints start
    /// isolated: the agent owns the policy, and a pod's rules arrive right after it is
    /// attached.
    pub fn wanted(&self) -> BTreeMap<PodKey, WantedPod> {
        let mut wanted = BTreeMap::new();
        for pod in self.local() {
            let key = (pod.namespace.clone(), pod.name.clone());
            if let Some(want) = wanted_pod(self.addresses(&key, &pod.ips), pod.mode) {
                wanted.insert(key, want);
            }
        }
        for (key, reported) in &self.cni {
            if wanted.contains_key(key) {
                continue;
            }
            if let Some(want) = wanted_pod(&reported.ips, self.namespace_mode(&key.0)) {
                wanted.insert(key.clone(), want);
            }
        }
        wanted
    }

    /// What the policy is compiled from: the mirrored policies and cluster, with the
    /// CNI's addresses for pods whose status has none yet, and this node's pods by the
    /// interface they are attached on.
    pub fn inputs(&self, attached: &BTreeMap<u32, Attached>) -> ClusterInputs {
        let Some(snapshot) = &self.snapshot else {
            return ClusterInputs::default();
        };
        let mut cluster = snapshot.cluster.clone();
        for pod in &mut cluster.pods {
            if let Some(reported) = self.cni.get(&(pod.namespace.clone(), pod.name.clone())) {
                pod.ips = reported.ips.clone();
            }
        }
        ClusterInputs {
            policies: snapshot.policies.clone(),
            cluster,
            interfaces: attached
                .iter()
                .map(|(ifindex, a)| (format!("{}/{}", a.pod.0, a.pod.1), *ifindex))
                .collect(),
        }
    }

    /// Names for flow records: attached interfaces, every pod's and Service's addresses,
    /// pods' workloads and identity labels.
    pub fn names(&self, inputs: &ClusterInputs, attached: &BTreeMap<u32, Attached>) -> Names {
        let mut names = Names::default();
        for a in attached.values() {
            names
                .interfaces
                .insert(a.spec.interface.clone(), format!("{}/{}", a.pod.0, a.pod.1));
        }
        let cluster = &inputs.cluster;
        for pod in &cluster.pods {
            let name = format!("{}/{}", pod.namespace, pod.name);
            for ip in &pod.ips {
                names.addresses.insert(*ip, name.clone());
            }
            let namespace_labels = cluster
                .namespaces
                .get(&pod.namespace)
                .cloned()
                .unwrap_or_default();
            let labels = LabelSet::for_pod(&pod.namespace, &namespace_labels, &pod.labels);
            names.pods.insert(
                name,
                PodMeta {
                    workload: pod.workload.clone(),
                    labels: labels.0,
                },
            );
        }
        for service in &cluster.services {
            for ip in &service.cluster_ips {
                names
                    .services
                    .insert(*ip, format!("{}/{}", service.namespace, service.name));
            }
        }
        names
    }
}

fn same_addresses(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// A pod with at least one address; the first IPv4 and the first IPv6 are its own.
pub(super) fn wanted_pod(ips: &[IpAddr], mode: Mode) -> Option<WantedPod> {
    let ipv4: Option<Ipv4Addr> = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let ipv6: Option<Ipv6Addr> = ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    (ipv4.is_some() || ipv6.is_some()).then_some(WantedPod {
        ipv4,
        ipv6,
        mode,
        isolated: true,
    })
}

#[cfg(test)]
mod tests {
    use k8s::modes::ModeSource;
    use model::netpol::cluster::Cluster;

    use super::*;
    use crate::datapath::EndpointSpec;

    const DEFAULTS: ModeDefaults = ModeDefaults { mode: Mode::Learn };

    fn key(name: &str) -> PodKey {
        ("shop".into(), name.into())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The mirror: `web` on this node (with `ips`), `db` on another; namespace shop in
    /// enforce mode.
    fn snapshot(web_ips: &[&str], web_uid: &str) -> Snapshot {
        let cluster: Cluster = serde_json::from_value(serde_json::json!({
            "namespaces": {"shop": {"palisade.io/mode": "enforce"}},
            "pods": [
                {"namespace": "shop", "name": "web", "labels": {"app": "web"}, "node": "n1",
                 "ips": web_ips, "workload": "shop/Deployment/web"},
                {"namespace": "shop", "name": "db", "labels": {"app": "db"}, "node": "n2",
                 "ips": ["10.0.2.5"]},
            ],
            "services": [{"namespace": "shop", "name": "db", "selector": {"app": "db"},
                          "cluster_ips": ["10.96.0.7"], "ports": []}],
        }))
        .unwrap();
        Snapshot {
            cluster,
            policies: Vec::new(),
            refused: Vec::new(),
            local: vec![LocalPod {
                namespace: "shop".into(),
                name: "web".into(),
                uid: web_uid.into(),
                ips: web_ips.iter().map(|s| ip(s)).collect(),
                mode: Mode::Enforce,
                mode_source: ModeSource::NamespaceLabel,
            }],
            invalid_modes: Vec::new(),
            namespace_modes: [("shop".to_owned(), Mode::Enforce)].into(),
        }
    }

    fn attached(ifindex: u32, pod: &str) -> BTreeMap<u32, Attached> {
        [(
            ifindex,
            Attached {
                pod: key(pod),
                spec: EndpointSpec {
                    interface: format!("veth-{pod}"),
                    ipv4: None,
                    ipv6: None,
                    mode: Mode::Enforce,
                    isolated: true,
                },
            },
        )]
        .into()
    }

    #[test]
    fn the_cni_addresses_stand_in_until_the_status_has_them() {
        let mut view = NodeView::new(DEFAULTS);
        view.set_snapshot(snapshot(&[], "u1"));
        // Known to the mirror but without addresses: nothing to find its interface by.
        assert!(view.wanted().is_empty());

        view.cni_added(
            key("web"),
            CniPod {
                container_id: "c1".into(),
                uid: "u1".into(),
                ips: vec![ip("10.0.1.9"), ip("fd00::9")],
            },
        );
        let wanted = view.wanted();
        let web = &wanted[&key("web")];
        assert_eq!(
            (web.ipv4, web.ipv6, web.mode, web.isolated),
            (
                Some("10.0.1.9".parse().unwrap()),
                Some("fd00::9".parse().unwrap()),
                Mode::Enforce,
                true
            )
        );
        // The policy is compiled with them, so peers' rules and the ipcache know the pod.
        let inputs = view.inputs(&attached(7, "web"));
        let pod = inputs
            .cluster
            .pods
            .iter()
            .find(|p| p.name == "web")
            .unwrap();
        assert_eq!(pod.ips, [ip("10.0.1.9"), ip("fd00::9")]);
        assert_eq!(inputs.interfaces["shop/web"], 7);

        // A status with only some of them is not the sandbox's yet: the report stays.
        view.set_snapshot(snapshot(&["10.0.1.9"], "u1"));
        assert_eq!(
            view.wanted()[&key("web")].ipv6,
            Some("fd00::9".parse().unwrap())
        );
        // Once the status says what the CNI said, the report is no longer needed.
        view.set_snapshot(snapshot(&["fd00::9", "10.0.1.9"], "u1"));
        assert!(view.cni.is_empty());
        assert_eq!(
            view.wanted()[&key("web")].ipv6,
            Some("fd00::9".parse().unwrap())
        );
    }

    #[test]
    fn a_pod_the_mirror_does_not_know_yet_is_protected_in_its_namespace_mode() {
        let mut view = NodeView::new(DEFAULTS);
        view.set_snapshot(snapshot(&["10.0.1.9"], "u1"));
        view.cni_added(
            key("late"),
            CniPod {
                container_id: "c9".into(),
                uid: "u9".into(),
                ips: vec![ip("10.0.1.20")],
            },
        );
        view.cni_added(
            ("other".into(), "x".into()),
            CniPod {
                container_id: "c8".into(),
                uid: "u8".into(),
                ips: vec![ip("10.0.1.21")],
            },
        );
        // Kept across snapshots that do not have it yet.
        view.set_snapshot(snapshot(&["10.0.1.9"], "u1"));
        let wanted = view.wanted();
        assert_eq!(wanted[&key("late")].mode, Mode::Enforce);
        assert!(wanted[&key("late")].isolated);
        // A namespace the mirror does not know: the cluster default.
        assert_eq!(wanted[&("other".into(), "x".into())].mode, Mode::Learn);
        // No labels, so no identity: it is not in the cluster the policy is compiled from.
        let inputs = view.inputs(&BTreeMap::new());
        assert!(!inputs.cluster.pods.iter().any(|p| p.name == "late"));

        // A late DEL of an older sandbox leaves the new one's report.
        view.cni_deleted(&key("late"), "c0");
        assert!(view.wanted().contains_key(&key("late")));
        view.cni_deleted(&key("late"), "c9");
        assert!(!view.wanted().contains_key(&key("late")));
    }

    #[test]
    fn a_recreated_sandbox_is_found_by_its_new_addresses_while_the_status_has_the_old() {
        let mut view = NodeView::new(DEFAULTS);
        view.set_snapshot(snapshot(&["10.0.1.9"], "u1"));
        view.cni_added(
            key("web"),
            CniPod {
                container_id: "c2".into(),
                uid: "u1".into(),
                ips: vec![ip("10.0.1.30")],
            },
        );
        view.set_snapshot(snapshot(&["10.0.1.9"], "u1"));
        assert_eq!(
            view.wanted()[&key("web")].ipv4,
            Some("10.0.1.30".parse().unwrap())
        );
        let inputs = view.inputs(&BTreeMap::new());
        let web = inputs
            .cluster
            .pods
            .iter()
            .find(|p| p.name == "web")
            .unwrap();
        assert_eq!(web.ips, [ip("10.0.1.30")]);
    }

    #[test]
    fn names_cover_interfaces_pods_workloads_and_services() {
        let mut view = NodeView::new(DEFAULTS);
        view.set_snapshot(snapshot(&["10.0.1.9"], "u1"));
        let attached = attached(7, "web");
        let names = view.names(&view.inputs(&attached), &attached);
        assert_eq!(names.interfaces["veth-web"], "shop/web");
        assert_eq!(names.addresses[&ip("10.0.2.5")], "shop/db");
        assert_eq!(names.services[&ip("10.96.0.7")], "shop/db");
        let web = &names.pods["shop/web"];
        assert_eq!(web.workload.as_deref(), Some("shop/Deployment/web"));
        assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    }
}
