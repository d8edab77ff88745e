//! Publishing a [`Workload`] through real [`Publisher`]s, and measuring what the workers ack.
//!
//! Publisher `k` of `m` publishes events `k, k+m, …` from its own task, as fast as its buffer
//! takes them (closed model: latency runs from each event's publish time) or at a constant
//! arrival rate (open model: event `j` is due at `start + (j·m + k)/rate`, and its latency runs
//! from that due time, so stalls are not hidden). Delivery reports give every event's publish
//! time and its batch's ack time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardtally_loadgen::measure::{LatencyRecorder, NodeCounters};
use shardtally_loadgen::scenario::Rate;
use shardtally_loadgen::workload::Workload;
use shardtally_publisher::protocol::StreamSchema;
use shardtally_publisher::{
    ConfigError, DeliveryReport, Outcome, PublishError, Publisher, ValueRef,
};
use tokio::sync::mpsc;

use crate::run::{Pace, loadgen_publisher};

/// The stream the workload's events belong to (the bundled GeoLocation app's).
pub(crate) const STREAM: &str = "geoTempStream";

/// How long an event may stay unacked before the publisher gives it up (counted failed).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(300);
/// How long `close` waits for the last acks.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(120);
/// A publishing task yields to the runtime every this many events (a gateway's request
/// handlers would): the publisher's own tasks share the runtime's threads.
const YIELD_EVERY: u64 = 256;

/// One drive of a workload.
#[derive(Debug, Clone)]
pub(crate) struct DriveOptions {
    /// The receiver URL set (the workers, round-robin).
    pub(crate) url_set: String,
    /// Publishers (gateways), each with its own [`Publisher`] and task.
    pub(crate) publishers: usize,
    /// Events per second in total (open model), or `None`: as fast as acks allow.
    pub(crate) rate: Option<f64>,
    /// Publisher id prefix.
    pub(crate) tag: String,
    /// `batch_max_events`, if not the default.
    pub(crate) batch_events: Option<u32>,
    /// `max_in_flight_per_connection`, if not the default.
    pub(crate) in_flight: Option<usize>,
    /// `batches_per_turn`.
    pub(crate) batches_per_turn: usize,
}

/// What a drive measured.
#[derive(Debug)]
pub(crate) struct Driven {
    /// Events accepted by the publishers.
    pub(crate) published: u64,
    /// Events acked (committed by a worker).
    pub(crate) acked: u64,
    /// Events dropped for a full buffer.
    pub(crate) dropped: u64,
    /// Events whose delivery failed (rejected, deadline, closed) or that `publish` refused.
    pub(crate) failed: u64,
    /// The last failure, if any.
    pub(crate) last_failure: Option<String>,
    /// Batches sent again (after a worker failed or timed out).
    pub(crate) retried: u64,
    /// Times a worker was given up and its batches moved to another.
    pub(crate) failed_over: u64,
    /// Publish→ack latency per event (from the due time in the open model).
    pub(crate) latency: LatencyRecorder,
    /// From the start of publishing to the last ack.
    pub(crate) elapsed: Duration,
    /// Acked events per node id.
    pub(crate) nodes: NodeCounters,
}

impl Driven {
    /// Acked events per second, start of publishing to last ack.
    pub(crate) fn events_per_sec(&self) -> f64 {
        per_sec(self.acked, self.elapsed)
    }
}

/// `n / elapsed`, 0 for an empty interval.
pub(crate) fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

/// What one publisher's delivery reports said.
#[derive(Debug)]
struct Collected {
    latency: LatencyRecorder,
    nodes: NodeCounters,
    last_ack: Option<Instant>,
}

/// Publishes every event of `workload` and waits until each is acked or failed.
pub(crate) async fn drive(
    workload: &Arc<Workload>,
    schema: &StreamSchema,
    o: &DriveOptions,
) -> Result<Driven, ConfigError> {
    let m = o.publishers.max(1);
    let mut publishers = Vec::with_capacity(m);
    let mut report_rxs = Vec::with_capacity(m);
    for k in 0..m {
        let mut builder = loadgen_publisher(
            &o.url_set,
            format!("{}-p{k}", o.tag),
            concat!("shardtally-loadgen-bench/", env!("CARGO_PKG_VERSION")),
            schema,
            DELIVERY_DEADLINE,
        );
        if let Some(n) = o.batch_events {
            builder = builder.batch_max_events(n);
        }
        if let Some(n) = o.in_flight {
            builder = builder.max_in_flight_per_connection(n);
        }
        builder = builder.batches_per_turn(o.batches_per_turn);
        let publisher = builder.build()?;
        let reports = publisher
            .take_delivery_reports()
            .ok_or_else(|| ConfigError::Invalid {
                setting: "delivery_reports",
                reason: "the delivery reports were already taken".to_owned(),
            })?;
        publishers.push(publisher);
        report_rxs.push(reports);
    }
    let start = Instant::now();
    let mut senders = Vec::with_capacity(m);
    let mut collectors = Vec::with_capacity(m);
    for (k, (publisher, reports)) in publishers.iter().zip(report_rxs).enumerate() {
        let pace = o
            .rate
            .and_then(|r| Pace::new(Rate::PerSecond(r), m, k, start));
        collectors.push(tokio::spawn(collect(reports, pace)));
        senders.push(tokio::spawn(send(
            publisher.clone(),
            Arc::clone(workload),
            k as u64,
            m as u64,
            pace,
        )));
    }
    let mut refused = 0;
    let mut last_refusal = None;
    for s in senders {
        if let Ok((n, e)) = s.await {
            refused += n;
            last_refusal = last_refusal.or(e);
        }
    }
    for publisher in &publishers {
        let _ = publisher.flush().await;
        let _ = publisher.close(CLOSE_TIMEOUT).await;
    }
    let mut driven = Driven {
        published: 0,
        acked: 0,
        dropped: 0,
        failed: refused,
        last_failure: last_refusal,
        retried: 0,
        failed_over: 0,
        latency: LatencyRecorder::new(),
        elapsed: Duration::ZERO,
        nodes: NodeCounters::new(),
    };
    let mut last_ack = None;
    for (publisher, c) in publishers.iter().zip(collectors) {
        let stats = publisher.stats();
        driven.published += stats.published;
        driven.acked += stats.acked;
        driven.dropped += stats.dropped_total();
        driven.failed += stats.failed_total();
        driven.retried += stats.retried;
        driven.failed_over += stats.failed_over;
        if stats.last_failure.is_some() {
            driven.last_failure = stats.last_failure;
        }
        if let Ok(c) = c.await {
            driven.latency.merge(&c.latency);
            driven.nodes.merge(&c.nodes);
            last_ack = last_ack.max(c.last_ack);
        }
    }
    driven.elapsed = last_ack.map_or(Duration::ZERO, |t| t.saturating_duration_since(start));
    Ok(driven)
}

/// One publisher's task: its share of the events, at its pace. Returns the events `publish`
/// refused for another reason than a full buffer (those are in the publisher's stats).
async fn send(
    publisher: Publisher,
    workload: Arc<Workload>,
    k: u64,
    m: u64,
    pace: Option<Pace>,
) -> (u64, Option<String>) {
    let w = &*workload;
    let mut values = [ValueRef::Null; 4];
    let mut refused = 0;
    let mut last_error = None;
    for (j, i) in (0u64..).zip(w.share(k, m)) {
        match &pace {
            Some(p) => {
                let due = p.due(j);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            None => {
                if j % YIELD_EVERY == YIELD_EVERY - 1 {
                    tokio::task::yield_now().await;
                }
            }
        }
        w.event(i, &mut values);
        match publisher.publish_values(STREAM, &values).await {
            Ok(()) | Err(PublishError::BufferFull { .. }) => {}
            Err(e) => {
                refused += 1;
                last_error = Some(e.to_string());
            }
        }
    }
    (refused, last_error)
}

/// Reads one publisher's delivery reports until it is closed. Closed model: latency from each
/// event's publish time. Open model: reports are taken in batch order, and the `j`-th event's
/// latency runs from its due time.
async fn collect(
    mut reports: mpsc::UnboundedReceiver<DeliveryReport>,
    pace: Option<Pace>,
) -> Collected {
    let mut c = Collected {
        latency: LatencyRecorder::new(),
        nodes: NodeCounters::new(),
        last_ack: None,
    };
    let mut next_seq = 0u64;
    let mut next_event = 0u64;
    let mut held: BTreeMap<u64, DeliveryReport> = BTreeMap::new();
    while let Some(r) = reports.recv().await {
        let Some(pace) = &pace else {
            c.take(&r, None);
            continue;
        };
        held.insert(r.seq, r);
        while let Some(r) = held.remove(&next_seq) {
            next_seq += 1;
            c.take(&r, Some((pace, next_event)));
            next_event += u64::from(r.events);
        }
    }
    for r in held.into_values() {
        c.take(&r, None);
    }
    c
}

impl Collected {
    fn take(&mut self, r: &DeliveryReport, due: Option<(&Pace, u64)>) {
        let Outcome::Acked { node_id, at } = &r.outcome else {
            return;
        };
        self.nodes.add(node_id, u64::from(r.events));
        self.last_ack = self.last_ack.max(Some(*at));
        match due {
            Some((pace, first)) => {
                for j in first..first + u64::from(r.events) {
                    self.latency
                        .record(at.saturating_duration_since(pace.due(j)));
                }
            }
            None => {
                for t in &r.published_at {
                    self.latency.record(at.saturating_duration_since(*t));
                }
            }
        }
    }
}
