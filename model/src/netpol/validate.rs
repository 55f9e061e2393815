//! What the Kubernetes API server would refuse in a NetworkPolicy: the rules of
//! `ValidateNetworkPolicy` (`pkg/apis/networking/validation`) and of label selector
//! validation (`apimachinery`), as they apply when a policy is created.
//!
//! Fields are named the way the API server names them, `spec.egress[0].ports[1].endPort`,
//! with a map entry written `[key]`: `spec.podSelector.matchLabels[app]`. Errors come in the
//! API server's order: metadata, `spec.podSelector`, each ingress rule (ports, then peers),
//! each egress rule, `spec.policyTypes`; a field can have several.
//!
//! Where this differs from the API server, on purpose:
//! - A missing `metadata.namespace` is not an error: the API server takes it from the
//!   request, and [`super::load`] fills in `default` as `kubectl apply` would.
//! - `metadata.name` is required: a policy file must name its policy (`kubectl apply`
//!   refuses `generateName` too).
//! - CIDRs with host bits set (`10.0.0.1/24`) are accepted, as the API server accepts them,
//!   but the two forms it still accepts only for compatibility, and warns about, are
//!   refused: IPv4 octets with leading zeros (`010.0.0.0/8`, octal to some software) and
//!   IPv4-mapped IPv6 addresses (`::ffff:10.0.0.0/104`). Kubernetes' strict CIDR
//!   validation (`StrictIPCIDRValidation`) refuses them as well.
//! - Of the metadata, only name, namespace, labels and annotations are checked; owner
//!   references, finalizers and managed fields are the API server's own business.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};

/// One reason the API server would refuse a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field at fault, like `spec.egress[0].ports[1].endPort`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every reason the API server would refuse `policy` (empty = valid).
pub fn validate(policy: &NetworkPolicy) -> Vec<FieldError> {
    let mut errors = Errors::default();
    metadata(&policy.metadata, &mut errors);
    if let Some(spec) = &policy.spec {
        self::spec(spec, &mut errors);
    }
    errors.0
}

/// The longest name (a DNS-1123 subdomain).
const MAX_SUBDOMAIN: usize = 253;
/// The longest namespace (a DNS-1123 label), label value, or name part of a label key.
const MAX_LABEL: usize = 63;
/// The longest named port (an IANA service name).
const MAX_PORT_NAME: usize = 15;
/// The most all annotations of one object may hold, keys and values together.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

const LABEL_FORMAT: &str = "a lowercase RFC 1123 label must consist of lower case \
    alphanumeric characters or '-', and must start and end with an alphanumeric character \
    (e.g. 'my-name' or '123-abc')";
const SUBDOMAIN_FORMAT: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
    character (e.g. 'example.com')";
const NAME_PART_FORMAT: &str = "must consist of alphanumeric characters, '-', '_' or '.', \
    and must start and end with an alphanumeric character (e.g. 'MyName', 'my.name' or \
    '123-abc')";
const LABEL_VALUE_FORMAT: &str = "a valid label value must be empty or consist of \
    alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric \
    character (e.g. 'MyValue', 'my_value' or '12345')";
const CIDR_FORMAT: &str = "must be a valid CIDR value (e.g. 10.9.8.0/24 or 2001:db8::/64)";
const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

/// The errors found so far, in order.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// One error per reason `value` is malformed, each naming the value.
    fn invalid(&mut self, field: &str, value: &str, reasons: Vec<String>) {
        for reason in reasons {
            self.add(field, format!("invalid value {value:?}: {reason}"));
        }
    }
}

fn metadata(meta: &ObjectMeta, errors: &mut Errors) {
    match meta.name.as_deref() {
        None | Some("") if meta.generate_name.is_some() => errors.add(
            "metadata.name",
            "is required: a policy file must name its policy (`generateName` is not supported)",
        ),
        None | Some("") => errors.add("metadata.name", "is required"),
        Some(name) => errors.invalid("metadata.name", name, dns1123_subdomain(name)),
    }
    if let Some(namespace) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        errors.invalid("metadata.namespace", namespace, dns1123_label(namespace));
    }
    if let Some(labels) = &meta.labels {
        label_map(labels, "metadata.labels", errors);
    }
    if let Some(annotations) = &meta.annotations {
        annotation_map(annotations, errors);
    }
}

/// Annotation keys are qualified names in any case; all of them together have a size limit.
fn annotation_map(annotations: &BTreeMap<String, String>, errors: &mut Errors) {
    for key in annotations.keys() {
        let field = format!("metadata.annotations[{key}]");
        for reason in qualified_name(&key.to_lowercase()) {
            errors.add(&field, format!("invalid annotation key {key:?}: {reason}"));
        }
    }
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ANNOTATIONS_BYTES {
        errors.add(
            "metadata.annotations",
            format!(
                "too long: may not be more than {MAX_ANNOTATIONS_BYTES} bytes in all (found {size})"
            ),
        );
    }
}

fn spec(spec: &NetworkPolicySpec, errors: &mut Errors) {
    if let Some(selector) = &spec.pod_selector {
        label_selector(selector, "spec.podSelector", errors);
    }
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        ingress_rule(rule, &format!("spec.ingress[{i}]"), errors);
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        egress_rule(rule, &format!("spec.egress[{i}]"), errors);
    }
    if let Some(types) = &spec.policy_types {
        policy_types(types, errors);
    }
}

fn ingress_rule(rule: &NetworkPolicyIngressRule, path: &str, errors: &mut Errors) {
    for (i, port) in rule.ports.iter().flatten().enumerate() {
        self::port(port, &format!("{path}.ports[{i}]"), errors);
    }
    for (i, from) in rule.from.iter().flatten().enumerate() {
        peer(from, &format!("{path}.from[{i}]"), errors);
    }
}

fn egress_rule(rule: &NetworkPolicyEgressRule, path: &str, errors: &mut Errors) {
    for (i, port) in rule.ports.iter().flatten().enumerate() {
        self::port(port, &format!("{path}.ports[{i}]"), errors);
    }
    for (i, to) in rule.to.iter().flatten().enumerate() {
        peer(to, &format!("{path}.to[{i}]"), errors);
    }
}

fn policy_types(types: &[String], errors: &mut Errors) {
    if types.len() > 2 {
        // As the API server does, nothing more is said about the entries then.
        errors.add(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        );
        return;
    }
    for (i, kind) in types.iter().enumerate() {
        if kind != "Ingress" && kind != "Egress" {
            errors.add(
                format!("spec.policyTypes[{i}]"),
                format!("unsupported value {kind:?}: must be \"Ingress\" or \"Egress\""),
            );
        }
    }
}

fn port(port: &NetworkPolicyPort, path: &str, errors: &mut Errors) {
    if let Some(protocol) = &port.protocol
        && !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP")
    {
        errors.add(
            format!("{path}.protocol"),
            format!("unsupported value {protocol:?}: must be \"TCP\", \"UDP\" or \"SCTP\""),
        );
    }
    let port_field = format!("{path}.port");
    let end_field = format!("{path}.endPort");
    match &port.port {
        Some(IntOrString::Int(number)) => {
            if !is_port_number(*number) {
                errors.add(&port_field, format!("invalid value {number}: {PORT_RANGE}"));
            }
            if let Some(end) = port.end_port {
                if end < *number {
                    errors.add(
                        &end_field,
                        format!("must be greater than or equal to `port` ({number})"),
                    );
                }
                if !is_port_number(end) {
                    errors.add(&end_field, format!("invalid value {end}: {PORT_RANGE}"));
                }
            }
        }
        Some(IntOrString::String(name)) => {
            if port.end_port.is_some() {
                errors.add(&end_field, "may not be specified when `port` is a name");
            }
            errors.invalid(&port_field, name, port_name(name));
        }
        None => {
            if port.end_port.is_some() {
                errors.add(
                    &end_field,
                    "may not be specified when `port` is not specified",
                );
            }
        }
    }
}

fn peer(peer: &NetworkPolicyPeer, path: &str, errors: &mut Errors) {
    if let Some(selector) = &peer.pod_selector {
        label_selector(selector, &format!("{path}.podSelector"), errors);
    }
    if let Some(selector) = &peer.namespace_selector {
        label_selector(selector, &format!("{path}.namespaceSelector"), errors);
    }
    if let Some(block) = &peer.ip_block {
        ip_block(block, &format!("{path}.ipBlock"), errors);
    }
    let kinds = [
        peer.pod_selector.is_some(),
        peer.namespace_selector.is_some(),
        peer.ip_block.is_some(),
    ];
    match kinds.iter().filter(|set| **set).count() {
        0 => errors.add(
            path,
            "must specify a peer: podSelector, namespaceSelector or ipBlock",
        ),
        1 => {}
        _ if peer.ip_block.is_some() => errors.add(
            path,
            "may not specify both ipBlock and another peer (podSelector or namespaceSelector)",
        ),
        _ => {}
    }
}

fn ip_block(block: &IPBlock, path: &str, errors: &mut Errors) {
    let cidr_field = format!("{path}.cidr");
    if block.cidr.is_empty() {
        errors.add(cidr_field, "is required");
        return;
    }
    let cidr = match parse_cidr(&block.cidr) {
        Ok(cidr) => cidr,
        Err(reason) => {
            // As the API server does: the excepts cannot be judged against a broken cidr.
            errors.invalid(&cidr_field, &block.cidr, vec![reason]);
            return;
        }
    };
    for (i, except) in block.except.iter().flatten().enumerate() {
        let field = format!("{path}.except[{i}]");
        match parse_cidr(except) {
            Err(reason) => errors.invalid(&field, except, vec![reason]),
            Ok(inner) if !is_strict_subset(cidr, inner) => {
                errors.add(field, not_a_subset(&block.cidr, cidr, inner));
            }
            Ok(_) => {}
        }
    }
}

/// Inside `outer` and with a longer prefix (host bits of either are ignored, as the API
/// server ignores them).
fn is_strict_subset(outer: IpNet, inner: IpNet) -> bool {
    outer.contains(&inner.network()) && inner.prefix_len() > outer.prefix_len()
}

fn not_a_subset(written: &str, outer: IpNet, inner: IpNet) -> String {
    let message = format!("must be a strict subset of `cidr` {written}");
    match (outer, inner) {
        (IpNet::V4(_), IpNet::V6(_)) => format!("{message} (it is IPv6, `cidr` is IPv4)"),
        (IpNet::V6(_), IpNet::V4(_)) => format!("{message} (it is IPv4, `cidr` is IPv6)"),
        _ => message,
    }
}

/// A CIDR as the API server reads it (host bits may be set), without the ambiguous forms
/// it only tolerates (see the module docs).
fn parse_cidr(value: &str) -> Result<IpNet, String> {
    let Some((address, _prefix)) = value.split_once('/') else {
        return Err(format!("{CIDR_FORMAT}: the prefix length is missing"));
    };
    if has_leading_zero_octet(address) {
        return Err(
            "must not have leading 0s in an IPv4 address (some software reads them as octal)"
                .to_owned(),
        );
    }
    let net: IpNet = value.parse().map_err(|_| CIDR_FORMAT.to_owned())?;
    if let IpNet::V6(v6) = net
        && v6.addr().to_ipv4_mapped().is_some()
    {
        return Err("must not be an IPv4-mapped IPv6 address: write it as IPv4".to_owned());
    }
    Ok(net)
}

fn has_leading_zero_octet(address: &str) -> bool {
    !address.contains(':')
        && address.split('.').any(|octet| {
            octet.len() > 1 && octet.starts_with('0') && octet.bytes().all(|b| b.is_ascii_digit())
        })
}

fn label_selector(selector: &LabelSelector, path: &str, errors: &mut Errors) {
    if let Some(labels) = &selector.match_labels {
        label_map(labels, &format!("{path}.matchLabels"), errors);
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        label_requirement(
            requirement,
            &format!("{path}.matchExpressions[{i}]"),
            errors,
        );
    }
}

/// Labels, or a selector's `matchLabels`: each key a qualified name, each value a label value.
fn label_map(labels: &BTreeMap<String, String>, path: &str, errors: &mut Errors) {
    for (key, value) in labels {
        let field = format!("{path}[{key}]");
        for reason in qualified_name(key) {
            errors.add(&field, format!("invalid label key {key:?}: {reason}"));
        }
        for reason in label_value(value) {
            errors.add(&field, format!("invalid label value {value:?}: {reason}"));
        }
    }
}

fn label_requirement(requirement: &LabelSelectorRequirement, path: &str, errors: &mut Errors) {
    let values = requirement.values.as_deref().unwrap_or_default();
    let values_field = format!("{path}.values");
    match requirement.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => errors.add(
            &values_field,
            "must be specified when `operator` is 'In' or 'NotIn'",
        ),
        "Exists" | "DoesNotExist" if !values.is_empty() => errors.add(
            &values_field,
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
        other => errors.add(
            format!("{path}.operator"),
            format!(
                "unsupported value {other:?}: must be \"In\", \"NotIn\", \"Exists\" or \
                 \"DoesNotExist\""
            ),
        ),
    }
    errors.invalid(
        &format!("{path}.key"),
        &requirement.key,
        qualified_name(&requirement.key),
    );
    for (i, value) in values.iter().enumerate() {
        errors.invalid(&format!("{values_field}[{i}]"), value, label_value(value));
    }
}

fn is_port_number(port: i32) -> bool {
    (1..=65535).contains(&port)
}

/// Why `name` is not an IANA service name (`IsValidPortName`), if it is not.
fn port_name(name: &str) -> Vec<String> {
    if name.is_empty() {
        return vec!["must be non-empty".to_owned()];
    }
    let mut reasons = Vec::new();
    if name.len() > MAX_PORT_NAME {
        reasons.push(max_length(MAX_PORT_NAME));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        reasons.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_owned(),
        );
    } else if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        let mut reason = "must contain at least one letter (a-z)".to_owned();
        if name.bytes().all(|b| b.is_ascii_digit()) {
            reason.push_str("; a quoted number is a port name: write the number without quotes");
        }
        reasons.push(reason);
    }
    if name.contains("--") {
        reasons.push("must not contain consecutive hyphens".to_owned());
    }
    if name.starts_with('-') || name.ends_with('-') {
        reasons.push("must not begin or end with a hyphen".to_owned());
    }
    reasons
}

/// Why `value` is not a DNS-1123 label (a namespace name), if it is not.
fn dns1123_label(value: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    if value.len() > MAX_LABEL {
        reasons.push(max_length(MAX_LABEL));
    }
    if !is_dns_label(value) {
        reasons.push(LABEL_FORMAT.to_owned());
    }
    reasons
}

/// Why `value` is not a DNS-1123 subdomain (a policy name, a label key's prefix), if it is not.
fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    if value.len() > MAX_SUBDOMAIN {
        reasons.push(max_length(MAX_SUBDOMAIN));
    }
    if !value.split('.').all(is_dns_label) {
        reasons.push(SUBDOMAIN_FORMAT.to_owned());
    }
    reasons
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
}

/// Why `value` is not a qualified name (a label or annotation key: an optional DNS-1123
/// subdomain and '/', then a name part), if it is not.
fn qualified_name(value: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    let name = match value.split('/').collect::<Vec<_>>().as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                reasons.push("prefix part must be non-empty".to_owned());
            } else {
                for reason in dns1123_subdomain(prefix) {
                    reasons.push(format!("prefix part {reason}"));
                }
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name is a name part with an optional DNS subdomain prefix and \
                 '/' (e.g. 'example.com/MyName'); the name part {NAME_PART_FORMAT}"
            )];
        }
    };
    if name.is_empty() {
        reasons.push("name part must be non-empty".to_owned());
        return reasons;
    }
    if name.len() > MAX_LABEL {
        reasons.push(format!("name part {}", max_length(MAX_LABEL)));
    }
    if !is_name_part(name) {
        reasons.push(format!("name part {NAME_PART_FORMAT}"));
    }
    reasons
}

/// Why `value` is not a label value, if it is not (empty is fine).
fn label_value(value: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    if value.len() > MAX_LABEL {
        reasons.push(max_length(MAX_LABEL));
    }
    if !value.is_empty() && !is_name_part(value) {
        reasons.push(LABEL_VALUE_FORMAT.to_owned());
    }
    reasons
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_name_part(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_alphanumeric();
    bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes
            .iter()
            .all(|b| alphanumeric(b) || matches!(b, b'-' | b'_' | b'.'))
}

fn max_length(max: usize) -> String {
    format!("must be no more than {max} characters")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy `web` in namespace `prod` with this spec (YAML, indented by the caller as
    /// the spec's own lines).
    fn with_spec(spec: &str) -> NetworkPolicy {
        let yaml = format!("metadata: {{name: web, namespace: prod}}\nspec:\n{spec}");
        serde_yaml::from_str(&yaml).expect("test policy parses")
    }

    fn with_metadata(metadata: &str) -> NetworkPolicy {
        let yaml = format!("metadata:\n{metadata}");
        serde_yaml::from_str(&yaml).expect("test policy parses")
    }

    /// The fields at fault, in order.
    fn fields(policy: &NetworkPolicy) -> Vec<String> {
        validate(policy).into_iter().map(|e| e.field).collect()
    }

    fn spec_fields(spec: &str) -> Vec<String> {
        fields(&with_spec(spec))
    }

    /// The one error of `policy`.
    fn only_error(policy: &NetworkPolicy) -> FieldError {
        let errors = validate(policy);
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        errors.into_iter().next().expect("one error")
    }

    fn spec_error(spec: &str) -> FieldError {
        only_error(&with_spec(spec))
    }

    fn peer_spec(peer: &str) -> String {
        format!("  ingress:\n  - from:\n    - {peer}\n")
    }

    fn port_spec(port: &str) -> String {
        format!("  egress:\n  - ports:\n    - {port}\n")
    }

    const PORT0: &str = "spec.egress[0].ports[0]";
    const PEER0: &str = "spec.ingress[0].from[0]";

    #[test]
    fn a_complete_policy_is_valid() {
        let policy = with_spec(
            "  podSelector:
    matchLabels: {app.kubernetes.io/name: web, tier: ''}
    matchExpressions:
    - {key: example.com/team, operator: In, values: [a, b]}
    - {key: canary, operator: DoesNotExist}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {}
      namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4/32]}
    ports:
    - {port: 80}
    - {protocol: UDP, port: dns}
    - {protocol: SCTP, port: 3000, endPort: 3100}
  egress:
  - to:
    - ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}
  - {}
",
        );
        assert_eq!(validate(&policy), vec![]);
    }

    #[test]
    fn no_spec_or_an_empty_spec_is_valid() {
        assert_eq!(fields(&with_metadata("  name: web")), Vec::<String>::new());
        assert_eq!(spec_fields("  {}\n"), Vec::<String>::new());
        assert_eq!(
            spec_fields("  podSelector: {}\n  ingress: []\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_name_is_required() {
        let error = only_error(&with_metadata("  namespace: prod"));
        assert_eq!(error.field, "metadata.name");
        assert_eq!(error.message, "is required");
        let error = only_error(&with_metadata("  name: ''"));
        assert_eq!(error.field, "metadata.name");
        let error = only_error(&with_metadata("  generateName: web-"));
        assert!(
            error.message.contains("`generateName` is not supported"),
            "{error}"
        );
    }

    #[test]
    fn the_name_is_a_dns_subdomain() {
        for good in ["web", "web-1", "web.v1", "1web", &"a".repeat(253)] {
            let policy = with_metadata(&format!("  name: '{good}'"));
            assert_eq!(validate(&policy), vec![], "{good}");
        }
        for bad in ["Web", "-web", "web-", "web..v1", ".web", "web_1", "wéb"] {
            let error = only_error(&with_metadata(&format!("  name: '{bad}'")));
            assert_eq!(error.field, "metadata.name", "{bad}");
            assert!(error.message.contains("RFC 1123 subdomain"), "{error}");
            assert!(error.message.contains(&format!("{bad:?}")), "{error}");
        }
        let error = only_error(&with_metadata(&format!("  name: '{}'", "a".repeat(254))));
        assert_eq!(
            error.message.split(": ").nth(1),
            Some("must be no more than 253 characters")
        );
    }

    #[test]
    fn the_namespace_is_a_dns_label_or_missing() {
        for good in ["prod", "team-1", &"n".repeat(63)] {
            let policy = with_metadata(&format!("  name: web\n  namespace: '{good}'"));
            assert_eq!(validate(&policy), vec![], "{good}");
        }
        let policy = with_metadata("  name: web\n  namespace: ''");
        assert_eq!(validate(&policy), vec![], "empty means not set");
        for bad in ["Prod", "prod.eu", "-prod", "prod-", &"n".repeat(64)] {
            let policy = with_metadata(&format!("  name: web\n  namespace: '{bad}'"));
            let errors = validate(&policy);
            assert!(!errors.is_empty(), "{bad}");
            assert!(
                errors.iter().all(|e| e.field == "metadata.namespace"),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn metadata_labels_are_checked_like_match_labels() {
        let policy = with_metadata("  name: web\n  labels: {app: web, -bad: x, ok: 'a b'}");
        assert_eq!(
            fields(&policy),
            ["metadata.labels[-bad]", "metadata.labels[ok]"]
        );
        let errors = validate(&policy);
        assert!(
            errors[0]
                .message
                .starts_with("invalid label key \"-bad\": name part must")
        );
        assert!(
            errors[1]
                .message
                .starts_with("invalid label value \"a b\":")
        );
    }

    #[test]
    fn annotation_keys_are_qualified_names_in_any_case() {
        let policy = with_metadata(
            "  name: web\n  annotations: {Example.COM/Note: x, kubectl.kubernetes.io/last-applied-configuration: '{}', 'a b': x}",
        );
        let error = only_error(&policy);
        assert_eq!(error.field, "metadata.annotations[a b]");
        assert!(
            error.message.starts_with("invalid annotation key \"a b\""),
            "{error}"
        );
    }

    #[test]
    fn annotations_have_a_total_size_limit() {
        let mut policy = with_metadata("  name: web");
        let big = "x".repeat(MAX_ANNOTATIONS_BYTES);
        policy.metadata.annotations = Some(BTreeMap::from([("a".to_owned(), big)]));
        let error = only_error(&policy);
        assert_eq!(error.field, "metadata.annotations");
        assert!(error.message.contains("262144"), "{error}");
        let fits = "x".repeat(MAX_ANNOTATIONS_BYTES - 1);
        policy.metadata.annotations = Some(BTreeMap::from([("a".to_owned(), fits)]));
        assert_eq!(validate(&policy), vec![]);
    }

    #[test]
    fn match_labels_keys_are_qualified_names() {
        let good = [
            "app",
            "App_1.x",
            "app.kubernetes.io/name",
            "example.com/A-b_c.d",
            &"k".repeat(63),
            &format!("{}/k", "p".repeat(253)),
        ];
        for key in good {
            let spec = format!("  podSelector:\n    matchLabels: {{'{key}': v}}\n");
            assert_eq!(spec_fields(&spec), Vec::<String>::new(), "{key}");
        }
        let bad = [
            ("", "name part must be non-empty"),
            ("-app", "name part must consist of"),
            ("app-", "name part must consist of"),
            ("a b", "name part must consist of"),
            ("/app", "prefix part must be non-empty"),
            ("example.com/", "name part must be non-empty"),
            (
                "Example.com/app",
                "prefix part a lowercase RFC 1123 subdomain",
            ),
            (
                "a/b/c",
                "a qualified name is a name part with an optional DNS subdomain prefix",
            ),
            (
                &"k".repeat(64),
                "name part must be no more than 63 characters",
            ),
        ];
        for (key, reason) in bad {
            let spec = format!("  podSelector:\n    matchLabels: {{'{key}': v}}\n");
            let error = spec_error(&spec);
            assert_eq!(error.field, format!("spec.podSelector.matchLabels[{key}]"));
            let expected = format!("invalid label key {key:?}: {reason}");
            assert!(
                error.message.starts_with(&expected),
                "{error}\nexpected {expected}"
            );
        }
    }

    #[test]
    fn match_labels_values_are_label_values() {
        for value in ["", "v", "My_value-1.2", &"v".repeat(63)] {
            let spec = format!("  podSelector:\n    matchLabels: {{app: '{value}'}}\n");
            assert_eq!(spec_fields(&spec), Vec::<String>::new(), "{value}");
        }
        for value in ["-v", "v.", "a b", "a/b", &"v".repeat(64)] {
            let spec = format!("  podSelector:\n    matchLabels: {{app: '{value}'}}\n");
            let error = spec_error(&spec);
            assert_eq!(error.field, "spec.podSelector.matchLabels[app]");
            assert!(
                error
                    .message
                    .starts_with(&format!("invalid label value {value:?}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn match_expressions_operators() {
        let expression = |e: &str| format!("  podSelector:\n    matchExpressions:\n    - {e}\n");
        for good in [
            "{key: app, operator: In, values: [a]}",
            "{key: app, operator: NotIn, values: [a, '']}",
            "{key: app, operator: Exists}",
            "{key: app, operator: DoesNotExist, values: []}",
        ] {
            assert_eq!(
                spec_fields(&expression(good)),
                Vec::<String>::new(),
                "{good}"
            );
        }
        let error = spec_error(&expression("{key: app, operator: in, values: [a]}"));
        assert_eq!(error.field, "spec.podSelector.matchExpressions[0].operator");
        assert!(
            error
                .message
                .starts_with("unsupported value \"in\": must be \"In\"")
        );

        let error = spec_error(&expression("{key: app, operator: In}"));
        assert_eq!(error.field, "spec.podSelector.matchExpressions[0].values");
        assert_eq!(
            error.message,
            "must be specified when `operator` is 'In' or 'NotIn'"
        );
        let error = spec_error(&expression("{key: app, operator: NotIn, values: []}"));
        assert_eq!(error.field, "spec.podSelector.matchExpressions[0].values");

        let error = spec_error(&expression("{key: app, operator: Exists, values: [a]}"));
        assert_eq!(error.field, "spec.podSelector.matchExpressions[0].values");
        assert_eq!(
            error.message,
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        );
        let error = spec_error(&expression(
            "{key: app, operator: DoesNotExist, values: [a]}",
        ));
        assert_eq!(error.field, "spec.podSelector.matchExpressions[0].values");
    }

    #[test]
    fn match_expressions_keys_and_values() {
        let spec = "  podSelector:
    matchExpressions:
    - {key: app, operator: Exists}
    - {key: 'bad key', operator: In, values: [ok, 'not ok', -no]}
";
        assert_eq!(
            spec_fields(spec),
            [
                "spec.podSelector.matchExpressions[1].key",
                "spec.podSelector.matchExpressions[1].values[1]",
                "spec.podSelector.matchExpressions[1].values[2]",
            ]
        );
        let errors = validate(&with_spec(spec));
        assert!(
            errors[0]
                .message
                .starts_with("invalid value \"bad key\": name part")
        );
        assert!(
            errors[1]
                .message
                .starts_with("invalid value \"not ok\": a valid label value")
        );
    }

    #[test]
    fn peer_selectors_are_checked_at_their_paths() {
        let spec = "  ingress:
  - from:
    - podSelector: {matchLabels: {-a: x}}
      namespaceSelector: {matchExpressions: [{key: k, operator: Bogus}]}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {a: -x}}
";
        assert_eq!(
            spec_fields(spec),
            [
                "spec.ingress[0].from[0].podSelector.matchLabels[-a]",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator",
                "spec.egress[0].to[0].namespaceSelector.matchLabels[a]",
            ]
        );
    }

    #[test]
    fn a_peer_names_at_least_one_kind() {
        let error = spec_error(&peer_spec("{}"));
        assert_eq!(error.field, PEER0);
        assert!(error.message.starts_with("must specify a peer"), "{error}");
        let error = spec_error("  egress:\n  - to: [{}]\n");
        assert_eq!(error.field, "spec.egress[0].to[0]");
        // Selectors together are fine (pods in matching namespaces).
        assert_eq!(
            spec_fields(&peer_spec("{podSelector: {}, namespaceSelector: {}}")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_ip_block_stands_alone() {
        for peer in [
            "{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}",
            "{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}",
            "{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}, namespaceSelector: {}}",
        ] {
            let error = spec_error(&peer_spec(peer));
            assert_eq!(error.field, PEER0, "{peer}");
            assert!(
                error
                    .message
                    .starts_with("may not specify both ipBlock and another peer")
            );
        }
    }

    #[test]
    fn cidrs_the_api_server_accepts() {
        for cidr in [
            "10.0.0.0/8",
            "10.0.0.1/24",
            "0.0.0.0/0",
            "192.0.2.7/32",
            "::/0",
            "2001:db8::1/64",
            "fe80::/10",
        ] {
            let spec = peer_spec(&format!("ipBlock: {{cidr: '{cidr}'}}"));
            assert_eq!(spec_fields(&spec), Vec::<String>::new(), "{cidr}");
        }
    }

    #[test]
    fn cidrs_the_api_server_refuses() {
        let cases = [
            ("10.0.0.0", "the prefix length is missing"),
            ("10.0.0.0/33", "must be a valid CIDR value"),
            ("10.0.0/8", "must be a valid CIDR value"),
            ("banana/8", "must be a valid CIDR value"),
            ("2001:db8::/129", "must be a valid CIDR value"),
            ("010.0.0.0/8", "must not have leading 0s"),
            (
                "::ffff:10.0.0.0/104",
                "must not be an IPv4-mapped IPv6 address",
            ),
        ];
        for (cidr, reason) in cases {
            let error = spec_error(&peer_spec(&format!(
                "ipBlock: {{cidr: '{cidr}', except: [x]}}"
            )));
            assert_eq!(error.field, format!("{PEER0}.ipBlock.cidr"), "{cidr}");
            assert!(
                error
                    .message
                    .starts_with(&format!("invalid value {cidr:?}: ")),
                "{error}"
            );
            assert!(error.message.contains(reason), "{error}");
        }
        let error = spec_error(&peer_spec("ipBlock: {cidr: ''}"));
        assert_eq!(error.field, format!("{PEER0}.ipBlock.cidr"));
        assert_eq!(error.message, "is required");
    }

    #[test]
    fn excepts_are_strict_subsets() {
        let except = |cidr: &str, except: &str| {
            let spec = peer_spec(&format!(
                "ipBlock: {{cidr: '{cidr}', except: ['10.0.0.0/16', '{except}']}}"
            ));
            validate(&with_spec(&spec))
        };
        for (cidr, inside) in [
            ("10.0.0.0/8", "10.200.0.0/16"),
            ("10.0.0.0/8", "10.255.255.255/32"),
            ("10.0.0.1/8", "10.9.9.9/16"),
            ("10.0.0.0/8", "10.9.0.0/9"),
        ] {
            assert_eq!(except(cidr, inside), vec![], "{cidr} except {inside}");
        }
        for (cidr, outside) in [
            ("10.0.0.0/8", "11.0.0.0/16"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.0.0.0/8", "10.0.0.0/7"),
            ("10.0.0.0/8", "0.0.0.0/0"),
        ] {
            let errors = except(cidr, outside);
            assert_eq!(
                errors,
                vec![FieldError {
                    field: format!("{PEER0}.ipBlock.except[1]"),
                    message: format!("must be a strict subset of `cidr` {cidr}"),
                }],
                "{cidr} except {outside}"
            );
        }
    }

    #[test]
    fn excepts_are_of_the_cidrs_family() {
        let spec = peer_spec("ipBlock: {cidr: 10.0.0.0/8, except: ['2001:db8::/64']}");
        let error = spec_error(&spec);
        assert_eq!(error.field, format!("{PEER0}.ipBlock.except[0]"));
        assert_eq!(
            error.message,
            "must be a strict subset of `cidr` 10.0.0.0/8 (it is IPv6, `cidr` is IPv4)"
        );
        let spec = peer_spec("ipBlock: {cidr: '::/0', except: [10.0.0.0/8]}");
        assert!(
            spec_error(&spec)
                .message
                .ends_with("(it is IPv4, `cidr` is IPv6)")
        );
    }

    #[test]
    fn malformed_excepts() {
        let spec = peer_spec(
            "ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.1.0.0, '010.1.0.0/16']}",
        );
        let errors = validate(&with_spec(&spec));
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                format!("{PEER0}.ipBlock.except[1]"),
                format!("{PEER0}.ipBlock.except[2]")
            ]
        );
        assert!(errors[0].message.contains("the prefix length is missing"));
        assert!(errors[1].message.contains("leading 0s"));
    }

    #[test]
    fn protocols_are_tcp_udp_or_sctp_in_capitals() {
        for good in ["TCP", "UDP", "SCTP"] {
            assert_eq!(
                spec_fields(&port_spec(&format!("{{protocol: {good}}}"))),
                Vec::<String>::new()
            );
        }
        for bad in ["tcp", "ICMP", "Udp", ""] {
            let error = spec_error(&port_spec(&format!("{{protocol: '{bad}', port: 53}}")));
            assert_eq!(error.field, format!("{PORT0}.protocol"), "{bad}");
            assert_eq!(
                error.message,
                format!("unsupported value {bad:?}: must be \"TCP\", \"UDP\" or \"SCTP\"")
            );
        }
    }

    #[test]
    fn port_numbers() {
        for good in ["1", "80", "65535"] {
            assert_eq!(
                spec_fields(&port_spec(&format!("{{port: {good}}}"))),
                Vec::<String>::new()
            );
        }
        for bad in ["0", "-1", "65536", "2147483647"] {
            let error = spec_error(&port_spec(&format!("{{port: {bad}}}")));
            assert_eq!(error.field, format!("{PORT0}.port"));
            assert_eq!(
                error.message,
                format!("invalid value {bad}: must be between 1 and 65535, inclusive")
            );
        }
    }

    #[test]
    fn port_names_are_iana_service_names() {
        for good in ["http", "dns-tcp", "h2c", "a", "x1", "abcdefghijklmno", "1a"] {
            assert_eq!(
                spec_fields(&port_spec(&format!("{{port: {good}}}"))),
                Vec::<String>::new(),
                "{good}"
            );
        }
        let cases = [
            (
                "HTTP",
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            ),
            ("http_s", "must contain only alpha-numeric characters"),
            ("123", "must contain at least one letter (a-z)"),
            ("--", "must contain at least one letter (a-z)"),
            ("a--b", "must not contain consecutive hyphens"),
            ("-http", "must not begin or end with a hyphen"),
            ("http-", "must not begin or end with a hyphen"),
            ("abcdefghijklmnop", "must be no more than 15 characters"),
            ("", "must be non-empty"),
        ];
        for (name, reason) in cases {
            let errors = validate(&with_spec(&port_spec(&format!("{{port: '{name}'}}"))));
            assert!(!errors.is_empty(), "{name}");
            assert!(
                errors.iter().all(|e| e.field == format!("{PORT0}.port")),
                "{errors:?}"
            );
            let expected = format!("invalid value {name:?}: {reason}");
            assert!(
                errors.iter().any(|e| e.message.starts_with(&expected)),
                "{name}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_quoted_number_is_a_name_and_the_error_says_so() {
        let error = spec_error(&port_spec("{port: '80'}"));
        assert_eq!(error.field, format!("{PORT0}.port"));
        assert!(
            error.message.ends_with("write the number without quotes"),
            "{error}"
        );
    }

    #[test]
    fn end_ports() {
        for good in [
            "{port: 80, endPort: 80}",
            "{port: 1, endPort: 65535}",
            "{protocol: UDP, port: 1000, endPort: 2000}",
        ] {
            assert_eq!(
                spec_fields(&port_spec(good)),
                Vec::<String>::new(),
                "{good}"
            );
        }
        let cases = [
            (
                "{port: 90, endPort: 80}",
                "must be greater than or equal to `port` (90)",
            ),
            (
                "{port: 80, endPort: 65536}",
                "invalid value 65536: must be between 1 and 65535, inclusive",
            ),
            (
                "{port: http, endPort: 90}",
                "may not be specified when `port` is a name",
            ),
            (
                "{endPort: 90}",
                "may not be specified when `port` is not specified",
            ),
            (
                "{protocol: TCP, endPort: 90}",
                "may not be specified when `port` is not specified",
            ),
        ];
        for (port, message) in cases {
            let error = spec_error(&port_spec(port));
            assert_eq!(error.field, format!("{PORT0}.endPort"), "{port}");
            assert_eq!(error.message, message, "{port}");
        }
        let errors = validate(&with_spec(&port_spec("{port: 80, endPort: 0}")));
        let messages: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "must be greater than or equal to `port` (80)",
                "invalid value 0: must be between 1 and 65535, inclusive"
            ]
        );
    }

    #[test]
    fn ingress_ports_have_their_own_paths() {
        let spec = "  ingress:\n  - {}\n  - ports: [{port: 80}, {port: 0}]\n";
        assert_eq!(spec_fields(spec), ["spec.ingress[1].ports[1].port"]);
    }

    #[test]
    fn policy_types() {
        for good in [
            "[Ingress]",
            "[Egress]",
            "[Ingress, Egress]",
            "[Egress, Ingress]",
            "[]",
        ] {
            assert_eq!(
                spec_fields(&format!("  policyTypes: {good}\n")),
                Vec::<String>::new(),
                "{good}"
            );
        }
        let error = spec_error("  policyTypes: [Ingress, ingress]\n");
        assert_eq!(error.field, "spec.policyTypes[1]");
        assert_eq!(
            error.message,
            "unsupported value \"ingress\": must be \"Ingress\" or \"Egress\""
        );
        let error = spec_error("  policyTypes: [Ingress, Egress, Bogus]\n");
        assert_eq!(error.field, "spec.policyTypes");
        assert_eq!(error.message, "may not specify more than two policyTypes");
    }

    #[test]
    fn every_error_is_reported_in_the_api_servers_order() {
        let yaml = "metadata: {name: Web, namespace: Prod}
spec:
  podSelector: {matchLabels: {a: -b}}
  policyTypes: [Sideways]
  egress:
  - to: [{}]
    ports: [{port: 0}]
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]
    ports: [{protocol: icmp}]
";
        let policy: NetworkPolicy = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(
            fields(&policy),
            [
                "metadata.name",
                "metadata.namespace",
                "spec.podSelector.matchLabels[a]",
                "spec.ingress[0].ports[0].protocol",
                "spec.ingress[0].from[0].ipBlock.except[0]",
                "spec.egress[0].ports[0].port",
                "spec.egress[0].to[0]",
                "spec.policyTypes[0]",
            ]
        );
    }

    #[test]
    fn field_errors_display_as_field_and_message() {
        let error = FieldError {
            field: "spec".to_owned(),
            message: "is wrong".to_owned(),
        };
        assert_eq!(error.to_string(), "spec: is wrong");
    }
}
