//! A small fake Kubernetes API server, enough for the agent's watchers and its Event
//! recorder, so the Kubernetes agent can run end to end on one machine without a cluster.
//!
//! It speaks plain HTTP/1.1 (no TLS, no authentication) and keeps every object as JSON, per
//! resource, with one resourceVersion counter for all of them (etcd's revision). It serves:
//!
//! - LIST of a collection (all namespaces, or one), as `<Kind>List` with the collection's
//!   resourceVersion; with kube's metadata-only `Accept`
//!   (`as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`) the items are
//!   `PartialObjectMetadata`. Like the API server's watch cache (`resourceVersion=0`), it
//!   answers in one page.
//! - WATCH (`?watch=true`): a chunked stream of JSON lines `{"type":..,"object":..}`, every
//!   change after the requested resourceVersion (from `0` or none: the current objects as
//!   `ADDED` first), `BOOKMARK`s while idle when `allowWatchBookmarks=true`, ending after
//!   `timeoutSeconds`. The history is never compacted, so no watch ever gets 410 Gone.
//! - GET of one object, POST (create) and PATCH (JSON merge patch) — which kube's event
//!   `Recorder` uses for `events.k8s.io/v1` Events.
//!
//! What it does not do it refuses with a `Status` (label and field selectors, other patch
//! types, unknown resources), so a client never silently gets a wrong answer. Tests change
//! the cluster with [`FakeApiServer::apply`] and [`FakeApiServer::delete`], as controllers
//! and the kubelet would, and read what the agent posted with [`FakeApiServer::events`].

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

/// How often an idle watch that asked for bookmarks gets one. The real API server sends
/// them about once a minute; a short interval exercises the client's bookmark handling
/// within a test's lifetime.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(2);

/// How long a watch lasts when the client names no `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// The metadata-only media types kube asks for (`Api::list_metadata`, `watch_metadata`).
const AS_METADATA_LIST: &str = "as=PartialObjectMetadataList";
const AS_METADATA: &str = "as=PartialObjectMetadata";

/// A kind of object the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// The URL's plural: `pods`, `networkpolicies`.
    pub plural: &'static str,
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespaced: bool,
}

impl ResourceType {
    /// `/api/v1` for the core group, `/apis/<group>/<version>` otherwise.
    fn prefix(&self) -> String {
        if self.api_version.contains('/') {
            format!("/apis/{}", self.api_version)
        } else {
            format!("/api/{}", self.api_version)
        }
    }
}

/// Everything the agent watches, and the Events it creates.
pub const RESOURCES: &[ResourceType] = &[
    ResourceType {
        plural: "pods",
        kind: "Pod",
        api_version: "v1",
        namespaced: true,
    },
    ResourceType {
        plural: "namespaces",
        kind: "Namespace",
        api_version: "v1",
        namespaced: false,
    },
    ResourceType {
        plural: "nodes",
        kind: "Node",
        api_version: "v1",
        namespaced: false,
    },
    ResourceType {
        plural: "services",
        kind: "Service",
        api_version: "v1",
        namespaced: true,
    },
    ResourceType {
        plural: "networkpolicies",
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
    },
    ResourceType {
        plural: "replicasets",
        kind: "ReplicaSet",
        api_version: "apps/v1",
        namespaced: true,
    },
    ResourceType {
        plural: "jobs",
        kind: "Job",
        api_version: "batch/v1",
        namespaced: true,
    },
    ResourceType {
        plural: "events",
        kind: "Event",
        api_version: "events.k8s.io/v1",
        namespaced: true,
    },
];

/// The resource type whose plural is `plural`.
pub fn resource_type(plural: &str) -> Result<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .with_context(|| format!("the fake API server does not serve {plural:?}"))
}

/// What happened to an object, as a watch event's `type` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One entry of the history watches replay.
#[derive(Clone, Debug)]
struct Change {
    revision: u64,
    resource: &'static str,
    namespace: String,
    change: ChangeType,
    object: Value,
}

/// (resource plural, namespace or "" when cluster-scoped, name)
type ObjectKey = (&'static str, String, String);

#[derive(Default)]
struct Store {
    revision: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: Vec<Change>,
    /// `METHOD path?query`, for a failing test's message.
    requests: Vec<String>,
    next_uid: u64,
}

impl Store {
    /// Store `object` under the next revision and record the change.
    fn put(&mut self, resource: &'static ResourceType, mut object: Value) -> Result<Value> {
        let (namespace, name) = identify(resource, &object)?;
        let key = (resource.plural, namespace.clone(), name);
        self.revision += 1;
        let previous = self.objects.get(&key);
        let uid = match previous.and_then(|p| p.pointer("/metadata/uid")).cloned() {
            Some(uid) => uid,
            None => {
                self.next_uid += 1;
                Value::String(format!("00000000-0000-4000-8000-{:012x}", self.next_uid))
            }
        };
        let change = if previous.is_some() {
            ChangeType::Modified
        } else {
            ChangeType::Added
        };
        let fields = object
            .as_object_mut()
            .context("an object must be a JSON object")?;
        fields.insert("kind".into(), resource.kind.into());
        fields.insert("apiVersion".into(), resource.api_version.into());
        let metadata = fields
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .context("metadata")?;
        metadata.insert("uid".into(), uid);
        metadata.insert(
            "resourceVersion".into(),
            Value::String(self.revision.to_string()),
        );
        self.history.push(Change {
            revision: self.revision,
            resource: resource.plural,
            namespace,
            change,
            object: object.clone(),
        });
        self.objects.insert(key, object.clone());
        Ok(object)
    }

    fn remove(&mut self, resource: &'static ResourceType, key: &ObjectKey) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.revision += 1;
        // A deletion is delivered with the object's last state at the deletion's revision.
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert(
                "resourceVersion".into(),
                Value::String(self.revision.to_string()),
            );
        }
        self.history.push(Change {
            revision: self.revision,
            resource: resource.plural,
            namespace: key.1.clone(),
            change: ChangeType::Deleted,
            object: object.clone(),
        });
        Some(object)
    }

    /// The objects of `resource` (in `namespace`, when given), by namespace and name.
    fn list(&self, resource: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((plural, ns, _), _)| {
                *plural == resource.plural && namespace.is_none_or(|n| n == ns)
            })
            .map(|(_, object)| object.clone())
            .collect()
    }
}

/// The namespace ("" when cluster-scoped) and name of `object`, checked against its type.
fn identify(resource: &ResourceType, object: &Value) -> Result<(String, String)> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .context("metadata.name is required")?;
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (resource.namespaced, namespace.is_empty()) {
        (true, true) => bail!("{} {name} needs metadata.namespace", resource.kind),
        (false, false) => bail!("{} {name} is cluster-scoped: no namespace", resource.kind),
        _ => Ok((namespace.to_owned(), name.to_owned())),
    }
}

struct Shared {
    store: Mutex<Store>,
    /// The latest revision: wakes the watches.
    revision: watch::Sender<u64>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self, revision: u64) {
        self.revision.send_replace(revision);
    }
}

/// A running fake API server; stopped (its connections cut) when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Listen on 127.0.0.1 inside the named network namespace (a listening socket stays in
    /// the namespace it was made in, whichever thread serves it), so that an agent running
    /// there reaches it on its own loopback.
    pub fn start_in_netns(netns: &str) -> Result<Self> {
        let listener =
            enforcer::netns::run_in(netns, || std::net::TcpListener::bind("127.0.0.1:0"))
                .with_context(|| format!("entering network namespace {netns}"))?
                .context("binding the fake API server")?;
        Self::serve(listener)
    }

    /// Listen on 127.0.0.1 in the caller's network namespace.
    pub fn start() -> Result<Self> {
        Self::serve(std::net::TcpListener::bind("127.0.0.1:0").context("binding")?)
    }

    fn serve(listener: std::net::TcpListener) -> Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            revision: watch::Sender::new(0),
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the fake API server's runtime")?;
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            eprintln!("fake API server: {e}");
                            return;
                        }
                    };
                    // Not a graceful shutdown: watches would hold it open for minutes.
                    tokio::select! {
                        served = axum::serve(listener, app) => {
                            if let Err(e) = served {
                                eprintln!("fake API server stopped: {e}");
                            }
                        }
                        _ = stop => {}
                    }
                });
                // Dropping the runtime here drops every connection's task.
            })
            .context("spawning the fake API server's thread")?;
        Ok(Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Write a kubeconfig at `path` that points at this server, without credentials.
    pub fn kubeconfig(&self, path: &Path) -> Result<()> {
        let config = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{addr}
users:
- name: anonymous
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: anonymous
current-context: fake
",
            addr = self.addr
        );
        std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
    }

    /// Create or replace an object of `resource` (a plural: `pods`, `namespaces`, ...), as
    /// a controller or the kubelet would; `kind` and `apiVersion` are filled in, the uid
    /// kept across updates. Watches see ADDED or MODIFIED. Returns the stored object.
    pub fn apply(&self, resource: &str, object: Value) -> Result<Value> {
        let resource = resource_type(resource)?;
        let mut store = self.shared.store();
        let stored = store.put(resource, object)?;
        let revision = store.revision;
        drop(store);
        self.shared.notify(revision);
        Ok(stored)
    }

    /// Delete an object (`namespace` is "" for cluster-scoped ones); watches see DELETED.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> Result<Value> {
        let resource = resource_type(resource)?;
        let mut store = self.shared.store();
        let key = (resource.plural, namespace.to_owned(), name.to_owned());
        let deleted = store
            .remove(resource, &key)
            .with_context(|| format!("no {} {namespace}/{name}", resource.kind))?;
        let revision = store.revision;
        drop(store);
        self.shared.notify(revision);
        Ok(deleted)
    }

    /// An object as stored now.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource_type(resource).ok()?;
        self.shared
            .store()
            .objects
            .get(&(resource.plural, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every `events.k8s.io/v1` Event clients created (as patched since).
    pub fn events(&self) -> Vec<Value> {
        self.shared
            .store()
            .list(resource_type("events").expect("events are served"), None)
    }

    /// Every request served so far, `METHOD path?query`, oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.shared.store().requests.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why a request was not served, answered as a Kubernetes `Status`.
#[derive(Debug)]
enum ApiError {
    NotFound(String),
    AlreadyExists(String),
    BadRequest(String),
    MethodNotAllowed(String),
    UnsupportedMediaType(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, reason, message) = match self {
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "NotFound", m),
            Self::AlreadyExists(m) => (StatusCode::CONFLICT, "AlreadyExists", m),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "BadRequest", m),
            Self::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", m),
            Self::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                m,
            ),
        };
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        });
        json_response(code, &status)
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// What a request's path names.
struct Target {
    resource: &'static ResourceType,
    /// The namespace in the path (`/namespaces/<ns>/...`), if any.
    namespace: Option<String>,
    name: Option<String>,
}

/// Parse `/api/v1/...` or `/apis/<group>/<version>/...`.
fn target(path: &str) -> Result<Target, ApiError> {
    let not_found = || ApiError::NotFound(format!("the fake API server does not serve {path}"));
    for resource in RESOURCES {
        let Some(rest) = path.strip_prefix(&resource.prefix()) else {
            continue;
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let (namespace, tail) = match segments.as_slice() {
            // `/api/v1/namespaces/<ns>` is the namespace object itself.
            ["namespaces", ns, plural, tail @ ..] => (Some((*ns).to_owned()), (*plural, tail)),
            [plural, tail @ ..] => (None, (*plural, tail)),
            [] => continue,
        };
        let (plural, tail) = tail;
        if plural != resource.plural {
            continue;
        }
        if namespace.is_some() && !resource.namespaced {
            return Err(not_found());
        }
        let name = match tail {
            [] => None,
            [name] => Some((*name).to_owned()),
            _ => return Err(not_found()),
        };
        return Ok(Target {
            resource,
            namespace,
            name,
        });
    }
    Err(not_found())
}

fn query_pairs(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_owned(), percent_decode(v)),
            None => (pair.to_owned(), String::new()),
        })
        .collect()
}

/// Enough of percent-decoding for query values (`%2C`, `%3D`, `+`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.store().requests.push(format!("{method} {uri}"));
    match serve(&shared, &method, &uri, &headers, &body) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let target = target(uri.path())?;
    let query = query_pairs(uri);
    for selector in ["labelSelector", "fieldSelector"] {
        if query.get(selector).is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::BadRequest(format!(
                "the fake API server does not implement {selector}"
            )));
        }
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match (method.clone(), &target.name) {
        (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => Ok(
            watch_response(shared, &target, &query, accept.contains(AS_METADATA)),
        ),
        (Method::GET, None) => Ok(list(shared, &target, accept.contains(AS_METADATA_LIST))),
        (Method::GET, Some(name)) => {
            let object = shared
                .store()
                .objects
                .get(&key_of(&target, name))
                .cloned()
                .ok_or_else(|| not_found(&target, name))?;
            let object = if accept.contains(AS_METADATA) {
                partial(&object)
            } else {
                object
            };
            Ok(json_response(StatusCode::OK, &object))
        }
        (Method::POST, None) => create(shared, &target, body),
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !content_type.starts_with("application/merge-patch+json") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the fake API server only applies JSON merge patches, not {content_type:?}"
                )));
            }
            merge_patch(shared, &target, name, body)
        }
        _ => Err(ApiError::MethodNotAllowed(format!(
            "the fake API server does not serve {method} {}",
            uri.path()
        ))),
    }
}

fn key_of(target: &Target, name: &str) -> ObjectKey {
    (
        target.resource.plural,
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

fn not_found(target: &Target, name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "{}.{} {name:?} not found",
        target.resource.plural, target.resource.api_version
    ))
}

/// An object as `PartialObjectMetadata`: its metadata only.
fn partial(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn list(shared: &Shared, target: &Target, metadata_only: bool) -> Response {
    let store = shared.store();
    let items: Vec<Value> = store
        .list(target.resource, target.namespace.as_deref())
        .iter()
        .map(|o| if metadata_only { partial(o) } else { o.clone() })
        .collect();
    let (kind, api_version) = if metadata_only {
        ("PartialObjectMetadataList".to_owned(), "meta.k8s.io/v1")
    } else {
        (
            format!("{}List", target.resource.kind),
            target.resource.api_version,
        )
    };
    let body = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"resourceVersion": store.revision.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

/// POST to a namespaced collection (the Event recorder's path).
fn create(shared: &Shared, target: &Target, body: &[u8]) -> Result<Response, ApiError> {
    let mut object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let metadata = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::BadRequest("metadata is required".into()))?;
    if let Some(namespace) = &target.namespace {
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(ns) if ns != namespace => {
                return Err(ApiError::BadRequest(format!(
                    "the namespace of the object ({ns}) does not match the namespace on the \
                     request ({namespace})"
                )));
            }
            _ => {
                metadata.insert("namespace".into(), namespace.clone().into());
            }
        }
    }
    let has_name = metadata
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        let prefix = metadata
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ApiError::BadRequest("name or generateName is required".into()))?
            .to_owned();
        metadata.insert(
            "name".into(),
            format!("{prefix}{}", crate::unique_id()).into(),
        );
    }
    let mut store = shared.store();
    let (namespace, name) =
        identify(target.resource, &object).map_err(|e| ApiError::BadRequest(format!("{e:#}")))?;
    if store
        .objects
        .contains_key(&(target.resource.plural, namespace, name.clone()))
    {
        return Err(ApiError::AlreadyExists(format!(
            "{}.{} {name:?} already exists",
            target.resource.plural, target.resource.api_version
        )));
    }
    let stored = store
        .put(target.resource, object)
        .map_err(|e| ApiError::BadRequest(format!("{e:#}")))?;
    let revision = store.revision;
    drop(store);
    shared.notify(revision);
    Ok(json_response(StatusCode::CREATED, &stored))
}

fn merge_patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the patch is not JSON: {e}")))?;
    let mut store = shared.store();
    let mut object = store
        .objects
        .get(&key_of(target, name))
        .cloned()
        .ok_or_else(|| not_found(target, name))?;
    apply_merge_patch(&mut object, &patch);
    let stored = store
        .put(target.resource, object)
        .map_err(|e| ApiError::BadRequest(format!("{e:#}")))?;
    let revision = store.revision;
    drop(store);
    shared.notify(revision);
    Ok(json_response(StatusCode::OK, &stored))
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let fields = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            fields.remove(key);
        } else {
            apply_merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Where one watch stands.
struct Cursor {
    shared: Arc<Shared>,
    resource: &'static ResourceType,
    namespace: Option<String>,
    metadata_only: bool,
    bookmarks: bool,
    /// Changes up to this revision were sent.
    sent: u64,
    /// Objects to send as ADDED before any change (a watch from resourceVersion 0).
    initial: Vec<Value>,
    wake: watch::Receiver<u64>,
    deadline: tokio::time::Instant,
}

impl Cursor {
    fn line(&self, kind: &str, object: &Value) -> String {
        let object = if self.metadata_only {
            partial(object)
        } else {
            object.clone()
        };
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        line
    }

    /// The changes after `sent` that this watch sees, as JSON lines.
    fn pending(&mut self) -> String {
        let store = self.shared.store();
        let mut out = String::new();
        for object in std::mem::take(&mut self.initial) {
            out.push_str(&self.line("ADDED", &object));
        }
        let start = store.history.partition_point(|c| c.revision <= self.sent);
        for change in &store.history[start..] {
            let seen = change.resource == self.resource.plural
                && self
                    .namespace
                    .as_ref()
                    .is_none_or(|n| *n == change.namespace);
            if seen {
                out.push_str(&self.line(change.change.as_str(), &change.object));
            }
        }
        self.sent = store.revision;
        out
    }

    fn bookmark(&self) -> String {
        let object = json!({
            "kind": self.resource.kind,
            "apiVersion": self.resource.api_version,
            "metadata": {
                "resourceVersion": self.sent.to_string(),
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        });
        // Bookmarks carry the watched kind even on metadata-only watches.
        let mut line = json!({"type": "BOOKMARK", "object": object}).to_string();
        line.push('\n');
        line
    }

    /// The next chunk of the stream; `None` once the watch timed out.
    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Self)> {
        loop {
            // Seen before reading the store: a change after this read wakes `changed`.
            self.wake.borrow_and_update();
            let out = self.pending();
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), self));
            }
            let bookmark_at = tokio::time::Instant::now() + BOOKMARK_EVERY;
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep_until(bookmark_at), if self.bookmarks => {
                    let line = self.bookmark();
                    return Some((Ok(Bytes::from(line)), self));
                }
                () = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }
}

fn watch_response(
    shared: &Arc<Shared>,
    target: &Target,
    query: &BTreeMap<String, String>,
    metadata_only: bool,
) -> Response {
    let store = shared.store();
    let from = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse::<u64>().ok())
        .filter(|rv| *rv > 0);
    // No resourceVersion (or 0): "start at any point", the current objects as ADDED.
    let (sent, initial) = match from {
        Some(rv) => (rv, Vec::new()),
        None => (
            store.revision,
            store.list(target.resource, target.namespace.as_deref()),
        ),
    };
    drop(store);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let cursor = Cursor {
        shared: Arc::clone(shared),
        resource: target.resource,
        namespace: target.namespace.clone(),
        metadata_only,
        bookmarks: query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true"),
        sent,
        initial,
        wake: shared.revision.subscribe(),
        deadline: tokio::time::Instant::now() + timeout,
    };
    let stream = futures::stream::unfold(cursor, Cursor::next);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources_namespaces_and_objects() {
        let t = target("/api/v1/pods").unwrap();
        assert_eq!(
            (t.resource.plural, t.namespace, t.name),
            ("pods", None, None)
        );
        let t = target("/api/v1/namespaces").unwrap();
        assert_eq!(t.resource.plural, "namespaces");
        let t = target("/api/v1/namespaces/shop").unwrap();
        assert_eq!(
            (t.resource.plural, t.namespace, t.name.as_deref()),
            ("namespaces", None, Some("shop"))
        );
        let t = target("/api/v1/namespaces/shop/pods/web").unwrap();
        assert_eq!(
            (t.resource.plural, t.namespace.as_deref(), t.name.as_deref()),
            ("pods", Some("shop"), Some("web"))
        );
        let t = target("/apis/events.k8s.io/v1/namespaces/shop/events").unwrap();
        assert_eq!(
            (t.resource.plural, t.namespace.as_deref()),
            ("events", Some("shop"))
        );
        let t = target("/apis/networking.k8s.io/v1/networkpolicies").unwrap();
        assert_eq!(t.resource.kind, "NetworkPolicy");
        assert!(target("/api/v1/configmaps").is_err());
        assert!(target("/apis/apps/v1/deployments").is_err());
        assert!(target("/api/v1/namespaces/shop/nodes").is_err());
    }

    #[test]
    fn merge_patch_merges_replaces_and_removes() {
        let mut object = json!({"a": {"b": 1, "c": 2}, "d": [1], "e": "x"});
        apply_merge_patch(&mut object, &json!({"a": {"b": 5, "c": null}, "d": [2, 3]}));
        assert_eq!(object, json!({"a": {"b": 5}, "d": [2, 3], "e": "x"}));
    }

    #[test]
    fn query_values_are_decoded() {
        let uri: Uri = "/api/v1/pods?watch=true&labelSelector=app%3Dweb&x"
            .parse()
            .unwrap();
        let q = query_pairs(&uri);
        assert_eq!(q["watch"], "true");
        assert_eq!(q["labelSelector"], "app=web");
        assert_eq!(q["x"], "");
    }

    #[test]
    fn revisions_are_global_and_uids_kept() {
        let mut store = Store::default();
        let pods = resource_type("pods").unwrap();
        let namespaces = resource_type("namespaces").unwrap();
        let ns = store
            .put(namespaces, json!({"metadata": {"name": "shop"}}))
            .unwrap();
        let pod = store
            .put(
                pods,
                json!({"metadata": {"name": "a", "namespace": "shop"}}),
            )
            .unwrap();
        let again = store
            .put(
                pods,
                json!({"metadata": {"name": "a", "namespace": "shop", "labels": {"x": "y"}}}),
            )
            .unwrap();
        assert_eq!(ns["metadata"]["resourceVersion"], "1");
        assert_eq!(pod["metadata"]["resourceVersion"], "2");
        assert_eq!(again["metadata"]["resourceVersion"], "3");
        assert_eq!(again["metadata"]["uid"], pod["metadata"]["uid"]);
        assert_ne!(ns["metadata"]["uid"], pod["metadata"]["uid"]);
        assert_eq!(again["kind"], "Pod");
        let changes: Vec<_> = store.history.iter().map(|c| c.change).collect();
        assert_eq!(
            changes,
            [ChangeType::Added, ChangeType::Added, ChangeType::Modified]
        );
        assert!(
            store
                .put(pods, json!({"metadata": {"name": "no-namespace"}}))
                .is_err()
        );
    }
}
