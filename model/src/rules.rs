//! The compiled rule form the kernel enforces, and its reference evaluator.
//!
//! Every rule allows: a connection is allowed when its direction is not isolated for the
//! endpoint, when its peer is the pod's own node, or when at least one rule matches it. The
//! kernel's maps are compiled from these rules; [`EndpointRules::evaluate`] works from the
//! rules themselves, so the two can be held against each other.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Direction, Mode, Protocol, Verdict, identity::Identity};

/// Who a rule lets the endpoint talk to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// Every peer.
    Any,
    /// Peers with this identity (a label set, or a reserved identity).
    Identity(Identity),
    /// Addresses in `net` but in none of `except` (Kubernetes `ipBlock`). Applies to pods'
    /// addresses too, as Kubernetes requires.
    Cidr {
        net: IpNet,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        except: Vec<IpNet>,
    },
}

impl Peer {
    fn matches(&self, identity: Identity, addr: IpAddr) -> bool {
        match self {
            Self::Any => true,
            Self::Identity(id) => *id == identity,
            Self::Cidr { net, except } => in_block(net, except, addr),
        }
    }
}

/// Is `addr` in `net` and in none of `except` (an `ipBlock`)? IPv4-mapped IPv6 addresses
/// count as the IPv4 address they carry.
pub fn in_block(net: &IpNet, except: &[IpNet], addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    net.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
}

/// An inclusive port range (`port` .. `endPort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// The range as prefix-aligned blocks `(start, prefix bits)`: port `p` is in the range
    /// iff `p >> (16 - bits) == start >> (16 - bits)` for one block. At most 30 blocks.
    pub fn prefix_blocks(&self) -> Vec<(u16, u8)> {
        let mut blocks = Vec::new();
        let (mut start, last) = (u32::from(self.first), u32::from(self.last));
        while start <= last {
            // The largest aligned block starting at `start` that does not pass `last`.
            let mut size = if start == 0 {
                1 << 16
            } else {
                1 << start.trailing_zeros()
            };
            while start + size - 1 > last {
                size >>= 1;
            }
            blocks.push((start as u16, 16 - size.trailing_zeros() as u8));
            start += size;
        }
        blocks
    }
}

/// One allow rule of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// Reported with every verdict the rule gives (> 0).
    pub id: u32,
    pub direction: Direction,
    pub peer: Peer,
    /// `None`: every protocol (and then no ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// `None`: every port. Only for protocols with ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
}

/// Why a rule cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule {0}: rule ids start at 1")]
    ZeroId(u32),
    #[error("rule {id}: ports need a protocol with ports (TCP, UDP or SCTP)")]
    PortsWithoutPortProtocol { id: u32 },
    #[error("rule {id}: port range {first}-{last} is empty")]
    EmptyRange { id: u32, first: u16, last: u16 },
    #[error("rule {id}: {except} is not inside {net}")]
    ExceptOutside { id: u32, net: IpNet, except: IpNet },
    #[error("rule {id}: the wildcard identity is written `any`")]
    AnyAsIdentity { id: u32 },
}

impl Rule {
    pub fn validate(&self) -> Result<(), RuleError> {
        let id = self.id;
        if id == 0 {
            return Err(RuleError::ZeroId(id));
        }
        if let Some(range) = self.ports {
            if !self.protocol.is_some_and(Protocol::has_ports) {
                return Err(RuleError::PortsWithoutPortProtocol { id });
            }
            if range.first > range.last || range.first == 0 {
                return Err(RuleError::EmptyRange {
                    id,
                    first: range.first,
                    last: range.last,
                });
            }
        }
        match &self.peer {
            Peer::Identity(Identity::ANY) => return Err(RuleError::AnyAsIdentity { id }),
            Peer::Cidr { net, except } => {
                for e in except {
                    if !net.contains(e) {
                        return Err(RuleError::ExceptOutside {
                            id,
                            net: *net,
                            except: *e,
                        });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn matches(&self, c: &Connection) -> bool {
        self.direction == c.direction
            && self.protocol.is_none_or(|p| p == c.protocol)
            && self.ports.is_none_or(|r| r.contains(c.server_port))
            && self.peer.matches(c.peer_identity, c.peer_addr)
    }
}

/// What happens to a direction no rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Not isolated: everything passes (Kubernetes, for a pod no policy selects).
    Open,
    /// Isolated: only what a rule allows passes.
    Isolated,
}

/// Everything one endpoint enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRules {
    pub ingress: Isolation,
    pub egress: Isolation,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// One new connection, as the endpoint sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub direction: Direction,
    pub peer_addr: IpAddr,
    /// The peer's identity: a pod's or node's, else [`Identity::WORLD`].
    pub peer_identity: Identity,
    pub protocol: Protocol,
    /// The server port (0 for protocols without ports).
    pub server_port: u16,
}

/// Why a connection is allowed or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evaluation {
    /// The direction is not isolated.
    Open,
    /// The peer is the pod's own node.
    Host,
    /// These rules (ids, ascending) allow it.
    Rules(Vec<u32>),
    /// Isolated and no rule allows it.
    Denied,
    /// The pod reaching itself (through a Service of its own): never blocked.
    Itself,
}

impl Evaluation {
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::Denied)
    }
}

impl EndpointRules {
    /// Both directions isolated: only `rules` let connections through.
    pub fn isolated(rules: Vec<Rule>) -> Self {
        Self {
            ingress: Isolation::Isolated,
            egress: Isolation::Isolated,
            rules,
        }
    }

    /// Nothing isolated: everything passes (Kubernetes, for a pod no policy selects).
    pub fn open() -> Self {
        Self {
            ingress: Isolation::Open,
            egress: Isolation::Open,
            rules: Vec::new(),
        }
    }

    pub fn isolation(&self, direction: Direction) -> Isolation {
        match direction {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }

    pub fn validate(&self) -> Result<(), RuleError> {
        self.rules.iter().try_for_each(Rule::validate)
    }

    /// The reference verdict for `c`, from the rules themselves.
    pub fn evaluate(&self, c: &Connection) -> Evaluation {
        if c.peer_identity == Identity::HOST {
            return Evaluation::Host;
        }
        if self.isolation(c.direction) == Isolation::Open {
            return Evaluation::Open;
        }
        let mut ids: Vec<u32> = self
            .rules
            .iter()
            .filter(|r| r.matches(c))
            .map(|r| r.id)
            .collect();
        if ids.is_empty() {
            return Evaluation::Denied;
        }
        ids.sort_unstable();
        ids.dedup();
        Evaluation::Rules(ids)
    }
}

/// A Service as the datapath meets it: pods address its ClusterIPs, and kube-proxy's DNAT
/// (after Palisade's programs) sends the connection to one of its backends.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Service {
    /// Stands for the ClusterIPs in compiled rules (see [`Identity::FIRST_SERVICE`]).
    pub identity: Identity,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// The ready endpoints: address and identity of each backend pod.
    pub backends: Vec<(IpAddr, Identity)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    pub protocol: Protocol,
    pub port: u16,
    /// The backend port (a named target port is resolved per backend before this point).
    pub target_port: u16,
}

impl Service {
    /// How egress from an endpoint with `rules` to `port` of this Service is judged: as
    /// Kubernetes judges the connection after DNAT, to a backend on the target port. The
    /// backend is chosen after the datapath runs, so the connection is allowed only when
    /// every backend would be (backends of one Service nearly always share an identity; a
    /// Service whose backends are judged differently is refused rather than let through to
    /// a backend the rules deny). No backends: nothing to allow. A backend at one of `own`
    /// (the endpoint's own addresses) is the pod reaching itself, which Kubernetes never
    /// blocks.
    pub fn evaluate(
        &self,
        rules: &EndpointRules,
        port: &ServicePort,
        own: &[IpAddr],
    ) -> Evaluation {
        if rules.egress == Isolation::Open {
            return Evaluation::Open;
        }
        let is_own = |addr: &IpAddr| own.iter().any(|o| o.to_canonical() == addr.to_canonical());
        let others: Vec<&(IpAddr, Identity)> =
            self.backends.iter().filter(|(a, _)| !is_own(a)).collect();
        if others.is_empty() && others.len() < self.backends.len() {
            return Evaluation::Itself;
        }
        let mut all = Vec::new();
        for (addr, identity) in others {
            let c = Connection {
                direction: Direction::Egress,
                peer_addr: *addr,
                peer_identity: *identity,
                protocol: port.protocol,
                server_port: port.target_port,
            };
            match rules.evaluate(&c) {
                Evaluation::Rules(ids) => all.extend(ids),
                Evaluation::Denied => return Evaluation::Denied,
                other => return other,
            }
        }
        if all.is_empty() {
            return Evaluation::Denied;
        }
        all.sort_unstable();
        all.dedup();
        Evaluation::Rules(all)
    }
}

/// What the datapath does with a connection under `mode`.
pub fn verdict(mode: Mode, evaluation: &Evaluation) -> Verdict {
    match (mode, evaluation.allowed()) {
        (Mode::Learn, _) | (_, true) => Verdict::Allow,
        (Mode::Monitor, false) => Verdict::WouldDeny,
        (Mode::Enforce, false) => Verdict::Deny,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const WEB: Identity = Identity(300);
    const DB: Identity = Identity(301);

    fn conn(
        direction: Direction,
        identity: Identity,
        addr: &str,
        proto: Protocol,
        port: u16,
    ) -> Connection {
        Connection {
            direction,
            peer_addr: addr.parse().unwrap(),
            peer_identity: identity,
            protocol: proto,
            server_port: port,
        }
    }

    fn rule(
        id: u32,
        direction: Direction,
        peer: Peer,
        proto: Option<Protocol>,
        ports: Option<(u16, u16)>,
    ) -> Rule {
        Rule {
            id,
            direction,
            peer,
            protocol: proto,
            ports: ports.map(|(first, last)| PortRange { first, last }),
        }
    }

    #[test]
    fn an_identity_rule_allows_its_port_only() {
        let rules = EndpointRules::isolated(vec![rule(
            1,
            Direction::Ingress,
            Peer::Identity(WEB),
            Some(Protocol::Tcp),
            Some((5432, 5432)),
        )]);
        let ok = conn(Direction::Ingress, WEB, "10.244.0.2", Protocol::Tcp, 5432);
        assert_eq!(rules.evaluate(&ok), Evaluation::Rules(vec![1]));
        for denied in [
            conn(Direction::Ingress, DB, "10.244.0.3", Protocol::Tcp, 5432),
            conn(Direction::Ingress, WEB, "10.244.0.2", Protocol::Tcp, 5433),
            conn(Direction::Ingress, WEB, "10.244.0.2", Protocol::Udp, 5432),
            conn(Direction::Egress, WEB, "10.244.0.2", Protocol::Tcp, 5432),
        ] {
            assert_eq!(rules.evaluate(&denied), Evaluation::Denied, "{denied:?}");
        }
    }

    #[test]
    fn cidr_rules_cover_pods_too_and_honour_except() {
        let net: IpNet = "10.244.0.0/16".parse().unwrap();
        let rules = EndpointRules::isolated(vec![rule(
            2,
            Direction::Egress,
            Peer::Cidr {
                net,
                except: vec!["10.244.9.0/24".parse().unwrap()],
            },
            None,
            None,
        )]);
        assert!(
            rules
                .evaluate(&conn(
                    Direction::Egress,
                    DB,
                    "10.244.0.3",
                    Protocol::Udp,
                    53
                ))
                .allowed()
        );
        assert!(
            !rules
                .evaluate(&conn(
                    Direction::Egress,
                    DB,
                    "10.244.9.3",
                    Protocol::Udp,
                    53
                ))
                .allowed()
        );
        assert!(
            !rules
                .evaluate(&conn(
                    Direction::Egress,
                    Identity::WORLD,
                    "203.0.113.1",
                    Protocol::Tcp,
                    1
                ))
                .allowed()
        );
        // IPv4-mapped IPv6 is the same address.
        assert!(
            rules
                .evaluate(&conn(
                    Direction::Egress,
                    DB,
                    "::ffff:10.244.0.3",
                    Protocol::Tcp,
                    1
                ))
                .allowed()
        );
    }

    #[test]
    fn open_directions_and_the_host_always_pass() {
        let rules = EndpointRules {
            ingress: Isolation::Open,
            egress: Isolation::Isolated,
            rules: vec![],
        };
        assert_eq!(
            rules.evaluate(&conn(Direction::Ingress, DB, "10.0.0.1", Protocol::Tcp, 1)),
            Evaluation::Open
        );
        assert_eq!(
            rules.evaluate(&conn(
                Direction::Egress,
                Identity::HOST,
                "10.0.0.1",
                Protocol::Tcp,
                1
            )),
            Evaluation::Host
        );
        assert_eq!(
            rules.evaluate(&conn(Direction::Egress, DB, "10.0.0.1", Protocol::Tcp, 1)),
            Evaluation::Denied
        );
    }

    #[test]
    fn every_matching_rule_is_reported() {
        let rules = EndpointRules::isolated(vec![
            rule(
                9,
                Direction::Egress,
                Peer::Any,
                Some(Protocol::Udp),
                Some((53, 53)),
            ),
            rule(4, Direction::Egress, Peer::Identity(DB), None, None),
        ]);
        let c = conn(Direction::Egress, DB, "10.244.0.3", Protocol::Udp, 53);
        assert_eq!(rules.evaluate(&c), Evaluation::Rules(vec![4, 9]));
    }

    #[test]
    fn modes_turn_evaluations_into_verdicts() {
        assert_eq!(verdict(Mode::Learn, &Evaluation::Denied), Verdict::Allow);
        assert_eq!(
            verdict(Mode::Monitor, &Evaluation::Denied),
            Verdict::WouldDeny
        );
        assert_eq!(verdict(Mode::Enforce, &Evaluation::Denied), Verdict::Deny);
        assert_eq!(verdict(Mode::Enforce, &Evaluation::Open), Verdict::Allow);
    }

    #[test]
    fn invalid_rules_are_refused() {
        let bad = [
            (
                rule(0, Direction::Egress, Peer::Any, None, None),
                "start at 1",
            ),
            (
                rule(
                    1,
                    Direction::Egress,
                    Peer::Any,
                    Some(Protocol::Icmp),
                    Some((1, 2)),
                ),
                "protocol with ports",
            ),
            (
                rule(1, Direction::Egress, Peer::Any, None, Some((1, 2))),
                "protocol with ports",
            ),
            (
                rule(
                    1,
                    Direction::Egress,
                    Peer::Any,
                    Some(Protocol::Tcp),
                    Some((9, 2)),
                ),
                "empty",
            ),
            (
                rule(
                    1,
                    Direction::Egress,
                    Peer::Identity(Identity::ANY),
                    None,
                    None,
                ),
                "any",
            ),
            (
                rule(
                    1,
                    Direction::Egress,
                    Peer::Cidr {
                        net: "10.0.0.0/8".parse().unwrap(),
                        except: vec!["11.0.0.0/8".parse().unwrap()],
                    },
                    None,
                    None,
                ),
                "not inside",
            ),
        ];
        for (r, why) in bad {
            let err = r.validate().unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    fn service(backends: Vec<(&str, Identity)>) -> Service {
        Service {
            identity: Identity(Identity::FIRST_SERVICE),
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
            }],
            backends: backends
                .into_iter()
                .map(|(a, id)| (a.parse().unwrap(), id))
                .collect(),
        }
    }

    #[test]
    fn services_are_judged_by_their_backends_on_the_target_port() {
        let allow_db_8080 = EndpointRules::isolated(vec![rule(
            5,
            Direction::Egress,
            Peer::Identity(DB),
            Some(Protocol::Tcp),
            Some((8080, 8080)),
        )]);
        let svc = service(vec![("10.244.0.3", DB), ("10.244.0.4", DB)]);
        let port = svc.ports[0];
        assert_eq!(
            svc.evaluate(&allow_db_8080, &port, &[]),
            Evaluation::Rules(vec![5])
        );
        // A rule for the Service port, not the target port, allows nothing.
        let allow_db_80 = EndpointRules::isolated(vec![rule(
            6,
            Direction::Egress,
            Peer::Identity(DB),
            Some(Protocol::Tcp),
            Some((80, 80)),
        )]);
        assert_eq!(svc.evaluate(&allow_db_80, &port, &[]), Evaluation::Denied);
        // One backend the rules deny: refused.
        let mixed = service(vec![("10.244.0.3", DB), ("10.244.0.5", WEB)]);
        assert_eq!(
            mixed.evaluate(&allow_db_8080, &port, &[]),
            Evaluation::Denied
        );
        assert_eq!(
            service(vec![]).evaluate(&allow_db_8080, &port, &[]),
            Evaluation::Denied
        );
        // The endpoint itself among the backends: never blocked; the others still count.
        let me: IpAddr = "10.244.0.5".parse().unwrap();
        assert_eq!(
            mixed.evaluate(&allow_db_8080, &port, &[me]),
            Evaluation::Rules(vec![5])
        );
        let only_me = service(vec![("10.244.0.5", WEB)]);
        assert_eq!(
            only_me.evaluate(&allow_db_80, &port, &[me]),
            Evaluation::Itself
        );
    }

    #[test]
    fn known_port_blocks() {
        assert_eq!(PortRange::single(80).prefix_blocks(), [(80, 16)]);
        assert_eq!(
            PortRange {
                first: 0,
                last: 65535
            }
            .prefix_blocks(),
            [(0, 0)]
        );
        assert_eq!(
            PortRange {
                first: 8000,
                last: 8015
            }
            .prefix_blocks(),
            [(8000, 12)]
        );
        assert_eq!(
            PortRange {
                first: 32000,
                last: 32003
            }
            .prefix_blocks(),
            [(32000, 14)]
        );
    }

    proptest! {
        #[test]
        fn port_blocks_cover_exactly_the_range(a in any::<u16>(), b in any::<u16>(), probe in any::<u16>()) {
            let range = PortRange { first: a.min(b), last: a.max(b) };
            let blocks = range.prefix_blocks();
            prop_assert!(blocks.len() <= 30, "{} blocks", blocks.len());
            let in_blocks = blocks.iter().filter(|(start, bits)| {
                let shift = 16 - u32::from(*bits);
                u32::from(probe).checked_shr(shift).unwrap_or(0)
                    == u32::from(*start).checked_shr(shift).unwrap_or(0)
            }).count();
            prop_assert_eq!(in_blocks, usize::from(range.contains(probe)), "blocks overlap or miss");
        }
    }
}
