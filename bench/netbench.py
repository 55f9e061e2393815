#!/usr/bin/env python3
"""Helpers for bench/routed.sh and bench/propagation.sh (Python 3 standard library only).

Generators (run anywhere):
  policy     a Palisade node policy (JSON, which `palisade policy -f` reads as YAML)
  iptables   the same rules as an iptables-restore file (FORWARD of the lab's node)
  nft        the same rules as one nftables set in table `inet palisade-bench`

Traffic (run inside the lab's namespaces, with `ip netns exec` / `nsenter --net=`):
  accept-server   accept TCP on some ports and close at once (connection-rate and probe server)
  cps-client      bounded connect/close loop: new TCP connections per second
  rr-server       TCP echo of fixed-size messages (fallback when sockperf is missing)
  rr-client       TCP ping-pong on one connection: transactions/s and latency
  measure         one metric (iperf3, sockperf or the clients above) from the client's
                  namespace, appended as a JSON line
  propagation     policy changes timed by probe connections (see `propagation --help`)

Results:
  summarize              JSON lines of runs -> markdown tables of median ratios to no filter
  summarize-propagation  `propagation` outputs -> a markdown table

Every loop here is bounded in time.
"""

import argparse
import errno
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time

# ---------------------------------------------------------------------------------------
# The filler rules: identities that exist only in the rules (and in IPCACHE, with one
# address each in 10.250.0.0/16, so iptables and nftables can express the same rules by
# source address), four ports each, three TCP and one UDP. None matches benchmark traffic.

FILLER_FIRST_IDENTITY = 1000
FILLER_PORT = 20000
CLIENT_IDENTITY = 300
SERVER_IDENTITY = 301


def filler(n):
    """(identity, address, protocol, port) of the n filler rules."""
    out = []
    for i in range(n):
        k = i // 4
        ident = FILLER_FIRST_IDENTITY + k
        addr = f"10.250.{(k >> 8) & 255}.{k & 255}"
        if k >= 65536:
            raise SystemExit("at most 262,144 filler rules")
        proto = "udp" if i % 4 == 3 else "tcp"
        out.append((ident, addr, proto, FILLER_PORT + i % 4))
    return out


def parse_allow(specs):
    """'tcp:5201' or 'tcp:5000-5010' -> (proto, first, last)."""
    out = []
    for s in specs:
        proto, ports = s.split(":")
        first, _, last = ports.partition("-")
        out.append((proto, int(first), int(last or first)))
    return out


def cmd_policy(a):
    rules = []
    rid = 1
    for ident, _, proto, port in filler(a.filler):
        rules.append({"id": rid, "direction": "ingress", "peer": {"identity": ident},
                      "protocol": proto, "ports": {"first": port, "last": port}})
        rid += 1
    for proto, first, last in parse_allow(a.allow):
        rules.append({"id": rid, "direction": "ingress", "peer": {"identity": CLIENT_IDENTITY},
                      "protocol": proto, "ports": {"first": first, "last": last}})
        rid += 1
    ipcache = {a.client_ip: CLIENT_IDENTITY, a.server_ip: SERVER_IDENTITY}
    if a.client_ip6:
        ipcache[a.client_ip6] = CLIENT_IDENTITY
    if a.server_ip6:
        ipcache[a.server_ip6] = SERVER_IDENTITY
    for ident, addr, _, _ in filler(a.filler):
        ipcache[addr] = ident
    # Extra identities with one address each in 10.251.0.0/16 (a bigger IPCACHE).
    for k in range(a.extra_ipcache):
        ipcache[f"10.{251 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}"] = 100000 + k
    doc = {
        "endpoints": {
            # The client may open anything; what reaches it is replies (conntrack).
            a.client_if: {"ingress": "isolated", "egress": "open", "rules": []},
            a.server_if: {"ingress": "isolated", "egress": "open", "rules": rules},
        },
        "ipcache": ipcache,
    }
    with open(a.out, "w") as f:
        # One rule per line: readable, and still JSON (which is YAML).
        f.write('{"endpoints": {\n')
        eps = list(doc["endpoints"].items())
        for n, (iface, ep) in enumerate(eps):
            f.write(f'  {json.dumps(iface)}: {{"ingress": {json.dumps(ep["ingress"])}, '
                    f'"egress": {json.dumps(ep["egress"])}, "rules": [')
            for m, r in enumerate(ep["rules"]):
                f.write(("\n    " if m == 0 else ",\n    ") + json.dumps(r))
            f.write("]}" + (",\n" if n + 1 < len(eps) else "\n"))
        f.write('},\n"ipcache": {\n')
        items = list(ipcache.items())
        f.write(",\n".join(f"  {json.dumps(k)}: {v}" for k, v in items))
        f.write("\n}}\n")


def cmd_cluster(a):
    """A cluster file (`palisade agent --cluster`): the lab's client and server pods on this
    node, plus `--pods` - 2 filler pods on another node, in 100 namespaces, with 50 app
    labels. The client pod's `role` label is `--client-role` (none when empty): the
    benchmark's NetworkPolicy lets role=a reach port A and role=b port B."""
    namespaces = {f"fill-{k}": {"team": f"t{k % 10}"} for k in range(100)}
    namespaces["bench"] = {}
    client_labels = {"app": "client"}
    if a.client_role:
        client_labels["role"] = a.client_role
    pods = [
        {"namespace": "bench", "name": "client", "labels": client_labels, "node": "bench-node",
         "ips": [a.client_ip, a.client_ip6]},
        {"namespace": "bench", "name": "server", "labels": {"app": "server"},
         "node": "bench-node", "ips": [a.server_ip, a.server_ip6],
         "ports": [{"name": "svc-a", "port": a.port_a}, {"name": "svc-b", "port": a.port_b}]},
    ]
    for k in range(max(0, a.pods - 2)):
        pods.append({
            "namespace": f"fill-{k % 100}", "name": f"filler-{k}",
            "labels": {"app": f"app-{k % 50}", "pod-template-hash": f"{k:08x}"},
            "node": "other-node", "ips": [f"10.{250 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}"],
        })
    doc = {"namespaces": namespaces, "pods": pods,
           "nodes": {"bench-node": ["169.254.1.1", "fd00:10:244::1"], "other-node": ["10.249.0.1"]}}
    with open(a.out, "w") as f:
        json.dump(doc, f)


def cmd_iptables(a):
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for _, addr, proto, port in filler(a.filler):
        lines.append(f"-A FORWARD -s {addr}/32 -d {a.server_ip}/32 -p {proto} -m {proto} "
                     f"--dport {port} -j ACCEPT")
    for proto, first, last in parse_allow(a.allow):
        ports = f"{first}:{last}" if last != first else f"{first}"
        lines.append(f"-A FORWARD -s {a.client_ip}/32 -d {a.server_ip}/32 -p {proto} -m {proto} "
                     f"--dport {ports} -j ACCEPT")
    # Replies and everything else: what the benchmark needs to pass.
    lines.append("-A FORWARD -j ACCEPT")
    lines.append("COMMIT")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")


def cmd_nft(a):
    elems = [f"{addr} . {proto} . {port}" for _, addr, proto, port in filler(a.filler)]
    for proto, first, last in parse_allow(a.allow):
        elems += [f"{a.client_ip} . {proto} . {p}" for p in range(first, last + 1)]
    with open(a.out, "w") as f:
        f.write("table inet palisade-bench {\n")
        f.write("  set pl_allow {\n    type ipv4_addr . inet_proto . inet_service\n")
        f.write("    elements = {\n      " + ",\n      ".join(elems) + "\n    }\n  }\n")
        f.write("  chain forward {\n    type filter hook forward priority filter; policy accept;\n")
        # Every forwarded IPv4 packet (both directions) pays one set lookup.
        f.write("    ip saddr . meta l4proto . th dport @pl_allow accept\n")
        f.write("  }\n}\n")


# ---------------------------------------------------------------------------------------
# Traffic


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def cmd_accept_server(a):
    """Accept on every port and close at once, until --seconds pass (bounded)."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    for port in a.ports:
        s = socket.socket(family_of(a.host), socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a.host, port))
        s.listen(4096)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + a.seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            for _ in range(256):
                try:
                    c, _ = key.fileobj.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                c.close()


LINGER_RST = struct.pack("ii", 1, 0)


def cmd_cps_client(a):
    """Connect, then close with a reset (no TIME_WAIT to run out of ports), for --seconds."""
    raise_nofile()
    addr = (a.host, a.port)
    fam = family_of(a.host)
    n = errors = 0
    start = time.monotonic()
    deadline = start + a.seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.settimeout(1.0)
        try:
            s.connect(addr)
            n += 1
        except OSError:
            errors += 1
        s.close()
    elapsed = time.monotonic() - start
    print(json.dumps({"connections": n, "errors": errors, "seconds": elapsed,
                      "per_second": n / elapsed}))


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def cmd_rr_server(a):
    import threading

    srv = socket.socket(family_of(a.host), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.host, a.port))
    srv.listen(64)
    srv.settimeout(0.5)
    deadline = time.monotonic() + a.seconds

    def serve(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(5)
        try:
            while time.monotonic() < deadline:
                c.sendall(recv_exact(c, a.size))
        except OSError:
            pass
        finally:
            c.close()

    print("ready", flush=True)
    while time.monotonic() < deadline:
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def cmd_rr_client(a):
    s = socket.create_connection((a.host, a.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * a.size
    lat = []
    warm = time.monotonic() + min(0.3, a.seconds / 4)
    start = None
    deadline = time.monotonic() + a.seconds
    while True:
        t = time.perf_counter_ns()
        if time.monotonic() >= deadline:
            break
        s.sendall(msg)
        recv_exact(s, a.size)
        if time.monotonic() >= warm:
            if start is None:
                start = time.monotonic()
            lat.append(time.perf_counter_ns() - t)
    elapsed = time.monotonic() - start
    s.close()
    lat.sort()
    print(json.dumps({"transactions": len(lat), "seconds": elapsed,
                      "per_second": len(lat) / elapsed,
                      "rtt_p50_us": lat[len(lat) // 2] / 1000,
                      "rtt_p99_us": lat[int(len(lat) * 0.99)] / 1000}))


# ---------------------------------------------------------------------------------------
# One measurement from the client's namespace, appended as JSON lines to --out.


CPU = None  # --cpu of `measure`: every client command runs pinned there


def in_ns(netns, argv):
    pin = ["taskset", "-c", str(CPU)] if CPU is not None else []
    return ["ip", "netns", "exec", netns] + pin + argv


def run_json(argv, timeout):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): "
                           f"{out.stderr.strip()[-500:]} {out.stdout.strip()[-500:]}")
    return out.stdout


def measure(a):
    """-> list of (metric, value)."""
    d = a.seconds
    limit = d + 30
    if a.metric in ("tcp1", "tcp4"):
        streams = "1" if a.metric == "tcp1" else "4"
        doc = json.loads(run_json(in_ns(a.netns, ["iperf3", "-c", a.server, "-p", str(a.iperf_port),
                                                  "-t", str(int(d)), "-P", streams, "-J"]), limit))
        return [(f"{a.metric}_gbps", doc["end"]["sum_received"]["bits_per_second"] / 1e9)]
    if a.metric == "udp64":
        doc = json.loads(run_json(in_ns(a.netns, ["iperf3", "-c", a.server, "-p", str(a.iperf_port),
                                                  "-u", "-l", "64", "-b", "0", "-t", str(int(d)),
                                                  "-J"]), limit))
        s = doc["end"]["sum"]
        return [("udp64_pps", (s["packets"] - s["lost_packets"]) / s["seconds"]),
                ("udp64_sent_pps", s["packets"] / s["seconds"])]
    if a.metric == "rr":
        if a.sockperf:
            text = run_json(in_ns(a.netns, ["sockperf", "ping-pong", "--tcp", "-i", a.server,
                                            "-p", str(a.rr_port), "-t", str(int(d)), "-m", "64",
                                            "--mps=max", "--full-rtt"]), limit)
            rate = p50 = p99 = None
            for line in text.splitlines():
                if "[Valid Duration]" in line:
                    f = dict(kv.strip().split("=") for kv in line.split("]", 1)[1].split(";"))
                    rate = int(f["ReceivedMessages"]) / float(f["RunTime"].split()[0])
                elif "percentile 50.000" in line:
                    p50 = float(line.split("=")[1])
                elif "percentile 99.000" in line:
                    p99 = float(line.split("=")[1])
            if None in (rate, p50, p99):
                raise RuntimeError("cannot read sockperf output:\n" + text[-2000:])
            return [("rr_per_s", rate), ("rr_p50_us", p50), ("rr_p99_us", p99)]
        doc = json.loads(run_json(in_ns(a.netns, [sys.executable, os.path.abspath(__file__),
                                                  "rr-client", "--host", a.server, "--port",
                                                  str(a.rr_port), "--seconds", str(d)]), limit))
        return [("rr_per_s", doc["per_second"]), ("rr_p50_us", doc["rtt_p50_us"]),
                ("rr_p99_us", doc["rtt_p99_us"])]
    if a.metric == "cps":
        doc = json.loads(run_json(in_ns(a.netns, [sys.executable, os.path.abspath(__file__),
                                                  "cps-client", "--host", a.server, "--port",
                                                  str(a.cps_port), "--seconds", str(d)]), limit))
        if doc["errors"]:
            print(f"cps: {doc['errors']} failed connects", file=sys.stderr)
        return [("cps", doc["per_second"])]
    raise SystemExit(f"unknown metric {a.metric}")


def cmd_measure(a):
    global CPU
    CPU = a.cpu
    values = measure(a)
    with open(a.out, "a") as f:
        for metric, value in values:
            rec = {"round": a.round, "config": a.config, "filter": a.filter == 1,
                   "metric": metric, "value": value, "time": time.time()}
            f.write(json.dumps(rec) + "\n")
    print(" ".join(f"{m}={v:.4g}" for m, v in values))


# ---------------------------------------------------------------------------------------
# Policy propagation


def cmd_propagation(a):
    """Time policy changes with probe connections, from inside the client's namespace.

    Two policies differ in one rule: `--file-a` allows TCP port A (and not B), `--file-b`
    allows B (and not A). Every `--tick` the prober starts a non-blocking connect to A and
    one to B; an attempt is *allowed* when it connects within `--deadline` (below the 1 s
    SYN retransmission, so a dropped SYN is never retried under the next policy) and
    *refused* otherwise (enforce mode drops the SYN). The prober is pinned to one CPU, so
    its SYNs are judged in the order they were sent.

    For each change: t0 = just before `palisade policy -f` starts; *enforced* = the first
    attempt (by send time) to the newly allowed port that connected; *denied* = the first
    attempt to the newly refused port that was refused; the command's own wall time.
    Mixed states: within a change, once one attempt has seen the new policy (new port
    allowed, or old port refused), no later attempt may see the old one (old port allowed
    or new port refused). Every such later attempt is counted as a violation.

    With `--two-step N`, the last N changes are made non-atomically on purpose (first a
    file allowing neither port, then the target file): the control shows the prober does
    see a half-applied policy when there is one.
    """
    raise_nofile()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    ports = (a.port_a, a.port_b)
    files = (a.file_a, a.file_b)
    cmd = [a.palisade, "policy", "--netns", a.netns, "--bpffs-root", a.bpffs_root, "-f"]
    fam = family_of(a.host)
    sel = selectors.DefaultSelector()
    pending = {}  # fd -> (socket, sent, port)
    attempts = []  # (sent, port, allowed)

    def launch(port):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        sent = time.monotonic()
        rc = s.connect_ex((a.host, port))
        if rc == 0:
            attempts.append((sent, port, True))
            s.close()
        elif rc in (errno.EINPROGRESS, errno.EAGAIN):
            pending[s.fileno()] = (s, sent, port)
            sel.register(s, selectors.EVENT_WRITE)
        else:
            attempts.append((sent, port, False))
            s.close()

    def settle(s, sent, port, ok):
        sel.unregister(s)
        del pending[s.fileno()]
        s.close()
        attempts.append((sent, port, ok))

    def pump(until, stop=None, probe=True):
        """Probe every tick (unless not `probe`: only resolve what is pending) until
        `until` (monotonic) or `stop()` is true; bounded."""
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= until or (stop is not None and stop()):
                return
            if probe and now >= next_tick:
                for p in ports:
                    launch(p)
                next_tick += a.tick
                if next_tick < now:  # after a stall: no burst, just the next tick
                    next_tick = now + a.tick
            for key, _ in sel.select(max(0.0, min(next_tick, until) - time.monotonic())):
                s = key.fileobj
                _, sent, port = pending[s.fileno()]
                ok = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                settle(s, sent, port, ok)
            now = time.monotonic()
            for fd, (s, sent, port) in list(pending.items()):
                if now - sent > a.deadline:
                    settle(s, sent, port, False)

    def run_policy(path):
        if a.watched:
            # The agent watches the file: the change is the rename of a complete copy.
            staged = a.watched + ".staged"
            shutil.copyfile(path, staged)
            t0 = time.monotonic()
            os.replace(staged, a.watched)
            # Give the agent time to apply an intermediate step of a two-step change, so
            # the control's half-applied state exists long enough to be probed.
            if path == a.file_none:
                pump(time.monotonic() + 0.05)
            return t0, t0
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd + [path], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        pump(t0 + 60, stop=lambda: proc.poll() is not None)
        t_exit = time.monotonic()
        if proc.poll() is None:
            proc.kill()
            raise SystemExit(f"palisade policy -f {path} took over 60 s")
        if proc.returncode != 0:
            raise SystemExit(f"palisade policy -f {path} failed: {proc.stderr.read().decode()}")
        return t0, t_exit

    # Start from file A, settled.
    run_policy(files[0])
    pump(time.monotonic() + a.deadline + 0.1, stop=lambda: not pending, probe=False)
    changes = []
    total = a.changes + a.two_step
    for i in range(total):
        new = (i + 1) % 2
        new_port, old_port = ports[new], ports[1 - new]
        two_step = i >= a.changes
        first_attempt = len(attempts)
        if two_step:
            t0, _ = run_policy(a.file_none)
            _, t_exit = run_policy(files[new])
        else:
            t0, t_exit = run_policy(files[new])
        # Watch the settled state a while, then let every attempt resolve.
        pump(time.monotonic() + a.settle)
        pump(time.monotonic() + a.deadline + 0.1, stop=lambda: not pending, probe=False)
        window = sorted(x for x in attempts[first_attempt:] if x[0] >= t0)
        before = [x for x in attempts[first_attempt:] if x[0] < t0]
        enforced = next((s - t0 for s, p, ok in window if p == new_port and ok), None)
        denied = next((s - t0 for s, p, ok in window if p == old_port and not ok), None)
        seen_new = False
        violations = 0
        for s, p, ok in window:
            is_new = (p == new_port and ok) or (p == old_port and not ok)
            if is_new:
                seen_new = True
            elif seen_new:
                violations += 1
        during = sum(1 for s, _, _ in window if s <= t_exit)
        changes.append({
            "change": i, "two_step": two_step, "to_port": new_port,
            "command_s": t_exit - t0, "enforced_s": enforced, "denied_s": denied,
            "attempts": len(window), "attempts_while_applying": during,
            "violations": violations,
            # Attempts launched before t0 but resolved later belong to the old policy.
            "early_new_state": sum(1 for s, p, ok in before if p == new_port and ok),
        })
        print(json.dumps(changes[-1]), file=sys.stderr, flush=True)
    # Drain and close the remaining probes.
    for fd, (s, sent, port) in list(pending.items()):
        settle(s, sent, port, False)
    print(json.dumps({"changes": changes}))


# ---------------------------------------------------------------------------------------
# Summaries


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, digits=2):
    if x is None or x != x:
        return "-"
    return f"{x:.{digits}f}"


METRICS = [
    # key, label, higher is better, unit, scale
    ("tcp1_gbps", "TCP throughput, 1 stream", True, "Gbit/s", 1),
    ("tcp4_gbps", "TCP throughput, 4 streams", True, "Gbit/s", 1),
    ("rr_per_s", "TCP request/response (64 B), transactions/s", True, "k/s", 1e-3),
    ("rr_p50_us", "request/response latency p50", False, "us", 1),
    ("rr_p99_us", "request/response latency p99", False, "us", 1),
    ("udp64_pps", "UDP 64 B packets delivered/s", True, "kpps", 1e-3),
    ("cps", "new TCP connections/s", True, "k/s", 1e-3),
]


def cmd_summarize(a):
    runs = [json.loads(line) for line in open(a.results) if line.strip()]
    configs = []
    for r in runs:
        if r["config"] not in configs:
            configs.append(r["config"])
    # pair[(config, round, metric)] = {"none": v, "filter": v}
    pairs = {}
    for r in runs:
        key = (r["config"], r["round"], r["metric"])
        pairs.setdefault(key, {})["filter" if r["filter"] else "none"] = r["value"]
    labels = dict(a.label or [])
    lines = []
    lines.append("Median over rounds of the ratio to the no-filter run paired with it in the "
                 "same round (1.00 = no cost; for latencies the ratio is no filter / filter, "
                 "so lower is worse everywhere). In brackets: min-max of the ratios.")
    lines.append("")
    head = "| metric | no filter (median) | " + " | ".join(labels.get(c, c) for c in configs) + " |"
    lines.append(head)
    lines.append("|---" * (2 + len(configs)) + "|")
    for key, label, higher, unit, scale in METRICS:
        cells = []
        base_all = []
        for c in configs:
            ratios = []
            for (cc, rnd, m), v in sorted(pairs.items()):
                if cc != c or m != key or "none" not in v or "filter" not in v:
                    continue
                base_all.append(v["none"])
                if v["none"] > 0 and v["filter"] > 0:
                    ratios.append(v["filter"] / v["none"] if higher else v["none"] / v["filter"])
            if ratios:
                cells.append(f"{fmt(median(ratios))} ({fmt(min(ratios))}-{fmt(max(ratios))})")
            else:
                cells.append("-")
        if not base_all:
            continue
        lines.append(f"| {label} | {fmt(median(base_all) * scale, 1)} {unit} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Absolute medians with the filter:")
    lines.append("")
    lines.append("| metric | " + " | ".join(labels.get(c, c) for c in configs) + " |")
    lines.append("|---" * (1 + len(configs)) + "|")
    for key, label, higher, unit, scale in METRICS:
        cells = []
        for c in configs:
            vals = [v["filter"] for (cc, _, m), v in pairs.items()
                    if cc == c and m == key and "filter" in v]
            cells.append(f"{fmt(median(vals) * scale, 1)} {unit}" if vals else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    # Nearest rank: with 50 samples, p99 is the largest.
    k = max(0, min(len(xs) - 1, int(-(-q * len(xs) // 1)) - 1))
    return xs[k]


def cmd_summarize_propagation(a):
    out = []
    for path, label in zip(a.files, a.labels):
        doc = json.load(open(path))
        ch = [c for c in doc["changes"] if not c["two_step"]]
        ctl = [c for c in doc["changes"] if c["two_step"]]
        ms = lambda xs: [x * 1000 for x in xs if x is not None]
        enf = ms(c["enforced_s"] for c in ch)
        den = ms(c["denied_s"] for c in ch)
        cmdt = ms(c["command_s"] for c in ch)
        missing = sum(1 for c in ch if c["enforced_s"] is None or c["denied_s"] is None)
        out.append({
            "label": label, "changes": len(ch),
            "enforced_p50": pct(enf, 0.5), "enforced_p99": pct(enf, 0.99),
            "enforced_max": max(enf) if enf else float("nan"),
            "denied_p50": pct(den, 0.5), "denied_p99": pct(den, 0.99),
            "command_p50": pct(cmdt, 0.5), "command_p99": pct(cmdt, 0.99),
            "attempts": sum(c["attempts_while_applying"] for c in ch),
            # Per port, attempts start every tick: the time resolution actually achieved.
            "spacing_ms": 2000 * sum(c["command_s"] for c in ch)
            / max(1, sum(c["attempts_while_applying"] for c in ch)),
            "violations": sum(c["violations"] for c in ch),
            "missing": missing,
            "control_changes": len(ctl),
            "control_flagged": sum(1 for c in ctl if c["violations"] > 0),
        })
    print("| policy size | changes | enforced p50 / p99 / max (ms) | refused p50 / p99 (ms) "
          "| `palisade policy` wall p50 / p99 (ms) | probes while applying (one per port "
          "every ... ms) | mixed-state observations | control: two-step changes flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['label']} | {r['changes']} | {fmt(r['enforced_p50'], 1)} / "
              f"{fmt(r['enforced_p99'], 1)} / {fmt(r['enforced_max'], 1)} | "
              f"{fmt(r['denied_p50'], 1)} / {fmt(r['denied_p99'], 1)} | "
              f"{fmt(r['command_p50'], 1)} / {fmt(r['command_p99'], 1)} | {r['attempts']} "
              f"({fmt(r['spacing_ms'], 2)}) | "
              f"{r['violations']} | {r['control_flagged']} of {r['control_changes']} |")
        if r["missing"]:
            print(f"\n{r['missing']} change(s) of {r['label']} never showed the new state.")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def gen(name, fn):
        s = sub.add_parser(name)
        s.add_argument("--filler", type=int, default=10000)
        s.add_argument("--allow", action="append", default=[], help="proto:port[-port]")
        s.add_argument("--client-ip", required=True)
        s.add_argument("--server-ip", required=True)
        s.add_argument("--out", required=True)
        s.set_defaults(fn=fn)
        return s

    s = gen("policy", cmd_policy)
    s.add_argument("--client-if", required=True)
    s.add_argument("--server-if", required=True)
    s.add_argument("--client-ip6")
    s.add_argument("--server-ip6")
    s.add_argument("--extra-ipcache", type=int, default=0)
    s = sub.add_parser("cluster", description=cmd_cluster.__doc__)
    s.add_argument("--pods", type=int, required=True)
    s.add_argument("--client-role", default="")
    s.add_argument("--client-ip", required=True)
    s.add_argument("--server-ip", required=True)
    s.add_argument("--client-ip6", required=True)
    s.add_argument("--server-ip6", required=True)
    s.add_argument("--port-a", type=int, required=True)
    s.add_argument("--port-b", type=int, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_cluster)
    gen("iptables", cmd_iptables)
    gen("nft", cmd_nft)

    s = sub.add_parser("accept-server")
    s.add_argument("--host", required=True)
    s.add_argument("--ports", type=int, nargs="+", required=True)
    s.add_argument("--seconds", type=float, default=3600)
    s.set_defaults(fn=cmd_accept_server)

    s = sub.add_parser("cps-client")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--seconds", type=float, default=3)
    s.set_defaults(fn=cmd_cps_client)

    s = sub.add_parser("rr-server")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seconds", type=float, default=3600)
    s.set_defaults(fn=cmd_rr_server)

    s = sub.add_parser("rr-client")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seconds", type=float, default=3)
    s.set_defaults(fn=cmd_rr_client)

    s = sub.add_parser("measure")
    s.add_argument("metric", choices=["tcp1", "tcp4", "rr", "udp64", "cps"])
    s.add_argument("--netns", required=True, help="the client pod's namespace")
    s.add_argument("--server", required=True)
    s.add_argument("--seconds", type=float, default=3)
    s.add_argument("--iperf-port", type=int, default=5201)
    s.add_argument("--rr-port", type=int, default=11111)
    s.add_argument("--cps-port", type=int, default=9100)
    s.add_argument("--sockperf", type=int, default=1)
    s.add_argument("--cpu", type=int, help="pin the client to this CPU")
    s.add_argument("--round", type=int, required=True)
    s.add_argument("--config", required=True)
    s.add_argument("--filter", type=int, choices=[0, 1], required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_measure)

    s = sub.add_parser("propagation", description=cmd_propagation.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--palisade", required=True)
    s.add_argument("--netns", required=True)
    s.add_argument("--bpffs-root", required=True)
    s.add_argument("--host", required=True)
    s.add_argument("--port-a", type=int, required=True)
    s.add_argument("--port-b", type=int, required=True)
    s.add_argument("--file-a", required=True)
    s.add_argument("--file-b", required=True)
    s.add_argument("--file-none", required=True)
    s.add_argument("--changes", type=int, default=50)
    s.add_argument("--two-step", type=int, default=0)
    s.add_argument("--watched", help="apply changes by renaming files over this one (the "
                   "agent's --policy) instead of running `palisade policy -f`")
    s.add_argument("--tick", type=float, default=0.001)
    s.add_argument("--deadline", type=float, default=0.3)
    s.add_argument("--settle", type=float, default=0.1)
    s.add_argument("--cpu", type=int)
    s.set_defaults(fn=cmd_propagation)

    s = sub.add_parser("summarize")
    s.add_argument("results")
    s.add_argument("--label", nargs=2, action="append", metavar=("CONFIG", "TEXT"))
    s.set_defaults(fn=cmd_summarize)

    s = sub.add_parser("summarize-propagation")
    s.add_argument("--files", nargs="+", required=True)
    s.add_argument("--labels", nargs="+", required=True)
    s.set_defaults(fn=cmd_summarize_propagation)

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
