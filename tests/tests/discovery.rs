//! Endpoint discovery against a real kernel: a "node" network namespace wired to pod
//! namespaces the two ways CNIs do it (routed /32 and /128 host routes; a bridge with the
//! host veths as ports), discovery run over rtnetlink inside the node namespace, the watch
//! stream seeing veths come and go, and the reconciler's plan at start carried out with the
//! real datapath.
//!
//! Needs root; skips otherwise. Every test names its namespaces `palisade-dsc-<id>-...`,
//! its interfaces `pl-<id>-...` and its pins `/sys/fs/bpf/palisade-dsc-<id>` with an id of
//! its own (parallel-safe), and removes them by exact name when it ends, however it ends.
//! Nothing runs in the test process's own namespace except `ip netns add/delete`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use enforcer::{
    datapath::{self, Pins},
    endpoints::{self, Action, Event, HostInterface, Via, WantedPod},
    netns,
};
use futures::StreamExt as _;
use model::Mode;
use tests::{
    namespaces::{Netns, ip},
    require_root, unique_id,
};

/// Run `future` (made on the thread) on a fresh runtime on a thread inside `netns`, so the
/// netlink sockets it opens belong to that namespace.
fn block_on_in<T: Send, F: Future<Output = T>>(netns: &str, make: impl FnOnce() -> F + Send) -> T {
    netns::run_in(netns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(make())
    })
    .expect("entering the node namespace")
}

/// One pod: its namespace, the host and pod ends of its veth, its addresses.
struct Pod {
    netns: Netns,
    host: String,
    ipv4: IpAddr,
    ipv6: IpAddr,
}

/// A node namespace and its pods (dropped after the pods: field order).
struct Node {
    id: String,
    pods: Vec<Pod>,
    node: Netns,
}

impl Node {
    fn new() -> Self {
        let id = unique_id();
        let node = Netns::new(format!("palisade-dsc-{id}-node"));
        ip(Some(&node.name), &["link set lo up".into()]);
        Self {
            id,
            pods: Vec::new(),
            node,
        }
    }

    fn netns(&self) -> &str {
        &self.node.name
    }

    /// A pod namespace with a veth into the node (`pl-<id>-h<n>` on the node's side), up,
    /// with `ipv4`/`prefix4` and `ipv6`/`prefix6` on its end.
    fn add_pod(&mut self, ipv4: &str, prefix4: u8, ipv6: &str, prefix6: u8) -> usize {
        let n = self.pods.len() + 1;
        let netns = Netns::new(format!("palisade-dsc-{}-p{n}", self.id));
        let host = format!("pl-{}-h{n}", self.id);
        let inside = format!("pl-{}-p{n}", self.id);
        ip(
            Some(self.netns()),
            &[
                format!(
                    "link add {host} type veth peer name {inside} netns {}",
                    netns.name
                ),
                format!("link set {host} up"),
            ],
        );
        ip(
            Some(&netns.name),
            &[
                "link set lo up".into(),
                format!("addr add {ipv4}/{prefix4} dev {inside}"),
                // No duplicate address detection: the address is usable at once.
                format!("addr add {ipv6}/{prefix6} dev {inside} nodad"),
                format!("link set {inside} up"),
            ],
        );
        self.pods.push(Pod {
            netns,
            host,
            ipv4: ipv4.parse().unwrap(),
            ipv6: ipv6.parse().unwrap(),
        });
        n - 1
    }

    /// A pod wired like a ptp CNI: /32 and /128 routes to it out of its host veth.
    fn add_routed_pod(&mut self, n: u8) -> usize {
        let (ipv4, ipv6) = (format!("10.244.7.{n}"), format!("fd00:7::{n}"));
        let index = self.add_pod(&ipv4, 32, &ipv6, 128);
        let pod = &self.pods[index];
        ip(
            Some(self.netns()),
            &[
                format!("route add {ipv4}/32 dev {}", pod.host),
                format!("route add {ipv6}/128 dev {}", pod.host),
            ],
        );
        index
    }

    /// The ifindex of `interface` in the node namespace.
    fn ifindex(&self, interface: &str) -> u32 {
        let interface = interface.to_owned();
        netns::run_in(self.netns(), move || {
            datapath::attach::ifindex_of(&interface).expect("interface in the node namespace")
        })
        .unwrap()
    }

    fn discover(&self, ips: Vec<IpAddr>) -> BTreeMap<IpAddr, HostInterface> {
        block_on_in(self.netns(), || async move {
            let handle = endpoints::connect().expect("netlink");
            endpoints::discover(&handle, ips).await.expect("discover")
        })
    }
}

fn ping(netns: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "2", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn routed_pods_are_found_by_their_host_routes() {
    require_root!();
    let mut node = Node::new();
    let a = node.add_routed_pod(2);
    let b = node.add_routed_pod(3);
    let unknown: IpAddr = "10.244.7.99".parse().unwrap();
    let mut ips: Vec<IpAddr> = node.pods.iter().flat_map(|p| [p.ipv4, p.ipv6]).collect();
    ips.push(unknown);

    let found = node.discover(ips);

    for index in [a, b] {
        let pod = &node.pods[index];
        let expected = HostInterface {
            ifindex: node.ifindex(&pod.host),
            name: pod.host.clone(),
            via: Via::Route,
        };
        assert_eq!(found.get(&pod.ipv4), Some(&expected), "{}", pod.ipv4);
        assert_eq!(found.get(&pod.ipv6), Some(&expected), "{}", pod.ipv6);
    }
    assert!(!found.contains_key(&unknown), "{found:?}");
    assert_eq!(found.len(), 4);
}

#[test]
fn bridged_pods_are_found_through_neighbour_and_fdb() {
    require_root!();
    let mut node = Node::new();
    let bridge = format!("pl-{}-br", node.id);
    ip(
        Some(node.netns()),
        &[
            format!("link add {bridge} type bridge"),
            format!("addr add 10.245.0.1/24 dev {bridge}"),
            format!("addr add fd00:245::1/64 dev {bridge} nodad"),
            format!("link set {bridge} up"),
        ],
    );
    for n in 2..=3 {
        let index = node.add_pod(&format!("10.245.0.{n}"), 24, &format!("fd00:245::{n}"), 64);
        let host = node.pods[index].host.clone();
        ip(
            Some(node.netns()),
            &[format!("link set {host} master {bridge}")],
        );
    }
    let ips: Vec<IpAddr> = node.pods.iter().flat_map(|p| [p.ipv4, p.ipv6]).collect();

    // Nothing talked yet: the node has no neighbour entry, so no pod is found.
    assert_eq!(node.discover(ips.clone()), BTreeMap::new());

    // The pods talk to the node: the bridge learns their MACs, the node their addresses.
    for pod in &node.pods {
        assert!(
            ping(&pod.netns.name, "10.245.0.1"),
            "IPv4 ping from {}",
            pod.netns.name
        );
        assert!(
            ping(&pod.netns.name, "fd00:245::1"),
            "IPv6 ping from {}",
            pod.netns.name
        );
    }
    let found = node.discover(ips);

    let bridge_ifindex = node.ifindex(&bridge);
    for pod in &node.pods {
        let expected = HostInterface {
            ifindex: node.ifindex(&pod.host),
            name: pod.host.clone(),
            via: Via::Bridge {
                bridge: bridge_ifindex,
            },
        };
        assert_eq!(found.get(&pod.ipv4), Some(&expected), "{}", pod.ipv4);
        assert_eq!(found.get(&pod.ipv6), Some(&expected), "{}", pod.ipv6);
    }
}

#[test]
fn the_watch_reports_a_veth_appearing_and_going() {
    require_root!();
    let node = Node::new();
    let host = format!("pl-{}-h9", node.id);
    let peer = format!("pl-{}-p9", node.id);
    let netns = node.netns().to_owned();

    block_on_in(node.netns(), || async move {
        let mut watch = endpoints::Watch::subscribe().expect("subscribe");
        // `ip` runs while the runtime is blocked; the kernel queues the notifications.
        ip(
            Some(&netns),
            &[
                format!("link add {host} type veth peer name {peer}"),
                format!("link set {host} up"),
                format!("link set {peer} up"),
                format!("route add 10.244.9.2/32 dev {host}"),
                format!("route add fd00:9::2/128 dev {host}"),
            ],
        );
        let ifindex = datapath::attach::ifindex_of(&host).expect("the new veth");
        let mut seen = Vec::new();
        let added = |e: &Event| matches!(e, Event::LinkAdded(l) if l.name == host);
        let route4 = |e: &Event| {
            matches!(e, Event::HostRouteAdded(r)
                if r.ifindex == ifindex && r.destination == "10.244.9.2".parse::<IpAddr>().unwrap())
        };
        let route6 = |e: &Event| {
            matches!(e, Event::HostRouteAdded(r)
                if r.ifindex == ifindex && r.destination == "fd00:9::2".parse::<IpAddr>().unwrap())
        };
        next_until(&mut watch, &mut seen, |s| {
            s.iter().any(added) && s.iter().any(route4) && s.iter().any(route6)
        })
        .await;
        let link = seen
            .iter()
            .find_map(|e| match e {
                Event::LinkAdded(l) if l.name == host => Some(l.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(link.ifindex, ifindex);
        assert_eq!(link.kind, endpoints::LinkKind::Veth);

        ip(Some(&netns), &[format!("link delete {host}")]);
        let mut gone = Vec::new();
        next_until(&mut watch, &mut gone, |s| {
            s.iter().any(
                |e| matches!(e, Event::LinkRemoved(l) if l.ifindex == ifindex && l.name == host),
            )
        })
        .await;
    });
}

/// Read events into `seen` until `done` holds for them; panic after 5 s without.
async fn next_until(
    watch: &mut endpoints::Watch,
    seen: &mut Vec<Event>,
    done: impl Fn(&[Event]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(seen) {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("the watch ended; seen: {seen:?}"),
            Err(_) => panic!("expected events missing after 5 s; seen: {seen:?}"),
        }
    }
}

/// Removes the test's bpffs folder (and with it every attachment) when dropped.
struct Installed(Pins);

impl Drop for Installed {
    fn drop(&mut self) {
        if let Err(e) = datapath::uninstall(&self.0) {
            eprintln!("uninstalling {}: {e}", self.0.root().display());
        }
    }
}

#[test]
fn reconcile_at_start_attaches_the_pods_already_there() {
    require_root!();
    let mut node = Node::new();
    let a = node.add_routed_pod(2);
    let b = node.add_routed_pod(3);
    let key = |name: &str| ("default".to_owned(), name.to_owned());
    let wanted_of = |pod: &Pod, mode| WantedPod {
        ipv4: match pod.ipv4 {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        },
        ipv6: match pod.ipv6 {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        },
        mode,
        isolated: false,
    };
    let wanted = BTreeMap::from([
        (key("a"), wanted_of(&node.pods[a], Mode::Enforce)),
        (key("b"), wanted_of(&node.pods[b], Mode::Learn)),
        // Scheduled here, its sandbox not created yet.
        (
            key("late"),
            WantedPod {
                ipv4: Some("10.244.7.50".parse().unwrap()),
                ipv6: None,
                mode: Mode::Enforce,
                isolated: false,
            },
        ),
    ]);
    let ips: Vec<IpAddr> = wanted.values().flat_map(WantedPod::ips).collect();
    let discovered = node.discover(ips);

    let plan = endpoints::plan(&wanted, &discovered, &BTreeMap::new());
    assert_eq!(plan.waiting, vec![key("late")]);
    assert!(plan.conflicts.is_empty(), "{:?}", plan.conflicts);
    let planned: Vec<(u32, String, Mode)> = plan
        .actions
        .iter()
        .map(|action| match action {
            Action::Attach { ifindex, spec, .. } => (*ifindex, spec.interface.clone(), spec.mode),
            Action::Detach { .. } => panic!("nothing was attached: {action:?}"),
        })
        .collect();
    let mut expected = vec![
        (
            node.ifindex(&node.pods[a].host),
            node.pods[a].host.clone(),
            Mode::Enforce,
        ),
        (
            node.ifindex(&node.pods[b].host),
            node.pods[b].host.clone(),
            Mode::Learn,
        ),
    ];
    expected.sort_by_key(|(ifindex, _, _)| *ifindex);
    assert_eq!(planned, expected);

    // Carry the plan out with the real datapath, inside the node namespace.
    let installed = Installed(Pins::new(format!("/sys/fs/bpf/palisade-dsc-{}", node.id)));
    drop(datapath::install(&installed.0).expect("install the datapath"));
    let mut attached = BTreeMap::new();
    netns::run_in(node.netns(), || {
        for action in &plan.actions {
            let Action::Attach { ifindex, spec, .. } = action else {
                unreachable!()
            };
            let got = datapath::attach(&installed.0, spec).expect("attach");
            assert_eq!(got, *ifindex, "{spec:?}");
            action.record(&mut attached);
            for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                let (_, programs) =
                    SchedClassifier::query_tcx(&spec.interface, hook).expect("query tcx");
                assert_eq!(programs.len(), 1, "{} {hook:?}", spec.interface);
            }
        }
    })
    .unwrap();

    // Planning again changes nothing; once pod a is gone from the API, it is detached.
    let again = endpoints::plan(&wanted, &discovered, &attached);
    assert!(again.is_empty(), "{again:?}");
    let mut fewer = wanted.clone();
    fewer.remove(&key("a"));
    let after = endpoints::plan(&fewer, &discovered, &attached);
    let a_ifindex = node.ifindex(&node.pods[a].host);
    assert_eq!(
        after.actions,
        vec![Action::Detach {
            ifindex: a_ifindex,
            pod: key("a"),
        }]
    );
    let a_host = node.pods[a].host.clone();
    netns::run_in(node.netns(), || {
        datapath::attach::detach_ifindex(&installed.0, a_ifindex).expect("detach");
        // The kernel releases an unpinned link from a workqueue: wait for it, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, programs) =
                SchedClassifier::query_tcx(&a_host, TcAttachType::Ingress).expect("query tcx");
            if programs.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "still attached: {programs:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .unwrap();
}
