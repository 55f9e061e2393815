//! Live changes to the node's links, host routes, neighbours and bridge FDBs, as a stream.
//!
//! The agent attaches when a pod's interface appears and detaches when it goes: it joins
//! the rtnetlink multicast groups (what `ip monitor` does) and turns each notification into
//! a typed [`Event`]. Subscribe before taking the first [`super::NodeSnapshot`], so that no
//! change falls between the two. When the kernel drops notifications because the socket's
//! buffer was full, the stream says so with [`Event::Resync`]: the agent then takes a fresh
//! snapshot instead of trusting its picture.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt as _, channel::mpsc::UnboundedReceiver};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    sys::SocketAddr,
};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{
    error::{Error, Result},
    facts::{self, FdbEntry, HostRoute, Link, Neighbour},
};

/// The groups a [`Watch`] joins. Bridge FDB notifications come with the neighbour group.
pub const GROUPS: [MulticastGroup; 4] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Neigh,
];

/// One change on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A link appeared, or changed (state, master, name): `RTM_NEWLINK` means both.
    LinkAdded(Link),
    LinkRemoved(Link),
    HostRouteAdded(HostRoute),
    HostRouteRemoved(HostRoute),
    /// A neighbour was added or changed state (it may have just learned its MAC).
    NeighbourAdded(Neighbour),
    NeighbourRemoved(Neighbour),
    FdbAdded(FdbEntry),
    FdbRemoved(FdbEntry),
    /// Notifications were lost: rebuild the picture from a fresh snapshot.
    Resync,
}

/// The event in one netlink notification, if it is one discovery cares about.
pub fn event_of(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<Event> {
    let inner = match &message.payload {
        NetlinkPayload::InnerMessage(inner) => inner,
        NetlinkPayload::Overrun(_) => return Some(Event::Resync),
        _ => return None,
    };
    match inner {
        RouteNetlinkMessage::NewLink(m) => facts::link_of(m).map(Event::LinkAdded),
        RouteNetlinkMessage::DelLink(m) => facts::link_of(m).map(Event::LinkRemoved),
        RouteNetlinkMessage::NewRoute(m) => facts::host_route_of(m).map(Event::HostRouteAdded),
        RouteNetlinkMessage::DelRoute(m) => facts::host_route_of(m).map(Event::HostRouteRemoved),
        RouteNetlinkMessage::NewNeighbour(m) => facts::neighbour_of(m)
            .map(Event::NeighbourAdded)
            .or_else(|| facts::fdb_of(m).map(Event::FdbAdded)),
        RouteNetlinkMessage::DelNeighbour(m) => facts::neighbour_of(m)
            .map(Event::NeighbourRemoved)
            .or_else(|| facts::fdb_of(m).map(Event::FdbRemoved)),
        _ => None,
    }
}

type Notifications = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A subscription to the node's changes; a [`Stream`] of [`Event`]s that ends only if the
/// netlink socket fails. Dropping it closes the socket.
pub struct Watch {
    notifications: Notifications,
    connection: JoinHandle<()>,
}

impl Watch {
    /// Join [`GROUPS`] on a new socket, driven on the current tokio runtime. Like
    /// [`super::connect`], it watches the namespace of the calling thread.
    pub fn subscribe() -> Result<Self> {
        let (connection, _handle, notifications) = rtnetlink::new_multicast_connection(&GROUPS)
            .map_err(|source| Error::Subscribe {
                groups: GROUPS.to_vec(),
                source,
            })?;
        let connection = tokio::spawn(async move {
            connection.await;
            // Only a socket error ends a connection whose notifications are still read.
            warn!("netlink watch connection ended");
        });
        debug!(groups = ?GROUPS, "watching links, routes and neighbours");
        Ok(Self {
            notifications,
            connection,
        })
    }
}

impl Stream for Watch {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match self.notifications.poll_next_unpin(cx) {
                Poll::Ready(Some((message, _))) => {
                    if let Some(event) = event_of(&message) {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The connection holds the socket; without this it would keep reading into a
        // channel nobody drains until the next notification noticed the closed receiver.
        self.connection.abort();
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        AddressFamily,
        link::{LinkAttribute, LinkMessage},
        neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    };
    use rtnetlink::packet_core::NetlinkHeader;

    use super::*;
    use crate::endpoints::{LinkKind, Mac};

    fn notification(inner: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::from(inner)
    }

    fn veth_message() -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = 12;
        m.attributes = vec![LinkAttribute::IfName("pl-abc-h1".into())];
        m
    }

    #[test]
    fn link_notifications_become_link_events() {
        let link = Link {
            ifindex: 12,
            name: "pl-abc-h1".into(),
            kind: LinkKind::Other,
            master: None,
        };
        let added = notification(RouteNetlinkMessage::NewLink(veth_message()));
        assert_eq!(event_of(&added), Some(Event::LinkAdded(link.clone())));
        let removed = notification(RouteNetlinkMessage::DelLink(veth_message()));
        assert_eq!(event_of(&removed), Some(Event::LinkRemoved(link)));
    }

    #[test]
    fn only_host_routes_become_route_events() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 32;
        m.header.kind = RouteType::Unicast;
        m.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet("10.244.0.5".parse().unwrap())),
            RouteAttribute::Oif(12),
        ];
        let route = HostRoute {
            destination: "10.244.0.5".parse().unwrap(),
            ifindex: 12,
        };
        assert_eq!(
            event_of(&notification(RouteNetlinkMessage::NewRoute(m.clone()))),
            Some(Event::HostRouteAdded(route))
        );
        assert_eq!(
            event_of(&notification(RouteNetlinkMessage::DelRoute(m.clone()))),
            Some(Event::HostRouteRemoved(route))
        );
        m.header.destination_prefix_length = 24;
        assert_eq!(
            event_of(&notification(RouteNetlinkMessage::NewRoute(m))),
            None
        );
    }

    #[test]
    fn neighbour_notifications_split_into_arp_and_fdb() {
        let mac = [0x0a, 0x58, 0, 0, 0, 5];
        let mut arp = NeighbourMessage::default();
        arp.header.family = AddressFamily::Inet;
        arp.header.ifindex = 3;
        arp.header.state = NeighbourState::Reachable;
        arp.attributes = vec![
            NeighbourAttribute::Destination(
                netlink_packet_route::neighbour::NeighbourAddress::Inet(
                    "10.244.0.5".parse().unwrap(),
                ),
            ),
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        ];
        assert_eq!(
            event_of(&notification(RouteNetlinkMessage::NewNeighbour(
                arp.clone()
            ))),
            Some(Event::NeighbourAdded(Neighbour {
                ip: "10.244.0.5".parse().unwrap(),
                ifindex: 3,
                mac: Some(Mac(mac)),
            }))
        );
        assert!(matches!(
            event_of(&notification(RouteNetlinkMessage::DelNeighbour(arp))),
            Some(Event::NeighbourRemoved(_))
        ));

        let mut fdb = NeighbourMessage::default();
        fdb.header.family = AddressFamily::Bridge;
        fdb.header.ifindex = 12;
        fdb.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            NeighbourAttribute::Controller(3),
        ];
        let entry = FdbEntry {
            mac: Mac(mac),
            port: 12,
            bridge: Some(3),
        };
        assert_eq!(
            event_of(&notification(RouteNetlinkMessage::NewNeighbour(
                fdb.clone()
            ))),
            Some(Event::FdbAdded(entry))
        );
        assert_eq!(
            event_of(&notification(RouteNetlinkMessage::DelNeighbour(fdb))),
            Some(Event::FdbRemoved(entry))
        );
    }

    #[test]
    fn an_overrun_asks_for_a_resync_and_other_messages_are_ignored() {
        let overrun = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::<RouteNetlinkMessage>::Overrun(Vec::new()),
        );
        assert_eq!(event_of(&overrun), Some(Event::Resync));
        let done = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::<RouteNetlinkMessage>::Done(Default::default()),
        );
        assert_eq!(event_of(&done), None);
    }

    #[tokio::test]
    async fn dropping_a_watch_stops_its_connection() {
        let watch = Watch::subscribe().expect("netlink sockets need no privilege");
        let connection = watch.connection.abort_handle();
        drop(watch);
        // abort() takes effect at the task's next poll; yield until it has.
        for _ in 0..100 {
            if connection.is_finished() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the connection task outlived its Watch");
    }
}
