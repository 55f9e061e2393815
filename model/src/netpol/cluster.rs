//! What policies apply to: namespaces and pods with their labels, addresses and named
//! container ports, and the nodes they run on. In Kubernetes this comes from the API
//! server; standalone (the lab), from a file its owner writes.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::selector::Labels;
use crate::Protocol;

/// The label every namespace carries with its own name (Kubernetes sets it since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the cluster's pods resolve names: its namespace and the labels of its pods.
/// Proposals allow DNS egress to it; the Cilium export sends DNS to it through the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    pub namespace: String,
    pub labels: Labels,
}

impl Default for Resolver {
    /// CoreDNS as most distributions deploy it.
    fn default() -> Self {
        Self {
            namespace: "kube-system".into(),
            labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Namespace name -> its labels.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Labels>,
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Node name -> its addresses.
    #[serde(default)]
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
    /// Services with ClusterIPs (a pod's connection to one is judged by its backends).
    #[serde(default)]
    pub services: Vec<ClusterService>,
}

/// A Service with a selector: its backends are the pods of its namespace that carry every
/// selector label (no selector: no backends Palisade knows of).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterService {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub selector: Labels,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ClusterServicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterServicePort {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// The backends' port: a number, or a container port name resolved on each backend.
    pub target_port: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Container ports; named ones are what named policy ports resolve to.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// The node the pod runs on.
    #[serde(default)]
    pub node: String,
    /// `namespace/Kind/name` of the workload that owns the pod (`shop/Deployment/api`);
    /// `None` for a bare pod. The learner folds pods into workloads by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

impl Cluster {
    /// The labels of namespace `name`, with `kubernetes.io/metadata.name` as Kubernetes
    /// sets it.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        let mut labels = self.namespaces.get(name).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        labels
    }

    /// The pod that has `addr`.
    pub fn pod_at(&self, addr: IpAddr) -> Option<&Pod> {
        let addr = addr.to_canonical();
        self.pods
            .iter()
            .find(|p| p.ips.iter().any(|ip| ip.to_canonical() == addr))
    }

    /// Is `addr` an address of the node `pod` runs on?
    pub fn is_own_node(&self, pod: &Pod, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nodes
            .get(&pod.node)
            .is_some_and(|ips| ips.iter().any(|ip| ip.to_canonical() == addr))
    }
}

impl Cluster {
    /// The Service `namespace/name` and its `protocol` port `port`; what is missing, said
    /// as a sentence, when either is not there.
    pub fn service_port(
        &self,
        name: &str,
        protocol: Protocol,
        port: u16,
    ) -> Result<(&ClusterService, &ClusterServicePort), String> {
        let service = name
            .split_once('/')
            .and_then(|(ns, n)| {
                self.services
                    .iter()
                    .find(|s| s.namespace == ns && s.name == n)
            })
            .ok_or_else(|| format!("Service {name} is not in the cluster"))?;
        let service_port = service
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
            .ok_or_else(|| format!("Service {name} has no {protocol} port {port}"))?;
        Ok((service, service_port))
    }
}

impl ClusterService {
    /// The pods the Service sends connections to.
    pub fn backends<'a>(&'a self, cluster: &'a Cluster) -> impl Iterator<Item = &'a Pod> {
        cluster.pods.iter().filter(move |p| self.selects(p))
    }

    /// Is `pod` one of its backends? (A Service without a selector has none.)
    pub fn selects(&self, pod: &Pod) -> bool {
        !self.selector.is_empty()
            && pod.namespace == self.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

impl Pod {
    /// Its workload, `namespace/Kind/name`; a bare pod is its own, `namespace/Pod/name`.
    pub fn workload_name(&self) -> String {
        self.workload
            .clone()
            .unwrap_or_else(|| format!("{}/Pod/{}", self.namespace, self.name))
    }

    /// What a named port means on this pod: the container port with that name.
    pub fn named_port(&self, name: &str) -> Option<(Protocol, u16)> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| (p.protocol, p.port))
    }
}
