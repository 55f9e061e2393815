#!/usr/bin/env bash
# Every test Palisade has: formatting, the Helm chart's checks, lints, host unit tests and,
# as root, the end-to-end tests that load the eBPF programs into this kernel and send real
# traffic between network namespaces. Runs set-up first (idempotent, seconds when everything
# is installed).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "formatting"
cargo fmt --all -- --check

step "Helm chart and manifests (lint, Kubernetes schema, security policy, freshness)"
./scripts/check-deploy.sh

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (the end-to-end tests run target/debug/palisade)"
cargo build --workspace --bins --locked

if [[ $(id -u) -ne 0 ]]; then
    echo "note: not root: end-to-end tests (eBPF, network namespaces) will report SKIPPED" >&2
fi

step "tests"
cargo test --workspace --locked
