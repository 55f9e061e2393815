//! Netlink messages turned into the few facts discovery needs.
//!
//! rtnetlink messages carry dozens of attributes; discovery needs a handful. Each parser
//! here keeps what it needs and returns `None` for messages that cannot matter (a route
//! through a gateway, a neighbour without a link-layer address), so the resolution logic
//! in [`super::discover`] works on plain values and is tested without a kernel.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use netlink_packet_route::{
    AddressFamily,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The address in a link-layer attribute; `None` unless it is 6 bytes (Ethernet).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What kind of device a link is, as far as discovery cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    /// Anything else (physical NICs, loopback, tunnels, devices without `IFLA_INFO_KIND`).
    Other,
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub kind: LinkKind,
    /// The bridge (or bond, VRF) this link is a port of (`IFLA_MASTER`).
    pub master: Option<u32>,
}

/// A route to exactly one address (/32 or /128) straight out of an interface, no gateway:
/// what routed CNIs install for each local pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    pub destination: IpAddr,
    pub ifindex: u32,
}

/// An IPv4 (ARP) or IPv6 (NDP) neighbour entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: IpAddr,
    /// The interface the neighbour was seen on (for bridged pods: the bridge).
    pub ifindex: u32,
    /// `None` while unresolved, and in some deletion notices: the kernel only reports the
    /// address of entries in a valid state.
    pub mac: Option<Mac>,
}

/// An entry of a bridge's forwarding database: frames to `mac` leave through `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    /// The bridge port (or the bridge itself, for the bridge's own addresses).
    pub port: u32,
    /// The bridge, when the kernel says (`NDA_MASTER`); entries that devices keep for
    /// themselves (`bridge fdb ... self`) have none.
    pub bridge: Option<u32>,
}

/// The link in a `RTM_NEWLINK`/`RTM_DELLINK` message; `None` without a name.
pub fn link_of(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = LinkKind::Other;
    let mut master = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(index) => master = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Bridge) => kind = LinkKind::Bridge,
                        LinkInfo::Kind(InfoKind::Veth) => kind = LinkKind::Veth,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link {
        ifindex: message.header.index,
        name: name?,
        kind,
        master,
    })
}

/// The host route in a `RTM_NEWROUTE`/`RTM_DELROUTE` message, if it is one: unicast, full
/// prefix length, one output interface and no gateway. Routes through a gateway lead to
/// another node; local routes (the node's own addresses) have type `local`.
pub fn host_route_of(message: &RouteMessage) -> Option<HostRoute> {
    let header = &message.header;
    let full_length = match header.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return None,
    };
    if header.destination_prefix_length != full_length || header.kind != RouteType::Unicast {
        return None;
    }
    let mut destination = None;
    let mut ifindex = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                destination = Some(IpAddr::V4(*ip));
            }
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                destination = Some(IpAddr::V6(*ip));
            }
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            // Through another machine, or spread over several interfaces: not a pod's veth.
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_) => {
                return None;
            }
            _ => {}
        }
    }
    Some(HostRoute {
        destination: destination?,
        ifindex: ifindex?,
    })
}

/// The IPv4/IPv6 neighbour in a `RTM_NEWNEIGH`/`RTM_DELNEIGH` message; `None` for other
/// families (bridge FDB entries are [`fdb_of`]'s) and for proxy entries.
pub fn neighbour_of(message: &NeighbourMessage) -> Option<Neighbour> {
    if !matches!(
        message.header.family,
        AddressFamily::Inet | AddressFamily::Inet6
    ) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                ip = Some(IpAddr::V4(*a));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a));
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Mac::from_bytes(bytes),
            _ => {}
        }
    }
    // The kernel keeps a stale address on failed entries; it no longer vouches for it.
    if matches!(
        message.header.state,
        NeighbourState::Failed | NeighbourState::Incomplete
    ) {
        mac = None;
    }
    Some(Neighbour {
        ip: ip?,
        ifindex: message.header.ifindex,
        mac,
    })
}

/// The bridge FDB entry in an `AF_BRIDGE` `RTM_NEWNEIGH`/`RTM_DELNEIGH` message.
pub fn fdb_of(message: &NeighbourMessage) -> Option<FdbEntry> {
    if message.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut bridge = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Mac::from_bytes(bytes),
            NeighbourAttribute::Controller(index) => bridge = Some(*index),
            _ => {}
        }
    }
    Some(FdbEntry {
        mac: mac?,
        port: message.header.ifindex,
        bridge,
    })
}

/// `ip` in the form the kernel's tables use: a v4-mapped IPv6 address (`::ffff:a.b.c.d`)
/// as IPv4, so a pod address written that way still finds its IPv4 route.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(IpAddr::V6(v6), |v4: Ipv4Addr| IpAddr::V4(v4)),
        v4 @ IpAddr::V4(_) => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use netlink_packet_route::{
        link::LinkInfo,
        neighbour::NeighbourState,
        route::{RouteAddress, RouteMessage},
    };

    use super::*;

    fn link(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes = attributes;
        m
    }

    fn route(family: AddressFamily, length: u8, attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        m.header.destination_prefix_length = length;
        m.header.kind = RouteType::Unicast;
        m.attributes = attributes;
        m
    }

    fn neighbour(
        family: AddressFamily,
        ifindex: u32,
        state: NeighbourState,
        attributes: Vec<NeighbourAttribute>,
    ) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        m.header.ifindex = ifindex;
        m.header.state = state;
        m.attributes = attributes;
        m
    }

    const MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05];

    #[test]
    fn mac_needs_six_bytes_and_prints_like_ip() {
        assert_eq!(
            Mac::from_bytes(&MAC).unwrap().to_string(),
            "0a:58:0a:f4:00:05"
        );
        assert_eq!(Mac::from_bytes(&[1, 2, 3]), None);
        assert_eq!(Mac::from_bytes(&[0; 20]), None);
    }

    #[test]
    fn links_keep_name_kind_and_master() {
        let veth = link(
            7,
            vec![
                LinkAttribute::IfName("veth1".into()),
                LinkAttribute::Controller(3),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            ],
        );
        assert_eq!(
            link_of(&veth),
            Some(Link {
                ifindex: 7,
                name: "veth1".into(),
                kind: LinkKind::Veth,
                master: Some(3),
            })
        );
        let bridge = link(
            3,
            vec![
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
                LinkAttribute::IfName("cni0".into()),
            ],
        );
        assert_eq!(link_of(&bridge).unwrap().kind, LinkKind::Bridge);
        let nic = link(2, vec![LinkAttribute::IfName("eth0".into())]);
        assert_eq!(link_of(&nic).unwrap().kind, LinkKind::Other);
        assert_eq!(link_of(&link(9, vec![])), None, "no name, no link");
    }

    #[test]
    fn host_routes_are_full_length_unicast_without_gateway() {
        let pod4: Ipv4Addr = "10.244.0.5".parse().unwrap();
        let pod6: Ipv6Addr = "fd00::5".parse().unwrap();
        let v4 = route(
            AddressFamily::Inet,
            32,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(pod4)),
                RouteAttribute::Oif(7),
            ],
        );
        assert_eq!(
            host_route_of(&v4),
            Some(HostRoute {
                destination: pod4.into(),
                ifindex: 7
            })
        );
        let v6 = route(
            AddressFamily::Inet6,
            128,
            vec![
                RouteAttribute::Oif(8),
                RouteAttribute::Destination(RouteAddress::Inet6(pod6)),
            ],
        );
        assert_eq!(
            host_route_of(&v6),
            Some(HostRoute {
                destination: pod6.into(),
                ifindex: 8
            })
        );

        let subnet = route(
            AddressFamily::Inet,
            24,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(pod4)),
                RouteAttribute::Oif(3),
            ],
        );
        assert_eq!(host_route_of(&subnet), None, "a subnet route");
        let v6_as_v4_length = route(
            AddressFamily::Inet6,
            32,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet6(pod6)),
                RouteAttribute::Oif(8),
            ],
        );
        assert_eq!(host_route_of(&v6_as_v4_length), None);
        let via_gateway = route(
            AddressFamily::Inet,
            32,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(pod4)),
                RouteAttribute::Gateway(RouteAddress::Inet("192.168.1.2".parse().unwrap())),
                RouteAttribute::Oif(2),
            ],
        );
        assert_eq!(host_route_of(&via_gateway), None, "another node's pod");
        let mut local = v4.clone();
        local.header.kind = RouteType::Local;
        assert_eq!(host_route_of(&local), None, "the node's own address");
        let no_interface = route(
            AddressFamily::Inet,
            32,
            vec![RouteAttribute::Destination(RouteAddress::Inet(pod4))],
        );
        assert_eq!(host_route_of(&no_interface), None);
    }

    #[test]
    fn neighbours_keep_a_mac_only_in_valid_states() {
        let ip: Ipv4Addr = "10.244.0.5".parse().unwrap();
        let attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
            NeighbourAttribute::LinkLayerAddress(MAC.to_vec()),
        ];
        let reachable = neighbour(
            AddressFamily::Inet,
            3,
            NeighbourState::Reachable,
            attributes.clone(),
        );
        assert_eq!(
            neighbour_of(&reachable),
            Some(Neighbour {
                ip: ip.into(),
                ifindex: 3,
                mac: Some(Mac(MAC))
            })
        );
        let failed = neighbour(
            AddressFamily::Inet,
            3,
            NeighbourState::Failed,
            attributes.clone(),
        );
        assert_eq!(neighbour_of(&failed).unwrap().mac, None);
        let bridge_family = neighbour(
            AddressFamily::Bridge,
            3,
            NeighbourState::Reachable,
            attributes,
        );
        assert_eq!(neighbour_of(&bridge_family), None);
        let v6 = neighbour(
            AddressFamily::Inet6,
            3,
            NeighbourState::Stale,
            vec![NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                "fd00::5".parse().unwrap(),
            ))],
        );
        assert_eq!(neighbour_of(&v6).unwrap().mac, None, "no address given");
    }

    #[test]
    fn fdb_entries_keep_port_and_bridge() {
        let learned = neighbour(
            AddressFamily::Bridge,
            7,
            NeighbourState::Reachable,
            vec![
                NeighbourAttribute::LinkLayerAddress(MAC.to_vec()),
                NeighbourAttribute::Controller(3),
            ],
        );
        assert_eq!(
            fdb_of(&learned),
            Some(FdbEntry {
                mac: Mac(MAC),
                port: 7,
                bridge: Some(3)
            })
        );
        let own = neighbour(
            AddressFamily::Bridge,
            2,
            NeighbourState::Permanent,
            vec![NeighbourAttribute::LinkLayerAddress(
                [0x33, 0x33, 0, 0, 0, 1].to_vec(),
            )],
        );
        assert_eq!(fdb_of(&own).unwrap().bridge, None);
        let inet = neighbour(
            AddressFamily::Inet,
            7,
            NeighbourState::Reachable,
            vec![NeighbourAttribute::LinkLayerAddress(MAC.to_vec())],
        );
        assert_eq!(fdb_of(&inet), None, "an ARP entry, not an FDB entry");
    }

    #[test]
    fn v4_mapped_addresses_are_v4() {
        let mapped: IpAddr = "::ffff:10.244.0.5".parse().unwrap();
        assert_eq!(canonical(mapped), "10.244.0.5".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
