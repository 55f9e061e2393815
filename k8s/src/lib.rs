//! Everything Palisade says to and hears from the Kubernetes API server.
//!
//! # Layout
//! - `watch`: [`watch::ClusterWatch`], the node agent's mirror of the API server (watchers
//!   and stores for pods, namespaces, nodes, Services, NetworkPolicies, ReplicaSets and Jobs)
//!   and its [`watch::Snapshot`]s: the cluster, the policies in force, refused policies, this
//!   node's pods with their modes.
//! - `cluster`: stripping objects before they are stored, and converting them into
//!   `model::netpol::cluster` types.
//! - `owners`: pod -> workload (`namespace/Kind/name`) through controller references.
//! - `modes`: each pod's mode from `palisade.io/mode` on the pod, its namespace, or the default.
//! - `crd`: the `WorkloadBaseline` custom resource (`palisade.io/v1alpha1`): one per workload
//!   with its learned rules, evidence, notes and proposed NetworkPolicy, kept under a size
//!   budget; the CRD YAML the Helm chart ships.
//! - `apply`: publishing WorkloadBaselines with server-side apply and deleting stale ones.
//! - `events`: rate-limited `ConnectionDenied` Events on pods, published in the background.
//! - `error`: the crate's [`error::Error`].
pub mod apply;
pub mod cluster;
pub mod crd;
pub mod error;
pub mod events;
pub mod modes;
pub mod owners;
pub mod watch;
