//! The report as GitHub-flavoured Markdown, for a pull request's description.

use std::fmt::Write;

use super::{Report, Section, Stat, Table, int, plural};

pub(super) fn render(r: &Report<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", text(r.title));

    out.push_str("## Summary\n\n");
    out.push_str(&table(&summary_table(&r.summary)));
    for note in &r.summary_notes {
        let _ = writeln!(out, "\n_{}_", text(note));
    }
    if let Some(denied) = r.denied.as_ref().filter(|t| !t.rows.is_empty()) {
        let n = denied.rows.len();
        let _ = writeln!(
            out,
            "\n> [!WARNING]\n> {} recorded {} would be denied by these policies: see below.",
            int(n as u64),
            plural(n, "flow", "flows"),
        );
    }

    if let Some(denied) = &r.denied {
        out.push_str("\n## Would be denied\n\n");
        table_or(&mut out, denied, "Nothing recorded would be denied.");
    }

    if let Some(c) = &r.changes {
        out.push_str("\n## Changes against the policies in force\n\n");
        out.push_str("### Newly denied (what this change would break)\n\n");
        table_or(
            &mut out,
            &c.newly_denied,
            "No flow allowed today would be denied.",
        );
        out.push_str("\n### Newly allowed\n\n");
        table_or(
            &mut out,
            &c.newly_allowed,
            "No flow denied today would be allowed.",
        );
        out.push_str("\n### Isolation changes\n\n");
        table_or(&mut out, &c.isolation, "No workload changes isolation.");
    }

    out.push_str("\n## Workloads\n");
    if r.workloads.is_empty() {
        out.push_str("\n_The set has no policies._\n");
    }
    for s in &r.workloads {
        section(&mut out, s);
    }

    if let Some(t) = r.unpolicied.as_ref().filter(|t| !t.rows.is_empty()) {
        out.push_str("\n## Workloads without a policy in this set\n\n");
        out.push_str(&table(t));
    }
    if let Some(t) = &r.unused {
        out.push_str("\n## Unused rules\n\n");
        table_or(
            &mut out,
            t,
            "Every rule allowed at least one replayed flow.",
        );
    }
    if let Some(t) = &r.externals {
        out.push_str("\n## New external destinations\n\n");
        table_or(
            &mut out,
            t,
            "No external destination was first seen recently.",
        );
    }

    out.push_str("\n## Observed but left out of the proposal\n\n");
    if r.notes.is_empty() {
        out.push_str("_Nothing._\n");
    }
    for note in r.notes {
        let _ = writeln!(out, "- {}", text(note));
    }
    out
}

fn section(out: &mut String, s: &Section) {
    let _ = writeln!(out, "\n### {}\n", text(&s.title));
    for p in &s.policies {
        let _ = writeln!(
            out,
            "Policy **{}** selects {} and isolates {}.\n",
            text(&p.id),
            text(&p.selects),
            text(&p.isolates)
        );
        table_or(
            out,
            &p.rules,
            "The policy has no rules: it denies everything it isolates.",
        );
        out.push('\n');
    }
    if let Some(line) = &s.replay {
        let _ = writeln!(out, "{}\n", text(line));
    }
    if let Some(flows) = &s.flows {
        table_or(out, flows, "No recorded flow involves it.");
        if s.flows_omitted > 0 {
            let _ = writeln!(
                out,
                "\n_… and {} more allowed {} (the least busy) not listed._",
                int(s.flows_omitted as u64),
                plural(s.flows_omitted, "flow", "flows"),
            );
        }
    }
}

fn summary_table(stats: &[Stat]) -> Table {
    let mut t = Table::new(&[("", false), ("Number", true), ("", false)]);
    for s in stats {
        t.push(
            vec![
                super::Cell::new(s.label),
                super::Cell::new(s.value.clone()),
                super::Cell::new(s.detail.clone().unwrap_or_default()),
            ],
            s.tone,
        );
    }
    t
}

fn table_or(out: &mut String, t: &Table, empty: &str) {
    if t.rows.is_empty() {
        let _ = writeln!(out, "_{}_", text(empty));
    } else {
        out.push_str(&table(t));
    }
}

/// A table with its columns padded to one width, numbers aligned right.
fn table(t: &Table) -> String {
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| r.cells.iter().map(|c| text(&c.text)).collect())
        .collect();
    let widths: Vec<usize> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| width(&r[i]))
                .chain([width(c.title), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = (usize, String)>| {
        let mut s = String::from("|");
        for (i, cell) in cells {
            let pad = " ".repeat(widths[i] - width(&cell));
            if t.columns[i].numeric {
                let _ = write!(s, " {pad}{cell} |");
            } else {
                let _ = write!(s, " {cell}{pad} |");
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&mut t.columns.iter().map(|c| text(c.title)).enumerate());
    out.push('|');
    for (i, c) in t.columns.iter().enumerate() {
        let dashes = "-".repeat(widths[i] - 1);
        if c.numeric {
            let _ = write!(out, " {dashes}: |");
        } else {
            let _ = write!(out, " {dashes}- |");
        }
    }
    out.push('\n');
    for r in rows {
        out.push_str(&line(&mut r.into_iter().enumerate()));
    }
    out
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Text from the cluster, made inert: Markdown and inline HTML characters are escaped, line
/// breaks (which would end a table row) become spaces.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, c)| c);
        match c {
            '\\' | '`' | '*' | '_' | '<' | '|' | '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            // Only `](`, `][` and `]:` make links; rule indices like `egress[0]` stay as
            // they are.
            ']' if matches!(next, Some('(' | '[' | ':')) => {
                out.push('\\');
                out.push(c);
            }
            // Block syntax only counts at the start of a line.
            '-' | '+' | '=' | '>' | '#' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(text("a|b"), "a\\|b");
        assert_eq!(text("<script>"), "\\<script>");
        assert_eq!(text("a -> b"), "a -> b");
        assert_eq!(text("egress[0]"), "egress[0]");
        assert_eq!(
            text("[x](javascript:alert(1))"),
            "[x\\](javascript:alert(1))"
        );
        assert_eq!(text("line\nbreak"), "line break");
        assert_eq!(text("- item"), "\\- item");
        assert_eq!(text("a-b"), "a-b");
    }
}
