//! `palisade lab demo`: the default topology with the agent attached to every pod, a little
//! traffic (TCP and UDP over IPv4 and IPv6, through services, to external hosts, a ping),
//! the agent's flow records shown live as a table, a summary, then teardown, also on
//! Ctrl-C or error.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use model::{Direction, FlowKind, FlowRecord};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use super::{Family, Lab, ProbeResult, Protocol, Topology, UpOptions};

/// Set by SIGINT/SIGTERM; the demo stops at its next step and tears down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Time for the agent's records of a connection to reach its output file.
const SETTLE: Duration = Duration::from_millis(300);

pub fn run(name: &str, keep: bool, program: PathBuf) -> anyhow::Result<()> {
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &handler) }.context("installing the Ctrl-C handler")?;
    }

    println!("Palisade lab demo: a small shop in network namespaces, the datapath on every pod.\n");
    println!(
        "[1/4] building lab {name:?} (the built-in topology; `palisade lab example` prints it)"
    );
    let mut options = UpOptions::new(program);
    options.progress = |step| println!("      {step}");
    let lab = Lab::up(name, &Topology::default_shop(), &options)?;
    // From here on the lab is removed however the demo ends (error, panic, Ctrl-C).
    let _teardown = Teardown { name, keep };
    check_interrupted()?;

    println!("\n[2/4] traffic, with the agent's flow records as they arrive");
    let namer = Namer::new(&lab);
    let tail = FlowTail::start(lab.flows_file(), namer.clone());
    let traffic = make_traffic(&lab, &namer);
    std::thread::sleep(SETTLE);
    let seen = tail.stop();
    traffic?;

    println!("\n[3/4] summary: connections each pod's endpoint saw (new flows)");
    print!("{}", summary(&seen));
    if seen.is_empty() {
        println!(
            "      no flow records arrived: see {} and {}",
            lab.agent_log().display(),
            lab.flows_file().display()
        );
    }

    if keep {
        println!(
            "\n[4/4] leaving lab {name:?} up (--keep): try `palisade lab --name {name} status`, \
             then `palisade lab --name {name} down`"
        );
    } else {
        println!("\n[4/4] tearing down lab {name:?}");
    }
    Ok(())
}

/// Tears the lab down when dropped, unless it is to be kept (and was not interrupted).
struct Teardown<'a> {
    name: &'a str,
    keep: bool,
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if self.keep && !INTERRUPTED.load(Ordering::SeqCst) {
            return;
        }
        match super::down(self.name) {
            Ok(t) => println!(
                "      removed: {} processes, {} namespaces, {} pins",
                t.processes, t.namespaces, t.pins
            ),
            Err(e) => eprintln!(
                "      teardown failed: {e}; run `palisade lab --name {} down`",
                self.name
            ),
        }
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("\ninterrupted: tearing down");
        bail!("interrupted");
    }
    Ok(())
}

/// A scripted day in the shop: clients reach services, services their backends and the
/// outside world, everyone asks DNS.
fn make_traffic(lab: &Lab, namer: &Namer) -> anyhow::Result<()> {
    let svc = |name: &str, family| -> anyhow::Result<IpAddr> {
        let s = lab.service(name)?;
        Ok(match family {
            Family::V4 => s.ipv4.into(),
            Family::V6 => s.ipv6.into(),
        })
    };
    let ext = |name: &str, family| -> anyhow::Result<IpAddr> {
        lab.external(name)?
            .addresses
            .iter()
            .copied()
            .find(|a| Family::of(*a) == family)
            .with_context(|| format!("{name} has no IPv{} address", family.number()))
    };
    let pod_of = |workload: &str, family| -> anyhow::Result<IpAddr> {
        let pod = *lab
            .pods_of(workload)?
            .first()
            .context("workload without pods")?;
        Ok(match family {
            Family::V4 => pod.ipv4.into(),
            Family::V6 => pod.ipv6.into(),
        })
    };
    use Family::{V4, V6};
    use Protocol::{Tcp, Udp};
    let script: Vec<(&str, IpAddr, u16, Protocol)> = vec![
        ("shop/frontend", svc("shop/catalog", V4)?, 80, Tcp),
        ("shop/frontend", svc("kube-system/kube-dns", V4)?, 53, Udp),
        ("shop/catalog", svc("shop/redis", V4)?, 6379, Tcp),
        ("shop/frontend", svc("payments/checkout", V6)?, 443, Tcp),
        (
            "payments/checkout",
            svc("kube-system/kube-dns", V6)?,
            53,
            Udp,
        ),
        (
            "payments/checkout",
            ext("payments-gateway.example.com", V4)?,
            443,
            Tcp,
        ),
        (
            "payments/checkout",
            ext("payments-gateway.example.com", V6)?,
            443,
            Tcp,
        ),
        (
            "shop/nightly-report",
            pod_of("shop/catalog", V6)?,
            8080,
            Tcp,
        ),
        (
            "monitoring/node-exporter",
            ext("telemetry.example.net", V4)?,
            4317,
            Tcp,
        ),
    ];
    for (workload, target, port, protocol) in script {
        for pod in lab.pods_of(workload)? {
            check_interrupted()?;
            println!(
                ">>    {} -> {} ({} {protocol})",
                pod.name,
                namer.address(target),
                SocketAddr::new(target, port),
            );
            let result = lab.probe_one(&pod.name, target, port, protocol)?;
            if result != ProbeResult::Ok {
                println!(">>    ... {result:?}");
            }
            std::thread::sleep(SETTLE);
        }
    }
    check_interrupted()?;
    let from = lab.pods_of("shop/frontend")?[0].name.clone();
    let to = pod_of("shop/redis", V4)?.to_string();
    println!(">>    {from} -> {} ({to} ping)", namer.address(to.parse()?));
    let ping = lab.exec(&from, &["ping", "-c", "1", "-W", "1", &to])?;
    if !ping.status.success() {
        println!(">>    ... no reply");
    }
    std::thread::sleep(SETTLE);
    Ok(())
}

/// Names for addresses and interfaces: pods, external hosts and services of the lab.
#[derive(Clone)]
struct Namer {
    addresses: BTreeMap<IpAddr, String>,
    interfaces: BTreeMap<String, String>,
    /// The longest name, for table columns.
    width: usize,
}

impl Namer {
    fn new(lab: &Lab) -> Self {
        let mut addresses = BTreeMap::new();
        let mut interfaces = BTreeMap::new();
        for pod in lab.pods() {
            interfaces.insert(pod.host_interface.clone(), pod.name.clone());
            for ip in pod.addresses() {
                addresses.insert(ip, pod.name.clone());
            }
        }
        for e in lab.externals() {
            for ip in &e.addresses {
                addresses.insert(*ip, e.name.clone());
            }
        }
        for s in lab.services() {
            for ip in s.addresses() {
                addresses.insert(ip, format!("svc/{}", s.name));
            }
        }
        let width = addresses.values().map(String::len).max().unwrap_or(0);
        Self {
            addresses,
            interfaces,
            width,
        }
    }

    fn address(&self, ip: IpAddr) -> String {
        self.addresses
            .get(&ip)
            .cloned()
            .unwrap_or_else(|| ip.to_string())
    }

    /// The endpoint's pod: as the agent named it, else by its interface.
    fn pod(&self, r: &FlowRecord) -> String {
        r.local
            .pod
            .clone()
            .or_else(|| self.interfaces.get(&r.interface).cloned())
            .unwrap_or_else(|| r.interface.clone())
    }

    /// The other side; services by name too (the agent knows pods and external hosts).
    fn peer(&self, r: &FlowRecord) -> String {
        r.remote
            .pod
            .clone()
            .unwrap_or_else(|| self.address(r.remote.ip))
    }
}

/// A flow record with its two sides named.
struct Seen {
    pod: String,
    peer: String,
    record: FlowRecord,
}

/// Follows the agent's output file on a thread, printing new flows as table rows.
struct FlowTail {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FlowTail {
    fn start(path: PathBuf, namer: Namer) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || follow(&path, &namer, &stop, &seen))
        };
        Self { stop, thread, seen }
    }

    /// Stop following; the records seen.
    fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        std::mem::take(&mut *self.seen.lock().expect("the follower does not panic"))
    }
}

fn follow(path: &Path, namer: &Namer, stop: &AtomicBool, seen: &Mutex<Vec<Seen>>) {
    let w = namer.width;
    println!(
        "      {:<12}  {:<w$}      {:<w$}  {:<10} VERDICT",
        "TIME", "POD", "PEER", "PROTO/PORT"
    );
    let mut reader = None;
    let mut line = String::new();
    // One last pass after `stop`, so nothing written before it is missed.
    let mut last_pass = false;
    loop {
        if reader.is_none() {
            reader = std::fs::File::open(path).ok().map(BufReader::new);
        }
        if let Some(r) = &mut reader {
            // A line without its newline is completed on a later read.
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if !line.ends_with('\n') {
                    break;
                }
                if let Ok(record) = serde_json::from_str::<FlowRecord>(line.trim_end())
                    && record.kind != FlowKind::Stats
                    && !is_link_chatter(&record)
                {
                    let flow = Seen {
                        pod: namer.pod(&record),
                        peer: namer.peer(&record),
                        record,
                    };
                    println!("      {}", row(&flow, w));
                    seen.lock().expect("the printer does not panic").push(flow);
                }
                line.clear();
            }
        }
        if last_pass {
            return;
        }
        last_pass = stop.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Neighbour discovery, router solicitations and multicast listener reports every new
/// interface sends: real flows, but not the demo's story.
fn is_link_chatter(r: &FlowRecord) -> bool {
    [r.local.ip, r.remote.ip].iter().any(|ip| match ip {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_multicast() || v6.is_unicast_link_local(),
    })
}

fn row(flow: &Seen, w: usize) -> String {
    let r = &flow.record;
    let time = r.time.get(11..23).unwrap_or(&r.time);
    let arrow = match r.direction {
        Direction::Egress => "->",
        Direction::Ingress => "<-",
    };
    let service = r.server_port().map_or_else(
        || r.protocol.to_string(),
        |port| format!("{}/{port}", r.protocol),
    );
    let verdict = serde_json::to_value(r.verdict)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let rejudged = if r.kind == FlowKind::Rejudged {
        " (re-judged)"
    } else {
        ""
    };
    format!(
        "{time:<12}  {:<w$}  {arrow}  {:<w$}  {service:<10} {verdict}{rejudged}",
        flow.pod, flow.peer
    )
}

/// Per pod: new connections out and in, and the peers.
fn summary(seen: &[Seen]) -> String {
    #[derive(Default)]
    struct Count<'a> {
        egress: usize,
        ingress: usize,
        peers: BTreeSet<&'a str>,
    }
    let mut per_pod: BTreeMap<&str, Count> = BTreeMap::new();
    for flow in seen.iter().filter(|f| f.record.kind == FlowKind::New) {
        let count = per_pod.entry(&flow.pod).or_default();
        match flow.record.direction {
            Direction::Egress => count.egress += 1,
            Direction::Ingress => count.ingress += 1,
        }
        count.peers.insert(&flow.peer);
    }
    let w = per_pod.keys().map(|p| p.len()).max().unwrap_or(0);
    per_pod
        .iter()
        .map(|(pod, c)| {
            let peers: Vec<&str> = c.peers.iter().copied().collect();
            format!(
                "      {pod:<w$}  {:>2} out {:>2} in   {}\n",
                c.egress,
                c.ingress,
                peers.join(", ")
            )
        })
        .collect()
}
