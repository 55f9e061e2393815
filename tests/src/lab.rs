//! Labs for end-to-end tests: each under a name unique to the test, torn down when the
//! test ends, however it ends.

use std::{
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
};

use enforcer::lab::{self, Lab, Topology, UpOptions};

/// The `palisade` binary the lab runs its server (and agent) from: `PALISADE_BIN` when set
/// (to test another build), else the one next to the test binary.
pub fn program() -> PathBuf {
    std::env::var_os("PALISADE_BIN").map_or_else(crate::palisade_bin, PathBuf::from)
}

/// A lab that is torn down when dropped (also when the test panics).
pub struct TestLab {
    lab: Lab,
}

impl TestLab {
    /// Bring up `topology` (YAML) under a fresh name, without the agent.
    pub fn up(topology: &str) -> Self {
        Self::up_with(topology, |_| {})
    }

    /// Same, with the options adjusted (e.g. `agent = true`).
    pub fn up_with(topology: &str, configure: impl FnOnce(&mut UpOptions)) -> Self {
        let topology = Topology::parse(topology, "test topology").expect("a valid topology");
        let mut options = UpOptions::new(program());
        options.agent = false;
        configure(&mut options);
        let name = crate::unique_id();
        let lab = Lab::up(&name, &topology, &options)
            .unwrap_or_else(|e| panic!("lab {name} up: {}", chain(&e)));
        Self { lab }
    }
}

impl Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = lab::down(self.lab.name()) {
            eprintln!("tearing down lab {}: {}", self.lab.name(), chain(&e));
        }
    }
}

/// An error with its causes, for assertion messages.
pub use enforcer::error::chain;

/// What the lab `name` left on the machine: namespaces, run files, pins, processes.
pub fn leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let prefix = format!("palisade-{name}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let netns = e.file_name().to_string_lossy().into_owned();
            if netns.starts_with(&prefix) {
                found.push(format!("netns {netns}"));
            }
        }
    }
    let run = Path::new(enforcer::paths::LAB_RUN_DIR);
    for path in [
        run.join(name),
        run.join(format!("{name}.lock")),
        PathBuf::from(format!("{}-{name}", enforcer::paths::BPFFS_ROOT)),
    ] {
        if path.exists() {
            found.push(path.display().to_string());
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let argv: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_server = argv
                .windows(4)
                .any(|w| w == ["lab", "--name", name, "serve"]);
            let is_agent = argv
                .iter()
                .any(|a| a.starts_with(&run.join(name).display().to_string()));
            if is_server || is_agent {
                found.push(format!(
                    "process {}: {}",
                    e.file_name().to_string_lossy(),
                    argv.join(" ")
                ));
            }
        }
    }
    found
}
