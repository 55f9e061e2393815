//! Errors of the lab, each naming the file, namespace, interface, process or command it
//! concerns.

use std::{path::PathBuf, process::ExitStatus, time::Duration};

use super::topology::Problem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The YAML did not parse into the schema (syntax, unknown field, bad value); serde_yaml's
    /// message, the source, names the field path and repeats the position.
    #[error("{file}:{line}:{column}: invalid topology")]
    Yaml {
        file: String,
        line: usize,
        column: usize,
        #[source]
        source: serde_yaml::Error,
    },

    /// The topology parsed but is inconsistent (duplicates, undeclared namespaces, ...).
    #[error("{file}:{line}:{column}: {field}: {problem}")]
    Topology {
        file: String,
        line: usize,
        column: usize,
        /// Path of the offending value, e.g. `services[1].selector`.
        field: String,
        problem: Problem,
    },

    #[error("invalid lab name {name:?}: {reason}")]
    LabName { name: String, reason: &'static str },

    #[error("lab {name:?} is not up (no state in {state_dir}); start it with `palisade lab up`")]
    NotUp { name: String, state_dir: PathBuf },

    #[error("lab {name:?} is already up; run `palisade lab down` first")]
    AlreadyUp { name: String },

    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("writing pod names to {path}")]
    Names {
        path: PathBuf,
        #[source]
        source: crate::Error,
    },

    #[error("lab state {path} is unreadable")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// A command (`ip`, `nft`) ran and failed; `command` includes its namespace.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    #[error("network namespace {netns:?}")]
    Netns {
        netns: String,
        #[source]
        source: crate::Error,
    },

    #[error("setting {sysctl} in network namespace {netns:?}")]
    Sysctl {
        netns: String,
        sysctl: String,
        #[source]
        source: std::io::Error,
    },

    #[error("datapath: {action} {interface:?}")]
    Datapath {
        action: &'static str,
        interface: String,
        #[source]
        source: crate::Error,
    },

    #[error("datapath: removing the pins under {root}")]
    Uninstall {
        root: PathBuf,
        #[source]
        source: crate::Error,
    },

    /// The log's tail is copied into the error: a failed `up` removes the log with the lab.
    #[error(
        "the lab's {what} (pid {pid}) exited before it was ready; its log ({log}) ended:\n{log_tail}"
    )]
    Exited {
        what: &'static str,
        pid: i32,
        log: PathBuf,
        log_tail: String,
    },

    #[error(
        "the lab's {what} (pid {pid}) was not ready after {timeout:?} (no {ready_file}); \
         its log ({log}) ended:\n{log_tail}"
    )]
    NotReady {
        what: &'static str,
        pid: i32,
        timeout: Duration,
        ready_file: PathBuf,
        log: PathBuf,
        log_tail: String,
    },

    #[error("stopping the lab's {what} (pid {pid})")]
    Stop {
        what: &'static str,
        pid: i32,
        #[source]
        source: nix::Error,
    },

    #[error("{what} {name:?} is not in lab {lab:?} (known: {known})")]
    Unknown {
        what: &'static str,
        name: String,
        lab: String,
        known: String,
    },

    #[error("workload {workload} is a {kind}, which cannot be scaled: {reason}")]
    CannotScale {
        workload: String,
        kind: &'static str,
        reason: &'static str,
    },

    #[error("{count} replicas is too many for {workload} (at most {max})")]
    TooManyReplicas {
        workload: String,
        count: u32,
        max: u32,
    },

    #[error("the lab ran out of {what} ({range})")]
    Exhausted {
        what: &'static str,
        range: &'static str,
    },

    #[error("{what} {name:?} has no IPv{family} address")]
    NoAddress {
        what: &'static str,
        name: String,
        family: u8,
    },

    /// A NetworkPolicy file the API server would refuse (the source names file, document,
    /// line and field).
    #[error("NetworkPolicy not applied; nothing changed")]
    PolicyFile {
        #[source]
        source: model::netpol::load::LoadError,
    },

    #[error("{file}: document {document}: {message}")]
    Policy {
        file: PathBuf,
        document: usize,
        message: String,
    },

    #[error("invalid label change {arg:?}: {reason}")]
    Label { arg: String, reason: String },

    #[error("lab {name:?} runs without the agent (up --no-agent): no {what}")]
    NoAgent { name: String, what: &'static str },

    /// An attack (`lab::attacks`) asked for what it must not do: a target outside the lab,
    /// a spoofed source whose echoes would leave it, sizes out of bounds.
    #[error("{attack} from {pod}: {problem}")]
    Attack {
        attack: &'static str,
        pod: String,
        problem: String,
    },

    #[error("binding {protocol}/{port} in network namespace {netns:?}")]
    Bind {
        netns: String,
        protocol: &'static str,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
