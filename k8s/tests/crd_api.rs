//! The learner's WorkloadBaselines and the agent's ConnectionDenied events against a mock
//! API server (kube's client over a `tower-test` service): the requests they send, and what
//! they make of the answers.

use std::{collections::BTreeMap, time::Instant};

use http::{Method, Request, Response, StatusCode};
use k8s::{
    apply::{self, Action, FIELD_MANAGER},
    crd::{self, ResourceOptions, WorkloadBaseline},
    error::Error,
    events::{DeniedConnection, DenyEvents, Limits, PodRef},
};
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicySpec},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube::{Client, client::Body, runtime::events::Reporter};
use learner::{
    propose::{Proposal, ProposedPolicy},
    workload::WorkloadRef,
};
use model::{Direction, Protocol};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// A request as the mock API server saw it.
#[derive(Debug)]
struct Seen {
    method: Method,
    /// Path and query.
    uri: String,
    content_type: String,
    body: Value,
}

impl Seen {
    fn query(&self) -> BTreeMap<String, String> {
        let query = self.uri.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.replace("%2F", "/").replace("%3D", "="))
            })
            .collect()
    }

    fn path(&self) -> &str {
        self.uri.split_once('?').map_or(&self.uri, |(p, _)| p)
    }
}

/// A mock API server answering with `answer(method, path, query, body)`, until every client
/// is dropped; returns what it saw.
fn serve(
    answer: impl Fn(&Method, &str, &str, &Value) -> (StatusCode, Value) + Send + 'static,
) -> (Client, JoinHandle<Vec<Seen>>) {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("kube sends JSON bodies")
            };
            let uri = parts.uri.path_and_query().unwrap().to_string();
            let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
            let (status, reply) = answer(&parts.method, path, query, &body);
            respond.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
            seen.push(Seen {
                method: parts.method,
                uri,
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body,
            });
        }
        seen
    });
    (Client::new(mock, "default"), server)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": code, "reason": reason, "message": message,
    })
}

fn meta(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"namespace": namespace, "name": name,
                     "labels": {"app.kubernetes.io/managed-by": "palisade"}},
    })
}

fn proposed(name: &str) -> ProposedPolicy {
    ProposedPolicy {
        workload: WorkloadRef {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: name.into(),
        },
        policy: NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(format!("palisade-deployment-{name}")),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), name.into())])),
                    ..LabelSelector::default()
                }),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ..NetworkPolicySpec::default()
            }),
        },
        evidence: Vec::new(),
    }
}

fn baselines() -> Vec<WorkloadBaseline> {
    let proposal = Proposal {
        policies: vec![proposed("api"), proposed("web")],
        notes: Vec::new(),
    };
    crd::baseline_resources(&proposal, &ResourceOptions::default())
}

const LIST_PATH: &str = "/apis/palisade.io/v1alpha1/workloadbaselines";

#[tokio::test]
async fn publish_applies_server_side_and_deletes_stale_managed_objects() {
    let (client, server) = serve(|method, path, query, body| match (method.as_str(), path) {
        // Two pages of managed objects: one wanted, two stale.
        ("GET", LIST_PATH) if !query.contains("continue=") => (
            StatusCode::OK,
            json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {"continue": "page-2"},
                "items": [meta("shop", "deployment-api"), meta("shop", "deployment-old")],
            }),
        ),
        ("GET", LIST_PATH) => (
            StatusCode::OK,
            json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {}, "items": [meta("other", "statefulset-gone")],
            }),
        ),
        (
            "PATCH",
            "/apis/palisade.io/v1alpha1/namespaces/shop/workloadbaselines/deployment-api",
        ) => (StatusCode::OK, body.clone()),
        (
            "PATCH",
            "/apis/palisade.io/v1alpha1/namespaces/shop/workloadbaselines/deployment-web",
        ) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            status(422, "Invalid", "spec.rules: Too many"),
        ),
        (
            "DELETE",
            "/apis/palisade.io/v1alpha1/namespaces/shop/workloadbaselines/deployment-old",
        ) => (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200}),
        ),
        // Someone deleted it first.
        (
            "DELETE",
            "/apis/palisade.io/v1alpha1/namespaces/other/workloadbaselines/statefulset-gone",
        ) => (StatusCode::NOT_FOUND, status(404, "NotFound", "not found")),
        other => panic!("unexpected request {other:?}"),
    });

    let published = apply::publish(&client, baselines()).await.unwrap();
    drop(client);
    let seen = server.await.unwrap();

    assert_eq!(published.applied, ["shop/deployment-api"]);
    assert_eq!(
        published.deleted,
        ["other/statefulset-gone", "shop/deployment-old"]
    );
    assert_eq!(published.failed.len(), 1);
    let failure = &published.failed[0];
    assert_eq!(failure.object, "shop/deployment-web");
    assert_eq!(failure.action, Action::Apply);
    assert!(!published.is_complete());

    // The list asks for the managed objects only, their metadata only.
    let lists: Vec<&Seen> = seen.iter().filter(|s| s.method == Method::GET).collect();
    assert_eq!(lists.len(), 2);
    assert_eq!(
        lists[0].query()["labelSelector"],
        "app.kubernetes.io/managed-by=palisade"
    );
    assert_eq!(lists[1].query()["continue"], "page-2");

    let patches: Vec<&Seen> = seen.iter().filter(|s| s.method == Method::PATCH).collect();
    assert_eq!(patches.len(), 2);
    for patch in patches {
        assert_eq!(patch.content_type, "application/apply-patch+yaml");
        let query = patch.query();
        assert_eq!(query["fieldManager"], FIELD_MANAGER);
        assert_eq!(query["force"], "true");
        assert_eq!(patch.body["apiVersion"], "palisade.io/v1alpha1");
        assert_eq!(patch.body["kind"], "WorkloadBaseline");
        assert_eq!(
            patch.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "palisade"
        );
        assert_eq!(patch.body["spec"]["workload"]["kind"], "Deployment");
        assert!(
            patch.body["spec"]["policy"]
                .as_str()
                .unwrap()
                .contains("kind: NetworkPolicy")
        );
        // Server-side apply rejects these in an applied configuration.
        assert!(patch.body["metadata"].get("resourceVersion").is_none());
        assert!(patch.body["metadata"].get("managedFields").is_none());
    }

    let mut deletes: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == Method::DELETE)
        .map(Seen::path)
        .collect();
    deletes.sort();
    assert_eq!(
        deletes,
        [
            "/apis/palisade.io/v1alpha1/namespaces/other/workloadbaselines/statefulset-gone",
            "/apis/palisade.io/v1alpha1/namespaces/shop/workloadbaselines/deployment-old",
        ]
    );
}

#[tokio::test]
async fn publish_writes_nothing_when_the_managed_objects_cannot_be_listed() {
    let (client, server) = serve(|method, path, _, _| match (method.as_str(), path) {
        ("GET", LIST_PATH) => (
            StatusCode::FORBIDDEN,
            status(403, "Forbidden", "cannot list workloadbaselines"),
        ),
        other => panic!("unexpected request {other:?}"),
    });
    let result = apply::publish(&client, baselines()).await;
    drop(client);
    let seen = server.await.unwrap();
    match result {
        Err(Error::ListBaselines { selector, .. }) => {
            assert_eq!(selector, "app.kubernetes.io/managed-by=palisade")
        }
        other => panic!("expected a list error, got {other:?}"),
    }
    assert_eq!(seen.len(), 1, "only the list: {seen:?}");
}

fn denied(pod: &str, port: u16) -> DeniedConnection {
    DeniedConnection {
        pod: PodRef {
            namespace: "shop".into(),
            name: pod.into(),
            uid: Some(format!("uid-{pod}")),
        },
        direction: Direction::Egress,
        peer: "203.0.113.7 (evil.example)".into(),
        protocol: Protocol::Tcp,
        port: Some(port),
        policy: "no rule of shop/palisade-deployment-web allows it".into(),
        enforced: true,
    }
}

#[tokio::test]
async fn denied_connections_become_rate_limited_warning_events_on_the_pod() {
    let (client, server) = serve(|method, path, _, body| match (method.as_str(), path) {
        ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events") => {
            (StatusCode::CREATED, body.clone())
        }
        other => panic!("unexpected request {other:?}"),
    });
    let reporter = Reporter {
        controller: "palisade-agent".into(),
        instance: Some("node-1".into()),
    };
    let mut events = DenyEvents::new(client, reporter, Limits::default());
    let t0 = Instant::now();
    assert!(events.offer(&denied("web-1", 443), t0));
    // The same connection again within the window: held back, counted.
    assert!(!events.offer(&denied("web-1", 443), t0));
    assert!(!events.offer(&denied("web-1", 443), t0));
    assert!(events.offer(&denied("web-2", 5432), t0));
    let stats = events.close().await;
    let seen = server.await.unwrap();

    assert_eq!(stats.queued, 2);
    assert_eq!(stats.held_back, 2);
    assert_eq!(stats.published, 2);
    assert_eq!((stats.dropped, stats.failed), (0, 0));
    assert_eq!(seen.len(), 2);
    let event = &seen[0].body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "ConnectionDenied");
    assert_eq!(event["reportingController"], "palisade-agent");
    assert_eq!(event["reportingInstance"], "node-1");
    assert_eq!(
        event["regarding"],
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "web-1",
               "uid": "uid-web-1"})
    );
    assert_eq!(
        event["note"],
        "Dropped egress to 203.0.113.7 (evil.example) TCP/443: no rule of \
         shop/palisade-deployment-web allows it"
    );
    assert_eq!(seen[1].body["regarding"]["name"], "web-2");
    assert!(
        seen[1].body["note"].as_str().unwrap().contains("TCP/5432"),
        "{}",
        seen[1].body["note"]
    );
}

#[tokio::test]
async fn a_refused_event_is_counted_and_the_next_one_still_goes() {
    let (client, server) = serve(|method, path, _, body| match (method.as_str(), path) {
        ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events")
            if body["regarding"]["name"] == "web-1" =>
        {
            (StatusCode::FORBIDDEN, status(403, "Forbidden", "no RBAC"))
        }
        ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events") => {
            (StatusCode::CREATED, body.clone())
        }
        other => panic!("unexpected request {other:?}"),
    });
    let mut events = DenyEvents::new(client, "palisade-agent", Limits::default());
    let t0 = Instant::now();
    assert!(events.offer(&denied("web-1", 443), t0));
    assert!(events.offer(&denied("web-2", 443), t0));
    let stats = events.close().await;
    assert_eq!(server.await.unwrap().len(), 2);
    assert_eq!((stats.published, stats.failed), (1, 1));
}
