# Shared by bench/routed.sh and bench/propagation.sh (sourced, not run).
#
# Gives: say/die, root and package checks, the palisade binary, a lab with two pods
# (bench/client, bench/server) brought up with the agent, background processes started in
# the lab's namespaces and stopped by PID, and one cleanup on EXIT.
#
# Touches only what it creates: the lab named $LAB (namespaces palisade-$LAB-*, interfaces
# pl-$LAB-*, pins /sys/fs/bpf/palisade-$LAB), rules inside the lab's node namespace, and
# processes it started. Nothing in the caller's namespace changes.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NETBENCH="$ROOT/bench/netbench.py"
PYTHON=${BENCH_PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}

say() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

require_root() {
    [[ "$(uname -s)" == Linux ]] || die "needs Linux"
    [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, eBPF): run with sudo"
}

# install_packages REQUIRED... -- OPTIONAL...: apt-get only what is missing; optional
# packages that cannot be installed are reported, not fatal.
install_packages() {
    local required=() optional=() pkg missing=() list=required
    for pkg in "$@"; do
        if [[ $pkg == -- ]]; then list=optional; continue; fi
        if [[ $list == required ]]; then required+=("$pkg"); else optional+=("$pkg"); fi
    done
    for pkg in "${required[@]}" "${optional[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get"
    say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    for pkg in "${missing[@]}"; do
        if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "$pkg" >/dev/null 2>&1; then
            continue
        fi
        if [[ " ${optional[*]} " == *" $pkg "* ]]; then
            say "optional package $pkg is not installable here; using the fallback"
        else
            die "apt-get install $pkg failed"
        fi
    done
}

# The palisade binary: $PALISADE if set, else target/release/palisade, built (or brought
# up to date) with cargo unless BENCH_NO_BUILD=1.
find_palisade() {
    if [[ -n "${PALISADE:-}" ]]; then
        [[ -x "$PALISADE" ]] || die "PALISADE=$PALISADE is not executable"
        PALISADE_SOURCE=$PALISADE
        return
    fi
    PALISADE="$ROOT/target/release/palisade"
    if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
        command -v cargo >/dev/null || [[ -x "$PALISADE" ]] \
            || die "no cargo and no $PALISADE (run scripts/setup.sh, or set PALISADE=)"
        if command -v cargo >/dev/null; then
            say "cargo build --release --bin palisade"
            (cd "$ROOT" && cargo build --release --bin palisade --quiet) \
                || die "cargo build failed (scripts/setup.sh installs the toolchain)"
        fi
    fi
    [[ -x "$PALISADE" ]] || die "$PALISADE not built"
    PALISADE_SOURCE=$PALISADE
}

# use_private_palisade DIR: run a copy, so a rebuild of target/ during the run (other work
# in the same tree) cannot swap the binary under the benchmark.
use_private_palisade() {
    cp "$PALISADE" "$1/palisade"
    PALISADE="$1/palisade"
}

# --- background processes, by PID --------------------------------------------------

BG_PIDS=()

# start_in NETNS SECONDS LOG CMD...: run CMD in NETNS, bounded by `timeout SECONDS`.
# `ip netns exec` execs (no fork), so $! is timeout's PID; TERM to it reaches CMD too.
start_in() {
    local netns=$1 seconds=$2 log=$3
    shift 3
    ip netns exec "$netns" timeout "$seconds" "$@" >"$log" 2>&1 &
    BG_PIDS+=($!)
}

stop_started() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    BG_PIDS=()
}

# --- the lab -------------------------------------------------------------------------

LAB_UP=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_started
    if ((LAB_UP)); then
        say "lab down: $LAB"
        "$PALISADE" lab --name "$LAB" down >/dev/null 2>&1 || say "lab down failed: run '$PALISADE lab --name $LAB down'"
    fi
    exit "$rc"
}

# lab_up OUTDIR [LAB_UP_ARGS...]: two pods, the agent attached in enforce mode (unless
# --no-agent is passed on); sets NODE_NS, BPFFS, CLIENT_NS/IF/IP/IP6, SERVER_NS/IF/IP/IP6.
lab_up() {
    local out=$1
    shift
    [[ "$LAB" =~ ^[a-z0-9]{1,6}$ ]] || die "lab name $LAB: 1-6 lowercase letters or digits"
    cat >"$out/lab.yaml" <<'EOF'
# Two pods on one node: the benchmark's client and server.
namespaces:
  - name: bench
pods:
  - name: bench/client
    labels: {app: client}
  - name: bench/server
    labels: {app: server}
EOF
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    say "lab up: $LAB"
    "$PALISADE" lab --name "$LAB" up -f "$out/lab.yaml" --mode enforce "$@" >"$out/lab-up.log" 2>&1 \
        || die "palisade lab up failed (a live lab named $LAB? see $out/lab-up.log)"
    LAB_UP=1
    "$PALISADE" lab --name "$LAB" status --json >"$out/lab.json"
    eval "$("$PYTHON" - "$out/lab.json" <<'EOF'
import json, shlex, sys
s = json.load(open(sys.argv[1]))
pods = {p["name"]: p for p in s["pods"]}
out = {"NODE_NS": s["node_netns"], "BPFFS": s["bpffs_root"]}
for role in ("client", "server"):
    p = pods["bench/" + role]
    R = role.upper()
    out.update({R + "_NS": p["netns"], R + "_IF": p["host_interface"],
                R + "_IP": p["ipv4"], R + "_IP6": p["ipv6"]})
print("\n".join(f"{k}={shlex.quote(str(v))}" for k, v in out.items()))
EOF
)"
    NODE=(--netns "$NODE_NS" --bpffs-root "$BPFFS")
}

# machine_description FILE
machine_description() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "kernel: $(uname -r)"
        echo "cpu: $(nproc) x $(lscpu | sed -n 's/^Model name: *//p' | head -n1)," \
            "hypervisor $(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -n1)"
        echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
        echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "palisade: $PALISADE_SOURCE, sha256 $(sha256sum "$PALISADE" | cut -c1-12); tree $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
        echo "iperf3: $(iperf3 --version 2>/dev/null | head -n1)"
        echo "sockperf: $(sockperf --version 2>/dev/null | head -n1 || true)"
        echo "iptables: $(iptables -V 2>/dev/null)"
        echo "nft: $(nft -v 2>/dev/null)"
        echo "python: $("$PYTHON" --version 2>&1)"
    } >"$1"
}

# --- an agent of the benchmark's own, owning the policy --------------------------------

# policy_bench_up: what the policy benchmarks share before their own set-up: root, the
# packages, the palisade binary (a private copy in $OUT), the machine's description, and
# a lab of two pods without the lab's agent (the benchmark starts its own).
policy_bench_up() {
    require_root
    install_packages iproute2 python3 util-linux coreutils
    find_palisade
    mkdir -p "$OUT"
    use_private_palisade "$OUT"
    machine_description "$OUT/machine.txt"
    lab_up "$OUT" --no-agent
    say "results in $OUT"
}

# start_policy_agent SECONDS AGENT_ARGS...: start `palisade agent` on the lab's node with
# AGENT_ARGS (its policy source), bounded by SECONDS, logging to $AGENT_LOG; wait until it
# is ready, then attach the client and server pods in enforce mode. Sets AGENT_LOG.
start_policy_agent() {
    local seconds=$1
    shift
    AGENT_LOG="$OUT/agent.log"
    timeout "$seconds" "$PALISADE" agent "${NODE[@]}" "$@" --output /dev/null \
        --stats-interval 0 --ready-file "$OUT/agent.ready" 2>"$AGENT_LOG" &
    BG_PIDS+=($!)
    local _
    for _ in $(seq 100); do [[ -e "$OUT/agent.ready" ]] && break; sleep 0.1; done
    [[ -e "$OUT/agent.ready" ]] || die "agent not ready: see $AGENT_LOG"
    "$PALISADE" attach "${NODE[@]}" --iface "$CLIENT_IF" --ipv4 "$CLIENT_IP" \
        --ipv6 "$CLIENT_IP6" --mode enforce
    "$PALISADE" attach "${NODE[@]}" --iface "$SERVER_IF" --ipv4 "$SERVER_IP" \
        --ipv6 "$SERVER_IP6" --mode enforce
}

# How many times the agent has logged "policy applied".
applied() { grep -c "policy applied" "$AGENT_LOG" || true; }

# wait_applied N: until the agent has applied more than N times (bounded).
wait_applied() {
    local _
    for _ in $(seq 600); do
        (($(applied) > $1)) && return 0
        sleep 0.05
    done
    die "the agent applied nothing new in 30 s: see $AGENT_LOG"
}

# agent_ms FIRST N: the agent's milliseconds for its applies number FIRST .. FIRST+N-1.
agent_ms() {
    awk -v first="$1" -v n="$2" '/policy applied/ {
        k++
        if (k >= first && k < first + n) {
            match($0, / ms="?[0-9.]+/)
            print substr($0, RSTART + 4, RLENGTH - 4)
        }
    }' "$AGENT_LOG" | tr -d '"'
}
