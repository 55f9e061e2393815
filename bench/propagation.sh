#!/usr/bin/env bash
# Benchmark 3 of issue 3: how long one rule change takes from the policy file the agent
# watches (`palisade agent --policy`) to enforcement in the kernel, whether a probe ever
# sees a half-applied policy, and how long a bulk load of 10,000 rules takes. Results go to
# BENCH_OUT.
set -euo pipefail

BENCH_NAME=propagation
usage() {
    cat <<EOF
usage: sudo bench/propagation.sh [-h]

On a lab with two pods (bench/client, bench/server) and the agent in enforce mode,
started with \`--policy FILE\` (it applies the file at start and every change to it):

1. Single rule change, with BENCH_RULES rules on the server and with 10: two policy files
   differ in one rule (it allows TCP port A in one, port B in the other); the change is
   made BENCH_CHANGES times, alternating, by renaming a complete copy over FILE. From the client's namespace, a prober starts
   a connect to A and one to B every millisecond (SYNs sent by one thread on one CPU, so
   judged in order); an attempt is allowed if it connects within 300 ms, refused if not
   (enforce mode drops the SYN). Reported: from the rename to the first connect to the
   newly allowed port (p50/p99/max), to the first refused attempt on the other port, and
   the agent's own time per change (load, resolve, write; from its log).
   Never half-applied: within a change, once any attempt has seen the new policy, no later
   attempt may see the old one (counted as mixed-state observations; expected 0). As a
   control, BENCH_CONTROL extra changes are made in two steps on purpose (a file allowing
   neither port, then the target): the prober must flag those.
2. Bulk load: BENCH_BULK times, from an endpoint with no rules, the agent's time to apply
   a file with BENCH_RULES rules, and with BENCH_RULES rules plus BENCH_RULES more IPCACHE
   entries (from its log: load, resolve and write, both generations).

Environment (defaults in brackets): BENCH_CHANGES [50] BENCH_CONTROL [5] BENCH_BULK [10]
BENCH_RULES [10000] BENCH_LAB [plpr] BENCH_OUT [target/bench/propagation-<time>]
PALISADE [target/release/palisade, built] BENCH_NO_BUILD=1 to skip cargo.
Takes 2-3 minutes. Everything (lab, processes) is removed on exit.
EOF
}
[[ "${1:-}" == -h || "${1:-}" == --help ]] && { usage; exit 0; }
(($# == 0)) || { usage >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHANGES=${BENCH_CHANGES:-50}
CONTROL=${BENCH_CONTROL:-5}
BULK=${BENCH_BULK:-10}
RULES=${BENCH_RULES:-10000}
LAB=${BENCH_LAB:-plpr}
OUT=${BENCH_OUT:-$ROOT/target/bench/propagation-$(date +%Y%m%d-%H%M%S)}
PORT_A=9201 PORT_B=9202
CPU=$(($(nproc) - 1))

policy_bench_up

# The agent, started here (the lab's own agent does not watch a policy file), then the
# two pods attached with their addresses.
WATCHED="$OUT/watched.json"
start_policy_agent $((CHANGES * 40 + BULK * 40 + 1200)) --policy "$WATCHED"
# set_policy FILE: rename a copy over the watched file; wait until the agent applied it;
# print the agent's milliseconds.
set_policy() {
    local before
    before=$(applied)
    cp "$1" "$WATCHED.staged" && mv "$WATCHED.staged" "$WATCHED"
    wait_applied "$before"
    agent_ms "$(applied)" 1
}

BOUND=$((CHANGES * 20 + BULK * 20 + 600))
start_in "$SERVER_NS" "$BOUND" "$OUT/accept-server.log" \
    "$PYTHON" "$NETBENCH" accept-server --host "$SERVER_IP" --ports $PORT_A $PORT_B --seconds "$BOUND"
sleep 1

gen() { # OUT FILLER [--allow ...] [--extra-ipcache N]
    local out=$1 filler=$2
    shift 2
    "$PYTHON" "$NETBENCH" policy --filler "$filler" "$@" --client-if "$CLIENT_IF" \
        --server-if "$SERVER_IF" --client-ip "$CLIENT_IP" --server-ip "$SERVER_IP" \
        --client-ip6 "$CLIENT_IP6" --server-ip6 "$SERVER_IP6" --out "$out"
}

# --- 1. single rule changes --------------------------------------------------------------
change_run() { # LABEL FILLER
    local label=$1 filler=$2
    gen "$OUT/$label-a.json" "$filler" --allow tcp:$PORT_A
    gen "$OUT/$label-b.json" "$filler" --allow tcp:$PORT_B
    gen "$OUT/$label-none.json" "$filler"
    say "$label: $CHANGES single-rule changes (+ $CONTROL two-step controls), $((filler + 1)) rules"
    set_policy "$OUT/$label-a.json" >/dev/null
    local first
    first=$(($(applied) + 1))
    # nsenter, not `ip netns exec`: the prober runs `palisade policy`, which needs the
    # real /sys (bpffs) that `ip netns exec` would remount.
    timeout $((CHANGES * 20 + 120)) nsenter --net="/run/netns/$CLIENT_NS" \
        "$PYTHON" "$NETBENCH" propagation --palisade "$PALISADE" --netns "$NODE_NS" \
        --bpffs-root "$BPFFS" --watched "$WATCHED" --host "$SERVER_IP" --port-a $PORT_A --port-b $PORT_B \
        --file-a "$OUT/$label-a.json" --file-b "$OUT/$label-b.json" \
        --file-none "$OUT/$label-none.json" --changes "$CHANGES" --two-step "$CONTROL" \
        --cpu "$CPU" >"$OUT/$label.json" 2>"$OUT/$label.log" \
        || die "prober failed: see $OUT/$label.log"
    sleep 0.5
    # The agent's time for each change (the prober's first file is already in place).
    agent_ms "$first" "$CHANGES" >"$OUT/$label-agent-ms.txt"
}
change_run "rules$((RULES))" $((RULES - 1))
change_run rules10 9

# --- 2. bulk loads -----------------------------------------------------------------------
gen "$OUT/empty.json" 0
gen "$OUT/bulk.json" "$RULES"
gen "$OUT/bulk-ipcache.json" "$RULES" --extra-ipcache "$RULES"
bulk() { # FILE -> the agent's ms to apply FILE over an endpoint with no rules
    set_policy "$OUT/empty.json" >/dev/null
    set_policy "$1"
}
: >"$OUT/bulk.txt"
for ((i = 1; i <= BULK; i++)); do
    a=$(bulk "$OUT/bulk.json")
    b=$(bulk "$OUT/bulk-ipcache.json")
    echo "$a $b" >>"$OUT/bulk.txt"
    say "bulk $i: $RULES rules ${a} ms; + $RULES IPCACHE entries ${b} ms"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

{
    "$PYTHON" "$NETBENCH" summarize-propagation --files "$OUT/rules$RULES.json" \
        "$OUT/rules10.json" --labels "$RULES rules" "10 rules"
    echo
    "$PYTHON" - "$OUT/rules$RULES-agent-ms.txt" "$OUT/rules10-agent-ms.txt" <<'EOF'
import sys
print("| policy | agent's time per change: p50 / p99 / max (ms) |")
print("|---|---|")
for path, label in zip(sys.argv[1:], ["large", "10 rules"]):
    xs = sorted(float(l) for l in open(path) if l.strip())
    if not xs:
        continue
    p = lambda q: xs[min(len(xs) - 1, max(0, -(-len(xs) * q // 100) - 1))]
    print(f"| {label} ({len(xs)} changes) | {p(50):.1f} / {p(99):.1f} / {xs[-1]:.1f} |")
EOF
    echo
    "$PYTHON" - "$OUT/bulk.txt" "$RULES" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
n = sys.argv[2]
print("| bulk load over an endpoint with no rules (agent's time) | runs | median (ms) | max (ms) |")
print("|---|---|---|---|")
ids = (int(n) + 3) // 4
for i, label in enumerate([f"{n} rules, IPCACHE {ids + 4} entries (the rules' {ids} identities, the pods)",
                           f"{n} rules, IPCACHE {ids + 4 + int(n)} entries ({n} more)"]):
    xs = [r[i] for r in rows]
    print(f"| {label} | {len(xs)} | {statistics.median(xs):.1f} | {max(xs):.1f} |")
EOF
} >"$OUT/summary.md"
cat "$OUT/machine.txt"
echo
cat "$OUT/summary.md"
