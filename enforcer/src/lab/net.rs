//! Namespaces, veths, addresses and routes, wired like a node with a ptp CNI.
//!
//! Everything goes through `ip`, one `ip -batch` per namespace touched, and sysctls are
//! written from a thread inside each lab namespace: nothing here ever runs a command or
//! writes a sysctl in the caller's own namespace, except `ip netns add/delete` of the lab's
//! own names.
//!
//! ```text
//!  pod netns                      node netns (palisade-<lab>-node)
//!  eth0 10.244.0.2/32   <-veth->  pl-<lab>-1 (fe80::1)     route 10.244.0.2/32 dev pl-<lab>-1
//!       fd00:10:244::2/128                                  route fd00:10:244::2/128 dev ...
//!  default via 169.254.1.1 (permanent neighbour = pl-<lab>-1's MAC), ::/0 via fe80::1
//! ```
//! The node owns 169.254.1.1 and fd00:10:244::1 on its loopback (source of its ARP and
//! neighbour requests, and of hairpin service traffic) and forwards between the pods.
//! External hosts are wired the same way with their own addresses; they are not endpoints.

use std::{
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use super::{
    error::{Error, Result},
    plan::{self, GATEWAY_V4, GATEWAY_V6, NODE_V6},
};
use crate::netns;

/// One namespace to wire to the node: a pod or an external host.
#[derive(Clone, Debug)]
pub struct Host<'a> {
    pub netns: &'a str,
    pub slot: u32,
    pub host_interface: &'a str,
    pub addresses: Vec<IpAddr>,
}

/// Sysctls of every lab namespace: addresses usable at once, no duplicate address detection
/// delaying them. Set before any interface exists there, so new interfaces inherit them.
const HOST_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
];

/// The node also routes between its interfaces.
const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
];

/// Create the node namespace.
pub fn create_node(lab: &str) -> Result<()> {
    let node = plan::node_netns(lab);
    ip(None, &[format!("netns add {node}")])?;
    set_sysctls(&node, HOST_SYSCTLS)?;
    set_sysctls(&node, NODE_SYSCTLS)?;
    ip(
        Some(&node),
        &[
            "link set lo up".into(),
            format!("address add {GATEWAY_V4}/32 dev lo"),
            format!("address add {NODE_V6}/128 dev lo nodad"),
        ],
    )
}

/// Create the hosts' namespaces and wire each to the node.
pub fn add_hosts(lab: &str, hosts: &[Host<'_>]) -> Result<()> {
    if hosts.is_empty() {
        return Ok(());
    }
    let node = plan::node_netns(lab);
    ip(
        None,
        &hosts
            .iter()
            .map(|h| format!("netns add {}", h.netns))
            .collect::<Vec<_>>(),
    )?;
    for host in hosts {
        set_sysctls(host.netns, HOST_SYSCTLS)?;
    }
    ip(
        Some(&node),
        &hosts.iter().flat_map(node_side).collect::<Vec<_>>(),
    )?;
    for host in hosts {
        ip(Some(host.netns), &host_side(host))?;
    }
    Ok(())
}

/// The node's half: the veth (its peer created directly in the host's namespace), its
/// IPv6 gateway address and a route per host address.
fn node_side(host: &Host<'_>) -> Vec<String> {
    let dev = host.host_interface;
    let mut commands = vec![
        format!(
            "link add {dev} address {} type veth peer name eth0 netns {}",
            plan::host_mac(host.slot),
            host.netns
        ),
        format!("link set {dev} up"),
        format!("address add {GATEWAY_V6}/64 dev {dev} nodad"),
    ];
    commands.extend(host.addresses.iter().map(|ip| match ip {
        IpAddr::V4(v4) => format!("route add {v4}/32 dev {dev}"),
        IpAddr::V6(v6) => format!("route add {v6}/128 dev {dev}"),
    }));
    commands
}

/// The host's half: its addresses on eth0 and default routes through the node.
fn host_side(host: &Host<'_>) -> Vec<String> {
    let mut commands = vec!["link set lo up".to_owned(), "link set eth0 up".to_owned()];
    commands.extend(host.addresses.iter().map(|ip| match ip {
        IpAddr::V4(v4) => format!("address add {v4}/32 dev eth0"),
        IpAddr::V6(v6) => format!("address add {v6}/128 dev eth0 nodad"),
    }));
    commands.extend([
        format!("route add {GATEWAY_V4}/32 dev eth0 scope link"),
        format!("route add 0.0.0.0/0 via {GATEWAY_V4} dev eth0"),
        format!(
            "neighbour add {GATEWAY_V4} lladdr {} dev eth0 nud permanent",
            plan::host_mac(host.slot)
        ),
        format!("route add ::/0 via {GATEWAY_V6} dev eth0"),
    ]);
    commands
}

/// Delete the named namespaces that exist (their veths go with them).
pub fn delete_netns(names: &[String]) -> Result<()> {
    let existing: Vec<String> = names
        .iter()
        .filter(|n| netns::exists(n))
        .map(|n| format!("netns delete {n}"))
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    ip(None, &existing)
}

/// The lab's namespaces found under /run/netns, whatever the state says.
pub fn lab_netns_on_disk(lab: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(netns::NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| plan::is_lab_netns(lab, name))
        .collect();
    names.sort();
    names
}

/// Run `ip -batch -` (inside `netns` when given) with one command per line.
fn ip(netns: Option<&str>, commands: &[String]) -> Result<()> {
    let mut input = commands.join("\n");
    input.push('\n');
    run(netns, "ip", &["-batch", "-"], &input)
}

/// Run a command with `input` on stdin, inside `netns` when given; fail with its stderr.
pub fn run(netns: Option<&str>, program: &str, args: &[&str], input: &str) -> Result<()> {
    let describe = || {
        let command = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        match netns {
            Some(ns) => format!("{command}` in `{ns}"),
            None => command,
        }
    };
    let exec = || -> std::io::Result<std::process::Output> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from another thread so a child filling its stderr pipe cannot block us.
        std::thread::scope(|s| {
            s.spawn(move || stdin.write_all(input.as_bytes()));
            child.wait_with_output()
        })
    };
    let output = match netns {
        Some(ns) => netns::run_in(ns, exec).map_err(|source| Error::Netns {
            netns: ns.to_owned(),
            source,
        })?,
        None => exec(),
    }
    .map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: describe(),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// Write sysctls from a thread inside `netns`: /proc/sys/net shows the namespace of the
/// thread that opens it.
fn set_sysctls(netns: &str, sysctls: &[(&str, &str)]) -> Result<()> {
    netns::run_in(netns, || {
        for (key, value) in sysctls {
            std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| Error::Sysctl {
                netns: netns.to_owned(),
                sysctl: key.replace('/', "."),
                source,
            })?;
        }
        Ok(())
    })
    .map_err(|source| Error::Netns {
        netns: netns.to_owned(),
        source,
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiring_commands_for_a_pod() {
        let host = Host {
            netns: "palisade-t-1",
            slot: 1,
            host_interface: "pl-t-1",
            addresses: vec![plan::pod_ipv4(1).into(), plan::pod_ipv6(1).into()],
        };
        assert_eq!(
            node_side(&host),
            [
                "link add pl-t-1 address 02:70:6c:00:00:01 type veth peer name eth0 netns palisade-t-1",
                "link set pl-t-1 up",
                "address add fe80::1/64 dev pl-t-1 nodad",
                "route add 10.244.0.2/32 dev pl-t-1",
                "route add fd00:10:244::2/128 dev pl-t-1",
            ]
        );
        assert_eq!(
            host_side(&host),
            [
                "link set lo up",
                "link set eth0 up",
                "address add 10.244.0.2/32 dev eth0",
                "address add fd00:10:244::2/128 dev eth0 nodad",
                "route add 169.254.1.1/32 dev eth0 scope link",
                "route add 0.0.0.0/0 via 169.254.1.1 dev eth0",
                "neighbour add 169.254.1.1 lladdr 02:70:6c:00:00:01 dev eth0 nud permanent",
                "route add ::/0 via fe80::1 dev eth0",
            ]
        );
    }

    #[test]
    fn a_failing_command_reports_its_stderr() {
        let err = run(
            None,
            "sh",
            &["-c", "cat >/dev/null; echo nope >&2; exit 2"],
            "x\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`sh -c") && msg.contains("nope"), "{msg}");
    }
}
