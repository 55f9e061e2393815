//! The baseline as connections (client, server, protocol, server port), for replaying
//! against a policy set (`policy-gen`).
//!
//! A connection between two pods is in the baseline twice, once per endpoint (the client's
//! egress, the server's ingress), counting the same connections: it becomes one connection
//! with the larger count. A connection to a Service's ClusterIP, as the client's endpoint saw
//! it, becomes connections to the Service's backing workloads on the target port (what the
//! backends' own records show too). Connections with the pod's own node are left out: they
//! are always allowed.

use std::collections::BTreeMap;

use model::{
    Direction, Protocol,
    evidence::{Endpoint, ObservedFlow},
    netpol::cluster::{Cluster, TargetPort},
};

use crate::{
    baseline::{Baseline, PeerKey},
    evidence::Evidence,
    propose::rfc3339,
};

type Key = (Endpoint, Endpoint, Protocol, Option<u16>);

/// The connections of `baseline`, Services resolved with `cluster`, in a stable order.
pub fn connections(baseline: &Baseline, cluster: &Cluster) -> Vec<ObservedFlow> {
    let mut flows: BTreeMap<Key, (u64, i64, i64)> = BTreeMap::new();
    let mut add = |key: Key, e: &Evidence| {
        let entry = flows.entry(key).or_insert((0, i64::MAX, 0));
        entry.0 = entry.0.max(e.connections);
        entry.1 = entry.1.min(e.first_seen_ms);
        entry.2 = entry.2.max(e.last_seen_ms);
    };
    for (key, e) in &baseline.rules {
        if e.connections == 0 {
            continue;
        }
        let me = Endpoint::Workload {
            workload: baseline.names.get(key.workload).to_owned(),
        };
        let peer = match key.peer {
            PeerKey::Host => continue,
            PeerKey::Workload(w) => Endpoint::Workload {
                workload: baseline.names.get(w).to_owned(),
            },
            PeerKey::External { ip, dns_name } => Endpoint::External {
                ip,
                dns_name: dns_name.map(|n| baseline.names.get(n).to_owned()),
            },
            PeerKey::Service(s) => {
                for (backend, port) in
                    backends(cluster, baseline.names.get(s), key.protocol, key.port)
                {
                    add((me.clone(), backend, key.protocol, port), e);
                }
                continue;
            }
        };
        let flow = match key.direction {
            Direction::Egress => (me, peer, key.protocol, key.port),
            Direction::Ingress => (peer, me, key.protocol, key.port),
        };
        add(flow, e);
    }
    flows
        .into_iter()
        .map(
            |((client, server, protocol, port), (connections, first, last))| ObservedFlow {
                client,
                server,
                protocol,
                port,
                connections,
                first_seen: rfc3339(first),
                last_seen: rfc3339(last),
            },
        )
        .collect()
}

/// The workloads behind Service `name` (`namespace/name`) and the port each serves the
/// Service's `port` on.
fn backends(
    cluster: &Cluster,
    name: &str,
    protocol: Protocol,
    port: Option<u16>,
) -> Vec<(Endpoint, Option<u16>)> {
    let Some((service, service_port)) =
        port.and_then(|port| cluster.service_port(name, protocol, port).ok())
    else {
        return Vec::new();
    };
    let mut out: BTreeMap<Endpoint, Option<u16>> = BTreeMap::new();
    for pod in service.backends(cluster) {
        let target = match &service_port.target_port {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(n) => pod.named_port(n).map(|(_, p)| p),
        };
        let workload = pod
            .workload
            .clone()
            .unwrap_or_else(|| format!("{}/Pod/{}", pod.namespace, pod.name));
        if let Some(target) = target {
            out.entry(Endpoint::Workload { workload })
                .or_insert(Some(target));
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{Observation, Side};

    const CLUSTER: &str = r#"{
      "pods": [
        {"namespace": "shop", "name": "api-1", "ips": ["10.244.0.3"],
         "labels": {"app": "api"}, "ports": [{"name": "grpc", "port": 9000}],
         "workload": "shop/Deployment/api"}
      ],
      "services": [
        {"namespace": "shop", "name": "api", "selector": {"app": "api"},
         "cluster_ips": ["10.96.0.10"], "ports": [{"port": 80, "target_port": "grpc"}]}
      ]
    }"#;

    fn side(
        ip: &str,
        port: u16,
        pod: Option<&'static str>,
        workload: Option<&'static str>,
    ) -> Side<'static> {
        Side {
            ip: ip.parse().unwrap(),
            port,
            pod,
            workload,
            dns_name: None,
            service: None,
        }
    }

    #[test]
    fn both_ends_of_a_connection_and_its_service_make_one_flow() {
        let mut b = Baseline::default();
        let web = side(
            "10.244.0.2",
            40000,
            Some("shop/web-1"),
            Some("shop/Deployment/web"),
        );
        let api = side(
            "10.244.0.3",
            9000,
            Some("shop/api-1"),
            Some("shop/Deployment/api"),
        );
        let mut service = side("10.96.0.10", 80, None, None);
        service.service = Some("shop/api");
        let observe = |b: &mut Baseline, direction, local, remote, times| {
            for _ in 0..times {
                b.observe(&Observation {
                    kind: model::FlowKind::New,
                    time_ms: 1_764_324_000_000,
                    direction,
                    protocol: Protocol::Tcp,
                    local,
                    remote,
                    host_peer: false,
                    bytes: None,
                });
            }
        };
        // web's endpoint saw 5 to the Service; api's saw 4 of them arrive (one still to
        // come when the records were read).
        observe(&mut b, Direction::Egress, web, service, 5);
        observe(&mut b, Direction::Ingress, api, web, 4);
        let cluster: Cluster = serde_json::from_str(CLUSTER).unwrap();
        let flows = connections(&b, &cluster);
        assert_eq!(flows.len(), 1, "{flows:#?}");
        let f = &flows[0];
        assert_eq!(f.client.to_string(), "shop/Deployment/web");
        assert_eq!(f.server.to_string(), "shop/Deployment/api");
        assert_eq!((f.port, f.connections), (Some(9000), 5));
        assert_eq!(f.first_seen, "2025-11-28T10:00:00.000Z");
    }
}
