//! Errors of the agent library.

use std::path::PathBuf;

/// Everything that can go wrong in the agent library, with the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot enter network namespace {netns:?}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },

    #[error("interface {interface:?} not found")]
    NoSuchInterface {
        interface: String,
        #[source]
        source: std::io::Error,
    },

    #[error("loading the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),

    #[error("eBPF program {program}: {action}")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("attaching {program} to {interface:?} (ifindex {ifindex})")]
    Attach {
        program: &'static str,
        interface: String,
        ifindex: u32,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("map {map}: {action}")]
    Map {
        map: &'static str,
        action: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error("bpffs pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "pinned map {map} at {path} has another layout than this agent's datapath \
         (key/value/entries pinned {pinned:?}, expected {expected:?}): the pinned datapath \
         comes from an incompatible version; remove it with `palisade uninstall` (enforcement \
         is off until the agent installs again) or keep running the version that pinned it"
    )]
    LayoutMismatch {
        map: String,
        path: PathBuf,
        pinned: (u32, u32, u32),
        expected: (u32, u32, u32),
    },

    #[error(
        "CONNTRACK is pinned with {pinned} entries and {requested} were asked for: a pinned \
         table keeps its size; start the agent with --conntrack-max {pinned}, or resize by \
         re-installing (`palisade uninstall`, which lifts enforcement until the agent installs \
         again)"
    )]
    ConntrackSize { pinned: u32, requested: u32 },

    #[error("policy: {0}")]
    Policy(String),

    #[error("parsing the embedded eBPF object")]
    Object(#[source] Box<aya_obj::ParseError>),

    #[error(
        "another process writes Palisade's policy maps ({path} is locked): while an agent \
         manages policy (`palisade agent --policy`), change the policy through its file"
    )]
    PolicyLocked { path: PathBuf },

    #[error("no Palisade datapath is installed under {path} (start `palisade agent` first)")]
    NotInstalled { path: PathBuf },

    #[error("interface {interface:?} is not a Palisade endpoint")]
    NotAnEndpoint { interface: String },

    #[error("invalid rules for the endpoint on ifindex {ifindex}")]
    Rules {
        ifindex: u32,
        #[source]
        source: model::rules::RuleError,
    },

    #[error("attaching needs TCX (Linux >= 6.6); this kernel is {kernel}")]
    TcxUnsupported { kernel: String },

    #[error("the Kubernetes API server")]
    Kubernetes(#[source] Box<k8s::error::Error>),

    #[error("the node's links and routes (netlink)")]
    Netlink(#[source] Box<crate::endpoints::Error>),

    #[error("the metrics and health endpoint")]
    Http(#[source] Box<crate::http::HttpError>),

    #[error("the learner's store")]
    Learner(#[source] Box<learner::store::Error>),

    #[error("the flow collector (gRPC)")]
    Grpc(#[source] Box<dyn std::error::Error + Send + Sync>),

    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
