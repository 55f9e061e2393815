//! Export to `cilium.io/v2` CiliumNetworkPolicy, for clusters that run Cilium: one reviewed
//! NetworkPolicy becomes one CiliumNetworkPolicy (CNP) that does the same, except that an
//! exact external address the pods looked up by name becomes that name (`toFQDNs`):
//! addresses rotate, names stay. What a CNP cannot say faithfully is refused with an
//! [`Error`] naming the policy and the field; nothing is dropped or guessed.
//!
//! Needs Cilium 1.16 or later ([`MIN_CILIUM_VERSION`]): the output sets `enableDefaultDeny`,
//! which Cilium added in 1.16 (cilium/cilium#30572); with the CRD of an older Cilium the
//! API server prunes or refuses the field. `toFQDNs` also needs the L7 proxy
//! (`--enable-l7-proxy`, on by default).
//!
//! # How each construct is written
//! - `spec.podSelector` -> `endpointSelector`, labels and expressions as they are: in a
//!   namespaced CNP, Cilium always adds the policy's namespace to it.
//! - Peers get an explicit namespace, `k8s:io.kubernetes.pod.namespace`, so the result does
//!   not depend on how a Cilium version fills in a missing one: the policy's namespace for a
//!   bare `podSelector`; for a `namespaceSelector`, requirements on
//!   `kubernetes.io/metadata.name` become requirements on that label, requirements on other
//!   namespace labels become requirements on `k8s:io.cilium.k8s.namespace.labels.<key>`, and
//!   unless a name is pinned (`matchLabels` or `In`) an `Exists` requirement on the
//!   namespace label keeps the selector to pods and stops Cilium from adding the policy's
//!   namespace (what Cilium itself does for an empty `namespaceSelector`).
//! - `ipBlock` -> `fromCIDRSet`/`toCIDRSet` with `except` (host bits cleared).
//! - No peers (`from`/`to` missing or empty) -> `fromEntities`/`toEntities: [all]`.
//! - Ports -> `toPorts`: the port as a string (a number, or a name), `endPort`, and the
//!   protocol always written (NetworkPolicy's default is TCP, Cilium's is any); a port entry
//!   with a protocol but no port -> port `"0"`, every port of that protocol. No ports -> no
//!   `toPorts`, every port.
//! - Cilium allows one kind of peer per rule (endpoints, CIDRs, entities or FQDNs), so a
//!   NetworkPolicy rule with peers of several kinds becomes one rule per kind, each with the
//!   rule's ports.
//! - A direction in `policyTypes` -> `enableDefaultDeny` for it and a section for it; with
//!   no rules, the section holds one rule that selects nothing (`fromEndpoints: []`): an
//!   explicitly empty selector list selects nothing in every Cilium version, where an empty
//!   rule `{}` has meant "nothing" in some versions and "everything" in others.
//! - An egress `ipBlock` that is one exact address (/32, /128, no `except`), every piece of
//!   whose evidence (same policy, rule and address) names the DNS name it was looked up by
//!   and none widened -> `toFQDNs: [{matchName}]` with the rule's ports. Then DNS to the
//!   cluster resolver ([`Resolver`]) must pass Cilium's DNS proxy, or the names never
//!   resolve to anything: the exact port-53 UDP/TCP ports of rules to the resolver get
//!   `rules: {dns: [{matchPattern: "*"}]}` (every name allowed, as before), in a rule of
//!   their own when the rule also names other peers; where the policy reaches the resolver
//!   only through all ports or a range, or not at all, a rule to the resolver on port 53 with
//!   that DNS rule is added (UDP and TCP when the policy did not allow DNS to the resolver at
//!   all: the one place the export allows more than the NetworkPolicy, said in
//!   `spec.description`).
//! - Metadata: name, namespace, labels and annotations are kept (minus
//!   `kubectl.kubernetes.io/last-applied-configuration`, which would describe the
//!   NetworkPolicy), plus [`SOURCE_ANNOTATION`] naming the NetworkPolicy and
//!   [`RULE_ORIGIN_ANNOTATION`] mapping each CNP rule to the NetworkPolicy rule it came from
//!   (the evidence is indexed by those).
//!
//! # Refused
//! - What the API server would refuse ([`model::netpol::validate`]).
//! - Rules of a direction missing from an explicit `policyTypes`: Kubernetes ignores them;
//!   dropping them silently would hide a reviewer's mistake.
//! - Label keys Cilium leaves out of security identities by default (`pod-template-hash`,
//!   `kubernetes.io/...`, ...): a selector on them would never match under Cilium. A
//!   cluster with its own identity-label filter may leave out more; that cannot be seen
//!   from here.
//! - Label keys that are no longer valid keys once Cilium prefixes them (too long).
//! - `DoesNotExist` on `kubernetes.io/metadata.name`: it selects no namespace.
//!
//! # Semantics shared with Cilium's own NetworkPolicy enforcement
//! CIDR rules in Cilium never match cluster endpoints (pods, nodes), and the local node
//! is allowed by default; the same holds when Cilium enforces the NetworkPolicy itself.
//!
//! # Sources (Cilium documentation and API)
//! - <https://docs.cilium.io/en/stable/security/policy/language/>: endpoints, entities
//!   (`all`), CIDR (`toCIDRSet` with `except`), DNS based (`toFQDNs`, DNS proxy, L7 DNS
//!   rule with `matchPattern: "*"`), layer 4 (`port` string, `endPort`, named ports).
//! - <https://docs.cilium.io/en/stable/security/policy/intro/>: default-deny per direction,
//!   `enableDefaultDeny`.
//! - <https://docs.cilium.io/en/stable/security/policy/kubernetes/>: the endpointSelector is
//!   always in the policy's namespace; `k8s:io.kubernetes.pod.namespace` in peer selectors.
//! - <https://docs.cilium.io/en/stable/operations/performance/scalability/identity-relevant-labels/>:
//!   labels left out of identities by default.
//! - The `ciliumnetworkpolicies.cilium.io` CRD (`pkg/k8s/apis/cilium.io/client/crds/v2`):
//!   field names and patterns, one L3 member per rule, "an empty non-nil ToEndpoints does
//!   not select anything", port 0, DNS rules only on egress and not on port 0 or ranges.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use model::{
    Direction,
    netpol::{
        cluster::{NAMESPACE_NAME_LABEL, Resolver},
        validate::{self, FieldError},
    },
};
use serde::{Deserialize, Serialize};

use crate::set::{ReviewedPolicy, WORKLOAD_ANNOTATION};

pub const API_VERSION: &str = "cilium.io/v2";
pub const KIND: &str = "CiliumNetworkPolicy";
/// The oldest Cilium whose CRD has every field the export writes (`enableDefaultDeny`).
pub const MIN_CILIUM_VERSION: &str = "1.16";
/// Names the NetworkPolicy a CNP was converted from.
pub const SOURCE_ANNOTATION: &str = "palisade.io/source";
/// JSON `{"egress": [...], "ingress": [...]}`: for each CNP rule, the NetworkPolicy rule it
/// came from (`spec.egress[1]`) or why it was added.
pub const RULE_ORIGIN_ANNOTATION: &str = "palisade.io/cilium-rule-origin";

/// The namespace of a pod, as Cilium labels its identity.
const POD_NAMESPACE: &str = "k8s:io.kubernetes.pod.namespace";
/// A label of a pod's namespace, as Cilium labels the pod's identity.
const NAMESPACE_LABELS: &str = "k8s:io.cilium.k8s.namespace.labels.";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Most ports one `toPorts` entry may hold (Cilium's `maxPorts`).
const MAX_PORTS: usize = 40;
const DNS_PORT: u16 = 53;
const DENY_ALL: &str = "deny all: spec.policyTypes names the direction and it has no rules";
const ADDED_DNS: &str = "added: DNS to the resolver through Cilium's DNS proxy, for toFQDNs";

/// Pod labels Cilium leaves out of security identities by default: regular expressions
/// anchored at the start of the key, from "Limiting Identity-Relevant Labels".
const NOT_IN_IDENTITY: &[&str] = &[
    "io.kubernetes",
    r"kubernetes\.io",
    r"statefulset\.kubernetes\.io/pod-name",
    r"apps\.kubernetes\.io/pod-index",
    r"batch\.kubernetes\.io/job-completion-index",
    r"batch\.kubernetes\.io/controller-uid",
    r"beta\.kubernetes\.io",
    r"k8s\.io",
    "pod-template-generation",
    "pod-template-hash",
    "controller-revision-hash",
    "annotation.*",
    "controller-uid",
    "etcd_node",
    // Not in that table: Cilium drops pod labels of its own prefix from identities.
    r"io\.cilium\.",
];

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a policy was not exported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NetworkPolicy {policy} would be refused by the API server: {}", list(.errors))]
    Invalid {
        policy: String,
        errors: Vec<FieldError>,
    },
    #[error("NetworkPolicy {policy}: {field}: no faithful CiliumNetworkPolicy: {refusal}")]
    Refused {
        policy: String,
        field: String,
        refusal: Refusal,
    },
    #[error("CiliumNetworkPolicy for NetworkPolicy {policy} could not be written as YAML")]
    Yaml {
        policy: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// What a CiliumNetworkPolicy cannot say.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "it has {count} rule(s) but spec.policyTypes lacks {direction}, so Kubernetes ignores \
         them; add {direction} to spec.policyTypes or delete the rules"
    )]
    IgnoredRules {
        direction: &'static str,
        count: usize,
    },
    #[error(
        "Cilium leaves label key {key:?} out of security identities by default (pattern \
         {pattern:?}), so a selector on it would never match"
    )]
    NotInIdentity { key: String, pattern: &'static str },
    #[error("label key {key:?} becomes {cilium_key:?} under Cilium, which is not a valid key")]
    CiliumKey { key: String, cilium_key: String },
    #[error("DoesNotExist on {NAMESPACE_NAME_LABEL} selects no namespace (every namespace has it)")]
    NoNamespace,
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The resolver's pods as a peer selector of the export.
fn resolver_selector(resolver: &Resolver) -> EndpointSelector {
    let mut match_labels = resolver.labels.clone();
    match_labels.insert(POD_NAMESPACE.into(), resolver.namespace.clone());
    EndpointSelector {
        match_labels,
        match_expressions: Vec::new(),
    }
}

fn describe_resolver(resolver: &Resolver) -> String {
    let labels: Vec<String> = resolver
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{}, {}", resolver.namespace, labels.join(","))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub resolver: Resolver,
}

/// A `cilium.io/v2` CiliumNetworkPolicy, with the fields the export writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumNetworkPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub endpoint_selector: EndpointSelector,
    pub enable_default_deny: DefaultDeny,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// Which directions the policy puts its pods in default-deny for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    pub ingress: bool,
    pub egress: bool,
}

/// A Kubernetes label selector over Cilium identity labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// `Some(vec![])` selects nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(
        rename = "fromCIDRSet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    /// Empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// `Some(vec![])` selects nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    #[serde(rename = "toFQDNs", default, skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    /// Empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything: every cluster's endpoints, nodes and the world.
    All,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRule {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    pub match_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    pub ports: Vec<PortProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// A number (`"0"`: every port), or a container port name.
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    pub protocol: L4Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    pub dns: Vec<DnsRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsRule {
    pub match_pattern: String,
}

impl CiliumNetworkPolicy {
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|source| Error::Yaml {
            policy: format!("{}/{}", self.metadata.namespace, self.metadata.name),
            source,
        })
    }
}

/// The CiliumNetworkPolicy doing what `policy` does, for the default [`Resolver`].
pub fn to_cilium(policy: &ReviewedPolicy) -> Result<CiliumNetworkPolicy> {
    to_cilium_with(policy, &Options::default())
}

/// [`to_cilium`], as YAML (one document, keys in a fixed order: the same policy gives the
/// same bytes).
pub fn to_yaml(policy: &ReviewedPolicy) -> Result<String> {
    to_cilium(policy)?.to_yaml()
}

pub fn to_cilium_with(policy: &ReviewedPolicy, options: &Options) -> Result<CiliumNetworkPolicy> {
    let errors = validate::validate(&policy.policy);
    if !errors.is_empty() {
        return Err(Error::Invalid {
            policy: policy.id(),
            errors,
        });
    }
    Converter {
        policy,
        options,
        id: policy.id(),
        namespace: policy.namespace(),
    }
    .run()
}

struct Converter<'a> {
    policy: &'a ReviewedPolicy,
    options: &'a Options,
    id: String,
    namespace: &'a str,
}

/// The peers of one rule, grouped the way Cilium wants them: one kind per rule.
#[derive(Default)]
struct Peers {
    endpoints: Vec<EndpointSelector>,
    cidrs: Vec<CidrRule>,
    fqdns: Vec<FqdnSelector>,
    /// No peers: everything.
    all: bool,
}

impl Converter<'_> {
    fn run(self) -> Result<CiliumNetworkPolicy> {
        let spec = self.policy.policy.spec.clone().unwrap_or_default();
        let (isolates_ingress, isolates_egress) = policy_types(&spec);
        for (isolates, count, direction, field) in [
            (
                isolates_ingress,
                spec.ingress.as_ref().map_or(0, Vec::len),
                "Ingress",
                "spec.ingress",
            ),
            (
                isolates_egress,
                spec.egress.as_ref().map_or(0, Vec::len),
                "Egress",
                "spec.egress",
            ),
        ] {
            if !isolates && count > 0 {
                return Err(self.refuse(field, Refusal::IgnoredRules { direction, count }));
            }
        }
        let endpoint_selector = match &spec.pod_selector {
            Some(s) => self.pods(s, "spec.podSelector")?,
            None => EndpointSelector::default(),
        };
        let mut origin: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let ingress = if isolates_ingress {
            let rules = spec.ingress.as_deref().unwrap_or_default();
            Some(self.ingress(rules, origin.entry("ingress").or_default())?)
        } else {
            None
        };
        let mut description = None;
        let egress = if isolates_egress {
            let rules = spec.egress.as_deref().unwrap_or_default();
            let origins = origin.entry("egress").or_default();
            let mut built = self.egress(rules, origins)?;
            if built.iter().any(|r| r.to_fqdns.is_some()) {
                description = Some(self.dns_through_proxy(&mut built, origins));
            }
            Some(built)
        } else {
            None
        };
        Ok(CiliumNetworkPolicy {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: self.metadata(&origin),
            spec: Spec {
                description,
                endpoint_selector,
                enable_default_deny: DefaultDeny {
                    ingress: isolates_ingress,
                    egress: isolates_egress,
                },
                ingress,
                egress,
            },
        })
    }

    fn refuse(&self, field: impl Into<String>, refusal: Refusal) -> Error {
        Error::Refused {
            policy: self.id.clone(),
            field: field.into(),
            refusal,
        }
    }

    fn metadata(&self, origin: &BTreeMap<&str, Vec<String>>) -> Metadata {
        let meta = &self.policy.policy.metadata;
        let mut annotations = meta.annotations.clone().unwrap_or_default();
        annotations.remove(LAST_APPLIED);
        if let Some(workload) = &self.policy.workload {
            annotations
                .entry(WORKLOAD_ANNOTATION.into())
                .or_insert_with(|| workload.clone());
        }
        annotations.insert(
            SOURCE_ANNOTATION.into(),
            format!("networking.k8s.io/v1 NetworkPolicy {}", self.id),
        );
        annotations.insert(
            RULE_ORIGIN_ANNOTATION.into(),
            serde_json::to_string(origin).expect("a map of strings serializes"),
        );
        Metadata {
            name: self.policy.name().into(),
            namespace: self.namespace.into(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations,
        }
    }

    fn ingress(
        &self,
        rules: &[NetworkPolicyIngressRule],
        origin: &mut Vec<String>,
    ) -> Result<Vec<IngressRule>> {
        let mut out = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("spec.ingress[{i}]");
            let to_ports = port_rules(&ports(rule.ports.as_deref()));
            let peers = self.peers(rule.from.as_deref(), &format!("{path}.from"), None)?;
            let mut push = |r: IngressRule| {
                out.push(IngressRule {
                    to_ports: to_ports.clone(),
                    ..r
                });
                origin.push(path.clone());
            };
            if peers.all {
                push(IngressRule {
                    from_entities: Some(vec![Entity::All]),
                    ..IngressRule::default()
                });
            }
            if !peers.endpoints.is_empty() {
                push(IngressRule {
                    from_endpoints: Some(peers.endpoints),
                    ..IngressRule::default()
                });
            }
            if !peers.cidrs.is_empty() {
                push(IngressRule {
                    from_cidr_set: Some(peers.cidrs),
                    ..IngressRule::default()
                });
            }
        }
        if rules.is_empty() {
            out.push(IngressRule {
                from_endpoints: Some(Vec::new()),
                ..IngressRule::default()
            });
            origin.push(DENY_ALL.into());
        }
        Ok(out)
    }

    fn egress(
        &self,
        rules: &[NetworkPolicyEgressRule],
        origin: &mut Vec<String>,
    ) -> Result<Vec<EgressRule>> {
        let mut out = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("spec.egress[{i}]");
            let to_ports = port_rules(&ports(rule.ports.as_deref()));
            let peers = self.peers(rule.to.as_deref(), &format!("{path}.to"), Some(i))?;
            let mut push = |r: EgressRule| {
                out.push(EgressRule {
                    to_ports: to_ports.clone(),
                    ..r
                });
                origin.push(path.clone());
            };
            if peers.all {
                push(EgressRule {
                    to_entities: Some(vec![Entity::All]),
                    ..EgressRule::default()
                });
            }
            if !peers.endpoints.is_empty() {
                push(EgressRule {
                    to_endpoints: Some(peers.endpoints),
                    ..EgressRule::default()
                });
            }
            if !peers.cidrs.is_empty() {
                push(EgressRule {
                    to_cidr_set: Some(peers.cidrs),
                    ..EgressRule::default()
                });
            }
            if !peers.fqdns.is_empty() {
                push(EgressRule {
                    to_fqdns: Some(peers.fqdns),
                    ..EgressRule::default()
                });
            }
        }
        if rules.is_empty() {
            out.push(EgressRule {
                to_endpoints: Some(Vec::new()),
                ..EgressRule::default()
            });
            origin.push(DENY_ALL.into());
        }
        Ok(out)
    }

    /// The peers of a rule; `egress_rule` is the rule's index when names may replace
    /// addresses.
    fn peers(
        &self,
        peers: Option<&[NetworkPolicyPeer]>,
        path: &str,
        egress_rule: Option<usize>,
    ) -> Result<Peers> {
        let mut out = Peers::default();
        let peers = peers.unwrap_or_default();
        out.all = peers.is_empty();
        for (j, peer) in peers.iter().enumerate() {
            let path = format!("{path}[{j}]");
            if let Some(block) = &peer.ip_block {
                // Validated: parses, excepts inside.
                let net: IpNet = block.cidr.parse().expect("validated CIDR");
                let except: Vec<IpNet> = block
                    .except
                    .iter()
                    .flatten()
                    .map(|e| e.parse().expect("validated CIDR"))
                    .collect();
                let names = egress_rule
                    .filter(|_| except.is_empty() && net.prefix_len() == net.max_prefix_len())
                    .and_then(|rule| self.looked_up_as(rule, net.addr()));
                match names {
                    Some(names) => {
                        for name in names {
                            let selector = FqdnSelector { match_name: name };
                            if !out.fqdns.contains(&selector) {
                                out.fqdns.push(selector);
                            }
                        }
                    }
                    None => out.cidrs.push(CidrRule {
                        cidr: net.trunc().to_string(),
                        except: except.iter().map(|e| e.trunc().to_string()).collect(),
                    }),
                }
                continue;
            }
            let mut selector = match &peer.pod_selector {
                Some(pods) => self.pods(pods, &format!("{path}.podSelector"))?,
                None => EndpointSelector::default(),
            };
            match &peer.namespace_selector {
                None => {
                    selector
                        .match_labels
                        .insert(POD_NAMESPACE.into(), self.namespace.into());
                }
                Some(namespaces) => self.namespaces(
                    namespaces,
                    &format!("{path}.namespaceSelector"),
                    &mut selector,
                )?,
            }
            out.endpoints.push(selector);
        }
        Ok(out)
    }

    /// The DNS names the pods looked `addr` up by, when all the evidence of egress rule
    /// `rule` for that address has one and none of it was widened.
    fn looked_up_as(&self, rule: usize, addr: IpAddr) -> Option<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for e in self.policy.evidence.iter().filter(|e| {
            e.policy == self.id
                && e.direction == Direction::Egress
                && e.rule == rule
                && evidence_address(&e.peer) == Some(addr)
        }) {
            if e.widened.is_some() {
                return None;
            }
            names.insert(fqdn(e.dns_name.as_deref()?)?);
        }
        (!names.is_empty()).then_some(names)
    }

    /// A pod selector: keys as they are, when Cilium can match them.
    fn pods(&self, selector: &LabelSelector, path: &str) -> Result<EndpointSelector> {
        let mut out = EndpointSelector::default();
        for (key, value) in selector.match_labels.iter().flatten() {
            self.pod_key(key, &format!("{path}.matchLabels[{key}]"))?;
            out.match_labels.insert(key.clone(), value.clone());
        }
        for (i, r) in selector.match_expressions.iter().flatten().enumerate() {
            self.pod_key(&r.key, &format!("{path}.matchExpressions[{i}].key"))?;
            out.match_expressions.push(Requirement {
                key: r.key.clone(),
                operator: operator(&r.operator),
                values: r.values.clone().unwrap_or_default(),
            });
        }
        Ok(out)
    }

    fn pod_key(&self, key: &str, field: &str) -> Result<()> {
        if let Some(pattern) = NOT_IN_IDENTITY
            .iter()
            .find(|p| anchored_match(p, key))
            .copied()
        {
            let key = key.into();
            return Err(self.refuse(field, Refusal::NotInIdentity { key, pattern }));
        }
        // Cilium reads a key without a source as `any.<key>` and validates that.
        self.cilium_key(key, &format!("any.{key}"), field)
    }

    fn cilium_key(&self, key: &str, extended: &str, field: &str) -> Result<()> {
        if is_qualified_name(extended) {
            return Ok(());
        }
        let refusal = Refusal::CiliumKey {
            key: key.into(),
            cilium_key: extended.into(),
        };
        Err(self.refuse(field, refusal))
    }

    /// A namespace selector's requirements, added to `out`.
    fn namespaces(
        &self,
        selector: &LabelSelector,
        path: &str,
        out: &mut EndpointSelector,
    ) -> Result<()> {
        // Whether the selector names its namespaces: otherwise it needs `Exists`.
        let mut named = false;
        for (key, value) in selector.match_labels.iter().flatten() {
            if key == NAMESPACE_NAME_LABEL {
                out.match_labels.insert(POD_NAMESPACE.into(), value.clone());
                named = true;
            } else {
                let field = format!("{path}.matchLabels[{key}]");
                out.match_labels
                    .insert(self.namespace_key(key, &field)?, value.clone());
            }
        }
        for (i, r) in selector.match_expressions.iter().flatten().enumerate() {
            let operator = operator(&r.operator);
            let values = r.values.clone().unwrap_or_default();
            let field = format!("{path}.matchExpressions[{i}]");
            let key = if r.key == NAMESPACE_NAME_LABEL {
                match operator {
                    Operator::DoesNotExist => {
                        return Err(self.refuse(field, Refusal::NoNamespace));
                    }
                    // The `Exists` added below says the same.
                    Operator::Exists => continue,
                    Operator::In => named = true,
                    Operator::NotIn => {}
                }
                POD_NAMESPACE.into()
            } else {
                self.namespace_key(&r.key, &format!("{field}.key"))?
            };
            out.match_expressions.push(Requirement {
                key,
                operator,
                values,
            });
        }
        if !named {
            out.match_expressions.push(Requirement {
                key: POD_NAMESPACE.into(),
                operator: Operator::Exists,
                values: Vec::new(),
            });
        }
        Ok(())
    }

    fn namespace_key(&self, key: &str, field: &str) -> Result<String> {
        let cilium = format!("{NAMESPACE_LABELS}{key}");
        // `k8s:` is how the source is written; Cilium validates `k8s.<key>`.
        self.cilium_key(key, &cilium.replacen(':', ".", 1), field)?;
        Ok(cilium)
    }

    /// Make DNS to the resolver pass Cilium's DNS proxy (see the module docs); returns the
    /// policy's description saying so.
    fn dns_through_proxy(&self, rules: &mut Vec<EgressRule>, origin: &mut Vec<String>) -> String {
        let resolver = resolver_selector(&self.options.resolver);
        let mut proxied = BTreeSet::new();
        let mut reached = BTreeSet::new();
        let mut i = 0;
        while i < rules.len() {
            let rule = &rules[i];
            let targets_resolver = rule.to_entities.is_some()
                || rule
                    .to_endpoints
                    .as_ref()
                    .is_some_and(|s| s.contains(&resolver));
            if !targets_resolver {
                i += 1;
                continue;
            }
            let all_ports: Vec<PortProtocol> =
                rule.to_ports.iter().flat_map(|p| p.ports.clone()).collect();
            for protocol in [L4Protocol::Udp, L4Protocol::Tcp] {
                if all_ports.is_empty() || all_ports.iter().any(|p| covers_dns(p, protocol)) {
                    reached.insert(protocol);
                }
            }
            let (dns, other): (Vec<PortProtocol>, Vec<PortProtocol>) =
                all_ports.into_iter().partition(is_dns_port);
            if rule.to_entities.is_some() || dns.is_empty() {
                i += 1;
                continue;
            }
            // The resolver gets a rule of its own, so the DNS rule reaches no other peer.
            let selectors = rules[i].to_endpoints.as_mut().expect("checked above");
            if selectors.len() > 1 {
                selectors.retain(|s| *s != resolver);
                let copy = EgressRule {
                    to_endpoints: Some(vec![resolver.clone()]),
                    ..rules[i].clone()
                };
                i += 1;
                rules.insert(i, copy);
                origin.insert(i, origin[i - 1].clone());
            }
            proxied.extend(dns.iter().map(|p| p.protocol));
            let mut to_ports = vec![PortRule {
                ports: dns,
                rules: Some(dns_proxy()),
            }];
            to_ports.extend(port_rules(&other));
            rules[i].to_ports = to_ports;
            i += 1;
        }
        let widened = reached.is_empty();
        let missing: Vec<L4Protocol> = if widened {
            vec![L4Protocol::Tcp, L4Protocol::Udp]
        } else {
            reached.difference(&proxied).copied().collect()
        };
        let resolver_text = describe_resolver(&self.options.resolver);
        let mut text = format!(
            "toFQDNs needs Cilium's DNS proxy to see the pods' lookups: DNS egress to the \
             resolver ({resolver_text}) carries a DNS rule allowing every name."
        );
        if !missing.is_empty() {
            rules.push(EgressRule {
                to_endpoints: Some(vec![resolver]),
                to_ports: vec![PortRule {
                    ports: missing
                        .iter()
                        .map(|&protocol| PortProtocol {
                            port: DNS_PORT.to_string(),
                            end_port: None,
                            protocol,
                        })
                        .collect(),
                    rules: Some(dns_proxy()),
                }],
                ..EgressRule::default()
            });
            origin.push(ADDED_DNS.into());
            if widened {
                text.push_str(&format!(
                    " egress[{}] was added for it: the NetworkPolicy allows no DNS to the \
                     resolver.",
                    rules.len() - 1
                ));
            }
        }
        text
    }
}

/// (isolates ingress, isolates egress), with the API server's default when `policyTypes`
/// is missing or empty: Ingress, and Egress when there are egress rules.
fn policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

fn operator(op: &str) -> Operator {
    match op {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        // Validated: one of the four.
        _ => Operator::DoesNotExist,
    }
}

fn ports(ports: Option<&[NetworkPolicyPort]>) -> Vec<PortProtocol> {
    ports
        .unwrap_or_default()
        .iter()
        .map(|p| PortProtocol {
            port: match &p.port {
                None => "0".into(),
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(name)) => name.clone(),
            },
            end_port: p.end_port,
            protocol: match p.protocol.as_deref() {
                Some("UDP") => L4Protocol::Udp,
                Some("SCTP") => L4Protocol::Sctp,
                // Validated; NetworkPolicy's default.
                _ => L4Protocol::Tcp,
            },
        })
        .collect()
}

fn port_rules(ports: &[PortProtocol]) -> Vec<PortRule> {
    ports
        .chunks(MAX_PORTS)
        .map(|chunk| PortRule {
            ports: chunk.to_vec(),
            rules: None,
        })
        .collect()
}

/// Exactly port 53 over UDP or TCP: where a DNS rule may go.
fn is_dns_port(p: &PortProtocol) -> bool {
    p.port == DNS_PORT.to_string()
        && p.end_port.is_none_or(|end| end == i32::from(DNS_PORT))
        && matches!(p.protocol, L4Protocol::Udp | L4Protocol::Tcp)
}

/// Does `p` allow port 53 over `protocol` (a name might, but cannot be known here)?
fn covers_dns(p: &PortProtocol, protocol: L4Protocol) -> bool {
    let Ok(start) = p.port.parse::<i32>() else {
        return false;
    };
    let dns = i32::from(DNS_PORT);
    p.protocol == protocol
        && (start == 0 || start == dns || (start < dns && p.end_port.is_some_and(|e| e >= dns)))
}

fn dns_proxy() -> L7Rules {
    L7Rules {
        dns: vec![DnsRule {
            match_pattern: "*".into(),
        }],
    }
}

/// The address of evidence about an external peer: `external IP` or `external IP (name)`.
fn evidence_address(peer: &str) -> Option<IpAddr> {
    peer.strip_prefix("external ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// A DNS name as `toFQDNs.matchName` takes it (lowercase, no trailing dot), if it is one.
fn fqdn(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// Does the regular expression `pattern`, anchored at the start, match `key`? Only the
/// forms in [`NOT_IN_IDENTITY`]: literals, `\.`, `.` (any character), and a final `.*`.
fn anchored_match(pattern: &str, key: &str) -> bool {
    let pattern = pattern.strip_suffix(".*").unwrap_or(pattern);
    let mut key = key.chars();
    let mut pattern = pattern.chars();
    while let Some(p) = pattern.next() {
        let Some(k) = key.next() else {
            return false;
        };
        let matched = match p {
            '\\' => pattern.next() == Some(k),
            '.' => true,
            p => p == k,
        };
        if !matched {
            return false;
        }
    }
    true
}

/// A Kubernetes qualified name (`prefix/name`), the form Cilium requires of selector keys.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_label_patterns_match_as_cilium_anchors_them() {
        let hit = |key| NOT_IN_IDENTITY.iter().any(|p| anchored_match(p, key));
        assert!(hit("pod-template-hash"));
        assert!(hit("kubernetes.io/hostname"));
        assert!(hit("io.kubernetes.container.name"));
        assert!(hit("annotation.foo"));
        assert!(hit("statefulset.kubernetes.io/pod-name"));
        assert!(hit("io.cilium.k8s.policy.name"));
        assert!(!hit("app"));
        assert!(!hit("app.kubernetes.io/name"));
        assert!(!hit("k8s-app"));
        // `\.` is a literal dot: `k8sXio` is not `k8s.io`.
        assert!(!hit("k8sXio/foo"));
    }

    #[test]
    fn qualified_names() {
        assert!(is_qualified_name("any.app"));
        assert!(is_qualified_name("any.app.kubernetes.io/name"));
        assert!(is_qualified_name(
            "k8s.io.cilium.k8s.namespace.labels.example.com/team"
        ));
        assert!(!is_qualified_name(&format!("any.{}", "a".repeat(60))));
        assert!(!is_qualified_name("a/b/c"));
    }

    #[test]
    fn evidence_addresses_and_names() {
        assert_eq!(
            evidence_address("external 203.0.113.7 (api.example.com)"),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            evidence_address("external 2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(evidence_address("workload shop/Deployment/web"), None);
        assert_eq!(fqdn("API.Example.com."), Some("api.example.com".into()));
        assert_eq!(fqdn("*.example.com"), None);
        assert_eq!(fqdn("a..b"), None);
    }
}
