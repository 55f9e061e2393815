//! The CRDs and the learner's publication against a real API server: kube's CRD-only
//! `apiextensions-apiserver` with etcd, both on loopback, built and started by
//! `scripts/apiserver.sh` (which see for how the server is built from Debian's Go packages).
//!
//! What only a real server shows, and the mock API server of `crd_api.rs` cannot:
//! - the CRD generated from the Rust types is accepted and becomes Established;
//! - server-side apply stores the spec as sent (it round-trips), records the learner as the
//!   field manager, and the forced apply takes fields back from someone who edited them;
//! - stale managed objects are deleted, unmanaged ones are left alone;
//! - the schema generated from the Rust types is enforced: wrong types, unknown enum values,
//!   out-of-range integers and missing required fields are refused, unknown fields pruned.
//!
//! Each test starts its own etcd and server (about two seconds) and stops them by PID when it
//! ends, even when it fails. Without the binaries (`scripts/apiserver.sh build`, about five to
//! eight minutes) the tests print `SKIPPED: ...` and pass.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s::{
    apply::{self, FIELD_MANAGER},
    crd::{self, ResourceOptions, WorkloadBaseline, WorkloadBaselineSpec},
};
use k8s_openapi::{
    api::{
        core::v1::Namespace,
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
    client::Body,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};
use learner::{
    propose::{Proposal, ProposedPolicy},
    workload::WorkloadRef,
};
use model::{Direction, Protocol, evidence::RuleEvidence};
use serde_json::{Value, json};

/// The namespace the objects go in. No Namespace object exists for it: the CRD-only server
/// does not serve core/v1 at all (checked below).
const NAMESPACE: &str = "shop";

/// How long the server may take to do anything asked of it here.
const PATIENCE: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// etcd and the apiextensions-apiserver, started by `scripts/apiserver.sh start` in a private
/// folder, with a client for the server.
struct Server {
    client: Client,
    _processes: Processes,
}

/// The private folder of a started server: on drop, the processes whose PIDs it holds are
/// stopped and the folder removed.
struct Processes {
    dir: PathBuf,
}

impl Server {
    /// The running server, or `None` (with a SKIPPED message) when it has not been built.
    async fn start(test: &str) -> Option<Self> {
        let bin = repo_root().join(".tools/apiserver/bin");
        for tool in ["apiextensions-apiserver", "etcd"] {
            if !bin.join(tool).is_file() {
                eprintln!(
                    "SKIPPED: {test}: {} is missing; build it with scripts/apiserver.sh \
                     (Debian unstable's Go packages, about 5-8 minutes)",
                    bin.join(tool).display()
                );
                return None;
            }
        }
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("SKIPPED: {test}: openssl is needed for the client certificate");
            return None;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "palisade-apiserver-{}-{nanos:08x}",
            std::process::id()
        ));
        // The guard exists before anything is started, so that a failure below stops
        // whatever did start.
        let processes = Processes { dir };
        let output = Command::new(repo_root().join("scripts/apiserver.sh"))
            .arg("start")
            .arg(&processes.dir)
            .output()
            .expect("run scripts/apiserver.sh");
        assert!(
            output.status.success(),
            "scripts/apiserver.sh start failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let kubeconfig = Kubeconfig::read_from(processes.dir.join("kubeconfig")).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("the kubeconfig scripts/apiserver.sh wrote");
        Some(Self {
            client: Client::try_from(config).unwrap(),
            _processes: processes,
        })
    }

    /// Create the CRDs Palisade ships and wait until the server serves them.
    async fn install_crds(&self) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in crd::crds() {
            let name = crd.name_any();
            api.create(&PostParams::default(), &crd)
                .await
                .unwrap_or_else(|e| panic!("the server refused the CRD {name}: {e}"));
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            tokio::time::timeout(PATIENCE, established)
                .await
                .unwrap_or_else(|_| panic!("CRD {name} not Established in {PATIENCE:?}"))
                .unwrap();
        }
    }

    fn baselines(&self) -> Api<WorkloadBaseline> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// WorkloadBaselines as untyped JSON, to send what the Rust types cannot express.
    fn raw(&self) -> Api<DynamicObject> {
        let resource = ApiResource::erase::<WorkloadBaseline>(&());
        Api::namespaced_with(self.client.clone(), NAMESPACE, &resource)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for name in ["apiserver", "etcd"] {
            let Ok(pid) = fs::read_to_string(self.dir.join(format!("{name}.pid"))) else {
                continue;
            };
            let pid = pid.trim();
            let _ = Command::new("kill").args(["-TERM", pid]).status();
            // Wait for it to go, so that etcd's data folder can be removed.
            for _ in 0..50 {
                if !running(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if running(pid) {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The process exists and is not a zombie (the servers are orphans once the script exits;
/// whoever adopts them reaps them).
fn running(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            state != Some(Some('Z'))
        })
        .unwrap_or(false)
}

fn evidence(rule: usize, peer: &str, connections: u64) -> RuleEvidence {
    RuleEvidence {
        policy: format!("{NAMESPACE}/palisade-deployment-api"),
        direction: Direction::Egress,
        rule,
        peer: format!("external {peer}"),
        dns_name: Some("payments.example.com".into()),
        protocol: Protocol::Tcp,
        port: Some(443),
        connections,
        bytes: connections * 1000,
        source_pods: vec![format!("{NAMESPACE}/api-7d9f8b6c5d-x2x7q")],
        source_pods_saturated: false,
        first_seen: "2026-11-20T09:00:00Z".into(),
        last_seen: "2026-11-28T09:00:00Z".into(),
        days: 8,
        confidence: 0.875,
        widened: None,
    }
}

/// A policy for `shop/Deployment/<name>` with one egress rule to port 443 of each of `peers`.
fn proposed(name: &str, peers: &[&str], connections: u64) -> ProposedPolicy {
    let egress = peers
        .iter()
        .map(|peer| NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: format!("{peer}/32"),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![NetworkPolicyPort {
                protocol: Some("TCP".into()),
                port: Some(IntOrString::Int(443)),
                end_port: None,
            }]),
        })
        .collect();
    ProposedPolicy {
        workload: WorkloadRef {
            namespace: NAMESPACE.into(),
            kind: "Deployment".into(),
            name: name.into(),
        },
        policy: NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(format!("palisade-deployment-{name}")),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), name.into())])),
                    ..LabelSelector::default()
                }),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(Vec::new()),
                egress: Some(egress),
            }),
        },
        evidence: peers
            .iter()
            .enumerate()
            .map(|(rule, peer)| evidence(rule, peer, connections))
            .collect(),
    }
}

fn resources(policies: Vec<ProposedPolicy>, stable: bool) -> Vec<WorkloadBaseline> {
    let options = ResourceOptions {
        stable,
        ..ResourceOptions::default()
    };
    crd::baseline_resources(
        &Proposal {
            policies,
            notes: Vec::new(),
        },
        &options,
    )
}

/// The names of the WorkloadBaselines in the namespace, sorted.
async fn names(api: &Api<WorkloadBaseline>) -> Vec<String> {
    let mut names: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    names
}

/// The managers of `object`'s fields under `spec`, with their operation (Apply or Update).
fn spec_managers(object: &WorkloadBaseline) -> Vec<(String, String)> {
    object
        .managed_fields()
        .iter()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0.get("f:spec").is_some())
        })
        .map(|entry| {
            (
                entry.manager.clone().unwrap_or_default(),
                entry.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn spec_of(objects: &[WorkloadBaseline], name: &str) -> WorkloadBaselineSpec {
    objects
        .iter()
        .find(|o| o.name_any() == name)
        .unwrap_or_else(|| panic!("no {name} among the local objects"))
        .spec
        .clone()
}

#[tokio::test]
async fn publish_applies_round_trips_and_deletes_stale_objects_on_a_real_server() {
    let Some(server) = Server::start("publish_applies_round_trips_and_deletes_stale_objects").await
    else {
        return;
    };
    server.install_crds().await;
    let api = server.baselines();

    // The server has no core API, so there is no Namespace "shop": namespaced custom
    // resources work without one (the NamespaceLifecycle admission plugin is off).
    // (It answers unknown paths with its path index, not a Status, so ask at the HTTP level.)
    let path = format!("{}/{NAMESPACE}", Namespace::url_path(&(), None));
    let request = http::Request::get(path).body(Body::empty()).unwrap();
    let answer = server.client.send(request).await.unwrap();
    assert_eq!(
        answer.status(),
        http::StatusCode::NOT_FOUND,
        "a CRD-only server serves no Namespaces"
    );

    // An object a person made, not managed by the learner: publishing never touches it.
    let mut manual = resources(vec![proposed("manual", &["192.0.2.1"], 1)], false).remove(0);
    manual.metadata.labels = None;
    api.create(&PostParams::default(), &manual).await.unwrap();

    // 1. Two workloads: both applied, by the learner's field manager.
    let first = resources(
        vec![
            proposed("api", &["203.0.113.10", "203.0.113.11"], 40),
            proposed("web", &["198.51.100.7"], 3),
        ],
        false,
    );
    let published = apply::publish(&server.client, first.clone()).await.unwrap();
    assert!(published.is_complete(), "{:?}", published.failed);
    assert_eq!(
        published.applied,
        ["shop/deployment-api", "shop/deployment-web"]
    );
    assert!(published.deleted.is_empty(), "{:?}", published.deleted);
    assert_eq!(
        names(&api).await,
        ["deployment-api", "deployment-manual", "deployment-web"]
    );
    for name in ["deployment-api", "deployment-web"] {
        let stored = api.get(name).await.unwrap();
        assert_eq!(
            stored.spec,
            spec_of(&first, name),
            "{name}'s spec round-trips"
        );
        assert_eq!(
            stored
                .labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("palisade")
        );
        assert_eq!(
            spec_managers(&stored),
            [(FIELD_MANAGER.to_owned(), "Apply".to_owned())],
            "{name}: the learner alone owns the spec"
        );
    }

    // 2. Someone edits a field the learner owns: a plain apply by another manager conflicts,
    //    an update (what `kubectl edit` does) goes through and takes the field over.
    let stable_true = json!({
        "apiVersion": "palisade.io/v1alpha1", "kind": "WorkloadBaseline",
        "metadata": {"name": "deployment-api", "namespace": NAMESPACE},
        "spec": {"stable": true},
    });
    let conflict = api
        .patch(
            "deployment-api",
            &PatchParams::apply("someone"),
            &Patch::Apply(&stable_true),
        )
        .await;
    match conflict {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("applying over the learner's field did not conflict: {other:?}"),
    }
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    let edited = api
        .patch(
            "deployment-api",
            &edit,
            &Patch::Merge(json!({"spec": {"stable": true}})),
        )
        .await
        .unwrap();
    assert!(edited.spec.stable);
    assert!(
        spec_managers(&edited).contains(&("kubectl-edit".to_owned(), "Update".to_owned())),
        "{:?}",
        edited.managed_fields()
    );

    // 3. The next publication: web is gone, api changed (one peer fewer, more connections);
    //    the forced apply takes `stable` back.
    let second = resources(vec![proposed("api", &["203.0.113.10"], 95)], false);
    let published = apply::publish(&server.client, second.clone())
        .await
        .unwrap();
    assert!(published.is_complete(), "{:?}", published.failed);
    assert_eq!(published.applied, ["shop/deployment-api"]);
    assert_eq!(published.deleted, ["shop/deployment-web"]);
    assert_eq!(
        names(&api).await,
        ["deployment-api", "deployment-manual"],
        "the stale managed object is deleted, the unmanaged one stays"
    );
    let stored = api.get("deployment-api").await.unwrap();
    assert_eq!(stored.spec, spec_of(&second, "deployment-api"));
    assert_eq!(stored.spec.rule_count, 1);
    assert_eq!(stored.spec.rules[0].connections, 95);
    assert!(!stored.spec.stable, "the forced apply took `stable` back");
    assert_eq!(
        spec_managers(&stored),
        [(FIELD_MANAGER.to_owned(), "Apply".to_owned())],
        "the learner owns the whole spec again"
    );

    // 4. Publishing the same set again changes nothing.
    let before = stored.resource_version();
    let published = apply::publish(&server.client, second).await.unwrap();
    assert!(published.is_complete() && published.deleted.is_empty());
    let after = api.get("deployment-api").await.unwrap().resource_version();
    assert_eq!(before, after, "an unchanged apply is a no-op on the server");
}

#[tokio::test]
async fn the_server_enforces_the_schema_generated_from_the_rust_types() {
    let Some(server) = Server::start("the_server_enforces_the_schema").await else {
        return;
    };
    server.install_crds().await;
    let raw = server.raw();

    let object = resources(vec![proposed("api", &["203.0.113.10"], 4)], true).remove(0);
    let valid: Value = serde_json::to_value(&object).unwrap();

    // Each case breaks one field; the server must refuse it as Invalid and name the field.
    type Break = fn(&mut Value);
    let cases: [(&str, &str, Break); 6] = [
        ("wrong type", "spec.ruleCount", |v| {
            v["spec"]["ruleCount"] = json!("many")
        }),
        ("negative count", "spec.ruleCount", |v| {
            v["spec"]["ruleCount"] = json!(-1)
        }),
        ("unknown enum value", "spec.rules[0].direction", |v| {
            v["spec"]["rules"][0]["direction"] = json!("Sideways")
        }),
        ("port out of range", "spec.rules[0].port", |v| {
            v["spec"]["rules"][0]["port"] = json!(70000)
        }),
        ("missing required field", "spec.workload", |v| {
            v["spec"].as_object_mut().unwrap().remove("workload");
        }),
        ("missing required nested field", "spec.workload.kind", |v| {
            v["spec"]["workload"]
                .as_object_mut()
                .unwrap()
                .remove("kind");
        }),
    ];
    for (i, (what, field, break_it)) in cases.into_iter().enumerate() {
        let mut broken = valid.clone();
        broken["metadata"]["name"] = json!(format!("broken-{i}"));
        break_it(&mut broken);
        let broken: DynamicObject = serde_json::from_value(broken).unwrap();
        match raw.create(&PostParams::default(), &broken).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert_eq!(status.reason, "Invalid", "{what}: {status:?}");
                assert!(
                    status.message.contains(field),
                    "{what}: the refusal names {field}: {}",
                    status.message
                );
            }
            other => panic!("{what}: the server accepted an invalid object: {other:?}"),
        }
    }

    // The same object unbroken is accepted (the refusals were about the broken fields), and a
    // field the schema does not know is pruned rather than stored.
    let mut extra = valid.clone();
    extra["spec"]["bogus"] = json!("dropped");
    let created = raw
        .create(
            &PostParams::default(),
            &serde_json::from_value(extra).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        created.data["spec"].get("bogus").is_none(),
        "{:?}",
        created.data
    );
    let stored = server.baselines().get(&object.name_any()).await.unwrap();
    assert_eq!(stored.spec, object.spec);
    assert_eq!(
        WorkloadBaseline::kind(&()),
        created.types.as_ref().map_or("", |t| t.kind.as_str())
    );
}
