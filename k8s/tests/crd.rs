//! The CRDs committed in the Helm chart (`deploy/palisade/crds/`) are the ones the Rust types
//! generate: a golden test (`PALISADE_BLESS=1` rewrites the files), and the files checked
//! against Kubernetes' own schemas by `kubernetes-validate --strict` (PyPI, installed by
//! scripts/setup.sh; the check is skipped, saying so, when it is missing).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use k8s::crd::{self, WorkloadBaseline};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, Resource};

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/palisade/crds")
}

#[test]
fn committed_crds_are_the_generated_ones() {
    let bless = std::env::var_os("PALISADE_BLESS").is_some_and(|v| v == "1");
    let dir = crds_dir();
    let mut mismatches = Vec::new();
    for definition in crd::crds() {
        let path = dir.join(crd::crd_file_name(&definition));
        let yaml = crd::crd_yaml(&definition);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &yaml).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == yaml => {}
            Ok(_) => mismatches.push(format!(
                "{} differs from the generated CRD (PALISADE_BLESS=1 rewrites it); generated:\n{yaml}",
                path.display()
            )),
            Err(e) => mismatches.push(format!(
                "{}: {e} (PALISADE_BLESS=1 writes it)",
                path.display()
            )),
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_manifests_hold_every_crd_and_parse_back() {
    let text = crd::crd_manifests();
    let parsed: Vec<CustomResourceDefinition> = text
        .split("---\n")
        .map(|doc| serde_yaml::from_str(doc).expect("a CRD document parses"))
        .collect();
    assert_eq!(parsed, crd::crds());
    let baseline = &parsed[0];
    assert_eq!(
        baseline.metadata.name.as_deref(),
        Some("workloadbaselines.palisade.io")
    );
    assert_eq!(
        crd::crd_file_name(baseline),
        "workloadbaselines.palisade.io.yaml"
    );
    assert_eq!(baseline.spec.scope, "Namespaced");
    assert_eq!(
        baseline.spec.names.short_names.as_deref(),
        Some(&["wlb".to_owned()][..])
    );
    let version = &baseline.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Kind", "Workload", "Rules", "Confidence", "Stable", "Age"]
    );
    // Every printer column and selectable field points at a field the schema has (a typo
    // shows an empty column, or selects nothing).
    let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
    let columns = version.additional_printer_columns.iter().flatten();
    let selectable = version.selectable_fields.iter().flatten();
    let paths: Vec<&str> = columns
        .map(|c| c.json_path.as_str())
        .chain(selectable.map(|s| s.json_path.as_str()))
        .filter(|p| !p.starts_with(".metadata."))
        .collect();
    assert_eq!(paths.len(), 8, "{paths:?}");
    for path in paths {
        let mut at = &schema["openAPIV3Schema"];
        for part in path
            .strip_prefix('.')
            .expect("paths start with a dot")
            .split('.')
        {
            at = &at["properties"][part];
        }
        assert!(at.is_object(), "{path} is not in the schema");
    }
    assert_eq!(WorkloadBaseline::api_version(&()), "palisade.io/v1alpha1");
    assert_eq!(
        WorkloadBaseline::crd_name(),
        "workloadbaselines.palisade.io"
    );
}

#[test]
fn kubernetes_validate_accepts_the_committed_crds() {
    let installed = Command::new("kubernetes-validate")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!(
            "skipped: kubernetes-validate is not installed (scripts/setup.sh installs it from PyPI)"
        );
        return;
    }
    for definition in crd::crds() {
        let path = crds_dir().join(crd::crd_file_name(&definition));
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.33.0"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate --strict {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
