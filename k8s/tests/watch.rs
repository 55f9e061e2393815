//! `ClusterWatch` against a scripted API server (kube's `tower-test` mock service).
//!
//! The mock keeps, per resource, its objects, a history of watch events and a resource
//! version counter, and answers the watcher's requests as the API server does: a LIST with
//! every object and the current resource version; a WATCH from version `v` with the events
//! after `v` (held open until there is one), or with an ERROR 410 event when `v` is older
//! than the history it keeps ([`ApiServer::expire`]). Each watch response carries the
//! events pending and then ends, so every scenario also exercises the watcher resuming a
//! watch that ended from its last resource version.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response};
use k8s::{
    modes::{ModeDefaults, ModeSource},
    watch::{ClusterWatch, Snapshot},
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Client, client::Body};
use model::{Mode, netpol::policy::Policy};
use serde_json::{Value, json};
use tokio::{task::JoinHandle, time::timeout};
use tower_test::mock;

const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";
const NODES: &str = "/api/v1/nodes";
const SERVICES: &str = "/api/v1/services";
const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
const REPLICA_SETS: &str = "/apis/apps/v1/replicasets";
const JOBS: &str = "/apis/batch/v1/jobs";

const LEARN: ModeDefaults = ModeDefaults { mode: Mode::Learn };
/// Long enough for a relist after the watcher's backoff (at most 1.6 s for the first retry).
const PATIENCE: Duration = Duration::from_secs(15);

type Reply = mock::SendResponse<Response<Body>>;

/// One resource of the scripted API server.
#[derive(Default)]
struct Collection {
    /// `namespace/name` (or `name`) -> object, as last written.
    objects: BTreeMap<String, Value>,
    /// Watch events by resource version.
    events: Vec<(u64, Value)>,
    /// Watches waiting for an event after their version.
    parked: Vec<(u64, Reply)>,
    /// Watches from versions before this one are told 410 Gone.
    expired_before: u64,
    lists: usize,
    /// The newest resource version a watch response carried.
    delivered: u64,
}

impl Collection {
    /// Answer a watch from version `from` now if there is something to say, else park it.
    fn watch(&mut self, from: u64, reply: Reply) {
        if from < self.expired_before {
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", self.expired_before),
                "reason": "Expired", "code": 410}});
            reply.send_response(json_lines(&[gone]));
            return;
        }
        let pending: Vec<&(u64, Value)> = self.events.iter().filter(|(rv, _)| *rv > from).collect();
        match pending.last() {
            None => self.parked.push((from, reply)),
            Some((newest, _)) => {
                self.delivered = self.delivered.max(*newest);
                let lines: Vec<Value> = pending.iter().map(|(_, e)| e.clone()).collect();
                reply.send_response(json_lines(&lines));
            }
        }
    }

    fn wake(&mut self) {
        for (from, reply) in std::mem::take(&mut self.parked) {
            self.watch(from, reply);
        }
    }
}

#[derive(Default)]
struct State {
    version: u64,
    collections: BTreeMap<&'static str, Collection>,
}

struct ApiServer {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// The server and a client talking to it.
    fn start() -> (Self, Client) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut state = State::default();
        for path in [
            PODS,
            NAMESPACES,
            NODES,
            SERVICES,
            NETWORK_POLICIES,
            REPLICA_SETS,
            JOBS,
        ] {
            state.collections.insert(path, Collection::default());
        }
        let state = Arc::new(Mutex::new(state));
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                serve(&mut served.lock().unwrap(), &request, reply);
            }
        });
        (Self { state, task }, Client::new(service, "default"))
    }

    /// Create or update an object; watches see ADDED or MODIFIED.
    fn apply(&self, path: &'static str, object: Value) {
        self.write(path, object, true);
    }

    /// Create or update an object without a watch event: a change the history no longer
    /// has by the time the watcher asks (only a relist shows it).
    fn apply_unseen(&self, path: &'static str, object: Value) {
        self.write(path, object, false);
    }

    fn write(&self, path: &'static str, mut object: Value, seen: bool) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let collection = state.collections.get_mut(path).unwrap();
        let kind = match collection.objects.insert(key(&object), object.clone()) {
            None => "ADDED",
            Some(_) => "MODIFIED",
        };
        if seen {
            collection
                .events
                .push((version, json!({"type": kind, "object": object})));
            collection.wake();
        }
    }

    /// Delete an object; watches see DELETED (unless `seen` is false).
    fn delete(&self, path: &'static str, key_: &str, seen: bool) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let collection = state.collections.get_mut(path).unwrap();
        let mut object = collection.objects.remove(key_).expect("no such object");
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        if seen {
            collection
                .events
                .push((version, json!({"type": "DELETED", "object": object})));
            collection.wake();
        }
    }

    /// Forget the watch history of `path` (as etcd compaction does): every watch from an
    /// older version, the waiting ones first, is told 410 Gone.
    fn expire(&self, path: &'static str) {
        let mut state = self.state.lock().unwrap();
        let version = state.version + 1;
        let collection = state.collections.get_mut(path).unwrap();
        collection.expired_before = version;
        collection.events.clear();
        collection.wake();
    }

    fn lists(&self, path: &'static str) -> usize {
        self.state.lock().unwrap().collections[path].lists
    }

    fn version(&self) -> u64 {
        self.state.lock().unwrap().version
    }

    /// Wait until a watch response carried the event of `version` (or a later one).
    async fn delivered(&self, path: &'static str, version: u64) {
        timeout(PATIENCE, async {
            while self.state.lock().unwrap().collections[path].delivered < version {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the watcher never received the event");
    }
}

fn serve(state: &mut State, request: &Request<Body>, reply: Reply) {
    let query: HashMap<&str, &str> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let version = state.version;
    let Some(collection) = state.collections.get_mut(request.uri().path()) else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404});
        let mut response = json_response(&status);
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        reply.send_response(response);
        return;
    };
    if query.get("watch") == Some(&"true") {
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        collection.watch(from, reply);
    } else {
        collection.lists += 1;
        let items: Vec<&Value> = collection.objects.values().collect();
        reply.send_response(json_response(&json!({
            "apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": version.to_string()},
            "items": items,
        })));
    }
}

fn key(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().unwrap();
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

fn json_response(value: &Value) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(value).unwrap()))
        .unwrap()
}

fn json_lines(values: &[Value]) -> Response<Body> {
    let mut body = Vec::new();
    for value in values {
        body.extend(serde_json::to_vec(value).unwrap());
        body.push(b'\n');
    }
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

// Objects, as the API server returns them (abridged).

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels},
           "status": {"phase": "Active"}})
}

fn node(name: &str, addresses: &[&str]) -> Value {
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .chain([json!({"type": "Hostname", "address": name})])
        .collect();
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": addresses}})
}

fn pod(namespace: &str, name: &str, node: &str, ips: &[&str], labels: Value) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                     "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "example:1",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ips.first(), "podIPs": pod_ips,
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn owned_by(mut object: Value, kind: &str, name: &str) -> Value {
    object["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"),
        "controller": true}]);
    object
}

fn replica_set(namespace: &str, name: &str, deployment: &str) -> Value {
    owned_by(
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": name, "namespace": namespace}}),
        "Deployment",
        deployment,
    )
}

fn service(namespace: &str, name: &str, ips: &[&str], selector: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"clusterIP": ips[0], "clusterIPs": ips, "selector": selector,
                    "ports": [{"port": 80, "targetPort": "http"}]}})
}

fn network_policy(namespace: &str, name: &str, operator: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"podSelector": {"matchExpressions": [
                        {"key": "app", "operator": operator, "values": ["api"]}]},
                    "ingress": [{"from": [{"podSelector": {}}]}]}})
}

fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|t| t.parse().unwrap()).collect()
}

/// Start watching, for node `node-a`, and wait for the first full list.
async fn watching(client: Client) -> ClusterWatch {
    let mut watch = ClusterWatch::start(client, "node-a");
    watch.set_settle(Duration::from_millis(10));
    timeout(PATIENCE, watch.synced())
        .await
        .expect("never synced")
        .unwrap();
    watch
}

/// Snapshots after each change until one satisfies `done`.
async fn wait_for(
    watch: &mut ClusterWatch,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    timeout(PATIENCE, async {
        loop {
            let snapshot = watch.snapshot(&LEARN);
            if done(&snapshot) {
                return snapshot;
            }
            watch.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

fn pod_names(snapshot: &Snapshot) -> Vec<&str> {
    snapshot
        .cluster
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .collect()
}

#[tokio::test]
async fn the_initial_list_gives_pods_identities_owners_nodes_and_services() {
    let (server, client) = ApiServer::start();
    server.apply(NAMESPACES, namespace("shop", json!({"team": "core"})));
    server.apply(NODES, node("node-a", &["192.168.1.10", "fd00::10"]));
    server.apply(NODES, node("node-b", &["192.168.1.11"]));
    // A ReplicaSet named unlike Kubernetes would: only the mirrored owner tells.
    server.apply(REPLICA_SETS, replica_set("shop", "api-custom", "api"));
    let api = pod(
        "shop",
        "api-custom-x",
        "node-a",
        &["10.244.1.7", "fd00:244:1::7"],
        json!({"app": "api"}),
    );
    server.apply(PODS, owned_by(api, "ReplicaSet", "api-custom"));
    server.apply(
        PODS,
        pod(
            "shop",
            "web-1",
            "node-b",
            &["10.244.2.3"],
            json!({"app": "web"}),
        ),
    );
    let mut host = pod(
        "kube-system",
        "proxy",
        "node-a",
        &["192.168.1.10"],
        json!({}),
    );
    host["spec"]["hostNetwork"] = json!(true);
    server.apply(PODS, host);
    let mut done = pod("shop", "job-x", "node-a", &["10.244.1.8"], json!({}));
    done["status"]["phase"] = json!("Succeeded");
    server.apply(PODS, done);
    server.apply(
        SERVICES,
        service(
            "shop",
            "api",
            &["10.96.0.20", "fd00:96::20"],
            json!({"app": "api"}),
        ),
    );

    let watch = watching(client).await;
    let snapshot = watch.snapshot(&LEARN);

    assert_eq!(
        pod_names(&snapshot),
        ["api-custom-x", "web-1"],
        "host-network and finished pods left out"
    );
    let api = &snapshot.cluster.pods[0];
    assert_eq!(api.workload.as_deref(), Some("shop/Deployment/api"));
    assert_eq!(api.ips, ips(&["10.244.1.7", "fd00:244:1::7"]));
    assert_eq!(api.named_port("http"), Some((model::Protocol::Tcp, 8080)));
    assert_eq!(api.node, "node-a");
    assert_eq!(snapshot.cluster.pods[1].workload, None, "a bare pod");
    assert_eq!(snapshot.cluster.namespace_labels("shop")["team"], "core");
    assert_eq!(
        snapshot.cluster.nodes["node-a"],
        ips(&["192.168.1.10", "fd00::10"])
    );
    assert_eq!(snapshot.cluster.services.len(), 1);
    assert_eq!(
        snapshot.cluster.services[0].cluster_ips,
        ips(&["10.96.0.20", "fd00:96::20"])
    );
    assert_eq!(
        snapshot.cluster.services[0]
            .backends(&snapshot.cluster)
            .map(|p| &p.name)
            .collect::<Vec<_>>(),
        ["api-custom-x"]
    );

    assert_eq!(
        snapshot.local.len(),
        1,
        "only node-a's own-network pods: {:?}",
        snapshot.local
    );
    let local = &snapshot.local[0];
    assert_eq!(
        (local.namespace.as_str(), local.name.as_str()),
        ("shop", "api-custom-x")
    );
    assert_eq!(local.uid, "uid-api-custom-x");
    assert_eq!(local.ips, ips(&["10.244.1.7", "fd00:244:1::7"]));
    assert_eq!(
        (local.mode, local.mode_source),
        (Mode::Learn, ModeSource::Default)
    );
}

#[tokio::test]
async fn pods_added_relabelled_and_deleted_are_followed() {
    let (server, client) = ApiServer::start();
    server.apply(NAMESPACES, namespace("shop", json!({})));
    let mut watch = watching(client).await;
    assert!(watch.snapshot(&LEARN).cluster.pods.is_empty());

    server.apply(
        PODS,
        pod(
            "shop",
            "api-1",
            "node-a",
            &["10.244.1.7"],
            json!({"app": "api"}),
        ),
    );
    let snapshot = wait_for(&mut watch, "the new pod", |s| pod_names(s) == ["api-1"]).await;
    assert_eq!(snapshot.local.len(), 1);

    // A label change wakes `changed` and shows in the next snapshot.
    server.apply(
        PODS,
        pod(
            "shop",
            "api-1",
            "node-a",
            &["10.244.1.7"],
            json!({"app": "api", "tier": "backend"}),
        ),
    );
    timeout(PATIENCE, watch.changed())
        .await
        .expect("changed() did not fire for a label change")
        .unwrap();
    assert_eq!(
        watch.snapshot(&LEARN).cluster.pods[0].labels["tier"],
        "backend"
    );

    // A status write the agent does not read (a readiness flip) wakes nobody.
    let mut flapped = pod(
        "shop",
        "api-1",
        "node-a",
        &["10.244.1.7"],
        json!({"app": "api", "tier": "backend"}),
    );
    flapped["status"]["conditions"][0]["status"] = json!("False");
    server.apply(PODS, flapped);
    server.delivered(PODS, server.version()).await;
    assert!(
        timeout(Duration::from_millis(500), watch.changed())
            .await
            .is_err(),
        "a change of nothing the agent reads woke changed()"
    );

    server.delete(PODS, "shop/api-1", true);
    let snapshot = wait_for(&mut watch, "the pod gone", |s| s.cluster.pods.is_empty()).await;
    assert!(snapshot.local.is_empty());
}

#[tokio::test]
async fn an_expired_watch_lists_again_and_the_mirror_is_right_after() {
    let (server, client) = ApiServer::start();
    server.apply(
        PODS,
        pod("shop", "a", "node-a", &["10.244.1.1"], json!({"app": "a"})),
    );
    server.apply(
        PODS,
        pod("shop", "b", "node-a", &["10.244.1.2"], json!({"app": "b"})),
    );
    let mut watch = watching(client).await;
    assert_eq!(pod_names(&watch.snapshot(&LEARN)), ["a", "b"]);
    assert_eq!(server.lists(PODS), 1);

    // Changes the watch history lost: only a relist can show them.
    server.delete(PODS, "shop/a", false);
    server.apply_unseen(
        PODS,
        pod("shop", "b", "node-a", &["10.244.1.2"], json!({"app": "b2"})),
    );
    server.apply_unseen(
        PODS,
        pod("shop", "c", "node-b", &["10.244.2.1"], json!({"app": "c"})),
    );
    server.expire(PODS);

    let snapshot = wait_for(&mut watch, "the relisted pods", |s| {
        pod_names(s) == ["b", "c"]
    })
    .await;
    assert_eq!(snapshot.cluster.pods[0].labels["app"], "b2");
    assert_eq!(
        snapshot
            .local
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(server.lists(PODS), 2, "one relist");

    // And the watch goes on from the relist's version.
    server.apply(
        PODS,
        pod("shop", "d", "node-a", &["10.244.1.4"], json!({"app": "d"})),
    );
    wait_for(&mut watch, "a pod after the relist", |s| {
        pod_names(s) == ["b", "c", "d"]
    })
    .await;
}

#[tokio::test]
async fn a_namespace_mode_label_changes_its_local_pods_modes() {
    let (server, client) = ApiServer::start();
    server.apply(NAMESPACES, namespace("shop", json!({})));
    server.apply(
        PODS,
        pod(
            "shop",
            "api-1",
            "node-a",
            &["10.244.1.7"],
            json!({"app": "api"}),
        ),
    );
    server.apply(
        PODS,
        pod(
            "shop",
            "db-0",
            "node-a",
            &["10.244.1.8"],
            json!({"app": "db", "palisade.io/mode": "learn"}),
        ),
    );
    let mut watch = watching(client).await;
    let modes = |s: &Snapshot| -> Vec<(Mode, ModeSource)> {
        s.local.iter().map(|p| (p.mode, p.mode_source)).collect()
    };
    assert_eq!(
        modes(&watch.snapshot(&LEARN)),
        [
            (Mode::Learn, ModeSource::Default),
            (Mode::Learn, ModeSource::PodLabel)
        ]
    );

    server.apply(
        NAMESPACES,
        namespace("shop", json!({"palisade.io/mode": "enforce"})),
    );
    let snapshot = wait_for(&mut watch, "enforce from the namespace", |s| {
        s.local[0].mode == Mode::Enforce
    })
    .await;
    assert_eq!(
        modes(&snapshot),
        [
            (Mode::Enforce, ModeSource::NamespaceLabel),
            (Mode::Learn, ModeSource::PodLabel)
        ],
        "the pod's own label still wins"
    );
    // A pod the watch has not seen yet (the CNI reports it first) gets its namespace's.
    assert_eq!(snapshot.namespace_modes["shop"], Mode::Enforce);

    // A typo is reported and ignored: back to the default.
    server.apply(
        NAMESPACES,
        namespace("shop", json!({"palisade.io/mode": "enforcing"})),
    );
    let snapshot = wait_for(&mut watch, "the typo ignored", |s| {
        s.local[0].mode == Mode::Learn
    })
    .await;
    assert_eq!(snapshot.local[0].mode_source, ModeSource::Default);
    assert_eq!(snapshot.namespace_modes["shop"], Mode::Learn);
    assert_eq!(snapshot.invalid_modes.len(), 1);
    assert_eq!(snapshot.invalid_modes[0].object, "Namespace shop");
    assert_eq!(snapshot.invalid_modes[0].value, "enforcing");
}

#[tokio::test]
async fn a_bad_network_policy_edit_keeps_the_last_good_one_and_is_reported() {
    let (server, client) = ApiServer::start();
    let good = network_policy("shop", "api", "In");
    server.apply(NETWORK_POLICIES, good.clone());
    let mut watch = watching(client).await;
    let good_policy =
        Policy::from_k8s(&serde_json::from_value::<NetworkPolicy>(good).unwrap()).unwrap();
    let snapshot = watch.snapshot(&LEARN);
    assert_eq!(snapshot.policies, std::slice::from_ref(&good_policy));
    assert!(snapshot.refused.is_empty());

    // An operator the API server would refuse (this one slipped past, e.g. a newer server).
    server.apply(NETWORK_POLICIES, network_policy("shop", "api", "Near"));
    let snapshot = wait_for(&mut watch, "the refusal", |s| !s.refused.is_empty()).await;
    assert_eq!(
        snapshot.policies,
        std::slice::from_ref(&good_policy),
        "the last good version stays"
    );
    assert_eq!(snapshot.refused[0].policy.to_string(), "shop/api");
    assert!(snapshot.refused[0].last_good_kept);
    assert!(
        snapshot.refused[0].reason.contains("Near"),
        "{}",
        snapshot.refused[0].reason
    );

    // A new policy that never converted is simply absent.
    server.apply(NETWORK_POLICIES, network_policy("shop", "web", "Near"));
    let snapshot = wait_for(&mut watch, "the second refusal", |s| s.refused.len() == 2).await;
    assert_eq!(snapshot.policies, std::slice::from_ref(&good_policy));
    assert!(!snapshot.refused[1].last_good_kept);

    // Fixed, then deleted.
    server.apply(NETWORK_POLICIES, network_policy("shop", "web", "NotIn"));
    let snapshot = wait_for(&mut watch, "the fix", |s| s.refused.len() == 1).await;
    assert_eq!(snapshot.policies.len(), 2);
    server.delete(NETWORK_POLICIES, "shop/api", true);
    let snapshot = wait_for(&mut watch, "the deletion", |s| s.refused.is_empty()).await;
    assert_eq!(
        snapshot
            .policies
            .iter()
            .map(|p| p.name.to_string())
            .collect::<Vec<_>>(),
        ["shop/web"]
    );
}

/// A watch with a 300 ms settle time that has just seen one pod added, not yet reported.
async fn one_pod_to_report() -> (ApiServer, ClusterWatch) {
    let (server, client) = ApiServer::start();
    let mut watch = watching(client).await;
    watch.set_settle(Duration::from_millis(300));
    server.apply(
        PODS,
        pod("shop", "api-1", "node-a", &["10.244.1.7"], json!({})),
    );
    server.delivered(PODS, server.version()).await;
    (server, watch)
}

#[tokio::test]
async fn a_change_seen_by_a_cancelled_changed_call_is_reported_by_the_next() {
    let (_server, mut watch) = one_pod_to_report().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Dropped while settling, as a `select!` arm that lost would be.
    assert!(
        timeout(Duration::from_millis(50), watch.changed())
            .await
            .is_err()
    );
    timeout(Duration::from_secs(2), watch.changed())
        .await
        .expect("the change was lost with the cancelled call")
        .unwrap();
    assert_eq!(pod_names(&watch.snapshot(&LEARN)), ["api-1"]);
}

#[tokio::test]
async fn a_caller_that_keeps_cancelling_changed_is_not_starved() {
    let (_server, mut watch) = one_pod_to_report().await;
    // An agent loop whose other arms win every 100 ms: each call is dropped before a
    // fresh 300 ms settle could end, yet the settle time keeps running across calls.
    let started = tokio::time::Instant::now();
    loop {
        match timeout(Duration::from_millis(100), watch.changed()).await {
            Ok(result) => break result.unwrap(),
            Err(_) => assert!(
                started.elapsed() < Duration::from_secs(2),
                "starved: the settle time restarted with every call"
            ),
        }
    }
    assert_eq!(pod_names(&watch.snapshot(&LEARN)), ["api-1"]);
}
