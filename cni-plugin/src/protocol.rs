//! The messages between `palisade-cni` and the agent: one JSON object per line over a unix
//! socket, one request and one response per connection.
//!
//! Both sides check [`PROTOCOL_VERSION`] before anything else, so a plugin binary left on a
//! node by an older or newer agent fails with a message that names the skew instead of a
//! confusing decode error. Fields added later must have serde defaults so that one version
//! can read the other's messages until the number changes.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The version both sides write into every message; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the agent listens unless the network configuration names another socket.
pub const DEFAULT_SOCKET: &str = "/run/palisade/cni.sock";

/// The longest line either side reads: requests carry a handful of names and addresses, so
/// anything longer is a broken or hostile peer, not a big pod.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What the runtime asked the plugin to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// A pod sandbox got its interface: program the endpoint, answer when it is in the kernel.
    Add,
    /// The sandbox is going away: forget the endpoint (idempotent).
    Del,
    /// Is the endpoint still programmed as it should be?
    Check,
    /// Is the agent ready to serve ADD? Carries no pod.
    Status,
}

/// The pod a sandbox belongs to, from the `K8S_POD_*` keys of `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// Not every runtime passes `K8S_POD_UID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One of the pod's addresses, with the prefix length its IPAM gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodIp {
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// A question from the plugin to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub command: Command,
    /// `CNI_CONTAINERID`: the sandbox's id, the key ADD, CHECK and DEL share.
    #[serde(default)]
    pub container_id: String,
    /// `CNI_NETNS`: the sandbox's network namespace path; may be empty on DEL.
    #[serde(default)]
    pub netns: String,
    /// `CNI_IFNAME`: the interface name inside the sandbox.
    #[serde(default)]
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The pod's addresses from the previous plugin's result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<PodIp>,
    /// The host side of the pod's link (the endpoint), when the previous result names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
    /// How long the plugin waits for the answer, so the agent can answer with its own
    /// reason before the plugin gives up.
    pub timeout_ms: u64,
}

impl Request {
    /// A request of this protocol version.
    pub fn new(command: Command, timeout: Duration) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command,
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            pod: None,
            ips: Vec::new(),
            host_interface: None,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// How long the plugin waits for the answer.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }

    /// Reads a request line, refusing other protocol versions by name.
    pub fn from_line(line: &[u8]) -> Result<Request> {
        from_line(line)
    }
}

/// How the agent treats the endpoint's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    Learn,
    Monitor,
    Enforce,
}

/// What the agent put in the kernel for the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Programmed {
    /// The host-side interface the datapath is attached to.
    pub ifindex: u32,
    pub mode: EndpointMode,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Success (with what was programmed, when the command programs something) or the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        programmed: Option<Programmed>,
    },
    Error {
        message: String,
    },
}

impl Response {
    /// A success of this protocol version.
    pub fn ok(programmed: Option<Programmed>) -> Response {
        Response {
            version: PROTOCOL_VERSION,
            outcome: Outcome::Ok { programmed },
        }
    }

    /// A failure of this protocol version, with the reason people will read in the
    /// runtime's error.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            version: PROTOCOL_VERSION,
            outcome: Outcome::Error {
                message: message.into(),
            },
        }
    }

    /// The answer as a `Result`: what was programmed, or the agent's reason.
    pub fn into_result(self) -> std::result::Result<Option<Programmed>, String> {
        match self.outcome {
            Outcome::Ok { programmed } => Ok(programmed),
            Outcome::Error { message } => Err(message),
        }
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }

    /// Reads a response line, refusing other protocol versions by name.
    pub fn from_line(line: &[u8]) -> Result<Response> {
        from_line(line)
    }
}

fn to_line(message: &impl Serialize) -> Vec<u8> {
    // Serializing these types cannot fail: every field is a plain value or string.
    let mut line = serde_json::to_vec(message).expect("protocol messages serialize");
    line.push(b'\n');
    line
}

/// Checks the version first, so that a peer of another version is named as such even when
/// the rest of its message does not parse.
fn from_line<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T> {
    if line.len() > MAX_MESSAGE_BYTES {
        return Err(Error::TooLong {
            limit: MAX_MESSAGE_BYTES,
        });
    }
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let Versioned { version } = serde_json::from_slice(line).map_err(Error::Decode)?;
    if version != PROTOCOL_VERSION {
        return Err(Error::ProtocolVersion {
            peer: version,
            ours: PROTOCOL_VERSION,
        });
    }
    serde_json::from_slice(line).map_err(Error::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_with_every_field() {
        let mut request = Request::new(Command::Add, Duration::from_secs(10));
        request.container_id = "abc".into();
        request.netns = "/var/run/netns/cni-1".into();
        request.ifname = "eth0".into();
        request.pod = Some(PodRef {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: Some("u-1".into()),
        });
        request.ips = vec![PodIp {
            address: "fd00::5".parse().unwrap(),
            prefix_len: 64,
        }];
        request.host_interface = Some("veth1234".into());
        let line = request.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(Request::from_line(&line).unwrap(), request);
        assert_eq!(request.timeout(), Duration::from_secs(10));
    }

    #[test]
    fn response_wire_shape_is_tagged_by_status() {
        let ok = Response::ok(Some(Programmed {
            ifindex: 7,
            mode: EndpointMode::Enforce,
        }));
        let value: serde_json::Value = serde_json::from_slice(&ok.to_line()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"version": 1, "status": "ok",
                               "programmed": {"ifindex": 7, "mode": "enforce"}})
        );
        let error = Response::error("no such interface");
        let value: serde_json::Value = serde_json::from_slice(&error.to_line()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"version": 1, "status": "error", "message": "no such interface"})
        );
        assert_eq!(
            Response::from_line(&error.to_line()).unwrap().into_result(),
            Err("no such interface".to_string())
        );
    }

    #[test]
    fn another_version_is_named_even_when_the_rest_does_not_parse() {
        let err = Request::from_line(br#"{"version": 2, "command": "teleport"}"#).unwrap_err();
        assert!(
            matches!(err, Error::ProtocolVersion { peer: 2, ours: 1 }),
            "{err:?}"
        );
        let err = Response::from_line(br#"{"status": "ok"}"#).unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err:?}");
    }

    #[test]
    fn oversized_lines_are_refused_before_parsing() {
        let line = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            Request::from_line(&line),
            Err(Error::TooLong { .. })
        ));
    }
}
