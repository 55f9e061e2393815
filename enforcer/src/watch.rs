//! Waiting for a file, or the policy files of a folder, to change, with inotify on the
//! folder: editors and `kubectl`-style tools replace files by renaming a new one over them,
//! which a watch on the file itself would miss.

use std::{
    ffi::OsString,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::{Interest, unix::AsyncFd};

use crate::error::{Error, Result};

/// A watched file or folder.
pub struct FileWatch {
    path: PathBuf,
    /// The file watched in its folder; `None`: the folder's policy files.
    name: Option<OsString>,
    inotify: AsyncFd<InotifyFd>,
}

/// The inotify instance as the raw descriptor Tokio polls.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl FileWatch {
    /// Watch `path` (which need not exist yet; its folder must). Needs a Tokio runtime.
    pub fn new(path: &Path) -> Result<Self> {
        let io = |source: std::io::Error| Error::Io {
            path: path.to_owned(),
            source,
        };
        let name = path
            .file_name()
            .ok_or_else(|| io(std::io::Error::other("not a file path")))?
            .to_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Self::watching(path, dir, Some(name))
    }

    /// Watch the policy files of folder `dir` (see `model::netpol::load::is_policy_file`).
    pub fn dir(dir: &Path) -> Result<Self> {
        Self::watching(dir, dir, None)
    }

    fn watching(path: &Path, dir: &Path, name: Option<OsString>) -> Result<Self> {
        let io = |source: std::io::Error| Error::Io {
            path: path.to_owned(),
            source,
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io(e.into()))?;
        let changes = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE;
        inotify.add_watch(dir, changes).map_err(|e| io(e.into()))?;
        // SAFETY: the AsyncFd owns the inotify instance, so the descriptor stays open and
        // the same for the AsyncFd's whole life.
        let inotify =
            unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
                .map_err(|e| io(e.into()))?;
        Ok(Self {
            path: path.to_owned(),
            name,
            inotify,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolve once the file was written, replaced or removed since the last call.
    pub async fn changed(&mut self) -> Result<()> {
        loop {
            let mut ready = self.inotify.readable().await.map_err(|e| self.error(e))?;
            match ready.get_inner().0.read_events() {
                Ok(events) => {
                    if events
                        .iter()
                        .any(|e| e.name.as_deref().is_some_and(|n| self.concerns(n)))
                    {
                        return Ok(());
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(self.error(e.into())),
            }
        }
    }

    /// Is a change to the folder entry `name` a change of what is watched?
    fn concerns(&self, name: &std::ffi::OsStr) -> bool {
        match &self.name {
            Some(watched) => name == watched,
            None => model::netpol::load::is_policy_file(Path::new(name)),
        }
    }

    fn error(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn changed_within(watch: &mut FileWatch, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), watch.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn sees_writes_and_renames_of_its_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        let mut watch = FileWatch::new(&path).unwrap();
        std::fs::write(dir.path().join("other.yaml"), "x").unwrap();
        assert!(!changed_within(&mut watch, 100).await);
        std::fs::write(&path, "a").unwrap();
        assert!(changed_within(&mut watch, 2000).await);
        let staged = dir.path().join(".policy.yaml.new");
        std::fs::write(&staged, "b").unwrap();
        // The staged file's own write is not the watched file's.
        assert!(!changed_within(&mut watch, 100).await);
        std::fs::rename(&staged, &path).unwrap();
        assert!(changed_within(&mut watch, 2000).await);
    }

    #[tokio::test]
    async fn a_folder_watch_sees_its_policy_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = FileWatch::dir(dir.path()).unwrap();
        std::fs::write(dir.path().join(".web.yaml.swp"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert!(!changed_within(&mut watch, 100).await);
        std::fs::write(dir.path().join("web.yaml"), "x").unwrap();
        assert!(changed_within(&mut watch, 2000).await);
        std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
        assert!(changed_within(&mut watch, 2000).await);
    }
}
