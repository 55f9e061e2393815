//! The crate's errors: each variant says which object or resource it is about and keeps
//! the underlying error as its source.

use kube::runtime::reflector::store::WriterDropped;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A watcher task ended (it panicked or was aborted) before its first full list, so
    /// the mirror of `resource` can never become complete.
    #[error("the {resource} watcher stopped before its first list completed")]
    WatchStopped {
        resource: &'static str,
        #[source]
        source: WriterDropped,
    },
    /// Every watcher task ended (they never end by themselves: the runtime is shutting
    /// down), so no change can be reported any more.
    #[error("all watcher tasks ended")]
    WatchesEnded,
    /// The API client could not be set up (no in-cluster service account, no usable
    /// KUBECONFIG).
    #[error("connecting to the Kubernetes API server (in-cluster service account or KUBECONFIG)")]
    Client(#[source] kube::Error),
    /// Listing the WorkloadBaselines the learner manages failed: without the list, stale ones
    /// cannot be found, so nothing was published.
    #[error("listing the managed WorkloadBaselines ({selector})")]
    ListBaselines {
        selector: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
