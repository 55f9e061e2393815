//! End-to-end tests of `palisade lab` (root): real namespaces, veths, routes, nftables
//! services and echo servers. Without the agent unless a test says otherwise, so they test
//! the lab, not the datapath. Each test's lab has its own name, so they run in parallel.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use enforcer::lab::{self, Family, Lab, ProbeRequest, ProbeResult, Protocol, Topology, UpOptions};
use tests::{
    lab::{TestLab, chain, leftovers, program},
    require_root, unique_id,
};

/// Two served ports per pod (TCP and UDP 7000) except the StatefulSet's (TCP 7001 only),
/// a service in front of the Deployment, one without backends, and an external host.
const TOPOLOGY: &str = "
namespaces:
  - name: app
    labels: {team: a}
pods:
  - name: app/client
    labels: {role: client}
    ports: [{port: 7000}, {port: 7000, protocol: UDP}]
workloads:
  - kind: Deployment
    name: web
    namespace: app
    replicas: 2
    labels: {app: web}
    ports: [{port: 7000, name: echo}, {port: 7000, protocol: UDP, name: echo-udp}]
  - kind: StatefulSet
    name: db
    namespace: app
    labels: {app: db}
    ports: [{port: 7001}]
services:
  - name: web
    namespace: app
    selector: {app: web}
    ports:
      - {name: tcp, port: 80, targetPort: echo}
      - {name: udp, port: 80, protocol: UDP, targetPort: echo-udp}
  - name: nobody
    namespace: app
    selector: {app: nobody}
    ports: [{port: 81}]
externals:
  - name: ext.example.com
    addresses: [203.0.113.7, 2001:db8::7]
    ports: [{port: 7000}, {port: 7000, protocol: UDP}]
";

fn probe(lab: &Lab, port: u16, protocol: Protocol) -> lab::probe::Report {
    lab.probe(&ProbeRequest::new(port, protocol))
        .unwrap_or_else(|e| panic!("probe: {}", chain(&e)))
}

/// Every result of a report with its source and target.
fn results(report: &lab::probe::Report) -> Vec<(Family, String, String, ProbeResult)> {
    report
        .matrices
        .iter()
        .flat_map(|m| {
            m.results.iter().flat_map(move |(from, row)| {
                row.iter()
                    .map(move |(to, r)| (m.family, from.clone(), to.clone(), r.clone()))
            })
        })
        .collect()
}

fn all_addresses(lab: &Lab) -> BTreeSet<IpAddr> {
    lab.pods().iter().flat_map(|p| p.addresses()).collect()
}

#[test]
fn pods_reach_pods_and_external_hosts_over_tcp_and_udp_on_both_families() {
    require_root!();
    let lab = TestLab::up(TOPOLOGY);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let report = probe(&lab, 7000, protocol);
        let all = results(&report);
        // 4 pods, each to 3 other pods and the external host, twice (IPv4, IPv6).
        assert_eq!(all.len(), 4 * 4 * 2, "{}", report.render());
        for (family, from, to, result) in all {
            // The StatefulSet's pod serves 7001 only: a real refusal, not a timeout.
            let expected = if to == "app/db-0" {
                ProbeResult::Refused
            } else {
                ProbeResult::Ok
            };
            assert_eq!(
                result, expected,
                "{protocol} {from} -> {to} over {family:?}"
            );
        }
    }
}

#[test]
fn a_port_nobody_serves_is_refused() {
    require_root!();
    let lab = TestLab::up(TOPOLOGY);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let report = probe(&lab, 9, protocol);
        for (family, from, to, result) in results(&report) {
            assert_eq!(
                result,
                ProbeResult::Refused,
                "{protocol} {from} -> {to} over {family:?}"
            );
        }
    }
}

#[test]
fn cluster_ips_reach_a_backend_also_from_the_backends_themselves() {
    require_root!();
    let lab = TestLab::up(TOPOLOGY);
    let web = lab.service("app/web").unwrap().clone();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for pod in lab.pods() {
            for ip in web.addresses() {
                // Several tries: the backend is picked at random, each must answer.
                for _ in 0..4 {
                    let result = lab.probe_one(&pod.name, ip, 80, protocol).unwrap();
                    assert_eq!(
                        result,
                        ProbeResult::Ok,
                        "{protocol} {} -> {ip}:80",
                        pod.name
                    );
                }
            }
        }
    }
    // The probe matrix includes services exposing the port.
    let report = probe(&lab, 80, Protocol::Tcp);
    assert!(
        results(&report)
            .iter()
            .any(|(_, _, to, r)| to == "app/Service/web" && *r == ProbeResult::Ok),
        "{}",
        report.render()
    );
    // A service without backends rejects, as kube-proxy does.
    let nobody = lab.service("app/nobody").unwrap().clone();
    for ip in nobody.addresses() {
        let result = lab.probe_one("app/client", ip, 81, Protocol::Tcp).unwrap();
        assert_eq!(result, ProbeResult::Refused, "{ip}:81");
    }
}

#[test]
fn a_restart_gives_new_names_and_addresses_that_answer() {
    require_root!();
    let mut lab = TestLab::up(TOPOLOGY);
    let before: Vec<_> = lab
        .pods_of("app/web")
        .unwrap()
        .into_iter()
        .cloned()
        .collect();
    let used = all_addresses(&lab);

    let change = lab.restart("app/web").unwrap();
    assert_eq!(change.removed.len(), 2);
    assert_eq!(change.added.len(), 2);
    let after: Vec<_> = lab
        .pods_of("app/Deployment/web")
        .unwrap()
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(after.len(), 2);
    let hash = |p: &lab::Pod| p.labels["pod-template-hash"].clone();
    assert_ne!(
        hash(&before[0]),
        hash(&after[0]),
        "a restart is a new template"
    );
    for pod in &after {
        assert!(
            !before.iter().any(|b| b.name == pod.name),
            "{} is a new name",
            pod.name
        );
        for ip in pod.addresses() {
            assert!(!used.contains(&ip), "{ip} was used before the restart");
        }
        for ip in pod.addresses() {
            let result = lab
                .probe_one("app/client", ip, 7000, Protocol::Tcp)
                .unwrap();
            assert_eq!(result, ProbeResult::Ok, "client -> {} ({ip})", pod.name);
        }
    }
    for old in &before {
        assert!(
            !enforcer::netns::exists(&old.netns),
            "{} is gone",
            old.netns
        );
    }
    // The service follows the new pods.
    let ip = lab.service("app/web").unwrap().ipv4;
    for _ in 0..4 {
        let result = lab
            .probe_one("app/client", ip.into(), 80, Protocol::Tcp)
            .unwrap();
        assert_eq!(result, ProbeResult::Ok);
    }
    // names.json follows too.
    let names = enforcer::names::Names::load(&lab.names_file()).unwrap();
    for pod in &after {
        assert_eq!(names.interfaces[&pod.host_interface], pod.name);
        assert_eq!(names.addresses[&IpAddr::from(pod.ipv4)], pod.name);
    }
    assert!(!names.interfaces.contains_key(&before[0].host_interface));
}

#[test]
fn scaling_adds_and_removes_pods() {
    require_root!();
    let mut lab = TestLab::up(TOPOLOGY);
    let used = all_addresses(&lab);

    let up = lab.scale("app/db", 3).unwrap();
    assert_eq!(up.added, ["app/db-1", "app/db-2"]);
    assert!(up.removed.is_empty());
    let db2 = lab.pod("app/db-2").unwrap().clone();
    assert_eq!(db2.labels["apps.kubernetes.io/pod-index"], "2");
    assert!(!used.contains(&IpAddr::from(db2.ipv4)));
    for ip in db2.addresses() {
        let result = lab
            .probe_one("app/client", ip, 7001, Protocol::Tcp)
            .unwrap();
        assert_eq!(result, ProbeResult::Ok, "client -> db-2 ({ip})");
    }

    let mut down = lab.scale("app/db", 1).unwrap();
    down.removed.sort();
    assert_eq!(down.removed, ["app/db-1", "app/db-2"]);
    assert_eq!(lab.pods_of("app/db").unwrap().len(), 1);
    assert!(!enforcer::netns::exists(&db2.netns));
    // The remaining pods still answer (the server was restarted without the removed ones).
    let db0 = lab.pod("app/db-0").unwrap().ipv4;
    let result = lab
        .probe_one("app/client", db0.into(), 7001, Protocol::Tcp)
        .unwrap();
    assert_eq!(result, ProbeResult::Ok);

    let zero = lab.scale("app/web", 0).unwrap();
    assert_eq!(zero.removed.len(), 2);
    // A service whose backends are all gone rejects.
    let ip = lab.service("app/web").unwrap().ipv4;
    let result = lab
        .probe_one("app/client", ip.into(), 80, Protocol::Tcp)
        .unwrap();
    assert_eq!(result, ProbeResult::Refused);
    // Scaled back up: new pods, new addresses, the service answers again.
    let again = lab.scale("app/web", 1).unwrap();
    let pod = lab.pod(&again.added[0]).unwrap();
    assert!(!used.contains(&IpAddr::from(pod.ipv4)));
    let result = lab
        .probe_one("app/client", ip.into(), 80, Protocol::Tcp)
        .unwrap();
    assert_eq!(result, ProbeResult::Ok);
}

#[test]
fn concurrent_commands_on_one_lab_take_turns() {
    require_root!();
    let lab = TestLab::up(TOPOLOGY);
    let name = lab.name().to_owned();
    std::thread::scope(|s| {
        let a = s.spawn(|| Lab::load(&name).unwrap().scale("app/db", 2).unwrap());
        let b = s.spawn(|| Lab::load(&name).unwrap().scale("app/web", 3).unwrap());
        a.join().unwrap();
        b.join().unwrap();
    });
    // Neither change was lost: each command worked on the state the other had saved.
    let now = Lab::load(&name).unwrap();
    assert_eq!(now.pods_of("app/db").unwrap().len(), 2);
    assert_eq!(now.pods_of("app/web").unwrap().len(), 3);
    for pod in now.pods() {
        assert!(enforcer::netns::exists(&pod.netns), "{}", pod.netns);
    }
}

#[test]
fn exec_runs_in_the_pods_namespace() {
    require_root!();
    let lab = TestLab::up(TOPOLOGY);
    let client = lab.pod("app/client").unwrap();
    let out = lab
        .exec(
            "app/client",
            &["ip", "-o", "address", "show", "dev", "eth0"],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains(&format!("{}/32", client.ipv4)), "{text}");
    assert!(text.contains(&format!("{}/128", client.ipv6)), "{text}");

    let out = lab
        .exec("ext.example.com", &["ip", "-o", "address"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("203.0.113.7/32"));
    let out = lab.exec("node", &["ip", "route"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&client.host_interface));

    let status = lab
        .exec("app/client", &["sh", "-c", "exit 3"])
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(3));
    assert!(lab.exec("app/nope", &["true"]).is_err());
}

#[test]
fn down_leaves_nothing_and_is_idempotent() {
    require_root!();
    let name = unique_id();
    let topology = Topology::parse(TOPOLOGY, "test").unwrap();
    let mut options = UpOptions::new(program());
    options.agent = false;
    let lab = Lab::up(&name, &topology, &options).unwrap();
    let server = lab.server().unwrap().clone();
    assert!(!leftovers(&name).is_empty());

    let removed = lab.down().unwrap();
    assert_eq!((removed.processes, removed.namespaces), (1, 6));
    assert_eq!(leftovers(&name), Vec::<String>::new());
    assert!(!server.is_running());
    assert!(
        lab::down(&name).unwrap().is_empty(),
        "a second down finds nothing"
    );
    assert!(matches!(Lab::load(&name), Err(lab::Error::NotUp { .. })));
    assert_eq!(
        leftovers(&name),
        Vec::<String>::new(),
        "looking creates nothing"
    );
}

#[test]
fn a_stale_lab_is_cleaned_by_the_next_up() {
    require_root!();
    let name = unique_id();
    let topology = Topology::parse(TOPOLOGY, "test").unwrap();
    let mut options = UpOptions::new(program());
    options.agent = false;
    let _guard = Guard(&name);

    // A live lab is not replaced.
    let first = Lab::up(&name, &topology, &options).unwrap();
    assert!(matches!(
        Lab::up(&name, &topology, &options),
        Err(lab::Error::AlreadyUp { .. })
    ));

    // Crash 1: the server died.
    first.server().unwrap().stop("test").unwrap();
    let second = Lab::up(&name, &topology, &options).unwrap();
    assert_ne!(
        first.pods()[1].name,
        second.pods()[1].name,
        "the lab was built anew"
    );
    let ip = second.pod("app/client").unwrap().ipv4;
    let web = second.pods_of("app/web").unwrap()[0].name.clone();
    assert_eq!(
        second
            .probe_one(&web, ip.into(), 7000, Protocol::Tcp)
            .unwrap(),
        ProbeResult::Ok
    );

    // Crash 2: the state is gone, the server still runs (and holds namespaces alive).
    let orphan = second.server().unwrap().clone();
    std::fs::remove_dir_all(second.state_dir()).unwrap();
    let third = Lab::up(&name, &topology, &options).unwrap();
    assert!(
        !orphan.is_running(),
        "the orphaned server was found and stopped"
    );
    let [ok, _refused, timeout, error] = third
        .probe(&ProbeRequest::new(7000, Protocol::Tcp))
        .unwrap()
        .counts();
    assert!(
        ok > 0 && timeout == 0 && error == 0,
        "{ok} ok, {timeout} timeouts, {error} errors"
    );

    lab::down(&name).unwrap();
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn a_failed_up_removes_what_it_built() {
    require_root!();
    let name = unique_id();
    let topology = Topology::parse(TOPOLOGY, "test").unwrap();
    let mut options = UpOptions::new("/nonexistent/palisade");
    options.agent = false;
    let err = Lab::up(&name, &topology, &options).unwrap_err();
    assert!(
        chain(&err).contains("/nonexistent/palisade"),
        "{}",
        chain(&err)
    );
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

/// The lab with the agent: every pod interface attached, flow records name the pods.
#[test]
fn with_the_agent_flows_name_their_pods() {
    require_root!();
    let lab = TestLab::up_with(TOPOLOGY, |o| o.agent = true);
    assert!(lab.agent().unwrap().is_running());
    let web = lab.pods_of("app/web").unwrap()[0].clone();
    let client = lab.pod("app/client").unwrap().clone();
    let result = lab
        .probe_one(&client.name, web.ipv6.into(), 7000, Protocol::Tcp)
        .unwrap();
    assert_eq!(result, ProbeResult::Ok);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(lab.flows_file()).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<model::FlowRecord>(l).ok())
            .any(|r| {
                r.interface == client.host_interface
                    && r.direction == model::Direction::Egress
                    && r.remote.ip == IpAddr::from(web.ipv6)
                    && r.remote.port == 7000
                    && r.local.pod.as_deref() == Some(client.name.as_str())
                    && r.remote.pod.as_deref() == Some(web.name.as_str())
                    // Workload and identity labels, never pod-template-hash.
                    && r.remote.workload.as_deref() == Some("app/Deployment/web")
                    && r.remote.labels.get("app").map(String::as_str) == Some("web")
                    && !r.remote.labels.contains_key("pod-template-hash")
            });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no named flow record in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command line: up from a file, probe as JSON, exec with its exit status, down.
#[test]
fn the_cli_drives_a_lab() {
    require_root!();
    let name = unique_id();
    let _guard = Guard(&name);
    let file = std::env::temp_dir().join(format!("palisade-lab-{name}.yaml"));
    std::fs::write(&file, TOPOLOGY).unwrap();
    let palisade = |args: &[&str]| {
        Command::new(program())
            .args(["lab", "--name", &name])
            .args(args)
            .output()
            .unwrap()
    };

    let up = palisade(&["up", "--no-agent", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stdout).contains("app/client"));

    let probe = palisade(&[
        "probe",
        "--port",
        "7000",
        "--protocol",
        "UDP",
        "--family",
        "6",
        "--json",
    ]);
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(report["matrices"].as_array().unwrap().len(), 1);
    assert_eq!(report["matrices"][0]["family"], "6");
    assert_eq!(
        report["matrices"][0]["results"]["app/client"]["ext.example.com"]["result"],
        "ok"
    );

    let exec = palisade(&[
        "exec",
        "app/client",
        "--",
        "sh",
        "-c",
        "ip -o -6 address; exit 5",
    ]);
    assert_eq!(exec.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&exec.stdout).contains("fd00:10:244::"));

    let bad = palisade(&["up", "-f", "/nonexistent.yaml"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.yaml"));

    let down = palisade(&["down"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

/// Tears a lab down by name when dropped, for tests that drive it by hand.
struct Guard<'a>(&'a str);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = lab::down(self.0);
    }
}

/// Only app/client may reach the web pods, on their named port.
const WEB_POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: app}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: echo}]
";

fn enforcing_lab() -> TestLab {
    TestLab::up_with(TOPOLOGY, |o| {
        o.agent = true;
        o.mode = model::Mode::Enforce;
    })
}

/// Can `from` open TCP 7000 on `to` (over IPv4)?
fn reaches(lab: &Lab, from: &str, to: &str) -> bool {
    let ip = lab.pod(to).unwrap().ipv4;
    lab.probe_one(from, ip.into(), 7000, Protocol::Tcp).unwrap() == ProbeResult::Ok
}

fn web_pods(lab: &Lab) -> Vec<String> {
    lab.pods_of("app/web")
        .unwrap()
        .into_iter()
        .map(|p| p.name.clone())
        .collect()
}

/// Pods a scale or restart creates are in the cluster file and the names file by the time
/// the command returns, and their policy is enforced.
#[test]
fn with_the_agent_new_pods_get_their_policy() {
    require_root!();
    let mut lab = enforcing_lab();
    let applied = lab
        .apply_policy_text(WEB_POLICY, std::path::Path::new("web.yaml"))
        .unwrap();
    assert!(applied.agent.as_ref().unwrap().is_applied(), "{applied:?}");
    let enforced = |lab: &Lab| {
        for web in web_pods(lab) {
            assert!(reaches(lab, "app/client", &web), "client -> {web}");
            assert!(!reaches(lab, "app/db-0", &web), "db-0 -> {web}");
        }
        // The web pods are not isolated in egress, nor is anyone else in ingress.
        let client = lab.pod("app/client").unwrap().ipv4;
        let web = web_pods(lab)[0].clone();
        assert_eq!(
            lab.probe_one(&web, client.into(), 7000, Protocol::Tcp)
                .unwrap(),
            ProbeResult::Ok
        );
    };
    enforced(&lab);

    let scaled = lab.scale("app/web", 3).unwrap();
    assert!(scaled.agent.as_ref().unwrap().is_applied(), "{scaled:?}");
    let restarted = lab.restart("app/web").unwrap();
    assert!(
        restarted.agent.as_ref().unwrap().is_applied(),
        "{restarted:?}"
    );
    assert_eq!(web_pods(&lab).len(), 3);
    enforced(&lab);

    let cluster: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.cluster_file()).unwrap()).unwrap();
    let names = enforcer::names::Names::load(&lab.names_file()).unwrap();
    for web in web_pods(&lab) {
        let pod = lab.pod(&web).unwrap();
        let entry = cluster["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ) == web
            })
            .unwrap_or_else(|| panic!("{web} in {cluster}"));
        assert_eq!(entry["labels"]["app"], "web");
        assert_eq!(entry["ports"][0]["name"], "echo");
        assert_eq!(names.interfaces[&pod.host_interface], web);
        assert_eq!(pod.mode, Some(model::Mode::Enforce));
    }
    for gone in restarted.removed {
        assert!(!names.pods.contains_key(&gone), "{gone}");
    }
}

/// Modes per pod, per namespace (also for pods created later) and for the whole lab.
#[test]
fn modes_per_pod_namespace_and_lab() {
    require_root!();
    let mut lab = enforcing_lab();
    lab.apply_policy_text(WEB_POLICY, std::path::Path::new("web.yaml"))
        .unwrap();
    let [web0, web1] = <[String; 2]>::try_from(web_pods(&lab)).unwrap();
    assert!(!reaches(&lab, "app/db-0", &web0));

    // A monitoring endpoint records what it would drop, and drops nothing.
    let changed = lab
        .set_mode(model::Mode::Monitor, &lab::ModeTarget::Pod(web0.clone()))
        .unwrap();
    assert_eq!(changed, std::slice::from_ref(&web0));
    assert!(reaches(&lab, "app/db-0", &web0));
    assert!(!reaches(&lab, "app/db-0", &web1));

    lab.set_mode(model::Mode::Enforce, &lab::ModeTarget::All)
        .unwrap();
    assert!(!reaches(&lab, "app/db-0", &web0));

    lab.set_mode(
        model::Mode::Learn,
        &lab::ModeTarget::Namespace("app".into()),
    )
    .unwrap();
    let added = lab.scale("app/web", 3).unwrap().added;
    let new = lab.pod(&added[0]).unwrap().clone();
    assert_eq!(
        new.mode,
        Some(model::Mode::Learn),
        "new pods of the namespace"
    );
    assert!(reaches(&lab, "app/db-0", &new.name));
    assert!(
        lab.set_mode(
            model::Mode::Learn,
            &lab::ModeTarget::Namespace("nope".into())
        )
        .is_err()
    );
}

/// `lab policy`, `lab label`, `lab default`, `lab mode` from the command line.
#[test]
fn the_cli_changes_policies_labels_defaults_and_modes() {
    require_root!();
    let name = unique_id();
    let _guard = Guard(&name);
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.yaml");
    std::fs::write(&topology, TOPOLOGY).unwrap();
    let palisade = |args: &[&str]| {
        let out = Command::new(program())
            .args(["lab", "--name", &name])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let ok = |args: &[&str]| {
        let (success, text) = palisade(args);
        assert!(success, "{args:?}: {text}");
        text
    };
    ok(&["up", "-f", topology.to_str().unwrap(), "--mode", "enforce"]);
    let lab = Lab::load(&name).unwrap();
    let web = web_pods(&lab)[0].clone();

    let policy = dir.path().join("web.yaml");
    std::fs::write(&policy, WEB_POLICY).unwrap();
    let out = ok(&["policy", "apply", "-f", policy.to_str().unwrap()]);
    assert!(
        out.contains("networkpolicy app/web created") && out.contains("policy applied"),
        "{out}"
    );
    assert!(ok(&["policy", "apply", "-f", policy.to_str().unwrap()]).contains("unchanged"));
    assert!(!reaches(&lab, "app/db-0", &web));

    // A file the API server would refuse changes nothing.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, WEB_POLICY.replace("{port: echo}", "{port: 70000}")).unwrap();
    let (success, out) = palisade(&["policy", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!success);
    assert!(
        out.contains("bad.yaml") && out.contains("ports[0]"),
        "{out}"
    );
    assert!(!reaches(&lab, "app/db-0", &web));
    let list = ok(&["policy", "list"]);
    assert!(
        list.contains("app/web") && list.contains("app=web"),
        "{list}"
    );

    // db-0 becomes a client.
    let out = ok(&["label", "pod", "app/db-0", "role=client"]);
    assert!(
        out.contains("role=client") && out.contains("policy applied"),
        "{out}"
    );
    assert!(reaches(&lab, "app/db-0", &web));
    ok(&["label", "pod", "app/db-0", "role-"]);
    assert!(!reaches(&lab, "app/db-0", &web));

    // Zero trust for the namespace: the client no longer reaches the external host.
    let ext = "203.0.113.7".parse().unwrap();
    assert_eq!(
        lab.probe_one("app/client", ext, 7000, Protocol::Tcp)
            .unwrap(),
        ProbeResult::Ok
    );
    ok(&["default", "deny", "--namespace", "app"]);
    assert_eq!(
        lab.probe_one("app/client", ext, 7000, Protocol::Tcp)
            .unwrap(),
        ProbeResult::Timeout
    );
    ok(&["default", "inherit", "--namespace", "app"]);
    // Lab-wide (the agent restarts).
    let out = ok(&["default", "deny"]);
    assert!(
        out.contains("agent restarted") && out.contains("policy applied"),
        "{out}"
    );
    assert_eq!(
        lab.probe_one("app/client", ext, 7000, Protocol::Tcp)
            .unwrap(),
        ProbeResult::Timeout
    );
    let out = ok(&["mode", "monitor", "--pod", "app/client"]);
    assert!(out.contains("1 pods now in monitor mode"), "{out}");
    assert_eq!(
        lab.probe_one("app/client", ext, 7000, Protocol::Tcp)
            .unwrap(),
        ProbeResult::Ok
    );
    let status = ok(&["status"]);
    assert!(
        status.contains("default deny (zero trust)") && status.contains("monitor"),
        "{status}"
    );

    let out = ok(&["policy", "delete", "--all"]);
    assert!(out.contains("networkpolicy app/web deleted"), "{out}");
    assert!(ok(&["policy", "list"]).contains("no NetworkPolicies"));
    ok(&["down"]);
}
