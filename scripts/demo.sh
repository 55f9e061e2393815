#!/usr/bin/env bash
# The Palisade demo on one machine: builds the agent, then `palisade lab demo` brings up a
# small microservice shop in network namespaces, learns its traffic, proposes and reviews
# policies (written to palisade-demo/), monitors, enforces while attacks are injected, sums
# up from the kernel's records, and tears everything down. Extra arguments go to
# `palisade lab demo` (e.g. --learn-for 60s, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo build --release --locked --bin palisade

run=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "the demo needs root (eBPF, network namespaces)" >&2; exit 1; }
    run=(sudo)
fi
exec "${run[@]}" target/release/palisade lab demo "$@"
