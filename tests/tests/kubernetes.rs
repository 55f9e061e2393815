//! The Kubernetes agent end to end on one machine: `palisade agent --kubernetes` in a node
//! network namespace, steered by a fake API server (`tests::fake_apiserver`) listening on
//! the node's loopback, with pods wired like a ptp CNI and a new pod created the way the
//! kubelet and a chained CNI create it (API object, sandbox and veth, then the real
//! `palisade-cni` ADD, then the pod's status).
//!
//! The scenario, in one test because every step builds on the one before: policy enforced
//! from a NetworkPolicy; a new pod judged from its first packet; a namespace relabelled to
//! monitor live; a Kubernetes Event for a denial; metrics; the pod deleted and detached.
//!
//! Needs root (skips otherwise). Names are unique to the run: namespaces
//! `palisade-k8s-<id>-...`, interfaces `pl-<id>-h<n>`, pins `/sys/fs/bpf/palisade-k8s-<id>`;
//! all are removed by exact name when the test ends, however it ends. Nothing runs in the
//! test process's own namespace except `ip netns add/delete`. A second test, without root,
//! checks the fake API server itself against kube's own watchers and event recorder.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use enforcer::{
    datapath::{self, Pins},
    netns,
};
use model::{Direction, FlowRecord, Verdict};
use serde_json::{Value, json};
use tests::{
    agent::read_records,
    fake_apiserver::FakeApiServer,
    namespaces::{Netns, ip},
    require_root, traffic, unique_id,
};

/// How long a step may take to show its effect.
const STEP: Duration = Duration::from_secs(20);

/// The node's address on its loopback: the pods' gateway (as in `palisade lab`).
const GATEWAY: &str = "169.254.1.1";

/// Where the agent serves /metrics, /healthz and /readyz, inside the node namespace.
const HTTP: &str = "127.0.0.1:9477";

const NODE: &str = "node-1";

// ---------------------------------------------------------------------------------------
// Network namespaces wired like a node with a ptp CNI
// ---------------------------------------------------------------------------------------

/// One pod's sandbox: its namespace, the host side of its veth, its address.
struct Pod {
    netns: Netns,
    host: String,
    mac: String,
    ipv4: IpAddr,
}

/// The node namespace; its pods are created by [`Node::add_pod`] and owned by the caller.
struct Node {
    id: String,
    netns: Netns,
}

impl Node {
    fn new(id: &str) -> Self {
        let netns = Netns::new(format!("palisade-k8s-{id}-node"));
        // /proc/sys/net shows the namespace of the thread that opens it.
        netns::run_in(&netns.name, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward")
        })
        .expect("entering the node namespace");
        ip(
            Some(&netns.name),
            &[
                "link set lo up".into(),
                format!("address add {GATEWAY}/32 dev lo"),
            ],
        );
        Self {
            id: id.to_owned(),
            netns,
        }
    }

    fn name(&self) -> &str {
        &self.netns.name
    }

    /// What a ptp CNI does for pod `name` in slot `n`: a namespace, a veth `pl-<id>-h<n>`
    /// into the node with eth0 in the pod, 10.244.1.<n>/32 routed to it, the pod's default
    /// route via the node.
    fn add_pod(&self, name: &str, n: u8) -> Pod {
        let netns = Netns::new(format!("palisade-k8s-{}-{name}", self.id));
        let host = format!("pl-{}-h{n}", self.id);
        let mac = format!("02:70:6c:00:01:{n:02x}");
        let ipv4: IpAddr = format!("10.244.1.{n}").parse().unwrap();
        ip(
            Some(self.name()),
            &[
                format!(
                    "link add {host} address {mac} type veth peer name eth0 netns {}",
                    netns.name
                ),
                format!("link set {host} up"),
                format!("route add {ipv4}/32 dev {host}"),
            ],
        );
        ip(
            Some(&netns.name),
            &[
                "link set lo up".into(),
                "link set eth0 up".into(),
                format!("address add {ipv4}/32 dev eth0"),
                format!("route add {GATEWAY}/32 dev eth0 scope link"),
                format!("route add 0.0.0.0/0 via {GATEWAY} dev eth0"),
                format!("neighbour add {GATEWAY} lladdr {mac} dev eth0 nud permanent"),
            ],
        );
        Pod {
            netns,
            host,
            mac,
            ipv4,
        }
    }

    fn ifindex(&self, interface: &str) -> u32 {
        let interface = interface.to_owned();
        netns::run_in(self.name(), move || {
            datapath::attach::ifindex_of(&interface).expect("interface in the node namespace")
        })
        .unwrap()
    }
}

/// Removes the test's bpffs folder (and with it every attachment) when dropped.
struct Installed(Pins);

impl Drop for Installed {
    fn drop(&mut self) {
        if self.0.root().exists()
            && let Err(e) = datapath::uninstall(&self.0)
        {
            eprintln!("uninstalling {}: {e}", self.0.root().display());
        }
    }
}

/// TCP echo servers on `ports` in a pod, on a thread that lives in its namespace.
struct EchoServers {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServers {
    fn start(netns: &str, ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, listening) = std::sync::mpsc::channel();
        let (netns, ports, stopped) = (netns.to_owned(), ports.to_vec(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            netns::enter(&netns).expect("entering the pod namespace");
            let listeners: Vec<TcpListener> = ports
                .iter()
                .map(|port| {
                    let listener = TcpListener::bind(("0.0.0.0", *port)).expect("bind");
                    listener.set_nonblocking(true).expect("nonblocking");
                    listener
                })
                .collect();
            ready.send(()).expect("the test waits");
            while !stopped.load(Ordering::Relaxed) {
                for listener in &listeners {
                    if let Ok((stream, _)) = listener.accept() {
                        std::thread::spawn(move || echo(stream));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        listening.recv().expect("echo servers listening");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The agent and the CNI plugin as child processes
// ---------------------------------------------------------------------------------------

/// `palisade agent --kubernetes` in the node namespace; SIGTERM by PID (then SIGKILL) and
/// reaped on drop.
struct KubeAgent {
    child: Option<Child>,
    log: PathBuf,
    output: PathBuf,
    node_netns: String,
}

impl KubeAgent {
    fn start(node: &Node, pins: &Pins, dir: &Path, kubeconfig: &Path) -> Result<Self> {
        let log = dir.join("agent.log");
        let output = dir.join("flows.jsonl");
        let child = Command::new(tests::palisade_bin())
            .args(["agent", "--kubernetes", "--node-name", NODE, "--http", HTTP])
            .arg("--netns")
            .arg(node.name())
            .arg("--bpffs-root")
            .arg(pins.root())
            .arg("--cni-socket")
            .arg(dir.join("cni.sock"))
            .arg("--output")
            .arg(&output)
            // The API server comes from KUBECONFIG only: no in-cluster variables, no
            // proxy between the agent and the fake.
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("PALISADE_NODE")
            .env_remove("PALISADE_MODE")
            .env_remove("PALISADE_DEFAULT")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning palisade agent --kubernetes")?;
        Ok(Self {
            child: Some(child),
            log,
            output,
            node_netns: node.name().to_owned(),
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn records(&self) -> Vec<FlowRecord> {
        read_records(&self.output)
    }

    /// GET `path` from the agent's HTTP port, from inside the node namespace.
    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.node_netns, HTTP.parse().unwrap(), path)
    }

    /// Wait (bounded) until `/readyz` answers 200.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("agent exited ({status}) before ready:\n{}", self.log_text());
            }
            let last = match self.get("/readyz") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "agent not ready after 30 s (last /readyz: {last}):\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Poll the flow records until one satisfies `wanted`.
    fn wait_record(&self, what: &str, wanted: impl Fn(&FlowRecord) -> bool) -> FlowRecord {
        let found = poll(STEP, || self.records().into_iter().find(|r| wanted(r)));
        found.unwrap_or_else(|| {
            panic!(
                "no flow record {what} after {STEP:?}; records:\n{}\nagent log:\n{}",
                records_text(&self.records()),
                self.log_text()
            )
        })
    }

    /// Poll `/metrics` until every line of `expected` is in it; return the text.
    fn wait_metrics(&self, expected: &[&str]) -> String {
        let mut text = String::new();
        let ok = poll(STEP, || {
            text = match self.get("/metrics") {
                Ok((200, body)) => body,
                _ => return None,
            };
            expected
                .iter()
                .all(|line| text.lines().any(|l| l == *line))
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "/metrics lacks some of {expected:#?} after {STEP:?}:\n{text}"
        );
        text
    }
}

impl KubeAgent {
    /// SIGKILL, as a crash or an OOM kill would end it, and reap it.
    fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            tests::agent::stop(child);
        }
    }
}

/// One HTTP/1.0 GET (so the answer is not chunked) over a connection made in `netns`.
fn http_get(netns: &str, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_owned();
    netns::run_in(netns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
        Ok((status, body.to_owned()))
    })
    .map_err(std::io::Error::other)?
}

/// What the palisade-cni binary answered.
struct CniOutcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run the real `palisade-cni` (built next to `palisade`) as a runtime would: CNI_*
/// variables, the network configuration on stdin.
/// What a runtime gives `palisade-cni` for pod `name` of `shop` in sandbox `pod`, chained
/// after a ptp CNI: the previous result, the network config, the CNI_* variables.
fn cni_call(
    id: &str,
    pod: &Pod,
    name: &str,
    uid: &str,
    socket: &Path,
) -> (Value, Value, [(&'static str, String); 4]) {
    let prev_result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": pod.host, "mac": pod.mac},
            {"name": "eth0", "sandbox": pod.netns.path()},
        ],
        "ips": [{"address": format!("{}/32", pod.ipv4), "gateway": GATEWAY, "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
        "dns": {},
    });
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "k8s",
        "type": "palisade-cni",
        "socket": socket,
        "timeout": "10s",
        "prevResult": prev_result,
    });
    let container = format!("{id}-{name}-sandbox");
    let env = [
        ("CNI_CONTAINERID", container.clone()),
        ("CNI_NETNS", pod.netns.path().display().to_string()),
        ("CNI_IFNAME", "eth0".to_owned()),
        (
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name};\
                 K8S_POD_INFRA_CONTAINER_ID={container};K8S_POD_UID={uid}"
            ),
        ),
    ];
    (prev_result, config, env)
}

fn palisade_cni(command: &str, env: &[(&str, String)], config: &Value) -> CniOutcome {
    let bin = tests::palisade_bin().with_file_name("palisade-cni");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bin palisade-cni`)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", bin.parent().unwrap())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning palisade-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().expect("palisade-cni");
    CniOutcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// Call `f` until it returns `Some` or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn records_text(records: &[FlowRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn namespace(mode: &str) -> Value {
    json!({"metadata": {"name": "shop", "labels": {
        "kubernetes.io/metadata.name": "shop",
        "team": "shop",
        "palisade.io/mode": mode,
    }}})
}

/// A pod of `shop` on node-1; `ip` None: not yet given an address (Pending).
fn pod(name: &str, app: &str, ip: Option<IpAddr>) -> Value {
    let status = match ip {
        Some(ip) => json!({
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "hostIP": GATEWAY,
        }),
        None => json!({"phase": "Pending"}),
    };
    json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": app, "image": "registry.example/shop/app:1"}],
        },
        "status": status,
    })
}

fn is_pod(peer: &model::Peer, name: &str) -> bool {
    peer.pod.as_deref() == Some(&format!("shop/{name}"))
}

// ---------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------

#[test]
fn kubernetes_agent_follows_the_api_server_and_the_cni() {
    require_root!();
    let id = unique_id();
    let dir = tempfile::tempdir().unwrap();
    // Dropped last: after the agent stopped and the namespaces are gone.
    let installed = Installed(Pins::new(format!("/sys/fs/bpf/palisade-k8s-{id}")));
    let node = Node::new(&id);
    let client = node.add_pod("client", 2);
    let server = node.add_pod("server", 3);
    let _servers = EchoServers::start(&server.netns.name, &[8080, 9090]);
    let to_server = |port| SocketAddr::new(server.ipv4, port);

    // a. The cluster as the API server holds it, then the agent.
    let api = FakeApiServer::start_in_netns(node.name()).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    api.apply("namespaces", namespace("enforce")).unwrap();
    api.apply(
        "nodes",
        json!({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
               "status": {"addresses": [{"type": "InternalIP", "address": GATEWAY}]}}),
    )
    .unwrap();
    api.apply("pods", pod("client", "client", Some(client.ipv4)))
        .unwrap();
    api.apply("pods", pod("server", "server", Some(server.ipv4)))
        .unwrap();
    api.apply(
        "networkpolicies",
        json!({
            "metadata": {"name": "server-from-client", "namespace": "shop"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": 8080}],
                }],
            },
        }),
    )
    .unwrap();
    // `late` may send nothing: its own endpoint must judge its first packet.
    api.apply(
        "networkpolicies",
        json!({
            "metadata": {"name": "late-no-egress", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "late"}}, "policyTypes": ["Egress"]},
        }),
    )
    .unwrap();

    let mut agent = KubeAgent::start(&node, &installed.0, dir.path(), &kubeconfig).unwrap();
    agent.wait_ready().unwrap();
    let requests = api.requests();
    for path in [
        "/api/v1/pods",
        "/api/v1/namespaces",
        "/api/v1/nodes",
        "/api/v1/services",
        "/apis/networking.k8s.io/v1/networkpolicies",
        "/apis/apps/v1/replicasets",
        "/apis/batch/v1/jobs",
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with(&format!("GET {path}?")) && r.contains("watch=true")),
            "the agent does not watch {path}; requests: {requests:#?}"
        );
        // Every node's agent lists every pod at start: from the API server's cache.
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with(&format!("GET {path}?"))
                    && !r.contains("watch=true")
                    && r.contains("resourceVersion=0")),
            "the agent does not list {path} from the watch cache; requests: {requests:#?}"
        );
    }

    // b. The policy is enforced: 8080 from client passes, 9090 does not.
    assert_eq!(
        traffic::tcp_echo(&client.netns.name, 41001, to_server(8080), b"hello").unwrap(),
        b"hello",
        "client -> server:8080 is allowed by shop/server-from-client; log:\n{}",
        agent.log_text()
    );
    assert!(
        !traffic::tcp_connects(&client.netns.name, to_server(9090)),
        "client -> server:9090 must be dropped (enforce, no rule allows it)"
    );
    let denied = agent.wait_record("denying client -> server:9090", |r| {
        r.verdict == Verdict::Deny
            && r.direction == Direction::Ingress
            && is_pod(&r.local, "server")
            && r.local.port == 9090
    });
    assert!(is_pod(&denied.remote, "client"), "{denied:?}");
    agent.wait_record("allowing client -> server:8080 by its policy", |r| {
        r.verdict == Verdict::Allow
            && r.direction == Direction::Ingress
            && is_pod(&r.local, "server")
            && r.local.port == 8080
            && r.policy
                .as_deref()
                .is_some_and(|p| p.contains("shop/server-from-client"))
    });
    agent.wait_metrics(&[r#"palisade_endpoints{mode="enforce"} 2"#]);

    // c. A new pod, created as the kubelet and a chained CNI create it.
    let late_uid = api.apply("pods", pod("late", "late", None)).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let late = node.add_pod("late", 4);
    let late_ifindex = node.ifindex(&late.host);
    let _late_server = EchoServers::start(&late.netns.name, &[7000]);
    let (prev_result, config, cni_env) =
        cni_call(&id, &late, "late", &late_uid, &dir.path().join("cni.sock"));
    let started = Instant::now();
    let added = palisade_cni("ADD", &cni_env, &config);
    // Informational (BENCHMARKS.md): the plugin's whole run, attach and policy included.
    eprintln!("palisade-cni ADD answered in {:?}", started.elapsed());
    assert_eq!(
        added.code,
        Some(0),
        "palisade-cni ADD failed: {}\n{}\nagent log:\n{}",
        added.stdout,
        added.stderr,
        agent.log_text()
    );
    let printed: Value = serde_json::from_str(&added.stdout).expect("ADD prints a result");
    assert_eq!(printed, prev_result, "ADD passes the previous result on");
    assert!(
        added.stderr.contains(&format!(
            "endpoint programmed (ifindex {late_ifindex}, mode Enforce)"
        )),
        "{}",
        added.stderr
    );
    // Right after ADD: the very first connection is judged, by late's own endpoint.
    assert!(
        !traffic::tcp_connects(&late.netns.name, to_server(8080)),
        "late -> server:8080 must be dropped from its first packet"
    );
    agent.wait_record("denying late's first connection at late's endpoint", |r| {
        r.verdict == Verdict::Deny
            && r.direction == Direction::Egress
            && r.ifindex == late_ifindex
            && is_pod(&r.local, "late")
            && r.remote.port == 8080
    });
    // ... and by its rules, not only isolated: nothing selects late for ingress, so the
    // Kubernetes default lets client in, before the pod's status has its address.
    assert!(
        traffic::tcp_connects(&client.netns.name, SocketAddr::new(late.ipv4, 7000)),
        "client -> late:7000 must pass right after ADD (no ingress policy selects late); log:\n{}",
        agent.log_text()
    );
    // The kubelet writes the address into the pod's status.
    api.apply("pods", pod("late", "late", Some(late.ipv4)))
        .unwrap();
    agent.wait_metrics(&[r#"palisade_endpoints{mode="enforce"} 3"#]);

    // e. The denial became a Kubernetes Event on the pod.
    let event = poll(STEP, || {
        api.events()
            .into_iter()
            .find(|e| e["reason"] == "ConnectionDenied" && e["regarding"]["name"] == "late")
    })
    .unwrap_or_else(|| {
        panic!(
            "no ConnectionDenied event about shop/late; events: {:#?}\nagent log:\n{}",
            api.events(),
            agent.log_text()
        )
    });
    assert_eq!(event["regarding"]["namespace"], "shop", "{event:#}");
    assert_eq!(event["regarding"]["kind"], "Pod", "{event:#}");
    assert_eq!(event["type"], "Warning", "{event:#}");
    assert_eq!(event["reportingController"], "palisade-agent", "{event:#}");
    assert!(
        event["note"].as_str().is_some_and(|n| n.contains("8080")),
        "{event:#}"
    );

    // d. The namespace goes to monitor, live: the same connection now passes, recorded.
    api.apply("namespaces", namespace("monitor")).unwrap();
    let passed = poll(STEP, || {
        traffic::tcp_connects(&late.netns.name, to_server(8080)).then_some(())
    });
    assert!(
        passed.is_some(),
        "late -> server:8080 still dropped {STEP:?} after shop went to monitor; log:\n{}",
        agent.log_text()
    );
    let would = agent.wait_record("would-deny for late -> server:8080", |r| {
        r.verdict == Verdict::WouldDeny
            && r.mode == model::Mode::Monitor
            && ((is_pod(&r.local, "late") && r.remote.port == 8080)
                || (is_pod(&r.local, "server") && r.local.port == 8080))
    });
    assert!(
        is_pod(&would.remote, "server") || is_pod(&would.remote, "late"),
        "{would:?}"
    );

    // f. Metrics: flows by verdict, endpoints by mode.
    let metrics = agent.wait_metrics(&[
        r#"palisade_endpoints{mode="monitor"} 3"#,
        r#"palisade_endpoints{mode="enforce"} 0"#,
    ]);
    for verdict in ["allow", "deny", "would-deny"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("palisade_flows_total{")
                    && l.contains(&format!("verdict=\"{verdict}\""))
                    && l.contains("namespace=\"shop\"")),
            "no palisade_flows_total line for {verdict} in shop:\n{metrics}"
        );
    }

    // g. The pod goes: CNI DEL, its sandbox and veth removed, its API object deleted.
    let deleted = palisade_cni("DEL", &cni_env, &config);
    assert_eq!(
        deleted.code,
        Some(0),
        "{}\n{}",
        deleted.stdout,
        deleted.stderr
    );
    drop(late);
    api.delete("pods", "shop", "late").unwrap();
    let detached = poll(STEP, || {
        let pinned = installed.0.links().ok()?;
        let log = agent.log_text();
        let logged = log
            .lines()
            .any(|l| l.contains("endpoint detached") && l.contains("shop/late"));
        (logged
            && !pinned
                .iter()
                .any(|(ifindex, _, _)| *ifindex == late_ifindex))
        .then_some(())
    });
    assert!(
        detached.is_some(),
        "late (ifindex {late_ifindex}) not detached; pinned: {:?}\nlog:\n{}",
        installed.0.links(),
        agent.log_text()
    );
    agent.wait_metrics(&[r#"palisade_endpoints{mode="monitor"} 2"#]);
    // The others are still protected.
    assert_eq!(
        traffic::tcp_echo(&client.netns.name, 41002, to_server(8080), b"again").unwrap(),
        b"again"
    );

    // h. A crash never opens enforcement, and a restart does not either: back to enforce,
    // then the agent is killed; what it pinned keeps judging, and the new agent takes the
    // endpoints over in place (no detach, no gap).
    api.apply("namespaces", namespace("enforce")).unwrap();
    agent.wait_metrics(&[r#"palisade_endpoints{mode="enforce"} 2"#]);
    agent.kill_hard();
    assert!(
        !traffic::tcp_connects(&client.netns.name, to_server(9090)),
        "client -> server:9090 must stay dropped while the agent is down"
    );
    assert_eq!(
        traffic::tcp_echo(&client.netns.name, 41003, to_server(8080), b"down").unwrap(),
        b"down"
    );
    let mut agent = KubeAgent::start(&node, &installed.0, dir.path(), &kubeconfig).unwrap();
    agent.wait_ready().unwrap();
    agent.wait_metrics(&[r#"palisade_endpoints{mode="enforce"} 2"#]);
    let log = agent.log_text();
    assert!(
        !log.lines().any(|l| l.contains("endpoint detached")),
        "the restarted agent detached a running pod's endpoint:\n{log}"
    );
    assert!(
        !traffic::tcp_connects(&client.netns.name, to_server(9090)),
        "client -> server:9090 must stay dropped after the restart"
    );
    assert_eq!(
        traffic::tcp_echo(&client.netns.name, 41004, to_server(8080), b"back").unwrap(),
        b"back"
    );

    // i. A burst of pods starting at once (their ADDs queue and are handled together):
    // every ADD succeeds, and every pod's first packet is judged by its own policy.
    let socket = dir.path().join("cni.sock");
    let burst: Vec<(Pod, String)> = (0..6u8)
        .map(|i| {
            let name = format!("burst-{i}");
            let uid = api.apply("pods", pod(&name, "late", None)).unwrap()["metadata"]["uid"]
                .as_str()
                .unwrap()
                .to_owned();
            (node.add_pod(&name, 10 + i), uid)
        })
        .collect();
    let outcomes: Vec<CniOutcome> = std::thread::scope(|scope| {
        let runs: Vec<_> = burst
            .iter()
            .enumerate()
            .map(|(i, (sandbox, uid))| {
                let (_, config, env) = cni_call(&id, sandbox, &format!("burst-{i}"), uid, &socket);
                scope.spawn(move || palisade_cni("ADD", &env, &config))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (i, added) in outcomes.iter().enumerate() {
        assert_eq!(
            added.code,
            Some(0),
            "burst-{i}: palisade-cni ADD failed: {}\n{}\nagent log:\n{}",
            added.stdout,
            added.stderr,
            agent.log_text()
        );
    }
    for (sandbox, _) in &burst {
        assert!(
            !traffic::tcp_connects(&sandbox.netns.name, to_server(8080)),
            "{}: its first connection must be dropped (late-no-egress selects it)",
            sandbox.netns.name
        );
    }
    agent.wait_metrics(&[r#"palisade_endpoints{mode="enforce"} 8"#]);
}

// ---------------------------------------------------------------------------------------
// The fake API server against kube's own clients (no root needed)
// ---------------------------------------------------------------------------------------

#[test]
fn the_fake_api_server_serves_kube_watchers_and_events() {
    use futures::{StreamExt as _, TryStreamExt as _};
    use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod as K8sPod};
    use kube::{
        Api, Client, Resource as _,
        api::ListParams,
        config::{KubeConfigOptions, Kubeconfig},
        core::PartialObjectMeta,
        runtime::{
            events::{Event, EventType, Recorder, Reporter},
            watcher::{self, Event as WatchEvent},
        },
    };

    let api = FakeApiServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    api.kubeconfig(&path).unwrap();
    api.apply("namespaces", namespace("learn")).unwrap();
    api.apply("pods", pod("a", "web", Some("10.244.9.2".parse().unwrap())))
        .unwrap();
    api.apply(
        "replicasets",
        json!({"metadata": {"name": "web-5d4f", "namespace": "shop"},
               "spec": {"selector": {"matchLabels": {"app": "web"}}}}),
    )
    .unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&path).unwrap(),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let client = Client::try_from(config).unwrap();

        // Full objects: list (from the cache), then the changes after it.
        let pods: Api<K8sPod> = Api::all(client.clone());
        let mut events =
            watcher::watcher(pods.clone(), watcher::Config::default().any_semantic()).boxed();
        let mut names = Vec::new();
        loop {
            match next(&mut events).await {
                WatchEvent::Init => {}
                WatchEvent::InitApply(p) => names.push(p.metadata.name.unwrap()),
                WatchEvent::InitDone => break,
                other => panic!("{other:?} before the list ended"),
            }
        }
        assert_eq!(names, ["a"]);
        api.apply("pods", pod("b", "web", None)).unwrap();
        match next(&mut events).await {
            WatchEvent::Apply(p) => {
                assert_eq!(p.metadata.name.as_deref(), Some("b"));
                assert_eq!(p.spec.unwrap().node_name.as_deref(), Some(NODE));
            }
            other => panic!("expected b applied, got {other:?}"),
        }
        api.delete("pods", "shop", "a").unwrap();
        match next(&mut events).await {
            WatchEvent::Delete(p) => assert_eq!(p.metadata.name.as_deref(), Some("a")),
            other => panic!("expected a deleted, got {other:?}"),
        }

        // Metadata only, as the agent watches ReplicaSets and Jobs.
        let replica_sets: Api<PartialObjectMeta<ReplicaSet>> = Api::all(client.clone());
        let mut metas =
            watcher::watcher(replica_sets, watcher::Config::default().any_semantic()).boxed();
        let mut listed = Vec::new();
        loop {
            match next(&mut metas).await {
                WatchEvent::InitApply(m) => listed.push(m),
                WatchEvent::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].metadata.name.as_deref(), Some("web-5d4f"));
        assert_eq!(
            listed[0].types.as_ref().map(|t| t.kind.as_str()),
            Some("PartialObjectMetadata")
        );

        // What the fake does not implement it refuses, rather than answering wrongly.
        let filtered = pods.list(&ListParams::default().labels("app=web")).await;
        assert!(filtered.is_err(), "{filtered:?}");

        // Events: created, then the same one again becomes a series (a merge patch).
        let pod_b = Api::<K8sPod>::namespaced(client.clone(), "shop")
            .get("b")
            .await
            .unwrap();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "palisade-agent".into(),
                instance: Some(NODE.into()),
            },
        );
        let event = Event {
            type_: EventType::Warning,
            reason: "ConnectionDenied".into(),
            note: Some("denied".into()),
            action: "Deny".into(),
            secondary: None,
        };
        let reference = pod_b.object_ref(&());
        recorder.publish(&event, &reference).await.unwrap();
        recorder.publish(&event, &reference).await.unwrap();
        let posted = api.events();
        assert_eq!(posted.len(), 1, "{posted:#?}");
        assert_eq!(posted[0]["reason"], "ConnectionDenied");
        assert_eq!(posted[0]["regarding"]["name"], "b");
        assert_eq!(posted[0]["series"]["count"], 2, "{:#}", posted[0]);

        // The watch stays open and idle watches get bookmarks (they carry no object).
        let idle =
            tokio::time::timeout(tests::fake_apiserver::BOOKMARK_EVERY * 2, events.try_next())
                .await;
        assert!(idle.is_err(), "an idle watch yields nothing: {idle:?}");
    });
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/api/v1/pods?") && r.contains("allowWatchBookmarks=true")),
        "{requests:#?}"
    );
}

/// The next item of a watch stream, within 10 s, without error.
async fn next<T, E: std::fmt::Debug>(
    stream: &mut (impl futures::Stream<Item = Result<T, E>> + Unpin),
) -> T {
    use futures::StreamExt as _;
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch goes on")
        .expect("no watch error")
}
