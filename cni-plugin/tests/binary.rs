//! Runs the built `palisade-cni` the way a container runtime does (environment + stdin)
//! against a fake agent: a std unix listener in a temporary folder.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cni_plugin::protocol::{Command as AgentCommand, EndpointMode, Programmed, Request, Response};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_palisade-cni");

/// What the fake agent does with each request.
#[derive(Clone)]
enum Behaviour {
    Answer(Response),
    /// Reads the request and keeps the connection open without answering.
    Silent,
}

struct FakeAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    requests: mpsc::Receiver<Request>,
}

fn fake_agent(behaviour: Behaviour) -> FakeAgent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (tx, requests) = mpsc::channel();
    // The thread outlives the test's interest in it; it ends with the test process.
    std::thread::spawn(move || {
        let mut held: Vec<UnixStream> = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let Ok(request) = Request::from_line(line.trim_end().as_bytes()) else {
                continue;
            };
            let _ = tx.send(request);
            let mut stream = reader.into_inner();
            match &behaviour {
                Behaviour::Answer(response) => {
                    let _ = stream.write_all(&response.to_line());
                }
                Behaviour::Silent => held.push(stream),
            }
        }
    });
    FakeAgent {
        _dir: dir,
        socket,
        requests,
    }
}

struct Run {
    stdout: String,
    stderr: String,
    code: Option<i32>,
    took: Duration,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

fn run(bin: &Path, vars: &[(&str, &str)], stdin: &str) -> Run {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        stdout: String::from_utf8(output.stdout).unwrap().trim().to_string(),
        stderr: String::from_utf8(output.stderr).unwrap(),
        code: output.status.code(),
        took: started.elapsed(),
    }
}

fn env(command: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "2b8e7a0c"),
        ("CNI_NETNS", "/var/run/netns/cni-2b8e"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=77c1",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "veth9c1d", "mac": "7e:00:00:00:00:01"},
            {"name": "eth0", "mac": "7e:00:00:00:00:02", "sandbox": "/var/run/netns/cni-2b8e"}
        ],
        "ips": [
            {"address": "10.244.3.9/24", "gateway": "10.244.3.1", "interface": 1},
            {"address": "fd00:244:3::9/64", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn config(socket: &Path, extra: Value) -> String {
    let mut conf = json!({
        "cniVersion": "1.1.0",
        "name": "k8s-pod-network",
        "type": "palisade-cni",
        "socket": socket.display().to_string(),
        "timeout": "5s",
        "prevResult": prev_result(),
    });
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    conf.to_string()
}

fn programmed() -> Response {
    Response::ok(Some(Programmed {
        ifindex: 41,
        mode: EndpointMode::Enforce,
    }))
}

#[test]
fn add_returns_prev_result_once_the_agent_programmed_the_endpoint() {
    let agent = fake_agent(Behaviour::Answer(programmed()));
    let out = run(
        Path::new(BIN),
        &env("ADD"),
        &config(&agent.socket, json!({})),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut expected = prev_result();
    expected["cniVersion"] = json!("1.1.0");
    assert_eq!(out.json(), expected);
    assert!(out.stderr.contains("ifindex 41"), "{}", out.stderr);

    let request = agent.requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(request.command, AgentCommand::Add);
    assert_eq!(request.container_id, "2b8e7a0c");
    assert_eq!(request.netns, "/var/run/netns/cni-2b8e");
    assert_eq!(request.ifname, "eth0");
    let pod = request.pod.unwrap();
    assert_eq!(
        (
            pod.namespace.as_str(),
            pod.name.as_str(),
            pod.uid.as_deref()
        ),
        ("shop", "web-0", Some("77c1"))
    );
    let ips: Vec<String> = request
        .ips
        .iter()
        .map(|ip| format!("{}/{}", ip.address, ip.prefix_len))
        .collect();
    assert_eq!(ips, ["10.244.3.9/24", "fd00:244:3::9/64"]);
    assert_eq!(request.host_interface.as_deref(), Some("veth9c1d"));
    assert_eq!(request.timeout_ms, 5000);
}

#[test]
fn add_fails_with_the_agents_reason() {
    let agent = fake_agent(Behaviour::Answer(Response::error(
        "no identity for pod shop/web-0 yet",
    )));
    let out = run(
        Path::new(BIN),
        &env("ADD"),
        &config(&agent.socket, json!({})),
    );
    assert_eq!(out.code, Some(1));
    let error = out.json();
    assert_eq!(error["cniVersion"], "1.1.0");
    assert_eq!(error["code"], 102);
    let msg = error["msg"].as_str().unwrap();
    assert!(msg.contains("no identity for pod shop/web-0 yet"), "{msg}");
    assert!(error["details"].is_string());
}

#[test]
fn add_times_out_within_the_bound_when_the_agent_never_answers() {
    let agent = fake_agent(Behaviour::Silent);
    let out = run(
        Path::new(BIN),
        &env("ADD"),
        &config(&agent.socket, json!({"timeout": "1s"})),
    );
    assert_eq!(out.code, Some(1));
    assert!(out.took >= Duration::from_secs(1), "{:?}", out.took);
    assert!(out.took < Duration::from_secs(4), "{:?}", out.took);
    let error = out.json();
    assert_eq!(error["code"], 101);
    let msg = error["msg"].as_str().unwrap();
    assert!(msg.contains(&agent.socket.display().to_string()), "{msg}");
    assert!(msg.contains("1s"), "{msg}");
    // The request did reach the agent: the wait, not the connect, timed out.
    assert!(agent.requests.try_recv().is_ok());
}

#[test]
fn add_without_an_agent_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let out = run(Path::new(BIN), &env("ADD"), &config(&socket, json!({})));
    assert_eq!(out.code, Some(1));
    let error = out.json();
    assert_eq!(error["code"], 100);
    let msg = error["msg"].as_str().unwrap();
    assert!(msg.contains(&socket.display().to_string()), "{msg}");
    assert!(msg.contains("not reachable"), "{msg}");
}

#[test]
fn add_with_failure_policy_ignore_starts_the_pod_without_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let conf = config(
        &socket,
        json!({"failurePolicy": "Ignore", "cniVersion": "0.4.0"}),
    );
    let out = run(Path::new(BIN), &env("ADD"), &conf);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let mut expected = prev_result();
    expected["cniVersion"] = json!("0.4.0");
    assert_eq!(out.json(), expected);
    assert!(
        out.stderr.contains("failurePolicy Ignore"),
        "{}",
        out.stderr
    );

    // A refusal is not unavailability: Ignore does not forgive it.
    let agent = fake_agent(Behaviour::Answer(Response::error("interface is gone")));
    let conf = config(&agent.socket, json!({"failurePolicy": "Ignore"}));
    let out = run(Path::new(BIN), &env("ADD"), &conf);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.json()["code"], 102);
}

#[test]
fn del_succeeds_with_the_agent_down_and_tells_it_when_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let mut vars = env("DEL");
    vars.retain(|(k, _)| *k != "CNI_NETNS");
    for _ in 0..2 {
        let out = run(Path::new(BIN), &vars, &config(&socket, json!({})));
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), ""),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("not told"), "{}", out.stderr);
    }

    let agent = fake_agent(Behaviour::Answer(Response::ok(None)));
    let out = run(Path::new(BIN), &vars, &config(&agent.socket, json!({})));
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""));
    let request = agent.requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(request.command, AgentCommand::Del);
    assert_eq!(request.netns, "");
    assert_eq!(request.container_id, "2b8e7a0c");
}

#[test]
fn check_passes_only_when_the_agent_confirms() {
    let agent = fake_agent(Behaviour::Answer(programmed()));
    let out = run(
        Path::new(BIN),
        &env("CHECK"),
        &config(&agent.socket, json!({})),
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), ""),
        "{}",
        out.stderr
    );
    assert_eq!(
        agent
            .requests
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .command,
        AgentCommand::Check
    );

    let agent = fake_agent(Behaviour::Answer(Response::error(
        "endpoint not programmed",
    )));
    let out = run(
        Path::new(BIN),
        &env("CHECK"),
        &config(&agent.socket, json!({})),
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains("endpoint not programmed")
    );
}

#[test]
fn status_reports_an_unreachable_agent_as_not_available() {
    let dir = tempfile::tempdir().unwrap();
    let vars = [("CNI_COMMAND", "STATUS")];
    let out = run(
        Path::new(BIN),
        &vars,
        &config(&dir.path().join("x.sock"), json!({})),
    );
    assert_eq!(out.code, Some(1));
    assert_eq!(out.json()["code"], 50);

    let agent = fake_agent(Behaviour::Answer(Response::ok(None)));
    let out = run(Path::new(BIN), &vars, &config(&agent.socket, json!({})));
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""));
    assert_eq!(
        agent
            .requests
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .command,
        AgentCommand::Status
    );
}

#[test]
fn version_lists_supported_versions() {
    let out = run(
        Path::new(BIN),
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.1.0"}"#,
    );
    assert_eq!(out.code, Some(0));
    assert_eq!(
        out.json(),
        json!({"cniVersion": "1.1.0",
               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn install_then_uninstall_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = conf_dir.join("10-ptp.conflist");
    std::fs::write(
        &conflist,
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"ptp"}]}"#,
    )
    .unwrap();

    let admin = |args: &[&str]| {
        let out = Command::new(BIN).env_clear().args(args).output().unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let install = [
        "install",
        "--bin-dir",
        bin_dir.to_str().unwrap(),
        "--conf-dir",
        conf_dir.to_str().unwrap(),
        "--socket",
        "/run/palisade/test.sock",
        "--timeout=20s",
    ];
    for _ in 0..2 {
        let (code, stderr) = admin(&install);
        assert_eq!(code, Some(0), "{stderr}");
    }
    let conf: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(
        conf["plugins"],
        json!([{"type": "ptp"},
               {"type": "palisade-cni", "socket": "/run/palisade/test.sock", "timeout": "20s"}])
    );
    // The installed copy is a working plugin.
    let out = run(
        &bin_dir.join("palisade-cni"),
        &[("CNI_COMMAND", "VERSION")],
        "",
    );
    assert_eq!(out.code, Some(0));
    assert_eq!(out.json()["cniVersion"], "1.1.0");

    let (code, stderr) = admin(&[
        "uninstall",
        "--conf-dir",
        conf_dir.to_str().unwrap(),
        "--bin-dir",
        bin_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let conf: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(conf["plugins"], json!([{"type": "ptp"}]));
    assert!(!bin_dir.join("palisade-cni").exists());

    let (code, stderr) = admin(&["install", "--conf-dir", conf_dir.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--bin-dir is required"), "{stderr}");
    let (code, _) = admin(&[]);
    assert_eq!(code, Some(2));
}
