//! Which host interface carries a pod address: a snapshot of the node's link, route,
//! neighbour and bridge FDB tables, and the resolution over it.
//!
//! One dump of each table answers every pod on the node at once, which is what the agent
//! needs at start and after it lost netlink events; a single lookup uses the same path, so
//! the two can never disagree. The snapshot is plain data, built by hand in unit tests.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::{Stream, TryStreamExt as _};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{debug, trace};

use super::{
    error::{Error, Result},
    facts::{self, FdbEntry, HostRoute, Link, LinkKind, Neighbour},
};

/// How a pod's interface was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A host route to the pod's address out of this interface.
    Route,
    /// The pod's address is a neighbour on `bridge`, and its MAC was learned on this port.
    Bridge { bridge: u32 },
    /// The CNI plugin's result named this interface for the pod (a bridged pod that has not
    /// talked to the node yet has no neighbour entry to find it by).
    Cni,
}

/// The host side of a pod's veth, in the namespace the snapshot was taken in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInterface {
    pub ifindex: u32,
    pub name: String,
    pub via: Via,
}

/// The node's tables as discovery needs them, sorted so that every answer is deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSnapshot {
    links: BTreeMap<u32, Link>,
    routes: Vec<HostRoute>,
    neighbours: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
}

impl NodeSnapshot {
    pub fn new(
        links: impl IntoIterator<Item = Link>,
        routes: impl IntoIterator<Item = HostRoute>,
        neighbours: impl IntoIterator<Item = Neighbour>,
        fdb: impl IntoIterator<Item = FdbEntry>,
    ) -> Self {
        Self {
            links: links.into_iter().map(|l| (l.ifindex, l)).collect(),
            routes: sorted(routes),
            neighbours: sorted(neighbours),
            fdb: sorted(fdb),
        }
    }

    /// Dump links, IPv4 and IPv6 routes (all tables), neighbours and bridge FDBs.
    pub async fn dump(handle: &Handle) -> Result<Self> {
        let links = collect("links", handle.link().get().execute(), facts::link_of).await?;
        let routes4 = handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut routes = collect("IPv4 routes", routes4, facts::host_route_of).await?;
        let routes6 = handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute();
        routes.extend(collect("IPv6 routes", routes6, facts::host_route_of).await?);
        // AF_UNSPEC dumps the IPv4 and IPv6 neighbour tables; the FDB is AF_BRIDGE's own.
        let neighbours = handle.neighbours().get().execute();
        let neighbours = collect("neighbours", neighbours, facts::neighbour_of).await?;
        let fdb = handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let fdb = collect("bridge FDB", fdb, facts::fdb_of).await?;
        debug!(
            links = links.len(),
            host_routes = routes.len(),
            neighbours = neighbours.len(),
            fdb = fdb.len(),
            "dumped the node's tables"
        );
        Ok(Self::new(links, routes, neighbours, fdb))
    }

    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.get(&ifindex)
    }

    /// The host interface of the pod with address `ip`: routed first, then bridged.
    pub fn resolve(&self, ip: IpAddr) -> Option<HostInterface> {
        let ip = facts::canonical(ip);
        self.routed(ip).or_else(|| self.bridged(ip))
    }

    fn routed(&self, ip: IpAddr) -> Option<HostInterface> {
        self.routes
            .iter()
            .filter(|r| r.destination == ip)
            .find_map(|r| {
                let link = self.link(r.ifindex)?;
                match link.kind {
                    // Some setups route pod /32s to the bridge itself: the bridge is not the
                    // pod's interface, its port is.
                    LinkKind::Bridge => self.bridged_on(ip, link.ifindex),
                    _ => Some(interface(link, Via::Route)),
                }
            })
    }

    fn bridged(&self, ip: IpAddr) -> Option<HostInterface> {
        self.neighbours
            .iter()
            .filter(|n| n.ip == ip)
            .find_map(|n| self.bridged_on(ip, n.ifindex))
    }

    /// `ip` as a neighbour on `bridge`, followed through the bridge's FDB to a port.
    fn bridged_on(&self, ip: IpAddr, bridge: u32) -> Option<HostInterface> {
        if self.link(bridge)?.kind != LinkKind::Bridge {
            // A neighbour on a plain interface is a machine on that network, not a pod.
            return None;
        }
        let mac = self
            .neighbours
            .iter()
            .find(|n| n.ip == ip && n.ifindex == bridge)?
            .mac?;
        let port = self.fdb.iter().find_map(|entry| {
            let port = self.link(entry.port)?;
            let on_bridge = entry.bridge.or(port.master) == Some(bridge);
            (entry.mac == mac && on_bridge && port.ifindex != bridge).then_some(port)
        })?;
        trace!(%ip, %mac, bridge, port = port.ifindex, "pod found behind a bridge");
        Some(interface(port, Via::Bridge { bridge }))
    }
}

/// Sorted and without duplicates: the same entry can come from several tables or dumps.
fn sorted<T: Ord>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.into_iter().collect();
    v.sort();
    v.dedup();
    v
}

fn interface(link: &Link, via: Via) -> HostInterface {
    HostInterface {
        ifindex: link.ifindex,
        name: link.name.clone(),
        via,
    }
}

/// Drain one dump, keeping what `parse` recognises.
async fn collect<M, T>(
    table: &'static str,
    dump: impl Stream<Item = Result<M, rtnetlink::Error>>,
    parse: fn(&M) -> Option<T>,
) -> Result<Vec<T>> {
    dump.try_filter_map(|message| futures::future::ready(Ok(parse(&message))))
        .try_collect()
        .await
        .map_err(|source| Error::Dump { table, source })
}

/// Open a route netlink socket and drive it on the current tokio runtime.
///
/// The socket belongs to the network namespace of the calling thread at this moment, for
/// its whole life: call it on a thread inside the node's namespace. The connection task
/// ends when the last clone of the handle is dropped.
pub fn connect() -> Result<Handle> {
    let (connection, handle, _unsolicited) = rtnetlink::new_connection().map_err(Error::Connect)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The host interface of the pod with address `ip`, if the node has one.
pub async fn find_host_interface(handle: &Handle, ip: IpAddr) -> Result<Option<HostInterface>> {
    Ok(NodeSnapshot::dump(handle).await?.resolve(ip))
}

/// The host interfaces of all of `pod_ips` that the node has, from one snapshot. Addresses
/// without an interface (pods not started yet, or not on this node) are left out.
pub async fn discover(
    handle: &Handle,
    pod_ips: impl IntoIterator<Item = IpAddr>,
) -> Result<BTreeMap<IpAddr, HostInterface>> {
    let snapshot = NodeSnapshot::dump(handle).await?;
    let pod_ips: Vec<IpAddr> = pod_ips.into_iter().collect();
    let found: BTreeMap<_, _> = pod_ips
        .iter()
        .filter_map(|&ip| Some((ip, snapshot.resolve(ip)?)))
        .collect();
    debug!(
        wanted = pod_ips.len(),
        found = found.len(),
        "discovered pod interfaces"
    );
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::facts::Mac;

    const BRIDGE: u32 = 3;
    const MAC_A: Mac = Mac([0x0a, 0x58, 0, 0, 0, 0xa]);
    const MAC_B: Mac = Mac([0x0a, 0x58, 0, 0, 0, 0xb]);

    fn link(ifindex: u32, name: &str, kind: LinkKind, master: Option<u32>) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind,
            master,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// eth0 (2), a bridge cni0 (3) with ports vethA (10) and vethB (11), and a routed pod's
    /// caliR (20).
    fn links() -> Vec<Link> {
        vec![
            link(1, "lo", LinkKind::Other, None),
            link(2, "eth0", LinkKind::Other, None),
            link(BRIDGE, "cni0", LinkKind::Bridge, None),
            link(10, "vethA", LinkKind::Veth, Some(BRIDGE)),
            link(11, "vethB", LinkKind::Veth, Some(BRIDGE)),
            link(20, "caliR", LinkKind::Veth, None),
        ]
    }

    fn route(destination: &str, ifindex: u32) -> HostRoute {
        HostRoute {
            destination: ip(destination),
            ifindex,
        }
    }

    fn neighbour(ip_: &str, ifindex: u32, mac: Option<Mac>) -> Neighbour {
        Neighbour {
            ip: ip(ip_),
            ifindex,
            mac,
        }
    }

    fn fdb(mac: Mac, port: u32, bridge: Option<u32>) -> FdbEntry {
        FdbEntry { mac, port, bridge }
    }

    fn found(name: &str, ifindex: u32, via: Via) -> Option<HostInterface> {
        Some(HostInterface {
            ifindex,
            name: name.into(),
            via,
        })
    }

    fn node() -> NodeSnapshot {
        NodeSnapshot::new(
            links(),
            [route("10.1.0.7", 20), route("fd00:1::7", 20)],
            [
                neighbour("10.244.0.10", BRIDGE, Some(MAC_A)),
                neighbour("fd00:244::10", BRIDGE, Some(MAC_A)),
                neighbour("10.244.0.11", BRIDGE, Some(MAC_B)),
                // The gateway, a machine on the uplink.
                neighbour("192.168.1.1", 2, Some(Mac([2, 0, 0, 0, 0, 1]))),
            ],
            [
                fdb(MAC_A, 10, Some(BRIDGE)),
                // Learned without NDA_MASTER: the port's master says which bridge.
                fdb(MAC_B, 11, None),
            ],
        )
    }

    #[test]
    fn routed_pods_resolve_through_their_host_route() {
        let node = node();
        assert_eq!(node.resolve(ip("10.1.0.7")), found("caliR", 20, Via::Route));
        assert_eq!(
            node.resolve(ip("fd00:1::7")),
            found("caliR", 20, Via::Route)
        );
        assert_eq!(
            node.resolve(ip("::ffff:10.1.0.7")),
            found("caliR", 20, Via::Route),
            "a v4-mapped address finds the v4 route"
        );
    }

    #[test]
    fn bridged_pods_resolve_through_neighbour_and_fdb() {
        let node = node();
        let via = Via::Bridge { bridge: BRIDGE };
        assert_eq!(node.resolve(ip("10.244.0.10")), found("vethA", 10, via));
        assert_eq!(node.resolve(ip("fd00:244::10")), found("vethA", 10, via));
        assert_eq!(node.resolve(ip("10.244.0.11")), found("vethB", 11, via));
    }

    #[test]
    fn unknown_addresses_and_plain_neighbours_resolve_to_nothing() {
        let node = node();
        assert_eq!(node.resolve(ip("10.244.0.99")), None);
        assert_eq!(node.resolve(ip("192.168.1.1")), None, "not behind a bridge");
    }

    #[test]
    fn a_neighbour_without_mac_or_fdb_entry_is_not_found_yet() {
        let node = NodeSnapshot::new(
            links(),
            [],
            [
                neighbour("10.244.0.10", BRIDGE, None),
                neighbour("10.244.0.11", BRIDGE, Some(MAC_B)),
            ],
            [],
        );
        assert_eq!(node.resolve(ip("10.244.0.10")), None, "unresolved");
        assert_eq!(node.resolve(ip("10.244.0.11")), None, "MAC not learned yet");
    }

    #[test]
    fn fdb_entries_of_another_bridge_or_the_bridge_itself_do_not_count() {
        let mut all = links();
        all.push(link(4, "br-other", LinkKind::Bridge, None));
        all.push(link(12, "vethO", LinkKind::Veth, Some(4)));
        let node = NodeSnapshot::new(
            all,
            [],
            [neighbour("10.244.0.10", BRIDGE, Some(MAC_A))],
            [fdb(MAC_A, 12, Some(4)), fdb(MAC_A, BRIDGE, Some(BRIDGE))],
        );
        assert_eq!(node.resolve(ip("10.244.0.10")), None);
    }

    #[test]
    fn a_host_route_to_a_bridge_is_followed_to_the_port() {
        let node = NodeSnapshot::new(
            links(),
            [route("10.244.0.10", BRIDGE)],
            [neighbour("10.244.0.10", BRIDGE, Some(MAC_A))],
            [fdb(MAC_A, 10, Some(BRIDGE))],
        );
        assert_eq!(
            node.resolve(ip("10.244.0.10")),
            found("vethA", 10, Via::Bridge { bridge: BRIDGE })
        );
    }

    #[test]
    fn routes_win_over_neighbours_and_dangling_routes_are_skipped() {
        let node = NodeSnapshot::new(
            links(),
            // A route to an interface that is gone (99) is skipped for the live one.
            [route("10.244.0.10", 99), route("10.244.0.10", 20)],
            [neighbour("10.244.0.10", BRIDGE, Some(MAC_A))],
            [fdb(MAC_A, 10, Some(BRIDGE))],
        );
        assert_eq!(
            node.resolve(ip("10.244.0.10")),
            found("caliR", 20, Via::Route)
        );
    }
}
