//! The ingest task: folds received batches into the aggregators and commits them, exactly once.
//!
//! One task owns every [`Aggregator`]. Connection tasks hand it validated batches through a
//! bounded channel; it records their events on arrival and keeps each batch (id, frame bytes, ack
//! route) as *pending*. A flush — every `flush_interval`, or sooner when pending events reach
//! their cap — drains the aggregators into deltas and commits them together with the pending
//! batch ids in one transaction ([`Store::commit`]); only then are the batches acked.
//!
//! - A batch id already committed (by this or another worker) makes the store roll back and name
//!   it: those batches are acked without counting, the aggregators are rebuilt from the other
//!   pending batches' frames, and the commit is retried.
//! - A retriable database error (outage, deadlock, busy) keeps the same deltas and ids and retries
//!   with capped backoff; nothing new is read meanwhile, so the channel fills and connections stop
//!   reading their sockets (backpressure), and nothing is acked.
//! - A non-retriable error is narrowed down by committing the pending batches one at a time; the
//!   batch that still fails is rejected (the publisher never retries it), the others commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shardtally_publisher::protocol::{BatchFrame, ProtocolError, RejectCode, ValueRef};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::engine::Aggregator;
use crate::layout::Delta;
use crate::metrics::Metrics;
use crate::store::{BatchId, CommitOutcome, Store, StoreError};

/// What the ingest task tells a connection about one of its batches.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// Committed (by this worker or, for a duplicate, by any worker).
    Ack(u64),
    /// Can never succeed.
    Reject(u64, RejectCode, String),
}

/// The route back to the connection a batch came from.
pub(crate) type ReplyTx = mpsc::UnboundedSender<Reply>;

/// A validated batch on its way to the ingest task.
#[derive(Debug)]
pub(crate) struct IncomingBatch {
    /// `(publisher_id, batch_seq)`.
    pub(crate) publisher_id: Arc<str>,
    /// The frame (its events are read again on a rebuild).
    pub(crate) frame: BatchFrame,
    /// Stream index in the catalog.
    pub(crate) stream: usize,
    /// For each column of the batch, the position of its attribute in the stream schema.
    pub(crate) positions: Arc<[usize]>,
    /// Arrival time, epoch ms (the event time of apps without `aggregate by`).
    pub(crate) received_ms: i64,
    /// Where the ack goes.
    pub(crate) reply: ReplyTx,
}

impl IncomingBatch {
    fn key(&self) -> (Arc<str>, u64) {
        (self.publisher_id.clone(), self.frame.seq)
    }

    fn batch_id(&self) -> BatchId {
        BatchId {
            publisher_id: self.publisher_id.to_string(),
            seq: self.frame.seq,
        }
    }
}

/// Settings of the ingest task.
#[derive(Debug, Clone)]
pub(crate) struct IngestSettings {
    pub(crate) shard_id: String,
    pub(crate) flush_interval: Duration,
    pub(crate) max_pending_events: usize,
    /// Benchmark only (`serve --discard-events`): fold and ack at once, drain into nothing.
    pub(crate) discard: bool,
}

struct Pending {
    batch: IncomingBatch,
    /// Routes of the same batch id received again while pending (acked together).
    also_reply: Vec<ReplyTx>,
}

impl Pending {
    /// Sends `reply` to every connection this batch came in on (gone connections are skipped:
    /// their publishers re-send, and the batch id makes that harmless).
    fn reply(&self, reply: &Reply) {
        let _ = self.batch.reply.send(reply.clone());
        for r in &self.also_reply {
            let _ = r.send(reply.clone());
        }
    }
}

pub(crate) struct Ingest {
    catalog: Arc<Catalog>,
    store: Store,
    settings: IngestSettings,
    metrics: Arc<Metrics>,
    aggregators: Vec<Aggregator>,
    by_stream: Vec<Vec<usize>>,
    pending: Vec<Pending>,
    pending_index: HashMap<(Arc<str>, u64), usize>,
    pending_events: usize,
}

impl Ingest {
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        store: Store,
        settings: IngestSettings,
        metrics: Arc<Metrics>,
    ) -> Ingest {
        let by_stream = (0..catalog.streams().len())
            .map(|s| catalog.aggregations_of(s))
            .collect();
        Ingest {
            aggregators: catalog.aggregators(),
            catalog,
            store,
            settings,
            metrics,
            by_stream,
            pending: Vec::new(),
            pending_index: HashMap::new(),
            pending_events: 0,
        }
    }

    /// Runs until `shutdown`, then drains what is already queued, commits it and acks it.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<IncomingBatch>,
        shutdown: CancellationToken,
    ) {
        if self.settings.discard {
            return self.run_discarding(rx, shutdown).await;
        }
        // The first flush one interval from now (a plain `interval` ticks at once, which under
        // load lands after the first batch and commits it early).
        let period = self.settings.flush_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => self.flush(&shutdown).await,
                batch = rx.recv(), if self.pending_events < self.settings.max_pending_events => {
                    let Some(batch) = batch else { break };
                    self.accept(batch);
                    if self.pending_events >= self.settings.max_pending_events {
                        self.flush(&shutdown).await;
                    }
                }
            }
        }
        // Graceful stop: the listener is closed; take what connections already handed over.
        rx.close();
        while let Ok(batch) = rx.try_recv() {
            self.accept(batch);
        }
        let never = CancellationToken::new();
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::select! {
            () = self.flush(&never) => {}
            () = deadline => tracing::warn!(
                pending = self.pending.len(),
                "shutdown: database did not accept the final flush within 30s; those batches stay unacked and publishers will re-send them"
            ),
        }
    }

    /// The `wire` baseline of `shardtally-loadgen bench`: the same decode and fold as [`Ingest::run`],
    /// but each batch is acked as soon as it is folded, and every flush interval the aggregators
    /// are drained into nothing. Nothing reaches the database; what is left is the ceiling of the
    /// protocol and the engine.
    async fn run_discarding(
        mut self,
        mut rx: mpsc::Receiver<IncomingBatch>,
        shutdown: CancellationToken,
    ) {
        tracing::warn!("--discard-events: events are folded and acked but never stored (benchmark baseline)");
        let period = self.settings.flush_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let rows: u64 = drain(&mut self.aggregators).iter().map(|d| d.row_count() as u64).sum();
                    tracing::trace!(rows, "discarded");
                }
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    let reply = match record(&mut self.aggregators, &self.by_stream, &self.catalog, &batch) {
                        Ok(_) => Reply::Ack(batch.frame.seq),
                        Err(e) => Reply::Reject(batch.frame.seq, RejectCode::Invalid, e.to_string()),
                    };
                    let _ = batch.reply.send(reply);
                }
            }
        }
    }

    fn accept(&mut self, batch: IncomingBatch) {
        let key = batch.key();
        if let Some(&i) = self.pending_index.get(&key) {
            // The same batch again (a publisher re-sent it here before our ack arrived): fold it
            // once, ack both routes.
            self.pending[i].also_reply.push(batch.reply);
            return;
        }
        match record(
            &mut self.aggregators,
            &self.by_stream,
            &self.catalog,
            &batch,
        ) {
            Ok(n) => {
                self.pending_events += n;
                self.metrics
                    .pending_events
                    .fetch_add(i64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                self.pending_index.insert(key, self.pending.len());
                self.pending.push(Pending {
                    batch,
                    also_reply: Vec::new(),
                });
            }
            Err(e) => {
                // Validated by the connection task already; reaching here means a bug, not input.
                tracing::error!(error = %e, "batch failed to decode after validation; rejecting it");
                // Events recorded before the error are in the aggregators: rebuild without it.
                self.rebuild();
                Metrics::add(&self.metrics.batches_rejected, 1);
                let _ = batch.reply.send(Reply::Reject(
                    batch.frame.seq,
                    RejectCode::Invalid,
                    e.to_string(),
                ));
            }
        }
    }

    /// Commits everything pending. Returns when it is committed (or shutdown is requested while
    /// the database is unavailable).
    async fn flush(&mut self, shutdown: &CancellationToken) {
        if self.pending.is_empty() {
            return;
        }
        let mut deltas = drain(&mut self.aggregators);
        let mut backoff = Duration::from_millis(50);
        loop {
            let ids: Vec<BatchId> = self.pending.iter().map(|p| p.batch.batch_id()).collect();
            let started = Instant::now();
            let outcome = {
                let pairs: Vec<_> = self.catalog.layouts.iter().zip(deltas.iter()).collect();
                self.store
                    .commit(&self.settings.shard_id, &ids, &pairs)
                    .await
            };
            match outcome {
                Ok(CommitOutcome::Committed) => {
                    self.metrics.database_up.store(true, Ordering::Relaxed);
                    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.metrics
                        .last_commit_micros
                        .store(micros, Ordering::Relaxed);
                    Metrics::add(&self.metrics.commits, 1);
                    Metrics::add(
                        &self.metrics.rows_written,
                        deltas.iter().map(|d| d.row_count() as u64).sum(),
                    );
                    Metrics::add(&self.metrics.batches_committed, self.pending.len() as u64);
                    Metrics::add(&self.metrics.events_committed, self.pending_events as u64);
                    tracing::debug!(
                        batches = self.pending.len(),
                        events = self.pending_events,
                        micros,
                        "committed"
                    );
                    self.ack_all();
                    return;
                }
                Ok(CommitOutcome::Duplicates(dups)) => {
                    self.metrics.database_up.store(true, Ordering::Relaxed);
                    tracing::debug!(
                        count = dups.len(),
                        "batches already committed elsewhere; acking them without counting"
                    );
                    let found = self.ack_duplicates(&dups);
                    self.rebuild();
                    if self.pending.is_empty() {
                        return;
                    }
                    if found == 0 {
                        // The store named none of ours: never spin on that, back off instead.
                        tracing::warn!(
                            ?dups,
                            "commit reported duplicates that are not pending here; retrying"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shutdown.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    deltas = drain(&mut self.aggregators);
                }
                Err(e) if e.is_retriable() => {
                    self.metrics.database_up.store(false, Ordering::Relaxed);
                    Metrics::add(&self.metrics.commit_failures, 1);
                    tracing::warn!(error = %e, retry_in = ?backoff, pending = self.pending.len(), "commit failed; holding acks and retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => {
                            // Put the deltas back so the final flush retries them.
                            self.rebuild();
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    Metrics::add(&self.metrics.commit_failures, 1);
                    tracing::error!(error = %e, pending = self.pending.len(), "commit failed permanently; committing batches one at a time to isolate the cause");
                    self.commit_one_by_one(shutdown).await;
                    return;
                }
            }
        }
    }

    /// Commits pending batches individually: the ones that fail for good are rejected, the
    /// others commit. A retriable error retries the same batch; a shutdown meanwhile leaves the
    /// batches not yet committed pending (re-folded), for the final flush.
    async fn commit_one_by_one(&mut self, shutdown: &CancellationToken) {
        let mut queue: std::collections::VecDeque<Pending> =
            std::mem::take(&mut self.pending).into();
        let mut backoff = Duration::from_millis(50);
        'batches: while let Some(p) = queue.pop_front() {
            let mut aggregators = self.catalog.aggregators();
            let n = match record(&mut aggregators, &self.by_stream, &self.catalog, &p.batch) {
                Ok(n) => n,
                Err(e) => {
                    Metrics::add(&self.metrics.batches_rejected, 1);
                    p.reply(&Reply::Reject(
                        p.batch.frame.seq,
                        RejectCode::Invalid,
                        e.to_string(),
                    ));
                    continue;
                }
            };
            let deltas = drain(&mut aggregators);
            let pairs: Vec<_> = self.catalog.layouts.iter().zip(deltas.iter()).collect();
            let ids = [p.batch.batch_id()];
            loop {
                match self
                    .store
                    .commit(&self.settings.shard_id, &ids, &pairs)
                    .await
                {
                    Ok(CommitOutcome::Committed) => {
                        Metrics::add(&self.metrics.batches_committed, 1);
                        Metrics::add(&self.metrics.events_committed, n as u64);
                        p.reply(&Reply::Ack(p.batch.frame.seq));
                        continue 'batches;
                    }
                    Ok(CommitOutcome::Duplicates(_)) => {
                        Metrics::add(&self.metrics.batches_duplicate, 1);
                        p.reply(&Reply::Ack(p.batch.frame.seq));
                        continue 'batches;
                    }
                    Err(e) if e.is_retriable() => {
                        self.metrics.database_up.store(false, Ordering::Relaxed);
                        Metrics::add(&self.metrics.commit_failures, 1);
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shutdown.cancelled() => {
                                queue.push_front(p);
                                break 'batches;
                            }
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        reject(&self.metrics, p, &e);
                        continue 'batches;
                    }
                }
            }
        }
        self.pending = queue.into();
        self.rebuild();
    }

    fn ack_all(&mut self) {
        for p in self.pending.drain(..) {
            p.reply(&Reply::Ack(p.batch.frame.seq));
        }
        self.pending_index.clear();
        let n = std::mem::take(&mut self.pending_events);
        self.metrics
            .pending_events
            .fetch_sub(i64::try_from(n).unwrap_or(0), Ordering::Relaxed);
    }

    /// Acks the pending batches named in `dups` (committed already, by anyone) and drops them.
    /// Returns how many were found.
    fn ack_duplicates(&mut self, dups: &[BatchId]) -> usize {
        let dup_keys: std::collections::HashSet<(&str, u64)> = dups
            .iter()
            .map(|d| (d.publisher_id.as_str(), d.seq))
            .collect();
        let before = self.pending.len();
        self.pending.retain(|p| {
            let dup = dup_keys.contains(&(&*p.batch.publisher_id, p.batch.frame.seq));
            if dup {
                p.reply(&Reply::Ack(p.batch.frame.seq));
            }
            !dup
        });
        let found = before - self.pending.len();
        Metrics::add(&self.metrics.batches_duplicate, found as u64);
        found
    }

    /// Re-folds every pending batch into fresh aggregators (after duplicates were removed, or a
    /// drain whose deltas were not committed).
    fn rebuild(&mut self) {
        let events = loop {
            self.aggregators = self.catalog.aggregators();
            let mut events = 0;
            let mut failed = None;
            for (i, p) in self.pending.iter().enumerate() {
                match record(
                    &mut self.aggregators,
                    &self.by_stream,
                    &self.catalog,
                    &p.batch,
                ) {
                    Ok(n) => events += n,
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            let Some((i, e)) = failed else { break events };
            // Unreachable for validated batches; never let one poison the others.
            tracing::error!(error = %e, "pending batch failed to decode on rebuild; rejecting it");
            let p = self.pending.remove(i);
            Metrics::add(&self.metrics.batches_rejected, 1);
            let _ = p.batch.reply.send(Reply::Reject(
                p.batch.frame.seq,
                RejectCode::Invalid,
                e.to_string(),
            ));
        };
        self.pending_index = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, p)| (p.batch.key(), i))
            .collect();
        self.pending_events = events;
        self.metrics
            .pending_events
            .store(i64::try_from(events).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

fn reject(metrics: &Metrics, p: Pending, e: &StoreError) {
    Metrics::add(&metrics.batches_rejected, 1);
    tracing::warn!(publisher = %p.batch.publisher_id, seq = p.batch.frame.seq, error = %e, "batch rejected by the database");
    p.reply(&Reply::Reject(
        p.batch.frame.seq,
        RejectCode::Invalid,
        format!("the database refused this batch: {e}"),
    ));
}

fn drain(aggregators: &mut [Aggregator]) -> Vec<Delta> {
    aggregators.iter_mut().map(Aggregator::drain).collect()
}

/// Folds one batch's events into the aggregators of its stream. Returns the event count.
fn record(
    aggregators: &mut [Aggregator],
    by_stream: &[Vec<usize>],
    catalog: &Catalog,
    batch: &IncomingBatch,
) -> Result<usize, ProtocolError> {
    let width = catalog.streams()[batch.stream].attributes.len();
    let targets = &by_stream[batch.stream];
    let mut columns: Vec<ValueRef<'_>> = Vec::with_capacity(batch.positions.len());
    let mut row: Vec<ValueRef<'_>> = vec![ValueRef::Null; width];
    let mut reader = batch.frame.reader();
    let mut n = 0;
    while reader.next_event(&mut columns)? {
        row.fill(ValueRef::Null);
        for (value, &pos) in columns.iter().zip(batch.positions.iter()) {
            row[pos] = *value;
        }
        for &a in targets {
            aggregators[a].record(&row, batch.received_ms);
        }
        n += 1;
    }
    Ok(n)
}
