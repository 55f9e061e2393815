//! Palisade's node agent: loads the kernel programs with aya, attaches them to pod
//! interfaces, keeps them pinned so enforcement outlives the agent, and turns the kernel's
//! events into flow records. Also hosts the lab, which builds a node out of network
//! namespaces to run all of it on one machine.
//!
//! # Layout
//! - [`datapath`]: everything that touches aya: the embedded object, install and pins,
//!   attach/detach, the maps behind small traits, events, uninstall.
//! - [`agent`]: the long-running agent: install, attach, stream flow records; steered by
//!   a [`agent::Control`] (none standalone, the API server's in Kubernetes).
//! - [`kubernetes`]: the agent on a Kubernetes node: the API server's mirror, endpoints and
//!   the CNI's requests -> what is attached, compiled and enforced; where records go.
//! - [`endpoints`]: which host interface carries each local pod (rtnetlink), as a watch,
//!   and the attach/detach plan.
//! - [`cni`]: the socket the `palisade-cni` plugin asks on.
//! - [`metrics`] and [`http`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`.
//! - [`learner_service`]: `palisade learn serve`: the gRPC collector into the store, and
//!   proposals as files and `WorkloadBaseline` resources.
//! - [`args`]: command-line argument types shared by the agent's commands and the lab's.
//! - [`dns`]: external peers named from the DNS answers pods receive.
//! - [`names`]: interface/address -> pod names, written by whoever creates endpoints.
//! - [`netns`]: entering named network namespaces.
//! - [`lab`]: `palisade lab`: topology files, namespaces and veths, pod servers, probes.
//! - [`paths`]: default locations (bpffs root, run folder).
//! - [`policy_file`]: a node's compiled rules and identities as a YAML file.
//! - [`policy_source`]: the policy file an agent enforces and watches.
//! - [`review`]: the learner's proposal as the policy set and files people review.
//! - [`watch`]: waiting for a file to change (inotify on its folder).
//! - [`error`]: the library's error type.
pub mod agent;
pub mod args;
pub mod cni;
pub mod datapath;
pub mod dns;
pub mod endpoints;
pub mod error;
pub mod http;
pub mod kubernetes;
pub mod lab;
pub mod learner_service;
pub mod metrics;
pub mod names;
pub mod netns;
pub mod paths;
pub mod policy_file;
pub mod policy_source;
pub mod review;
pub mod watch;

pub use error::{Error, Result};
