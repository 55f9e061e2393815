//! Stated rules that widen exact external addresses into CIDRs, each with its reason.
//!
//! The baseline keeps every external peer exact (/32, /128). A proposal with one `ipBlock`
//! per address breaks the day a provider rotates addresses, so two rules, and only these,
//! widen:
//! 1. **A configured CIDR group**: an address inside a group the operator declared (e.g.
//!    `payments=198.51.100.0/24`, the provider's published range) becomes the group's CIDR.
//! 2. **Many addresses under one DNS name**: when a workload reached at least
//!    [`Widening::dns_min_addresses`] distinct addresses looked up by the same name (same
//!    direction, protocol and port), they become their smallest common prefix, but only if
//!    that prefix is no wider than [`Widening::widest_v4`] / [`Widening::widest_v6`];
//!    otherwise they stay exact (a name spread over the internet is not a range).
//!
//! Every widening names its rule and the addresses it covers.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use model::{Direction, Protocol, evidence::Widened};
use serde::{Deserialize, Serialize};

use crate::{
    baseline::{Baseline, PeerKey, RuleKey},
    intern::Name,
};

/// A named range of external addresses, configured by the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrGroup {
    pub name: String,
    pub cidr: IpNet,
}

impl std::str::FromStr for CidrGroup {
    type Err = String;

    /// `name=CIDR`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, cidr) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=CIDR, e.g. payments=198.51.100.0/24"))?;
        let cidr: IpNet = cidr
            .parse()
            .map_err(|e| format!("{s:?}: {cidr:?} is not a CIDR: {e}"))?;
        if name.is_empty() {
            return Err(format!("{s:?}: the group needs a name"));
        }
        Ok(Self {
            name: name.to_owned(),
            cidr: cidr.trunc(),
        })
    }
}

/// The widening rules' settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Widening {
    pub groups: Vec<CidrGroup>,
    /// Distinct addresses under one DNS name before they widen.
    pub dns_min_addresses: usize,
    /// The widest prefix a DNS name's addresses may widen to (IPv4, IPv6).
    pub widest_v4: u8,
    pub widest_v6: u8,
}

impl Default for Widening {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            dns_min_addresses: 4,
            widest_v4: 24,
            widest_v6: 48,
        }
    }
}

/// The addresses one workload reached by one name: (workload, direction, protocol, port,
/// DNS name).
type NameGroup = (Name, Direction, Protocol, Option<u16>, Name);

impl Widening {
    /// The widening of each external rule of `baseline` that widens.
    pub fn apply(&self, baseline: &Baseline) -> HashMap<RuleKey, Widened> {
        let mut widened = HashMap::new();
        // Rule 2 groups: (workload, direction, protocol, port, name) -> addresses.
        let mut by_name: BTreeMap<NameGroup, BTreeSet<IpAddr>> = BTreeMap::new();
        for key in baseline.rules.keys() {
            let PeerKey::External { ip, dns_name } = key.peer else {
                continue;
            };
            if let Some(group) = self.groups.iter().find(|g| g.cidr.contains(&ip)) {
                widened.insert(
                    *key,
                    Widened {
                        cidr: group.cidr,
                        reason: format!(
                            "{ip} is in the configured CIDR group {} ({})",
                            group.name, group.cidr
                        ),
                    },
                );
            } else if let Some(name) = dns_name {
                by_name
                    .entry((key.workload, key.direction, key.protocol, key.port, name))
                    .or_default()
                    .insert(ip);
            }
        }
        for ((workload, direction, protocol, port, name), addresses) in by_name {
            for family in [true, false] {
                let same: Vec<IpAddr> = addresses
                    .iter()
                    .copied()
                    .filter(|a| a.is_ipv4() == family)
                    .collect();
                if same.len() < self.dns_min_addresses {
                    continue;
                }
                let cidr = common_prefix(&same);
                let widest = if family {
                    self.widest_v4
                } else {
                    self.widest_v6
                };
                if cidr.prefix_len() < widest {
                    continue;
                }
                let reason = format!(
                    "{} addresses looked up as {} ({}) widened to their smallest common prefix",
                    same.len(),
                    baseline.names.get(name),
                    list(&same),
                );
                for ip in same {
                    let key = RuleKey {
                        workload,
                        direction,
                        protocol,
                        port,
                        peer: PeerKey::External {
                            ip,
                            dns_name: Some(name),
                        },
                    };
                    widened.insert(
                        key,
                        Widened {
                            cidr,
                            reason: reason.clone(),
                        },
                    );
                }
            }
        }
        widened
    }
}

fn list(addresses: &[IpAddr]) -> String {
    const SHOWN: usize = 5;
    let mut text: Vec<String> = addresses
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect();
    if addresses.len() > SHOWN {
        text.push(format!("and {} more", addresses.len() - SHOWN));
    }
    text.join(", ")
}

/// The smallest prefix holding every address (all of one family, at least one).
fn common_prefix(addresses: &[IpAddr]) -> IpNet {
    let bits = |a: &IpAddr| match a {
        IpAddr::V4(v4) => u128::from(v4.to_bits()) << 96,
        IpAddr::V6(v6) => v6.to_bits(),
    };
    let first = bits(&addresses[0]);
    let differ = addresses.iter().fold(0, |acc, a| acc | (bits(a) ^ first));
    let common = differ.leading_zeros() as u8;
    let len = if addresses[0].is_ipv4() {
        common.min(32)
    } else {
        common
    };
    IpNet::new(addresses[0], len)
        .expect("prefix length fits the family")
        .trunc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        intern::Interner,
        observation::{Observation, Side},
    };

    fn baseline_with(peers: &[(&'static str, Option<&'static str>)]) -> Baseline {
        let mut b = Baseline::default();
        for (ip, name) in peers {
            b.observe(&Observation {
                kind: model::FlowKind::New,
                time_ms: 1_764_324_000_000,
                direction: Direction::Egress,
                protocol: Protocol::Tcp,
                local: Side {
                    ip: "10.244.0.2".parse().unwrap(),
                    port: 40000,
                    pod: Some("shop/worker-1"),
                    workload: Some("shop/Deployment/worker"),
                    dns_name: None,
                    service: None,
                },
                remote: Side {
                    ip: ip.parse().unwrap(),
                    port: 443,
                    pod: None,
                    workload: None,
                    dns_name: *name,
                    service: None,
                },
                host_peer: false,
                bytes: None,
            });
        }
        b
    }

    fn cidrs(b: &Baseline, w: &HashMap<RuleKey, Widened>) -> BTreeMap<String, String> {
        let _: &Interner = &b.names;
        w.iter()
            .map(|(k, v)| {
                let PeerKey::External { ip, .. } = k.peer else {
                    unreachable!()
                };
                (ip.to_string(), v.cidr.to_string())
            })
            .collect()
    }

    #[test]
    fn a_configured_group_widens_its_addresses_and_says_so() {
        let b = baseline_with(&[("198.51.100.7", None), ("203.0.113.9", None)]);
        let w = Widening {
            groups: vec!["payments=198.51.100.0/24".parse().unwrap()],
            ..Widening::default()
        };
        let widened = w.apply(&b);
        assert_eq!(
            cidrs(&b, &widened),
            BTreeMap::from([("198.51.100.7".into(), "198.51.100.0/24".into())])
        );
        let reason = &widened.values().next().unwrap().reason;
        assert!(reason.contains("CIDR group payments"), "{reason}");
    }

    #[test]
    fn many_addresses_of_one_name_widen_to_their_common_prefix() {
        let name = Some("api.example.com");
        let b = baseline_with(&[
            ("203.0.113.1", name),
            ("203.0.113.2", name),
            ("203.0.113.5", name),
            ("203.0.113.6", name),
            ("203.0.113.200", None),
        ]);
        let widened = Widening::default().apply(&b);
        let got = cidrs(&b, &widened);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got.values().all(|c| c == "203.0.113.0/29"), "{got:?}");
        let reason = &widened.values().next().unwrap().reason;
        assert!(
            reason.starts_with("4 addresses looked up as api.example.com"),
            "{reason}"
        );
    }

    #[test]
    fn few_or_scattered_addresses_stay_exact() {
        let name = Some("cdn.example.com");
        let few = baseline_with(&[("203.0.113.1", name), ("203.0.113.2", name)]);
        assert!(Widening::default().apply(&few).is_empty());
        let scattered = baseline_with(&[
            ("203.0.113.1", name),
            ("198.51.100.2", name),
            ("192.0.2.3", name),
            ("203.0.113.4", name),
        ]);
        assert!(Widening::default().apply(&scattered).is_empty());
    }

    #[test]
    fn groups_parse_from_the_command_line_form() {
        let g: CidrGroup = "pool=198.51.100.9/24".parse().unwrap();
        assert_eq!(g.cidr.to_string(), "198.51.100.0/24");
        assert!(
            "nocidr"
                .parse::<CidrGroup>()
                .unwrap_err()
                .contains("NAME=CIDR")
        );
        assert!("x=300.1.1.1/8".parse::<CidrGroup>().is_err());
    }

    #[test]
    fn common_prefixes() {
        let v6: Vec<IpAddr> = vec![
            "2001:db8::1".parse().unwrap(),
            "2001:db8::ff".parse().unwrap(),
        ];
        assert_eq!(common_prefix(&v6).to_string(), "2001:db8::/120");
        let one: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(common_prefix(&one).to_string(), "192.0.2.1/32");
    }
}
