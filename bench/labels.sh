#!/usr/bin/env bash
# Issue 4's propagation benchmark: how long one pod label change takes to reach the kernel
# when the agent enforces Kubernetes NetworkPolicies (`palisade agent --policy-dir`), with
# 1,000 and 10,000 pods in the cluster. Results go to BENCH_OUT.
set -euo pipefail

BENCH_NAME=labels
usage() {
    cat <<EOF
usage: sudo bench/labels.sh [-h]

On a lab with two pods (bench/client, bench/server), the agent in enforce mode enforces
one NetworkPolicy: the server's ingress allows pods labelled role=a on TCP port A and
role=b on port B (named ports). The cluster file (\`palisade agent --cluster\`) lists the
two pods and BENCH_PODS - 2 filler pods on another node (100 namespaces, 50 app labels,
one address each; they all get identities and IPCACHE entries). A change is the client's
role label flipping between a and b: a complete cluster file renamed over the watched one.
The prober (bench/netbench.py propagation) connects to A and B every millisecond from the
client and reports, per change, the time from the rename to the first connection the new
label allows and to the first one it refuses, and checks that no attempt sees a mixed
state. The agent's own time per change (read the cluster file, compile, write the
difference) comes from its log.

Environment (defaults in brackets): BENCH_PODS ["1000 10000"] BENCH_CHANGES [30]
BENCH_CONTROL [3] BENCH_LAB [pllb] BENCH_OUT [target/bench/labels-<time>]
PALISADE [target/release/palisade, built] BENCH_NO_BUILD=1 to skip cargo.
Takes 1-2 minutes. Everything (lab, processes) is removed on exit.
EOF
}
[[ "${1:-}" == -h || "${1:-}" == --help ]] && { usage; exit 0; }
(($# == 0)) || { usage >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES=${BENCH_PODS:-"1000 10000"}
CHANGES=${BENCH_CHANGES:-30}
CONTROL=${BENCH_CONTROL:-3}
LAB=${BENCH_LAB:-pllb}
OUT=${BENCH_OUT:-$ROOT/target/bench/labels-$(date +%Y%m%d-%H%M%S)}
PORT_A=9201 PORT_B=9202
CPU=$(($(nproc) - 1))

policy_bench_up

mkdir -p "$OUT/policies"
cat >"$OUT/policies/server.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: a}}}]
    ports: [{port: svc-a}]
  - from: [{podSelector: {matchLabels: {role: b}}}]
    ports: [{port: svc-b}]
  - from: [{namespaceSelector: {matchLabels: {team: t3}}, podSelector: {matchExpressions: [{key: app, operator: In, values: [app-3, app-13]}]}}]
    ports: [{port: 8080}]
EOF
cat >"$OUT/names.json" <<EOF
{"interfaces": {"$CLIENT_IF": "bench/client", "$SERVER_IF": "bench/server"}}
EOF
WATCHED="$OUT/cluster.json"
cluster() { # OUT PODS ROLE
    "$PYTHON" "$NETBENCH" cluster --out "$1" --pods "$2" --client-role "$3" \
        --client-ip "$CLIENT_IP" --server-ip "$SERVER_IP" --client-ip6 "$CLIENT_IP6" \
        --server-ip6 "$SERVER_IP6" --port-a $PORT_A --port-b $PORT_B
}
first_size=${SIZES%% *}
cluster "$WATCHED" "$first_size" a
start_policy_agent $(((CHANGES + CONTROL) * 40 + 900)) --policy-dir "$OUT/policies" \
    --cluster "$WATCHED" --names "$OUT/names.json" --node-name bench-node

BOUND=$(((CHANGES + CONTROL) * 20 * 2 + 600))
start_in "$SERVER_NS" "$BOUND" "$OUT/accept-server.log" \
    "$PYTHON" "$NETBENCH" accept-server --host "$SERVER_IP" --ports $PORT_A $PORT_B --seconds "$BOUND"
sleep 1

for pods in $SIZES; do
    label="pods$pods"
    cluster "$OUT/$label-a.json" "$pods" a
    cluster "$OUT/$label-b.json" "$pods" b
    cluster "$OUT/$label-none.json" "$pods" ""
    before=$(applied)
    cp "$OUT/$label-a.json" "$WATCHED.staged" && mv "$WATCHED.staged" "$WATCHED"
    wait_applied "$before"
    first=$(($(applied) + 1))
    say "$label: $CHANGES label changes (+ $CONTROL two-step controls), $pods pods"
    timeout $(((CHANGES + CONTROL) * 20 + 120)) nsenter --net="/run/netns/$CLIENT_NS" \
        "$PYTHON" "$NETBENCH" propagation --palisade "$PALISADE" --netns "$NODE_NS" \
        --bpffs-root "$BPFFS" --watched "$WATCHED" --host "$SERVER_IP" \
        --port-a $PORT_A --port-b $PORT_B --file-a "$OUT/$label-a.json" \
        --file-b "$OUT/$label-b.json" --file-none "$OUT/$label-none.json" \
        --changes "$CHANGES" --two-step "$CONTROL" --cpu "$CPU" --settle 0.5 \
        >"$OUT/$label.json" 2>"$OUT/$label.log" || die "prober failed: see $OUT/$label.log"
    sleep 0.5
    agent_ms "$first" "$CHANGES" >"$OUT/$label-agent-ms.txt"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

files=() labels=()
for pods in $SIZES; do files+=("$OUT/pods$pods.json"); labels+=("$pods pods"); done
{
    "$PYTHON" "$NETBENCH" summarize-propagation --files "${files[@]}" --labels "${labels[@]}"
    echo
    echo "| cluster | agent's time per change: p50 / p99 / max (ms) |"
    echo "|---|---|"
    for pods in $SIZES; do
        sort -n "$OUT/pods$pods-agent-ms.txt" | "$PYTHON" -c '
import sys
xs = [float(l) for l in sys.stdin if l.strip()]
p = lambda q: xs[min(len(xs) - 1, max(0, -(-len(xs) * q // 100) - 1))]
print(f"| {sys.argv[1]} pods ({len(xs)} changes) | {p(50):.1f} / {p(99):.1f} / {xs[-1]:.1f} |")
' "$pods"
    done
} >"$OUT/summary.md"
cat "$OUT/machine.txt"
echo
cat "$OUT/summary.md"
