//! The API server's objects as the agent keeps them, and as the rest of Palisade reads them.
//!
//! Stripping: before an object enters a reflector store, everything the agent never reads
//! is dropped (managed fields, annotations other than `palisade.io/*`, containers except
//! their names and ports, status except the phase and the pod's addresses, ...). A node
//! agent mirrors every pod of the cluster, so what a pod costs in memory is what matters;
//! a typical pod shrinks to a tenth of its size. `resourceVersion` goes too: the watcher
//! has already read it to resume, and without it an update that changes nothing the agent
//! reads leaves the stored object equal, which the watcher uses to wake nobody.
//!
//! Conversion: stripped objects -> `model::netpol::cluster` types (pods with IPv4 and IPv6
//! addresses and named container ports, node addresses, Services with ClusterIPs).

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{
            Container, Namespace, Node, NodeStatus, Pod, PodSpec, PodStatus, Service, ServicePort,
            ServiceSpec,
        },
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::core::PartialObjectMeta;
use model::{
    Protocol,
    netpol::cluster::{self as model_cluster, ClusterService, ClusterServicePort, TargetPort},
};
use tracing::debug;

/// Annotations with this prefix are Palisade's and survive stripping.
pub const ANNOTATION_PREFIX: &str = "palisade.io/";

/// Node address types that carry traffic (a `Hostname` is not an address).
const NODE_ADDRESS_TYPES: &[&str] = &["InternalIP", "ExternalIP"];

/// Keep of an object's metadata only its identity, labels, Palisade's annotations and its
/// controller reference.
pub fn strip_meta(meta: &mut ObjectMeta) {
    let kept = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        labels: meta.labels.take(),
        annotations: meta
            .annotations
            .take()
            .map(|a| {
                a.into_iter()
                    .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
                    .collect::<BTreeMap<_, _>>()
            })
            .filter(|a| !a.is_empty()),
        owner_references: meta
            .owner_references
            .take()
            .map(|refs| {
                refs.into_iter()
                    .filter(|r| r.controller == Some(true))
                    .collect::<Vec<_>>()
            })
            .filter(|r| !r.is_empty()),
        ..ObjectMeta::default()
    };
    *meta = kept;
}

/// A pod as identities, modes and named ports need it.
pub fn strip_pod(pod: &mut Pod) {
    strip_meta(&mut pod.metadata);
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec.containers.into_iter().map(strip_container).collect(),
        // Sidecars (init containers that keep running) serve ports like containers do.
        init_containers: spec
            .init_containers
            .map(|init| {
                init.into_iter()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always") && c.ports.is_some())
                    .map(strip_container)
                    .collect::<Vec<_>>()
            })
            .filter(|init| !init.is_empty()),
        host_network: spec.host_network,
        node_name: spec.node_name,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        ..PodStatus::default()
    });
}

fn strip_container(c: Container) -> Container {
    Container {
        name: c.name,
        ports: c.ports,
        restart_policy: c.restart_policy,
        ..Container::default()
    }
}

/// A namespace is its name, labels and Palisade's annotations.
pub fn strip_namespace(ns: &mut Namespace) {
    strip_meta(&mut ns.metadata);
    ns.spec = None;
    ns.status = None;
}

/// A node is its name and traffic-carrying addresses.
pub fn strip_node(node: &mut Node) {
    strip_meta(&mut node.metadata);
    node.spec = None;
    node.status = node.status.take().map(|status| NodeStatus {
        addresses: status.addresses.map(|addresses| {
            addresses
                .into_iter()
                .filter(|a| NODE_ADDRESS_TYPES.contains(&a.type_.as_str()))
                .collect()
        }),
        ..NodeStatus::default()
    });
}

/// A Service is its selector, ClusterIPs and ports.
pub fn strip_service(svc: &mut Service) {
    strip_meta(&mut svc.metadata);
    svc.spec = svc.spec.take().map(|spec| ServiceSpec {
        type_: spec.type_,
        selector: spec.selector,
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    target_port: p.target_port,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
    svc.status = None;
}

/// A NetworkPolicy keeps its whole spec: all of it is semantics.
pub fn strip_network_policy(policy: &mut NetworkPolicy) {
    strip_meta(&mut policy.metadata);
}

/// A metadata-only object (ReplicaSet, Job) is its name and controller.
pub fn strip_partial<K>(object: &mut PartialObjectMeta<K>) {
    strip_meta(&mut object.metadata);
    object.types = None;
}

/// Does the pod share its node's network namespace? Such a pod has the node's addresses
/// and no interface of its own: it is the node as far as the datapath can tell.
pub fn is_host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// Has the pod finished (`Succeeded` or `Failed`)? Its addresses are released and may
/// already belong to another pod, so it must not keep them.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The node the pod is scheduled on (empty until it is).
pub fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// The pod's addresses, IPv4 and IPv6: `status.podIPs`, or `status.podIP` from an API
/// server that does not fill the list.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .collect();
    let raw = if listed.is_empty() {
        status.pod_ip.as_deref().into_iter().collect()
    } else {
        listed
    };
    raw.into_iter()
        .filter_map(|ip| parse_ip(ip, "pod", &pod.metadata))
        .collect()
}

/// The ports the pod's containers (and sidecars) declare, named or not, in order and
/// without duplicates.
pub fn container_ports(pod: &Pod) -> Vec<model_cluster::ContainerPort> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let mut ports: Vec<model_cluster::ContainerPort> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(model_cluster::ContainerPort {
                name: p.name.clone(),
                port: u16::try_from(p.container_port).ok()?,
                protocol: protocol(p.protocol.as_deref())?,
            })
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// The pod as policies see it, owned by `workload` (`namespace/Kind/name`, `None` for a
/// bare pod).
pub fn model_pod(pod: &Pod, workload: Option<String>) -> model_cluster::Pod {
    model_cluster::Pod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips: pod_ips(pod),
        ports: container_ports(pod),
        node: node_of(pod).to_owned(),
        workload,
    }
}

/// The node's traffic-carrying addresses (`InternalIP`, `ExternalIP`), IPv4 and IPv6.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| NODE_ADDRESS_TYPES.contains(&a.type_.as_str()))
        .filter_map(|a| parse_ip(&a.address, "node", &node.metadata))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The Service as the datapath judges connections to it: `None` when it has no ClusterIP
/// (headless, ExternalName), since pods then connect to backends' addresses directly.
pub fn model_service(svc: &Service) -> Option<ClusterService> {
    let spec = svc.spec.as_ref()?;
    let listed = spec.cluster_ips.iter().flatten().map(String::as_str);
    let raw: Vec<&str> = if spec.cluster_ips.as_ref().is_some_and(|ips| !ips.is_empty()) {
        listed.collect()
    } else {
        spec.cluster_ip.as_deref().into_iter().collect()
    };
    let cluster_ips: Vec<IpAddr> = raw
        .into_iter()
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .filter_map(|ip| parse_ip(ip, "service", &svc.metadata))
        .collect();
    if cluster_ips.is_empty() {
        return None;
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                Some(IntOrString::String(name)) => TargetPort::Name(name.clone()),
            };
            Some(ClusterServicePort {
                port,
                protocol: protocol(p.protocol.as_deref())?,
                target_port,
            })
        })
        .collect();
    Some(ClusterService {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        selector: spec.selector.clone().unwrap_or_default(),
        cluster_ips,
        ports,
    })
}

/// A Kubernetes port protocol (`TCP` when not given); `None` for one Kubernetes does not
/// define (the API server refuses those, so only a newer server could send one).
pub fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        other => {
            debug!(protocol = other, "port with an unknown protocol skipped");
            None
        }
    }
}

fn parse_ip(text: &str, kind: &str, meta: &ObjectMeta) -> Option<IpAddr> {
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            // The API server validates addresses; skip rather than guess.
            debug!(
                kind,
                name = meta.name.as_deref().unwrap_or_default(),
                address = text,
                "address that does not parse skipped"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as a Deployment's ReplicaSet creates it and the API server returns it.
    fn realistic_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "api-5f6b9c7d8-x2x9q",
                "generateName": "api-5f6b9c7d8-",
                "namespace": "shop",
                "uid": "0c1b7d1e-3b4f-4a55-9a8e-5d3c1f2e9b01",
                "resourceVersion": "912345",
                "creationTimestamp": "2025-11-20T10:00:00Z",
                "labels": {"app": "api", "pod-template-hash": "5f6b9c7d8"},
                "annotations": {
                    "kubectl.kubernetes.io/restartedAt": "2025-11-20T09:59:00Z",
                    "prometheus.io/scrape": "true",
                    "palisade.io/mode": "enforce"
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-5f6b9c7d8",
                    "uid": "6a1c", "controller": true, "blockOwnerDeletion": true
                }],
                "managedFields": [{
                    "manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "v1", "time": "2025-11-20T10:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                                 "f:spec": {"f:containers": {"k:{\"name\":\"api\"}": {".": {}}}}}
                }, {
                    "manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                    "time": "2025-11-20T10:00:05Z", "fieldsType": "FieldsV1",
                    "subresource": "status",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:podIPs": {}}}
                }]
            },
            "spec": {
                "nodeName": "node-a",
                "serviceAccountName": "api",
                "containers": [{
                    "name": "api",
                    "image": "registry.example.com/shop/api:1.42.0",
                    "args": ["--listen=:8080", "--metrics=:9090"],
                    "env": [{"name": "DATABASE_URL", "value": "postgres://db:5432/shop"},
                            {"name": "LOG_LEVEL", "value": "info"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                              {"name": "metrics", "containerPort": 9090}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                  "limits": {"memory": "256Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                       "periodSeconds": 5},
                    "volumeMounts": [{"name": "kube-api-access-abcde",
                                      "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                      "readOnly": true}]
                }],
                "initContainers": [
                    {"name": "migrate", "image": "registry.example.com/shop/migrate:1.42.0"},
                    {"name": "proxy", "image": "envoy:1.31", "restartPolicy": "Always",
                     "ports": [{"name": "admin", "containerPort": 15000, "protocol": "TCP"}]}
                ],
                "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                 "effect": "NoExecute", "tolerationSeconds": 300}]
            },
            "status": {
                "phase": "Running",
                "hostIP": "192.168.1.10",
                "podIP": "10.244.1.7",
                "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00:10:244:1::7"}],
                "qosClass": "Burstable",
                "startTime": "2025-11-20T10:00:01Z",
                "conditions": [
                    {"type": "Ready", "status": "True",
                     "lastTransitionTime": "2025-11-20T10:00:09Z"},
                    {"type": "ContainersReady", "status": "True",
                     "lastTransitionTime": "2025-11-20T10:00:09Z"}
                ],
                "containerStatuses": [{
                    "name": "api", "ready": true, "restartCount": 0, "started": true,
                    "image": "registry.example.com/shop/api:1.42.0",
                    "imageID": "registry.example.com/shop/api@sha256:0123456789abcdef",
                    "containerID": "containerd://0123456789abcdef",
                    "state": {"running": {"startedAt": "2025-11-20T10:00:08Z"}}
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_realistic_pod_shrinks_and_keeps_what_identity_needs() {
        let full = realistic_pod();
        let mut pod = full.clone();
        strip_pod(&mut pod);
        let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
        assert!(
            size(&pod) * 3 < size(&full),
            "stripped {} bytes of {}",
            size(&pod),
            size(&full)
        );

        let meta = &pod.metadata;
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.resource_version, None);
        assert_eq!(
            meta.annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["palisade.io/mode"]
        );
        assert_eq!(meta.uid, full.metadata.uid);
        assert_eq!(meta.labels, full.metadata.labels);
        assert_eq!(
            meta.owner_references.as_ref().unwrap()[0].name,
            "api-5f6b9c7d8"
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(spec.containers[0].env, None);
        assert_eq!(
            spec.init_containers.as_ref().unwrap().len(),
            1,
            "the sidecar stays, the finished init container goes"
        );

        // The same identity inputs from the stripped pod as from the full one.
        let workload = Some("shop/Deployment/api".to_owned());
        let converted = model_pod(&pod, workload.clone());
        assert_eq!(converted, model_pod(&full, workload));
        assert_eq!(
            converted.ips,
            [
                "10.244.1.7".parse::<IpAddr>().unwrap(),
                "fd00:10:244:1::7".parse().unwrap()
            ]
        );
        assert_eq!(converted.node, "node-a");
        assert_eq!(converted.named_port("http"), Some((Protocol::Tcp, 8080)));
        assert_eq!(converted.named_port("metrics"), Some((Protocol::Tcp, 9090)));
        assert_eq!(converted.named_port("admin"), Some((Protocol::Tcp, 15000)));
        assert!(!is_host_network(&pod));
        assert!(!is_finished(&pod));
    }

    #[test]
    fn pod_ip_is_the_fallback_and_finished_pods_are_recognised() {
        let mut pod = realistic_pod();
        let status = pod.status.as_mut().unwrap();
        status.pod_ips = None;
        status.phase = Some("Succeeded".into());
        assert_eq!(pod_ips(&pod), ["10.244.1.7".parse::<IpAddr>().unwrap()]);
        assert!(is_finished(&pod));
        pod.status = None;
        assert!(pod_ips(&pod).is_empty());
    }

    #[test]
    fn nodes_keep_their_traffic_addresses_of_both_families() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a", "labels": {"kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": "10.244.1.0/24", "providerID": "kind://docker/x"},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "192.168.1.10"},
                    {"type": "InternalIP", "address": "fd00::10"},
                    {"type": "ExternalIP", "address": "203.0.113.10"},
                    {"type": "Hostname", "address": "node-a"}
                ],
                "capacity": {"cpu": "4", "memory": "16Gi"},
                "nodeInfo": {"kubeletVersion": "v1.33.1", "architecture": "amd64",
                             "bootID": "b", "containerRuntimeVersion": "containerd://2",
                             "kernelVersion": "6.18", "kubeProxyVersion": "", "machineID": "m",
                             "operatingSystem": "linux", "osImage": "Debian", "systemUUID": "s"}
            }
        }))
        .unwrap();
        strip_node(&mut node);
        assert_eq!(node.spec, None);
        assert_eq!(
            node.status
                .as_ref()
                .unwrap()
                .addresses
                .as_ref()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            node_addresses(&node),
            [
                "192.168.1.10".parse::<IpAddr>().unwrap(),
                "203.0.113.10".parse().unwrap(),
                "fd00::10".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn services_convert_with_both_families_and_named_target_ports() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop",
                         "annotations": {"meta.helm.sh/release-name": "shop"}},
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": "api"},
                "clusterIP": "10.96.0.20",
                "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                "ipFamilies": ["IPv4", "IPv6"],
                "sessionAffinity": "None",
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                    {"name": "same", "port": 9090}
                ]
            },
            "status": {"loadBalancer": {}}
        }))
        .unwrap();
        strip_service(&mut svc);
        assert_eq!(svc.metadata.annotations, None);
        let converted = model_service(&svc).unwrap();
        assert_eq!(converted.selector["app"], "api");
        assert_eq!(
            converted.cluster_ips,
            [
                "10.96.0.20".parse::<IpAddr>().unwrap(),
                "fd00:96::20".parse().unwrap()
            ]
        );
        assert_eq!(
            converted.ports,
            [
                ClusterServicePort {
                    port: 80,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Name("http".into()),
                },
                ClusterServicePort {
                    port: 53,
                    protocol: Protocol::Udp,
                    target_port: TargetPort::Number(5353),
                },
                ClusterServicePort {
                    port: 9090,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(9090),
                },
            ]
        );

        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"}}
        }))
        .unwrap();
        assert_eq!(model_service(&headless), None);
    }

    #[test]
    fn metadata_keeps_only_palisade_annotations_and_the_controller() {
        let mut meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "x", "namespace": "shop", "resourceVersion": "7", "generation": 3,
            "finalizers": ["a/b"],
            "annotations": {"other": "1"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u1"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u2",
                 "controller": true}
            ]
        }))
        .unwrap();
        strip_meta(&mut meta);
        assert_eq!(meta.annotations, None, "an empty map is dropped");
        assert_eq!(meta.resource_version, None);
        assert_eq!(meta.generation, None);
        assert_eq!(meta.finalizers, None);
        let owners = meta.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "ReplicaSet");
    }
}
