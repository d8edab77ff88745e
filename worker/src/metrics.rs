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
    /// Aggregate rows written across all granularities.
    pub rows_written: AtomicU64,
    /// Flush transactions committed.
    pub commits: AtomicU64,
    /// Flush attempts that failed and were retried.
    pub commit_failures: AtomicU64,
    /// Gauge: events received but not yet committed.
    pub pending_events: AtomicI64,
    /// Gauge: the database answered the last attempt.
    pub database_up: AtomicBool,
    /// Gauge: duration of the last commit, microseconds.
    pub last_commit_micros: AtomicU64,
}

impl Metrics {
    /// A fresh set with the database assumed up.
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.database_up.store(true, Ordering::Relaxed);
        m
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders the Prometheus text exposition format, labelled with node and shard, with the
    /// store's `writes`.
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
            r(&self.rows_written),
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
            r(&self.commits),
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
            "database_up",
            "1 when the database answered the last attempt.",
            i64::from(self.database_up.load(Ordering::Relaxed)),
        );
        gauge(
            "last_commit_microseconds",
            "Duration of the last flush transaction.",
            i64::try_from(self.last_commit_micros.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        );
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
        assert!(
            text.contains("shardtally_rows_inserted_total{node_id=\"n\\\"1\",shard_id=\"s1\"} 5\n")
        );
        assert!(text.contains(
            "shardtally_flushes_rewritten_total{node_id=\"n\\\"1\",shard_id=\"s1\"} 1\n"
        ));
        assert!(text.contains("shardtally_database_up{node_id=\"n\\\"1\",shard_id=\"s1\"} 1\n"));
    }
}
