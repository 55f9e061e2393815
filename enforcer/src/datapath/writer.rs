//! Writing what the node enforces into the maps, in an order that never opens a gap:
//!
//! 1. each endpoint's `POLICY` entries are written under its unused generation, then the
//!    endpoint's `ENDPOINTS` entry flips to that generation (one update: the swap), then
//!    the old generation's entries are deleted;
//! 2. only then `CIDRS` and `IPCACHE` gain the prefixes and addresses those entries refer
//!    to (an identity never reaches the kernel before the rules that mention it);
//! 3. stale `CIDRS` and `IPCACHE` entries go last.
//!
//! Written over [`Table`], so the whole sequence is unit-tested in memory.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use enforcer_common::{
    endpoint::EndpointInfo,
    policy::{CidrKey, IpcacheValue, PolicyKey, PolicyValue, ipcache_flags},
};
use model::{
    identity::Identity,
    rules::{EndpointRules, Isolation, Service},
};

use super::{
    Pins,
    compile::{self, CidrIdentities},
    rules::{self, kernel_addr},
    tables::{Cidrs, Endpoints, Ipcache, Policy, Table},
};
use crate::error::{Error, Result};

/// What the node should enforce: the rules of each endpoint (by ifindex), the identity of
/// each pod and node address, and the CIDRs the rules name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub endpoints: BTreeMap<u32, EndpointRules>,
    pub ipcache: BTreeMap<IpAddr, Identity>,
    pub cidrs: CidrIdentities,
    /// Services whose ClusterIPs pods may address; judged by their backends.
    pub services: Vec<Service>,
}

/// The maps a writer edits.
pub struct Tables<E, I, C, P> {
    pub endpoints: E,
    pub ipcache: I,
    pub cidrs: C,
    pub policy: P,
}

/// A writer over the pinned maps.
pub type PinnedWriter = Writer<Endpoints, Ipcache, Cidrs, Policy>;

impl PinnedWriter {
    pub fn open(pins: &Pins) -> Result<Self> {
        Self::new(Tables {
            endpoints: Endpoints::open_endpoints(pins)?,
            ipcache: Ipcache::open_ipcache(pins)?,
            cidrs: Cidrs::open_cidrs(pins)?,
            policy: Policy::open_policy(pins)?,
        })
    }
}

pub struct Writer<E, I, C, P> {
    tables: Tables<E, I, C, P>,
    /// Keys of each endpoint's live generation (by endpoint id).
    live: HashMap<u32, Vec<(u32, PolicyKey)>>,
}

impl<E, I, C, P> Writer<E, I, C, P>
where
    E: Table<u32, EndpointInfo>,
    I: Table<[u8; 16], IpcacheValue>,
    C: Table<(u32, CidrKey), u32>,
    P: Table<(u32, PolicyKey), PolicyValue>,
{
    /// Take over the maps as they are: learn each endpoint's live entries and delete
    /// entries of unused generations (left by an update that a crash interrupted) and of
    /// endpoints that no longer exist.
    pub fn new(mut tables: Tables<E, I, C, P>) -> Result<Self> {
        let generations: HashMap<u32, u8> = tables
            .endpoints
            .entries()?
            .into_iter()
            .map(|(_, info)| (info.endpoint_id, info.policy_generation))
            .collect();
        let mut live: HashMap<u32, Vec<(u32, PolicyKey)>> = HashMap::new();
        for (key, _) in tables.policy.entries()? {
            let endpoint = key.1.endpoint_id();
            if generations.get(&endpoint) == Some(&key.1.generation) {
                live.entry(endpoint).or_default().push(key);
            } else {
                tables.policy.remove(&key)?;
            }
        }
        Ok(Self { tables, live })
    }

    pub fn tables(&self) -> &Tables<E, I, C, P> {
        &self.tables
    }

    /// Make the maps say `desired` (for the endpoints it names).
    pub fn apply(&mut self, desired: &Desired) -> Result<()> {
        for (ifindex, rules) in &desired.endpoints {
            self.set_rules(*ifindex, rules, &desired.cidrs, &desired.services)?;
        }
        let cidrs: HashMap<(u32, CidrKey), u32> =
            compile::cidr_entries(&desired.cidrs).into_iter().collect();
        let pods = desired.ipcache.iter().map(|(addr, id)| {
            let value = IpcacheValue {
                identity: id.0,
                flags: 0,
            };
            (kernel_addr(*addr), value)
        });
        let services = desired.services.iter().flat_map(|s| {
            let value = IpcacheValue {
                identity: s.identity.0,
                flags: ipcache_flags::SERVICE,
            };
            s.cluster_ips
                .iter()
                .map(move |ip| (kernel_addr(*ip), value))
        });
        let ipcache: HashMap<[u8; 16], IpcacheValue> = pods.chain(services).collect();
        for (key, id) in &cidrs {
            self.tables.cidrs.set(*key, *id)?;
        }
        for (addr, value) in &ipcache {
            self.tables.ipcache.set(*addr, *value)?;
        }
        for (key, _) in self.tables.cidrs.entries()? {
            if !cidrs.contains_key(&key) {
                self.tables.cidrs.remove(&key)?;
            }
        }
        for (addr, _) in self.tables.ipcache.entries()? {
            if !ipcache.contains_key(&addr) {
                self.tables.ipcache.remove(&addr)?;
            }
        }
        Ok(())
    }

    /// Swap in new rules for the endpoint on `ifindex` (see the module docs).
    pub fn set_rules(
        &mut self,
        ifindex: u32,
        rules: &EndpointRules,
        cidrs: &CidrIdentities,
        services: &[Service],
    ) -> Result<()> {
        let mut info = rules::endpoint(&self.tables.endpoints, ifindex)?;
        let next = info.policy_generation ^ 1;
        let entries = compile::policy_entries(info.endpoint_id, next, rules, cidrs, services)
            .map_err(|source| Error::Rules { ifindex, source })?;
        for (key, value) in &entries {
            self.tables.policy.set(*key, *value)?;
        }
        info.policy_generation = next;
        info.ingress_isolated = u8::from(rules.ingress == Isolation::Isolated);
        info.egress_isolated = u8::from(rules.egress == Isolation::Isolated);
        rules::bump(&mut self.tables.endpoints, ifindex, info)?;
        for key in self.live.remove(&info.endpoint_id).unwrap_or_default() {
            self.tables.policy.remove(&key)?;
        }
        self.live.insert(
            info.endpoint_id,
            entries.into_iter().map(|(k, _)| k).collect(),
        );
        Ok(())
    }

    /// Remove the endpoint on `ifindex` and its rules; its conntrack entries age out.
    pub fn forget(&mut self, ifindex: u32) -> Result<()> {
        let Some(info) = self.tables.endpoints.get(&ifindex)? else {
            return Ok(());
        };
        self.tables.endpoints.remove(&ifindex)?;
        for key in self.live.remove(&info.endpoint_id).unwrap_or_default() {
            self.tables.policy.remove(&key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use model::{
        Direction, Mode, Protocol,
        rules::{Peer, PortRange, Rule},
    };

    use super::*;
    use crate::datapath::{
        rules::{EndpointConfig, register_endpoint},
        tables::MemTable,
    };

    type Mem = Writer<
        MemTable<u32, EndpointInfo>,
        MemTable<[u8; 16], IpcacheValue>,
        MemTable<(u32, CidrKey), u32>,
        MemTable<(u32, PolicyKey), PolicyValue>,
    >;

    const IF: u32 = 9;

    fn writer() -> Mem {
        let mut endpoints = MemTable::default();
        let config = EndpointConfig {
            mode: Mode::Enforce,
            ipv4: None,
            ipv6: None,
        };
        register_endpoint(&mut endpoints, IF, &config).unwrap();
        Writer::new(Tables {
            endpoints,
            ipcache: MemTable::default(),
            cidrs: MemTable::default(),
            policy: MemTable::default(),
        })
        .unwrap()
    }

    fn rules(port: u16) -> EndpointRules {
        EndpointRules {
            ingress: Isolation::Isolated,
            egress: Isolation::Open,
            rules: vec![Rule {
                id: 1,
                direction: Direction::Ingress,
                peer: Peer::Identity(Identity(300)),
                protocol: Some(Protocol::Tcp),
                ports: Some(PortRange::single(port)),
            }],
        }
    }

    fn info(w: &Mem) -> EndpointInfo {
        w.tables().endpoints.get(&IF).unwrap().unwrap()
    }

    #[test]
    fn an_update_flips_the_generation_and_leaves_only_the_new_entries() {
        let mut w = writer();
        let r0 = info(&w).policy_revision;
        w.set_rules(IF, &rules(80), &CidrIdentities::new(), &[])
            .unwrap();
        let first = info(&w);
        assert_eq!(
            (
                first.policy_generation,
                first.ingress_isolated,
                first.egress_isolated
            ),
            (1, 1, 0)
        );
        assert_eq!(first.policy_revision, r0 + 1);
        w.set_rules(IF, &rules(443), &CidrIdentities::new(), &[])
            .unwrap();
        assert_eq!(info(&w).policy_generation, 0);
        let entries = w.tables().policy.entries().unwrap();
        assert_eq!(entries.len(), 1);
        let ((_, key), _) = entries[0];
        assert_eq!((key.generation, u16::from_be_bytes(key.port)), (0, 443));
    }

    #[test]
    fn a_restarted_writer_cleans_up_an_interrupted_update() {
        let mut w = writer();
        w.set_rules(IF, &rules(80), &CidrIdentities::new(), &[])
            .unwrap();
        let Tables {
            endpoints,
            ipcache,
            cidrs,
            mut policy,
        } = w.tables;
        // A crash after writing the next generation's entries, before the flip.
        let stray = PolicyKey::new(IF, 0, 2, 300, 6, 22);
        policy
            .set((104, stray), PolicyValue { rule_id: 5 })
            .unwrap();
        let w = Writer::new(Tables {
            endpoints,
            ipcache,
            cidrs,
            policy,
        })
        .unwrap();
        let keys: Vec<_> = w
            .tables()
            .policy
            .entries()
            .unwrap()
            .into_iter()
            .map(|((_, k), _)| k)
            .collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].generation, 1);
    }

    #[test]
    fn apply_writes_identities_and_removes_stale_ones() {
        let mut w = writer();
        let mut desired = Desired::default();
        desired.endpoints.insert(IF, rules(80));
        desired
            .ipcache
            .insert("10.244.0.2".parse().unwrap(), Identity(300));
        desired.cidrs.insert(
            "203.0.113.0/24".parse().unwrap(),
            Identity(Identity::FIRST_CIDR),
        );
        w.apply(&desired).unwrap();
        assert_eq!(w.tables().ipcache.entries().unwrap().len(), 1);
        assert_eq!(w.tables().cidrs.entries().unwrap().len(), 1);
        desired.ipcache.clear();
        desired.cidrs.clear();
        w.apply(&desired).unwrap();
        assert!(w.tables().ipcache.entries().unwrap().is_empty());
        assert!(w.tables().cidrs.entries().unwrap().is_empty());
    }

    #[test]
    fn forgetting_an_endpoint_removes_its_entries() {
        let mut w = writer();
        w.set_rules(IF, &rules(80), &CidrIdentities::new(), &[])
            .unwrap();
        w.forget(IF).unwrap();
        assert!(w.tables().policy.entries().unwrap().is_empty());
        assert!(w.tables().endpoints.get(&IF).unwrap().is_none());
    }

    #[test]
    fn rules_for_an_unknown_endpoint_are_an_error() {
        let mut w = writer();
        assert!(matches!(
            w.set_rules(IF + 1, &rules(80), &CidrIdentities::new(), &[]),
            Err(Error::NotAnEndpoint { .. })
        ));
    }
}
