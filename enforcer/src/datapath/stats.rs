//! Reading conntrack and the per-CPU counters (for exports and for `palisade conntrack` /
//! `palisade counters`); never per packet.

use aya::maps::{Map, MapData, PerCpuArray};
use enforcer_common::{
    conntrack::{ConntrackKey, ConntrackValue},
    event::Counter,
    maps,
};

use super::{Pins, tables::PinnedTable, tables::Table};
use crate::error::{Error, Result};

/// Every conntrack entry (all endpoints).
pub fn conntrack(pins: &Pins) -> Result<Vec<(ConntrackKey, ConntrackValue)>> {
    PinnedTable::<ConntrackKey, ConntrackValue>::open(pins, maps::CONNTRACK)?.entries()
}

/// Remove conntrack entries (expired connections).
pub fn forget_connections(pins: &Pins, keys: &[ConntrackKey]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut table = PinnedTable::<ConntrackKey, ConntrackValue>::open(pins, maps::CONNTRACK)?;
    for key in keys {
        table.remove(key)?;
    }
    Ok(())
}

/// The clock the datapath stamps conntrack entries with (CLOCK_MONOTONIC_COARSE), in ns.
pub fn monotonic_coarse_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// Each counter summed over CPUs.
pub fn counters(pins: &Pins) -> Result<Vec<(Counter, u64)>> {
    pins.require_installed()?;
    let path = pins.map(maps::COUNTERS);
    let err = |action: &str, source| Error::Map {
        map: maps::COUNTERS,
        action: format!("{action} {}", path.display()),
        source: Box::new(source),
    };
    let data = MapData::from_pin(&path).map_err(|e| err("opening", e))?;
    let map = Map::from_map_data(data).map_err(|e| err("opening", e))?;
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(map).map_err(|e| err("typing", e))?;
    Counter::ALL
        .iter()
        .map(|&c| {
            let per_cpu = array.get(&(c as u32), 0).map_err(|e| err("reading", e))?;
            Ok((c, per_cpu.iter().sum()))
        })
        .collect()
}
