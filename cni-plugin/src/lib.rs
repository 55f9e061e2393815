//! `palisade-cni`: a chained CNI plugin whose ADD returns only once the Palisade agent on
//! the node has programmed the new pod's endpoint, so a pod's identity and policy are in the
//! kernel before its first packet; and the protocol the plugin and the agent speak.
//!
//! The plugin runs once per pod sandbox on every node, so it is small and synchronous: std,
//! serde and thiserror, no async runtime. The agent's side of the socket lives in the
//! `enforcer` crate and shares [`protocol`]'s types.
//!
//! # Layout
//! - [`protocol`]: the versioned JSON-lines messages between plugin and agent.
//! - [`client`]: the blocking client, one exchange within one deadline.
//! - [`env`]: the `CNI_*` environment and `CNI_ARGS` (the pod's namespace, name and uid).
//! - [`config`]: the network configuration on stdin and the plugin's own fields.
//! - [`prev_result`]: the pod's addresses and host interface from the previous result.
//! - [`plugin`]: one invocation (ADD, DEL, CHECK, STATUS, GC, VERSION) to stdout and exit code.
//! - [`output`]: the CNI error object and the VERSION answer.
//! - [`install`]: `palisade-cni install`/`uninstall`: binary and conflist, atomically.
//! - [`error`]: the error type and the CNI code of each error.
pub mod client;
pub mod config;
pub mod env;
pub mod error;
pub mod install;
pub mod output;
pub mod plugin;
pub mod prev_result;
pub mod protocol;

pub use error::{Error, Result};
pub use protocol::{
    Command, DEFAULT_SOCKET, EndpointMode, PROTOCOL_VERSION, PodIp, PodRef, Programmed, Request,
    Response,
};
