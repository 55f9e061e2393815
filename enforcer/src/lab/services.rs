//! ClusterIP services, implemented in the node namespace the way kube-proxy's nftables mode
//! does: DNAT in prerouting, so the datapath on a pod's veth sees what it sees in a cluster,
//! the pod's packets still addressed to the ClusterIP.
//!
//! Per service port and family: a chain picking a backend with `numgen random`, one chain per
//! backend doing the DNAT. A pod reaching itself through its own service (hairpin) is
//! marked and source-NATed to the node's address, or its reply would bypass the node. A
//! service port without backends rejects (TCP reset, ICMP port unreachable), as kube-proxy
//! does. The whole table is replaced atomically whenever pods change.

use std::fmt::Write as _;

use super::{
    error::Result,
    net,
    plan::{GATEWAY_V4, NODE_V6},
    state::{Pod, ServiceInfo},
    topology::{Protocol, ServicePort, TargetPort},
};

/// The lab's nftables table in the node namespace.
pub const TABLE: &str = "inet palisade-lab";

/// kube-proxy's masquerade mark.
const HAIRPIN_MARK: u32 = 0x4000;

/// A pod behind a service port, and the port the traffic goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend<'a> {
    pub pod: &'a Pod,
    pub port: u16,
}

/// The backends of one service port: the pods of the service's namespace that its selector
/// matches and that have the target port (a numbered target needs no declared port, as in
/// Kubernetes; a named one is looked up among the pod's ports of the same protocol).
pub fn backends<'a>(
    service: &ServiceInfo,
    port: &ServicePort,
    pods: &'a [Pod],
) -> Vec<Backend<'a>> {
    pods.iter()
        .filter(|pod| {
            pod.namespace == service.namespace
                && service
                    .selector
                    .iter()
                    .all(|(k, v)| pod.labels.get(k) == Some(v))
        })
        .filter_map(|pod| {
            let target = match port.target() {
                TargetPort::Number(n) => n.get(),
                TargetPort::Name(name) => pod
                    .ports
                    .iter()
                    .find(|p| p.protocol == port.protocol && p.name.as_ref() == Some(&name))?
                    .port
                    .get(),
            };
            Some(Backend { pod, port: target })
        })
        .collect()
}

/// The nftables script that (re)creates the lab's table in one transaction.
pub fn render(services: &[ServiceInfo], pods: &[Pod]) -> String {
    let mut dispatch = String::new();
    let mut chains = String::new();
    let mut rejects = String::new();
    for service in services {
        for port in &service.ports {
            let backends = backends(service, port, pods);
            for family in [Family::V4, Family::V6] {
                let (l3, vip) = match family {
                    Family::V4 => ("ip", service.ipv4.to_string()),
                    Family::V6 => ("ip6", service.ipv6.to_string()),
                };
                let l4 = match port.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                let matches = format!("{l3} daddr {vip} {l4} dport {}", port.port);
                if backends.is_empty() {
                    let reject = match port.protocol {
                        Protocol::Tcp => "reject with tcp reset",
                        Protocol::Udp => "reject",
                    };
                    writeln!(rejects, "\t\t{matches} {reject}").expect("writing to a String");
                    continue;
                }
                let chain = format!("svc-{}-{l4}-{}-{}", service.name, port.port, family.tag());
                writeln!(dispatch, "\t\t{matches} goto {chain}").expect("writing to a String");
                let arms: Vec<String> = (0..backends.len())
                    .map(|i| format!("{i} : goto {chain}-ep{i}"))
                    .collect();
                writeln!(
                    chains,
                    "\tchain {chain} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
                    backends.len(),
                    arms.join(", ")
                )
                .expect("writing to a String");
                for (i, backend) in backends.iter().enumerate() {
                    let (ip, to) = match family {
                        Family::V4 => {
                            let ip = backend.pod.ipv4.to_string();
                            let to = format!("{ip}:{}", backend.port);
                            (ip, to)
                        }
                        Family::V6 => {
                            let ip = backend.pod.ipv6.to_string();
                            let to = format!("[{ip}]:{}", backend.port);
                            (ip, to)
                        }
                    };
                    writeln!(
                        chains,
                        "\tchain {chain}-ep{i} {{\n\
                         \t\t{l3} saddr {ip} meta mark set meta mark | {HAIRPIN_MARK:#x}\n\
                         \t\tmeta l4proto {l4} dnat {l3} to {to}\n\
                         \t}}"
                    )
                    .expect("writing to a String");
                }
            }
        }
    }
    format!(
        "table {TABLE}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \tchain services {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {dispatch}\
         \t}}\n\
         {chains}\
         \tchain no-endpoints {{\n\
         \t\ttype filter hook prerouting priority dstnat - 10; policy accept;\n\
         {rejects}\
         \t}}\n\
         \tchain hairpin {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {HAIRPIN_MARK:#x} == {HAIRPIN_MARK:#x} meta nfproto ipv4 snat ip to {GATEWAY_V4}\n\
         \t\tmeta mark & {HAIRPIN_MARK:#x} == {HAIRPIN_MARK:#x} meta nfproto ipv6 snat ip6 to {NODE_V6}\n\
         \t}}\n\
         }}\n"
    )
}

/// Load the rendered table into the node namespace.
pub fn apply(node_netns: &str, script: &str) -> Result<()> {
    net::run(Some(node_netns), "nft", &["-f", "-"], script)
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn tag(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V6 => "v6",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::lab::plan::{self, NewPod};

    fn pod(slot: u32, name: &str, app: &str, ports: &str) -> Pod {
        Pod::new(
            "t",
            slot,
            NewPod {
                namespace: "shop".into(),
                name: name.into(),
                workload: None,
                labels: BTreeMap::from([("app".into(), app.into())]),
                ports: serde_yaml::from_str(ports).unwrap(),
            },
        )
    }

    fn service(index: usize, name: &str, app: &str, ports: &str) -> ServiceInfo {
        let (ipv4, ipv6) = plan::cluster_ips(index).unwrap();
        ServiceInfo {
            name: format!("shop/{name}"),
            namespace: "shop".into(),
            selector: BTreeMap::from([("app".into(), app.into())]),
            ports: serde_yaml::from_str(ports).unwrap(),
            ipv4,
            ipv6,
        }
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pods = [
            pod(1, "api-a", "api", "[{port: 8080, name: http}]"),
            pod(2, "api-b", "api", "[{port: 9090, name: http}]"),
            pod(3, "api-c", "api", "[{port: 9090, name: metrics}]"),
            pod(4, "web", "web", "[{port: 8080, name: http}]"),
        ];
        let svc = service(0, "api", "api", "[{port: 80, targetPort: http}]");
        let got: Vec<(String, u16)> = backends(&svc, &svc.ports[0], &pods)
            .iter()
            .map(|b| (b.pod.name.clone(), b.port))
            .collect();
        assert_eq!(
            got,
            [("shop/api-a".into(), 8080), ("shop/api-b".into(), 9090)]
        );

        let numbered = service(0, "api", "api", "[{port: 80, targetPort: 7000}]");
        assert_eq!(backends(&numbered, &numbered.ports[0], &pods).len(), 3);
    }

    #[test]
    fn renders_dnat_load_balancing_hairpin_and_rejects() {
        let pods = [
            pod(1, "api-a", "api", "[{port: 8080}]"),
            pod(2, "api-b", "api", "[{port: 8080}]"),
        ];
        let services = [
            service(0, "api", "api", "[{port: 80, targetPort: 8080}]"),
            service(1, "dns", "dns", "[{port: 53, protocol: UDP}]"),
        ];
        let script = render(&services, &pods);
        let expected = "\
table inet palisade-lab
delete table inet palisade-lab
table inet palisade-lab {
\tchain services {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 10.96.0.1 tcp dport 80 goto svc-shop/api-tcp-80-v4
\t\tip6 daddr fd00:10:96::1 tcp dport 80 goto svc-shop/api-tcp-80-v6
\t}
\tchain svc-shop/api-tcp-80-v4 {
\t\tnumgen random mod 2 vmap { 0 : goto svc-shop/api-tcp-80-v4-ep0, 1 : goto svc-shop/api-tcp-80-v4-ep1 }
\t}
\tchain svc-shop/api-tcp-80-v4-ep0 {
\t\tip saddr 10.244.0.2 meta mark set meta mark | 0x4000
\t\tmeta l4proto tcp dnat ip to 10.244.0.2:8080
\t}
\tchain svc-shop/api-tcp-80-v4-ep1 {
\t\tip saddr 10.244.0.3 meta mark set meta mark | 0x4000
\t\tmeta l4proto tcp dnat ip to 10.244.0.3:8080
\t}
\tchain svc-shop/api-tcp-80-v6 {
\t\tnumgen random mod 2 vmap { 0 : goto svc-shop/api-tcp-80-v6-ep0, 1 : goto svc-shop/api-tcp-80-v6-ep1 }
\t}
\tchain svc-shop/api-tcp-80-v6-ep0 {
\t\tip6 saddr fd00:10:244::2 meta mark set meta mark | 0x4000
\t\tmeta l4proto tcp dnat ip6 to [fd00:10:244::2]:8080
\t}
\tchain svc-shop/api-tcp-80-v6-ep1 {
\t\tip6 saddr fd00:10:244::3 meta mark set meta mark | 0x4000
\t\tmeta l4proto tcp dnat ip6 to [fd00:10:244::3]:8080
\t}
\tchain no-endpoints {
\t\ttype filter hook prerouting priority dstnat - 10; policy accept;
\t\tip daddr 10.96.0.2 udp dport 53 reject
\t\tip6 daddr fd00:10:96::2 udp dport 53 reject
\t}
\tchain hairpin {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x4000 == 0x4000 meta nfproto ipv4 snat ip to 169.254.1.1
\t\tmeta mark & 0x4000 == 0x4000 meta nfproto ipv6 snat ip6 to fd00:10:244::1
\t}
}
";
        assert_eq!(script, expected, "got:\n{script}");
    }

    #[test]
    fn re_rendering_follows_the_pods() {
        let services = [service(0, "api", "api", "[{port: 80}]")];
        let before = render(&services, &[pod(1, "api-a", "api", "[]")]);
        let after = render(&services, &[pod(5, "api-z", "api", "[]")]);
        assert!(before.contains("10.244.0.2:80") && !before.contains("10.244.0.6"));
        assert!(after.contains("10.244.0.6:80") && !after.contains("10.244.0.2"));
    }
}
