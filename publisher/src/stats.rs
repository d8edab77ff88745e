//! Observable counters: [`Stats`] snapshots and the atomics behind them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reason under which events dropped for a full buffer are counted.
pub const DROPPED_BUFFER_FULL: &str = "buffer_full";
/// Reason under which events of a batch a worker rejected are counted.
pub const FAILED_REJECTED: &str = "rejected";
/// Reason under which events not acked within the delivery deadline are counted.
pub const FAILED_DEADLINE: &str = "deadline";
/// Reason under which events still unacked when `close` gave up are counted.
pub const FAILED_CLOSED: &str = "closed";

/// A snapshot of the publisher's counters. Event counts unless named otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// This publisher instance's id (the prefix plus a random suffix).
    pub publisher_id: String,
    /// Events accepted by `publish` (buffered).
    pub published: u64,
    /// Events buffered and not yet sent (open batches and sealed batches waiting for a worker).
    pub queued: u64,
    /// Events of batches sent and not yet acked.
    pub in_flight: u64,
    /// Bytes buffered (encoded events, open to acked).
    pub buffered_bytes: u64,
    /// Events acked (by every group).
    pub acked: u64,
    /// Batches sealed (a batch split to fit a worker's smaller limits counts as its parts; one
    /// split for one group alone, as itself and its parts).
    pub batches: u64,
    /// Batch sends that were re-sends (after a worker failed, timed out or said goodbye).
    pub retried: u64,
    /// Times a worker was marked unhealthy (its unacked batches going to the others).
    pub failed_over: u64,
    /// Events refused at `publish` because they do not match the stream's schema (never
    /// buffered).
    pub invalid: u64,
    /// Events dropped before delivery, by reason (`buffer_full`).
    pub dropped: BTreeMap<String, u64>,
    /// Events that failed delivery, by reason (`rejected`, `deadline`, `closed`); with several
    /// groups, counted once per group that failed.
    pub failed: BTreeMap<String, u64>,
    /// The most recent failure, in words (e.g. the reason a worker gave for a reject).
    pub last_failure: Option<String>,
    /// Every endpoint, group by group.
    pub endpoints: Vec<EndpointStats>,
}

impl Stats {
    /// Total dropped events.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Total failed events.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// The connection state of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// Connecting or handshaking.
    Connecting,
    /// Handshaken: receives batches.
    Connected,
    /// The worker said GOODBYE: its in-flight batches finish, no new ones go there.
    Draining,
    /// Failed; waiting before the next connection attempt.
    BackingOff,
    /// Will not be retried (e.g. an unsupported transport) or the publisher is closed.
    Down,
}

/// One endpoint's state and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    /// The endpoint's URL.
    pub url: String,
    /// Index of its group in the URL set.
    pub group: usize,
    /// Connection state.
    pub state: EndpointState,
    /// The node id the worker announced (last handshake).
    pub node_id: Option<String>,
    /// The shard id the worker announced (last handshake).
    pub shard_id: Option<String>,
    /// Events this endpoint acked.
    pub acked: u64,
    /// Batches this endpoint acked.
    pub acked_batches: u64,
    /// Batches sent to it and not yet acked.
    pub in_flight_batches: u64,
    /// Connections established (handshakes completed).
    pub connects: u64,
    /// Why it last failed.
    pub last_error: Option<String>,
}

/// Lock-free counters shared by the handle and the background task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) in_flight: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) failed_over: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) reasons: Mutex<Reasons>,
}

/// Counters keyed by reason (rare events; a mutex is fine).
#[derive(Debug, Default)]
pub(crate) struct Reasons {
    pub(crate) dropped: BTreeMap<String, u64>,
    pub(crate) failed: BTreeMap<String, u64>,
    pub(crate) last_failure: Option<String>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped(&self, reason: &str, events: u64) {
        let mut r = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        *r.dropped.entry(reason.to_owned()).or_default() += events;
    }

    pub(crate) fn failed(&self, reason: &str, detail: String, events: u64) {
        let mut r = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        *r.failed.entry(reason.to_owned()).or_default() += events;
        r.last_failure = Some(detail);
    }
}

/// One endpoint's live counters and state, shared with [`Stats`] snapshots.
#[derive(Debug)]
pub(crate) struct EndpointCell {
    pub(crate) url: String,
    pub(crate) group: usize,
    pub(crate) acked: AtomicU64,
    pub(crate) acked_batches: AtomicU64,
    pub(crate) in_flight_batches: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) info: Mutex<EndpointInfo>,
}

/// The slowly changing part of an endpoint's stats.
#[derive(Debug, Clone)]
pub(crate) struct EndpointInfo {
    pub(crate) state: EndpointState,
    pub(crate) node_id: Option<String>,
    pub(crate) shard_id: Option<String>,
    pub(crate) last_error: Option<String>,
}

impl EndpointCell {
    pub(crate) fn new(url: String, group: usize) -> EndpointCell {
        EndpointCell {
            url,
            group,
            acked: AtomicU64::new(0),
            acked_batches: AtomicU64::new(0),
            in_flight_batches: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            info: Mutex::new(EndpointInfo {
                state: EndpointState::Connecting,
                node_id: None,
                shard_id: None,
                last_error: None,
            }),
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut EndpointInfo)) {
        f(&mut self.info.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub(crate) fn snapshot(&self) -> EndpointStats {
        let info = self.info.lock().unwrap_or_else(|e| e.into_inner()).clone();
        EndpointStats {
            url: self.url.clone(),
            group: self.group,
            state: info.state,
            node_id: info.node_id,
            shard_id: info.shard_id,
            acked: Counters::get(&self.acked),
            acked_batches: Counters::get(&self.acked_batches),
            in_flight_batches: Counters::get(&self.in_flight_batches),
            connects: Counters::get(&self.connects),
            last_error: info.last_error,
        }
    }
}

impl Stats {
    /// Appends the counters in the Prometheus text format, labelled with the publisher id, for
    /// a gateway's `/metrics`: `shardtally_publisher_dropped_events_total{reason="buffer_full"}`
    /// and the like, and per endpoint `shardtally_publisher_endpoint_up` (1 when connected).
    pub fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let id = escape_label(&self.publisher_id);
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP shardtally_publisher_{name} {help}");
            let _ = writeln!(out, "# TYPE shardtally_publisher_{name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(
                    out,
                    "shardtally_publisher_{name}{{publisher_id=\"{id}\"{labels}}} {v}"
                );
            }
        };
        let plain = |v: u64| [(String::new(), v)];
        metric(
            "published_events_total",
            "counter",
            "Events accepted by publish (buffered).",
            &plain(self.published),
        );
        metric(
            "acked_events_total",
            "counter",
            "Events acked by the workers (committed).",
            &plain(self.acked),
        );
        metric(
            "queued_events",
            "gauge",
            "Events buffered and not yet sent.",
            &plain(self.queued),
        );
        metric(
            "in_flight_events",
            "gauge",
            "Events sent and not yet acked.",
            &plain(self.in_flight),
        );
        metric(
            "buffered_bytes",
            "gauge",
            "Bytes of encoded events buffered until acked.",
            &plain(self.buffered_bytes),
        );
        metric(
            "batches_total",
            "counter",
            "Batches sealed.",
            &plain(self.batches),
        );
        metric(
            "retried_batches_total",
            "counter",
            "Batch re-sends after a worker failed.",
            &plain(self.retried),
        );
        metric(
            "failovers_total",
            "counter",
            "Times a worker was marked unhealthy.",
            &plain(self.failed_over),
        );
        metric(
            "invalid_events_total",
            "counter",
            "Events refused for not matching the stream's schema.",
            &plain(self.invalid),
        );
        let by_reason = |known: &[&str], counts: &BTreeMap<String, u64>| {
            let mut rows: BTreeMap<&str, u64> = known.iter().map(|r| (*r, 0)).collect();
            for (reason, n) in counts {
                rows.insert(reason, *n);
            }
            rows.into_iter()
                .map(|(r, n)| (format!(",reason=\"{}\"", escape_label(r)), n))
                .collect::<Vec<_>>()
        };
        metric(
            "dropped_events_total",
            "counter",
            "Events dropped before delivery, by reason.",
            &by_reason(&[DROPPED_BUFFER_FULL], &self.dropped),
        );
        metric(
            "failed_events_total",
            "counter",
            "Events that failed delivery, by reason.",
            &by_reason(
                &[FAILED_REJECTED, FAILED_DEADLINE, FAILED_CLOSED],
                &self.failed,
            ),
        );
        let endpoint =
            |e: &EndpointStats| format!(",url=\"{}\",group=\"{}\"", escape_label(&e.url), e.group);
        metric(
            "endpoint_up",
            "gauge",
            "1 when the endpoint is connected and receives batches.",
            &self
                .endpoints
                .iter()
                .map(|e| (endpoint(e), u64::from(e.state == EndpointState::Connected)))
                .collect::<Vec<_>>(),
        );
        metric(
            "endpoint_acked_events_total",
            "counter",
            "Events acked by the endpoint.",
            &self
                .endpoints
                .iter()
                .map(|e| (endpoint(e), e.acked))
                .collect::<Vec<_>>(),
        );
    }
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
pub(crate) fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_counts_every_reason() {
        let stats = Stats {
            publisher_id: "gw-\"1\"".to_owned(),
            published: 10,
            acked: 4,
            dropped: BTreeMap::from([(DROPPED_BUFFER_FULL.to_owned(), 6)]),
            endpoints: vec![EndpointStats {
                url: "tcp://127.0.0.1:9611".to_owned(),
                group: 0,
                state: EndpointState::BackingOff,
                node_id: None,
                shard_id: None,
                acked: 4,
                acked_batches: 1,
                in_flight_batches: 0,
                connects: 1,
                last_error: Some("refused".to_owned()),
            }],
            ..Stats::default()
        };
        let mut out = String::new();
        stats.write_prometheus(&mut out);
        let id = "publisher_id=\"gw-\\\"1\\\"\"";
        for line in [
            format!("shardtally_publisher_published_events_total{{{id}}} 10"),
            format!("shardtally_publisher_acked_events_total{{{id}}} 4"),
            format!("shardtally_publisher_dropped_events_total{{{id},reason=\"buffer_full\"}} 6"),
            format!("shardtally_publisher_failed_events_total{{{id},reason=\"deadline\"}} 0"),
            format!(
                "shardtally_publisher_endpoint_up{{{id},url=\"tcp://127.0.0.1:9611\",group=\"0\"}} 0"
            ),
            "# TYPE shardtally_publisher_queued_events gauge".to_owned(),
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} missing in\n{out}");
        }
        assert_eq!(
            out.lines()
                .filter(|l| l.contains("failed_events_total{"))
                .count(),
            3
        );
    }
}
