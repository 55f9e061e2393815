#!/usr/bin/env python3
"""Security policy of Palisade's rendered manifests, checked object by object.

Run by scripts/check-deploy.sh on every rendered variation of the chart. The schema check
(kubernetes-validate) says the objects are well formed; this says they are as narrow as the
design promises, so that a later edit cannot widen them silently:

- the agent DaemonSet's container drops ALL capabilities and adds exactly BPF, NET_ADMIN and
  PERFMON; no container anywhere is privileged, may escalate privileges, adds SYS_ADMIN, or
  keeps any capability it did not list;
- every container has a read-only root filesystem; only the agent runs as root;
- host paths are only mounted by the agent, only the ones it needs, and never with
  Bidirectional propagation (which needs a privileged container anyway);
- RBAC has no wildcard (verbs, resources, API groups), never touches secrets, and only
  Events and WorkloadBaselines are ever written.

Usage: check-policy.py RENDERED.yaml...   (exit 1 and one line per violation on failure)
"""

import os
import sys

import yaml

AGENT_CAPS = {"BPF", "NET_ADMIN", "PERFMON"}
# Host paths the agent needs (bpffs pins, cgroup v2, CNI socket) and the CNI folders its init
# container installs into; check-deploy.sh renders the chart with the default CNI folders.
AGENT_HOST_PATHS = {"/sys/fs/bpf", "/sys/fs/cgroup", "/run/palisade", "/opt/cni/bin", "/etc/cni/net.d"}
READ_VERBS = {"get", "list", "watch"}
# (apiGroup, resource) -> verbs beyond reading that some component may use.
WRITABLE = {
    ("events.k8s.io", "events"): {"create", "patch"},
    ("palisade.io", "workloadbaselines"): {"create", "patch", "delete"},
}
WORKLOAD_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "Job", "CronJob", "Pod"}


def pod_spec(obj):
    """The pod spec inside a workload object (None for other kinds)."""
    kind = obj.get("kind")
    if kind not in WORKLOAD_KINDS:
        return None
    spec = obj.get("spec", {})
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


def check_container(where, container, pod_security, is_agent_main, errors):
    sc = container.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    added = set(caps.get("add") or [])
    if sc.get("privileged"):
        errors.append(f"{where}: privileged: true")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{where}: allowPrivilegeEscalation must be false")
    if caps.get("drop") != ["ALL"]:
        errors.append(f"{where}: capabilities.drop must be exactly [ALL], got {caps.get('drop')}")
    if "SYS_ADMIN" in added or "CAP_SYS_ADMIN" in added:
        errors.append(f"{where}: adds SYS_ADMIN")
    expected = AGENT_CAPS if is_agent_main else set()
    if added != expected:
        errors.append(f"{where}: capabilities.add must be {sorted(expected)}, got {sorted(added)}")
    if sc.get("readOnlyRootFilesystem") is not True:
        errors.append(f"{where}: readOnlyRootFilesystem must be true")
    seccomp = sc.get("seccompProfile") or pod_security.get("seccompProfile") or {}
    if seccomp.get("type") != "RuntimeDefault":
        errors.append(f"{where}: seccompProfile must be RuntimeDefault, got {seccomp.get('type')}")
    for mount in container.get("volumeMounts") or []:
        if mount.get("mountPropagation") == "Bidirectional":
            errors.append(f"{where}: volume {mount.get('name')} uses Bidirectional propagation")


def check_workload(obj, errors):
    spec = pod_spec(obj)
    if spec is None:
        return
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    is_agent = obj["kind"] == "DaemonSet" and name.endswith("-agent")
    pod_security = spec.get("securityContext") or {}
    host_paths = {v["hostPath"]["path"] for v in spec.get("volumes") or [] if "hostPath" in v}
    if host_paths and not is_agent:
        errors.append(f"{name}: only the agent may mount host paths, found {sorted(host_paths)}")
    if not host_paths <= AGENT_HOST_PATHS:
        errors.append(f"{name}: unexpected host paths {sorted(host_paths - AGENT_HOST_PATHS)}")
    if spec.get("hostPID") or spec.get("hostIPC"):
        errors.append(f"{name}: hostPID/hostIPC")
    if spec.get("hostNetwork") and not is_agent:
        errors.append(f"{name}: only the agent uses the host network")
    if is_agent and not any(c["name"] == "agent" for c in spec.get("containers", [])):
        errors.append(f"{name}: no container named agent")
    if not is_agent and pod_security.get("runAsNonRoot") is not True:
        errors.append(f"{name}: must run as non-root")
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            where = f"{name} {group[:-1]} {container['name']}"
            main = is_agent and group == "containers" and container["name"] == "agent"
            check_container(where, container, pod_security, main, errors)


def check_rbac(obj, errors):
    if obj.get("kind") not in {"ClusterRole", "Role"}:
        return
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj.get("aggregationRule"):
        errors.append(f"{name}: aggregationRule grants whatever other roles grant")
    for i, rule in enumerate(obj.get("rules") or []):
        where = f"{name} rule {i}"
        groups = rule.get("apiGroups") or []
        resources = rule.get("resources") or []
        verbs = set(rule.get("verbs") or [])
        if "nonResourceURLs" in rule:
            errors.append(f"{where}: nonResourceURLs")
        for field, values in (("apiGroups", groups), ("resources", resources), ("verbs", verbs)):
            if any("*" in v for v in values):
                errors.append(f"{where}: wildcard in {field}")
        if "secrets" in resources:
            errors.append(f"{where}: secrets")
        for group in groups:
            for resource in resources:
                allowed = READ_VERBS | WRITABLE.get((group, resource), set())
                if not verbs <= allowed:
                    errors.append(f"{where}: {sorted(verbs - allowed)} on {group or 'core'}/{resource}")


def main(paths):
    errors = []
    for path in paths:
        with open(path) as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        file_errors = []
        for obj in objects:
            check_workload(obj, file_errors)
            check_rbac(obj, file_errors)
        if not any(o.get("kind") == "DaemonSet" for o in objects):
            file_errors.append("no agent DaemonSet rendered")
        # Renderings are named after their variation (defaults.yaml, no-learner.yaml, ...).
        variation = os.path.splitext(os.path.basename(path))[0]
        errors += [f"{variation}: {e}" for e in file_errors]
    for error in errors:
        print(f"policy violation: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
