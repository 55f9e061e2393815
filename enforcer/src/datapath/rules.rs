//! Endpoint registration and mode, written once over [`Table`] so they are unit-tested
//! without a kernel, and the kernel's address form. Every edit that can change a verdict
//! bumps the endpoint's policy revision: live connections are judged again on their next
//! packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer_common::{
    addr,
    endpoint::{EndpointInfo, direction_policy},
};
use model::Mode;

use super::tables::Table;
use crate::error::{Error, Result};

/// What an endpoint is, as the one who attaches it knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    pub mode: Mode,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// A new endpoint starts isolated both ways (see `attach::EndpointSpec::isolated`).
    pub isolated: bool,
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

/// The mode an endpoint is registered with (`None` for a value no mode has).
pub fn model_mode(kernel: u8) -> Option<Mode> {
    match enforcer_common::Mode::from_u8(kernel)? {
        enforcer_common::Mode::Learn => Some(Mode::Learn),
        enforcer_common::Mode::Monitor => Some(Mode::Monitor),
        enforcer_common::Mode::Enforce => Some(Mode::Enforce),
    }
}

/// The pod's own addresses (those it has) as the endpoint records them.
pub fn own_addresses(info: &EndpointInfo) -> Vec<IpAddr> {
    let v4 = Ipv4Addr::from(info.ipv4);
    let v6 = Ipv6Addr::from(info.ipv6);
    let mut own = Vec::new();
    if !v4.is_unspecified() {
        own.push(IpAddr::V4(v4));
    }
    if !v6.is_unspecified() {
        own.push(IpAddr::V6(v6));
    }
    own
}

/// Create or update the endpoint on `ifindex`. Its id is the ifindex: unique on the node
/// while the interface lives, and never reused soon after (ifindexes only grow).
pub fn register_endpoint(
    endpoints: &mut impl Table<u32, EndpointInfo>,
    ifindex: u32,
    config: &EndpointConfig,
) -> Result<EndpointInfo> {
    let mut info = EndpointInfo::new(ifindex, kernel_mode(config.mode));
    if config.isolated {
        info.ingress_policy = direction_policy::ISOLATED;
        info.egress_policy = direction_policy::ISOLATED;
    }
    if let Some(old) = endpoints.get(&ifindex)? {
        info.identity = old.identity;
        info.policy_revision = old.policy_revision.wrapping_add(1);
        info.ingress_policy = old.ingress_policy;
        info.egress_policy = old.egress_policy;
        info.policy_generation = old.policy_generation;
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

pub(super) fn endpoint(
    endpoints: &impl Table<u32, EndpointInfo>,
    ifindex: u32,
) -> Result<EndpointInfo> {
    endpoints
        .get(&ifindex)?
        .ok_or_else(|| Error::NotAnEndpoint {
            interface: format!("ifindex {ifindex}"),
        })
}

pub(super) fn bump(
    endpoints: &mut impl Table<u32, EndpointInfo>,
    ifindex: u32,
    mut info: EndpointInfo,
) -> Result<()> {
    info.policy_revision = info.policy_revision.wrapping_add(1);
    endpoints.set(ifindex, info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::tables::MemTable;

    const IF: u32 = 7;

    fn endpoints() -> MemTable<u32, EndpointInfo> {
        let mut endpoints = MemTable::default();
        let config = EndpointConfig {
            mode: Mode::Enforce,
            ipv4: Some(Ipv4Addr::new(10, 244, 0, 2)),
            ipv6: None,
            isolated: false,
        };
        register_endpoint(&mut endpoints, IF, &config).unwrap();
        endpoints
    }

    #[test]
    fn registering_keeps_identity_and_policy_and_bumps_revision() {
        let mut endpoints = endpoints();
        let mut first = endpoints.get(&IF).unwrap().unwrap();
        assert_eq!(first.endpoint_id, IF);
        assert_eq!(first.ipv4, [10, 244, 0, 2]);
        first.egress_policy = 1;
        first.policy_generation = 1;
        endpoints.set(IF, first).unwrap();
        let config = EndpointConfig {
            mode: Mode::Monitor,
            ipv4: None,
            ipv6: None,
            isolated: false,
        };
        let again = register_endpoint(&mut endpoints, IF, &config).unwrap();
        assert_eq!(again.policy_revision, first.policy_revision + 1);
        assert_eq!(again.mode, enforcer_common::Mode::Monitor as u8);
        assert_eq!((again.egress_policy, again.policy_generation), (1, 1));
    }

    #[test]
    fn an_isolated_registration_starts_closed_and_a_known_endpoint_keeps_its_state() {
        let mut endpoints = MemTable::default();
        let isolated = EndpointConfig {
            mode: Mode::Enforce,
            ipv4: None,
            ipv6: None,
            isolated: true,
        };
        let info = register_endpoint(&mut endpoints, IF, &isolated).unwrap();
        let both = (direction_policy::ISOLATED, direction_policy::ISOLATED);
        assert_eq!((info.ingress_policy, info.egress_policy), both);
        // Opened by its rules, then registered again: stays as its rules left it.
        let mut opened = info;
        opened.ingress_policy = 0;
        endpoints.set(IF, opened).unwrap();
        let again = register_endpoint(&mut endpoints, IF, &isolated).unwrap();
        assert_eq!(again.ingress_policy, 0);
    }

    #[test]
    fn set_mode_rejudges() {
        let mut endpoints = endpoints();
        let r0 = endpoints.get(&IF).unwrap().unwrap().policy_revision;
        set_mode(&mut endpoints, IF, Mode::Learn).unwrap();
        let info = endpoints.get(&IF).unwrap().unwrap();
        assert_eq!(info.mode, enforcer_common::Mode::Learn as u8);
        assert_eq!(info.policy_revision, r0 + 1);
        assert!(matches!(
            set_mode(&mut endpoints, IF + 1, Mode::Learn),
            Err(Error::NotAnEndpoint { .. })
        ));
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
