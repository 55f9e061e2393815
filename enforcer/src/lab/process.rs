//! The lab's background processes (its server and the agent): started detached, found again
//! by PID, and stopped only after `/proc/<pid>/cmdline` shows they are still what the lab
//! started, so a recycled PID is never signalled.

use std::{
    fs::OpenOptions,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// A process the lab started: its PID and the exact command line it was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: i32,
    pub argv: Vec<String>,
}

impl Process {
    /// Start `argv` in its own session (no controlling terminal, so a Ctrl-C meant for the
    /// caller does not reach it), stdin from /dev/null, stdout and stderr appended to `log`.
    pub fn spawn(argv: Vec<String>, log: &Path) -> Result<Self> {
        let (program, args) = argv.split_first().expect("a command line has a program");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
        }
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = i32::try_from(child.id()).expect("PIDs fit in i32");
        // Reap it when it exits, so a long-lived caller (a test process) collects no
        // zombies. A short-lived caller exits first and init adopts the process.
        let _ = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || child.wait());
        Ok(Self { pid, argv })
    }

    /// Is it running, and still the process the lab started? (A zombie has no command line.)
    pub fn is_running(&self) -> bool {
        command_line(self.pid).is_some_and(|argv| argv == self.argv)
    }

    /// SIGTERM, then SIGKILL if it has not exited after a grace period. Not running is fine.
    pub fn stop(&self, what: &'static str) -> Result<()> {
        for (signal, wait) in [(Signal::SIGTERM, STOP_GRACE), (Signal::SIGKILL, STOP_GRACE)] {
            if !self.is_running() {
                return Ok(());
            }
            match kill(Pid::from_raw(self.pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    return Err(Error::Stop {
                        what,
                        pid: self.pid,
                        source,
                    });
                }
            }
            let deadline = Instant::now() + wait;
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        if self.is_running() {
            return Err(Error::Stop {
                what,
                pid: self.pid,
                source: Errno::ETIMEDOUT,
            });
        }
        Ok(())
    }

    /// Wait until `ready()` holds, failing early (with the end of its log) if it exits.
    /// Only for a process this caller just started: it checks that the PID lives, not what
    /// it runs (its command line is briefly unreadable while it execs).
    pub fn wait_ready(
        &self,
        what: &'static str,
        ready_file: &Path,
        ready: impl Fn() -> bool,
        timeout: Duration,
        log: &Path,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if !is_alive(self.pid) {
                return Err(Error::Exited {
                    what,
                    pid: self.pid,
                    log: log.to_owned(),
                    log_tail: tail(log, 20),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what,
                    pid: self.pid,
                    timeout,
                    ready_file: ready_file.to_owned(),
                    log: log.to_owned(),
                    log_tail: tail(log, 20),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Running processes whose command line satisfies `matches`: how a lab finds the processes a
/// crashed run started before it could record their PIDs. Callers match on markers only the
/// lab puts on command lines (its name after `lab --name`, its state folder).
pub fn find(matches: impl Fn(&[String]) -> bool) -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let argv = command_line(pid)?;
            matches(&argv).then_some(Process { pid, argv })
        })
        .collect()
}

/// Does the PID exist and has it not exited (a zombie has)?
fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name in parentheses, which may itself hold ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| !matches!(state, "Z" | "X"))
}

fn command_line(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8(raw).ok()?;
    Some(
        text.trim_end_matches('\0')
            .split('\0')
            .map(str::to_owned)
            .collect(),
    )
}

/// The last `lines` lines of a log, for error messages.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Remove a ready marker a previous process left, before starting the next one.
pub fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Used by the server to announce it is serving: its PID, so a marker left by a previous
/// server is never taken for the new one's.
pub fn write_ready(path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, std::process::id().to_string()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Does the ready marker at `path` name `pid`?
pub fn ready_for(path: &Path, pid: i32) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_is_recognised_by_its_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let p = Process::spawn(vec!["sleep".into(), "30".into()], &log).unwrap();
        // The command line appears once exec has happened.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.is_running() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert!(p.is_running());
        assert!(find(|argv| argv == p.argv).iter().any(|q| q.pid == p.pid));
        let impostor = Process {
            pid: p.pid,
            argv: vec!["sleep".into(), "31".into()],
        };
        assert!(
            !impostor.is_running(),
            "another command line is another process"
        );
        p.stop("test").unwrap();
        assert!(!p.is_running());
        p.stop("test").unwrap();
    }

    #[test]
    fn an_early_exit_reports_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let p = Process::spawn(
            vec!["sh".into(), "-c".into(), "echo boom >&2; exit 3".into()],
            &log,
        )
        .unwrap();
        let ready = dir.path().join("ready");
        let err = p
            .wait_ready("test", &ready, || false, Duration::from_secs(5), &log)
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn ready_markers_name_their_process() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("server.ready");
        assert!(!ready_for(&marker, 1));
        write_ready(&marker).unwrap();
        assert!(ready_for(&marker, std::process::id() as i32));
        assert!(!ready_for(&marker, 1));
        remove_stale(&marker).unwrap();
        remove_stale(&marker).unwrap();
        assert!(!marker.exists());
    }
}
