//! The baseline as text people read: per workload, each rule with its evidence.

use std::fmt::Write as _;

use model::Direction;

use crate::{baseline::Baseline, propose::rfc3339};

/// ```text
/// shop/Deployment/frontend
///   egress  TCP 80    service shop/catalog          42 conn   3 pods  2 days  conf 0.71  last 2026-11-28T10:00:00Z
/// ```
pub fn baseline_table(baseline: &Baseline) -> String {
    let rules = baseline.sorted();
    let peers: Vec<String> = rules
        .iter()
        .map(|(k, _)| baseline.describe_peer(&k.peer))
        .collect();
    let width = peers.iter().map(String::len).max().unwrap_or(0);
    let mut text = String::new();
    let mut current = None;
    for ((key, e), peer) in rules.iter().zip(&peers) {
        if current != Some(key.workload) {
            current = Some(key.workload);
            let _ = writeln!(text, "{}", baseline.names.get(key.workload));
        }
        let direction = match key.direction {
            Direction::Egress => "egress ",
            Direction::Ingress => "ingress",
        };
        let port = key.port.map(|p| p.to_string()).unwrap_or_default();
        let pods = if e.source_pods.is_saturated() {
            format!("{}+", e.source_pods.len())
        } else {
            e.source_pods.len().to_string()
        };
        let _ = writeln!(
            text,
            "  {direction} {:<6} {port:<5}  {peer:<width$}  {:>8} conn {:>4} pods {:>3} days  conf {:.2}  last {}",
            key.protocol.to_string(),
            e.connections,
            pods,
            e.days.count(),
            e.confidence(),
            rfc3339(e.last_seen_ms).replace(".000Z", "Z"),
        );
    }
    if baseline.is_empty() {
        text.push_str("no rules learned yet\n");
    }
    if baseline.unattributed > 0 {
        let _ = writeln!(
            text,
            "{} records named no pod on their endpoint and were not counted",
            baseline.unattributed
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use model::{FlowKind, Protocol};

    use super::*;
    use crate::observation::{Observation, Side};

    #[test]
    fn one_line_per_rule_under_its_workload() {
        let mut b = Baseline::default();
        assert_eq!(baseline_table(&b), "no rules learned yet\n");
        let side = |ip: &str, port, pod, workload| Side {
            ip: ip.parse().unwrap(),
            port,
            pod,
            workload,
            dns_name: None,
            service: None,
        };
        for _ in 0..3 {
            b.observe(&Observation {
                kind: FlowKind::New,
                time_ms: 1_764_324_000_000,
                direction: Direction::Egress,
                protocol: Protocol::Tcp,
                local: side(
                    "10.0.0.1",
                    40000,
                    Some("shop/web-1"),
                    Some("shop/Deployment/web"),
                ),
                remote: side(
                    "10.0.0.2",
                    8080,
                    Some("shop/api-1"),
                    Some("shop/Deployment/api"),
                ),
                host_peer: false,
                bytes: None,
            });
        }
        let text = baseline_table(&b);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "shop/Deployment/web");
        assert!(
            lines[1].starts_with("  egress  TCP    8080   workload shop/Deployment/api"),
            "{text}"
        );
        assert!(
            lines[1].contains("3 conn    1 pods   1 days  conf 0.13"),
            "{text}"
        );
    }
}
