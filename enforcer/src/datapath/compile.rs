//! Compiling the rule model into map entries: pure functions, no kernel, unit-tested.
//!
//! - A rule's peer becomes identities: itself, the wildcard, or (for a CIDR with excepts)
//!   every CIDR identity whose prefix lies inside the CIDR and inside none of its excepts.
//!   That is exact because `CIDRS` holds every prefix any rule names, so the kernel's
//!   longest-prefix match gives an address the identity of the most specific one.
//! - A port range becomes prefix-aligned blocks, each an LPM prefix of the port.

use std::{collections::BTreeMap, net::IpAddr};

use enforcer_common::{
    self as abi,
    policy::{CidrKey, PolicyKey, PolicyValue},
};
use ipnet::IpNet;
use model::{
    Direction,
    identity::Identity,
    rules::{EndpointRules, Evaluation, Peer, RuleError, Service},
};

use super::rules::kernel_addr;

/// Every CIDR any rule names, with its identity.
pub type CidrIdentities = BTreeMap<IpNet, Identity>;

/// A `POLICY` entry: (prefix length, key) -> value.
pub type PolicyEntry = ((u32, PolicyKey), PolicyValue);

/// A `CIDRS` entry: (prefix length, key) -> identity.
pub type CidrEntry = ((u32, CidrKey), u32);

/// The CIDRs (nets and excepts) named by `rules`.
pub fn cidrs_named<'a>(rules: impl IntoIterator<Item = &'a EndpointRules>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for endpoint in rules {
        for rule in &endpoint.rules {
            if let Peer::Cidr { net, except } = &rule.peer {
                nets.push(net.trunc());
                nets.extend(except.iter().map(IpNet::trunc));
            }
        }
    }
    nets.sort();
    nets.dedup();
    nets
}

/// The `CIDRS` entries for `cidrs`.
pub fn cidr_entries(cidrs: &CidrIdentities) -> Vec<CidrEntry> {
    cidrs
        .iter()
        .map(|(net, id)| {
            let family = if net.addr().is_ipv4() { 4 } else { 6 };
            let key = CidrKey {
                family,
                addr: kernel_addr(net.network()),
            };
            ((CidrKey::prefix_len(family, net.prefix_len()), key), id.0)
        })
        .collect()
}

/// The CIDR a `CIDRS` entry stands for (the inverse of [`cidr_entries`]).
pub fn cidr_net(prefix_len: u32, key: &CidrKey) -> Option<IpNet> {
    let addr = super::rules::ip_from_kernel(&key.addr);
    let bits = match (key.family, addr) {
        (4, IpAddr::V4(_)) => prefix_len.checked_sub(8 + 96)?,
        (6, IpAddr::V6(_)) => prefix_len.checked_sub(8)?,
        _ => return None,
    };
    IpNet::new(addr, u8::try_from(bits).ok()?).ok()
}

/// The `POLICY` entries of one endpoint's rules under `generation`, including those for
/// the Services its egress reaches (see [`Service::evaluate`]; `own` are the endpoint's
/// addresses, a backend it may always reach).
pub fn policy_entries(
    endpoint: u32,
    generation: u8,
    rules: &EndpointRules,
    cidrs: &CidrIdentities,
    services: &[Service],
    own: &[IpAddr],
) -> Result<Vec<PolicyEntry>, RuleError> {
    rules.validate()?;
    let mut entries: BTreeMap<(u32, [u8; 13]), PolicyEntry> = BTreeMap::new();
    for rule in &rules.rules {
        let direction = match rule.direction {
            Direction::Egress => abi::Direction::Egress as u8,
            Direction::Ingress => abi::Direction::Ingress as u8,
        };
        let ports: Vec<(u16, u8)> = match (rule.protocol, rule.ports) {
            (Some(_), Some(range)) => range.prefix_blocks(),
            _ => vec![(0, 0)],
        };
        for identity in peer_identities(&rule.peer, cidrs) {
            for &(port, port_bits) in &ports {
                let (protocol, prefix) = match rule.protocol {
                    None => (0, PolicyKey::FIXED_BITS),
                    Some(p) => (p.number(), PolicyKey::FIXED_BITS + 8 + u32::from(port_bits)),
                };
                let key =
                    PolicyKey::new(endpoint, generation, direction, identity.0, protocol, port);
                // The same prefix from two rules: keep the first rule's id.
                entries
                    .entry((prefix, bytes_of(&key)))
                    .or_insert(((prefix, key), PolicyValue { rule_id: rule.id }));
            }
        }
    }
    let egress = abi::Direction::Egress as u8;
    for service in services {
        for port in &service.ports {
            let rule_id = match service.evaluate(rules, port, own) {
                Evaluation::Rules(ids) => ids[0],
                // Allowed without a rule: only the endpoint itself backs the Service.
                Evaluation::Itself => 0,
                Evaluation::Open | Evaluation::Host | Evaluation::Denied => continue,
            };
            {
                let key = PolicyKey::new(
                    endpoint,
                    generation,
                    egress,
                    service.identity.0,
                    port.protocol.number(),
                    port.port,
                );
                entries
                    .entry((PolicyKey::FULL_BITS, bytes_of(&key)))
                    .or_insert(((PolicyKey::FULL_BITS, key), PolicyValue { rule_id }));
            }
        }
    }
    Ok(entries.into_values().collect())
}

/// The identities a rule's peer stands for in `POLICY` keys.
fn peer_identities(peer: &Peer, cidrs: &CidrIdentities) -> Vec<Identity> {
    match peer {
        Peer::Any => vec![Identity::ANY],
        Peer::Identity(id) => vec![*id],
        Peer::Cidr { net, except } => cidrs
            .iter()
            .filter(|(prefix, _)| {
                net.contains(*prefix) && !except.iter().any(|e| e.contains(*prefix))
            })
            .map(|(_, id)| *id)
            .collect(),
    }
}

fn bytes_of(key: &PolicyKey) -> [u8; 13] {
    let mut b = [0u8; 13];
    b[..4].copy_from_slice(&key.endpoint);
    b[4] = key.generation;
    b[5] = key.direction;
    b[6..10].copy_from_slice(&key.identity);
    b[10] = key.protocol;
    b[11..].copy_from_slice(&key.port);
    b
}

/// The identity the kernel would resolve for `addr` from `CIDRS` alone (longest prefix),
/// for tests and for explaining verdicts.
pub fn cidr_identity_of(addr: IpAddr, cidrs: &CidrIdentities) -> Option<Identity> {
    let addr = addr.to_canonical();
    cidrs
        .iter()
        .filter(|(net, _)| net.contains(&addr))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, id)| *id)
}

#[cfg(test)]
mod tests {
    use model::{
        Protocol,
        rules::{PortRange, Rule},
    };

    use super::*;

    fn cidr_ids(nets: &[&str]) -> CidrIdentities {
        nets.iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.parse().unwrap(),
                    Identity(Identity::FIRST_CIDR + i as u32),
                )
            })
            .collect()
    }

    #[test]
    fn a_cidr_rule_selects_the_prefixes_inside_it_but_not_its_excepts() {
        let cidrs = cidr_ids(&["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.0.0/16"]);
        let peer = Peer::Cidr {
            net: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        let ids = peer_identities(&peer, &cidrs);
        // /8 itself only: /16 is excepted and /24 lies inside the except.
        assert_eq!(ids, [Identity(Identity::FIRST_CIDR)]);
    }

    #[test]
    fn port_ranges_become_prefix_blocks_and_any_protocol_stops_early() {
        let rules = EndpointRules::isolated(vec![
            Rule {
                id: 3,
                direction: Direction::Ingress,
                peer: Peer::Identity(Identity(300)),
                protocol: Some(Protocol::Tcp),
                ports: Some(PortRange {
                    first: 8000,
                    last: 8015,
                }),
            },
            Rule {
                id: 4,
                direction: Direction::Egress,
                peer: Peer::Any,
                protocol: None,
                ports: None,
            },
        ]);
        let entries = policy_entries(7, 1, &rules, &CidrIdentities::new(), &[], &[]).unwrap();
        assert_eq!(entries.len(), 2);
        let ((prefix, key), value) = entries
            .iter()
            .find(|(_, v)| v.rule_id == 3)
            .copied()
            .unwrap();
        assert_eq!(prefix, 80 + 8 + 12);
        assert_eq!(key, PolicyKey::new(7, 1, 2, 300, 6, 8000));
        assert_eq!(value.rule_id, 3);
        let ((prefix, key), _) = entries
            .iter()
            .find(|(_, v)| v.rule_id == 4)
            .copied()
            .unwrap();
        assert_eq!(prefix, PolicyKey::FIXED_BITS);
        assert_eq!(key.identity, 0u32.to_be_bytes());
    }

    #[test]
    fn a_pod_backing_its_own_service_always_reaches_it() {
        let me: IpAddr = "10.244.0.9".parse().unwrap();
        let service = Service {
            identity: Identity(Identity::FIRST_SERVICE),
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            ports: vec![model::rules::ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
            }],
            backends: vec![(me, Identity(300))],
        };
        // Egress isolated with no rule: the Service is reachable only because it is itself.
        let rules = EndpointRules::isolated(vec![]);
        let cidrs = CidrIdentities::new();
        let to_service = |own: &[IpAddr]| {
            policy_entries(7, 0, &rules, &cidrs, std::slice::from_ref(&service), own).unwrap()
        };
        assert!(to_service(&[]).is_empty());
        let entries = to_service(&[me]);
        assert_eq!(entries.len(), 1);
        let ((_, key), value) = entries[0];
        assert_eq!(key.identity, Identity::FIRST_SERVICE.to_be_bytes());
        assert_eq!(value.rule_id, 0);
    }

    #[test]
    fn cidr_entries_turn_back_into_their_cidrs() {
        let cidrs: CidrIdentities = ["10.0.0.0/8", "203.0.113.0/24", "2001:db8::/32", "::/0"]
            .iter()
            .zip(1..)
            .map(|(n, i)| (n.parse().unwrap(), Identity(Identity::FIRST_CIDR + i)))
            .collect();
        let back: CidrIdentities = cidr_entries(&cidrs)
            .into_iter()
            .map(|((len, key), id)| (cidr_net(len, &key).unwrap(), Identity(id)))
            .collect();
        assert_eq!(back, cidrs);
    }

    #[test]
    fn invalid_rules_compile_to_nothing() {
        let rules = EndpointRules::isolated(vec![Rule {
            id: 1,
            direction: Direction::Egress,
            peer: Peer::Any,
            protocol: Some(Protocol::Icmp),
            ports: Some(PortRange::single(8)),
        }]);
        assert!(policy_entries(1, 0, &rules, &CidrIdentities::new(), &[], &[]).is_err());
    }

    #[test]
    fn cidr_keys_keep_families_apart() {
        let cidrs = cidr_ids(&["0.0.0.0/0", "::/0"]);
        let entries = cidr_entries(&cidrs);
        let v4 = entries.iter().find(|((_, k), _)| k.family == 4).unwrap();
        let v6 = entries.iter().find(|((_, k), _)| k.family == 6).unwrap();
        assert_eq!(v4.0.0, 8 + 96);
        assert_eq!(v6.0.0, 8);
        assert_eq!(
            cidr_identity_of("10.0.0.1".parse().unwrap(), &cidrs),
            Some(Identity(Identity::FIRST_CIDR))
        );
    }
}
