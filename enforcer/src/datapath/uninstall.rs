//! Removing everything Palisade pinned. With the pins gone and the agent stopped, the
//! kernel frees the links (which detaches the programs), the programs and the maps.

use std::path::Path;

use tracing::info;

use super::Pins;
use crate::error::{Error, Result};

/// What an uninstall removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: usize,
    pub pins: usize,
}

/// Remove every pin under `pins` (links first, so no endpoint ever runs a program whose
/// maps are gone), then the folders. Nothing there is not an error.
pub fn uninstall(pins: &Pins) -> Result<Removed> {
    let mut removed = Removed::default();
    for (_, _, path) in pins.links()? {
        remove(&path)?;
        removed.links += 1;
    }
    for dir in [pins.links_dir(), pins.progs_dir(), pins.maps_dir()] {
        removed.pins += remove_dir(&dir)?;
    }
    for dir in [pins.version_dir(), pins.root().to_owned()] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Another layout version still lives under the root: leave it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            Err(source) => return Err(Error::Pin { path: dir, source }),
        }
    }
    info!(root = %pins.root().display(), links = removed.links, pins = removed.pins, "uninstalled");
    Ok(removed)
}

/// Remove the pins in `dir` and `dir` itself; returns how many pins.
fn remove_dir(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(Error::Pin {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Pin {
            path: dir.to_owned(),
            source,
        })?;
        remove(&entry.path())?;
        count += 1;
    }
    std::fs::remove_dir(dir).map_err(|source| Error::Pin {
        path: dir.to_owned(),
        source,
    })?;
    Ok(count)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Pin {
            path: path.to_owned(),
            source,
        }),
    }
}
