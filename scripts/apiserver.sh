#!/usr/bin/env bash
# A real, CRD-only Kubernetes API server for tests: kube's apiextensions-apiserver built from
# Debian unstable's Go source packages, backed by Debian's etcd, both on loopback.
#
# Only Debian's package archive is reachable from the build machines (no module proxy, no
# GitHub), so the server is built the way Debian builds it: every Go library comes from a
# golang-*-dev package (sources under usr/share/gocode/src) and `go build` runs in GOPATH mode
# (GO111MODULE=off). Nothing is installed system-wide: apt runs with a private configuration
# (its own sources list, state and cache) so the machine's own apt state is untouched, and the
# packages are only unpacked with `dpkg-deb -x` into a private root.
#
# Everything lives in .tools/apiserver/ (gitignored):
#   bin/apiextensions-apiserver, bin/etcd   the results (all a test needs)
#   apt/                                    private apt state (package lists, ~30 MB)
#   debs/, root/, gocache/                  downloads, unpacked sources, build cache;
#                                           removed after a successful build (--keep keeps them)
#
# Usage:
#   scripts/apiserver.sh [build] [--keep]   fetch and build (6-8 minutes on 2 cores; instant
#                                           when the binaries exist and run)
#   scripts/apiserver.sh check              exit 0 when both binaries exist and run
#   scripts/apiserver.sh start DIR          start etcd + the server on free loopback ports in
#                                           the background; writes DIR/kubeconfig, DIR/*.pid,
#                                           DIR/*.log (certificates are self-signed)
#   scripts/apiserver.sh stop DIR           stop what `start DIR` started (by PID)
#
# PALISADE_APISERVER_ARGS adds flags to the server (e.g. -v=4); PALISADE_DEBIAN_MIRROR
# replaces the Debian mirror.
#
# k8s/tests/apiserver.rs starts a server per test with `start DIR`, stops it by the PIDs in
# DIR, and skips when the binaries are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

MIRROR=${PALISADE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=unstable
GO_VERSION=1.26
SERVER_PACKAGE=golang-k8s-apiextensions-apiserver-dev
SERVER_IMPORT=k8s.io/apiextensions-apiserver
ETCD_PACKAGE=etcd-server
# Admission plugins that watch objects of the core API (namespaces, webhook and policy
# configurations), which a CRD-only server does not serve: all of its defaults.
ADMISSION_PLUGINS=NamespaceLifecycle,MutatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook

DIR=$root/.tools/apiserver
BIN=$DIR/bin
APT_DIR=$DIR/apt
DEBS=$DIR/debs
ROOTFS=$DIR/root
GOCACHE_DIR=$DIR/gocache

# As root, apt drops to the user _apt for downloads, who cannot write into our folders.
SANDBOX=()
[[ $(id -u) -eq 0 ]] && SANDBOX=(-o APT::Sandbox::User=root)

say() { printf '[apiserver] %s\n' "$*" >&2; }
die() { printf '[apiserver] error: %s\n' "$*" >&2; exit 1; }

# apt with a private configuration: our own sources list (unstable) and state/cache folders.
# Dir::Etc::sourceparts=- ignores the machine's sources.list.d; nothing under /var/lib/apt or
# /var/cache/apt is read or written.
apt_private() {
    local cmd=$1
    shift
    "$cmd" \
        -o Dir::Etc::sourcelist="$APT_DIR/sources.list" \
        -o Dir::Etc::sourceparts=- \
        -o Dir::State="$APT_DIR/state" \
        -o Dir::State::status="$APT_DIR/state/status" \
        -o Dir::Cache="$APT_DIR/cache" \
        -o APT::Architecture=amd64 \
        -o Debug::NoLocking=1 \
        "${SANDBOX[@]}" \
        "$@"
}

binaries_work() {
    [[ -x $BIN/apiextensions-apiserver && -x $BIN/etcd ]] || return 1
    "$BIN/etcd" --version >/dev/null 2>&1 || return 1
    "$BIN/apiextensions-apiserver" --help >/dev/null 2>&1 || return 1
}

apt_update() {
    mkdir -p "$APT_DIR/state/lists/partial" "$APT_DIR/cache/archives/partial"
    : >"$APT_DIR/state/status"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -r $keyring ]] || die "$keyring is missing (package debian-archive-keyring)"
    printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$MIRROR" "$SUITE" >"$APT_DIR/sources.list"
    say "updating the private package lists for $SUITE from $MIRROR"
    apt_private apt-get -qq update || die "apt-get update from $MIRROR ($SUITE) failed"
}

# The closure of Depends of the server's -dev package, filtered to Go library packages; the
# toolchain is pinned separately (the closure also names golang-go, which may be newer).
go_packages() {
    apt_private apt-cache show "$SERVER_PACKAGE" >/dev/null 2>&1 \
        || die "$SUITE has no package $SERVER_PACKAGE"
    apt_private apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$SERVER_PACKAGE" \
        | grep -v '^ ' | grep -E '^golang-.*-dev$' | sort -u
}

download() {
    rm -rf "$DEBS"
    mkdir -p "$DEBS"
    local packages
    mapfile -t packages < <(go_packages)
    ((${#packages[@]} > 1)) || die "could not resolve the dependencies of $SERVER_PACKAGE"
    packages+=("golang-$GO_VERSION-go" "golang-$GO_VERSION-src" "$ETCD_PACKAGE")
    say "downloading ${#packages[@]} packages into $DEBS"
    (cd "$DEBS" && apt_private apt-get -qq download "${packages[@]}") \
        || die "apt-get download failed (is golang-$GO_VERSION-go still in $SUITE?)"
}

unpack() {
    rm -rf "$ROOTFS"
    mkdir -p "$ROOTFS"
    say "unpacking $(find "$DEBS" -name '*.deb' | wc -l) packages into $ROOTFS"
    local deb
    for deb in "$DEBS"/*.deb; do
        dpkg-deb -x "$deb" "$ROOTFS" || die "dpkg-deb -x $deb failed"
    done
}

build() {
    local goroot=$ROOTFS/usr/lib/go-$GO_VERSION
    [[ -x $goroot/bin/go ]] || die "no Go toolchain at $goroot after unpacking"
    local gopath=$ROOTFS/usr/share/gocode
    [[ -d $gopath/src/$SERVER_IMPORT ]] || die "no sources for $SERVER_IMPORT under $gopath/src"
    # The upstream repository's main package is its root (main.go next to go.mod).
    [[ -f $gopath/src/$SERVER_IMPORT/main.go ]] \
        || die "$SERVER_IMPORT has no main.go at its root in $SERVER_PACKAGE"
    mkdir -p "$BIN" "$GOCACHE_DIR"
    say "building $SERVER_IMPORT with $("$goroot/bin/go" version | cut -d' ' -f3) (GOPATH mode, a few minutes)"
    local started=$SECONDS
    # GOFLAGS=-mod= and GOTOOLCHAIN=local: never look for modules or download a toolchain.
    env -u GOFLAGS GOROOT="$goroot" GOPATH="$gopath" GO111MODULE=off GOTOOLCHAIN=local \
        GOCACHE="$GOCACHE_DIR" GOPROXY=off CGO_ENABLED=0 PATH="$goroot/bin:$PATH" \
        go build -trimpath -o "$BIN/apiextensions-apiserver.new" "$SERVER_IMPORT" \
        || die "go build $SERVER_IMPORT failed (see above)"
    mv "$BIN/apiextensions-apiserver.new" "$BIN/apiextensions-apiserver"
    say "built $BIN/apiextensions-apiserver in $((SECONDS - started)) s"
    install -m 0755 "$ROOTFS/usr/bin/etcd" "$BIN/etcd" || die "$ETCD_PACKAGE has no usr/bin/etcd"
}

cmd_build() {
    local keep=0
    [[ ${1:-} == --keep ]] && keep=1
    if binaries_work; then
        say "ready: $BIN/apiextensions-apiserver, $("$BIN/etcd" --version | head -n1)"
        return 0
    fi
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || die "needs apt-get and dpkg-deb (a Debian machine)"
    local started=$SECONDS
    apt_update
    download
    unpack
    # The archives are no longer needed once unpacked (disk space is tight on CI machines).
    rm -rf "$DEBS"
    build
    binaries_work || die "the binaries were built but do not run"
    if ((keep == 0)); then
        rm -rf "$ROOTFS" "$GOCACHE_DIR"
    fi
    say "ready after $((SECONDS - started)) s: $BIN/apiextensions-apiserver, $("$BIN/etcd" --version | head -n1)"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Polls URL until it answers; on failure shows the log, stops what was started in RUN, exits.
wait_for() {
    local what=$1 url=$2 run=$3 name=$4
    local pid i
    pid=$(<"$run/$name.pid")
    for i in $(seq 1 120); do
        if curl -ksf --cert "$run/pki/client.crt" --key "$run/pki/client.key" "$url" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    tail -n 20 "$run/$name.log" >&2 || true
    cmd_stop "$run"
    die "$what did not become ready at $url (log: $run/$name.log)"
}

# A throw-away CA and a client certificate signed by it for the group system:masters.
client_certificates() {
    local pki=$1
    command -v openssl >/dev/null || die "needs openssl to make the client certificate"
    mkdir -p "$pki"
    (
        cd "$pki"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj /CN=palisade-test-ca -keyout ca.key -out ca.crt
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj /O=system:masters/CN=palisade-test -keyout client.key -out client.csr
        # Extensions make it an X.509 v3 certificate: rustls (kube's TLS) refuses v1.
        printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' \
            >client.ext
        openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile client.ext -out client.crt
    ) >/dev/null 2>&1 || die "openssl could not make the client certificate"
}

delegation_kubeconfig() {
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: nobody
  user: {}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody}
current-context: nowhere
EOF
}

cmd_start() {
    local run=${1:?usage: scripts/apiserver.sh start DIR}
    binaries_work || die "binaries missing: run scripts/apiserver.sh build first"
    mkdir -p "$run"
    run=$(cd "$run" && pwd)
    local client peer secure
    client=$(free_port)
    peer=$(free_port)
    secure=$(free_port)
    "$BIN/etcd" --name palisade --data-dir "$run/etcd" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "palisade=http://127.0.0.1:$peer" >"$run/etcd.log" 2>&1 &
    echo $! >"$run/etcd.pid"
    client_certificates "$run/pki"
    wait_for etcd "http://127.0.0.1:$client/health" "$run" etcd
    # The server delegates authentication and authorization to a "core" API server and
    # refuses to start without a kubeconfig for one. Give it one that points nowhere: with
    # the lookup skipped it is never contacted. Clients authenticate with a certificate from
    # our own CA in the group system:masters, which the server authorizes by itself (resource
    # requests from anyone else would go to the missing core server and fail).
    # The admission plugins and priority-and-fairness would watch core objects; they are off.
    delegation_kubeconfig "$run/delegation.kubeconfig"
    "$BIN/apiextensions-apiserver" --etcd-servers "http://127.0.0.1:$client" \
        --bind-address 127.0.0.1 --secure-port "$secure" --cert-dir "$run/certs" \
        --authentication-kubeconfig "$run/delegation.kubeconfig" --authentication-skip-lookup \
        --authorization-kubeconfig "$run/delegation.kubeconfig" \
        --client-ca-file "$run/pki/ca.crt" \
        --kubeconfig "$run/delegation.kubeconfig" --enable-priority-and-fairness=false \
        --disable-admission-plugins "$ADMISSION_PLUGINS" ${PALISADE_APISERVER_ARGS:-} \
        >"$run/apiserver.log" 2>&1 &
    echo $! >"$run/apiserver.pid"
    # Never fully ready: the informer for core Services (used to reach conversion webhooks)
    # has no core server to sync from. Everything else must be.
    wait_for apiextensions-apiserver "https://127.0.0.1:$secure/readyz?exclude=informer-sync" \
        "$run" apiserver
    cat >"$run/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: palisade
  cluster:
    server: https://127.0.0.1:$secure
    certificate-authority: $run/certs/apiserver.crt
users:
- name: palisade
  user:
    client-certificate: $run/pki/client.crt
    client-key: $run/pki/client.key
contexts:
- name: palisade
  context: {cluster: palisade, user: palisade}
current-context: palisade
EOF
    say "running: https://127.0.0.1:$secure (KUBECONFIG=$run/kubeconfig); stop with: $0 stop $run"
}

cmd_stop() {
    local run=${1:?usage: scripts/apiserver.sh stop DIR}
    local name pid
    for name in apiserver etcd; do
        [[ -f $run/$name.pid ]] || continue
        pid=$(<"$run/$name.pid")
        kill "$pid" 2>/dev/null || true
        rm -f "$run/$name.pid"
    done
}

case ${1:-build} in
build) shift || true; cmd_build "$@" ;;
--keep) cmd_build --keep ;;
check) binaries_work ;;
start) cmd_start "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
*) die "unknown command '$1' (build, check, start DIR, stop DIR)" ;;
esac
