//! Reading flow events from the pinned ring buffer.

use aya::maps::{Map, MapData, RingBuf};
use enforcer_common::{event::FlowEvent, maps};
use tokio::io::unix::AsyncFd;

use super::Pins;
use crate::error::{Error, Result};

/// The `EVENTS` ring buffer, readable from async code.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    /// Open the pinned ring buffer. Events written while no agent ran are still there (up to
    /// the buffer's size); the kernel counts the ones that did not fit.
    pub fn open(pins: &Pins) -> Result<Self> {
        pins.require_installed()?;
        let path = pins.map(maps::EVENTS);
        let err = |source: aya::maps::MapError| Error::Map {
            map: maps::EVENTS,
            action: format!("opening {}", path.display()),
            source: Box::new(source),
        };
        let data = MapData::from_pin(&path).map_err(err)?;
        let ring = RingBuf::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)?;
        // SAFETY: the ring buffer owns its map descriptor and keeps it open, unchanged,
        // for as long as it lives, which is as long as the AsyncFd that owns it.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| Error::Io {
            path,
            source: e.into(),
        })?;
        Ok(Self { ring })
    }

    /// Wait for events and return every event available now (at least one).
    pub async fn next_batch(&mut self) -> Result<Vec<FlowEvent>> {
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(|source| Error::Io {
                path: maps::EVENTS.into(),
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

fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut batch = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<FlowEvent>() {
            // SAFETY: the kernel wrote a FlowEvent (same repr(C) type) at the item's start;
            // read_unaligned because the item is a byte slice.
            batch.push(unsafe { item.as_ptr().cast::<FlowEvent>().read_unaligned() });
        }
    }
    batch
}
