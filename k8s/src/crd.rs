//! The learner's output as custom resources: one `WorkloadBaseline` (`palisade.io/v1alpha1`)
//! per workload, holding what the workload was seen to need (each learned rule with its
//! evidence), what was left out and why, whether the baseline has settled, and the proposed
//! NetworkPolicy as the exact YAML a reviewer gets in the pull request.
//!
//! One object per workload keeps each object small; a size guard keeps every object under
//! [`SIZE_BUDGET`] (a third of etcd's 1.5 MiB request limit) by trimming the evidence detail of
//! the least-used rules first, and says so in the object (`spec.trimmed`). The rules
//! themselves are never trimmed: the policy is always whole.
//!
//! The CRD's schema is generated from these Rust types ([`crds`], [`crd_manifests`]); the Helm
//! chart's `crds/` folder holds the generated YAML, and a golden test keeps the two equal.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::NetworkPolicy,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{CustomResource, CustomResourceExt};
use learner::{propose::Proposal, workload::WorkloadRef};
use model::{
    Direction,
    evidence::{MANAGED_BY, RuleEvidence, WORKLOAD_ANNOTATION},
};
use policy_gen::{export::network_policy_text, set::ReviewedPolicy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most a `WorkloadBaseline` may weigh, serialized as JSON (how the API server stores
/// custom resources): a third of etcd's default 1.5 MiB request limit, leaving room for
/// `managedFields` and for the object to grow between two publications.
pub const SIZE_BUDGET: usize = 512 * 1024;

/// How many client pods a trimmed rule keeps as examples.
pub const TRIMMED_CLIENT_PODS: usize = 3;

/// What the learner learned about one workload and what it proposes to enforce for it.
#[expect(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats `type_ = ...`: separate columns, not duplicates"
)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "palisade.io",
    version = "v1alpha1",
    kind = "WorkloadBaseline",
    plural = "workloadbaselines",
    shortname = "wlb",
    category = "palisade",
    namespaced,
    derive = "PartialEq",
    // `kubectl get wlb --field-selector spec.workload.name=api` (Kubernetes 1.32+).
    selectable = ".spec.workload.kind",
    selectable = ".spec.workload.name",
    selectable = ".spec.stable",
    doc = "What Palisade's learner saw one workload need: the learned rules with their evidence, \
           what was left out and why, and the proposed NetworkPolicy as reviewers get it.",
    printcolumn(
        name = "Kind",
        type_ = "string",
        json_path = ".spec.workload.kind"
    ),
    printcolumn(
        name = "Workload",
        type_ = "string",
        json_path = ".spec.workload.name"
    ),
    printcolumn(
        name = "Rules",
        type_ = "integer",
        description = "learned rules (baseline entries) behind the proposal",
        json_path = ".spec.ruleCount"
    ),
    printcolumn(
        name = "Confidence",
        type_ = "number",
        description = "the lowest confidence of the learned rules (0-1)",
        json_path = ".spec.minConfidence"
    ),
    printcolumn(
        name = "Stable",
        type_ = "boolean",
        description = "the baseline stopped changing",
        json_path = ".spec.stable"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadBaselineSpec {
    pub workload: Workload,
    /// Learned rules (baseline entries) behind the proposal, before any trimming.
    pub rule_count: u32,
    /// The lowest confidence among the learned rules; absent without rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f64>,
    /// The baseline as a whole has stopped changing: no new rule appeared for the learner's
    /// quiet period, so the proposal is ready for review.
    pub stable: bool,
    /// The learned rules with their evidence, egress then ingress, in policy rule order.
    #[serde(default)]
    pub rules: Vec<LearnedRule>,
    /// What was observed but left out of the proposal, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The proposed NetworkPolicy exactly as the reviewed file holds it (evidence comments
    /// and annotations included); absent when no policy could be proposed (see `notes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Present when evidence detail was trimmed to keep the object small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trimmed: Option<Trimmed>,
}

/// The workload, in the object's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet or Pod.
    pub kind: String,
    pub name: String,
    /// The labels the proposed policy selects the workload's pods by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RuleDirection {
    Ingress,
    Egress,
}

impl From<Direction> for RuleDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => Self::Ingress,
            Direction::Egress => Self::Egress,
        }
    }
}

/// One learned rule (a baseline entry) and the evidence behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LearnedRule {
    pub direction: RuleDirection,
    /// Index of the policy rule it became, in `spec.ingress` or `spec.egress`.
    pub policy_rule: u32,
    /// The peer as observed: `workload ns/Kind/name`, `service ns/name`, `external IP (name)`.
    pub peer: String,
    /// The DNS name an external peer was looked up by, when the agent saw the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// TCP, UDP, SCTP, ICMP, ...
    pub protocol: String,
    /// The server's port; absent for protocols without ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub connections: u64,
    pub bytes: u64,
    /// Distinct client pods seen (a lower bound when `clientPodsSaturated`).
    pub distinct_client_pods: u32,
    /// More client pods were seen than the learner keeps.
    #[serde(default)]
    pub client_pods_saturated: bool,
    /// The client pods; fewer than `distinctClientPods` when trimmed (see `spec.trimmed`).
    #[serde(default)]
    pub client_pods: Vec<String>,
    /// RFC 3339.
    pub first_seen: String,
    /// RFC 3339.
    pub last_seen: String,
    pub days_seen: u32,
    /// In [0, 1).
    pub confidence: f64,
    /// Why an exact external address became a wider CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widened: Option<Widening>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Widening {
    pub cidr: String,
    pub reason: String,
}

/// What the size guard took out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trimmed {
    /// The object's size budget, in bytes of JSON.
    pub budget_bytes: u64,
    /// Rules whose client pod list was cut to a few examples (the least used first).
    pub client_pod_lists: u32,
    /// Rules whose evidence was left out entirely (the least used first, after every client
    /// pod list was cut); their policy rules remain.
    pub evidence_omitted: u32,
    /// Notes left out (the last ones), after all evidence.
    #[serde(default)]
    pub notes_omitted: u32,
    /// Even without any evidence the object exceeds the budget (the policy itself is that
    /// large).
    #[serde(default)]
    pub over_budget: bool,
    pub message: String,
}

/// How [`baseline_resources`] builds objects.
#[derive(Clone, Debug)]
pub struct ResourceOptions {
    /// Whether the baseline has settled (`learner::baseline::Baseline::is_stable`).
    pub stable: bool,
    /// Each object's budget in bytes of JSON ([`SIZE_BUDGET`]).
    pub size_budget: usize,
}

impl Default for ResourceOptions {
    fn default() -> Self {
        Self {
            stable: false,
            size_budget: SIZE_BUDGET,
        }
    }
}

/// One `WorkloadBaseline` per workload of `proposal`, sorted by namespace and name: one per
/// proposed policy, and one for each other workload the notes name (no policy could be
/// proposed; the notes say why). Notes about something that is not a `namespace/Kind/name`
/// workload have no object to go in and are left to the learner's files.
pub fn baseline_resources(proposal: &Proposal, options: &ResourceOptions) -> Vec<WorkloadBaseline> {
    let mut notes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for note in &proposal.notes {
        notes
            .entry(note.workload.clone())
            .or_default()
            .push(note.message.clone());
    }
    let mut drafts: BTreeMap<String, Draft> = BTreeMap::new();
    for p in &proposal.policies {
        let key = p.workload.to_string();
        drafts.insert(
            key.clone(),
            Draft {
                notes: notes.remove(&key).unwrap_or_default(),
                workload: p.workload.clone(),
                policy: Some(p.policy.clone()),
                evidence: p.evidence.clone(),
            },
        );
    }
    for (key, messages) in notes {
        match WorkloadRef::parse(&key) {
            Some(workload) => {
                drafts.insert(
                    key,
                    Draft {
                        workload,
                        policy: None,
                        evidence: Vec::new(),
                        notes: messages,
                    },
                );
            }
            None => tracing::debug!(workload = %key, "notes without a workload: no object"),
        }
    }
    let mut objects: Vec<WorkloadBaseline> = drafts.values().map(|d| guarded(d, options)).collect();
    objects.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    objects
}

/// The CRDs Palisade defines for its baselines.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![WorkloadBaseline::crd()]
}

/// The YAML file name of a CRD in the chart's `crds/` folder: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default())
}

/// Every CRD of [`crds`] as YAML, documents separated by `---`.
pub fn crd_manifests() -> String {
    crds()
        .iter()
        .map(crd_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// One CRD as YAML.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).expect("a CustomResourceDefinition serializes")
}

/// The object name for a workload: `<kind>-<name>` in lower case when that is a valid DNS-1123
/// subdomain; otherwise cleaned to `[a-z0-9-]`, cut to fit 253 characters and given a hash of
/// the workload (40 bits of FNV-1a), so that two workloads that clean to the same text still
/// get different names.
pub fn resource_name(workload: &WorkloadRef) -> String {
    let plain = format!("{}-{}", workload.kind.to_ascii_lowercase(), workload.name);
    if is_dns1123_subdomain(&plain) {
        return plain;
    }
    let suffix = format!(
        "{:010x}",
        fnv1a(workload.to_string().as_bytes()) & 0xff_ffff_ffff
    );
    let mut cleaned = String::with_capacity(plain.len());
    for c in plain.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (cleaned.is_empty() || cleaned.ends_with('-'))) {
            cleaned.push(c);
        }
    }
    cleaned.truncate(MAX_NAME - suffix.len() - 1);
    let cleaned = cleaned.trim_end_matches('-');
    let prefix = if cleaned.is_empty() {
        "workload"
    } else {
        cleaned
    };
    format!("{prefix}-{suffix}")
}

const MAX_NAME: usize = 253;

/// Kubernetes' `IsDNS1123Subdomain`: dot-separated labels of `[a-z0-9-]` that start and end
/// with an alphanumeric, 253 characters at most.
fn is_dns1123_subdomain(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= MAX_NAME
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && alnum(b[0])
                && alnum(b[b.len() - 1])
                && b.iter().all(|&c| alnum(c) || c == b'-')
        })
}

/// FNV-1a, 64 bits: a name suffix must not change between releases, which std's hasher does
/// not promise.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A workload's object before the size guard.
struct Draft {
    workload: WorkloadRef,
    policy: Option<NetworkPolicy>,
    evidence: Vec<RuleEvidence>,
    notes: Vec<String>,
}

/// How much detail to leave out: the `pods` least-used rules keep only a few client pods,
/// the `evidence` least-used rules keep nothing, and the last `notes` notes go.
#[derive(Clone, Copy, Debug, Default)]
struct Trim {
    pods: usize,
    evidence: usize,
    notes: usize,
}

/// The draft as an object within the budget, trimming as little as it can: client pod
/// lists first, then whole evidence entries, then notes, each least useful first.
fn guarded(draft: &Draft, options: &ResourceOptions) -> WorkloadBaseline {
    // Least used first: fewest connections, then fewest bytes; ties in rule order, so the
    // same baseline always trims the same rules.
    let mut order: Vec<usize> = (0..draft.evidence.len()).collect();
    order.sort_by_key(|&i| (draft.evidence[i].connections, draft.evidence[i].bytes, i));
    let fits =
        |trim: Trim| serialized_size(&render(draft, &order, trim, options)) <= options.size_budget;
    if fits(Trim::default()) {
        return render(draft, &order, Trim::default(), options);
    }
    let (rules, notes) = (order.len(), draft.notes.len());
    let stages: [&dyn Fn(usize) -> Trim; 3] = [
        &|k| Trim {
            pods: k,
            ..Trim::default()
        },
        &|k| Trim {
            pods: rules,
            evidence: k,
            notes: 0,
        },
        &|k| Trim {
            pods: rules,
            evidence: rules,
            notes: k,
        },
    ];
    let limits = [rules, rules, notes];
    for (stage, limit) in stages.iter().zip(limits) {
        if let Some(k) = smallest(limit, |k| fits(stage(k))) {
            let trim = stage(k);
            let object = render(draft, &order, trim, options);
            tracing::info!(
                workload = %draft.workload,
                client_pod_lists = trim.pods,
                evidence_omitted = trim.evidence,
                notes_omitted = trim.notes,
                bytes = serialized_size(&object),
                budget = options.size_budget,
                "trimmed WorkloadBaseline detail to fit its size budget"
            );
            return object;
        }
    }
    let mut object = render(draft, &order, stages[2](notes), options);
    if let Some(t) = &mut object.spec.trimmed {
        t.over_budget = true;
        t.message
            .push_str("; the proposed policy alone exceeds the budget");
    }
    tracing::warn!(
        workload = %draft.workload,
        bytes = serialized_size(&object),
        budget = options.size_budget,
        "the proposed policy alone exceeds the WorkloadBaseline size budget"
    );
    object
}

/// The smallest `k` in `0..=n` for which `ok(k)` holds, assuming `ok` is monotonic (more
/// trimming never makes an object larger); `None` when even `n` fails.
fn smallest(n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    if !ok(n) {
        return None;
    }
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(hi)
}

fn serialized_size(object: &WorkloadBaseline) -> usize {
    serde_json::to_vec(object)
        .expect("a WorkloadBaseline serializes")
        .len()
}

fn render(
    draft: &Draft,
    order: &[usize],
    trim: Trim,
    options: &ResourceOptions,
) -> WorkloadBaseline {
    let mut evidence: Vec<Option<RuleEvidence>> =
        draft.evidence.iter().cloned().map(Some).collect();
    for &i in order.iter().take(trim.evidence) {
        evidence[i] = None;
    }
    let mut pods_cut: u32 = 0;
    for &i in order.iter().take(trim.pods) {
        if let Some(e) = &mut evidence[i]
            && e.source_pods.len() > TRIMMED_CLIENT_PODS
        {
            e.source_pods.truncate(TRIMMED_CLIENT_PODS);
            // "3+ pods" in the policy file's comment: a lower bound, as for a full list.
            e.source_pods_saturated = true;
            pods_cut += 1;
        }
    }
    let mut rules: Vec<LearnedRule> = evidence
        .iter()
        .zip(&draft.evidence)
        .filter_map(|(kept, full)| kept.as_ref().map(|e| learned_rule(e, full)))
        .collect();
    // The order of the policy file's evidence comments: egress first, by rule.
    rules.sort_by_key(|r| (r.direction == RuleDirection::Ingress, r.policy_rule));
    let kept: Vec<RuleEvidence> = evidence.into_iter().flatten().collect();
    let notes_kept = draft.notes.len().saturating_sub(trim.notes);
    let trimmed = (pods_cut > 0 || trim.evidence > 0 || trim.notes > 0).then(|| {
        let mut message = format!(
            "detail trimmed to keep this object under {} bytes",
            options.size_budget
        );
        if pods_cut > 0 {
            message.push_str(&format!(
                "; the {pods_cut} least-used rules list only {TRIMMED_CLIENT_PODS} of their client pods"
            ));
        }
        if trim.evidence > 0 {
            message.push_str(&format!(
                "; the {} least-used rules carry no evidence (their policy rules remain)",
                trim.evidence
            ));
        }
        if trim.notes > 0 {
            message.push_str(&format!("; {} notes left out", trim.notes));
        }
        message.push_str("; the learner's review files keep everything");
        Trimmed {
            budget_bytes: options.size_budget as u64,
            client_pod_lists: pods_cut,
            evidence_omitted: u32::try_from(trim.evidence).unwrap_or(u32::MAX),
            notes_omitted: u32::try_from(trim.notes).unwrap_or(u32::MAX),
            over_budget: false,
            message,
        }
    });
    let workload = &draft.workload;
    let selector = draft
        .policy
        .as_ref()
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.pod_selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    let policy = draft.policy.as_ref().map(|p| {
        network_policy_text(&ReviewedPolicy {
            policy: p.clone(),
            workload: Some(workload.to_string()),
            evidence: kept,
            source: None,
        })
    });
    let spec = WorkloadBaselineSpec {
        workload: Workload {
            kind: workload.kind.clone(),
            name: workload.name.clone(),
            selector,
        },
        rule_count: u32::try_from(draft.evidence.len()).unwrap_or(u32::MAX),
        min_confidence: draft
            .evidence
            .iter()
            .map(|e| e.confidence)
            .min_by(f64::total_cmp),
        stable: options.stable,
        rules,
        notes: draft.notes[..notes_kept].to_vec(),
        policy,
        trimmed,
    };
    WorkloadBaseline {
        metadata: ObjectMeta {
            name: Some(resource_name(workload)),
            namespace: Some(workload.namespace.clone()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
            annotations: Some(BTreeMap::from([(
                WORKLOAD_ANNOTATION.into(),
                workload.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec,
    }
}

/// A rule of the object from its (possibly trimmed) evidence; the count of client pods
/// comes from the full evidence.
fn learned_rule(e: &RuleEvidence, full: &RuleEvidence) -> LearnedRule {
    LearnedRule {
        direction: e.direction.into(),
        policy_rule: u32::try_from(e.rule).unwrap_or(u32::MAX),
        peer: e.peer.clone(),
        dns_name: e.dns_name.clone(),
        protocol: e.protocol.to_string(),
        port: e.port,
        connections: e.connections,
        bytes: e.bytes,
        distinct_client_pods: u32::try_from(full.source_pods.len()).unwrap_or(u32::MAX),
        client_pods_saturated: full.source_pods_saturated,
        client_pods: e.source_pods.clone(),
        first_seen: e.first_seen.clone(),
        last_seen: e.last_seen.clone(),
        days_seen: e.days,
        confidence: e.confidence,
        widened: e.widened.as_ref().map(|w| Widening {
            cidr: w.cidr.to_string(),
            reason: w.reason.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::{
        IPBlock, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    };
    use k8s_openapi::apimachinery::pkg::{
        apis::meta::v1::LabelSelector, util::intstr::IntOrString,
    };
    use learner::propose::{Note, ProposedPolicy};
    use model::{Protocol, evidence::Widened};

    use super::*;

    fn workload(namespace: &str, kind: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            namespace: namespace.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    fn evidence(rule: usize, connections: u64, pods: usize) -> RuleEvidence {
        RuleEvidence {
            policy: "shop/palisade-deployment-api".into(),
            direction: Direction::Egress,
            rule,
            peer: format!("external 203.0.{}.{}", rule / 250, rule % 250),
            dns_name: None,
            protocol: Protocol::Tcp,
            port: Some(443),
            connections,
            bytes: connections * 1000,
            source_pods: (0..pods)
                .map(|p| format!("shop/api-7d9f8b6c5d-{p:05}-with-a-rather-long-pod-name-suffix"))
                .collect(),
            source_pods_saturated: false,
            first_seen: "2026-11-20T09:00:00.000Z".into(),
            last_seen: "2026-11-28T09:00:00.000Z".into(),
            days: 8,
            confidence: 0.5 + (connections % 40) as f64 / 100.0,
            widened: None,
        }
    }

    /// A policy for shop/Deployment/api with one egress rule per evidence entry.
    fn proposed(evidence: Vec<RuleEvidence>) -> ProposedPolicy {
        let egress = evidence
            .iter()
            .map(|e| NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: format!("{}/32", e.peer.trim_start_matches("external ")),
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
            workload: workload("shop", "Deployment", "api"),
            policy: NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some("palisade-deployment-api".into()),
                    namespace: Some("shop".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([("app".into(), "api".into())])),
                        ..LabelSelector::default()
                    }),
                    policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                    ingress: Some(Vec::new()),
                    egress: Some(egress),
                }),
            },
            evidence,
        }
    }

    fn proposal(evidence: Vec<RuleEvidence>) -> Proposal {
        Proposal {
            policies: vec![proposed(evidence)],
            notes: Vec::new(),
        }
    }

    fn size(object: &WorkloadBaseline) -> usize {
        serde_json::to_vec(object).unwrap().len()
    }

    /// The policy a `spec.policy` text holds.
    fn policy_of(object: &WorkloadBaseline) -> NetworkPolicy {
        serde_yaml::from_str(object.spec.policy.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn names_are_kind_and_name_when_valid() {
        assert_eq!(
            resource_name(&workload("shop", "Deployment", "api")),
            "deployment-api"
        );
        assert_eq!(
            resource_name(&workload("shop", "StatefulSet", "db.primary")),
            "statefulset-db.primary"
        );
    }

    #[test]
    fn names_are_cleaned_and_hashed_when_not_valid() {
        let odd = resource_name(&workload("shop", "Pod", "Web_Front..1-"));
        assert!(is_dns1123_subdomain(&odd), "{odd}");
        assert!(odd.starts_with("pod-web-front-1-"), "{odd}");
        // Pinned: a name must not change between releases (the old object would linger).
        assert_eq!(odd, "pod-web-front-1-5a0ff236ee");
        // Two names that clean to the same text still differ.
        let other = resource_name(&workload("shop", "Pod", "web-front..1-"));
        assert_ne!(odd, other);
        assert!(is_dns1123_subdomain(&other), "{other}");
    }

    #[test]
    fn long_names_are_cut_to_253_with_a_hash() {
        let long =
            |tail: &str| workload("shop", "Deployment", &format!("{}{tail}", "a".repeat(260)));
        let (a, b) = (resource_name(&long("x")), resource_name(&long("y")));
        for name in [&a, &b] {
            assert!(name.len() <= 253, "{}", name.len());
            assert!(is_dns1123_subdomain(name), "{name}");
        }
        assert_ne!(a, b, "names that share their first 253 characters differ");
        assert_eq!(a, resource_name(&long("x")), "deterministic");
    }

    #[test]
    fn dns1123_subdomains() {
        for ok in ["a", "a-b", "a.b", "0a", "a".repeat(253).as_str()] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a..b",
            "a.-b",
            "a_b",
            "a".repeat(254).as_str(),
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn one_object_per_workload_with_its_rules_notes_and_policy() {
        let mut widened = evidence(1, 7, 2);
        widened.dns_name = Some("api.example.com".into());
        widened.widened = Some(Widened {
            cidr: "203.0.0.0/24".parse().unwrap(),
            reason: "a /24 of one provider".into(),
        });
        let mut proposal = proposal(vec![evidence(0, 42, 3), widened]);
        proposal.notes = vec![
            Note {
                workload: "shop/Deployment/api".into(),
                message: "egress to 10.0.0.1 ICMP left out: no ports".into(),
            },
            Note {
                workload: "shop/Pod/debug".into(),
                message: "no policy: no stable labels".into(),
            },
            Note {
                workload: "garbage".into(),
                message: "not a workload".into(),
            },
        ];
        let objects = baseline_resources(
            &proposal,
            &ResourceOptions {
                stable: true,
                ..ResourceOptions::default()
            },
        );
        let names: Vec<_> = objects
            .iter()
            .map(|o| {
                (
                    o.metadata.namespace.as_deref().unwrap(),
                    o.metadata.name.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(names, [("shop", "deployment-api"), ("shop", "pod-debug")]);

        let api = &objects[0];
        assert_eq!(
            api.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "palisade"
        );
        assert_eq!(
            api.metadata.annotations.as_ref().unwrap()[WORKLOAD_ANNOTATION],
            "shop/Deployment/api"
        );
        let spec = &api.spec;
        assert_eq!(spec.workload.kind, "Deployment");
        assert_eq!(spec.workload.name, "api");
        assert_eq!(spec.workload.selector["app"], "api");
        assert!(spec.stable);
        assert_eq!(spec.rule_count, 2);
        assert_eq!(spec.min_confidence, Some(evidence(0, 42, 3).confidence));
        assert_eq!(spec.notes, ["egress to 10.0.0.1 ICMP left out: no ports"]);
        assert_eq!(spec.trimmed, None);
        assert_eq!(spec.rules.len(), 2);
        let rule = &spec.rules[1];
        assert_eq!(rule.direction, RuleDirection::Egress);
        assert_eq!(rule.policy_rule, 1);
        assert_eq!(rule.protocol, "TCP");
        assert_eq!(rule.port, Some(443));
        assert_eq!(rule.distinct_client_pods, 2);
        assert_eq!(rule.client_pods.len(), 2);
        assert_eq!(rule.dns_name.as_deref(), Some("api.example.com"));
        assert_eq!(
            rule.widened,
            Some(Widening {
                cidr: "203.0.0.0/24".into(),
                reason: "a /24 of one provider".into()
            })
        );
        // The policy is the reviewer's file, byte for byte.
        let p = &proposal.policies[0];
        let file = network_policy_text(&ReviewedPolicy {
            policy: p.policy.clone(),
            workload: Some("shop/Deployment/api".into()),
            evidence: p.evidence.clone(),
            source: None,
        });
        assert_eq!(spec.policy.as_deref(), Some(file.as_str()));

        let debug = &objects[1].spec;
        assert_eq!(debug.policy, None);
        assert!(debug.rules.is_empty());
        assert_eq!(debug.min_confidence, None);
        assert_eq!(debug.notes, ["no policy: no stable labels"]);

        // The object round-trips through JSON, as the API server stores it.
        let json = serde_json::to_string(api).unwrap();
        assert_eq!(
            &serde_json::from_str::<WorkloadBaseline>(&json).unwrap(),
            api
        );
    }

    #[test]
    fn a_huge_workload_is_trimmed_under_the_budget_least_used_rules_first() {
        // 400 rules with 64 long-named client pods each: several MiB untrimmed.
        let rules: Vec<RuleEvidence> = (0..400).map(|i| evidence(i, 1 + i as u64, 64)).collect();
        let proposal = proposal(rules);
        let untrimmed = render(
            &Draft {
                workload: proposal.policies[0].workload.clone(),
                policy: Some(proposal.policies[0].policy.clone()),
                evidence: proposal.policies[0].evidence.clone(),
                notes: Vec::new(),
            },
            &[],
            Trim::default(),
            &ResourceOptions::default(),
        );
        assert!(size(&untrimmed) > 4 * SIZE_BUDGET, "{}", size(&untrimmed));

        let objects = baseline_resources(&proposal, &ResourceOptions::default());
        let object = &objects[0];
        assert!(size(object) <= SIZE_BUDGET, "{}", size(object));
        let trimmed = object.spec.trimmed.as_ref().expect("says it was trimmed");
        assert!(trimmed.client_pod_lists > 0);
        assert_eq!(trimmed.evidence_omitted, 0);
        assert!(!trimmed.over_budget);
        assert!(
            trimmed.message.contains("524288 bytes"),
            "{}",
            trimmed.message
        );
        assert_eq!(object.spec.rule_count, 400);
        assert_eq!(object.spec.rules.len(), 400, "every rule keeps its counts");
        // The least-used rules (fewest connections: the lowest indexes) lost their pod
        // lists, the most used kept theirs; every count is still exact.
        let cut = trimmed.client_pod_lists as usize;
        for rule in &object.spec.rules {
            assert_eq!(rule.distinct_client_pods, 64);
            let expected = if (rule.policy_rule as usize) < cut {
                TRIMMED_CLIENT_PODS
            } else {
                64
            };
            assert_eq!(
                rule.client_pods.len(),
                expected,
                "rule {}",
                rule.policy_rule
            );
        }
        // Trimming as little as it can: one rule fewer would not fit.
        let draft = Draft {
            workload: proposal.policies[0].workload.clone(),
            policy: Some(proposal.policies[0].policy.clone()),
            evidence: proposal.policies[0].evidence.clone(),
            notes: Vec::new(),
        };
        let order: Vec<usize> = (0..400).collect();
        let less = Trim {
            pods: cut - 1,
            ..Trim::default()
        };
        assert!(size(&render(&draft, &order, less, &ResourceOptions::default())) > SIZE_BUDGET);
        // The policy itself is whole.
        assert_eq!(policy_of(object).spec, proposal.policies[0].policy.spec);
    }

    #[test]
    fn evidence_then_notes_go_when_pod_lists_are_not_enough() {
        let rules: Vec<RuleEvidence> = (0..100).map(|i| evidence(i, 100 - i as u64, 10)).collect();
        let mut proposal = proposal(rules);
        proposal.notes = (0..50)
            .map(|i| Note {
                workload: "shop/Deployment/api".into(),
                message: format!("note {i}: {}", "x".repeat(200)),
            })
            .collect();
        let full = baseline_resources(&proposal, &ResourceOptions::default());
        let full_size = size(&full[0]);

        let budget = full_size / 2;
        let options = ResourceOptions {
            size_budget: budget,
            ..ResourceOptions::default()
        };
        let object = &baseline_resources(&proposal, &options)[0];
        assert!(size(object) <= budget);
        let trimmed = object.spec.trimmed.as_ref().unwrap();
        assert!(trimmed.evidence_omitted > 0);
        // Every rule whose evidence stayed lists only a few client pods.
        assert_eq!(trimmed.client_pod_lists + trimmed.evidence_omitted, 100);
        assert_eq!(trimmed.notes_omitted, 0);
        // Least used first: here the highest indexes have the fewest connections.
        let kept: Vec<u32> = object.spec.rules.iter().map(|r| r.policy_rule).collect();
        let expected: Vec<u32> = (0..100 - trimmed.evidence_omitted).collect();
        assert_eq!(kept, expected);
        assert_eq!(policy_of(object).spec, proposal.policies[0].policy.spec);

        // A budget the policy and the notes alone exceed: all evidence goes, then the last
        // notes.
        let draft = Draft {
            workload: proposal.policies[0].workload.clone(),
            policy: Some(proposal.policies[0].policy.clone()),
            evidence: proposal.policies[0].evidence.clone(),
            notes: proposal.notes.iter().map(|n| n.message.clone()).collect(),
        };
        let order: Vec<usize> = (0..100).collect();
        let no_evidence = Trim {
            pods: 100,
            evidence: 100,
            notes: 0,
        };
        let options = ResourceOptions {
            size_budget: size(&render(
                &draft,
                &order,
                no_evidence,
                &ResourceOptions::default(),
            )) - 5 * 220,
            ..ResourceOptions::default()
        };
        let object = &baseline_resources(&proposal, &options)[0];
        assert!(size(object) <= options.size_budget);
        let trimmed = object.spec.trimmed.as_ref().unwrap();
        assert_eq!(trimmed.evidence_omitted, 100);
        assert!(
            trimmed.notes_omitted > 0 && trimmed.notes_omitted < 50,
            "{trimmed:?}"
        );
        assert_eq!(object.spec.notes.len(), 50 - trimmed.notes_omitted as usize);
        assert_eq!(
            object.spec.notes[0], proposal.notes[0].message,
            "the first notes stay"
        );
    }

    #[test]
    fn a_policy_larger_than_the_budget_says_so() {
        let proposal = proposal((0..50).map(|i| evidence(i, 5, 5)).collect());
        let options = ResourceOptions {
            size_budget: 1024,
            ..ResourceOptions::default()
        };
        let object = &baseline_resources(&proposal, &options)[0];
        let trimmed = object.spec.trimmed.as_ref().unwrap();
        assert!(trimmed.over_budget);
        assert_eq!(trimmed.evidence_omitted, 50);
        assert!(trimmed.message.contains("policy alone exceeds"));
        assert_eq!(policy_of(object).spec, proposal.policies[0].policy.spec);
    }
}
