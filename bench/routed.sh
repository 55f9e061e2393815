#!/usr/bin/env bash
# Benchmark 2 of issue 3: the lab's routed path (client pod -> node namespace -> server
# pod), Palisade next to iptables and nftables, each paired with a no-filter run in the
# same round. Results go to BENCH_OUT (JSON lines, logs, a markdown summary).
set -euo pipefail

BENCH_NAME=routed
usage() {
    cat <<EOF
usage: sudo bench/routed.sh [-h]

On a lab with two pods (bench/client, bench/server) and the agent, for BENCH_ROUNDS rounds,
each configuration in BENCH_CONFIGS is measured next to a no-filter run in the same round,
per metric, in alternating order (ABBA), and the median ratio to no filter is reported:

  palisade   Palisade in enforce mode on both pod veths; the server's ingress has
             BENCH_RULES non-matching rules (identities x ports) plus the rules that
             allow the benchmark traffic (by the client's identity and port)
  iptables   BENCH_RULES non-matching rules in FORWARD of the node namespace, then the
             allow rules, then an accept (every packet walks the list)
  nftables   one set of BENCH_RULES (+ allow) elements (saddr . proto . dport), one lookup
             per forwarded packet
  iptables-ct  (not in the default list) as iptables, behind a conntrack ESTABLISHED,RELATED
             accept: only a connection's first packet walks the list

Metrics: tcp1 / tcp4 (iperf3, 1 and 4 streams), rr (sockperf TCP ping-pong of 64 bytes,
or a Python client when sockperf is not installable: transactions/s, RTT p50 and p99),
udp64 (iperf3 UDP 64-byte datagrams delivered/s), cps (Python connect/close loop).

Environment (defaults in brackets):
  BENCH_ROUNDS [5]   BENCH_DURATION [3] seconds per run
  BENCH_CONFIGS ["palisade iptables nftables"]   BENCH_METRICS ["tcp1 tcp4 rr udp64 cps"]
  BENCH_RULES [10000]   BENCH_LAB [plrt] (1-6 lowercase letters/digits)
  BENCH_OUT [target/bench/routed-<time>]   PALISADE [target/release/palisade, built]
  BENCH_NO_BUILD=1 to skip cargo   BENCH_PAUSE [0.3] seconds between runs
  BENCH_CPU [the last CPU]: every client and server of the benchmark is pinned to this one
  CPU, so a packet's whole path (sender, veths, node, filter, receiver) runs there; unpinned,
  where the scheduler puts client and server (same CPU or not, and a VM's idle wake-ups)
  moves results by 2-5x between runs, far more than any filter costs

Traffic stays inside the lab's namespaces; filter rules go only into the lab's node
namespace; everything (lab, processes) is removed on exit. The default run takes about
10 minutes on 2 cores.
EOF
}
[[ "${1:-}" == -h || "${1:-}" == --help ]] && { usage; exit 0; }
(($# == 0)) || { usage >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-3}
CONFIGS=(${BENCH_CONFIGS:-palisade iptables nftables})
METRICS=(${BENCH_METRICS:-tcp1 tcp4 rr udp64 cps})
RULES=${BENCH_RULES:-10000}
LAB=${BENCH_LAB:-plrt}
PAUSE=${BENCH_PAUSE:-0.3}
CPU=${BENCH_CPU:-$(($(nproc) - 1))}
OUT=${BENCH_OUT:-$ROOT/target/bench/routed-$(date +%Y%m%d-%H%M%S)}
[[ "$DURATION" =~ ^[0-9]+$ ]] || die "BENCH_DURATION is whole seconds"

IPERF_PORT=5201 RR_PORT=11111 CPS_PORT=9100 PROBE_PORT=9101

require_root
install_packages iproute2 iperf3 iptables nftables python3 util-linux procps coreutils -- sockperf
SOCKPERF=0
command -v sockperf >/dev/null && SOCKPERF=1
find_palisade
mkdir -p "$OUT"
use_private_palisade "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
machine_description "$OUT/machine.txt"
lab_up "$OUT"
say "results in $OUT"

# --- servers in the server pod (bounded by the longest run this could take) -----------
BOUND=$((ROUNDS * ${#CONFIGS[@]} * ${#METRICS[@]} * 2 * (DURATION + 30) + 600))
PIN=(taskset -c "$CPU")
start_in "$SERVER_NS" "$BOUND" "$OUT/iperf3-server.log" "${PIN[@]}" iperf3 -s -B "$SERVER_IP" -p $IPERF_PORT
start_in "$SERVER_NS" "$BOUND" "$OUT/accept-server.log" "${PIN[@]}" \
    "$PYTHON" "$NETBENCH" accept-server --host "$SERVER_IP" --ports $CPS_PORT $PROBE_PORT --seconds "$BOUND"
if ((SOCKPERF)); then
    start_in "$SERVER_NS" "$BOUND" "$OUT/sockperf-server.log" "${PIN[@]}" sockperf server --tcp -i "$SERVER_IP" -p $RR_PORT
else
    start_in "$SERVER_NS" "$BOUND" "$OUT/rr-server.log" "${PIN[@]}" \
        "$PYTHON" "$NETBENCH" rr-server --host "$SERVER_IP" --port $RR_PORT --seconds "$BOUND"
fi
sleep 1

# --- the filters ------------------------------------------------------------------------
ALLOW=(--allow tcp:$IPERF_PORT --allow udp:$IPERF_PORT --allow tcp:$RR_PORT --allow tcp:$CPS_PORT)
"$PYTHON" "$NETBENCH" policy --filler "$RULES" "${ALLOW[@]}" --client-if "$CLIENT_IF" \
    --server-if "$SERVER_IF" --client-ip "$CLIENT_IP" --server-ip "$SERVER_IP" \
    --client-ip6 "$CLIENT_IP6" --server-ip6 "$SERVER_IP6" --out "$OUT/palisade-policy.json"
"$PYTHON" "$NETBENCH" iptables --filler "$RULES" "${ALLOW[@]}" --client-ip "$CLIENT_IP" \
    --server-ip "$SERVER_IP" --out "$OUT/iptables.rules"
"$PYTHON" "$NETBENCH" nft --filler "$RULES" "${ALLOW[@]}" --client-ip "$CLIENT_IP" \
    --server-ip "$SERVER_IP" --out "$OUT/nftables.nft"
sed 's/^:OUTPUT ACCEPT \[0:0\]$/&\n-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT/' \
    "$OUT/iptables.rules" >"$OUT/iptables-ct.rules"
IPTABLES_NFT=0
iptables -V 2>/dev/null | grep -q nf_tables && IPTABLES_NFT=1

node() { ip netns exec "$NODE_NS" "$@"; }

# No filter: no program on the pod veths, no table of ours in the node.
palisade_off() {
    "$PALISADE" detach "${NODE[@]}" --iface "$CLIENT_IF" 2>>"$OUT/palisade.log"
    "$PALISADE" detach "${NODE[@]}" --iface "$SERVER_IF" 2>>"$OUT/palisade.log"
}
palisade_on() {
    "$PALISADE" attach "${NODE[@]}" --iface "$CLIENT_IF" --ipv4 "$CLIENT_IP" --ipv6 "$CLIENT_IP6" \
        --mode enforce 2>>"$OUT/palisade.log"
    "$PALISADE" attach "${NODE[@]}" --iface "$SERVER_IF" --ipv4 "$SERVER_IP" --ipv6 "$SERVER_IP6" \
        --mode enforce 2>>"$OUT/palisade.log"
    "$PALISADE" policy "${NODE[@]}" -f "$OUT/palisade-policy.json" 2>>"$OUT/palisade.log"
}
iptables_on() { node iptables-restore <"$OUT/iptables.rules"; }
# Optional: the stateful way to write it (established traffic accepted before the list).
iptables-ct_on() { node iptables-restore <"$OUT/iptables-ct.rules"; }
iptables-ct_off() { iptables_off; }
iptables_off() {
    node iptables-restore <<<$'*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT'
    # The nf_tables backend leaves empty base chains hooked: remove its table.
    if ((IPTABLES_NFT)); then node nft delete table ip filter 2>/dev/null || true; fi
}
nftables_on() { node nft -f "$OUT/nftables.nft"; }
nftables_off() { node nft delete table inet palisade-bench; }

CURRENT=none
set_filter() {
    local want=$1
    [[ $want == "$CURRENT" ]] && return
    [[ $CURRENT == none ]] || "${CURRENT}_off"
    [[ $want == none ]] || "${want}_on"
    CURRENT=$want
}

# Start from no filter (the agent attached both veths at lab up).
palisade_off

# connects PORT: 1 if a TCP connect from the client to the server's PORT succeeds in 1 s.
connects() {
    ip netns exec "$CLIENT_NS" "$PYTHON" -c '
import socket, sys
s = socket.socket(); s.settimeout(1.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(1)
except OSError:
    print(0)' "$SERVER_IP" "$1"
}

# Each configuration does what it claims before anything is timed.
for config in "${CONFIGS[@]}"; do
    set_filter "$config"
    case $config in
        palisade)
            [[ $(connects $CPS_PORT) == 1 && $(connects $PROBE_PORT) == 0 ]] \
                || die "palisade: expected port $CPS_PORT allowed and $PROBE_PORT dropped"
            say "palisade: enforcing ($(ls "$BPFFS"/v1/links | wc -l) links pinned, port $PROBE_PORT dropped, $CPS_PORT allowed)"
            ;;
        iptables | iptables-ct)
            say "$config: $(node iptables -S FORWARD | grep -c -- '-A FORWARD') rules in FORWARD ($(iptables -V))" ;;
        nftables)
            say "nftables: $(node nft list set inet palisade-bench pl_allow | grep -o ' \. ' | wc -l | awk '{print $1/2}') set elements" ;;
        *) die "unknown configuration $config (palisade, iptables, nftables, iptables-ct)" ;;
    esac
    set_filter none
done
[[ $(connects $PROBE_PORT) == 1 ]] || die "no filter: port $PROBE_PORT should connect"

measure() { # ROUND CONFIG FILTER(0|1) METRIC
    local line
    line=$("$PYTHON" "$NETBENCH" measure "$4" --netns "$CLIENT_NS" --server "$SERVER_IP" \
        --seconds "$DURATION" --iperf-port $IPERF_PORT --rr-port $RR_PORT --cps-port $CPS_PORT \
        --sockperf $SOCKPERF --cpu "$CPU" --round "$1" --config "$2" --filter "$3" --out "$RESULTS" \
        2>>"$OUT/measure.log") || die "measuring $4 ($2, filter=$3) failed: see $OUT/measure.log"
    say "round $1 $2 $([[ $3 == 1 ]] && echo "$2" || echo 'no filter'): $line"
    sleep "$PAUSE"
}

started=$(date +%s)
for ((round = 1; round <= ROUNDS; round++)); do
    for ci in "${!CONFIGS[@]}"; do
        config=${CONFIGS[$ci]}
        for mi in "${!METRICS[@]}"; do
            metric=${METRICS[$mi]}
            # ABBA: the order alternates by metric, config and round, so drift and warm-up
            # do not favour one side; the filter switches about once per metric.
            if (((round + ci + mi) % 2 == 0)); then order=(0 1); else order=(1 0); fi
            for f in "${order[@]}"; do
                if ((f)); then set_filter "$config"; else set_filter none; fi
                measure "$round" "$config" "$f" "$metric"
            done
        done
    done
done
set_filter none
elapsed=$(($(date +%s) - started))

if [[ " ${CONFIGS[*]} " == *" palisade "* ]]; then
    "$PALISADE" counters "${NODE[@]}" >"$OUT/palisade-counters.txt" 2>/dev/null || true
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
echo "measuring took: ${elapsed}s (sockperf: $SOCKPERF, pinned to CPU $CPU)" >>"$OUT/machine.txt"
"$PYTHON" "$NETBENCH" summarize "$RESULTS" \
    --label palisade "Palisade enforce, $RULES rules" \
    --label iptables "iptables, $RULES rules" \
    --label nftables "nftables set, $RULES elements" \
    --label iptables-ct "iptables, ESTABLISHED first, then $RULES rules" >"$OUT/summary.md"
cat "$OUT/machine.txt"
echo
cat "$OUT/summary.md"
