//! The shop's traffic, as the demo's generator plays it: who calls whom, by name where a
//! real pod would look the name up.

use std::net::IpAddr;

use crate::lab::{Family, Lab, ProbeResult, Protocol, Result};

/// What one connection of the shop did: its description and the probe's result.
pub type Connection = (String, ProbeResult);

/// One round of the shop's day: every pod of each workload makes its usual connections.
/// Rounds alternate between IPv4 and IPv6.
pub fn round(lab: &Lab, n: u32) -> Result<Vec<Connection>> {
    let family = if n.is_multiple_of(2) {
        Family::V4
    } else {
        Family::V6
    };
    let mut out = Vec::new();
    for pod in names(lab, "shop/frontend")? {
        // The storefront looks the catalog up and calls it through its Service, and calls
        // checkout through its ClusterIP.
        out.push(by_name(
            lab,
            &pod,
            "catalog.shop.svc.cluster.local",
            family,
            80,
        )?);
        out.push(to(
            lab,
            &pod,
            service(lab, "payments/checkout", family)?,
            443,
            Protocol::Tcp,
        )?);
    }
    for pod in names(lab, "shop/catalog")? {
        out.push(to(
            lab,
            &pod,
            service(lab, "shop/redis", family)?,
            6379,
            Protocol::Tcp,
        )?);
    }
    for pod in names(lab, "payments/checkout")? {
        // The payment API, by name: the agent learns the name from the answer.
        out.push(by_name(
            lab,
            &pod,
            "payments-gateway.example.com",
            family,
            443,
        )?);
    }
    for pod in names(lab, "monitoring/node-exporter")? {
        out.push(by_name(lab, &pod, "telemetry.example.net", family, 4317)?);
    }
    for pod in names(lab, "monitoring/prometheus")? {
        for target in lab.pods_of("monitoring/node-exporter")? {
            let ip = address(target.ipv4.into(), target.ipv6.into(), family);
            out.push(to(lab, &pod, ip, 9100, Protocol::Tcp)?);
        }
    }
    Ok(out)
}

/// A burst: the storefront hammers the catalog.
pub fn burst(lab: &Lab) -> Result<Vec<Connection>> {
    let mut out = Vec::new();
    let catalog = service(lab, "shop/catalog", Family::V4)?;
    for pod in names(lab, "shop/frontend")? {
        for _ in 0..5 {
            out.push(to(lab, &pod, catalog, 80, Protocol::Tcp)?);
        }
    }
    Ok(out)
}

/// The nightly job: the report reads the catalog pods directly.
pub fn nightly(lab: &Lab) -> Result<Vec<Connection>> {
    let mut out = Vec::new();
    for pod in names(lab, "shop/nightly-report")? {
        for target in lab.pods_of("shop/catalog")? {
            for family in [Family::V4, Family::V6] {
                let ip = address(target.ipv4.into(), target.ipv6.into(), family);
                out.push(to(lab, &pod, ip, 8080, Protocol::Tcp)?);
            }
        }
    }
    Ok(out)
}

fn names(lab: &Lab, workload: &str) -> Result<Vec<String>> {
    Ok(lab
        .pods_of(workload)?
        .into_iter()
        .map(|p| p.name.clone())
        .collect())
}

fn address(v4: IpAddr, v6: IpAddr, family: Family) -> IpAddr {
    match family {
        Family::V4 => v4,
        Family::V6 => v6,
    }
}

fn service(lab: &Lab, name: &str, family: Family) -> Result<IpAddr> {
    let s = lab.service(name)?;
    Ok(address(s.ipv4.into(), s.ipv6.into(), family))
}

fn to(lab: &Lab, pod: &str, ip: IpAddr, port: u16, protocol: Protocol) -> Result<Connection> {
    let result = lab.probe_one(pod, ip, port, protocol)?;
    Ok((format!("{pod} -> {ip} {protocol} {port}"), result))
}

fn by_name(lab: &Lab, pod: &str, name: &str, family: Family, port: u16) -> Result<Connection> {
    let (ip, result) = lab.resolve_and_probe(pod, name, family, port, Protocol::Tcp)?;
    let ip = ip.map_or_else(|| "?".to_owned(), |ip| ip.to_string());
    Ok((format!("{pod} -> {name} ({ip}) TCP {port}"), result))
}
