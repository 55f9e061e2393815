//! The bpffs layout. The version folder changes whenever the ABI in `enforcer-common` changes
//! incompatibly, so an upgraded agent never reads maps laid out by an older one.
//!
//! ```text
//! <root>/v1/maps/<MAP>                  every map, pinned by name
//! <root>/v1/progs/<program>             from_pod, to_pod (pod veths); prefilter (XDP) and
//!                                       prefilter_out (TC egress) for node uplinks
//! <root>/v1/links/<ifindex>_<program>   one link per interface and program
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Version of the pinned layout and map ABI.
pub const LAYOUT_VERSION: &str = "v1";

/// bpffs magic number (`statfs` f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where bpffs is conventionally mounted; mounted there when missing (as Cilium does).
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder given by the user (holds the version folders).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_dir(&self) -> PathBuf {
        self.root.join(LAYOUT_VERSION)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.version_dir().join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.version_dir().join("progs")
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.version_dir().join("links")
    }

    pub fn link(&self, ifindex: u32, program: &str) -> PathBuf {
        // bpffs refuses names with dots (EPERM): they are reserved for the kernel.
        self.links_dir().join(format!("{ifindex}_{program}"))
    }

    /// Is a datapath installed here (programs pinned)?
    pub fn is_installed(&self) -> bool {
        self.program(enforcer_common::maps::PROG_FROM_POD).exists()
            && self.program(enforcer_common::maps::PROG_TO_POD).exists()
    }

    pub fn require_installed(&self) -> Result<()> {
        if self.is_installed() {
            Ok(())
        } else {
            Err(Error::NotInstalled {
                path: self.version_dir(),
            })
        }
    }

    /// Create the folders on a bpffs, mounting bpffs at [`BPFFS_MOUNT`] if the root is
    /// under it and nothing is mounted there yet.
    pub fn create_dirs(&self) -> Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent)? && parent.starts_with(BPFFS_MOUNT) {
            mount_bpffs()?;
        }
        if !is_bpffs(parent)? {
            return Err(Error::Pin {
                path: parent.to_owned(),
                source: std::io::Error::other("not on a bpffs (mount -t bpf bpf /sys/fs/bpf)"),
            });
        }
        for dir in [self.maps_dir(), self.progs_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::Pin { path: dir, source })?;
        }
        Ok(())
    }

    /// `(ifindex, program)` of every pinned link.
    pub fn links(&self) -> Result<Vec<(u32, String, PathBuf)>> {
        let dir = self.links_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Pin { path: dir, source }),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Pin {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some((ifindex, program)) = name.to_str().and_then(|n| n.split_once('_')) else {
                continue;
            };
            if let Ok(ifindex) = ifindex.parse() {
                links.push((ifindex, program.to_owned(), entry.path()));
            }
        }
        links.sort();
        Ok(links)
    }
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let fs = nix::sys::statfs::statfs(path).map_err(|errno| Error::Pin {
        path: path.to_owned(),
        source: errno.into(),
    })?;
    Ok(fs.filesystem_type().0 == BPF_FS_MAGIC)
}

fn mount_bpffs() -> Result<()> {
    use nix::mount::{MsFlags, mount};
    tracing::info!(path = BPFFS_MOUNT, "mounting bpffs");
    mount(
        Some("bpf"),
        BPFFS_MOUNT,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|errno| Error::Pin {
        path: BPFFS_MOUNT.into(),
        source: errno.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_versioned() {
        let pins = Pins::new("/sys/fs/bpf/palisade-t1");
        assert_eq!(
            pins.map("CONNTRACK"),
            Path::new("/sys/fs/bpf/palisade-t1/v1/maps/CONNTRACK")
        );
        assert_eq!(
            pins.link(12, "from_pod"),
            Path::new("/sys/fs/bpf/palisade-t1/v1/links/12_from_pod")
        );
    }

    #[test]
    fn links_of_a_missing_folder_are_none() {
        let pins = Pins::new("/nonexistent/palisade");
        assert!(pins.links().unwrap().is_empty());
        assert!(!pins.is_installed());
    }

    #[test]
    fn links_are_read_back_from_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::new(dir.path());
        std::fs::create_dir_all(pins.links_dir()).unwrap();
        for name in ["7_to_pod", "7_from_pod", "stray", "x_from_pod"] {
            std::fs::write(pins.links_dir().join(name), b"").unwrap();
        }
        let links: Vec<_> = pins
            .links()
            .unwrap()
            .into_iter()
            .map(|(i, p, _)| (i, p))
            .collect();
        assert_eq!(links, [(7, "from_pod".into()), (7, "to_pod".into())]);
    }
}
