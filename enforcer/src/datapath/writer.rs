//! Writing what the node enforces into the maps, in an order that never opens a gap, with
//! work proportional to the change rather than to the policy.
//!
//! Each endpoint's `POLICY` entries exist under two generations; the endpoint's `ENDPOINTS`
//! entry names the live one. The writer remembers what it wrote under both, so a change is
//! written as a difference:
//!
//! 1. the spare generation is brought to the new rules (only the entries that differ), then
//!    the endpoint's `ENDPOINTS` entry flips to it (one update: the swap, never half-applied),
//!    then the old generation is brought to the same rules, so it is a ready spare for the
//!    next change; an endpoint whose rules did not change is not touched (its connections
//!    are not judged again);
//! 2. only then `CIDRS` and `IPCACHE` gain the prefixes and addresses those entries refer
//!    to (an identity never reaches the kernel before the rules that mention it);
//! 3. stale `CIDRS` and `IPCACHE` entries go last.
//!
//! When an address changes identity (a pod's labels changed), step 1 swaps in the old and
//! the new entries together, and a second swap after the address moved removes the old
//! ones: a connection is judged by the old identity's rules or by the new one's, never by
//! a mix (an identity's rules gone while the address still has it). When a CIDR goes away,
//! step 1's rules are compiled over the old and the new CIDRs, the stale CIDRs are
//! deleted, and a second swap installs the rules over the new CIDRs alone.
//!
//! The writer reads the maps once, when it is opened; from then on it must be their only
//! writer. [`PinnedWriter::open`] takes an exclusive lock on the pinned maps folder for its
//! lifetime, so a second writer (the CLI while an agent manages policy) fails at once with
//! a clear error instead of silently making the first one's memory wrong.
//!
//! A program run that read the endpoint just before a flip may look its rules up while the
//! old generation is being rewritten; its verdict is then one the old or the new rules
//! give, and the connection is judged again at its next packet (the flip bumps the policy
//! revision).
//!
//! Written over [`Table`], so the whole sequence is unit-tested in memory.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
};

use enforcer_common::{
    endpoint::{EndpointInfo, direction_policy},
    policy::{CidrKey, IpcacheValue, PolicyKey, PolicyValue, ipcache_flags},
};
use model::{
    Direction,
    identity::Identity,
    rules::{EndpointRules, Isolation, Peer, Service},
};
use tracing::warn;

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

/// How much one [`Writer::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Endpoints whose rules were swapped.
    pub endpoints: usize,
    /// Map entries written (both generations, `CIDRS`, `IPCACHE`).
    pub writes: usize,
    /// Map entries deleted.
    pub deletes: usize,
}

impl Changes {
    /// Count `other` in too.
    pub fn add(&mut self, other: Changes) {
        self.endpoints += other.endpoints;
        self.writes += other.writes;
        self.deletes += other.deletes;
    }
}

/// A writer over the pinned maps.
pub type PinnedWriter = Writer<Endpoints, Ipcache, Cidrs, Policy>;

impl PinnedWriter {
    pub fn open(pins: &Pins) -> Result<Self> {
        let lock = lock_maps(pins)?;
        let mut writer = Self::new(Tables {
            endpoints: Endpoints::open_endpoints(pins)?,
            ipcache: Ipcache::open_ipcache(pins)?,
            cidrs: Cidrs::open_cidrs(pins)?,
            policy: Policy::open_policy(pins)?,
        })?;
        writer.lock = Some(lock);
        Ok(writer)
    }
}

/// Take the exclusive writer lock on the pinned maps folder (released when the file
/// closes, including when the process dies).
fn lock_maps(pins: &Pins) -> Result<File> {
    pins.require_installed()?;
    lock_dir(pins.maps_dir())
}

fn lock_dir(path: std::path::PathBuf) -> Result<File> {
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let dir = File::open(&path).map_err(io)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::PolicyLocked { path });
        }
        return Err(io(source));
    }
    Ok(dir)
}

/// A `POLICY` key without its generation (always 0 here), and its value.
type Entries = HashMap<(u32, PolicyKey), PolicyValue>;

/// One endpoint's rules, compiled.
struct Compiled {
    entries: Entries,
    ingress_policy: u8,
    egress_policy: u8,
}

/// What the writer knows is in `POLICY` for one endpoint, per generation.
#[derive(Default)]
struct Written {
    generations: [Entries; 2],
}

pub struct Writer<E, I, C, P> {
    tables: Tables<E, I, C, P>,
    /// By endpoint id.
    written: HashMap<u32, Written>,
    ipcache: HashMap<[u8; 16], IpcacheValue>,
    cidrs: HashMap<(u32, CidrKey), u32>,
    lock: Option<File>,
}

impl<E, I, C, P> Writer<E, I, C, P>
where
    E: Table<u32, EndpointInfo>,
    I: Table<[u8; 16], IpcacheValue>,
    C: Table<(u32, CidrKey), u32>,
    P: Table<(u32, PolicyKey), PolicyValue>,
{
    /// Take over the maps as they are: learn both generations of each endpoint, and delete
    /// the entries of endpoints that no longer exist.
    pub fn new(mut tables: Tables<E, I, C, P>) -> Result<Self> {
        let mut written: HashMap<u32, Written> = tables
            .endpoints
            .entries()?
            .into_iter()
            .map(|(_, info)| (info.endpoint_id, Written::default()))
            .collect();
        for ((prefix, key), value) in tables.policy.entries()? {
            match written.get_mut(&key.endpoint_id()) {
                Some(w) => {
                    let generation = usize::from(key.generation & 1);
                    w.generations[generation].insert((prefix, without_generation(key)), value);
                }
                None => {
                    tables.policy.remove(&(prefix, key))?;
                }
            }
        }
        let ipcache = tables.ipcache.entries()?.into_iter().collect();
        let cidrs = tables.cidrs.entries()?.into_iter().collect();
        Ok(Self {
            tables,
            written,
            ipcache,
            cidrs,
            lock: None,
        })
    }

    pub fn tables(&self) -> &Tables<E, I, C, P> {
        &self.tables
    }

    /// Make the maps say `desired` (for the endpoints it names). Every endpoint's rules are
    /// compiled and checked before anything is written: a bad policy changes nothing.
    pub fn apply(&mut self, desired: &Desired) -> Result<Changes> {
        let compiled = self.compile_all(desired, &desired.cidrs)?;
        let cidrs: HashMap<(u32, CidrKey), u32> =
            compile::cidr_entries(&desired.cidrs).into_iter().collect();
        let ipcache = ipcache_entries(desired);
        // An address whose identity moves (a pod's labels changed) must be judged by its
        // old identity's rules until IPCACHE says otherwise, then by its new one's: the
        // endpoints first gain their new entries while keeping the old (one swap), then
        // the address moves, then the old entries go (a second swap).
        let moves = ipcache
            .iter()
            .any(|(addr, v)| self.ipcache.get(addr).is_some_and(|old| old != v));
        // A CIDR going away: until it is gone from CIDRS, addresses in it still resolve to
        // its identity. The first swap's rules cover the old and the new CIDRs alike (the
        // new rules, compiled over both), so either resolution gets the new verdict.
        let stale: CidrIdentities = self
            .cidrs
            .iter()
            .filter(|(key, _)| !cidrs.contains_key(key))
            .filter_map(|((len, key), id)| Some((compile::cidr_net(*len, key)?, Identity(*id))))
            .collect();
        let first = if stale.is_empty() {
            None
        } else {
            let mut both = stale;
            both.extend(desired.cidrs.iter().map(|(n, i)| (*n, *i)));
            Some(self.compile_all(desired, &both)?)
        };
        let mut changes = Changes::default();
        for (ifindex, wanted) in first.as_ref().unwrap_or(&compiled) {
            let step = if moves {
                self.swap_union(*ifindex, wanted)?
            } else {
                self.swap(*ifindex, wanted)?
            };
            changes.add(step);
        }
        // New and changed entries first, stale ones last (see the module docs).
        changes.writes += write_new(&mut self.tables.cidrs, &mut self.cidrs, &cidrs)?;
        changes.writes += write_new(&mut self.tables.ipcache, &mut self.ipcache, &ipcache)?;
        changes.deletes += delete_stale(&mut self.tables.cidrs, &mut self.cidrs, &cidrs)?;
        if moves || first.is_some() {
            for (ifindex, wanted) in &compiled {
                changes.add(self.swap(*ifindex, wanted)?);
            }
        }
        changes.deletes += self.collect_detached(desired)?;
        changes.deletes += delete_stale(&mut self.tables.ipcache, &mut self.ipcache, &ipcache)?;
        Ok(changes)
    }

    /// Every endpoint of `desired` compiled over `cidrs`, all checked before any write.
    fn compile_all(
        &self,
        desired: &Desired,
        cidrs: &CidrIdentities,
    ) -> Result<Vec<(u32, Compiled)>> {
        desired
            .endpoints
            .iter()
            .map(|(ifindex, rules)| {
                Ok((
                    *ifindex,
                    self.compile(*ifindex, rules, cidrs, &desired.services)?,
                ))
            })
            .collect()
    }

    /// Swap in new rules for the endpoint on `ifindex` (see the module docs); nothing is
    /// written when they are what the endpoint enforces already.
    pub fn set_rules(
        &mut self,
        ifindex: u32,
        rules: &EndpointRules,
        cidrs: &CidrIdentities,
        services: &[Service],
    ) -> Result<Changes> {
        let wanted = self.compile(ifindex, rules, cidrs, services)?;
        self.swap(ifindex, &wanted)
    }

    /// The endpoint's `POLICY` entries (generation 0) and isolation, checked.
    fn compile(
        &self,
        ifindex: u32,
        rules: &EndpointRules,
        cidrs: &CidrIdentities,
        services: &[Service],
    ) -> Result<Compiled> {
        let info = rules::endpoint(&self.tables.endpoints, ifindex)?;
        let own = rules::own_addresses(&info);
        let entries = compile::policy_entries(info.endpoint_id, 0, rules, cidrs, services, &own)
            .map_err(|source| Error::Rules { ifindex, source })?
            .into_iter()
            .collect();
        Ok(Compiled {
            entries,
            ingress_policy: direction_policy_of(rules, Direction::Ingress),
            egress_policy: direction_policy_of(rules, Direction::Egress),
        })
    }

    /// [`Self::swap`] to what the endpoint enforces now and `wanted` together: every entry
    /// of both, isolated only where both are, CIDR lookups where either needs them.
    fn swap_union(&mut self, ifindex: u32, wanted: &Compiled) -> Result<Changes> {
        let info = rules::endpoint(&self.tables.endpoints, ifindex)?;
        let live = usize::from(info.policy_generation & 1);
        let mut entries = self
            .written
            .get(&info.endpoint_id)
            .map(|w| w.generations[live].clone())
            .unwrap_or_default();
        entries.extend(wanted.entries.iter().map(|(k, v)| (*k, *v)));
        let union = Compiled {
            entries,
            ingress_policy: info.ingress_policy & wanted.ingress_policy,
            egress_policy: info.egress_policy & wanted.egress_policy,
        };
        self.swap(ifindex, &union)
    }

    fn swap(&mut self, ifindex: u32, wanted: &Compiled) -> Result<Changes> {
        let info = rules::endpoint(&self.tables.endpoints, ifindex)?;
        let (ingress, egress) = (wanted.ingress_policy, wanted.egress_policy);
        let live = usize::from(info.policy_generation & 1);
        let spare = live ^ 1;
        let written = self.written.entry(info.endpoint_id).or_default();
        if written.generations[live] == wanted.entries
            && (info.ingress_policy, info.egress_policy) == (ingress, egress)
        {
            return Ok(Changes::default());
        }
        let wanted = &wanted.entries;
        let mut changes = sync(&mut self.tables.policy, written, spare, wanted)?;
        // The swap: one update of the endpoint (re-read, so a mode changed meanwhile stays).
        let mut info = rules::endpoint(&self.tables.endpoints, ifindex)?;
        if usize::from(info.policy_generation & 1) != live {
            warn!(
                ifindex,
                "the endpoint's policy generation changed under the writer"
            );
        }
        info.policy_generation = spare as u8;
        info.ingress_policy = ingress;
        info.egress_policy = egress;
        rules::bump(&mut self.tables.endpoints, ifindex, info)?;
        changes.endpoints = 1;
        changes.writes += 1;
        changes.add(sync(&mut self.tables.policy, written, live, wanted)?);
        Ok(changes)
    }

    /// Delete the rules of endpoints that were detached while this writer owned the maps
    /// (`palisade detach` removes only the endpoint then; see [`super::attach::detach`]).
    fn collect_detached(&mut self, desired: &Desired) -> Result<usize> {
        let candidates: Vec<u32> = self
            .written
            .keys()
            .filter(|id| !desired.endpoints.contains_key(id))
            .copied()
            .collect();
        let mut deletes = 0;
        for id in candidates {
            // The endpoint id is its ifindex.
            if self.tables.endpoints.get(&id)?.is_none() {
                deletes += self.delete_rules(id)?;
            }
        }
        Ok(deletes)
    }

    /// Remove the endpoint on `ifindex` and its rules; its conntrack entries age out.
    pub fn forget(&mut self, ifindex: u32) -> Result<()> {
        let Some(info) = self.tables.endpoints.get(&ifindex)? else {
            return Ok(());
        };
        self.tables.endpoints.remove(&ifindex)?;
        self.delete_rules(info.endpoint_id)?;
        Ok(())
    }

    /// Delete both generations of an endpoint's rules; how many entries went.
    fn delete_rules(&mut self, endpoint_id: u32) -> Result<usize> {
        let written = self.written.remove(&endpoint_id).unwrap_or_default();
        let mut deletes = 0;
        for (generation, entries) in written.generations.iter().enumerate() {
            for (prefix, key) in entries.keys() {
                let key = with_generation(*key, generation as u8);
                self.tables.policy.remove(&(*prefix, key))?;
                deletes += 1;
            }
        }
        Ok(deletes)
    }
}

/// The endpoint's [`direction_policy`] bits for one direction.
fn direction_policy_of(rules: &EndpointRules, direction: Direction) -> u8 {
    let isolation = match direction {
        Direction::Ingress => rules.ingress,
        Direction::Egress => rules.egress,
    };
    let names_cidr = rules
        .rules
        .iter()
        .any(|r| r.direction == direction && matches!(r.peer, Peer::Cidr { .. }));
    let mut bits = 0;
    if isolation == Isolation::Isolated {
        bits |= direction_policy::ISOLATED;
    }
    if !names_cidr {
        bits |= direction_policy::NO_CIDR_RULES;
    }
    bits
}

/// The `IPCACHE` entries `desired` asks for: pod and node addresses, Service ClusterIPs.
fn ipcache_entries(desired: &Desired) -> HashMap<[u8; 16], IpcacheValue> {
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
    pods.chain(services).collect()
}

/// Bring one generation of an endpoint's `POLICY` entries to `wanted`.
fn sync(
    policy: &mut impl Table<(u32, PolicyKey), PolicyValue>,
    written: &mut Written,
    generation: usize,
    wanted: &Entries,
) -> Result<Changes> {
    // `have` follows every write as it succeeds: after a failure part-way (a full map),
    // the writer still knows exactly what the generation holds, and the next update
    // removes what it must.
    let have = &mut written.generations[generation];
    let mut changes = Changes::default();
    for (key, value) in wanted {
        if have.get(key) != Some(value) {
            policy.set((key.0, with_generation(key.1, generation as u8)), *value)?;
            have.insert(*key, *value);
            changes.writes += 1;
        }
    }
    let stale: Vec<(u32, PolicyKey)> = have
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    for key in stale {
        policy.remove(&(key.0, with_generation(key.1, generation as u8)))?;
        have.remove(&key);
        changes.deletes += 1;
    }
    Ok(changes)
}

/// Write the entries of `wanted` that `have` lacks or holds with another value.
fn write_new<K: std::hash::Hash + Eq + Copy, V: PartialEq + Copy>(
    table: &mut impl Table<K, V>,
    have: &mut HashMap<K, V>,
    wanted: &HashMap<K, V>,
) -> Result<usize> {
    let mut writes = 0;
    for (key, value) in wanted {
        if have.get(key) != Some(value) {
            table.set(*key, *value)?;
            have.insert(*key, *value);
            writes += 1;
        }
    }
    Ok(writes)
}

/// Delete the entries of `have` that `wanted` does not name.
fn delete_stale<K: std::hash::Hash + Eq + Copy, V>(
    table: &mut impl Table<K, V>,
    have: &mut HashMap<K, V>,
    wanted: &HashMap<K, V>,
) -> Result<usize> {
    let stale: Vec<K> = have
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    for key in &stale {
        table.remove(key)?;
        have.remove(key);
    }
    Ok(stale.len())
}

fn without_generation(key: PolicyKey) -> PolicyKey {
    with_generation(key, 0)
}

fn with_generation(mut key: PolicyKey, generation: u8) -> PolicyKey {
    key.generation = generation;
    key
}

#[cfg(test)]
mod tests {
    use model::{
        Mode, Protocol,
        rules::{PortRange, Rule},
    };
    use std::{collections::BTreeSet, net::IpAddr};

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
            isolated: false,
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

    fn rule(id: u32, port: u16) -> Rule {
        Rule {
            id,
            direction: Direction::Ingress,
            peer: Peer::Identity(Identity(300)),
            protocol: Some(Protocol::Tcp),
            ports: Some(PortRange::single(port)),
        }
    }

    fn rules_with(rules: Vec<Rule>) -> EndpointRules {
        EndpointRules {
            ingress: Isolation::Isolated,
            egress: Isolation::Open,
            rules,
        }
    }

    fn rules(port: u16) -> EndpointRules {
        rules_with(vec![rule(1, port)])
    }

    fn set(w: &mut Mem, rules: &EndpointRules) -> Changes {
        w.set_rules(IF, rules, &CidrIdentities::new(), &[]).unwrap()
    }

    fn info(w: &Mem) -> EndpointInfo {
        w.tables().endpoints.get(&IF).unwrap().unwrap()
    }

    /// The ports of the entries under `generation`, sorted.
    fn ports(w: &Mem, generation: u8) -> Vec<u16> {
        let mut ports: Vec<u16> = w
            .tables()
            .policy
            .entries()
            .unwrap()
            .into_iter()
            .filter(|((_, k), _)| k.generation == generation)
            .map(|((_, k), _)| u16::from_be_bytes(k.port))
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn an_update_flips_the_generation_and_leaves_the_spare_a_copy() {
        let mut w = writer();
        let r0 = info(&w).policy_revision;
        set(&mut w, &rules(80));
        let first = info(&w);
        let no_cidr = direction_policy::NO_CIDR_RULES;
        assert_eq!(
            (
                first.policy_generation,
                first.ingress_policy,
                first.egress_policy
            ),
            (1, direction_policy::ISOLATED | no_cidr, no_cidr)
        );
        assert_eq!(first.policy_revision, r0 + 1);
        set(&mut w, &rules(443));
        assert_eq!(info(&w).policy_generation, 0);
        assert_eq!((ports(&w, 0), ports(&w, 1)), (vec![443], vec![443]));
    }

    #[test]
    fn unchanged_rules_write_nothing_and_keep_connections() {
        let mut w = writer();
        set(&mut w, &rules(80));
        let before = info(&w);
        assert_eq!(set(&mut w, &rules(80)), Changes::default());
        assert_eq!(info(&w), before);
    }

    #[test]
    fn a_one_rule_change_writes_only_its_difference() {
        let mut w = writer();
        let many: Vec<Rule> = (1..=1000).map(|p| rule(u32::from(p), p)).collect();
        set(&mut w, &rules_with(many.clone()));
        let mut changed = many;
        changed[0] = rule(1, 5000);
        let changes = set(&mut w, &rules_with(changed));
        // Per generation: one entry written, one deleted; and the flip.
        assert_eq!(
            changes,
            Changes {
                endpoints: 1,
                writes: 3,
                deletes: 2
            }
        );
        for generation in [0, 1] {
            let ports = ports(&w, generation);
            assert_eq!(ports.len(), 1000);
            assert!(ports.contains(&5000) && !ports.contains(&1));
        }
    }

    #[test]
    fn a_cidr_rule_asks_the_kernel_for_cidr_lookups_in_its_direction_only() {
        let mut w = writer();
        let mut rules = rules(80);
        rules.rules.push(Rule {
            id: 2,
            direction: Direction::Egress,
            peer: Peer::Cidr {
                net: "10.0.0.0/8".parse().unwrap(),
                except: vec![],
            },
            protocol: None,
            ports: None,
        });
        set(&mut w, &rules);
        let info = info(&w);
        assert_eq!(info.egress_policy & direction_policy::NO_CIDR_RULES, 0);
        assert_ne!(info.ingress_policy & direction_policy::NO_CIDR_RULES, 0);
    }

    #[test]
    fn isolation_alone_is_a_change() {
        let mut w = writer();
        set(&mut w, &rules(80));
        let mut open = rules(80);
        open.ingress = Isolation::Open;
        assert_eq!(set(&mut w, &open).endpoints, 1);
        assert_eq!(info(&w).ingress_policy & direction_policy::ISOLATED, 0);
    }

    #[test]
    fn a_restarted_writer_repairs_an_interrupted_update() {
        let mut w = writer();
        set(&mut w, &rules(80));
        let Tables {
            endpoints,
            ipcache,
            cidrs,
            mut policy,
        } = w.tables;
        // A crash while writing the spare generation (0), before the flip; and entries of
        // an endpoint that is gone.
        let stray = PolicyKey::new(IF, 0, 2, 300, 6, 22);
        policy
            .set((104, stray), PolicyValue { rule_id: 5 })
            .unwrap();
        let gone = PolicyKey::new(IF + 1, 0, 2, 300, 6, 22);
        policy.set((104, gone), PolicyValue { rule_id: 5 }).unwrap();
        let mut w = Writer::new(Tables {
            endpoints,
            ipcache,
            cidrs,
            policy,
        })
        .unwrap();
        assert_eq!(w.tables().policy.entries().unwrap().len(), 3);
        set(&mut w, &rules(443));
        assert_eq!((ports(&w, 0), ports(&w, 1)), (vec![443], vec![443]));
    }

    #[test]
    fn apply_writes_identities_once_and_removes_stale_ones() {
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
        assert_eq!(w.apply(&desired).unwrap(), Changes::default());
        desired.ipcache.clear();
        desired.cidrs.clear();
        let changes = w.apply(&desired).unwrap();
        assert_eq!((changes.writes, changes.deletes), (0, 2));
        assert!(w.tables().ipcache.entries().unwrap().is_empty());
        assert!(w.tables().cidrs.entries().unwrap().is_empty());
    }

    #[test]
    fn forgetting_an_endpoint_removes_both_generations() {
        let mut w = writer();
        set(&mut w, &rules(80));
        set(&mut w, &rules(443));
        w.forget(IF).unwrap();
        assert!(w.tables().policy.entries().unwrap().is_empty());
        assert!(w.tables().endpoints.get(&IF).unwrap().is_none());
    }

    #[test]
    fn a_policy_with_one_bad_endpoint_changes_nothing() {
        let mut w = writer();
        let mut desired = Desired::default();
        desired.endpoints.insert(IF, rules(80));
        w.apply(&desired).unwrap();
        let before = w.tables().policy.entries().unwrap().len();
        desired.endpoints.insert(IF, rules(443));
        desired.endpoints.insert(IF + 1, rules(443));
        assert!(matches!(
            w.apply(&desired),
            Err(Error::NotAnEndpoint { .. })
        ));
        assert_eq!(ports(&w, info(&w).policy_generation), vec![80]);
        assert_eq!(w.tables().policy.entries().unwrap().len(), before);
    }

    #[test]
    fn rules_of_an_endpoint_detached_behind_the_writer_go_at_the_next_apply() {
        let mut w = writer();
        set(&mut w, &rules(80));
        // `palisade detach` while the writer owns the maps removes the endpoint only.
        w.tables.endpoints.remove(&IF).unwrap();
        assert_eq!(w.tables().policy.entries().unwrap().len(), 2);
        let changes = w.apply(&Desired::default()).unwrap();
        assert_eq!(changes.deletes, 2);
        assert!(w.tables().policy.entries().unwrap().is_empty());
    }

    #[test]
    fn an_address_changing_identity_never_finds_neither_identity_allowed() {
        let mut w = writer();
        let addr: IpAddr = "10.244.0.7".parse().unwrap();
        let allow = |id: u32, port: u16| Rule {
            id,
            direction: Direction::Ingress,
            peer: Peer::Identity(Identity(id)),
            protocol: Some(Protocol::Tcp),
            ports: Some(PortRange::single(port)),
        };
        let mut desired = Desired::default();
        desired
            .endpoints
            .insert(IF, rules_with(vec![allow(300, 80)]));
        desired.ipcache.insert(addr, Identity(300));
        w.apply(&desired).unwrap();
        // The pod moves to identity 301, which the rules now allow on 443.
        desired
            .endpoints
            .insert(IF, rules_with(vec![allow(301, 443)]));
        desired.ipcache.insert(addr, Identity(301));
        let r0 = info(&w).policy_revision;
        w.apply(&desired).unwrap();
        // Two swaps: the union, then the new rules alone.
        assert_eq!(info(&w).policy_revision, r0 + 2);
        let live = info(&w).policy_generation;
        assert_eq!(ports(&w, live), vec![443]);
        // The spare generation holds the final rules too (ready for the next change).
        assert_eq!(ports(&w, live ^ 1), vec![443]);
    }

    #[test]
    fn a_write_failing_part_way_leaves_the_writer_knowing_what_is_there() {
        let mut w = writer();
        set(&mut w, &rules(80));
        // The map "fills up" after one more entry.
        let many = rules_with((1..=5).map(|p| rule(u32::from(p), 1000 + p)).collect());
        let before = w.tables.policy.0.len();
        let full = FullAfter {
            inner: std::mem::take(&mut w.tables.policy),
            room: before + 1,
        };
        let mut w = Writer {
            tables: Tables {
                endpoints: std::mem::take(&mut w.tables.endpoints),
                ipcache: MemTable::default(),
                cidrs: MemTable::default(),
                policy: full,
            },
            written: std::mem::take(&mut w.written),
            ipcache: HashMap::new(),
            cidrs: HashMap::new(),
            lock: None,
        };
        assert!(w.set_rules(IF, &many, &CidrIdentities::new(), &[]).is_err());
        // Room again: the next update converges, and nothing unknown is left behind.
        w.tables.policy.room = usize::MAX;
        w.set_rules(IF, &rules(443), &CidrIdentities::new(), &[])
            .unwrap();
        let mut ports: Vec<(u8, u16)> = w
            .tables
            .policy
            .inner
            .0
            .keys()
            .map(|(_, k)| (k.generation, u16::from_be_bytes(k.port)))
            .collect();
        ports.sort_unstable();
        assert_eq!(ports, vec![(0, 443), (1, 443)]);
    }

    /// A table that refuses new keys past `room` entries, like a full BPF map.
    struct FullAfter {
        inner: MemTable<(u32, PolicyKey), PolicyValue>,
        room: usize,
    }

    impl Table<(u32, PolicyKey), PolicyValue> for FullAfter {
        fn get(&self, key: &(u32, PolicyKey)) -> Result<Option<PolicyValue>> {
            self.inner.get(key)
        }
        fn set(&mut self, key: (u32, PolicyKey), value: PolicyValue) -> Result<()> {
            if !self.inner.0.contains_key(&key) && self.inner.0.len() >= self.room {
                return Err(Error::Policy("map full".into()));
            }
            self.inner.set(key, value)
        }
        fn remove(&mut self, key: &(u32, PolicyKey)) -> Result<bool> {
            self.inner.remove(key)
        }
        fn entries(&self) -> Result<Vec<((u32, PolicyKey), PolicyValue)>> {
            self.inner.entries()
        }
    }

    #[test]
    fn a_cidr_going_away_leaves_cidrs_before_its_rules_go() {
        let mut w = writer();
        let world_rule = Rule {
            id: 1,
            direction: Direction::Egress,
            peer: Peer::Cidr {
                net: "0.0.0.0/0".parse().unwrap(),
                except: vec![],
            },
            protocol: None,
            ports: None,
        };
        let mut desired = Desired::default();
        desired.endpoints.insert(IF, rules_with(vec![world_rule]));
        let (all, some) = (
            Identity(Identity::FIRST_CIDR),
            Identity(Identity::FIRST_CIDR + 1),
        );
        desired.cidrs.insert("0.0.0.0/0".parse().unwrap(), all);
        desired
            .cidrs
            .insert("203.0.113.0/24".parse().unwrap(), some);
        w.apply(&desired).unwrap();
        let identities = |w: &Mem| -> BTreeSet<u32> {
            let live = info(w).policy_generation;
            w.tables()
                .policy
                .entries()
                .unwrap()
                .into_iter()
                .filter(|((_, k), _)| k.generation == live)
                .map(|((_, k), _)| u32::from_be_bytes(k.identity))
                .collect()
        };
        assert_eq!(identities(&w), BTreeSet::from([all.0, some.0]));
        // The /24 goes (the policy naming it was deleted).
        desired.cidrs.remove(&"203.0.113.0/24".parse().unwrap());
        let r0 = info(&w).policy_revision;
        w.apply(&desired).unwrap();
        // The first step (the new rules over both CIDR sets) is what the endpoint has
        // already: no swap; the /24 leaves CIDRS, then the one swap drops its rules.
        assert_eq!(info(&w).policy_revision, r0 + 1);
        assert_eq!(identities(&w), BTreeSet::from([all.0]));
        assert_eq!(w.tables().cidrs.entries().unwrap().len(), 1);
    }

    #[test]
    fn rules_for_an_unknown_endpoint_are_an_error() {
        let mut w = writer();
        assert!(matches!(
            w.set_rules(IF + 1, &rules(80), &CidrIdentities::new(), &[]),
            Err(Error::NotAnEndpoint { .. })
        ));
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path().to_owned()).unwrap();
        assert!(matches!(
            lock_dir(dir.path().to_owned()),
            Err(Error::PolicyLocked { .. })
        ));
        drop(first);
        lock_dir(dir.path().to_owned()).unwrap();
    }
}
