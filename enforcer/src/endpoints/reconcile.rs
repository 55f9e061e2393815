//! The reconciler: from the pods this node should protect, the interfaces discovery found and
//! what is attached now, the attach and detach actions that close the gap.
//!
//! Pure and deterministic (everything is ordered by key), so the agent can call it after
//! every event and at start, and tests can pin down each case. Running the actions and
//! recording them with [`Action::record`] makes the next plan empty: planning is idempotent.
//!
//! Attachments are keyed by ifindex and remember the interface name, because interfaces
//! come and go under the agent: an ifindex can be reused by a new veth, and a pod recreated
//! under the same name gets a new veth. Attaching is refused (by the datapath) on an
//! ifindex whose old link pin is still there, so whenever the pod or the interface behind
//! an ifindex changes, the plan detaches first.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use model::{Mode, netpol::compile::PodKey};

use super::discover::HostInterface;
use crate::datapath::EndpointSpec;

/// A pod this node should protect, as the API server describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedPod {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mode: Mode,
    /// See [`EndpointSpec::isolated`].
    pub isolated: bool,
}

impl WantedPod {
    /// The pod's addresses, IPv4 first: the order in which its interface is looked up.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }
}

/// What is attached to one ifindex, and for which pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub pod: PodKey,
    pub spec: EndpointSpec,
}

/// One step towards the wanted state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Detach the programs on `ifindex` (they were attached for `pod`).
    Detach { ifindex: u32, pod: PodKey },
    /// Attach (or re-register, when only the spec changed) `pod` on `ifindex`.
    Attach {
        ifindex: u32,
        pod: PodKey,
        spec: EndpointSpec,
    },
}

impl Action {
    /// Record in `attached` that this action was carried out.
    pub fn record(&self, attached: &mut BTreeMap<u32, Attached>) {
        match self {
            Self::Detach { ifindex, .. } => {
                attached.remove(ifindex);
            }
            Self::Attach { ifindex, pod, spec } => {
                attached.insert(
                    *ifindex,
                    Attached {
                        pod: pod.clone(),
                        spec: spec.clone(),
                    },
                );
            }
        }
    }
}

/// Something the plan had to decide that deserves a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Several pods' addresses lead to one interface (an address reused before the old
    /// pod was gone). `kept` gets the interface: the pod already attached there, else the
    /// first by key; the others wait.
    SharedInterface {
        ifindex: u32,
        kept: PodKey,
        waiting: Vec<PodKey>,
    },
    /// A pod's addresses lead to different interfaces; the first address's (IPv4's) is used.
    SplitPod {
        pod: PodKey,
        used: u32,
        ignored: Vec<u32>,
    },
}

/// The actions, detaches first (each ordered by ifindex), and what could not be done yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Wanted pods without an interface on this node yet (or only a contested one).
    pub waiting: Vec<PodKey>,
    pub conflicts: Vec<Conflict>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Plan the actions that make `attached` match `wanted` on the interfaces in `discovered`.
pub fn plan(
    wanted: &BTreeMap<PodKey, WantedPod>,
    discovered: &BTreeMap<IpAddr, HostInterface>,
    attached: &BTreeMap<u32, Attached>,
) -> Plan {
    let mut plan = Plan::default();

    // Each wanted pod's interface, and for each interface the pods that claim it.
    let mut claims: BTreeMap<u32, (&HostInterface, Vec<&PodKey>)> = BTreeMap::new();
    for (pod, want) in wanted {
        let found: Vec<&HostInterface> = want.ips().filter_map(|ip| discovered.get(&ip)).collect();
        let Some(&interface) = found.first() else {
            plan.waiting.push(pod.clone());
            continue;
        };
        let ignored: BTreeSet<u32> = found
            .iter()
            .map(|i| i.ifindex)
            .filter(|&i| i != interface.ifindex)
            .collect();
        if !ignored.is_empty() {
            plan.conflicts.push(Conflict::SplitPod {
                pod: pod.clone(),
                used: interface.ifindex,
                ignored: ignored.into_iter().collect(),
            });
        }
        claims
            .entry(interface.ifindex)
            .or_insert((interface, Vec::new()))
            .1
            .push(pod);
    }

    // One pod per interface, then the spec it should be attached with.
    let mut desired: BTreeMap<u32, Attached> = BTreeMap::new();
    for (ifindex, (interface, pods)) in claims {
        let current = attached
            .get(&ifindex)
            .filter(|a| a.spec.interface == interface.name)
            .map(|a| &a.pod);
        let kept = current.filter(|pod| pods.contains(pod)).unwrap_or(pods[0]);
        if pods.len() > 1 {
            let others: Vec<PodKey> = pods
                .iter()
                .filter(|p| **p != kept)
                .map(|p| (*p).clone())
                .collect();
            plan.waiting.extend(others.iter().cloned());
            plan.conflicts.push(Conflict::SharedInterface {
                ifindex,
                kept: kept.clone(),
                waiting: others,
            });
        }
        let want = &wanted[kept];
        desired.insert(
            ifindex,
            Attached {
                pod: kept.clone(),
                spec: EndpointSpec {
                    interface: interface.name.clone(),
                    ipv4: want.ipv4,
                    ipv6: want.ipv6,
                    mode: want.mode,
                    isolated: want.isolated,
                },
            },
        );
    }
    plan.waiting.sort();

    // Detach what is no longer wanted there: the pod is gone or moved, or the ifindex now
    // belongs to another interface or another pod.
    for (&ifindex, current) in attached {
        let keep = desired
            .get(&ifindex)
            .is_some_and(|d| d.pod == current.pod && d.spec.interface == current.spec.interface);
        if !keep {
            plan.actions.push(Action::Detach {
                ifindex,
                pod: current.pod.clone(),
            });
        }
    }
    // Attach what is missing or differs (a mode change re-registers in place).
    for (ifindex, want) in desired {
        if attached.get(&ifindex) != Some(&want) {
            plan.actions.push(Action::Attach {
                ifindex,
                pod: want.pod,
                spec: want.spec,
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::discover::Via;

    fn key(name: &str) -> PodKey {
        ("default".into(), name.into())
    }

    fn pod(ipv4: &str, mode: Mode) -> WantedPod {
        WantedPod {
            ipv4: Some(ipv4.parse().unwrap()),
            ipv6: None,
            mode,
            isolated: false,
        }
    }

    fn dual(ipv4: &str, ipv6: &str) -> WantedPod {
        WantedPod {
            ipv6: Some(ipv6.parse().unwrap()),
            ..pod(ipv4, Mode::Enforce)
        }
    }

    fn iface(ifindex: u32, name: &str) -> HostInterface {
        HostInterface {
            ifindex,
            name: name.into(),
            via: Via::Route,
        }
    }

    fn spec(interface: &str, want: &WantedPod) -> EndpointSpec {
        EndpointSpec {
            interface: interface.into(),
            ipv4: want.ipv4,
            ipv6: want.ipv6,
            mode: want.mode,
            isolated: want.isolated,
        }
    }

    fn attached(ifindex: u32, name: &str, interface: &str, want: &WantedPod) -> (u32, Attached) {
        (
            ifindex,
            Attached {
                pod: key(name),
                spec: spec(interface, want),
            },
        )
    }

    fn attach(ifindex: u32, name: &str, interface: &str, want: &WantedPod) -> Action {
        Action::Attach {
            ifindex,
            pod: key(name),
            spec: spec(interface, want),
        }
    }

    fn detach(ifindex: u32, name: &str) -> Action {
        Action::Detach {
            ifindex,
            pod: key(name),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Carry out the plan on `attached` and check that planning again does nothing.
    fn converges(
        wanted: &BTreeMap<PodKey, WantedPod>,
        discovered: &BTreeMap<IpAddr, HostInterface>,
        mut attached: BTreeMap<u32, Attached>,
    ) -> BTreeMap<u32, Attached> {
        let first = plan(wanted, discovered, &attached);
        for action in &first.actions {
            action.record(&mut attached);
        }
        let again = plan(wanted, discovered, &attached);
        assert!(again.is_empty(), "not idempotent: {again:?}");
        assert_eq!(again.waiting, first.waiting);
        attached
    }

    #[test]
    fn start_with_existing_pods_attaches_each_once() {
        let a = pod("10.0.0.1", Mode::Learn);
        let b = dual("10.0.0.2", "fd00::2");
        let wanted = BTreeMap::from([(key("b"), b.clone()), (key("a"), a.clone())]);
        let discovered = BTreeMap::from([
            (ip("10.0.0.1"), iface(11, "vethA")),
            (ip("10.0.0.2"), iface(12, "vethB")),
            (ip("fd00::2"), iface(12, "vethB")),
        ]);
        let p = plan(&wanted, &discovered, &BTreeMap::new());
        assert_eq!(
            p.actions,
            vec![attach(11, "a", "vethA", &a), attach(12, "b", "vethB", &b)]
        );
        assert!(p.waiting.is_empty() && p.conflicts.is_empty());
        let after = converges(&wanted, &discovered, BTreeMap::new());
        assert_eq!(after.len(), 2);
    }

    #[test]
    fn nothing_to_do_when_everything_is_attached() {
        let a = pod("10.0.0.1", Mode::Enforce);
        let wanted = BTreeMap::from([(key("a"), a.clone())]);
        let discovered = BTreeMap::from([(ip("10.0.0.1"), iface(11, "vethA"))]);
        let current = BTreeMap::from([attached(11, "a", "vethA", &a)]);
        assert_eq!(plan(&wanted, &discovered, &current), Plan::default());
    }

    #[test]
    fn a_pod_whose_interface_is_not_there_yet_waits() {
        let a = pod("10.0.0.1", Mode::Enforce);
        let wanted = BTreeMap::from([(key("a"), a)]);
        let p = plan(&wanted, &BTreeMap::new(), &BTreeMap::new());
        assert!(p.actions.is_empty());
        assert_eq!(p.waiting, vec![key("a")]);
    }

    #[test]
    fn a_pod_found_by_its_ipv6_address_alone_is_attached() {
        let b = dual("10.0.0.2", "fd00::2");
        let wanted = BTreeMap::from([(key("b"), b.clone())]);
        let discovered = BTreeMap::from([(ip("fd00::2"), iface(12, "vethB"))]);
        let p = plan(&wanted, &discovered, &BTreeMap::new());
        assert_eq!(p.actions, vec![attach(12, "b", "vethB", &b)]);
    }

    #[test]
    fn a_removed_pod_is_detached_even_while_its_link_remains() {
        let a = pod("10.0.0.1", Mode::Enforce);
        let discovered = BTreeMap::from([(ip("10.0.0.1"), iface(11, "vethA"))]);
        let current = BTreeMap::from([attached(11, "a", "vethA", &a)]);
        let p = plan(&BTreeMap::new(), &discovered, &current);
        assert_eq!(p.actions, vec![detach(11, "a")]);
        assert!(converges(&BTreeMap::new(), &discovered, current).is_empty());
    }

    #[test]
    fn an_interface_that_disappeared_is_detached_and_its_pod_waits() {
        let a = pod("10.0.0.1", Mode::Enforce);
        let wanted = BTreeMap::from([(key("a"), a.clone())]);
        let current = BTreeMap::from([attached(11, "a", "vethA", &a)]);
        let p = plan(&wanted, &BTreeMap::new(), &current);
        assert_eq!(p.actions, vec![detach(11, "a")]);
        assert_eq!(p.waiting, vec![key("a")]);
    }

    #[test]
    fn an_ifindex_reused_by_another_pod_is_detached_before_it_is_attached() {
        let a = pod("10.0.0.1", Mode::Enforce);
        let b = pod("10.0.0.2", Mode::Monitor);
        // a's veth (11) went away and b's new veth got ifindex 11.
        let wanted = BTreeMap::from([(key("a"), a.clone()), (key("b"), b.clone())]);
        let discovered = BTreeMap::from([(ip("10.0.0.2"), iface(11, "vethB"))]);
        let current = BTreeMap::from([attached(11, "a", "vethA", &a)]);
        let p = plan(&wanted, &discovered, &current);
        assert_eq!(
            p.actions,
            vec![detach(11, "a"), attach(11, "b", "vethB", &b)]
        );
        assert_eq!(p.waiting, vec![key("a")]);
        converges(&wanted, &discovered, current);
    }

    #[test]
    fn a_new_interface_under_an_old_ifindex_is_reattached_for_the_same_pod() {
        // Pod recreated under the same name; its new veth reused the ifindex.
        let a = pod("10.0.0.1", Mode::Enforce);
        let wanted = BTreeMap::from([(key("a"), a.clone())]);
        let discovered = BTreeMap::from([(ip("10.0.0.1"), iface(11, "vethA2"))]);
        let current = BTreeMap::from([attached(11, "a", "vethA1", &a)]);
        let p = plan(&wanted, &discovered, &current);
        assert_eq!(
            p.actions,
            vec![detach(11, "a"), attach(11, "a", "vethA2", &a)]
        );
    }

    #[test]
    fn a_pod_that_moved_to_another_interface_follows_it() {
        let a = pod("10.0.0.1", Mode::Enforce);
        let wanted = BTreeMap::from([(key("a"), a.clone())]);
        let discovered = BTreeMap::from([(ip("10.0.0.1"), iface(15, "vethA2"))]);
        let current = BTreeMap::from([attached(11, "a", "vethA", &a)]);
        let p = plan(&wanted, &discovered, &current);
        assert_eq!(
            p.actions,
            vec![detach(11, "a"), attach(15, "a", "vethA2", &a)]
        );
    }

    #[test]
    fn a_mode_change_reattaches_in_place_without_detaching() {
        let learn = pod("10.0.0.1", Mode::Learn);
        let enforce = pod("10.0.0.1", Mode::Enforce);
        let wanted = BTreeMap::from([(key("a"), enforce.clone())]);
        let discovered = BTreeMap::from([(ip("10.0.0.1"), iface(11, "vethA"))]);
        let current = BTreeMap::from([attached(11, "a", "vethA", &learn)]);
        let p = plan(&wanted, &discovered, &current);
        assert_eq!(p.actions, vec![attach(11, "a", "vethA", &enforce)]);
        converges(&wanted, &discovered, current);
    }

    #[test]
    fn pods_sharing_an_interface_keep_the_attached_one_else_the_first() {
        // b got a's address while a is still listed (terminating).
        let a = pod("10.0.0.1", Mode::Enforce);
        let b = pod("10.0.0.1", Mode::Learn);
        let wanted = BTreeMap::from([(key("a"), a.clone()), (key("b"), b.clone())]);
        let discovered = BTreeMap::from([(ip("10.0.0.1"), iface(11, "vethX"))]);

        let fresh = plan(&wanted, &discovered, &BTreeMap::new());
        assert_eq!(fresh.actions, vec![attach(11, "a", "vethX", &a)]);
        assert_eq!(fresh.waiting, vec![key("b")]);
        assert_eq!(
            fresh.conflicts,
            vec![Conflict::SharedInterface {
                ifindex: 11,
                kept: key("a"),
                waiting: vec![key("b")],
            }]
        );

        let current = BTreeMap::from([attached(11, "b", "vethX", &b)]);
        let p = plan(&wanted, &discovered, &current);
        assert!(p.actions.is_empty(), "b stays: {p:?}");
        assert_eq!(p.waiting, vec![key("a")]);
    }

    #[test]
    fn a_pod_split_over_two_interfaces_uses_its_ipv4_one() {
        let b = dual("10.0.0.2", "fd00::2");
        let wanted = BTreeMap::from([(key("b"), b.clone())]);
        let discovered = BTreeMap::from([
            (ip("10.0.0.2"), iface(12, "vethB")),
            (ip("fd00::2"), iface(13, "stale")),
        ]);
        let p = plan(&wanted, &discovered, &BTreeMap::new());
        assert_eq!(p.actions, vec![attach(12, "b", "vethB", &b)]);
        assert_eq!(
            p.conflicts,
            vec![Conflict::SplitPod {
                pod: key("b"),
                used: 12,
                ignored: vec![13],
            }]
        );
    }

    #[test]
    fn plans_do_not_depend_on_insertion_order() {
        let pods: Vec<(PodKey, WantedPod)> = (1..=5)
            .map(|i| {
                (
                    key(&format!("p{i}")),
                    pod(&format!("10.0.0.{i}"), Mode::Enforce),
                )
            })
            .collect();
        let discovered: BTreeMap<IpAddr, HostInterface> = (1..=5)
            .map(|i| {
                (
                    ip(&format!("10.0.0.{i}")),
                    iface(20 - i, &format!("veth{i}")),
                )
            })
            .collect();
        let stale = BTreeMap::from([
            attached(30, "gone1", "x", &pods[0].1),
            attached(31, "gone2", "y", &pods[0].1),
        ]);
        let forward: BTreeMap<_, _> = pods.iter().cloned().collect();
        let backward: BTreeMap<_, _> = pods.iter().rev().cloned().collect();
        let p = plan(&forward, &discovered, &stale);
        assert_eq!(p, plan(&backward, &discovered, &stale));
        let ifindexes: Vec<u32> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Detach { ifindex, .. } | Action::Attach { ifindex, .. } => *ifindex,
            })
            .collect();
        assert_eq!(
            ifindexes,
            vec![30, 31, 15, 16, 17, 18, 19],
            "detaches first"
        );
    }
}
