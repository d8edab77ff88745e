//! The bench's console table (also written to `table.txt`).

use std::fmt::Write as _;

use super::{BenchSummary, SystemResult};

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".to_owned();
    }
    // Finite (checked above) and made non-negative; saturates above u64::MAX.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = x.round().abs() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && n > 0 {
        out.insert(0, '-');
    }
    out
}

fn millis(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{}×", thousands(x))
    } else {
        format!("{x:.2}×")
    }
}

/// Renders the whole table.
pub(crate) fn render(s: &BenchSummary) -> String {
    let c = &s.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nshardtally bench: {} events, {} keys, {} ms of event time ({}), {} worker(s), {} \
         publisher(s) in turns of {} batches, flush every {} ms, database {}, {} CPUs (load {} \
         before, {} after)\n",
        thousands(c.events as f64),
        thousands(c.keys as f64),
        thousands(c.time_spread_ms as f64),
        c.time_order,
        c.workers,
        c.publishers,
        c.batches_per_turn,
        c.flush_interval_ms,
        c.database,
        s.machine.cpus,
        s.machine.loadavg_before,
        s.machine.loadavg_after,
    );
    let _ = writeln!(
        out,
        "{:<22} {:>11} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>12}",
        "",
        "events/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "rows/s",
        "RSS pub",
        "RSS workers"
    );
    let mut row = |name: &str, r: &SystemResult| {
        let workers: Vec<String> = r
            .rss_workers_mib
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<22} {:>11} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8.0}M {:>11}M",
            name,
            thousands(r.events_per_sec),
            millis(r.p50_ms),
            millis(r.p99_ms),
            millis(r.p999_ms),
            millis(r.max_ms),
            thousands(r.rows_per_sec),
            r.rss_publisher_mib,
            workers.join("/"),
        );
    };
    row("shardtally", &s.shardtally);
    if let Some(h) = &s.half_rate {
        row("shardtally @ 50% rate", h);
    }
    if let Some(w) = &s.wire {
        row("wire (decode+discard)", w);
    }
    if let Some(n) = &s.naive {
        let _ = writeln!(
            out,
            "{:<22} {:>11} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "naive (extrapolated)",
            thousands(n.events_per_sec),
            millis(n.p50_ms),
            millis(n.p99_ms),
            "",
            millis(n.max_ms),
            thousands(n.events_per_sec),
        );
    }
    let _ = writeln!(out);
    let mut ratios = Vec::new();
    if let Some(r) = s.ratios.vs_naive {
        ratios.push(format!("shardtally/naive = {}", ratio(r)));
    }
    if let Some(r) = s.ratios.vs_wire {
        ratios.push(format!(
            "shardtally/wire = {} ({:.0}%)",
            ratio(r),
            r * 100.0
        ));
    }
    if !ratios.is_empty() {
        let _ = writeln!(out, "ratios: {}", ratios.join(", "));
    }
    let t = &s.shardtally;
    let _ = writeln!(
        out,
        "exactly once: {} — {} sent, {} acked, {} committed{}",
        if s.exactly_once { "yes" } else { "NO" },
        thousands(t.events as f64),
        thousands(t.acked as f64),
        t.committed
            .map_or_else(|| "-".to_owned(), |n| thousands(n as f64)),
        t.last_failure
            .as_ref()
            .map(|f| format!(" (last failure: {f})"))
            .unwrap_or_default(),
    );
    let _ = writeln!(
        out,
        "shardtally: {} commits, {} rows written ({:.1} events per row), {} batches re-sent, {} \
         failovers",
        thousands(t.commits as f64),
        thousands(t.rows_written as f64),
        if t.rows_written > 0 {
            t.acked as f64 / t.rows_written as f64
        } else {
            0.0
        },
        thousands(t.retried as f64),
        thousands(t.failed_over as f64),
    );
    if let (Some(p50), Some(p99)) = (t.commit_p50_ms, t.commit_p99_ms) {
        let _ = writeln!(
            out,
            "commit transactions took p50 ≤ {p50:.0} ms, p99 ≤ {p99:.0} ms (the workers' histogram \
             buckets)"
        );
    }
    if let Some(d) = &s.database {
        let _ = writeln!(
            out,
            "database ({}): {} rows/s in {}-row commit transactions on one connection ({} transactions)",
            d.backend,
            thousands(d.batched_upsert_rows_per_sec),
            d.rows_per_transaction,
            d.transactions
        );
    }
    if let Some(n) = &s.naive {
        let _ = writeln!(
            out,
            "naive: extrapolated from a {:.1} s sample of {} upserts on {} connection(s); all {} \
             events would take {:.0} s",
            n.sample_seconds,
            thousands(n.sample_events as f64),
            n.connections,
            thousands(c.events as f64),
            n.extrapolated_seconds
        );
    }
    if let Some(b) = &s.publisher_buffer {
        let _ = writeln!(
            out,
            "publisher, every worker down: buffer full at {} events / {:.1} MiB (bounds {} events, \
             {:.0} MiB), {} dropped (counted); loadgen RSS {:.1} → {:.1} MiB (+{:.1} MiB)",
            thousands(b.buffered_events as f64),
            b.buffered_bytes as f64 / (1024.0 * 1024.0),
            thousands(b.buffer_max_events as f64),
            b.buffer_max_bytes as f64 / (1024.0 * 1024.0),
            thousands(b.dropped as f64),
            b.rss_before_mib,
            b.rss_full_mib,
            b.rss_growth_mib
        );
    }
    let _ = writeln!(out, "limited by:");
    let _ = writeln!(out, "  shardtally: {}", t.limited_by);
    if let Some(h) = &s.half_rate {
        let _ = writeln!(out, "  shardtally @ 50%: {}", h.limited_by);
    }
    if let Some(w) = &s.wire {
        let _ = writeln!(out, "  wire: {}", w.limited_by);
    }
    if let Some(n) = &s.naive {
        let _ = writeln!(out, "  naive: {}", n.limited_by);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(2_013_456.7), "2,013,457");
        assert_eq!(thousands(-1234.0), "-1,234");
        assert_eq!(thousands(f64::NAN), "-");
        assert_eq!(ratio(958.2), "958×");
        assert_eq!(ratio(0.41), "0.41×");
        assert_eq!(millis(0.456), "0.46");
        assert_eq!(millis(210.3), "210");
    }
}
