//! Errors of endpoint discovery: opening netlink sockets and reading the kernel's tables.

use rtnetlink::MulticastGroup;

/// What went wrong talking rtnetlink to the node's kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The route netlink socket could not be opened (no such namespace, fd limit).
    #[error("opening a route netlink socket")]
    Connect(#[source] std::io::Error),
    /// Joining the multicast groups a [`super::Watch`] listens to failed.
    #[error("subscribing to netlink groups {groups:?}")]
    Subscribe {
        groups: Vec<MulticastGroup>,
        #[source]
        source: std::io::Error,
    },
    /// A table dump (links, routes, neighbours, FDB) failed part way.
    #[error("dumping {table} over netlink")]
    Dump {
        table: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
