//! Which mode each pod is in: `learn`, `monitor` or `enforce` ([`model::Mode`]).
//!
//! People choose it with the label or annotation `palisade.io/mode` on a pod (for a
//! workload, on its pod template: pods carry their template's labels and annotations), or on
//! its namespace; otherwise the agent's configured default applies. The most specific
//! level wins: pod, then namespace, then the default. On one object the label wins over the
//! annotation, because labels are what people already select and review.
//!
//! A value that is not one of the three is reported (which object, which key, which value)
//! and ignored: the decision falls through to the next level, so a typo never switches a
//! namespace to something nobody asked for. Everything here is a pure function of the
//! objects' metadata; the watcher recomputes it whenever a pod or a namespace changes.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use model::Mode;

/// The label and annotation key that chooses a mode.
pub const MODE_KEY: &str = "palisade.io/mode";

/// The mode of pods for which neither the pod nor its namespace says one (agent config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeDefaults {
    pub mode: Mode,
}

/// Where a pod's mode came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModeSource {
    PodLabel,
    PodAnnotation,
    NamespaceLabel,
    NamespaceAnnotation,
    /// The agent's [`ModeDefaults`].
    Default,
}

impl fmt::Display for ModeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PodLabel => "pod label",
            Self::PodAnnotation => "pod annotation",
            Self::NamespaceLabel => "namespace label",
            Self::NamespaceAnnotation => "namespace annotation",
            Self::Default => "default",
        })
    }
}

/// Which kind of object a mode was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Pod,
    Namespace,
}

/// A `palisade.io/mode` value that is not a mode, and where it was found.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvalidMode {
    /// `Pod namespace/name` or `Namespace name`.
    pub object: String,
    /// Label or annotation, on which kind of object.
    pub source: ModeSource,
    pub value: String,
}

impl fmt::Display for InvalidMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {MODE_KEY}={:?} is not learn, monitor or enforce; ignored",
            self.object, self.source, self.value
        )
    }
}

/// The mode one object declares, if any, and the invalid values found on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    pub mode: Option<(Mode, ModeSource)>,
    pub invalid: Vec<InvalidMode>,
}

/// A pod's mode, where it came from, and the invalid values passed over on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeChoice {
    pub mode: Mode,
    pub source: ModeSource,
    pub invalid: Vec<InvalidMode>,
}

/// `learn`, `monitor` or `enforce`, exactly (the same spelling as the agent's flags).
pub fn parse_mode(value: &str) -> Option<Mode> {
    match value {
        "learn" => Some(Mode::Learn),
        "monitor" => Some(Mode::Monitor),
        "enforce" => Some(Mode::Enforce),
        _ => None,
    }
}

/// What `meta` (a pod's or a namespace's) says about the mode.
pub fn declared(meta: &ObjectMeta, scope: Scope) -> Declared {
    let (label_source, annotation_source, object) = match scope {
        Scope::Pod => (
            ModeSource::PodLabel,
            ModeSource::PodAnnotation,
            format!(
                "Pod {}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            ),
        ),
        Scope::Namespace => (
            ModeSource::NamespaceLabel,
            ModeSource::NamespaceAnnotation,
            format!("Namespace {}", meta.name.as_deref().unwrap_or_default()),
        ),
    };
    let candidates = [
        (meta.labels.as_ref(), label_source),
        (meta.annotations.as_ref(), annotation_source),
    ];
    let mut out = Declared::default();
    for (map, source) in candidates {
        let Some(value) = map.and_then(|m| m.get(MODE_KEY)) else {
            continue;
        };
        match parse_mode(value) {
            Some(mode) => {
                out.mode.get_or_insert((mode, source));
            }
            None => out.invalid.push(InvalidMode {
                object: object.clone(),
                source,
                value: value.clone(),
            }),
        }
    }
    out
}

/// The mode from what the pod and its namespace declare, else the default.
pub fn resolve(pod: &Declared, namespace: &Declared, defaults: &ModeDefaults) -> ModeChoice {
    let (mode, source) = pod
        .mode
        .or(namespace.mode)
        .unwrap_or((defaults.mode, ModeSource::Default));
    ModeChoice {
        mode,
        source,
        invalid: pod
            .invalid
            .iter()
            .chain(&namespace.invalid)
            .cloned()
            .collect(),
    }
}

/// The mode of the pod with metadata `pod`, in the namespace with metadata `namespace`
/// (`None` when the namespace is not known (yet)).
pub fn pod_mode(
    pod: &ObjectMeta,
    namespace: Option<&ObjectMeta>,
    defaults: &ModeDefaults,
) -> ModeChoice {
    let namespace = namespace
        .map(|ns| declared(ns, Scope::Namespace))
        .unwrap_or_default();
    resolve(&declared(pod, Scope::Pod), &namespace, defaults)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |pairs: &[(&str, &str)]| {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        }
    }

    const LEARN: ModeDefaults = ModeDefaults { mode: Mode::Learn };

    #[test]
    fn the_most_specific_level_wins() {
        let ns = meta("shop", &[(MODE_KEY, "monitor")], &[]);
        let pod = meta("api-1", &[(MODE_KEY, "enforce")], &[]);
        let plain = meta("api-2", &[("app", "api")], &[]);

        let choice = pod_mode(&pod, Some(&ns), &LEARN);
        assert_eq!(
            (choice.mode, choice.source),
            (Mode::Enforce, ModeSource::PodLabel)
        );
        let choice = pod_mode(&plain, Some(&ns), &LEARN);
        assert_eq!(
            (choice.mode, choice.source),
            (Mode::Monitor, ModeSource::NamespaceLabel)
        );
        let choice = pod_mode(&plain, Some(&meta("shop", &[], &[])), &LEARN);
        assert_eq!(
            (choice.mode, choice.source),
            (Mode::Learn, ModeSource::Default)
        );
        let choice = pod_mode(
            &plain,
            None,
            &ModeDefaults {
                mode: Mode::Enforce,
            },
        );
        assert_eq!(
            (choice.mode, choice.source),
            (Mode::Enforce, ModeSource::Default)
        );
    }

    #[test]
    fn annotations_count_and_the_label_wins_over_the_annotation() {
        let ns = meta("shop", &[], &[(MODE_KEY, "enforce")]);
        let plain = meta("api-2", &[], &[]);
        let choice = pod_mode(&plain, Some(&ns), &LEARN);
        assert_eq!(
            (choice.mode, choice.source),
            (Mode::Enforce, ModeSource::NamespaceAnnotation)
        );
        let both = meta("api-1", &[(MODE_KEY, "monitor")], &[(MODE_KEY, "learn")]);
        let choice = pod_mode(&both, Some(&ns), &LEARN);
        assert_eq!(
            (choice.mode, choice.source),
            (Mode::Monitor, ModeSource::PodLabel)
        );
        assert!(choice.invalid.is_empty());
    }

    #[test]
    fn an_invalid_value_is_reported_and_falls_through() {
        let ns = meta("shop", &[(MODE_KEY, "Enforce")], &[]);
        let pod = meta("api-1", &[(MODE_KEY, "strict")], &[]);
        let choice = pod_mode(
            &pod,
            Some(&ns),
            &ModeDefaults {
                mode: Mode::Monitor,
            },
        );
        assert_eq!(
            (choice.mode, choice.source),
            (Mode::Monitor, ModeSource::Default)
        );
        assert_eq!(
            choice.invalid,
            vec![
                InvalidMode {
                    object: "Pod shop/api-1".into(),
                    source: ModeSource::PodLabel,
                    value: "strict".into(),
                },
                InvalidMode {
                    object: "Namespace shop".into(),
                    source: ModeSource::NamespaceLabel,
                    value: "Enforce".into(),
                },
            ]
        );
        assert_eq!(
            choice.invalid[0].to_string(),
            "Pod shop/api-1: pod label palisade.io/mode=\"strict\" is not learn, monitor or \
             enforce; ignored"
        );

        // An invalid label falls through to a valid annotation on the same object.
        let pod = meta("api-1", &[(MODE_KEY, "off")], &[(MODE_KEY, "enforce")]);
        let choice = pod_mode(&pod, None, &LEARN);
        assert_eq!(
            (choice.mode, choice.source),
            (Mode::Enforce, ModeSource::PodAnnotation)
        );
        assert_eq!(choice.invalid.len(), 1);
    }

    #[test]
    fn only_the_exact_spellings_parse() {
        assert_eq!(parse_mode("learn"), Some(Mode::Learn));
        assert_eq!(parse_mode("monitor"), Some(Mode::Monitor));
        assert_eq!(parse_mode("enforce"), Some(Mode::Enforce));
        for bad in ["", "Learn", " enforce", "deny", "enforced"] {
            assert_eq!(parse_mode(bad), None, "{bad:?}");
        }
    }
}
