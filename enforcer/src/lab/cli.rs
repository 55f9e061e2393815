//! The `palisade lab` subcommands.

use std::{os::unix::process::ExitStatusExt as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use model::{Mode, netpol::evaluate::DefaultAction};
use serde::Serialize;

use crate::args::{DefaultArg, ModeArg};

use super::{
    AgentOutcome, ExternalHost, Family, Lab, LabelEdit, ModeTarget, Pod, PolicyChanges,
    ProbeRequest, Protocol, ServiceInfo, Topology, UpOptions, default_text, demo, servers,
    services,
    topology::{DEFAULT_TOPOLOGY, Port},
};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab: a node namespace, a namespace per pod and external host, services,
    /// echo servers, and (unless --no-agent) the agent attached to every pod.
    Up {
        /// Topology file (YAML); default: the built-in shop (examples/lab/shop.yaml).
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// Do not start the agent: namespaces, services and servers only.
        #[arg(long)]
        no_agent: bool,
        /// The mode pod interfaces are attached in.
        #[arg(long, value_enum, default_value_t = ModeArg::Learn)]
        mode: ModeArg,
        /// What pods no NetworkPolicy selects get: allow (Kubernetes) or deny (zero trust).
        /// A namespace's `palisade.io/default` label overrides it (see `lab default`).
        #[arg(long, value_enum, default_value_t = DefaultArg::Allow)]
        default: DefaultArg,
        /// How long the agent gets to install the datapath.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        agent_timeout: Duration,
    },
    /// Remove the lab and everything it installed (also a stale lab left by a crash).
    Down,
    /// The lab's pods, external hosts, services and processes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The NetworkPolicies the lab's agent enforces (then see them with `probe`).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Change pod or namespace labels, as `kubectl label` does: `key=value` sets, `key-`
    /// removes. Policies, services and flow records follow.
    Label {
        #[command(subcommand)]
        command: LabelCommand,
    },
    /// What pods no NetworkPolicy selects (in a direction) get: allow (Kubernetes) or deny
    /// (zero trust), lab-wide (the agent restarts; enforcement never lapses) or for one
    /// namespace (its `palisade.io/default` label; `inherit` removes it).
    Default {
        #[arg(value_enum)]
        default: DefaultChoice,
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Put pods' endpoints in learn, monitor or enforce mode (default: every pod, and pods
    /// created later). Live connections are judged again.
    Mode {
        #[arg(value_enum)]
        mode: ModeArg,
        /// Only this pod (ns/pod).
        #[arg(long, conflicts_with = "namespace")]
        pod: Option<String>,
        /// Only this namespace's pods (and those created in it later).
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Probe every pod against every pod, external host and service exposing the port:
    /// TCP connect and echo, or UDP echo.
    Probe {
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, ignore_case = true, default_value_t = ProtocolArg::Tcp)]
        protocol: ProtocolArg,
        /// Only this IP version (default: both).
        #[arg(long, value_enum)]
        family: Option<FamilyArg>,
        /// Only from this pod, or the pods of this workload (ns/name), or from this external
        /// host.
        #[arg(long)]
        from: Option<String>,
        /// Only to this pod, workload, external host or service (ns/name).
        #[arg(long)]
        to: Option<String>,
        /// A JSON matrix instead of tables.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Run a command in a pod's network namespace (or an external host's, or `node`), and
    /// exit with its status.
    Exec {
        /// `ns/pod`, an external host's name, or `node`.
        target: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Recreate a workload's pods (new names, new addresses), like `kubectl rollout restart`.
    Restart {
        /// `ns/name` or `ns/Kind/name`.
        workload: String,
    },
    /// Scale a workload (new pods get new addresses).
    Scale {
        /// `ns/name` or `ns/Kind/name`.
        workload: String,
        replicas: u32,
    },
    /// The story on the built-in shop: learn its traffic, propose and review policies,
    /// monitor, then enforce while attacks are injected; a summary from the kernel's own
    /// records, then teardown (unless --keep). Fails if anything legitimate was denied or
    /// an attack was not.
    Demo {
        /// Leave the lab up afterwards.
        #[arg(long)]
        keep: bool,
        /// How long the traffic generator plays while Palisade learns.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        learn_for: Duration,
        /// Where the baseline, the proposed policies and the review report are written.
        #[arg(long, default_value = "palisade-demo")]
        out: PathBuf,
    },
    /// Print the built-in topology.
    Example,
    /// The lab's server process (started by `up`).
    #[command(hide = true)]
    Serve,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check NetworkPolicy files as the API server would and enforce their policies, each
    /// replacing the lab's policy of the same namespace and name. A bad file changes nothing.
    Apply {
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Delete policies (ns/name).
    Delete {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every policy of the lab.
        #[arg(long)]
        all: bool,
    },
    /// The lab's policies.
    List,
}

#[derive(Debug, Subcommand)]
pub enum LabelCommand {
    /// Label a pod (ns/pod).
    Pod {
        pod: String,
        #[arg(required = true, value_parser = parse_label_edit)]
        labels: Vec<LabelEdit>,
    },
    /// Label a namespace.
    Namespace {
        namespace: String,
        #[arg(required = true, value_parser = parse_label_edit)]
        labels: Vec<LabelEdit>,
    },
}

fn parse_label_edit(s: &str) -> Result<LabelEdit, String> {
    s.parse().map_err(|e: super::Error| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DefaultChoice {
    /// Kubernetes: not isolated, everything passes.
    Allow,
    /// Zero trust: nothing passes but the pod's own node.
    Deny,
    /// With --namespace: the lab's default.
    Inherit,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Tcp => Self::Tcp,
            ProtocolArg::Udp => Self::Udp,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FamilyArg {
    #[value(name = "4")]
    V4,
    #[value(name = "6")]
    V6,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Self {
        match f {
            FamilyArg::V4 => Self::V4,
            FamilyArg::V6 => Self::V6,
        }
    }
}

/// Run `palisade lab [--name NAME] COMMAND`.
pub fn run(name: &str, command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up {
            file,
            no_agent,
            mode,
            default,
            agent_timeout,
        } => {
            let topology = match &file {
                Some(path) => Topology::load(path)?,
                None => Topology::default_shop(),
            };
            let mut options = UpOptions::new(this_binary()?);
            options.agent = !no_agent;
            options.mode = mode.into();
            options.default = default.into();
            options.agent_timeout = agent_timeout;
            options.progress = |step| eprintln!("  {step}");
            let source = file.map_or("the built-in shop topology".into(), |f| {
                f.display().to_string()
            });
            eprintln!("lab {name:?}: building {source}");
            let lab = Lab::up(name, &topology, &options)?;
            print!("{}", status_text(&lab));
            eprintln!(
                "lab {name:?} is up. Try: palisade lab --name {name} probe --port 8080, \
                 palisade lab --name {name} policy apply -f <NetworkPolicy file>, \
                 palisade lab --name {name} down"
            );
        }
        LabCommand::Down => {
            let removed = super::down(name)?;
            if removed.is_empty() {
                println!("lab {name:?}: nothing to remove");
            } else {
                println!(
                    "lab {name:?} removed: {} processes stopped, {} namespaces and {} pins deleted",
                    removed.processes, removed.namespaces, removed.pins
                );
            }
        }
        LabCommand::Status { json } => {
            let lab = Lab::load(name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&StatusView::of(&lab))?);
            } else {
                print!("{}", status_text(&lab));
            }
        }
        LabCommand::Probe {
            port,
            protocol,
            family,
            from,
            to,
            json,
            timeout,
        } => {
            let lab = Lab::load(name)?;
            let mut request = ProbeRequest::new(port, protocol.into());
            if let Some(f) = family {
                request.families = vec![f.into()];
            }
            request.from = from;
            request.to = to;
            request.timeout = timeout;
            let report = lab.probe(&request)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        LabCommand::Policy { command } => policy(name, command)?,
        LabCommand::Label { command } => {
            let mut lab = Lab::load(name)?;
            let (what, labelled) = match command {
                LabelCommand::Pod { pod, labels } => {
                    (format!("pod {pod}"), lab.label_pod(&pod, &labels)?)
                }
                LabelCommand::Namespace { namespace, labels } => (
                    format!("namespace {namespace}"),
                    lab.label_namespace(&namespace, &labels)?,
                ),
            };
            let labels: Vec<String> = labelled
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("{what} labelled: {}", labels.join(","));
            print_agent(&labelled.agent);
        }
        LabCommand::Default { default, namespace } => {
            let mut lab = Lab::load(name)?;
            let action = match default {
                DefaultChoice::Allow => Some(DefaultAction::Allow),
                DefaultChoice::Deny => Some(DefaultAction::Deny),
                DefaultChoice::Inherit => None,
            };
            match (namespace, action) {
                (Some(namespace), action) => {
                    let labelled = lab.set_namespace_default(&namespace, action)?;
                    match action {
                        Some(d) => println!("namespace {namespace}: default {}", default_text(d)),
                        None => println!(
                            "namespace {namespace}: the lab's default, {}",
                            default_text(lab.default_action())
                        ),
                    }
                    print_agent(&labelled.agent);
                }
                (None, Some(action)) => {
                    let outcome = lab.set_default(action)?;
                    println!("lab {name:?}: default {}", default_text(action));
                    if let Some(agent) = lab.agent() {
                        println!(
                            "agent restarted (pid {}); enforcement never lapsed",
                            agent.pid
                        );
                    }
                    print_agent(&outcome);
                }
                (None, None) => anyhow::bail!("`inherit` needs --namespace"),
            }
        }
        LabCommand::Mode {
            mode,
            pod,
            namespace,
        } => {
            let mut lab = Lab::load(name)?;
            let target = match (pod, namespace) {
                (Some(pod), _) => ModeTarget::Pod(pod),
                (None, Some(ns)) => ModeTarget::Namespace(ns),
                (None, None) => ModeTarget::All,
            };
            let mode: Mode = mode.into();
            let changed = lab.set_mode(mode, &target)?;
            let mode_text = format!("{mode:?}").to_lowercase();
            println!(
                "{} pods now in {mode_text} mode{}",
                changed.len(),
                match &target {
                    ModeTarget::All => " (and pods created later)".to_owned(),
                    ModeTarget::Namespace(ns) => format!(" (and pods created in {ns} later)"),
                    ModeTarget::Pod(_) => String::new(),
                }
            );
            for pod in changed {
                let p = lab.pod(&pod)?;
                println!("  {pod}  {}", p.host_interface);
            }
        }
        LabCommand::Exec { target, command } => {
            let lab = Lab::load(name)?;
            let status = lab.exec_interactive(&target, &command)?;
            // The command's own status is the answer, as with `kubectl exec`.
            std::process::exit(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            );
        }
        LabCommand::Restart { workload } => {
            let mut lab = Lab::load(name)?;
            let change = lab.restart(&workload)?;
            print_change(&lab, &change);
        }
        LabCommand::Scale { workload, replicas } => {
            let mut lab = Lab::load(name)?;
            let change = lab.scale(&workload, replicas)?;
            print_change(&lab, &change);
        }
        LabCommand::Demo {
            keep,
            learn_for,
            out,
        } => demo::run(
            name,
            &demo::DemoOptions {
                program: this_binary()?,
                keep,
                learn_for,
                out,
            },
        )?,
        LabCommand::Example => print!("{DEFAULT_TOPOLOGY}"),
        LabCommand::Serve => servers::serve(name)?,
    }
    Ok(())
}

fn policy(name: &str, command: PolicyCommand) -> anyhow::Result<()> {
    let mut lab = Lab::load(name)?;
    let changes = match command {
        PolicyCommand::Apply { files } => lab.apply_policy_files(&files)?,
        PolicyCommand::Delete { names, all } => {
            if all {
                lab.delete_all_policies()?
            } else {
                lab.delete_policies(&names)?
            }
        }
        PolicyCommand::List => {
            let policies = lab.policies()?;
            if policies.is_empty() {
                println!(
                    "no NetworkPolicies: every pod gets its default ({} unless its namespace says)",
                    default_text(lab.default_action())
                );
                return Ok(());
            }
            print!(
                "{}",
                table(
                    &["NAME", "POD-SELECTOR", "TYPES", "RULES", "FILE"],
                    policies
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.pod_selector.clone(),
                                p.types.join(","),
                                format!("{} in, {} out", p.ingress_rules, p.egress_rules),
                                p.file
                                    .file_name()
                                    .map(|f| f.to_string_lossy().into_owned())
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect(),
                )
            );
            return Ok(());
        }
    };
    print_policy_changes(&lab, &changes);
    Ok(())
}

fn print_policy_changes(lab: &Lab, changes: &PolicyChanges) {
    if changes.changes.is_empty() {
        println!("no NetworkPolicies to delete");
    }
    for c in &changes.changes {
        let file = c
            .file
            .strip_prefix(lab.state_dir())
            .unwrap_or(&c.file)
            .display();
        println!("networkpolicy {} {} ({file})", c.name, c.action);
    }
    match &changes.agent {
        Some(outcome) => print_agent(outcome),
        None if !changes.changes.is_empty() => println!("nothing changed"),
        None => {}
    }
}

fn print_agent(outcome: &AgentOutcome) {
    println!("{outcome}");
}

fn this_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the palisade binary (it runs the lab's server)")
}

fn print_change(lab: &Lab, change: &super::Change) {
    for removed in &change.removed {
        println!("- {removed}");
    }
    for added in &change.added {
        let pod = lab.pod(added).expect("an added pod is in the lab");
        println!(
            "+ {added}  {} {} {}",
            pod.host_interface, pod.ipv4, pod.ipv6
        );
    }
    if let Some(outcome) = &change.agent {
        print_agent(outcome);
    }
}

/// `palisade lab status --json`.
#[derive(Serialize)]
struct StatusView<'a> {
    name: &'a str,
    state_dir: &'a std::path::Path,
    node_netns: String,
    bpffs_root: PathBuf,
    agent: Option<ProcessView>,
    server: Option<ProcessView>,
    /// What pods no NetworkPolicy selects get, unless their namespace says.
    default: DefaultAction,
    policies_dir: PathBuf,
    pods: &'a [Pod],
    externals: &'a [ExternalHost],
    services: Vec<ServiceView<'a>>,
}

#[derive(Serialize)]
struct ProcessView {
    pid: i32,
    running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
}

#[derive(Serialize)]
struct ServiceView<'a> {
    #[serde(flatten)]
    service: &'a ServiceInfo,
    /// Per service port: `ns/pod` -> target port.
    backends: Vec<Vec<(String, u16)>>,
}

impl<'a> StatusView<'a> {
    fn of(lab: &'a Lab) -> Self {
        Self {
            name: lab.name(),
            state_dir: lab.state_dir(),
            node_netns: lab.node_netns(),
            bpffs_root: lab.bpffs_root(),
            agent: lab.agent().map(|p| ProcessView {
                pid: p.pid,
                running: p.is_running(),
                mode: lab.agent_mode(),
            }),
            server: lab.server().map(|p| ProcessView {
                pid: p.pid,
                running: p.is_running(),
                mode: None,
            }),
            default: lab.default_action(),
            policies_dir: lab.policies_dir(),
            pods: lab.pods(),
            externals: lab.externals(),
            services: lab
                .services()
                .iter()
                .map(|service| ServiceView {
                    service,
                    backends: service
                        .ports
                        .iter()
                        .map(|port| {
                            services::backends(service, port, lab.pods())
                                .iter()
                                .map(|b| (b.pod.name.clone(), b.port))
                                .collect()
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

fn status_text(lab: &Lab) -> String {
    let process = |p: Option<&super::process::Process>| match p {
        Some(p) if p.is_running() => format!("pid {} running", p.pid),
        Some(p) => format!("pid {} NOT RUNNING", p.pid),
        None => "not started".into(),
    };
    let mut out = format!(
        "lab {:?}: node {}, state {}\n  server: {}\n  agent:  {}\n",
        lab.name(),
        lab.node_netns(),
        lab.state_dir().display(),
        process(lab.server()),
        match lab.agent_mode() {
            Some(mode) => format!(
                "{}, {mode:?} mode, pins {}",
                process(lab.agent()),
                lab.bpffs_root().display()
            ),
            None => "none (--no-agent)".into(),
        }
    );
    if lab.agent_mode().is_some() {
        let policies = lab.policies().map_or_else(
            |e| format!("unreadable: {e}"),
            |p| format!("{} NetworkPolicies", p.len()),
        );
        out.push_str(&format!(
            "  policy: {policies} in {}, default {}\n",
            lab.policies_dir().display(),
            default_text(lab.default_action())
        ));
    }
    out.push_str("\nPODS\n");
    out.push_str(&table(
        &[
            "NAME",
            "INTERFACE",
            "IPV4",
            "IPV6",
            "PORTS",
            "WORKLOAD",
            "MODE",
        ],
        lab.pods()
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.host_interface.clone(),
                    p.ipv4.to_string(),
                    p.ipv6.to_string(),
                    ports(&p.ports),
                    p.workload.clone().unwrap_or_else(|| "-".into()),
                    p.mode
                        .map_or_else(|| "-".into(), |m| format!("{m:?}").to_lowercase()),
                ]
            })
            .collect(),
    ));
    if !lab.externals().is_empty() {
        out.push_str("\nEXTERNAL HOSTS\n");
        out.push_str(&table(
            &["NAME", "INTERFACE", "ADDRESSES", "PORTS"],
            lab.externals()
                .iter()
                .map(|e| {
                    let addresses: Vec<String> =
                        e.addresses.iter().map(ToString::to_string).collect();
                    vec![
                        e.name.clone(),
                        e.host_interface.clone(),
                        addresses.join(","),
                        ports(&e.ports),
                    ]
                })
                .collect(),
        ));
    }
    if !lab.services().is_empty() {
        out.push_str("\nSERVICES\n");
        out.push_str(&table(
            &["NAME", "CLUSTER-IPS", "PORTS", "BACKENDS"],
            lab.services()
                .iter()
                .map(|s| {
                    let ports: Vec<String> = s
                        .ports
                        .iter()
                        .map(|p| format!("{}/{}->{}", p.port, p.protocol, p.target()))
                        .collect();
                    let backends: Vec<String> = s
                        .ports
                        .iter()
                        .flat_map(|p| services::backends(s, p, lab.pods()))
                        .map(|b| b.pod.name.rsplit('/').next().unwrap_or_default().to_owned())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    vec![
                        s.name.clone(),
                        format!("{},{}", s.ipv4, s.ipv6),
                        ports.join(","),
                        if backends.is_empty() {
                            "none".into()
                        } else {
                            backends.join(",")
                        },
                    ]
                })
                .collect(),
        ));
    }
    out
}

fn ports(ports: &[Port]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol))
        .collect::<Vec<_>>()
        .join(",")
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: LabCommand,
    }

    fn parse(args: &[&str]) -> LabCommand {
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn exec_takes_the_rest_of_the_line() {
        let LabCommand::Exec { target, command } =
            parse(&["exec", "shop/a", "--", "ip", "-o", "addr"])
        else {
            panic!()
        };
        assert_eq!(target, "shop/a");
        assert_eq!(command, ["ip", "-o", "addr"]);
        let LabCommand::Exec { command, .. } = parse(&["exec", "shop/a", "ping", "-c", "1", "x"])
        else {
            panic!()
        };
        assert_eq!(command, ["ping", "-c", "1", "x"]);
    }

    #[test]
    fn probe_options() {
        let LabCommand::Probe {
            port,
            protocol,
            family,
            ..
        } = parse(&[
            "probe",
            "--port",
            "53",
            "--protocol",
            "UDP",
            "--family",
            "6",
        ])
        else {
            panic!()
        };
        assert_eq!(port, 53);
        assert!(matches!(protocol, ProtocolArg::Udp));
        assert!(matches!(family, Some(FamilyArg::V6)));
    }

    fn parse_err(args: &[&str]) -> String {
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("{args:?} parsed"))
    }

    #[test]
    fn policy_commands() {
        let LabCommand::Policy {
            command: PolicyCommand::Apply { files },
        } = parse(&["policy", "apply", "-f", "a.yaml", "b.json", "-f", "c.yml"])
        else {
            panic!()
        };
        assert_eq!(files, ["a.yaml", "b.json", "c.yml"].map(PathBuf::from));
        let LabCommand::Policy {
            command: PolicyCommand::Delete { names, all },
        } = parse(&["policy", "delete", "x/a", "y/b"])
        else {
            panic!()
        };
        assert_eq!(
            (names.as_slice(), all),
            (["x/a", "y/b"].map(String::from).as_slice(), false)
        );
        assert!(matches!(
            parse(&["policy", "delete", "--all"]),
            LabCommand::Policy {
                command: PolicyCommand::Delete { all: true, .. }
            }
        ));
        parse_err(&["policy", "delete"]);
        parse_err(&["policy", "delete", "--all", "x/a"]);
        parse_err(&["policy", "apply"]);
    }

    #[test]
    fn label_commands_take_kubectl_syntax() {
        let LabCommand::Label {
            command: LabelCommand::Pod { pod, labels },
        } = parse(&["label", "pod", "x/a", "app=web", "tier-"])
        else {
            panic!()
        };
        assert_eq!(pod, "x/a");
        assert_eq!(
            labels,
            [
                LabelEdit::Set("app".into(), "web".into()),
                LabelEdit::Remove("tier".into())
            ]
        );
        assert!(parse_err(&["label", "namespace", "x", "app"]).contains("key=value"));
        parse_err(&["label", "namespace", "x"]);
    }

    #[test]
    fn default_and_mode_commands() {
        assert!(matches!(
            parse(&["default", "deny", "--namespace", "x"]),
            LabCommand::Default {
                default: DefaultChoice::Deny,
                namespace: Some(_)
            }
        ));
        assert!(matches!(
            parse(&["mode", "monitor", "--pod", "x/a"]),
            LabCommand::Mode {
                mode: ModeArg::Monitor,
                pod: Some(_),
                namespace: None
            }
        ));
        parse_err(&["mode", "enforce", "--pod", "x/a", "--namespace", "x"]);
        assert!(matches!(
            parse(&["up", "--default", "deny"]),
            LabCommand::Up {
                default: DefaultArg::Deny,
                ..
            }
        ));
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(t, "  A     BB\n  long  x\n");
    }
}
