//! The topology file: namespaces, pods, workloads, services and external hosts.
//!
//! Values are checked while they are deserialized (names, labels, ports, addresses), so
//! serde_yaml reports them with their line and column; what needs the whole document
//! (duplicates, undeclared namespaces) is checked afterwards and located with
//! [`yaml::locate`]. Unknown fields are errors everywhere: a typo never silently changes
//! what the lab builds.
//!
//! ```yaml
//! namespaces:
//!   - name: shop
//!     labels: {team: web}
//! pods:
//!   - name: shop/debug
//!     labels: {app: debug}
//! workloads:
//!   - kind: Deployment          # or StatefulSet, DaemonSet, Job
//!     name: api
//!     namespace: shop
//!     replicas: 2
//!     labels: {app: api}
//!     ports: [{port: 8080, name: http}, {port: 5353, protocol: UDP}]
//! services:
//!   - name: api
//!     namespace: shop
//!     selector: {app: api}
//!     ports: [{port: 80, targetPort: http}]
//! externals:
//!   - name: payments.example.com
//!     addresses: [203.0.113.10, 2001:db8::10]
//!     ports: [{port: 443}]
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    num::NonZeroU16,
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::{
    error::{Error, Result},
    yaml::{self, FieldPath},
};

/// At most this many replicas per workload: a typo must not build thousands of namespaces.
pub const MAX_REPLICAS: u32 = 64;
/// At most this many pods and external hosts in one topology.
pub const MAX_HOSTS: usize = 512;

/// The topology the lab builds when no file is given, and that `palisade lab demo` runs.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../../examples/lab/shop.yaml");
const DEFAULT_TOPOLOGY_NAME: &str = "examples/lab/shop.yaml";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Bare pods, named `namespace/name`.
    #[serde(default)]
    pub pods: Vec<PodDecl>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub externals: Vec<External>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub name: DnsLabel,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodDecl {
    pub name: PodName,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<Port>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub kind: Kind,
    pub name: DnsLabel,
    pub namespace: DnsLabel,
    /// Default 1. Not allowed for a DaemonSet (one pod per node, and the lab is one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The pod template's labels.
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<Port>,
}

impl Workload {
    /// `namespace/name`: how commands name it (names are unique per namespace in a topology).
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Job => "Job",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: ServiceName,
    pub namespace: DnsLabel,
    /// Selects pods of the service's namespace carrying all of these labels.
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

impl Service {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<PortName>,
    pub port: NonZeroU16,
    /// Default: the same number as `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
    #[serde(default)]
    pub protocol: Protocol,
}

impl ServicePort {
    pub fn target(&self) -> TargetPort {
        self.target_port
            .clone()
            .unwrap_or(TargetPort::Number(self.port))
    }
}

/// A backend port, by number or by the name of a pod's port (Kubernetes named ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(NonZeroU16),
    Name(PortName),
}

impl Serialize for TargetPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Number(n) => s.serialize_u16(n.get()),
            Self::Name(name) => name.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TargetPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or a port name")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<TargetPort, E> {
                u16::try_from(v)
                    .ok()
                    .and_then(NonZeroU16::new)
                    .map(TargetPort::Number)
                    .ok_or_else(|| E::custom(format!("{v} is not a port number (1-65535)")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<TargetPort, E> {
                Err(E::custom(format!("{v} is not a port number (1-65535)")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<TargetPort, E> {
                PortName::try_from(v.to_owned())
                    .map(TargetPort::Name)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(name) => write!(f, "{name}"),
        }
    }
}

/// A host outside the cluster, in a documentation range (203.0.113.0/24, 198.51.100.0/24,
/// 2001:db8::/32), so lab traffic can never leak to a real address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    pub name: HostName,
    pub addresses: Vec<ExternalAddress>,
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// A served port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub port: NonZeroU16,
    #[serde(default)]
    pub protocol: Protocol,
    /// For services' named `targetPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<PortName>,
}

/// Protocols the lab serves and probes, spelled as in Kubernetes manifests.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Protocol> for model::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => Self::Tcp,
            Protocol::Udp => Self::Udp,
        }
    }
}

// ---- validated scalars ---------------------------------------------------------------

/// A value that is not what its field needs; serde_yaml adds where it is.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not {expected}")]
pub struct InvalidValue {
    value: String,
    expected: &'static str,
}

fn invalid<T>(value: impl Into<String>, expected: &'static str) -> Result<T, InvalidValue> {
    Err(InvalidValue {
        value: value.into(),
        expected,
    })
}

/// Deserialize a string checked by `T::try_from` inside the deserializer's own visit of
/// the value, so serde_yaml reports the value's line, column and field path.
fn checked_str<'de, D, T>(d: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<String, Error = InvalidValue>,
{
    struct V<T>(&'static str, std::marker::PhantomData<T>);
    impl<T: TryFrom<String, Error = InvalidValue>> serde::de::Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            T::try_from(v.to_owned()).map_err(E::custom)
        }
    }
    d.deserialize_str(V(expecting, std::marker::PhantomData))
}

/// Generates a string newtype checked on the way in, transparent on the way out.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr, $expected:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(into = "String")]
        pub struct $name(String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                checked_str(d, $expected)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                let check: fn(&str) -> bool = $check;
                if check(&s) { Ok(Self(s)) } else { invalid(s, $expected) }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_string!(
    /// An RFC 1123 label: namespace and workload names.
    DnsLabel,
    is_dns_label,
    "a DNS label (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
);

checked_string!(
    /// An RFC 1035 label, as Kubernetes requires for service names.
    ServiceName,
    |s| is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase()),
    "a service name (1-63 lowercase letters, digits or '-', starting with a letter)"
);

checked_string!(
    /// An IANA service name, as Kubernetes requires for port names.
    PortName,
    is_port_name,
    "a port name (1-15 lowercase letters, digits or '-', with a letter, no '--', no '-' at either end)"
);

checked_string!(
    /// An external host's name: a DNS subdomain (`payments.example.com`); `node` is reserved
    /// for the node namespace in `lab exec`.
    HostName,
    |s| is_dns_subdomain(s) && s != "node",
    "a host name (a lowercase DNS name such as payments.example.com, and not `node`)"
);

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// A pod's `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct PodName {
    pub namespace: DnsLabel,
    /// A DNS subdomain, as Kubernetes requires for pod names.
    pub name: String,
}

const POD_NAME: &str = "a pod name `namespace/name` (a DNS label, '/', a DNS name)";

impl<'de> Deserialize<'de> for PodName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, POD_NAME)
    }
}

impl TryFrom<String> for PodName {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        let Some((namespace, name)) = s.split_once('/') else {
            return invalid(s, POD_NAME);
        };
        match DnsLabel::try_from(namespace.to_owned()) {
            Ok(namespace) if is_dns_subdomain(name) => Ok(Self {
                namespace,
                name: name.to_owned(),
            }),
            _ => invalid(s, POD_NAME),
        }
    }
}

impl From<PodName> for String {
    fn from(p: PodName) -> String {
        p.to_string()
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Kubernetes labels (or a selector), checked as the API server checks them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(into = "BTreeMap<String, String>")]
pub struct Labels(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of label keys to string values")
            }
            // Checked inside the visit, so the error points at this mapping.
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Labels, A::Error> {
                let mut labels = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    labels.insert(k, v);
                }
                Labels::try_from(labels).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = InvalidValue;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, InvalidValue> {
        for (key, value) in &map {
            if !is_label_key(key) {
                return invalid(
                    key.as_str(),
                    "a label key ([prefix/]name: name 1-63 letters, digits, '-', '_' or '.', \
                     starting and ending with a letter or digit; prefix a DNS name)",
                );
            }
            if !is_label_value(value) {
                return invalid(
                    value.as_str(),
                    "a label value (0-63 letters, digits, '-', '_' or '.', starting and ending \
                     with a letter or digit; quote values such as \"true\" or \"1\")",
                );
            }
        }
        Ok(Self(map))
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(l: Labels) -> Self {
        l.0
    }
}

impl Labels {
    pub fn map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Does `labels` carry every pair of this selector?
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// An address in a documentation range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "IpAddr")]
pub struct ExternalAddress(IpAddr);

const EXTERNAL_ADDRESS: &str = "an external address in a documentation range \
                                (203.0.113.0/24, 198.51.100.0/24, 2001:db8::/32)";

impl<'de> Deserialize<'de> for ExternalAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, EXTERNAL_ADDRESS)
    }
}

impl TryFrom<String> for ExternalAddress {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        match s.parse::<IpAddr>() {
            Ok(ip) => Self::try_from(ip),
            Err(_) => invalid(s, EXTERNAL_ADDRESS),
        }
    }
}

impl TryFrom<IpAddr> for ExternalAddress {
    type Error = InvalidValue;
    fn try_from(ip: IpAddr) -> Result<Self, InvalidValue> {
        let documentation = match ip {
            IpAddr::V4(v4) => matches!(v4.octets(), [203, 0, 113, _] | [198, 51, 100, _]),
            IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0x0db8],
        };
        if documentation {
            Ok(Self(ip))
        } else {
            invalid(ip.to_string(), EXTERNAL_ADDRESS)
        }
    }
}

impl From<ExternalAddress> for IpAddr {
    fn from(a: ExternalAddress) -> Self {
        a.0
    }
}

impl ExternalAddress {
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

// ---- the document as a whole -----------------------------------------------------------

/// What is wrong with a topology that parsed; the error adds file, line and field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the topology declares no pods, workloads or external hosts")]
    Empty,
    #[error("{what} {name:?} is declared twice (first at line {first_line})")]
    Duplicate {
        what: &'static str,
        name: String,
        first_line: usize,
    },
    #[error("namespace {namespace:?} is not declared under `namespaces`")]
    UndeclaredNamespace { namespace: String },
    #[error("{port}/{protocol} is declared twice")]
    DuplicatePort { port: u16, protocol: Protocol },
    #[error("port name {name:?} is used twice")]
    DuplicatePortName { name: String },
    #[error("a service with several ports must name each of them, as Kubernetes requires")]
    UnnamedServicePort,
    #[error("a DaemonSet runs one pod per node and the lab is one node: remove `replicas`")]
    DaemonSetReplicas,
    #[error("{replicas} replicas: the lab allows 1 to {MAX_REPLICAS} per workload")]
    Replicas { replicas: u32 },
    #[error("a selector must not be empty (the lab has no manually managed endpoints)")]
    EmptySelector,
    #[error("an external host needs at least one address")]
    NoAddresses,
    #[error("pod {pod:?} is also a pod of StatefulSet {workload:?}")]
    PodNameClash { pod: String, workload: String },
    #[error("{hosts} pods and external hosts: the lab allows at most {MAX_HOSTS}")]
    TooLarge { hosts: usize },
}

impl Topology {
    /// Parse and check a topology; `source` names it in errors (usually the file's path).
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let topology: Self = serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            Error::Yaml {
                file: source.to_owned(),
                line,
                column,
                source: e,
            }
        })?;
        topology.check().map_err(|(field, problem)| {
            let (line, column) = yaml::locate(text, &field);
            let problem = match problem {
                // The first occurrence is found the same way.
                Located::Duplicate { what, name, first } => Problem::Duplicate {
                    what,
                    name,
                    first_line: yaml::locate(text, &first).0,
                },
                Located::Plain(problem) => problem,
            };
            Error::Topology {
                file: source.to_owned(),
                line,
                column,
                field: field.to_string(),
                problem,
            }
        })?;
        Ok(topology)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The default topology (`examples/lab/shop.yaml`, embedded in the binary).
    pub fn default_shop() -> Self {
        Self::parse(DEFAULT_TOPOLOGY, DEFAULT_TOPOLOGY_NAME)
            .expect("the embedded default topology is valid (checked by a unit test)")
    }

    /// Pods of the topology's bare pods and workloads at their declared replicas, plus
    /// external hosts.
    pub fn host_count(&self) -> usize {
        self.pods.len()
            + self.externals.len()
            + self
                .workloads
                .iter()
                .map(|w| w.replicas() as usize)
                .sum::<usize>()
    }

    /// The namespace's labels, with the `kubernetes.io/metadata.name` label Kubernetes adds.
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| n.name.as_str() == namespace)
            .map(|n| n.labels.map().clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), namespace.into());
        labels
    }

    fn check(&self) -> Result<(), (FieldPath, Located)> {
        let root = FieldPath::default();
        if self.pods.is_empty() && self.workloads.is_empty() && self.externals.is_empty() {
            return Err((root, Problem::Empty.into()));
        }
        let namespaces = unique(
            "namespaces",
            "namespace",
            self.namespaces.iter().map(|n| n.name.to_string()),
        )?;
        let declared = |path: FieldPath, ns: &DnsLabel| {
            if namespaces.contains(ns.as_str()) {
                Ok(())
            } else {
                let problem = Problem::UndeclaredNamespace {
                    namespace: ns.to_string(),
                };
                Err((path, problem.into()))
            }
        };

        let pods = unique("pods", "pod", self.pods.iter().map(|p| p.name.to_string()))?;
        for (i, pod) in self.pods.iter().enumerate() {
            let at = FieldPath::default().key("pods").index(i);
            declared(at.clone().key("name"), &pod.name.namespace)?;
            check_ports(at.key("ports"), &pod.ports)?;
        }

        unique(
            "workloads",
            "workload",
            self.workloads.iter().map(Workload::id),
        )?;
        for (i, w) in self.workloads.iter().enumerate() {
            let at = FieldPath::default().key("workloads").index(i);
            declared(at.clone().key("namespace"), &w.namespace)?;
            match (w.kind, w.replicas) {
                (Kind::DaemonSet, Some(_)) => {
                    return Err((at.key("replicas"), Problem::DaemonSetReplicas.into()));
                }
                (_, Some(replicas)) if !(1..=MAX_REPLICAS).contains(&replicas) => {
                    return Err((at.key("replicas"), Problem::Replicas { replicas }.into()));
                }
                _ => {}
            }
            if w.kind == Kind::StatefulSet {
                // StatefulSet pods have predictable names; a bare pod must not take one.
                for ordinal in 0..w.replicas() {
                    let pod = format!("{}/{}-{ordinal}", w.namespace, w.name);
                    if pods.contains(&pod) {
                        let problem = Problem::PodNameClash {
                            pod,
                            workload: w.id(),
                        };
                        return Err((at.key("name"), problem.into()));
                    }
                }
            }
            check_ports(at.key("ports"), &w.ports)?;
        }

        unique("services", "service", self.services.iter().map(Service::id))?;
        for (i, s) in self.services.iter().enumerate() {
            let at = FieldPath::default().key("services").index(i);
            declared(at.clone().key("namespace"), &s.namespace)?;
            if s.selector.is_empty() {
                return Err((at.key("selector"), Problem::EmptySelector.into()));
            }
            check_service_ports(at.key("ports"), &s.ports)?;
        }

        unique(
            "externals",
            "external host",
            self.externals.iter().map(|e| e.name.to_string()),
        )?;
        let mut addresses = BTreeMap::new();
        for (i, e) in self.externals.iter().enumerate() {
            let at = FieldPath::default().key("externals").index(i);
            if e.addresses.is_empty() {
                return Err((at.key("addresses"), Problem::NoAddresses.into()));
            }
            for (j, a) in e.addresses.iter().enumerate() {
                let here = at.clone().key("addresses").index(j);
                if let Some(first) = addresses.insert(a.ip(), here.clone()) {
                    let problem = Located::Duplicate {
                        what: "address",
                        name: a.ip().to_string(),
                        first,
                    };
                    return Err((here, problem));
                }
            }
            check_ports(at.key("ports"), &e.ports)?;
        }
        let hosts = self.host_count();
        if hosts > MAX_HOSTS {
            return Err((root, Problem::TooLarge { hosts }.into()));
        }
        Ok(())
    }
}

/// A problem whose message needs a second position, found by the caller.
enum Located {
    Plain(Problem),
    Duplicate {
        what: &'static str,
        name: String,
        first: FieldPath,
    },
}

impl From<Problem> for Located {
    fn from(p: Problem) -> Self {
        Self::Plain(p)
    }
}

/// The set of names under the top-level `list`, or the second occurrence of one.
fn unique(
    list: &'static str,
    what: &'static str,
    names: impl Iterator<Item = String>,
) -> Result<BTreeSet<String>, (FieldPath, Located)> {
    let mut seen = BTreeMap::new();
    for (i, name) in names.enumerate() {
        if let Some(first) = seen.insert(name.clone(), i) {
            let item = |index| FieldPath::default().key(list).index(index).key("name");
            let problem = Located::Duplicate {
                what,
                name,
                first: item(first),
            };
            return Err((item(i), problem));
        }
    }
    Ok(seen.into_keys().collect())
}

fn check_ports(at: FieldPath, ports: &[Port]) -> Result<(), (FieldPath, Located)> {
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let here = at.clone().index(i);
        if !numbers.insert((p.port, p.protocol)) {
            let problem = Problem::DuplicatePort {
                port: p.port.get(),
                protocol: p.protocol,
            };
            return Err((here, problem.into()));
        }
        if let Some(name) = &p.name
            && !names.insert(name)
        {
            let problem = Problem::DuplicatePortName {
                name: name.to_string(),
            };
            return Err((here.key("name"), problem.into()));
        }
    }
    Ok(())
}

fn check_service_ports(at: FieldPath, ports: &[ServicePort]) -> Result<(), (FieldPath, Located)> {
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let here = at.clone().index(i);
        if !numbers.insert((p.port, p.protocol)) {
            let problem = Problem::DuplicatePort {
                port: p.port.get(),
                protocol: p.protocol,
            };
            return Err((here, problem.into()));
        }
        match &p.name {
            None if ports.len() > 1 => return Err((here, Problem::UnnamedServicePort.into())),
            Some(name) if !names.insert(name) => {
                let problem = Problem::DuplicatePortName {
                    name: name.to_string(),
                };
                return Err((here.key("name"), problem.into()));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Topology> {
        Topology::parse(text, "t.yaml")
    }

    fn err(text: &str) -> String {
        // What a user sees: the error and its causes.
        crate::error::chain(&parse(text).unwrap_err())
    }

    const MINIMAL: &str = "\
namespaces:
  - name: shop
pods:
  - name: shop/debug
";

    #[test]
    fn the_default_topology_is_valid() {
        let t = Topology::default_shop();
        assert!(!t.workloads.is_empty() && !t.services.is_empty() && !t.externals.is_empty());
        let kinds: BTreeSet<_> = t.workloads.iter().map(|w| w.kind).collect();
        assert_eq!(
            kinds.len(),
            4,
            "the demo shows every workload kind: {kinds:?}"
        );
    }

    #[test]
    fn every_example_topology_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Topology::load(&path).unwrap_or_else(|e| panic!("{}", e));
                checked += 1;
            }
        }
        assert!(checked >= 2, "examples in {}", dir.display());
    }

    #[test]
    fn parses_every_section_with_defaults() {
        let t = parse(
            "\
namespaces:
  - name: shop
    labels: {team: web, pci: \"true\"}
pods:
  - name: shop/debug
workloads:
  - kind: StatefulSet
    name: db
    namespace: shop
    replicas: 3
    labels: {app: db}
    ports: [{port: 5432, name: pg}, {port: 5353, protocol: UDP}]
services:
  - name: db
    namespace: shop
    selector: {app: db}
    ports: [{port: 5432, targetPort: pg}]
externals:
  - name: payments.example.com
    addresses: [203.0.113.10, 2001:db8::10]
    ports: [{port: 443}]
",
        )
        .unwrap();
        assert_eq!(t.workloads[0].replicas(), 3);
        assert_eq!(t.workloads[0].ports[0].protocol, Protocol::Tcp);
        assert_eq!(t.workloads[0].ports[1].protocol, Protocol::Udp);
        assert_eq!(
            t.services[0].ports[0].target(),
            TargetPort::Name(PortName::try_from("pg".to_owned()).unwrap())
        );
        assert_eq!(
            t.namespace_labels("shop")["kubernetes.io/metadata.name"],
            "shop"
        );
        assert_eq!(t.namespace_labels("shop")["pci"], "true");
        assert_eq!(t.host_count(), 5);
    }

    #[test]
    fn round_trips_through_json_for_the_lab_state() {
        let t = Topology::default_shop();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), t);
    }

    #[test]
    fn unknown_fields_are_located() {
        let e = err("namespaces:\n  - name: shop\npods:\n  - name: shop/a\n    lables: {}\n");
        assert!(e.starts_with("t.yaml:5:5: invalid topology"), "{e}");
        assert!(e.contains("pods[0]: unknown field `lables`"), "{e}");
    }

    #[test]
    fn bad_values_are_located() {
        let cases = [
            (
                "pods:\n  - name: Shop/a\n",
                "t.yaml:2:11",
                "is not a pod name",
            ),
            (
                "pods:\n  - name: shop/a\n    ports: [{port: 0}]\n",
                "t.yaml:3:",
                "port",
            ),
            (
                "pods:\n  - name: shop/a\n    ports: [{port: 80, protocol: tcp}]\n",
                "t.yaml:3:",
                "unknown variant `tcp`",
            ),
            (
                "pods:\n  - name: shop/a\n    labels: {app: [x]}\n",
                "t.yaml:3:",
                "invalid type: sequence",
            ),
            (
                "pods:\n  - name: shop/a\n    labels: {-app: x}\n",
                "t.yaml:3:",
                "is not a label key",
            ),
            (
                "externals:\n  - name: x\n    addresses: [8.8.8.8]\n",
                "t.yaml:3:",
                "documentation range",
            ),
            (
                "workloads:\n  - {kind: Pod, name: a, namespace: s}\n",
                "t.yaml:2:",
                "unknown variant `Pod`",
            ),
            (
                "services:\n  - {name: 1a, namespace: s, selector: {a: b}, ports: []}\n",
                "t.yaml:2:",
                "service name",
            ),
        ];
        for (text, at, what) in cases {
            let e = err(text);
            assert!(e.starts_with(at), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn inconsistencies_name_file_line_and_field() {
        let cases = [
            (
                "namespaces:\n  - name: shop\n  - name: shop\npods:\n  - name: shop/a\n",
                "t.yaml:3:11: namespaces[1].name: namespace \"shop\" is declared twice (first at line 2)",
            ),
            (
                "namespaces:\n  - name: shop\npods:\n  - name: shop/a\n  - name: web/b\n",
                "t.yaml:5:11: pods[1].name: namespace \"web\" is not declared under `namespaces`",
            ),
            (
                "namespaces: [{name: s}]\nworkloads:\n  - kind: DaemonSet\n    name: d\n    namespace: s\n    replicas: 2\n",
                "t.yaml:6:15: workloads[0].replicas: a DaemonSet runs one pod per node",
            ),
            (
                "namespaces: [{name: s}]\nworkloads:\n  - {kind: Deployment, name: d, namespace: s, replicas: 1000}\n",
                "t.yaml:3:57: workloads[0].replicas: 1000 replicas",
            ),
            (
                "namespaces: [{name: s}]\npods:\n  - name: s/a\n    ports:\n      - {port: 80}\n      - {port: 80, protocol: TCP}\n",
                "t.yaml:6:9: pods[0].ports[1]: 80/TCP is declared twice",
            ),
            (
                "namespaces: [{name: s}]\npods: [{name: s/a}]\nservices:\n  - name: a\n    namespace: s\n    selector: {}\n    ports: [{port: 80}]\n",
                "t.yaml:6:15: services[0].selector: a selector must not be empty",
            ),
            (
                "namespaces: [{name: s}]\npods: [{name: s/a}]\nservices:\n  - name: a\n    namespace: s\n    selector: {app: a}\n    ports: [{port: 80}, {port: 81}]\n",
                "t.yaml:7:13: services[0].ports[0]: a service with several ports must name each",
            ),
            (
                "externals:\n  - name: a\n    addresses: [203.0.113.1]\n  - name: b\n    addresses: [203.0.113.1]\n",
                "t.yaml:5:17: externals[1].addresses[0]: address \"203.0.113.1\" is declared twice (first at line 3)",
            ),
            (
                "namespaces: [{name: s}]\npods: [{name: s/db-1}]\nworkloads:\n  - {kind: StatefulSet, name: db, namespace: s, replicas: 2}\n",
                "t.yaml:4:31: workloads[0].name: pod \"s/db-1\" is also a pod of StatefulSet \"s/db\"",
            ),
            (
                "namespaces: [{name: s}]\n",
                "t.yaml:1:1: (document): the topology declares no pods",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.starts_with(want), "{text:?}:\n got {e}\nwant {want}");
        }
    }

    #[test]
    fn minimal_topology_parses() {
        let t = parse(MINIMAL).unwrap();
        assert_eq!(t.pods[0].name.to_string(), "shop/debug");
    }

    #[test]
    fn selectors_match_subsets() {
        let sel: Labels = serde_yaml::from_str("{app: api}").unwrap();
        let labels = BTreeMap::from([
            ("app".to_owned(), "api".to_owned()),
            ("pod-template-hash".to_owned(), "x".to_owned()),
        ]);
        assert!(sel.selects(&labels));
        let other: Labels = serde_yaml::from_str("{app: web}").unwrap();
        assert!(!other.selects(&labels));
    }

    #[test]
    fn label_and_name_rules() {
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("tier"));
        assert!(!is_label_key("/name"));
        assert!(!is_label_key("a/b/c"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
        assert!(is_port_name("http-alt"));
        assert!(!is_port_name("8080"));
        assert!(!is_port_name("a--b"));
        assert!(is_dns_subdomain("payments.example.com"));
        assert!(!is_dns_subdomain("Payments.example.com"));
    }
}
