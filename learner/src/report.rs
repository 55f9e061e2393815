//! The baseline as text people read: per workload, each rule with its evidence.

use std::fmt::Write as _;

use model::Direction;

use crate::{baseline::Baseline, propose::rfc3339};

/// ```text
/// shop/Deployment/frontend
///   egress  TCP 80    service shop/catalog          42 conn   3 pods  2 days  conf 0.71  last 2026-11-28T10:00:00Z
/// ```
pub fn baseline_table(baseline: &Baseline) -> String {
    let mut text = String::new();
    let mut current = None;
    for (key, e) in baseline.sorted() {
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
            "  {direction} {:<6} {port:<5}  {:<40} {:>8} conn {:>4} pods {:>3} days  conf {:.2}  last {}",
            key.protocol.to_string(),
            baseline.describe_peer(&key.peer),
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
