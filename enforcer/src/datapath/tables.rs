//! The maps user space edits, behind one small trait: the agent uses the pinned maps, unit
//! tests an in-memory twin, and the rules in [`super::rules`] are written once for both.

use std::{collections::HashMap, hash::Hash};

use aya::{
    Pod,
    maps::{Map, MapData, MapError, lpm_trie::Key},
};
use enforcer_common::{
    addr::Addr,
    endpoint::EndpointInfo,
    maps,
    policy::{CidrKey, IpcacheValue, PolicyKey, PolicyValue},
};

use super::Pins;
use crate::error::{Error, Result};

/// Is `e` the kernel saying the key is not there? aya reports a failed delete's ENOENT
/// as a syscall error rather than as `KeyNotFound`.
pub fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A key-value table: a pinned BPF hash map or its in-memory twin.
pub trait Table<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>>;
    fn set(&mut self, key: K, value: V) -> Result<()>;
    /// Remove `key`; `false` when it was not there.
    fn remove(&mut self, key: &K) -> Result<bool>;
    fn entries(&self) -> Result<Vec<(K, V)>>;
}

/// `ENDPOINTS`: ifindex -> endpoint.
pub type Endpoints = PinnedTable<u32, EndpointInfo>;
/// `IPCACHE`: address -> identity.
pub type Ipcache = PinnedTable<Addr, IpcacheValue>;
/// `CIDRS`: (prefix length, prefix) -> CIDR identity.
pub type Cidrs = PinnedLpm<CidrKey, u32>;
/// `POLICY`: (prefix length, key) -> rule.
pub type Policy = PinnedLpm<PolicyKey, PolicyValue>;

/// A pinned BPF map of aya type `M`, with its name for errors.
pub struct Pinned<M> {
    name: &'static str,
    pub(super) map: M,
}

/// A pinned BPF hash map.
pub type PinnedTable<K, V> = Pinned<aya::maps::HashMap<MapData, K, V>>;
/// A pinned BPF LPM trie, keyed by (prefix length, data).
pub type PinnedLpm<K, V> = Pinned<aya::maps::LpmTrie<MapData, K, V>>;

/// Open the pinned map `name` as the aya map type `M` (a hash map, an LPM trie, ...).
pub fn open_pinned<M>(pins: &Pins, name: &'static str) -> Result<M>
where
    M: TryFrom<Map, Error = MapError>,
{
    pins.require_installed()?;
    let path = pins.map(name);
    let err = |action: &str, source: MapError| Error::Map {
        map: name,
        action: format!("{action} {}", path.display()),
        source: Box::new(source),
    };
    let data = MapData::from_pin(&path).map_err(|e| err("opening", e))?;
    let map = Map::from_map_data(data).map_err(|e| err("opening", e))?;
    M::try_from(map).map_err(|e| err("typing", e))
}

impl<M: TryFrom<Map, Error = MapError>> Pinned<M> {
    pub fn open(pins: &Pins, name: &'static str) -> Result<Self> {
        Ok(Self {
            name,
            map: open_pinned(pins, name)?,
        })
    }

    pub(super) fn error(&self, action: &str, source: MapError) -> Error {
        Error::Map {
            map: self.name,
            action: action.to_owned(),
            source: Box::new(source),
        }
    }
}

impl Endpoints {
    pub fn open_endpoints(pins: &Pins) -> Result<Self> {
        Self::open(pins, maps::ENDPOINTS)
    }
}

impl Ipcache {
    pub fn open_ipcache(pins: &Pins) -> Result<Self> {
        Self::open(pins, maps::IPCACHE)
    }
}

impl Cidrs {
    pub fn open_cidrs(pins: &Pins) -> Result<Self> {
        Self::open(pins, maps::CIDRS)
    }
}

impl Policy {
    pub fn open_policy(pins: &Pins) -> Result<Self> {
        Self::open(pins, maps::POLICY)
    }
}

impl<K: Pod, V: Pod> Table<(u32, K), V> for PinnedLpm<K, V> {
    fn get(&self, (prefix, data): &(u32, K)) -> Result<Option<V>> {
        match self.map.get(&Key::new(*prefix, *data), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(self.error("lookup", e)),
        }
    }

    fn set(&mut self, (prefix, data): (u32, K), value: V) -> Result<()> {
        self.map
            .insert(&Key::new(prefix, data), value, 0)
            .map_err(|e| self.error("update", e))
    }

    fn remove(&mut self, (prefix, data): &(u32, K)) -> Result<bool> {
        match self.map.remove(&Key::new(*prefix, *data)) {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(self.error("delete", e)),
        }
    }

    fn entries(&self) -> Result<Vec<((u32, K), V)>> {
        self.map
            .iter()
            .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error("iterate", e))
    }
}

impl<K: Pod, V: Pod> Table<K, V> for PinnedTable<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(self.error("lookup", e)),
        }
    }

    fn set(&mut self, key: K, value: V) -> Result<()> {
        self.map
            .insert(key, value, 0)
            .map_err(|e| self.error("update", e))
    }

    fn remove(&mut self, key: &K) -> Result<bool> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(self.error("delete", e)),
        }
    }

    fn entries(&self) -> Result<Vec<(K, V)>> {
        self.map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error("iterate", e))
    }
}

/// The in-memory twin, for tests of code that edits tables.
#[derive(Debug)]
pub struct MemTable<K, V>(pub HashMap<K, V>);

impl<K, V> Default for MemTable<K, V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: Hash + Eq + Copy, V: Copy> Table<K, V> for MemTable<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.0.get(key).copied())
    }

    fn set(&mut self, key: K, value: V) -> Result<()> {
        self.0.insert(key, value);
        Ok(())
    }

    fn remove(&mut self, key: &K) -> Result<bool> {
        Ok(self.0.remove(key).is_some())
    }

    fn entries(&self) -> Result<Vec<(K, V)>> {
        Ok(self.0.iter().map(|(k, v)| (*k, *v)).collect())
    }
}
