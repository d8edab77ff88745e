//! Worker counters and gauges, shared by every task and rendered for `GET /metrics` in the
//! Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::store::WriteCounts;

/// Every counter the worker exports. All fields are monotonic counters unless named as gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Publisher connections accepted.
    pub connections_accepted: AtomicU64,
    /// Gauge: publisher connections open now.
    pub connections_open: AtomicI64,
    /// Connections refused for a wrong or missing auth token.
    pub auth_failures: AtomicU64,
    /// TLS handshakes that failed, and plaintext connections to a TLS listener.
    pub tls_failures: AtomicU64,
    /// Connections closed for a protocol error (malformed, oversized, bad version, timeouts).
    pub protocol_errors: AtomicU64,
    /// Batches received (before de-duplication).
    pub batches_received: AtomicU64,
    /// Events received (before de-duplication).
    pub events_received: AtomicU64,
    /// Batches rejected (never retried by the publisher).
    pub batches_rejected: AtomicU64,
    /// Batches found already committed (by this or another worker) and acked without counting.
    pub batches_duplicate: AtomicU64,
    /// Batches committed by this worker.
    pub batches_committed: AtomicU64,
    /// Events committed by this worker.
    pub events_committed: AtomicU64,
    /// Flush attempts that failed and were retried.
    pub commit_failures: AtomicU64,
    /// Gauge: events received but not yet committed.
    pub pending_events: AtomicI64,
    /// Gauge: event bytes of the batches held (queued for the ingest task, pending, in the
    /// commit), bounded by `max_pending_bytes`.
    pub pending_bytes: AtomicI64,
    /// Gauge: the database answered the last attempt.
    pub database_up: AtomicBool,
    /// Gauge: duration of the last commit, microseconds.
    pub last_commit_micros: AtomicU64,
    /// Histogram of commit durations (see [`Metrics::observe_commit`]); its count is the number
    /// of flush transactions committed.
    commit_duration: Histogram,
}

/// Upper bounds of the commit-duration histogram's buckets, milliseconds.
pub const COMMIT_BUCKETS_MS: [u64; 14] = [
    5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1_000, 2_000, 5_000,
];

/// A Prometheus histogram of durations: a counter per bucket (non-cumulative here, cumulative
/// when rendered), the count and the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; COMMIT_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    /// A fresh set with the database assumed up.
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.database_up.store(true, Ordering::Relaxed);
        m
    }

    /// Records one committed flush that took `micros`: the last-commit gauge and the histogram.
    pub fn observe_commit(&self, micros: u64) {
        self.last_commit_micros.store(micros, Ordering::Relaxed);
        let h = &self.commit_duration;
        if let Some(i) = COMMIT_BUCKETS_MS
            .iter()
            .position(|&ms| micros <= ms * 1_000)
        {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders the Prometheus text exposition format, labelled with node and shard, with the
    /// store's `writes` (rows written come from the store, which counts every commit).
    pub fn render(&self, node_id: &str, shard_id: &str, writes: WriteCounts) -> String {
        let labels = format!(
            "node_id=\"{}\",shard_id=\"{}\"",
            escape(node_id),
            escape(shard_id)
        );
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP shardtally_{name} {help}");
            let _ = writeln!(out, "# TYPE shardtally_{name} counter");
            let _ = writeln!(out, "shardtally_{name}{{{labels}}} {v}");
        };
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "connections_accepted_total",
            "Publisher connections accepted.",
            r(&self.connections_accepted),
        );
        counter(
            "auth_failures_total",
            "Connections refused for a wrong or missing token.",
            r(&self.auth_failures),
        );
        counter(
            "tls_failures_total",
            "Failed TLS handshakes and plaintext connections to a TLS listener.",
            r(&self.tls_failures),
        );
        counter(
            "protocol_errors_total",
            "Connections closed for a protocol error.",
            r(&self.protocol_errors),
        );
        counter(
            "batches_received_total",
            "Batches received, before de-duplication.",
            r(&self.batches_received),
        );
        counter(
            "events_received_total",
            "Events received, before de-duplication.",
            r(&self.events_received),
        );
        counter(
            "batches_rejected_total",
            "Batches rejected as invalid.",
            r(&self.batches_rejected),
        );
        counter(
            "batches_duplicate_total",
            "Batches already committed, acked without counting.",
            r(&self.batches_duplicate),
        );
        counter(
            "batches_committed_total",
            "Batches committed by this worker.",
            r(&self.batches_committed),
        );
        counter(
            "events_committed_total",
            "Events committed by this worker.",
            r(&self.events_committed),
        );
        counter(
            "rows_written_total",
            "Aggregate rows written, all granularities.",
            writes.rows_inserted + writes.rows_upserted,
        );
        counter(
            "rows_inserted_total",
            "Of the rows written, those in new buckets, written with a plain INSERT.",
            writes.rows_inserted,
        );
        counter(
            "flushes_rewritten_total",
            "Flushes rolled back because a row believed new existed, then written with upserts.",
            writes.flushes_rewritten,
        );
        counter(
            "commits_total",
            "Flush transactions committed.",
            self.commit_duration.count.load(Ordering::Relaxed),
        );
        counter(
            "commit_failures_total",
            "Flush attempts that failed and were retried.",
            r(&self.commit_failures),
        );
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP shardtally_{name} {help}");
            let _ = writeln!(out, "# TYPE shardtally_{name} gauge");
            let _ = writeln!(out, "shardtally_{name}{{{labels}}} {v}");
        };
        gauge(
            "connections_open",
            "Publisher connections open.",
            self.connections_open.load(Ordering::Relaxed),
        );
        gauge(
            "pending_events",
            "Events received and not yet committed.",
            self.pending_events.load(Ordering::Relaxed),
        );
        gauge(
            "pending_bytes",
            "Event bytes of the batches received and not yet acked (max_pending_bytes bounds them).",
            self.pending_bytes.load(Ordering::Relaxed),
        );
        gauge(
            "database_up",
            "1 when the database answered the last attempt.",
            i64::from(self.database_up.load(Ordering::Relaxed)),
        );
        gauge(
            "last_commit_microseconds",
            "Duration of the last flush transaction.",
            i64::try_from(self.last_commit_micros.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        );
        let h = &self.commit_duration;
        let name = "shardtally_commit_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of committed flush transactions."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (ms, n) in COMMIT_BUCKETS_MS.iter().zip(&h.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let le = *ms as f64 / 1_000.0;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_labels() {
        let m = Metrics::new();
        Metrics::add(&m.events_committed, 70_000);
        let writes = WriteCounts {
            rows_inserted: 5,
            rows_upserted: 7,
            flushes_rewritten: 1,
        };
        let text = m.render("n\"1", "s1", writes);
        assert!(text.contains(
            "shardtally_events_committed_total{node_id=\"n\\\"1\",shard_id=\"s1\"} 70000\n"
        ));
        assert!(text.contains("# TYPE shardtally_pending_events gauge\n"));
        assert!(text.contains("# TYPE shardtally_pending_bytes gauge\n"));
        assert!(
            text.contains("shardtally_rows_inserted_total{node_id=\"n\\\"1\",shard_id=\"s1\"} 5\n")
        );
        assert!(
            text.contains("shardtally_rows_written_total{node_id=\"n\\\"1\",shard_id=\"s1\"} 12\n")
        );
        assert!(text.contains(
            "shardtally_flushes_rewritten_total{node_id=\"n\\\"1\",shard_id=\"s1\"} 1\n"
        ));
        assert!(text.contains("shardtally_database_up{node_id=\"n\\\"1\",shard_id=\"s1\"} 1\n"));
    }

    #[test]
    fn commit_durations_render_as_a_cumulative_histogram() {
        let m = Metrics::new();
        for micros in [4_000, 5_000, 5_001, 120_000, 7_000_000] {
            m.observe_commit(micros);
        }
        let text = m.render("n", "s", WriteCounts::default());
        let line = |suffix: &str| format!("shardtally_commit_duration_seconds{suffix}\n");
        assert!(text.contains(&line(
            "_bucket{node_id=\"n\",shard_id=\"s\",le=\"0.005\"} 2"
        )));
        assert!(text.contains(&line("_bucket{node_id=\"n\",shard_id=\"s\",le=\"0.01\"} 3")));
        assert!(text.contains(&line("_bucket{node_id=\"n\",shard_id=\"s\",le=\"0.1\"} 3")));
        assert!(text.contains(&line("_bucket{node_id=\"n\",shard_id=\"s\",le=\"0.15\"} 4")));
        assert!(text.contains(&line("_bucket{node_id=\"n\",shard_id=\"s\",le=\"5\"} 4")));
        assert!(text.contains(&line("_bucket{node_id=\"n\",shard_id=\"s\",le=\"+Inf\"} 5")));
        assert!(text.contains(&line("_sum{node_id=\"n\",shard_id=\"s\"} 7.134001")));
        assert!(text.contains(&line("_count{node_id=\"n\",shard_id=\"s\"} 5")));
        assert!(text.contains("shardtally_commits_total{node_id=\"n\",shard_id=\"s\"} 5\n"));
        assert!(text.contains(
            "shardtally_last_commit_microseconds{node_id=\"n\",shard_id=\"s\"} 7000000\n"
        ));
    }
}
