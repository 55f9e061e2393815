//! `palisade`: the node agent and its tools, and the lab.

use std::{
    io::{IsTerminal as _, Read as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{ArgGroup, Args, Parser, Subcommand};
use enforcer::{
    agent::{self, AgentConfig},
    args::{DefaultArg, ModeArg, OutputFormatArg},
    datapath::{
        self, EndpointSpec, Pins,
        prefilter::{self, XdpMode},
        records::Namer,
        rules, stats,
        tables::Endpoints,
        writer::PinnedWriter,
    },
    kubernetes::{self, KubeAgentConfig},
    lab,
    names::Names,
    netns, paths,
    policy_file::NodePolicy,
    policy_source::{CompileConfig, NetworkPolicyConfig, SourceConfig},
};
use flows_cli::FlowsArgs;
use ipnet::IpNet;
use learn_cli::LearnCommand;
use model::wire::{FlowWriter, Format};
use policy_cli::ReviewCommand;
use tracing_subscriber::EnvFilter;

mod flows_cli;
mod learn_cli;
mod policy_cli;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Learn, review and enforce pod network policy in the kernel"
)]
struct Cli {
    /// Log lines as text (for people) or JSON objects (for log collectors).
    #[arg(long, global = true, env = "PALISADE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The agent on a Kubernetes node (a DaemonSet; see deploy/).
#[derive(Args)]
struct KubeArgs {
    /// Take pods, namespaces, nodes, Services, NetworkPolicies and modes from the
    /// Kubernetes API server (in-cluster service account, else KUBECONFIG) and protect this
    /// node's pods (--node-name); --mode is the default mode of pods whose pod and namespace
    /// carry no `palisade.io/mode`.
    #[arg(long, env = "PALISADE_KUBERNETES", conflicts_with_all = ["policy", "policy_dir", "interfaces", "names"])]
    kubernetes: bool,
    /// Answer the palisade-cni plugin on this socket: a pod's sandbox is ready only once its
    /// endpoint is programmed.
    #[arg(long, env = "PALISADE_CNI_SOCKET", requires = "kubernetes")]
    cni_socket: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address.
    #[arg(long, env = "PALISADE_HTTP", requires = "kubernetes")]
    http: Option<SocketAddr>,
    /// Stream aggregated flow records to the learner at this gRPC address
    /// (http://HOST:PORT).
    #[arg(long, env = "PALISADE_LEARNER_URL", requires = "kubernetes")]
    learner_url: Option<String>,
    /// Report denied connections as Kubernetes Events on their pod (rate-limited).
    #[arg(long, env = "PALISADE_DENY_EVENTS", default_value_t = true, action = clap::ArgAction::Set, requires = "kubernetes")]
    deny_events: bool,
}

/// Where the datapath lives: the node's network namespace and the bpffs pin folder.
#[derive(Args, Clone)]
struct Node {
    /// Network namespace (under /run/netns) holding the pod interfaces; default: this one.
    #[arg(long, global = true, env = "PALISADE_NETNS")]
    netns: Option<String>,
    /// bpffs folder for Palisade's pins.
    #[arg(long, global = true, env = "PALISADE_BPFFS_ROOT", default_value = paths::BPFFS_ROOT)]
    bpffs_root: PathBuf,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Enforce a node's compiled rules and identities (YAML or JSON; see
    /// `enforcer::policy_file`). Each endpoint's rules are swapped in atomically.
    Apply {
        #[command(flatten)]
        node: Node,
        /// The file to apply.
        #[arg(short, long)]
        file: PathBuf,
    },
    #[command(flatten)]
    Review(ReviewCommand),
}

#[derive(Subcommand)]
enum Command {
    /// Install the datapath, attach endpoints and print flows (JSON lines, or protobuf to a
    /// file).
    Agent {
        #[command(flatten)]
        node: Node,
        /// Pod interface (host side of its veth) to attach at start; repeatable.
        #[arg(long = "iface")]
        interfaces: Vec<String>,
        /// Mode of the endpoints attached at start.
        #[arg(long, env = "PALISADE_MODE", value_enum, default_value_t = ModeArg::Enforce)]
        mode: ModeArg,
        /// JSON file naming interfaces and addresses (re-read when it changes).
        #[arg(long, env = "PALISADE_NAMES")]
        names: Option<PathBuf>,
        /// Append flow records here instead of standard output.
        #[arg(long, env = "PALISADE_OUTPUT")]
        output: Option<PathBuf>,
        /// How records are written to --output: json (one object per line) or protobuf
        /// (length-delimited `palisade.flow.v1.FlowRecord`; see model/proto). Standard
        /// output always gets JSON lines.
        #[arg(long, env = "PALISADE_OUTPUT_FORMAT", value_enum, default_value_t = OutputFormatArg::Json)]
        output_format: OutputFormatArg,
        /// Created once the datapath is installed and the endpoints attached.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Export counters of live connections this often (e.g. 10s; 0 = never).
        #[arg(long, env = "PALISADE_STATS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
        stats_interval: Duration,
        /// Enforce this node policy file (as `palisade policy -f` reads it) and apply every
        /// change to it, writing only what changed. The agent is then the only writer of
        /// policy: `palisade policy` is refused while it runs.
        #[arg(long, env = "PALISADE_POLICY", conflicts_with = "policy_dir")]
        policy: Option<PathBuf>,
        /// Enforce the Kubernetes NetworkPolicies in this folder (*.yaml, *.yml, *.json),
        /// compiled for this node's pods against --cluster, following changes to either.
        #[arg(long, env = "PALISADE_POLICY_DIR", requires_all = ["cluster", "names"])]
        policy_dir: Option<PathBuf>,
        /// The cluster file for --policy-dir: namespaces, pods and nodes (JSON).
        #[arg(long, env = "PALISADE_CLUSTER")]
        cluster: Option<PathBuf>,
        /// This node's name: in the cluster file (default `node`), or in Kubernetes (the
        /// downward API's `spec.nodeName`; required there).
        #[arg(long, env = "PALISADE_NODE")]
        node_name: Option<String>,
        /// What pods no policy selects get, unless their namespace's `palisade.io/default`
        /// label says: allow (Kubernetes) or deny (zero trust).
        #[arg(long, env = "PALISADE_DEFAULT", value_enum, default_value_t = DefaultArg::Allow)]
        default: DefaultArg,
        /// Keep identities across restarts in this file (--policy-dir).
        #[arg(long, env = "PALISADE_IDENTITIES")]
        identities: Option<PathBuf>,
        /// Connections the node tracks (CONNTRACK entries, 176 bytes of kernel memory
        /// each, preallocated). Fixed while the datapath stays pinned.
        #[arg(long, env = "PALISADE_CONNTRACK_MAX", default_value_t = enforcer_common::maps::CONNTRACK_MAX)]
        conntrack_max: u32,
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Attach the datapath to one more pod interface (the agent must have installed it).
    Attach {
        #[command(flatten)]
        node: Node,
        #[arg(long = "iface")]
        interface: String,
        #[arg(long)]
        ipv4: Option<Ipv4Addr>,
        #[arg(long)]
        ipv6: Option<Ipv6Addr>,
        #[arg(long, value_enum, default_value_t = ModeArg::Enforce)]
        mode: ModeArg,
        /// A new endpoint starts isolated both ways (only its node passes) until its rules
        /// arrive, instead of open.
        #[arg(long)]
        isolated: bool,
    },
    /// Detach the datapath from a pod interface and forget its rules.
    Detach {
        #[command(flatten)]
        node: Node,
        #[arg(long = "iface")]
        interface: String,
    },
    /// Change an endpoint's mode; its live connections are judged again.
    Mode {
        #[command(flatten)]
        node: Node,
        #[arg(long = "iface")]
        interface: String,
        #[arg(value_enum)]
        mode: ModeArg,
    },
    /// Policies: enforce a node's compiled rules, or review NetworkPolicies (export, replay
    /// recorded traffic, diff).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Live connections with their counters.
    Conntrack {
        #[command(flatten)]
        node: Node,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The datapath's counters, summed over CPUs.
    Counters {
        #[command(flatten)]
        node: Node,
    },
    /// Remove every program, link and map Palisade pinned. Stop the agent first.
    Uninstall {
        #[command(flatten)]
        node: Node,
    },
    /// The XDP prefilter on node uplinks: drops traffic from denied external CIDRs before
    /// the network stack; replies of connections that left the node always pass.
    Prefilter {
        #[command(flatten)]
        node: Node,
        #[command(subcommand)]
        command: PrefilterCommand,
    },
    /// Run Palisade on one machine: pods as network namespaces wired like a node.
    /// Flow records as a table: an agent's output file or a lab's (`--lab NAME`),
    /// optionally followed.
    Flows(FlowsArgs),
    /// Learn what workloads talk to: flow records -> a baseline with evidence -> proposed
    /// NetworkPolicies.
    #[command(visible_alias = "learner")]
    Learn {
        #[command(subcommand)]
        command: LearnCommand,
    },
    Lab {
        /// Lab name: keeps several labs apart (namespaces, interfaces, pins, state).
        #[arg(long, global = true, env = "PALISADE_LAB", default_value = "lab")]
        name: String,
        #[command(subcommand)]
        command: lab::cli::LabCommand,
    },
}

#[derive(Subcommand)]
enum PrefilterCommand {
    /// Attach to an uplink: XDP on what it receives, a connection recorder on what it sends.
    Attach {
        #[arg(long = "iface")]
        interface: String,
        /// auto: the driver's XDP when it has one, else generic; native: the driver's
        /// only; skb: generic XDP (for veths, such as the lab's).
        #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
        mode: XdpMode,
    },
    /// Detach from an uplink.
    Detach {
        #[arg(long = "iface")]
        interface: String,
    },
    /// Deny exactly these CIDRs: those given with --deny and those in --file.
    #[command(group = ArgGroup::new("list").required(true).multiple(true))]
    Set {
        /// A CIDR (203.0.113.0/24) or an address; repeatable.
        #[arg(long, value_parser = prefilter::parse_cidr, group = "list")]
        deny: Vec<IpNet>,
        /// One CIDR or address per line; `#` starts a comment.
        #[arg(short, long, group = "list")]
        file: Option<PathBuf>,
    },
    /// Deny nothing.
    Clear,
    /// Where the prefilter is attached, what it denies, what it dropped.
    Show,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The lab prints its own progress; the library's logs would only repeat it.
    let default_filter = match cli.command {
        Command::Lab { .. } => "warn",
        _ => "info",
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().with_current_span(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    match cli.command {
        Command::Lab { name, command } => lab::cli::run(&name, command),
        Command::Learn { command } => learn_cli::run(command),
        Command::Flows(args) => flows_cli::run(args),
        Command::Agent {
            node,
            interfaces,
            mode,
            names,
            output,
            output_format,
            ready_file,
            stats_interval,
            policy,
            policy_dir,
            cluster,
            node_name,
            default,
            identities,
            conntrack_max,
            kube,
        } => {
            if kube.kubernetes {
                let node_name = node_name.context(
                    "--kubernetes protects this node's pods: name it with --node-name or \
                     PALISADE_NODE (the downward API's spec.nodeName)",
                )?;
                let config = KubeAgentConfig {
                    pins: enter(&node)?,
                    node: node_name,
                    default_mode: mode.into(),
                    default_action: default.into(),
                    identities,
                    cni_socket: kube.cni_socket,
                    http: kube.http,
                    learner: kube.learner_url,
                    deny_events: kube.deny_events,
                    output: match output {
                        Some(path) => {
                            check_output_format(&path, output_format.into())?;
                            Some((path, output_format.into()))
                        }
                        None => None,
                    },
                    stats_interval: (!stats_interval.is_zero()).then_some(stats_interval),
                    sizing: datapath::Sizing { conntrack_max },
                };
                return run_kube_agent(config);
            }
            let policy = match (policy, policy_dir) {
                (Some(file), _) => Some(SourceConfig::NodeFile(file)),
                (None, Some(dir)) => Some(SourceConfig::NetworkPolicies(NetworkPolicyConfig {
                    dir,
                    cluster: cluster.context("--policy-dir needs --cluster")?,
                    names: names.clone().context("--policy-dir needs --names")?,
                    compile: CompileConfig {
                        node: node_name.unwrap_or_else(|| "node".to_owned()),
                        default: default.into(),
                        identities,
                    },
                })),
                (None, None) => None,
            };
            let pins = enter(&node)?;
            let isolated = policy.is_some();
            let config = AgentConfig {
                pins,
                endpoints: interfaces
                    .into_iter()
                    .map(|interface| EndpointSpec {
                        interface,
                        ipv4: None,
                        ipv6: None,
                        mode: mode.into(),
                        isolated,
                    })
                    .collect(),
                names_file: names,
                ready_file,
                stats_interval: (!stats_interval.is_zero()).then_some(stats_interval),
                policy,
                sizing: datapath::Sizing { conntrack_max },
            };
            run_agent(config, output, output_format.into())
        }
        Command::Attach {
            node,
            interface,
            ipv4,
            ipv6,
            mode,
            isolated,
        } => {
            let pins = enter(&node)?;
            let spec = EndpointSpec {
                interface,
                ipv4,
                ipv6,
                mode: mode.into(),
                isolated,
            };
            datapath::attach(&pins, &spec)?;
            Ok(())
        }
        Command::Detach { node, interface } => Ok(datapath::detach(&enter(&node)?, &interface)?),
        Command::Mode {
            node,
            interface,
            mode,
        } => {
            let pins = enter(&node)?;
            let ifindex = datapath::attach::ifindex_of(&interface)?;
            rules::set_mode(&mut Endpoints::open_endpoints(&pins)?, ifindex, mode.into())?;
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Review(command),
        } => policy_cli::run(command),
        Command::Policy {
            command: PolicyCommand::Apply { node, file },
        } => {
            let policy = NodePolicy::load(&file)?;
            let pins = enter(&node)?;
            let desired = policy.resolve(datapath::attach::ifindex_of)?;
            PinnedWriter::open(&pins)?.apply(&desired)?;
            Ok(())
        }
        Command::Conntrack { node, json } => conntrack(&enter(&node)?, json),
        Command::Counters { node } => {
            for (counter, value) in stats::counters(&enter(&node)?)? {
                println!("{:<16} {value}", counter.name());
            }
            Ok(())
        }
        Command::Prefilter { node, command } => {
            let pins = enter(&node)?;
            match command {
                PrefilterCommand::Attach { interface, mode } => {
                    let ifindex = prefilter::attach(&pins, &interface, mode)?;
                    println!("prefilter attached to {interface} (ifindex {ifindex})");
                }
                PrefilterCommand::Detach { interface } => prefilter::detach(&pins, &interface)?,
                PrefilterCommand::Set { deny, file } => {
                    println!(
                        "{}",
                        prefilter::set_from_args(&pins, &deny, file.as_deref())?
                    );
                }
                PrefilterCommand::Clear => {
                    println!("{}", prefilter::set(&pins, &Default::default())?);
                }
                PrefilterCommand::Show => print!("{}", prefilter::status(&pins)?),
            }
            Ok(())
        }
        Command::Uninstall { node } => {
            let removed = datapath::uninstall(&enter(&node)?)?;
            println!(
                "removed {} links and {} pins under {}",
                removed.links,
                removed.pins,
                node.bpffs_root.display()
            );
            Ok(())
        }
    }
}

/// Enter the node's namespace (before any thread starts) and name its pins.
fn enter(node: &Node) -> Result<Pins> {
    if let Some(ns) = &node.netns {
        netns::enter(ns)?;
    }
    Ok(Pins::new(&node.bpffs_root))
}

fn run_agent(config: AgentConfig, output: Option<PathBuf>, format: Format) -> Result<()> {
    let out: FlowWriter<Box<dyn std::io::Write>> = match &output {
        // Buffered: the agent flushes once per batch of events, so readers of the file see
        // whole records far more often than torn ones.
        Some(path) => {
            check_output_format(path, format)?;
            FlowWriter::new(
                Box::new(std::io::BufWriter::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .with_context(|| format!("opening {}", path.display()))?,
                )),
                format,
            )
        }
        None => {
            if format != Format::JsonLines {
                tracing::warn!(%format, "no --output file: writing JSON lines to standard output");
            }
            FlowWriter::new(
                Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
                Format::JsonLines,
            )
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(agent::run(config, out, shutdown_signal()))?;
    Ok(())
}

fn run_kube_agent(config: KubeAgentConfig) -> Result<()> {
    services_runtime()?.block_on(kubernetes::run(config, shutdown_signal()))?;
    Ok(())
}

/// The runtime of the long-running services (the Kubernetes agent, the learner): two
/// workers, so the API watchers, the gRPC streams and the HTTP endpoints never wait on one
/// another's turn.
fn services_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Refuse to append records in `format` to a file that holds records in the other format:
/// no reader could read the result.
fn check_output_format(path: &Path, format: Format) -> Result<()> {
    let mut head = Vec::new();
    match std::fs::File::open(path) {
        Ok(file) => {
            file.take(4096)
                .read_to_end(&mut head)
                .with_context(|| format!("reading {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    }
    match Format::detect(&head) {
        Some(found) if found != format => anyhow::bail!(
            "{} holds {found} flow records: appending {format} would mix formats (use \
             --output-format {found}, or another file)",
            path.display()
        ),
        _ => Ok(()),
    }
}

fn conntrack(pins: &Pins, json: bool) -> Result<()> {
    let mut namer = Namer::new(Names::default());
    for (key, value) in stats::conntrack(pins)? {
        let record = namer.conntrack(&key, &value)?;
        if json {
            println!("{}", serde_json::to_string(&record)?);
        } else {
            let c = record.counters.unwrap_or_default();
            println!(
                "{:<12} {:<6} {:<7} {:>28} -> {:<28} {:<10} tx {}p/{}B rx {}p/{}B",
                record.interface,
                record.protocol,
                format!("{:?}", record.direction).to_lowercase(),
                SocketAddr::new(record.local.ip, record.local.port).to_string(),
                SocketAddr::new(record.remote.ip, record.remote.port).to_string(),
                format!("{:?}", record.verdict).to_lowercase(),
                c.packets_from_pod,
                c.bytes_from_pod,
                c.packets_to_pod,
                c.bytes_to_pod,
            );
        }
    }
    Ok(())
}
