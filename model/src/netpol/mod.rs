//! Kubernetes `networking.k8s.io/v1` NetworkPolicy, to the letter: reading and validating
//! policy files, the cluster they apply to, the reference evaluator that answers "is this
//! connection allowed, and by which policy and rule?" straight from the policy objects, and
//! the compiler to the rule form the kernel enforces ([`crate::rules`]).
//!
//! # Layout
//! - [`load`]: policy files (YAML with several documents, or JSON) -> policies, with errors
//!   naming the file, document, line and field.
//! - [`validate`]: what the API server would reject.
pub mod load;
pub mod validate;
