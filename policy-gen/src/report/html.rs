//! The report as one self-contained HTML page: inline CSS, the graph as inline SVG, no
//! scripts (sections fold with `<details>`), nothing fetched. The page is also well-formed
//! XML, which keeps it easy to check.

use std::fmt::Write;

use super::{Report, Section, Table, Tone, graph::esc, int, plural};

/// Sections of workloads fold open when there are at most this many (or they have flows that
/// would be denied).
const OPEN_SECTIONS: usize = 12;

/// Cells up to this many characters do not wrap.
const NOWRAP: usize = 24;

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f8fafc; color: #0f172a;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 28px 40px 48px; }
header h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
header p { margin: 0; color: #64748b; }
nav { margin: 14px 0 6px; font-size: 13px; }
nav a { color: #4f46e5; text-decoration: none; margin-right: 14px; }
nav a:hover { text-decoration: underline; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 1px solid #e2e8f0; }
h3 { font-size: 15px; margin: 22px 0 8px; }
p { margin: 8px 0; }
.muted { color: #94a3b8; }
.good { color: #15803d; }
.warn { color: #b45309; }
.bad { color: #b91c1c; }
td.bad { font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px; margin-top: 18px; }
.card { background: #fff; border: 1px solid #e2e8f0; border-left: 4px solid #cbd5e1; border-radius: 10px; padding: 10px 14px; }
.card .label { font-size: 11px; text-transform: uppercase; letter-spacing: 0.06em; color: #64748b; }
.card .value { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .detail { font-size: 12px; color: #64748b; }
.card.good { border-left-color: #16a34a; }
.card.warn { border-left-color: #f59e0b; }
.card.bad { border-left-color: #dc2626; background: #fef2f2; }
.card.bad .value { color: #b91c1c; }
.card .value.bad, .card .value.warn, .card .value.good { font-weight: 650; }
.callout { margin: 16px 0 0; padding: 10px 14px; border-radius: 8px; background: #fef2f2; border: 1px solid #fecaca; color: #991b1b; }
.note { color: #64748b; font-style: italic; }
.graph { overflow-x: auto; background: #fff; border: 1px solid #e2e8f0; border-radius: 10px; padding: 6px; }
.graph svg { display: block; }
.graph svg.fit { max-width: 100%; height: auto; }
.graph .edge:hover path { stroke-opacity: 1; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; background: #fff; border: 1px solid #e2e8f0; }
th { text-align: left; background: #f1f5f9; color: #334155; font-weight: 600; padding: 6px 10px; border-bottom: 1px solid #e2e8f0; white-space: nowrap; }
td { padding: 6px 10px; border-bottom: 1px solid #eef2f7; vertical-align: top; }
tr:last-child td { border-bottom: none; }
tr.row-bad td { background: #fef2f2; }
tr.row-warn td { background: #fffbeb; }
tr.row-muted td { color: #64748b; }
td.nw { white-space: nowrap; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.pill { display: inline-block; padding: 0 8px; border-radius: 999px; font-size: 12px; white-space: nowrap; }
.conf-high { background: #dcfce7; color: #166534; }
.conf-medium { background: #dbeafe; color: #1e40af; }
.conf-low { background: #f1f5f9; color: #475569; }
details.workload { background: #fff; border: 1px solid #e2e8f0; border-radius: 10px; margin: 12px 0; }
details.workload > summary { cursor: pointer; padding: 10px 16px; font-weight: 600; font-size: 15px; }
details.workload > div { padding: 0 16px 14px; }
details.workload table { border-radius: 0; }
.badge { display: inline-block; margin-left: 10px; padding: 0 8px; border-radius: 999px; font-size: 12px; font-weight: 500; background: #f1f5f9; color: #475569; }
.badge.bad { background: #fee2e2; color: #b91c1c; }
.badge.good { background: #dcfce7; color: #166534; }
.badge.warn { background: #fef3c7; color: #92400e; }
ul.notes li { margin: 4px 0; }
footer { margin-top: 40px; color: #94a3b8; font-size: 12px; }
"#;

pub(super) fn render(r: &Report<'_>, svg: &str) -> String {
    let mut out = String::new();
    let title = esc(r.title);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>{title}</title><style>{CSS}</style></head><body><main>"
    );
    let _ = write!(
        out,
        "<header><h1>{title}</h1><p>Palisade policy review: what these policies allow, the \
         evidence behind each rule, and what they would do to the recorded traffic.</p></header>"
    );

    let mut nav = vec![("summary", "Summary"), ("graph", "Graph")];
    if r.denied.is_some() {
        nav.push(("denied", "Would be denied"));
    }
    if r.changes.is_some() {
        nav.push(("changes", "Changes"));
    }
    nav.push(("workloads", "Workloads"));
    if r.unused.is_some() {
        nav.push(("unused", "Unused rules"));
    }
    if r.externals.is_some() {
        nav.push(("externals", "New external destinations"));
    }
    nav.push(("notes", "Left out"));
    out.push_str("<nav>");
    for (id, label) in nav {
        let _ = write!(out, "<a href=\"#{id}\">{label}</a>");
    }
    out.push_str("</nav>");

    out.push_str("<section id=\"summary\"><h2>Summary</h2><div class=\"cards\">");
    for s in &r.summary {
        let _ = write!(
            out,
            "<div class=\"card {}\"><div class=\"label\">{}</div><div class=\"value\">{}</div>",
            s.tone.class(),
            esc(s.label),
            esc(&s.value)
        );
        if let Some(d) = &s.detail {
            let _ = write!(out, "<div class=\"detail\">{}</div>", esc(d));
        }
        out.push_str("</div>");
    }
    out.push_str("</div>");
    for note in &r.summary_notes {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(note));
    }
    if let Some(denied) = r.denied.as_ref().filter(|t| !t.rows.is_empty()) {
        let n = denied.rows.len();
        let _ = write!(
            out,
            "<p class=\"callout\"><strong>{} recorded {} would be denied</strong> by these \
             policies: see <a href=\"#denied\">below</a>.</p>",
            int(n as u64),
            plural(n, "flow", "flows"),
        );
    }
    out.push_str("</section>");

    out.push_str("<section id=\"graph\"><h2>Workload graph</h2><p class=\"note\">");
    out.push_str(if r.denied.is_some() {
        "Each curve is a recorded flow from client to server, as wide as the log of its \
         connections; hover over one for its port and what decides it."
    } else {
        "Each curve is the evidence behind a rule: traffic observed from client to server, as \
         wide as the log of its connections; hover over one for its port and rule."
    });
    let _ = write!(out, "</p><div class=\"graph\">{svg}</div></section>");

    if let Some(t) = &r.denied {
        out.push_str("<section id=\"denied\"><h2>Would be denied</h2>");
        table_or(&mut out, t, "Nothing recorded would be denied.");
        out.push_str("</section>");
    }

    if let Some(c) = &r.changes {
        out.push_str("<section id=\"changes\"><h2>Changes against the policies in force</h2>");
        out.push_str("<h3>Newly denied (what this change would break)</h3>");
        table_or(
            &mut out,
            &c.newly_denied,
            "No flow allowed today would be denied.",
        );
        out.push_str("<h3>Newly allowed</h3>");
        table_or(
            &mut out,
            &c.newly_allowed,
            "No flow denied today would be allowed.",
        );
        out.push_str("<h3>Isolation changes</h3>");
        table_or(&mut out, &c.isolation, "No workload changes isolation.");
        out.push_str("</section>");
    }

    out.push_str("<section id=\"workloads\"><h2>Workloads</h2>");
    if r.workloads.is_empty() {
        out.push_str("<p class=\"note\">The set has no policies.</p>");
    }
    let open_all = r.workloads.len() <= OPEN_SECTIONS;
    for s in &r.workloads {
        section(&mut out, s, open_all || s.denied > 0);
    }
    out.push_str("</section>");

    if let Some(t) = r.unpolicied.as_ref().filter(|t| !t.rows.is_empty()) {
        out.push_str("<section id=\"unpolicied\"><h2>Workloads without a policy in this set</h2>");
        table(&mut out, t);
        out.push_str("</section>");
    }
    if let Some(t) = &r.unused {
        out.push_str("<section id=\"unused\"><h2>Unused rules</h2>");
        table_or(
            &mut out,
            t,
            "Every rule allowed at least one replayed flow.",
        );
        out.push_str("</section>");
    }
    if let Some(t) = &r.externals {
        out.push_str("<section id=\"externals\"><h2>New external destinations</h2>");
        table_or(
            &mut out,
            t,
            "No external destination was first seen recently.",
        );
        out.push_str("</section>");
    }

    out.push_str("<section id=\"notes\"><h2>Observed but left out of the proposal</h2>");
    if r.notes.is_empty() {
        out.push_str("<p class=\"note\">Nothing.</p>");
    } else {
        out.push_str("<ul class=\"notes\">");
        for n in r.notes {
            let _ = write!(out, "<li>{}</li>", esc(n));
        }
        out.push_str("</ul>");
    }
    out.push_str(
        "</section><footer>Generated by Palisade policy-gen.</footer></main></body></html>\n",
    );
    out
}

fn section(out: &mut String, s: &Section, open: bool) {
    let _ = write!(
        out,
        "<details class=\"workload\" id=\"{}\"{}><summary>{}",
        esc(&s.anchor),
        if open { " open=\"open\"" } else { "" },
        esc(&s.title)
    );
    if s.denied > 0 {
        let _ = write!(
            out,
            "<span class=\"badge bad\">{} denied</span>",
            int(s.denied as u64)
        );
    }
    if let Some(c) = s.coverage {
        let _ = write!(
            out,
            "<span class=\"badge {}\">{} covered</span>",
            if c < 1.0 { "warn" } else { "good" },
            super::percent(c)
        );
    }
    let rules: usize = s.policies.iter().map(|p| p.rules.rows.len()).sum();
    let _ = write!(
        out,
        "<span class=\"badge\">{} {}</span></summary><div>",
        int(rules as u64),
        plural(rules, "rule", "rules")
    );
    for p in &s.policies {
        let _ = write!(
            out,
            "<p>Policy <strong>{}</strong> selects {} and isolates {}.</p>",
            esc(&p.id),
            esc(&p.selects),
            esc(&p.isolates)
        );
        table_or(
            out,
            &p.rules,
            "The policy has no rules: it denies everything it isolates.",
        );
    }
    if let Some(line) = &s.replay {
        let _ = write!(out, "<p>{}</p>", esc(line));
    }
    if let Some(flows) = &s.flows {
        table_or(out, flows, "No recorded flow involves it.");
        if s.flows_omitted > 0 {
            let _ = write!(
                out,
                "<p class=\"note\">… and {} more allowed {} (the least busy) not listed.</p>",
                int(s.flows_omitted as u64),
                plural(s.flows_omitted, "flow", "flows"),
            );
        }
    }
    out.push_str("</div></details>");
}

fn table_or(out: &mut String, t: &Table, empty: &str) {
    if t.rows.is_empty() {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(empty));
    } else {
        table(out, t);
    }
}

fn table(out: &mut String, t: &Table) {
    out.push_str("<div class=\"tablewrap\"><table><thead><tr>");
    for c in &t.columns {
        let _ = write!(
            out,
            "<th{}>{}</th>",
            if c.numeric { " class=\"num\"" } else { "" },
            esc(c.title)
        );
    }
    out.push_str("</tr></thead><tbody>");
    for r in &t.rows {
        if r.tone == Tone::Plain {
            out.push_str("<tr>");
        } else {
            let _ = write!(out, "<tr class=\"row-{}\">", r.tone.class());
        }
        for (c, col) in r.cells.iter().zip(&t.columns) {
            let pill = matches!(c.tone, Tone::Low | Tone::Medium | Tone::High);
            let mut classes = Vec::new();
            if col.numeric {
                classes.push("num");
            }
            if !pill && c.tone != Tone::Plain {
                classes.push(c.tone.class());
            }
            // Short cells (ports, dates, verdicts) stay on one line; peers and reasons wrap.
            if c.text.lines().all(|l| l.chars().count() <= NOWRAP) {
                classes.push("nw");
            }
            out.push_str("<td");
            if !classes.is_empty() {
                let _ = write!(out, " class=\"{}\"", classes.join(" "));
            }
            if let Some(title) = &c.title {
                let _ = write!(out, " title=\"{}\"", esc(title));
            }
            out.push('>');
            if pill {
                let _ = write!(
                    out,
                    "<span class=\"pill {}\">{}</span>",
                    c.tone.class(),
                    esc(&c.text)
                );
            } else {
                out.push_str(
                    &c.text
                        .split('\n')
                        .map(esc)
                        .collect::<Vec<_>>()
                        .join("<br/>"),
                );
            }
            out.push_str("</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}
