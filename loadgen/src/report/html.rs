//! `report.html`: one self-contained page (inline CSS and SVG, no scripts, nothing fetched).

use std::fmt::Write as _;

use super::summary::{Summary, trim_number};
use super::svg::{Axis, Marker, Series, bar_chart, line_chart};
use crate::measure::CurvePoint;

/// Escapes text for HTML element content and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --pass: #1a7f37; --fail: #c62828; --bg: #ffffff; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 24px; margin: 0 0 4px; display: flex; align-items: center; gap: 12px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
p.desc { margin: 0 0 14px; color: var(--muted); }
.badge { font-size: 13px; font-weight: 700; color: #fff; padding: 3px 10px; border-radius: 12px; letter-spacing: .04em; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 8px; margin: 12px 0 0; }
.fact { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.fact .k { display: block; font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
.fact .v { display: block; font-size: 16px; font-weight: 600; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: var(--panel); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
tr.pass td.status { color: var(--pass); font-weight: 700; } tr.fail td.status { color: var(--fail); font-weight: 700; }
tr.fail { background: #fdf1f1; }
.chart { width: 100%; height: auto; display: block; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
.chart .grid { stroke: #eceff3; stroke-width: 1; }
.chart .axis { stroke: #8a93a3; stroke-width: 1; }
.chart text { font: 12px system-ui, sans-serif; fill: #4a5263; }
.chart .axis-label { font-size: 12px; fill: #2d3442; font-weight: 600; }
.chart .marker { stroke: var(--fail); stroke-width: 1.5; stroke-dasharray: 4 3; }
.chart .marker-label { fill: var(--fail); font-size: 11px; }
.chart .bar { fill: #4c78a8; }
.chart .bar-value { font-weight: 600; fill: #2d3442; }
.chart .no-data { font-size: 16px; fill: #9aa3b2; }
.note { color: var(--muted); font-size: 12px; margin: 4px 0 0; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; }
"#;

fn fact(out: &mut String, key: &str, value: &str) {
    let _ = write!(
        out,
        r#"<div class="fact"><span class="k">{}</span><span class="v">{}</span></div>"#,
        esc(key),
        esc(value)
    );
}

/// Thousands-separated integer: `70,000`.
pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate or latency with sensible precision: `12,345`, `98.6`, `0.412`.
pub(crate) fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_owned();
    }
    if x.abs() >= 1_000.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = x.round().abs() as u64;
        format!("{}{}", if x < 0.0 { "-" } else { "" }, group(n))
    } else if x.abs() >= 100.0 {
        trim_number(x, 1)
    } else {
        trim_number(x, 3)
    }
}

fn compact_json(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".to_owned())
}

/// The percentile curve on HdrHistogram's usual x axis: log10(1 / (1 − p)), so 90%, 99%,
/// 99.9%, … are evenly spaced. The 100% point (infinitely far right) is left out.
fn curve_points(curve: &[CurvePoint]) -> Vec<(f64, f64)> {
    curve
        .iter()
        .filter(|p| p.percentile < 100.0)
        .map(|p| ((1.0 / (1.0 - p.percentile / 100.0)).log10(), p.value_ms))
        .collect()
}

fn percentile_axis(max_x: f64) -> Axis {
    let nines = max_x.ceil().clamp(2.0, 7.0);
    let mut ticks = vec![(0.0, "0%".to_owned())];
    let mut k = 1.0;
    while k <= nines {
        let p = 100.0 - 100.0 / 10f64.powf(k);
        ticks.push((k, format!("{}%", trim_number(p, 6))));
        k += 1.0;
    }
    Axis {
        min: 0.0,
        max: nines,
        ticks,
        label: "percentile".to_owned(),
    }
}

/// `2026-11-20T10:15:30.250Z` as `2026-11-20 10:15:30`.
fn display_time(rfc3339: &str) -> String {
    match rfc3339.parse::<jiff::Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => rfc3339.to_owned(),
    }
}

/// Renders the report page.
pub fn render_html(summary: &Summary) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let (planned, published, acked, failed, dropped) = summary.totals();
    let status = if summary.passed { "pass" } else { "fail" };
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name} · shardtally loadgen</title><style>{STYLE}</style></head>
<body>
<header><h1>{name} <span class="badge {status}">{badge}</span></h1>
"#,
        name = esc(&summary.scenario),
        badge = status.to_ascii_uppercase(),
    );
    if let Some(d) = &summary.description {
        let _ = write!(h, r#"<p class="desc">{}</p>"#, esc(d));
    }
    h.push_str(r#"<div class="facts">"#);
    fact(&mut h, "started (UTC)", &display_time(&summary.started_at));
    fact(
        &mut h,
        "duration",
        &format!("{} s", num(summary.duration_ms / 1_000.0)),
    );
    fact(
        &mut h,
        "events acked",
        &format!("{} / {}", group(acked), group(planned)),
    );
    fact(&mut h, "published", &group(published));
    fact(
        &mut h,
        "failed / dropped",
        &format!("{} / {}", group(failed), group(dropped)),
    );
    fact(&mut h, "mean events/s", &num(summary.throughput.mean_per_s));
    fact(&mut h, "peak events/s", &num(summary.throughput.peak_per_s));
    fact(
        &mut h,
        "p50 / p99 latency",
        &format!(
            "{} / {} ms",
            num(summary.latency.corrected.p50_ms),
            num(summary.latency.corrected.p99_ms)
        ),
    );
    fact(&mut h, "seed", &summary.seed.to_string());
    fact(&mut h, "database", &summary.config.database);
    let cluster = match &summary.config.endpoints {
        Some(e) => e.clone(),
        None => format!("{} workers", summary.config.workers.len()),
    };
    fact(&mut h, "cluster", &cluster);
    h.push_str("</div></header>\n");

    // Expectations.
    let held = summary.expectations.iter().filter(|e| e.passed).count();
    let _ = write!(
        h,
        r#"<section id="expectations"><h2>Expectations — {held} of {} hold</h2>"#,
        summary.expectations.len()
    );
    if summary.expectations.is_empty() {
        h.push_str(r#"<p class="note">The scenario states no expectations.</p>"#);
    } else {
        h.push_str(r#"<table class="expectations"><thead><tr><th>status</th><th>expectation</th><th>expected</th><th>actual</th></tr></thead><tbody>"#);
        for e in &summary.expectations {
            let word = e.status();
            let class = if e.passed || e.advisory {
                "pass"
            } else {
                "fail"
            };
            let line = e
                .line
                .map(|l| format!(" <span class=\"note\">(line {l})</span>"))
                .unwrap_or_default();
            let actual = match &e.message {
                Some(m) if e.actual.is_null() => esc(m),
                Some(m) => format!("{}<br>{}", esc(&compact_json(&e.actual)), esc(m)),
                None => esc(&compact_json(&e.actual)),
            };
            let _ = write!(
                h,
                r#"<tr class="{class}"><td class="status">{word}</td><td><code>{}</code>{line}</td><td><code>{}</code></td><td><code>{actual}</code></td></tr>"#,
                esc(&e.label),
                esc(&compact_json(&e.expected)),
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>\n");

    // Throughput over time.
    let t = &summary.throughput;
    let width_s = t.bucket_ms as f64 / 1_000.0;
    let points: Vec<(f64, f64)> = t
        .counts
        .iter()
        .enumerate()
        .map(|(i, n)| ((i as f64 + 0.5) * width_s, *n as f64 / width_s))
        .collect();
    let span_s = (t.counts.len() as f64 * width_s).max(summary.duration_ms / 1_000.0);
    let x = Axis::linear(0.0, span_s.max(width_s), "seconds since start");
    let y = Axis::linear_headroom(0.0, t.peak_per_s.max(1.0), "acked events/s");
    let markers: Vec<Marker> = summary
        .faults
        .iter()
        .filter_map(|f| {
            f.fired_ms.map(|ms| Marker {
                x: ms / 1_000.0,
                label: format!("{} {}", f.action, f.node_id),
            })
        })
        .collect();
    let _ = write!(
        h,
        r#"<section id="throughput"><h2>Throughput over time</h2>{}<p class="note">Acked events per second, {} ms buckets; mean {} events/s, peak {}.</p></section>"#,
        line_chart(
            "Throughput over time",
            &x,
            &y,
            &[Series {
                name: "acked events/s",
                color: "#4c78a8",
                dashed: false,
                points,
            }],
            &markers,
        ),
        t.bucket_ms,
        num(t.mean_per_s),
        num(t.peak_per_s)
    );

    // Latency percentile curve.
    let lat = &summary.latency;
    let corrected = curve_points(&lat.corrected_curve);
    let raw = curve_points(&lat.raw_curve);
    let max_x = corrected
        .iter()
        .chain(raw.iter())
        .map(|p| p.0)
        .fold(0.0f64, f64::max);
    let ys = || corrected.iter().chain(raw.iter()).map(|p| p.1);
    let max_y = ys().fold(0.0f64, f64::max);
    let min_y = ys().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let x = percentile_axis(max_x);
    // A long tail squashes a linear axis flat: switch to log10 when the range spans more than
    // 20× the median.
    let median = lat.corrected.p50_ms.max(lat.raw.p50_ms);
    let (y, corrected, raw) = if median > 0.0 && max_y > 20.0 * median && min_y.is_finite() {
        let floor = min_y;
        let log = |pts: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
            pts.into_iter()
                .map(|(x, y)| (x, y.max(floor).log10()))
                .collect()
        };
        (
            Axis::log10(min_y, max_y, "latency (ms, log scale)"),
            log(corrected),
            log(raw),
        )
    } else {
        (
            Axis::linear_headroom(0.0, max_y.max(0.001), "latency (ms)"),
            corrected,
            raw,
        )
    };
    let _ = write!(
        h,
        r#"<section id="latency"><h2>Latency percentiles</h2>{}"#,
        line_chart(
            "Latency by percentile",
            &x,
            &y,
            &[
                Series {
                    name: "corrected",
                    color: "#e45756",
                    dashed: false,
                    points: corrected,
                },
                Series {
                    name: "raw",
                    color: "#4c78a8",
                    dashed: true,
                    points: raw,
                },
            ],
            &[],
        )
    );
    h.push_str(r#"<table class="latency"><thead><tr><th></th><th class="num">count</th><th class="num">min</th><th class="num">mean</th><th class="num">p50</th><th class="num">p90</th><th class="num">p99</th><th class="num">p99.9</th><th class="num">max</th></tr></thead><tbody>"#);
    for (name, s) in [("corrected (ms)", &lat.corrected), ("raw (ms)", &lat.raw)] {
        let _ = write!(
            h,
            r#"<tr><td>{name}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            group(s.count),
            num(s.min_ms),
            num(s.mean_ms),
            num(s.p50_ms),
            num(s.p90_ms),
            num(s.p99_ms),
            num(s.p999_ms),
            num(s.max_ms)
        );
    }
    h.push_str("</tbody></table>");
    let _ = write!(
        h,
        r#"<p class="note">Publish→ack latency. "corrected" runs from each event's due time in rate-limited phases, so stalls that delay publishing are not hidden (latency.hgrm); "raw" runs from the publish call (latency-raw.hgrm). At max rate the two are the same.{}</p></section>"#,
        if lat.clamped > 0 {
            format!(
                " {} latencies above one hour were counted at one hour.",
                group(lat.clamped)
            )
        } else {
            String::new()
        }
    );

    // Per node.
    let bars: Vec<(String, u64)> = summary
        .nodes
        .iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
    let _ = write!(
        h,
        r#"<section id="nodes"><h2>Per-node distribution</h2>{}</section>"#,
        bar_chart("Acked events per node", "acked events", &bars)
    );

    // Phases.
    h.push_str(r#"<section id="phases"><h2>Phases</h2><table class="phases"><thead><tr><th>phase</th><th>stream</th><th>rate</th><th class="num">publishers</th><th class="num">events</th><th class="num">acked</th><th class="num">failed</th><th class="num">dropped</th><th class="num">events/s</th><th class="num">p50 ms</th><th class="num">p99 ms</th><th>per node</th></tr></thead><tbody>"#);
    for p in &summary.phases {
        let nodes: Vec<String> = p
            .nodes
            .iter()
            .map(|(n, c)| format!("{}: {}", n, group(c)))
            .collect();
        let _ = write!(
            h,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            esc(&p.name),
            esc(&p.stream),
            esc(&p.rate),
            p.publishers,
            group(p.events),
            group(p.acked),
            group(p.failed),
            group(p.dropped),
            num(p.events_per_s),
            num(p.latency.p50_ms),
            num(p.latency.p99_ms),
            esc(&nodes.join(", "))
        );
    }
    h.push_str("</tbody></table></section>\n");

    // Faults.
    if !summary.faults.is_empty() {
        h.push_str(r#"<section id="faults"><h2>Faults</h2><table class="faults"><thead><tr><th>action</th><th>node</th><th>planned at</th><th class="num">fired at (s)</th><th class="num">events published</th><th>note</th></tr></thead><tbody>"#);
        for f in &summary.faults {
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                esc(&f.action),
                esc(&f.node_id),
                esc(&f.planned),
                f.fired_ms
                    .map_or("not fired".to_owned(), |ms| num(ms / 1_000.0)),
                f.fired_at_event.map_or("–".to_owned(), group),
                esc(f.note.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</tbody></table></section>\n");
    }

    let _ = write!(
        h,
        r#"<footer>shardtally-loadgen {} · scenario file {} · app {}</footer>
</body></html>
"#,
        esc(&summary.config.loadgen_version),
        esc(&summary.config.scenario_file),
        esc(summary
            .config
            .app
            .as_deref()
            .unwrap_or("bundled GeoLocation app"))
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(70_000), "70,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(num(12_345.6), "12,346");
        assert_eq!(num(123.45), "123.5");
        assert_eq!(num(0.4125), "0.412");
        assert_eq!(num(f64::NAN), "–");
    }

    #[test]
    fn percentile_axis_labels() {
        let a = percentile_axis(3.2);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
        assert_eq!(percentile_axis(0.5).max, 2.0);
    }
}
