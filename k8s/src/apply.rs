//! Publishing the learner's `WorkloadBaseline`s: every object of the set is written with
//! server-side apply (field manager [`FIELD_MANAGER`], forced, so the learner owns the
//! fields it writes even after someone edited them), and every object the learner manages
//! (label `app.kubernetes.io/managed-by: palisade`) that is no longer in the set is deleted.
//!
//! One object failing does not stop the others: each failure is collected with the object's
//! name in [`Published::failed`]. Only a failure to list the managed objects stops the
//! publication, before anything is written, since stale objects could not be told apart.

use std::{collections::BTreeSet, fmt};

use futures::{StreamExt, stream};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use model::evidence::MANAGED_BY;

use crate::{
    crd::WorkloadBaseline,
    error::{Error, Result},
};

/// The field manager of the learner's server-side applies.
pub const FIELD_MANAGER: &str = "palisade-learner";

/// Requests in flight at once: enough to publish thousands of workloads quickly, few
/// enough not to trip the API server's priority and fairness limits.
const CONCURRENCY: usize = 8;

/// Objects per page when listing the managed ones.
const PAGE: u32 = 500;

/// What a publication did.
#[derive(Debug, Default)]
pub struct Published {
    /// `namespace/name` of each object applied, sorted.
    pub applied: Vec<String>,
    /// `namespace/name` of each stale object deleted (or already gone), sorted.
    pub deleted: Vec<String>,
    /// What failed, by object, sorted by object.
    pub failed: Vec<ObjectError>,
}

impl Published {
    /// Every object was applied and every stale one deleted.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// One object the publication could not apply or delete.
#[derive(Debug, thiserror::Error)]
#[error("{action} WorkloadBaseline {object}")]
pub struct ObjectError {
    /// `namespace/name`.
    pub object: String,
    pub action: Action,
    #[source]
    pub source: kube::Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Apply,
    Delete,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Apply => "applying",
            Self::Delete => "deleting",
        })
    }
}

/// Apply `resources` and delete the managed objects not among them (see the module docs).
#[tracing::instrument(skip_all, fields(objects = resources.len()))]
pub async fn publish(client: &Client, resources: Vec<WorkloadBaseline>) -> Result<Published> {
    let existing = managed(client).await?;
    let wanted: BTreeSet<(String, String)> = resources.iter().map(key).collect();
    let mut published = Published::default();

    let applies: Vec<(String, Result<(), kube::Error>)> = stream::iter(resources)
        .map(|object| apply(client, object))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (object, result) in applies {
        match result {
            Ok(()) => published.applied.push(object),
            Err(source) => published.failed.push(ObjectError {
                object,
                action: Action::Apply,
                source,
            }),
        }
    }

    let stale: Vec<(String, String)> = existing.difference(&wanted).cloned().collect();
    let deletes: Vec<(String, Result<(), kube::Error>)> = stream::iter(stale)
        .map(|(namespace, name)| delete(client, namespace, name))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (object, result) in deletes {
        match result {
            Ok(()) => published.deleted.push(object),
            Err(source) => published.failed.push(ObjectError {
                object,
                action: Action::Delete,
                source,
            }),
        }
    }

    published.applied.sort();
    published.deleted.sort();
    published.failed.sort_by(|a, b| a.object.cmp(&b.object));
    for failure in &published.failed {
        tracing::warn!(
            object = %failure.object,
            error = %failure.source,
            "{} WorkloadBaseline failed",
            failure.action
        );
    }
    tracing::info!(
        applied = published.applied.len(),
        deleted = published.deleted.len(),
        failed = published.failed.len(),
        "published WorkloadBaselines"
    );
    Ok(published)
}

/// `(namespace, name)` of every WorkloadBaseline the learner manages, in every namespace.
async fn managed(client: &Client) -> Result<BTreeSet<(String, String)>> {
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let api: Api<WorkloadBaseline> = Api::all(client.clone());
    let mut found = BTreeSet::new();
    let mut params = ListParams::default().labels(&selector).limit(PAGE);
    loop {
        // Metadata only: the objects themselves can weigh hundreds of KiB each.
        let page = api
            .list_metadata(&params)
            .await
            .map_err(|source| Error::ListBaselines {
                selector: selector.clone(),
                source,
            })?;
        for item in &page.items {
            if let (Some(namespace), Some(name)) = (&item.metadata.namespace, &item.metadata.name) {
                found.insert((namespace.clone(), name.clone()));
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(found),
        }
    }
}

fn key(object: &WorkloadBaseline) -> (String, String) {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

async fn apply(client: &Client, object: WorkloadBaseline) -> (String, Result<(), kube::Error>) {
    let (namespace, name) = key(&object);
    let id = format!("{namespace}/{name}");
    if namespace.is_empty() {
        let why =
            kube::core::request::Error::Validation("a WorkloadBaseline needs a namespace".into());
        return (id, Err(kube::Error::BuildRequest(why)));
    }
    let api: Api<WorkloadBaseline> = Api::namespaced(client.clone(), &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let result = api.patch(&name, &params, &Patch::Apply(&object)).await;
    if result.is_ok() {
        tracing::debug!(object = %id, "applied");
    }
    (id, result.map(drop))
}

async fn delete(
    client: &Client,
    namespace: String,
    name: String,
) -> (String, Result<(), kube::Error>) {
    let id = format!("{namespace}/{name}");
    let api: Api<WorkloadBaseline> = Api::namespaced(client.clone(), &namespace);
    let result = match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::debug!(object = %id, "deleted stale");
            Ok(())
        }
        // Gone already (another learner replica, or a person): what we wanted.
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(e),
    };
    (id, result)
}
