//! Loading the kernel object and pinning it.
//!
//! Installing is idempotent and doubles as restart and upgrade: maps already pinned are
//! reused (state survives), the programs are loaded fresh from this binary and pinned in
//! place of the old ones, and every pinned link is switched to the new program atomically
//! (`BPF_LINK_UPDATE`): an endpoint is never unprotected and never attached twice.

use std::io::ErrorKind;

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier,
        links::{FdLink, LinkError, PinnedLink},
        tc,
    },
};
use enforcer_common::maps::{self, PROG_FROM_POD, PROG_PREFILTER_OUT, PROG_TO_POD};
use tracing::{debug, info, warn};

use super::{Pins, object};
use crate::error::{Error, Result};

/// The loaded object, holding its maps open (the agent reads `EVENTS` from it).
pub struct Installed {
    pub ebpf: Ebpf,
    /// Links switched to the freshly loaded programs.
    pub links_upgraded: usize,
    /// Pins of links whose interface is gone, removed.
    pub links_removed: usize,
}

/// Sizes chosen when the datapath is installed (fixed while its maps stay pinned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// `CONNTRACK` entries: live connections the node tracks. LRU maps are preallocated:
    /// each entry costs 176 bytes of kernel memory whether used or not (1,048,576
    /// entries: 176 MiB, as the map's memlock in fdinfo reports).
    pub conntrack_max: u32,
}

impl Default for Sizing {
    fn default() -> Self {
        Self {
            conntrack_max: maps::CONNTRACK_MAX,
        }
    }
}

/// Load the datapath from this binary into the kernel under `pins`, with default sizes.
pub fn install(pins: &Pins) -> Result<Installed> {
    install_with(pins, Sizing::default())
}

/// Load the datapath from this binary into the kernel under `pins`.
pub fn install_with(pins: &Pins, sizing: Sizing) -> Result<Installed> {
    raise_memlock_limit();
    pins.create_dirs()?;
    check_layout(pins, sizing)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps_dir())
        .map_max_entries(maps::CONNTRACK, sizing.conntrack_max)
        .load(object::bytes())
        .map_err(|e| Error::Load(Box::new(e)))?;

    let mut links_upgraded = 0;
    let mut links_removed = 0;
    // The TC programs: the pods' two and the uplink prefilter's egress half.
    for name in [PROG_FROM_POD, PROG_TO_POD, PROG_PREFILTER_OUT] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| program_error(name, "finding in the object", ProgramError::NotLoaded))?
            .try_into()
            .map_err(|e| program_error(name, "typing", e))?;
        program
            .load()
            .map_err(|e| program_error(name, "loading", e))?;

        let pin = pins.program(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => debug!(program = name, "replacing pinned program"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Pin { path: pin, source }),
        }
        program.pin(&pin).map_err(|e| Error::Pin {
            path: pin.clone(),
            source: std::io::Error::other(e),
        })?;

        for (ifindex, link_program, path) in pins.links()? {
            if link_program != name {
                continue;
            }
            match upgrade_link(program, &path) {
                Ok(()) => links_upgraded += 1,
                Err(reason) => {
                    // The interface went away (the pod was deleted): its link is defunct.
                    warn!(ifindex, program = name, %reason, "removing stale link pin");
                    std::fs::remove_file(&path).map_err(|source| Error::Pin {
                        path: path.clone(),
                        source,
                    })?;
                    links_removed += 1;
                }
            }
        }
    }
    // The uplink prefilter (XDP).
    let (upgraded, removed) = super::prefilter::install_program(&mut ebpf, pins)?;
    links_upgraded += upgraded;
    links_removed += removed;
    info!(
        root = %pins.version_dir().display(),
        links_upgraded, links_removed, "datapath installed"
    );
    Ok(Installed {
        ebpf,
        links_upgraded,
        links_removed,
    })
}

/// Refuse to reuse pinned maps whose layout differs from this binary's object. Reusing one
/// would hand the new programs keys and values of another size; the layout version folder
/// should prevent it, and this check makes a mistake there a clear error instead.
fn check_layout(pins: &Pins, sizing: Sizing) -> Result<()> {
    let object = aya_obj::Object::parse(object::bytes()).map_err(|e| Error::Object(Box::new(e)))?;
    for (name, map) in &object.maps {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|source| Error::Map {
            map: "pinned map",
            action: format!("reading {}", path.display()),
            source: Box::new(source),
        })?;
        let pinned = (info.key_size(), info.value_size(), info.max_entries());
        let mut expected = (map.key_size(), map.value_size(), map.max_entries());
        if name == maps::CONNTRACK {
            expected.2 = sizing.conntrack_max;
            if pinned.0 == expected.0 && pinned.1 == expected.1 && pinned.2 != expected.2 {
                return Err(Error::ConntrackSize {
                    pinned: pinned.2,
                    requested: expected.2,
                });
            }
        }
        if pinned != expected {
            return Err(Error::LayoutMismatch {
                map: name.clone(),
                path,
                pinned,
                expected,
            });
        }
    }
    Ok(())
}

/// Point the pinned link at `path` to `program`; the pin itself stays.
fn upgrade_link(program: &mut SchedClassifier, path: &std::path::Path) -> Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e: LinkError| e.to_string())?;
    let link =
        tc::SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
    // Dropping the link closes our descriptor only; the pin keeps the link alive.
    drop(program.take_link(id).map_err(|e| e.to_string())?);
    Ok(())
}

/// Older kernels charge BPF memory to RLIMIT_MEMLOCK; newer ones (5.11+) to the memory
/// cgroup, where raising it fails harmlessly (EPERM in some containers).
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; kernels >= 5.11 account BPF memory to the cgroup"
        );
    }
}

fn program_error(program: &'static str, action: &'static str, e: ProgramError) -> Error {
    Error::Program {
        program,
        action,
        source: Box::new(e),
    }
}
