//! What palisade-cni reads from the previous plugin's result: the pod's addresses and the
//! host side of its link. The result itself is passed on untouched.

use std::net::IpAddr;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::PodIp;

/// The parts of a CNI result (0.3.0 to 1.1.0 share them) that name the pod's endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    /// The pod's addresses: every `ips` entry except those on a host-side interface.
    pub ips: Vec<PodIp>,
    /// The host side of the pod's link, when the result lists one.
    pub host_interface: Option<String>,
}

#[derive(Deserialize)]
struct CniResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
}

#[derive(Deserialize)]
struct Interface {
    name: String,
    #[serde(default)]
    sandbox: Option<String>,
}

impl Interface {
    /// Interfaces without a sandbox live in the host's namespace.
    fn on_host(&self) -> bool {
        self.sandbox.as_deref().is_none_or(str::is_empty)
    }
}

#[derive(Deserialize)]
struct IpConfig {
    address: String,
    #[serde(default)]
    interface: Option<usize>,
}

/// Reads the pod's addresses and host interface from a `prevResult`.
///
/// The host interface is the *last* interface without a sandbox: the bridge plugin lists
/// the bridge (shared by all pods) before the pod's veth, ptp and most others list only the
/// veth. The agent still checks that the interface is the pod's before attaching to it.
pub fn attachment(prev_result: &serde_json::Value) -> Result<Attachment> {
    let result = CniResult::deserialize(prev_result).map_err(|e| Error::BadPrevResult {
        reason: e.to_string(),
    })?;
    let mut ips = Vec::new();
    for ip in &result.ips {
        let on_host = ip
            .interface
            .and_then(|i| result.interfaces.get(i))
            .is_some_and(Interface::on_host);
        if !on_host {
            ips.push(parse_cidr(&ip.address)?);
        }
    }
    let host_interface = result
        .interfaces
        .iter()
        .rev()
        .find(|i| i.on_host())
        .map(|i| i.name.clone());
    Ok(Attachment {
        ips,
        host_interface,
    })
}

/// `10.1.0.5/24` or `fd00::5/64`; a bare address counts as a host prefix.
fn parse_cidr(text: &str) -> Result<PodIp> {
    let bad = |why: &str| Error::BadPrevResult {
        reason: format!("ips address {text:?}: {why}"),
    };
    let (address, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().map_err(|_| bad("not an IP address"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| bad("bad prefix length"))?,
    };
    Ok(PodIp {
        address,
        prefix_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(text: &str, prefix_len: u8) -> PodIp {
        PodIp {
            address: text.parse().unwrap(),
            prefix_len,
        }
    }

    #[test]
    fn ptp_result_with_both_families() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth3f2a", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [
                {"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 1},
                {"address": "fd00:10:244:1::7/64", "interface": 1}
            ],
            "routes": [{"dst": "0.0.0.0/0"}]
        });
        let attachment = attachment(&prev).unwrap();
        assert_eq!(
            attachment.ips,
            vec![ip("10.244.1.7", 24), ip("fd00:10:244:1::7", 64)]
        );
        assert_eq!(attachment.host_interface.as_deref(), Some("veth3f2a"));
    }

    #[test]
    fn bridge_result_picks_the_veth_not_the_bridge() {
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:00:00:00:00:01"},
                {"name": "vethd00d", "mac": "aa:00:00:00:00:02"},
                {"name": "eth0", "sandbox": "/proc/42/ns/net"}
            ],
            "ips": [
                {"version": "4", "address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 2},
                {"version": "4", "address": "10.22.0.1/16", "interface": 0}
            ]
        });
        let attachment = attachment(&prev).unwrap();
        // The bridge's own address is on a host interface: not the pod's.
        assert_eq!(attachment.ips, vec![ip("10.22.0.5", 16)]);
        assert_eq!(attachment.host_interface.as_deref(), Some("vethd00d"));
    }

    #[test]
    fn a_result_without_interfaces_still_gives_addresses() {
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "192.0.2.9"}]});
        let attachment = attachment(&prev).unwrap();
        assert_eq!(attachment.ips, vec![ip("192.0.2.9", 32)]);
        assert_eq!(attachment.host_interface, None);
        assert_eq!(
            super::attachment(&json!({"cniVersion": "1.0.0"})).unwrap(),
            Attachment::default()
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in ["10.0.0.1/33", "fd00::1/129", "pod/24", "10.0.0.1/x"] {
            let prev = json!({"ips": [{"address": bad}]});
            let err = attachment(&prev).unwrap_err();
            assert!(matches!(err, Error::BadPrevResult { .. }), "{bad}: {err:?}");
        }
        assert!(attachment(&json!({"ips": "nope"})).is_err());
    }
}
