//! CiliumNetworkPolicy export: golden files (`tests/golden/<case>.networkpolicy.yaml` ->
//! `<case>.cilium.yaml`; `PALISADE_BLESS=1` rewrites the expected files), each construct,
//! what is refused, and every generated policy checked against Palisade's schema of what
//! it emits (`schema/ciliumnetworkpolicy.schema.json`) by Python's `jsonschema`, which
//! scripts/setup.sh installs: without it these tests fail, they do not skip.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use model::evidence::RuleEvidence;
use policy_gen::{
    cilium::{
        self, CiliumNetworkPolicy, EgressRule, EndpointSelector, Entity, Error, IngressRule,
        L4Protocol, Operator, PortProtocol, RULE_ORIGIN_ANNOTATION, Refusal, SOURCE_ANNOTATION,
    },
    set::{EVIDENCE_ANNOTATION, ReviewedPolicy, WORKLOAD_ANNOTATION},
};
use serde_json::{Value, json};

const POD_NAMESPACE: &str = "k8s:io.kubernetes.pod.namespace";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A reviewed policy as the import reads one: the evidence and workload from annotations.
fn reviewed(yaml: &str) -> ReviewedPolicy {
    let policy: NetworkPolicy = serde_yaml::from_str(yaml).expect("test policy parses");
    let annotations = policy.metadata.annotations.clone().unwrap_or_default();
    let evidence: Vec<RuleEvidence> = annotations
        .get(EVIDENCE_ANNOTATION)
        .map(|e| serde_json::from_str(e).expect("test evidence parses"))
        .unwrap_or_default();
    ReviewedPolicy {
        workload: annotations.get(WORKLOAD_ANNOTATION).cloned(),
        policy,
        evidence,
        source: None,
    }
}

/// Convert, check against the schema, check the YAML reads back the same.
fn convert(yaml: &str) -> CiliumNetworkPolicy {
    let cnp = cilium::to_cilium(&reviewed(yaml)).expect("converts");
    assert_valid(&[&cnp]);
    let text = cnp.to_yaml().unwrap();
    let back: CiliumNetworkPolicy = serde_yaml::from_str(&text).unwrap();
    assert_eq!(back, cnp, "the YAML reads back as the same policy");
    cnp
}

fn refused(yaml: &str) -> Error {
    cilium::to_cilium(&reviewed(yaml)).expect_err("refused")
}

/// Run the schema check over `documents`: (exit status, what it printed).
fn schema_check(documents: &[Value]) -> (i32, String) {
    let script = crate_dir().join("tests/validate.py");
    let schema = crate_dir().join("schema/ciliumnetworkpolicy.schema.json");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): run scripts/setup.sh, these tests need it")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(documents).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().expect("validate.py exited");
    assert!(
        code == 0 || code == 1,
        "validate.py could not check (status {code}): {stderr}\nrun scripts/setup.sh (it installs jsonschema)"
    );
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn assert_valid(cnps: &[&CiliumNetworkPolicy]) {
    let documents: Vec<Value> = cnps
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let (code, errors) = schema_check(&documents);
    assert_eq!(code, 0, "not valid against the schema:\n{errors}");
}

fn ns_label(ns: &str) -> (String, String) {
    (POD_NAMESPACE.into(), ns.into())
}

fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tcp(port: &str) -> PortProtocol {
    PortProtocol {
        port: port.into(),
        end_port: None,
        protocol: L4Protocol::Tcp,
    }
}

fn ingress(cnp: &CiliumNetworkPolicy) -> &[IngressRule] {
    cnp.spec.ingress.as_deref().expect("an ingress section")
}

fn egress(cnp: &CiliumNetworkPolicy) -> &[EgressRule] {
    cnp.spec.egress.as_deref().expect("an egress section")
}

fn origin(cnp: &CiliumNetworkPolicy) -> Value {
    serde_json::from_str(&cnp.metadata.annotations[RULE_ORIGIN_ANNOTATION]).unwrap()
}

#[test]
fn golden_files() {
    let dir = crate_dir().join("tests/golden");
    let bless = std::env::var_os("PALISADE_BLESS").is_some_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".networkpolicy.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 4, "golden inputs in {}", dir.display());
    let mut outputs = Vec::new();
    let mut mismatches = Vec::new();
    for input in &inputs {
        let text = std::fs::read_to_string(input).unwrap();
        let cnp = cilium::to_cilium(&reviewed(&text))
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let yaml = cnp.to_yaml().unwrap();
        assert_eq!(
            yaml,
            cilium::to_yaml(&reviewed(&text)).unwrap(),
            "same input, same bytes"
        );
        let expected = expected_path(input);
        if bless {
            std::fs::write(&expected, &yaml).unwrap();
        } else {
            let want = std::fs::read_to_string(&expected).unwrap_or_else(|e| {
                panic!("{}: {e} (PALISADE_BLESS=1 writes it)", expected.display())
            });
            if want != yaml {
                mismatches.push(format!(
                    "{} differs (PALISADE_BLESS=1 rewrites it); got:\n{yaml}",
                    expected.display()
                ));
            }
        }
        outputs.push(cnp);
    }
    assert_valid(&outputs.iter().collect::<Vec<_>>());
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

fn expected_path(input: &Path) -> PathBuf {
    let name = input.file_name().unwrap().to_string_lossy();
    input.with_file_name(name.replace(".networkpolicy.yaml", ".cilium.yaml"))
}

const HEADER: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: shop}
";

fn policy(spec: &str) -> String {
    format!("{HEADER}spec:\n{spec}")
}

#[test]
fn metadata_carries_over_with_the_source() {
    let cnp = convert(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: palisade-deployment-api
  namespace: shop
  labels: {app.kubernetes.io/managed-by: palisade}
  annotations: {palisade.io/workload: shop/Deployment/api, note: reviewed}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
",
    );
    assert_eq!(cnp.api_version, "cilium.io/v2");
    assert_eq!(cnp.kind, "CiliumNetworkPolicy");
    assert_eq!(cnp.metadata.name, "palisade-deployment-api");
    assert_eq!(cnp.metadata.namespace, "shop");
    assert_eq!(
        cnp.metadata.labels,
        labels(&[("app.kubernetes.io/managed-by", "palisade")])
    );
    let a = &cnp.metadata.annotations;
    assert_eq!(a[WORKLOAD_ANNOTATION], "shop/Deployment/api");
    assert_eq!(a["note"], "reviewed");
    assert_eq!(
        a[SOURCE_ANNOTATION],
        "networking.k8s.io/v1 NetworkPolicy shop/palisade-deployment-api"
    );
    assert_eq!(
        cnp.spec.endpoint_selector.match_labels,
        labels(&[("app", "api")])
    );
    // Ingress only: no egress section, and default-deny for ingress alone.
    assert!(cnp.spec.egress.is_none());
    assert!(cnp.spec.enable_default_deny.ingress);
    assert!(!cnp.spec.enable_default_deny.egress);
}

#[test]
fn a_pod_selector_alone_means_the_policys_namespace() {
    let cnp = convert(&policy(
        "
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
",
    ));
    let selector = &ingress(&cnp)[0].from_endpoints.as_ref().unwrap()[0];
    assert_eq!(
        selector.match_labels,
        labels(&[("app", "web"), (POD_NAMESPACE, "shop")])
    );
    assert!(selector.match_expressions.is_empty());
    // No ports: every port.
    assert!(ingress(&cnp)[0].to_ports.is_empty());
}

#[test]
fn a_namespace_named_becomes_the_pod_namespace_label() {
    let cnp = convert(&policy(
        "
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}
      podSelector: {matchLabels: {app: db}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
",
    ));
    let selectors = ingress(&cnp)[0].from_endpoints.as_ref().unwrap();
    assert_eq!(
        selectors[0],
        EndpointSelector {
            match_labels: [ns_label("data"), ("app".into(), "db".into())].into(),
            match_expressions: vec![],
        }
    );
    // An empty pod selector (here: none) with a namespace: all pods of that namespace.
    assert_eq!(
        selectors[1],
        EndpointSelector {
            match_labels: [ns_label("monitoring")].into(),
            match_expressions: vec![],
        }
    );
}

#[test]
fn other_namespace_labels_use_ciliums_namespace_label_prefix() {
    let cnp = convert(&policy(
        "
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {team: payments}
        matchExpressions: [{key: example.com/env, operator: In, values: [prod]}]
",
    ));
    let selector = &ingress(&cnp)[0].from_endpoints.as_ref().unwrap()[0];
    assert_eq!(
        selector.match_labels,
        labels(&[("k8s:io.cilium.k8s.namespace.labels.team", "payments")])
    );
    let keys: Vec<(&str, Operator)> = selector
        .match_expressions
        .iter()
        .map(|r| (r.key.as_str(), r.operator))
        .collect();
    assert_eq!(
        keys,
        [
            (
                "k8s:io.cilium.k8s.namespace.labels.example.com/env",
                Operator::In
            ),
            // Keeps the selector to pods, and Cilium from adding the policy's namespace.
            (POD_NAMESPACE, Operator::Exists),
        ]
    );
}

#[test]
fn an_empty_namespace_selector_is_every_namespace() {
    let cnp = convert(&policy(
        "
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {}}]
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: prober}}}]
",
    ));
    let every = &ingress(&cnp)[0].from_endpoints.as_ref().unwrap()[0];
    assert!(every.match_labels.is_empty());
    assert_eq!(every.match_expressions.len(), 1);
    assert_eq!(every.match_expressions[0].key, POD_NAMESPACE);
    assert_eq!(every.match_expressions[0].operator, Operator::Exists);
    let probers = &ingress(&cnp)[1].from_endpoints.as_ref().unwrap()[0];
    assert_eq!(probers.match_labels, labels(&[("app", "prober")]));
    assert_eq!(probers.match_expressions, every.match_expressions);
}

#[test]
fn ip_blocks_become_cidr_sets_with_except() {
    let cnp = convert(&policy(
        "
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.96.0.0/12, 10.1.2.3/32]}}]
  egress:
  - to: [{ipBlock: {cidr: 192.168.1.7/24}}]
",
    ));
    let from = ingress(&cnp)[0].from_cidr_set.as_ref().unwrap();
    assert_eq!(from[0].cidr, "10.0.0.0/8");
    assert_eq!(from[0].except, ["10.96.0.0/12", "10.1.2.3/32"]);
    // Host bits are cleared, as Kubernetes ignores them.
    assert_eq!(
        egress(&cnp)[0].to_cidr_set.as_ref().unwrap()[0].cidr,
        "192.168.1.0/24"
    );
}

#[test]
fn ports_named_ranges_and_protocols() {
    let cnp = convert(&policy(
        "
  podSelector: {}
  ingress:
  - ports:
    - {port: http}
    - {port: 8080, endPort: 8090, protocol: TCP}
    - {protocol: UDP}
    - {port: 9999, protocol: SCTP}
",
    ));
    let rule = &ingress(&cnp)[0];
    // No peers: from everything.
    assert_eq!(rule.from_entities, Some(vec![Entity::All]));
    assert_eq!(rule.to_ports.len(), 1);
    assert_eq!(
        rule.to_ports[0].ports,
        [
            tcp("http"),
            PortProtocol {
                end_port: Some(8090),
                ..tcp("8080")
            },
            // A protocol without a port: every port of it.
            PortProtocol {
                port: "0".into(),
                end_port: None,
                protocol: L4Protocol::Udp
            },
            PortProtocol {
                port: "9999".into(),
                end_port: None,
                protocol: L4Protocol::Sctp
            },
        ]
    );
}

#[test]
fn more_than_forty_ports_are_split_across_port_rules() {
    let ports: Vec<String> = (1000..1045).map(|p| format!("{{port: {p}}}")).collect();
    let cnp = convert(&policy(&format!(
        "
  podSelector: {{}}
  ingress:
  - ports: [{}]
",
        ports.join(", ")
    )));
    let lens: Vec<usize> = ingress(&cnp)[0]
        .to_ports
        .iter()
        .map(|p| p.ports.len())
        .collect();
    assert_eq!(lens, [40, 5]);
}

#[test]
fn peers_of_several_kinds_become_one_rule_per_kind_with_the_ports() {
    let cnp = convert(&policy(
        "
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: a}}
    - ipBlock: {cidr: 198.51.100.0/24}
    - podSelector: {matchLabels: {app: b}}
    ports: [{port: 443}]
",
    ));
    let rules = egress(&cnp);
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].to_endpoints.as_ref().unwrap().len(), 2);
    assert!(rules[0].to_cidr_set.is_none());
    assert_eq!(rules[1].to_cidr_set.as_ref().unwrap().len(), 1);
    assert!(rules[1].to_endpoints.is_none());
    for rule in rules {
        assert_eq!(rule.to_ports[0].ports, [tcp("443")]);
    }
    assert_eq!(
        origin(&cnp),
        json!({"egress": ["spec.egress[0]", "spec.egress[0]"]})
    );
}

#[test]
fn an_empty_rule_list_denies_the_direction() {
    let cnp = convert(&policy(
        "
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress, Egress]
",
    ));
    assert!(cnp.spec.enable_default_deny.ingress && cnp.spec.enable_default_deny.egress);
    // A rule that selects nothing: the section puts the pods in default-deny, and allows
    // nothing.
    assert_eq!(
        ingress(&cnp),
        [IngressRule {
            from_endpoints: Some(vec![]),
            ..IngressRule::default()
        }]
    );
    assert_eq!(
        egress(&cnp),
        [EgressRule {
            to_endpoints: Some(vec![]),
            ..EgressRule::default()
        }]
    );
    let yaml = cnp.to_yaml().unwrap();
    assert!(yaml.contains("- fromEndpoints: []"), "{yaml}");
    assert!(yaml.contains("- toEndpoints: []"), "{yaml}");
}

#[test]
fn policy_types_default_as_the_api_server_defaults_them() {
    // No policyTypes: Ingress, and Egress because there are egress rules.
    let cnp = convert(&policy(
        "
  podSelector: {}
  egress:
  - to: [{podSelector: {}}]
",
    ));
    assert!(cnp.spec.enable_default_deny.ingress && cnp.spec.enable_default_deny.egress);
    assert_eq!(ingress(&cnp)[0].from_endpoints, Some(vec![]));
    assert_eq!(egress(&cnp).len(), 1);
}

const FQDN: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: p
  namespace: shop
  annotations:
    palisade.io/evidence: >-
      [{"policy":"shop/p","direction":"egress","rule":0,"peer":"external 203.0.113.7 (api.example.com)","dns_name":"api.example.com","protocol":"tcp","port":443,"connections":1,"bytes":1,"source_pods":[],"first_seen":"2025-01-01T00:00:00Z","last_seen":"2025-01-01T00:00:00Z","days":1,"confidence":0.5},
      {"policy":"shop/p","direction":"egress","rule":1,"peer":"external 198.51.100.4 (files.example.com)","dns_name":"files.example.com","protocol":"tcp","port":443,"connections":1,"bytes":1,"source_pods":[],"first_seen":"2025-01-01T00:00:00Z","last_seen":"2025-01-01T00:00:00Z","days":1,"confidence":0.5,"widened":{"cidr":"198.51.100.0/24","reason":"widened"}}]
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.7/32}}]
    ports: [{port: 443, protocol: TCP}]
  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]
    ports: [{port: 443, protocol: TCP}]
"#;

#[test]
fn a_looked_up_address_becomes_its_name_and_dns_goes_through_the_proxy() {
    let cnp = convert(FQDN);
    let rules = egress(&cnp);
    let fqdns = rules[0].to_fqdns.as_ref().expect("toFQDNs");
    assert_eq!(fqdns[0].match_name, "api.example.com");
    assert!(rules[0].to_cidr_set.is_none());
    assert_eq!(rules[0].to_ports[0].ports, [tcp("443")]);
    // A widened CIDR stays a CIDR.
    assert_eq!(
        rules[1].to_cidr_set.as_ref().unwrap()[0].cidr,
        "198.51.100.0/24"
    );
    assert!(rules[1].to_fqdns.is_none());
    // No DNS to the resolver in the policy: a rule is added, with the DNS proxy rule.
    let dns = &rules[2];
    assert_eq!(
        dns.to_endpoints.as_ref().unwrap()[0].match_labels,
        labels(&[(POD_NAMESPACE, "kube-system"), ("k8s-app", "kube-dns")])
    );
    let port_rule = &dns.to_ports[0];
    let protocols: Vec<L4Protocol> = port_rule.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(protocols, [L4Protocol::Tcp, L4Protocol::Udp]);
    assert!(port_rule.ports.iter().all(|p| p.port == "53"));
    let l7 = port_rule.rules.as_ref().expect("DNS rules");
    assert_eq!(l7.dns[0].match_pattern, "*");
    let description = cnp.spec.description.as_deref().unwrap();
    assert!(description.contains("egress[2] was added"), "{description}");
    assert_eq!(
        origin(&cnp)["egress"][2].as_str().unwrap().get(..6),
        Some("added:")
    );
}

#[test]
fn without_evidence_or_with_a_nameless_lookup_an_address_stays_an_address() {
    let mut policy = reviewed(FQDN);
    policy.evidence.clear();
    let cnp = cilium::to_cilium(&policy).unwrap();
    assert_valid(&[&cnp]);
    assert!(egress(&cnp).iter().all(|r| r.to_fqdns.is_none()));
    assert!(cnp.spec.description.is_none());

    let mut policy = reviewed(FQDN);
    let mut nameless = policy.evidence[0].clone();
    nameless.dns_name = None;
    nameless.peer = "external 203.0.113.7".into();
    policy.evidence.push(nameless);
    let cnp = cilium::to_cilium(&policy).unwrap();
    assert!(egress(&cnp).iter().all(|r| r.to_fqdns.is_none()));

    // Evidence of another policy is not this policy's.
    let mut policy = reviewed(FQDN);
    policy.evidence[0].policy = "shop/other".into();
    let cnp = cilium::to_cilium(&policy).unwrap();
    assert!(egress(&cnp).iter().all(|r| r.to_fqdns.is_none()));
}

#[test]
fn the_dns_rule_to_the_resolver_gets_the_proxy_in_a_rule_of_its_own() {
    let yaml = FQDN.replace(
        "  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]",
        "  - to:
    - {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}
    - podSelector: {matchLabels: {app: local-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 9153, protocol: TCP}]
  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]",
    );
    let cnp = convert(&yaml);
    let rules = egress(&cnp);
    // The other peer keeps the rule's ports, without the DNS rule.
    assert_eq!(
        rules[1].to_endpoints.as_ref().unwrap()[0].match_labels,
        labels(&[("app", "local-dns"), (POD_NAMESPACE, "shop")])
    );
    assert!(rules[1].to_ports.iter().all(|p| p.rules.is_none()));
    // The resolver: port 53 through the proxy, the other port as it was.
    assert_eq!(
        rules[2].to_endpoints.as_ref().unwrap()[0].match_labels,
        labels(&[(POD_NAMESPACE, "kube-system"), ("k8s-app", "kube-dns")])
    );
    assert_eq!(rules[2].to_ports.len(), 2);
    assert!(rules[2].to_ports[0].rules.is_some());
    assert_eq!(rules[2].to_ports[0].ports[0].protocol, L4Protocol::Udp);
    assert_eq!(rules[2].to_ports[1].ports, [tcp("9153")]);
    assert!(rules[2].to_ports[1].rules.is_none());
    // UDP only, as the policy had it: nothing added, nothing widened.
    assert_eq!(rules.len(), 4);
    assert!(rules[3].to_cidr_set.is_some());
    assert!(!cnp.spec.description.as_deref().unwrap().contains("added"));
    assert_eq!(
        origin(&cnp)["egress"],
        json!([
            "spec.egress[0]",
            "spec.egress[1]",
            "spec.egress[1]",
            "spec.egress[2]"
        ])
    );
}

#[test]
fn dns_reached_only_through_all_ports_gets_a_proxied_rule_for_those_protocols() {
    let yaml = FQDN.replace(
        "  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]",
        "  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP}]
  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]",
    );
    let cnp = convert(&yaml);
    let added = egress(&cnp).last().unwrap();
    assert_eq!(
        added.to_ports[0].ports,
        [PortProtocol {
            port: "53".into(),
            end_port: None,
            protocol: L4Protocol::Udp
        }]
    );
    // Port 53 over UDP was already allowed: nothing widened.
    assert!(
        !cnp.spec
            .description
            .as_deref()
            .unwrap()
            .contains("was added")
    );
}

#[test]
fn refused_label_keys_name_the_policy_and_the_field() {
    let error = refused(&policy(
        "
  podSelector: {matchLabels: {app: api, pod-template-hash: 5c6d7}}
",
    ));
    let message = error.to_string();
    assert!(message.contains("shop/p"), "{message}");
    assert!(
        message.contains("spec.podSelector.matchLabels[pod-template-hash]"),
        "{message}"
    );
    assert!(matches!(
        error,
        Error::Refused {
            refusal: Refusal::NotInIdentity { .. },
            ..
        }
    ));

    let error = refused(&policy(
        "
  podSelector: {}
  ingress:
  - from:
    - podSelector:
        matchExpressions: [{key: statefulset.kubernetes.io/pod-name, operator: In, values: [db-0]}]
",
    ));
    assert!(
        error
            .to_string()
            .contains("spec.ingress[0].from[0].podSelector.matchExpressions[0].key"),
        "{error}"
    );
}

#[test]
fn rules_kubernetes_ignores_are_refused() {
    let error = refused(&policy(
        "
  podSelector: {}
  policyTypes: [Egress]
  ingress:
  - from: [{podSelector: {}}]
",
    ));
    assert!(matches!(
        &error,
        Error::Refused { field, refusal: Refusal::IgnoredRules { direction: "Ingress", count: 1 }, .. }
            if field == "spec.ingress"
    ));
}

#[test]
fn a_namespace_selector_that_selects_no_namespace_is_refused() {
    let error = refused(&policy(
        "
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: DoesNotExist}]
",
    ));
    assert!(
        error
            .to_string()
            .contains("spec.ingress[0].from[0].namespaceSelector.matchExpressions[0]"),
        "{error}"
    );
    assert!(matches!(
        error,
        Error::Refused {
            refusal: Refusal::NoNamespace,
            ..
        }
    ));
}

#[test]
fn a_namespace_label_too_long_for_ciliums_prefix_is_refused() {
    let key = "a".repeat(40);
    let error = refused(&policy(&format!(
        "
  podSelector: {{}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{{key}: x}}}}}}]
"
    )));
    assert!(
        matches!(&error, Error::Refused { refusal: Refusal::CiliumKey { .. }, field, .. }
            if field == &format!("spec.ingress[0].from[0].namespaceSelector.matchLabels[{key}]")),
        "{error}"
    );
}

#[test]
fn what_the_api_server_refuses_is_refused_with_its_field() {
    let error = refused(&policy(
        "
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]
",
    ));
    let message = error.to_string();
    assert!(matches!(error, Error::Invalid { .. }));
    assert!(message.contains("shop/p"), "{message}");
    assert!(
        message.contains("spec.ingress[0].from[0].ipBlock.cidr"),
        "{message}"
    );
}

#[test]
fn the_schema_refuses_what_palisade_does_not_emit() {
    let cnp = convert(FQDN);
    let good = serde_json::to_value(&cnp).unwrap();
    let mut bad = Vec::new();

    let mut unknown = good.clone();
    unknown["spec"]["ingressDeny"] = json!([{"fromEntities": ["world"]}]);
    bad.push(unknown);

    let mut unknown_in_rule = good.clone();
    unknown_in_rule["spec"]["egress"][0]["toRequires"] = json!([{}]);
    bad.push(unknown_in_rule);

    let mut two_kinds = good.clone();
    two_kinds["spec"]["egress"][0]["toCIDRSet"] = json!([{"cidr": "10.0.0.0/8"}]);
    bad.push(two_kinds);

    let mut numeric_port = good.clone();
    numeric_port["spec"]["egress"][0]["toPorts"][0]["ports"][0]["port"] = json!(443);
    bad.push(numeric_port);

    let mut dns_on_port_zero = good.clone();
    dns_on_port_zero["spec"]["egress"][2]["toPorts"][0]["ports"][0]["port"] = json!("0");
    bad.push(dns_on_port_zero);

    let mut unknown_metadata = good.clone();
    unknown_metadata["metadata"]["uid"] = json!("1234");
    bad.push(unknown_metadata);

    let (code, _) = schema_check(std::slice::from_ref(&good));
    assert_eq!(code, 0);
    for (i, doc) in bad.iter().enumerate() {
        let (code, errors) = schema_check(std::slice::from_ref(doc));
        assert_eq!(code, 1, "bad document {i} passed the schema");
        assert!(!errors.is_empty());
    }
}

#[test]
fn the_same_policy_gives_the_same_bytes() {
    let text =
        std::fs::read_to_string(crate_dir().join("tests/golden/constructs.networkpolicy.yaml"))
            .unwrap();
    let first = cilium::to_yaml(&reviewed(&text)).unwrap();
    for _ in 0..3 {
        assert_eq!(cilium::to_yaml(&reviewed(&text)).unwrap(), first);
    }
}
