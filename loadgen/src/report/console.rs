//! The console's closing table: phases, nodes, latency, and every expectation with expected vs
//! actual.

use std::fmt::Write as _;

use super::html::{group, num};
use super::summary::Summary;

/// Left- or right-aligned column.
#[derive(Clone, Copy, PartialEq)]
enum Align {
    Left,
    Right,
}

/// Plain-text table: widths from the content, two spaces between columns.
fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, ((cell, (_, align)), w)) in cells.iter().zip(header).zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if *align == Align::Right {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|(h, _)| *h).collect(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The closing table printed when a run ends.
pub fn console_table(summary: &Summary) -> String {
    use Align::{Left, Right};
    let mut out = String::new();
    let (planned, _published, acked, failed, dropped) = summary.totals();
    let _ = writeln!(
        out,
        "{}: {} of {} events acked in {} s (seed {})",
        summary.scenario,
        group(acked),
        group(planned),
        num(summary.duration_ms / 1_000.0),
        summary.seed
    );
    out.push('\n');

    let mut rows: Vec<Vec<String>> = summary
        .phases
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                group(p.events),
                group(p.acked),
                group(p.failed),
                group(p.dropped),
                num(p.events_per_s),
                num(p.latency.p50_ms),
                num(p.latency.p99_ms),
            ]
        })
        .collect();
    let l = &summary.latency.corrected;
    rows.push(vec![
        "total".to_owned(),
        group(planned),
        group(acked),
        group(failed),
        group(dropped),
        num(summary.throughput.mean_per_s),
        num(l.p50_ms),
        num(l.p99_ms),
    ]);
    out.push_str(&table(
        &[
            ("phase", Left),
            ("events", Right),
            ("acked", Right),
            ("failed", Right),
            ("dropped", Right),
            ("events/s", Right),
            ("p50 ms", Right),
            ("p99 ms", Right),
        ],
        &rows,
    ));
    out.push('\n');

    if !summary.nodes.0.is_empty() {
        let total = summary.nodes.total();
        let rows: Vec<Vec<String>> = summary
            .nodes
            .iter()
            .map(|(n, c)| {
                let share = if total > 0 {
                    c as f64 * 100.0 / total as f64
                } else {
                    0.0
                };
                vec![n.to_owned(), group(c), format!("{share:.1}%")]
            })
            .collect();
        out.push_str(&table(
            &[("node", Left), ("acked", Right), ("share", Right)],
            &rows,
        ));
        out.push('\n');
    }

    let _ = writeln!(
        out,
        "latency (ms, corrected): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        num(l.p50_ms),
        num(l.p90_ms),
        num(l.p99_ms),
        num(l.p999_ms),
        num(l.max_ms)
    );

    if !summary.expectations.is_empty() {
        out.push('\n');
        for e in &summary.expectations {
            let line = e.line.map(|l| format!(" (line {l})")).unwrap_or_default();
            let _ = writeln!(out, "{}  {}{line}", e.status(), e.label);
            let _ = writeln!(out, "      expected: {}", compact(&e.expected));
            let _ = writeln!(out, "      actual:   {}", compact(&e.actual));
            if let Some(m) = &e.message {
                let _ = writeln!(out, "      {m}");
            }
        }
        let held = summary.expectations.iter().filter(|e| e.passed).count();
        let _ = writeln!(
            out,
            "\n{held} of {} expectations hold: {}",
            summary.expectations.len(),
            if summary.passed { "PASS" } else { "FAIL" }
        );
    }
    out
}

fn compact(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".to_owned())
}
