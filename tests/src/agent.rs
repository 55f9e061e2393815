//! The `palisade agent` as a child process of a test, reading its flow records back.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use model::FlowRecord;

/// A running agent; stopped with SIGTERM (or killed with [`Agent::kill`]) and reaped on drop.
pub struct Agent {
    child: Option<Child>,
    pub output: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Start the agent in `netns` with pins under `bpffs_root`, writing flows to `dir` and
    /// waiting (bounded) until it reports ready.
    pub fn start(netns: &str, bpffs_root: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        let output = dir.join("flows.jsonl");
        let ready = dir.join("agent.ready");
        let log = dir.join("agent.log");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(crate::palisade_bin())
            .arg("agent")
            .arg("--netns")
            .arg(netns)
            .arg("--bpffs-root")
            .arg(bpffs_root)
            .arg("--output")
            .arg(&output)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning palisade agent")?;
        let mut agent = Self {
            child: Some(child),
            output,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "agent exited ({status}) before ready:\n{}",
                    agent.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 20s:\n{}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the agent gets no chance to clean anything up, as in a crash.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every flow record written so far.
    pub fn records(&self) -> Vec<FlowRecord> {
        read_records(&self.output)
    }

    /// Poll the records until `done` holds for them (or `timeout`), then return them.
    pub fn wait_records(
        &self,
        timeout: Duration,
        done: impl Fn(&[FlowRecord]) -> bool,
    ) -> Vec<FlowRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if done(&records) || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child);
        }
    }
}

/// Stop a process this test started: SIGTERM by its PID, SIGKILL after 5 s; reaped.
pub fn stop(mut child: std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Parse a JSON-lines flow file (a missing file has no records). A last line without its
/// newline is still being written and is left for the next read.
pub fn read_records(path: &Path) -> Vec<FlowRecord> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l:?}: {e}")))
        .collect()
}
