//! Command-line argument types shared by `palisade`'s commands and the lab's.

use clap::ValueEnum;
use model::{Mode, Protocol, netpol::evaluate::DefaultAction, wire::Format};

/// An endpoint mode, as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Learn,
    Monitor,
    Enforce,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Learn => Self::Learn,
            ModeArg::Monitor => Self::Monitor,
            ModeArg::Enforce => Self::Enforce,
        }
    }
}

/// What pods no policy selects get, as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DefaultArg {
    /// Kubernetes: everything passes.
    Allow,
    /// Zero trust: nothing but the pod's own node passes.
    Deny,
}

impl From<DefaultArg> for DefaultAction {
    fn from(d: DefaultArg) -> Self {
        match d {
            DefaultArg::Allow => Self::Allow,
            DefaultArg::Deny => Self::Deny,
        }
    }
}

/// How the agent writes flow records to its `--output` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormatArg {
    /// One JSON object per line.
    Json,
    /// Length-delimited protobuf (`palisade.flow.v1.FlowRecord`, see `model::wire`).
    Protobuf,
}

impl From<OutputFormatArg> for Format {
    fn from(f: OutputFormatArg) -> Self {
        match f {
            OutputFormatArg::Json => Self::JsonLines,
            OutputFormatArg::Protobuf => Self::Protobuf,
        }
    }
}

/// An IP protocol by name: tcp, udp, sctp, icmp, icmpv6 (any case).
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        "icmp" => Ok(Protocol::Icmp),
        "icmpv6" => Ok(Protocol::Icmpv6),
        other => Err(format!(
            "unknown protocol {other:?} (tcp, udp, sctp, icmp, icmpv6)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_in_any_case() {
        assert_eq!(parse_protocol("TCP"), Ok(Protocol::Tcp));
        assert_eq!(parse_protocol("icmpv6"), Ok(Protocol::Icmpv6));
        assert!(parse_protocol("gre").unwrap_err().contains("gre"));
    }
}
