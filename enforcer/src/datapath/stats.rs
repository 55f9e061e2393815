//! Reading conntrack and the per-CPU counters (for exports and for `palisade conntrack` /
//! `palisade counters`); never per packet.

use aya::maps::{MapData, PerCpuArray};
use enforcer_common::{
    conntrack::{ConntrackKey, ConntrackValue},
    event::Counter,
    maps,
};

use super::{
    Pins,
    tables::{PinnedTable, Table, open_pinned},
};
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
    let slots: Vec<u32> = Counter::ALL.iter().map(|&c| c as u32).collect();
    let totals = per_cpu_totals(pins, maps::COUNTERS, &slots)?;
    Ok(Counter::ALL.iter().copied().zip(totals).collect())
}

/// Slots of the pinned per-CPU `u64` array `name`, each summed over CPUs.
pub fn per_cpu_totals(pins: &Pins, name: &'static str, slots: &[u32]) -> Result<Vec<u64>> {
    let array: PerCpuArray<MapData, u64> = open_pinned(pins, name)?;
    slots
        .iter()
        .map(|slot| {
            let per_cpu = array.get(slot, 0).map_err(|source| Error::Map {
                map: name,
                action: format!("reading slot {slot}"),
                source: Box::new(source),
            })?;
            Ok(per_cpu.iter().sum())
        })
        .collect()
}
