//! The node policy file an agent enforces: applied at start and again whenever the file
//! changes. A file that does not load, resolve or compile is reported with what is wrong
//! and where, and changes nothing: the last good policy stays enforced.

use std::{path::Path, time::Instant};

use tracing::{info, warn};

use crate::{
    datapath::{
        Pins,
        attach::ifindex_of,
        writer::{Changes, PinnedWriter},
    },
    error::Result,
    policy_file::NodePolicy,
    watch::FileWatch,
};

pub struct PolicySource {
    writer: PinnedWriter,
    watch: FileWatch,
}

impl PolicySource {
    /// Become the policy maps' only writer (see [`PinnedWriter::open`]) and watch `path`.
    pub fn open(pins: &Pins, path: &Path) -> Result<Self> {
        Ok(Self {
            writer: PinnedWriter::open(pins)?,
            watch: FileWatch::new(path)?,
        })
    }

    /// Resolve when the file changed.
    pub async fn changed(&mut self) -> Result<()> {
        self.watch.changed().await
    }

    /// Enforce what the file says now; report the outcome either way.
    pub fn reload(&mut self) -> Option<Changes> {
        let started = Instant::now();
        let path = self.watch.path().to_owned();
        let applied = NodePolicy::load(&path)
            .and_then(|policy| policy.resolve(ifindex_of))
            .and_then(|desired| self.writer.apply(&desired));
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match applied {
            Ok(changes) => {
                info!(
                    file = %path.display(),
                    endpoints = changes.endpoints,
                    writes = changes.writes,
                    deletes = changes.deletes,
                    ms = format!("{ms:.1}"),
                    "policy applied"
                );
                Some(changes)
            }
            Err(e) => {
                warn!(
                    error = %error_chain(&e),
                    "policy not applied; the last good policy stays enforced"
                );
                None
            }
        }
    }
}

/// An error and its causes on one line (`a: b: c`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
