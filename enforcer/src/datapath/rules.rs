//! Edits to what the datapath enforces, written once over [`Table`] so they are unit-tested
//! without a kernel. Every edit that can change a verdict bumps the endpoint's policy
//! revision: live connections are then judged again on their next packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer_common::{
    addr,
    deny::{DenyKey, DenyValue},
    endpoint::EndpointInfo,
};
use model::{Mode, Protocol};

use super::tables::Table;
use crate::error::{Error, Result};

/// What an endpoint is, as the one who attaches it knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    pub mode: Mode,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// One deny rule of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DenyRule {
    pub peer: IpAddr,
    /// `None` = every protocol (and then no port).
    pub protocol: Option<Protocol>,
    /// `None` = every port of `protocol`.
    pub port: Option<u16>,
    pub rule_id: u32,
}

impl DenyRule {
    fn key(&self, endpoint: u32) -> Result<DenyKey, InvalidRule> {
        let protocol = self.protocol.map_or(0, Protocol::number);
        match (self.protocol, self.port) {
            (None, Some(_)) => return Err(InvalidRule::PortWithoutProtocol),
            (Some(p), Some(_)) if !p.has_ports() => return Err(InvalidRule::NoPorts(p)),
            (Some(_), Some(0)) => return Err(InvalidRule::PortZero),
            _ => {}
        }
        Ok(DenyKey::new(
            endpoint,
            kernel_addr(self.peer),
            protocol,
            self.port.unwrap_or(0),
        ))
    }

    fn from_entry(key: &DenyKey, value: &DenyValue) -> Self {
        Self {
            peer: ip_from_kernel(&key.peer_addr),
            protocol: (key.protocol != 0).then(|| Protocol::from_number(key.protocol)),
            port: (key.server_port != 0).then_some(key.server_port),
            rule_id: value.rule_id,
        }
    }
}

/// Why a deny rule cannot be expressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRule {
    #[error("a port needs a protocol")]
    PortWithoutProtocol,
    #[error("{0} has no ports")]
    NoPorts(Protocol),
    #[error("port 0 is not a port")]
    PortZero,
}

/// The 16-byte kernel form of an address (IPv4-mapped for IPv4).
pub fn kernel_addr(ip: IpAddr) -> addr::Addr {
    match ip {
        IpAddr::V4(v4) => addr::from_ipv4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address behind a 16-byte kernel address.
pub fn ip_from_kernel(a: &addr::Addr) -> IpAddr {
    match addr::to_ipv4(a) {
        Some(v4) => IpAddr::V4(v4.into()),
        None => IpAddr::V6((*a).into()),
    }
}

pub fn kernel_mode(mode: Mode) -> enforcer_common::Mode {
    match mode {
        Mode::Learn => enforcer_common::Mode::Learn,
        Mode::Monitor => enforcer_common::Mode::Monitor,
        Mode::Enforce => enforcer_common::Mode::Enforce,
    }
}

/// Create or update the endpoint on `ifindex`. Its id is the ifindex: unique on the node
/// while the interface lives, and never reused soon after (ifindexes only grow).
pub fn register_endpoint(
    endpoints: &mut impl Table<u32, EndpointInfo>,
    ifindex: u32,
    config: &EndpointConfig,
) -> Result<EndpointInfo> {
    let mut info = EndpointInfo::new(ifindex, kernel_mode(config.mode));
    if let Some(old) = endpoints.get(&ifindex)? {
        info.identity = old.identity;
        info.policy_revision = old.policy_revision.wrapping_add(1);
    }
    info.ipv4 = config.ipv4.map_or([0; 4], |a| a.octets());
    info.ipv6 = config.ipv6.map_or([0; 16], |a| a.octets());
    endpoints.set(ifindex, info)?;
    Ok(info)
}

/// Change an endpoint's mode; live connections are judged again under it.
pub fn set_mode(
    endpoints: &mut impl Table<u32, EndpointInfo>,
    ifindex: u32,
    mode: Mode,
) -> Result<()> {
    let mut info = endpoint(endpoints, ifindex)?;
    info.mode = kernel_mode(mode) as u8;
    bump(endpoints, ifindex, info)
}

/// Add (or replace) a deny rule on the endpoint on `ifindex`.
pub fn add_deny(
    endpoints: &mut impl Table<u32, EndpointInfo>,
    denies: &mut impl Table<DenyKey, DenyValue>,
    ifindex: u32,
    rule: &DenyRule,
) -> Result<()> {
    let info = endpoint(endpoints, ifindex)?;
    let key = rule
        .key(info.endpoint_id)
        .map_err(|e| invalid(ifindex, e))?;
    denies.set(
        key,
        DenyValue {
            rule_id: rule.rule_id,
        },
    )?;
    bump(endpoints, ifindex, info)
}

/// Remove a deny rule; `false` when there was none.
pub fn remove_deny(
    endpoints: &mut impl Table<u32, EndpointInfo>,
    denies: &mut impl Table<DenyKey, DenyValue>,
    ifindex: u32,
    rule: &DenyRule,
) -> Result<bool> {
    let info = endpoint(endpoints, ifindex)?;
    let key = rule
        .key(info.endpoint_id)
        .map_err(|e| invalid(ifindex, e))?;
    let removed = denies.remove(&key)?;
    if removed {
        bump(endpoints, ifindex, info)?;
    }
    Ok(removed)
}

/// The deny rules of the endpoint on `ifindex`, sorted.
pub fn denies_of(
    endpoints: &impl Table<u32, EndpointInfo>,
    denies: &impl Table<DenyKey, DenyValue>,
    ifindex: u32,
) -> Result<Vec<DenyRule>> {
    let info = endpoint(endpoints, ifindex)?;
    let mut rules: Vec<_> = denies
        .entries()?
        .iter()
        .filter(|(k, _)| k.endpoint == info.endpoint_id)
        .map(|(k, v)| DenyRule::from_entry(k, v))
        .collect();
    rules.sort();
    Ok(rules)
}

/// Remove the endpoint on `ifindex` and its rules. Its conntrack entries age out.
pub fn forget_endpoint(
    endpoints: &mut impl Table<u32, EndpointInfo>,
    denies: &mut impl Table<DenyKey, DenyValue>,
    ifindex: u32,
) -> Result<()> {
    let Some(info) = endpoints.get(&ifindex)? else {
        return Ok(());
    };
    for (key, _) in denies.entries()? {
        if key.endpoint == info.endpoint_id {
            denies.remove(&key)?;
        }
    }
    endpoints.remove(&ifindex)?;
    Ok(())
}

fn endpoint(endpoints: &impl Table<u32, EndpointInfo>, ifindex: u32) -> Result<EndpointInfo> {
    endpoints
        .get(&ifindex)?
        .ok_or_else(|| Error::NotAnEndpoint {
            interface: format!("ifindex {ifindex}"),
        })
}

fn bump(
    endpoints: &mut impl Table<u32, EndpointInfo>,
    ifindex: u32,
    mut info: EndpointInfo,
) -> Result<()> {
    info.policy_revision = info.policy_revision.wrapping_add(1);
    endpoints.set(ifindex, info)
}

fn invalid(ifindex: u32, source: InvalidRule) -> Error {
    Error::InvalidRule { ifindex, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::tables::MemTable;

    const IF: u32 = 7;

    fn tables() -> (MemTable<u32, EndpointInfo>, MemTable<DenyKey, DenyValue>) {
        let mut endpoints = MemTable::default();
        let config = EndpointConfig {
            mode: Mode::Enforce,
            ipv4: Some(Ipv4Addr::new(10, 244, 0, 2)),
            ipv6: None,
        };
        register_endpoint(&mut endpoints, IF, &config).unwrap();
        (endpoints, MemTable::default())
    }

    fn rule(peer: &str, protocol: Option<Protocol>, port: Option<u16>) -> DenyRule {
        DenyRule {
            peer: peer.parse().unwrap(),
            protocol,
            port,
            rule_id: 1,
        }
    }

    fn revision(endpoints: &MemTable<u32, EndpointInfo>) -> u32 {
        endpoints.get(&IF).unwrap().unwrap().policy_revision
    }

    #[test]
    fn registering_keeps_identity_and_bumps_revision() {
        let (mut endpoints, _) = tables();
        let first = endpoints.get(&IF).unwrap().unwrap();
        assert_eq!(first.endpoint_id, IF);
        assert_eq!(first.ipv4, [10, 244, 0, 2]);
        let config = EndpointConfig {
            mode: Mode::Monitor,
            ipv4: None,
            ipv6: None,
        };
        let again = register_endpoint(&mut endpoints, IF, &config).unwrap();
        assert_eq!(again.policy_revision, first.policy_revision + 1);
        assert_eq!(again.mode, enforcer_common::Mode::Monitor as u8);
    }

    #[test]
    fn adding_and_removing_a_deny_bumps_the_revision_each_time() {
        let (mut endpoints, mut denies) = tables();
        let r0 = revision(&endpoints);
        let r = rule("10.244.0.3", Some(Protocol::Tcp), Some(80));
        add_deny(&mut endpoints, &mut denies, IF, &r).unwrap();
        assert_eq!(revision(&endpoints), r0 + 1);
        let key = DenyKey::new(IF, kernel_addr(r.peer), 6, 80);
        assert_eq!(denies.get(&key).unwrap(), Some(DenyValue { rule_id: 1 }));
        assert_eq!(denies_of(&endpoints, &denies, IF).unwrap(), [r]);

        assert!(remove_deny(&mut endpoints, &mut denies, IF, &r).unwrap());
        assert_eq!(revision(&endpoints), r0 + 2);
        assert!(!remove_deny(&mut endpoints, &mut denies, IF, &r).unwrap());
        assert_eq!(revision(&endpoints), r0 + 2, "a no-op changes no verdict");
    }

    #[test]
    fn whole_peer_rules_use_the_wildcard_key() {
        let (mut endpoints, mut denies) = tables();
        let r = rule("2001:db8::7", None, None);
        add_deny(&mut endpoints, &mut denies, IF, &r).unwrap();
        let key = DenyKey::new(IF, kernel_addr(r.peer), 0, 0);
        assert!(denies.get(&key).unwrap().is_some());
        assert_eq!(denies_of(&endpoints, &denies, IF).unwrap(), [r]);
    }

    #[test]
    fn inexpressible_rules_are_refused_with_a_reason() {
        let (mut endpoints, mut denies) = tables();
        for (r, why) in [
            (
                rule("10.0.0.1", None, Some(80)),
                InvalidRule::PortWithoutProtocol,
            ),
            (
                rule("10.0.0.1", Some(Protocol::Icmp), Some(8)),
                InvalidRule::NoPorts(Protocol::Icmp),
            ),
            (
                rule("10.0.0.1", Some(Protocol::Udp), Some(0)),
                InvalidRule::PortZero,
            ),
        ] {
            let err = add_deny(&mut endpoints, &mut denies, IF, &r).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRule { source, .. } if source == why),
                "{r:?}: {err}"
            );
        }
        assert!(denies.0.is_empty());
    }

    #[test]
    fn every_port_of_one_protocol_uses_port_zero() {
        let (mut endpoints, mut denies) = tables();
        let r = rule("10.0.0.9", Some(Protocol::Udp), None);
        add_deny(&mut endpoints, &mut denies, IF, &r).unwrap();
        let key = DenyKey::new(IF, kernel_addr(r.peer), 17, 0);
        assert!(denies.get(&key).unwrap().is_some());
        assert_eq!(denies_of(&endpoints, &denies, IF).unwrap(), [r]);
    }

    #[test]
    fn rules_need_an_endpoint() {
        let (mut endpoints, mut denies) = tables();
        let r = rule("10.0.0.1", None, None);
        let err = add_deny(&mut endpoints, &mut denies, IF + 1, &r).unwrap_err();
        assert!(matches!(err, Error::NotAnEndpoint { .. }), "{err}");
    }

    #[test]
    fn forgetting_an_endpoint_removes_only_its_rules() {
        let (mut endpoints, mut denies) = tables();
        let other = EndpointConfig {
            mode: Mode::Enforce,
            ipv4: None,
            ipv6: None,
        };
        register_endpoint(&mut endpoints, IF + 1, &other).unwrap();
        let r = rule("10.0.0.1", None, None);
        add_deny(&mut endpoints, &mut denies, IF, &r).unwrap();
        add_deny(&mut endpoints, &mut denies, IF + 1, &r).unwrap();
        forget_endpoint(&mut endpoints, &mut denies, IF).unwrap();
        assert!(endpoints.get(&IF).unwrap().is_none());
        assert_eq!(denies.0.len(), 1);
        assert_eq!(denies_of(&endpoints, &denies, IF + 1).unwrap(), [r]);
    }

    #[test]
    fn set_mode_rejudges() {
        let (mut endpoints, _) = tables();
        let r0 = revision(&endpoints);
        set_mode(&mut endpoints, IF, Mode::Learn).unwrap();
        let info = endpoints.get(&IF).unwrap().unwrap();
        assert_eq!(info.mode, enforcer_common::Mode::Learn as u8);
        assert_eq!(info.policy_revision, r0 + 1);
    }

    #[test]
    fn addresses_round_trip_through_the_kernel_form() {
        for ip in ["10.1.2.3", "2001:db8::1", "::ffff:10.1.2.3"] {
            let ip: IpAddr = ip.parse().unwrap();
            let back = ip_from_kernel(&kernel_addr(ip));
            // ::ffff:a.b.c.d and a.b.c.d are the same address to the datapath.
            assert_eq!(back.to_canonical(), ip.to_canonical());
        }
    }
}
