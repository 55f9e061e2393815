//! Reading the pinned ring buffers: flow events and DNS answers.

use std::marker::PhantomData;

use aya::maps::{MapData, RingBuf};
use enforcer_common::{dns::DnsEvent, event::FlowEvent, maps};
use tokio::io::unix::AsyncFd;

use super::{Pins, tables::open_pinned};
use crate::error::{Error, Result};

/// A pinned ring buffer of `T` records, readable from async code.
pub struct RingReader<T> {
    name: &'static str,
    ring: AsyncFd<RingBuf<MapData>>,
    _record: PhantomData<T>,
}

/// Flow events (`EVENTS`).
pub type EventReader = RingReader<FlowEvent>;
/// DNS answers delivered to pods (`DNS_EVENTS`).
pub type DnsReader = RingReader<DnsEvent>;

impl EventReader {
    pub fn open_events(pins: &Pins) -> Result<Self> {
        Self::open(pins, maps::EVENTS)
    }
}

impl DnsReader {
    pub fn open_dns(pins: &Pins) -> Result<Self> {
        Self::open(pins, maps::DNS_EVENTS)
    }
}

impl<T: Copy> RingReader<T> {
    /// Open a pinned ring buffer. Records written while no agent ran are still there (up
    /// to the buffer's size); the kernel counts the ones that did not fit.
    pub fn open(pins: &Pins, name: &'static str) -> Result<Self> {
        let ring: RingBuf<MapData> = open_pinned(pins, name)?;
        let path = pins.map(name);
        // SAFETY: the ring buffer owns its map descriptor and keeps it open, unchanged,
        // for as long as it lives, which is as long as the AsyncFd that owns it.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| Error::Io {
            path,
            source: e.into(),
        })?;
        Ok(Self {
            name,
            ring,
            _record: PhantomData,
        })
    }

    /// Every record available now, without waiting (records submitted without a wake-up
    /// are only seen this way).
    pub fn drain_now(&mut self) -> Vec<T> {
        drain(self.ring.get_mut())
    }

    /// Wait for records and return every record available now (at least one).
    pub async fn next_batch(&mut self) -> Result<Vec<T>> {
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(|source| Error::Io {
                path: self.name.into(),
                source,
            })?;
            let batch = drain(guard.get_inner_mut());
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

fn drain<T: Copy>(ring: &mut RingBuf<MapData>) -> Vec<T> {
    let mut batch = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<T>() {
            // SAFETY: the kernel wrote a T (the same repr(C) type from enforcer-common) at
            // the item's start; read_unaligned because the item is a byte slice.
            batch.push(unsafe { item.as_ptr().cast::<T>().read_unaligned() });
        }
    }
    batch
}
