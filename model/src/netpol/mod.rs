//! Kubernetes `networking.k8s.io/v1` NetworkPolicy, to the letter: reading and validating
//! policy files, the cluster they apply to, the reference evaluator that answers "is this
//! connection allowed, and by which policy and rule?" straight from the policy objects, and
//! the compiler to the rule form the kernel enforces ([`crate::rules`]).
//!
//! # Layout
//! - [`load`]: policy files (YAML with several documents, or JSON) -> policies, with errors
//!   naming the file, document, line and field.
//! - [`validate`]: what the API server would reject.
//! - [`selector`]: label selectors.
//! - [`policy`]: a policy in typed form (selectors and CIDRs parsed, defaults applied).
//! - [`cluster`]: namespaces, pods (labels, addresses, named ports) and nodes.
//! - [`evaluate`]: the reference evaluator.
//! - [`compile`]: policies + cluster -> each local pod's compiled rules and the identities.
pub mod cluster;
pub mod compile;
pub mod evaluate;
pub mod load;
pub mod policy;
pub mod selector;
pub mod validate;
