//! Inline SVG charts for `report.html`: a line chart and a bar chart, no scripts, no fonts to
//! fetch.

use std::fmt::Write as _;

use super::html::esc;

/// Plot area geometry (SVG user units).
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 44.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 52.0;

/// One line of a line chart.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) color: &'a str,
    pub(crate) dashed: bool,
    /// Points in axis units (x already transformed, e.g. log-scaled).
    pub(crate) points: Vec<(f64, f64)>,
}

/// An axis: its range and labelled ticks (positions in axis units).
pub(crate) struct Axis {
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) ticks: Vec<(f64, String)>,
    pub(crate) label: String,
}

impl Axis {
    /// A linear axis from `min` to at least `max`, with "nice" ticks (1, 2, 5 × 10^k steps).
    pub(crate) fn linear(min: f64, max: f64, label: &str) -> Axis {
        let (max_axis, step) = nice_scale(min, max, 6);
        let mut ticks = Vec::new();
        let mut k = 0u32;
        loop {
            let v = min + f64::from(k) * step;
            if v > max_axis + step * 1e-9 || k > 100 {
                break;
            }
            ticks.push((v, format_tick(v, step)));
            k += 1;
        }
        Axis {
            min,
            max: max_axis,
            ticks,
            label: label.to_owned(),
        }
    }
}

impl Axis {
    /// A linear axis from `min` with headroom above `max` (so a flat line at the maximum does
    /// not sit on the frame).
    pub(crate) fn linear_headroom(min: f64, max: f64, label: &str) -> Axis {
        Axis::linear(min, min + (max - min) * 1.08, label)
    }

    /// A log10 axis covering `[min, max]` (both > 0): positions are `log10(value)`, ticks at
    /// powers of ten (and 2× and 5× when the range spans few decades).
    pub(crate) fn log10(min: f64, max: f64, label: &str) -> Axis {
        let lo = min.max(f64::MIN_POSITIVE).log10().floor();
        let hi = max.max(min).log10().ceil().max(lo + 1.0);
        let mut ticks = Vec::new();
        let mut k = lo;
        while k <= hi {
            let decade = 10f64.powf(k);
            ticks.push((k, format_tick(decade, decade)));
            if hi - lo <= 3.0 && k < hi {
                for m in [2.0, 5.0] {
                    let v = m * decade;
                    ticks.push((v.log10(), format_tick(v, decade)));
                }
            }
            k += 1.0;
        }
        Axis {
            min: lo,
            max: hi,
            ticks,
            label: label.to_owned(),
        }
    }
}

/// The axis maximum (a multiple of the step, ≥ `max`) and the step for about `n` ticks.
pub(crate) fn nice_scale(min: f64, max: f64, n: u32) -> (f64, f64) {
    let range = if max > min && (max - min).is_finite() {
        max - min
    } else {
        1.0
    };
    let rough = range / f64::from(n.max(1));
    let magnitude = 10f64.powf(rough.log10().floor());
    let residual = rough / magnitude;
    let nice = if residual <= 1.0 {
        1.0
    } else if residual <= 2.0 {
        2.0
    } else if residual <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = nice * magnitude;
    let max_axis = min + (range / step).ceil() * step;
    (max_axis, step)
}

/// A tick label: thousands as `k`, millions as `M`, decimals only as many as the step needs.
pub(crate) fn format_tick(v: f64, step: f64) -> String {
    let a = v.abs();
    if a >= 1e6 && step >= 1e5 {
        format!("{}M", super::summary::trim_number(v / 1e6, 1))
    } else if a >= 1e4 && step >= 1e3 {
        format!("{}k", super::summary::trim_number(v / 1e3, 1))
    } else {
        let decimals = if step >= 1.0 {
            0
        } else {
            // Enough decimals to tell neighbouring ticks apart.
            let d = (-step.log10()).ceil();
            if d.is_finite() && d > 0.0 {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let d = d.min(6.0) as usize;
                d
            } else {
                0
            }
        };
        super::summary::trim_number(v, decimals)
    }
}

fn scale(v: f64, min: f64, max: f64, out_lo: f64, out_hi: f64) -> f64 {
    if max > min {
        out_lo + (v - min) / (max - min) * (out_hi - out_lo)
    } else {
        out_lo
    }
}

/// A vertical marker on a line chart (e.g. a fault), at an x in axis units.
pub(crate) struct Marker {
    pub(crate) x: f64,
    pub(crate) label: String,
}

/// An SVG line chart.
pub(crate) fn line_chart(
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series<'_>],
    markers: &[Marker],
) -> String {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    let px = |v: f64| scale(v, x.min, x.max, x0, x1);
    let py = |v: f64| scale(v, y.min, y.max, y0, y1);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="chart line-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"##,
        esc(title)
    );
    let _ = write!(s, "<title>{}</title>", esc(title));
    // Grid and tick labels.
    for (v, label) in &y.ticks {
        let yy = py(*v);
        let _ = write!(
            s,
            r##"<line class="grid" x1="{x0:.1}" y1="{yy:.1}" x2="{x1:.1}" y2="{yy:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 8.0,
            yy + 4.0,
            esc(label)
        );
    }
    for (v, label) in &x.ticks {
        let xx = px(*v);
        let _ = write!(
            s,
            r##"<line class="grid" x1="{xx:.1}" y1="{y0:.1}" x2="{xx:.1}" y2="{y1:.1}"/><text class="tick" x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y0 + 18.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        r##"<line class="axis" x1="{x0:.1}" y1="{y0:.1}" x2="{x1:.1}" y2="{y0:.1}"/><line class="axis" x1="{x0:.1}" y1="{y0:.1}" x2="{x0:.1}" y2="{y1:.1}"/>"##
    );
    let _ = write!(
        s,
        r##"<text class="axis-label" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        (x0 + x1) / 2.0,
        HEIGHT - 8.0,
        esc(&x.label)
    );
    let _ = write!(
        s,
        r##"<text class="axis-label" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        (y0 + y1) / 2.0,
        esc(&y.label)
    );
    for m in markers {
        let xx = px(m.x);
        let _ = write!(
            s,
            r##"<line class="marker" x1="{xx:.1}" y1="{y0:.1}" x2="{xx:.1}" y2="{y1:.1}"/><text class="marker-label" x="{:.1}" y="{:.1}">{}</text>"##,
            xx + 4.0,
            y1 + 12.0,
            esc(&m.label)
        );
    }
    let mut any = false;
    for se in series {
        if se.points.is_empty() {
            continue;
        }
        any = true;
        let mut d = String::new();
        for (i, (vx, vy)) in se.points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                px(*vx),
                py(*vy)
            );
        }
        let _ = write!(
            s,
            r##"<path class="series" d="{d}" fill="none" stroke="{}" stroke-width="2"{}><title>{}</title></path>"##,
            esc(se.color),
            if se.dashed {
                r##" stroke-dasharray="6 4""##
            } else {
                ""
            },
            esc(se.name)
        );
    }
    if !any {
        let _ = write!(
            s,
            r##"<text class="no-data" x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"##,
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0
        );
    }
    // Legend, top right.
    let mut lx = x1 - 10.0;
    for se in series.iter().rev() {
        let w = 34.0 + 7.0 * se.name.chars().count() as f64;
        lx -= w;
        let _ = write!(
            s,
            r##"<g class="legend"><line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"{}/><text x="{:.1}" y="{:.1}">{}</text></g>"##,
            y1 - 18.0,
            lx + 22.0,
            y1 - 18.0,
            esc(se.color),
            if se.dashed {
                r##" stroke-dasharray="6 4""##
            } else {
                ""
            },
            lx + 27.0,
            y1 - 14.0,
            esc(se.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// An SVG bar chart: one labelled bar per `(label, value)`.
pub(crate) fn bar_chart(title: &str, y_label: &str, bars: &[(String, u64)]) -> String {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP + 10.0);
    let max = bars.iter().map(|(_, v)| *v).max().unwrap_or(0) as f64;
    let y = Axis::linear_headroom(0.0, max.max(1.0), y_label);
    let py = |v: f64| scale(v, y.min, y.max, y0, y1);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="chart bar-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"##,
        esc(title)
    );
    let _ = write!(s, "<title>{}</title>", esc(title));
    for (v, label) in &y.ticks {
        let yy = py(*v);
        let _ = write!(
            s,
            r##"<line class="grid" x1="{x0:.1}" y1="{yy:.1}" x2="{x1:.1}" y2="{yy:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 8.0,
            yy + 4.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        r##"<line class="axis" x1="{x0:.1}" y1="{y0:.1}" x2="{x1:.1}" y2="{y0:.1}"/>"##
    );
    let _ = write!(
        s,
        r##"<text class="axis-label" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        (y0 + y1) / 2.0,
        esc(y_label)
    );
    if bars.is_empty() {
        let _ = write!(
            s,
            r##"<text class="no-data" x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"##,
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0
        );
    }
    let slot = (x1 - x0) / bars.len().max(1) as f64;
    let width = (slot * 0.6).min(120.0);
    let total: u64 = bars.iter().map(|(_, v)| *v).sum();
    for (i, (label, value)) in bars.iter().enumerate() {
        let cx = x0 + slot * (i as f64 + 0.5);
        let top = py(*value as f64);
        let share = if total > 0 {
            *value as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let _ = write!(
            s,
            r##"<rect class="bar" x="{:.1}" y="{top:.1}" width="{width:.1}" height="{:.1}"><title>{}: {value}</title></rect><text class="bar-value" x="{cx:.1}" y="{:.1}" text-anchor="middle">{} ({}%)</text><text class="tick" x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            cx - width / 2.0,
            (y0 - top).max(0.0),
            esc(label),
            top - 6.0,
            super::html::group(*value),
            super::summary::trim_number(share, 1),
            y0 + 18.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_scales() {
        assert_eq!(nice_scale(0.0, 100.0, 5), (100.0, 20.0));
        assert_eq!(nice_scale(0.0, 97.0, 6), (100.0, 20.0));
        assert_eq!(nice_scale(0.0, 7_300.0, 6), (8_000.0, 2_000.0));
        assert_eq!(nice_scale(0.0, 0.0, 6), (1.0, 0.2));
        assert_eq!(nice_scale(0.0, 0.34, 6), (0.4, 0.1));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(format_tick(20_000.0, 5_000.0), "20k");
        assert_eq!(format_tick(2_500_000.0, 500_000.0), "2.5M");
        assert_eq!(format_tick(800.0, 200.0), "800");
        assert_eq!(format_tick(0.25, 0.05), "0.25");
        assert_eq!(format_tick(0.4, 0.2), "0.4");
    }

    #[test]
    fn log_axis_ticks() {
        let a = Axis::log10(0.4, 250.0, "ms");
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.1", "1", "10", "100", "1000"]);
        assert_eq!((a.min, a.max), (-1.0, 3.0));
        let b = Axis::log10(1.5, 40.0, "ms");
        let labels: Vec<&str> = b.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1", "2", "5", "10", "20", "50", "100"]);
    }

    #[test]
    fn linear_axis_ticks_cover_the_range() {
        let a = Axis::linear(0.0, 97.0, "x");
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "20", "40", "60", "80", "100"]);
        assert_eq!(a.max, 100.0);
    }

    #[test]
    fn charts_escape_labels_and_say_no_data() {
        let x = Axis::linear(0.0, 1.0, "<x>");
        let y = Axis::linear(0.0, 1.0, "y");
        let empty = line_chart("t&t", &x, &y, &[], &[]);
        assert!(
            empty.contains("no data") && empty.contains("&lt;x&gt;") && empty.contains("t&amp;t")
        );
        let bars = bar_chart(
            "b",
            "events",
            &[("n<1>".to_owned(), 3), ("n2".to_owned(), 1)],
        );
        assert_eq!(bars.matches("<rect class=\"bar\"").count(), 2);
        assert!(
            bars.contains("n&lt;1&gt;") && bars.contains(">3 (75%)<") && bars.contains(">1 (25%)<")
        );
    }
}
