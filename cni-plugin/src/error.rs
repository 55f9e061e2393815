//! The plugin library's error type, and the CNI error code each error is reported with.

use std::path::PathBuf;
use std::time::Duration;

/// CNI error codes (spec section "Error"); 0-99 are the spec's, 100 and up are ours.
pub mod code {
    /// The network configuration's `cniVersion` is not one this plugin speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A required `CNI_*` environment variable is missing or malformed.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Reading stdin (or another local I/O step) failed.
    pub const IO_FAILURE: u32 = 5;
    /// The network configuration is not valid JSON of the expected shape.
    pub const DECODE_FAILURE: u32 = 6;
    /// The network configuration is valid JSON but not a usable configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// STATUS: the plugin cannot serve ADD right now (the agent is not reachable).
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent's socket could not be connected to (agent not running, wrong path).
    pub const AGENT_UNREACHABLE: u32 = 100;
    /// The agent did not answer within the configured timeout.
    pub const AGENT_TIMEOUT: u32 = 101;
    /// The agent answered with an error: it could not program the endpoint.
    pub const AGENT_REFUSED: u32 = 102;
    /// The conversation with the agent broke (I/O error, bad answer, version skew).
    pub const AGENT_PROTOCOL: u32 = 103;
}

/// Everything that can go wrong in the plugin, its client or its installer, with the object
/// (variable, socket, file) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("environment variable {name} is missing or empty")]
    MissingEnv { name: &'static str },

    #[error("CNI_COMMAND {command:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION")]
    UnknownCommand { command: String },

    #[error("CNI_ARGS entry {entry:?} is not KEY=VALUE")]
    BadCniArgs { entry: String },

    #[error("reading the network configuration from stdin")]
    ReadStdin(#[source] std::io::Error),

    #[error("decoding the network configuration")]
    DecodeConfig(#[source] serde_json::Error),

    #[error("cniVersion {version:?} is not supported (this plugin supports {supported})")]
    IncompatibleVersion { version: String, supported: String },

    #[error("{command} is not defined for cniVersion {version} (it needs {needs} or later)")]
    CommandNotInVersion {
        command: &'static str,
        version: String,
        needs: &'static str,
    },

    #[error(
        "palisade-cni is a chained plugin: {command} needs the prevResult of the plugin \
         before it in the conflist (put palisade-cni after the plugin that creates the pod's \
         interface)"
    )]
    NotChained { command: &'static str },

    #[error("invalid {field} {value:?}: {reason}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        reason: String,
    },

    #[error("prevResult: {reason}")]
    BadPrevResult { reason: String },

    #[error(
        "the Palisade agent's socket {socket} is not reachable (is the agent running on this node?)"
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the Palisade agent on {socket} did not answer within {timeout:?} ({stage})")]
    Timeout {
        socket: PathBuf,
        timeout: Duration,
        stage: &'static str,
    },

    #[error("talking to the Palisade agent on {socket}")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the Palisade agent on {socket} closed the connection without answering")]
    Closed { socket: PathBuf },

    #[error("a message longer than {limit} bytes")]
    TooLong { limit: usize },

    #[error("decoding a protocol message")]
    Decode(#[source] serde_json::Error),

    #[error(
        "the other side speaks Palisade CNI protocol version {peer}, this side speaks \
         {ours}: run the same Palisade version for the agent and its CNI plugin"
    )]
    ProtocolVersion { peer: u32, ours: u32 },

    #[error("the Palisade agent could not program the endpoint: {reason}")]
    Refused { reason: String },

    #[error("{path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid CNI network configuration")]
    DecodeConflist {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("no CNI network configuration (*.conflist, *.conf, *.json) in {dir} yet")]
    NoNetworkConfig { dir: PathBuf },

    #[error(
        "{path} is the network configuration the runtime uses, but it is not a list of \
         plugins: chaining needs a .conflist with a \"plugins\" array"
    )]
    NotAConflist { path: PathBuf },

    #[error("{reason}")]
    Usage { reason: String },
}

impl Error {
    /// The CNI error code this error is reported with.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } | Error::CommandNotInVersion { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            Error::MissingEnv { .. } | Error::UnknownCommand { .. } | Error::BadCniArgs { .. } => {
                code::INVALID_ENVIRONMENT
            }
            Error::ReadStdin(_) | Error::File { .. } => code::IO_FAILURE,
            Error::DecodeConfig(_) | Error::DecodeConflist { .. } => code::DECODE_FAILURE,
            Error::NotChained { .. }
            | Error::InvalidConfig { .. }
            | Error::BadPrevResult { .. }
            | Error::NoNetworkConfig { .. }
            | Error::NotAConflist { .. }
            | Error::Usage { .. } => code::INVALID_CONFIG,
            Error::Connect { .. } => code::AGENT_UNREACHABLE,
            Error::Timeout { .. } => code::AGENT_TIMEOUT,
            Error::Refused { .. } => code::AGENT_REFUSED,
            Error::Io { .. }
            | Error::Closed { .. }
            | Error::TooLong { .. }
            | Error::Decode(_)
            | Error::ProtocolVersion { .. } => code::AGENT_PROTOCOL,
        }
    }

    /// Whether the agent could not be asked at all (down, hung, or speaking nonsense), as
    /// opposed to having answered with a refusal: `failurePolicy: Ignore` forgives only these.
    pub fn is_unavailability(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Timeout { .. }
                | Error::Io { .. }
                | Error::Closed { .. }
                | Error::TooLong { .. }
                | Error::Decode(_)
                | Error::ProtocolVersion { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line (`a: b: c`), as people should read it.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
