//! Entering named network namespaces (`ip netns` style, under `/run/netns`).
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so work for another namespace runs
//! on a fresh thread that enters it and ends with it: the caller's thread never moves. The
//! agent, which lives in one namespace for good, enters it once before it starts any thread.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// Where `ip netns add` puts its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// The handle of the named namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Does the named namespace exist?
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Move the calling thread into the named namespace. Threads it spawns afterwards inherit it.
pub fn enter(name: &str) -> Result<()> {
    let handle = File::open(path(name)).map_err(|source| Error::Netns {
        netns: name.to_owned(),
        source,
    })?;
    setns(&handle, CloneFlags::CLONE_NEWNET).map_err(|errno| Error::Netns {
        netns: name.to_owned(),
        source: errno.into(),
    })
}

/// Run `f` on a new thread inside the named namespace and return its result.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(name)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
