//! The ingest task: folds received batches into the aggregators and commits them, exactly once.
//!
//! One task owns every [`Aggregator`]. Connection tasks hand it validated batches through a
//! bounded channel; it records their events on arrival and keeps each batch (id, frame bytes, ack
//! route) as *pending*. A flush — every `flush_interval`, or sooner when the pending batches'
//! events, rows or bytes reach half their cap — drains the aggregators into deltas and commits them together with the
//! pending batch ids in one transaction ([`Store::commit`]); only then are the batches acked.
//! Flushes start early by the duration of the last commit (down to a quarter of the interval),
//! so a batch is committed, and acked, about one flush interval after it arrives.
//!
//! Commits are pipelined: one commit at a time runs in its own task while this task goes on
//! receiving and folding the next batches. When the database is slower than the flush interval,
//! the next commit starts as soon as the previous one ends and carries everything received
//! meanwhile — more events per row, so the rows written per second adapt to what the database
//! takes. Events held (pending and in flight) and rows pending are capped (so is a commit's
//! size, its duration and the memory it takes); at a cap the channel fills and connections stop
//! reading their sockets (backpressure). So are the bytes of every batch not yet acked, wherever
//! it is ([`FrameBudget`]): connections reserve them before handing a batch over.
//!
//! - A batch id already committed (by this or another worker) makes the store roll back and name
//!   it: those batches are acked without counting, the deltas of the other batches of that commit
//!   are rebuilt from their frames, and the commit is retried.
//! - A retriable database error (outage, deadlock, busy) retries the same deltas and ids with
//!   capped backoff; nothing is acked meanwhile, and once the cap is reached nothing new is read.
//! - A non-retriable error is narrowed down by committing the batches of that commit one at a
//!   time; the batch that still fails is rejected (the publisher never retries it), the others
//!   commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shardtally_publisher::protocol::{BatchFrame, ErrorCode, ProtocolError, RejectCode, ValueRef};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::budget::{FrameBudget, HeldBytes};
use crate::catalog::Catalog;
use crate::check::{Refusal, decode_checked};
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
    /// The batch's event bytes are malformed: an `ERROR` frame, and the connection is closed.
    Malformed(ErrorCode, String),
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
    /// The batch's bytes in the worker's budget, given back when it is dropped.
    pub(crate) held: HeldBytes,
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
    /// Rows of every granularity the pending events would write (bounded from above:
    /// [`Aggregator::drain_rows_bound`]) at which reading pauses; a commit is due at half.
    pub(crate) max_pending_rows: usize,
    /// Benchmark only (`serve --discard-events`): fold and ack at once, drain into nothing.
    pub(crate) discard: bool,
}

struct Pending {
    batch: IncomingBatch,
    /// Events in the batch.
    events: usize,
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
    /// The bytes of the batches held (in the channel, pending, in flight).
    budget: FrameBudget,
    aggregators: Vec<Aggregator>,
    by_stream: Vec<Vec<usize>>,
    /// Batches folded into `aggregators`, not drained yet.
    pending: Vec<Pending>,
    pending_events: usize,
    /// Their bytes in the budget.
    pending_bytes: usize,
    /// Batches of the commit in flight.
    in_flight: Vec<Pending>,
    in_flight_events: usize,
    /// Where each pending or in-flight batch id is (a re-sent batch joins it).
    index: HashMap<(Arc<str>, u64), Loc>,
    /// A flush is due (the interval passed, or pending events, rows or bytes reached half their
    /// cap) but a commit was in flight: start the next one as soon as it ends.
    due: bool,
    /// How long the last commit took.
    last_commit: Duration,
    /// The decoded values of the batch being taken (kept for its allocation).
    values: Vec<ValueRef<'static>>,
}

/// Where a batch id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Pending(usize),
    InFlight(usize),
}

/// A commit running in its own task.
type CommitTask = tokio::task::JoinHandle<CommitDone>;

/// What a commit task hands back: its result, and what it committed (to retry with).
struct CommitDone {
    outcome: Result<CommitOutcome, StoreError>,
    ids: Vec<BatchId>,
    /// The deltas, after a retriable failure only (empty otherwise).
    deltas: Vec<Delta>,
    micros: u64,
    /// The backoff before the next retry, should this one fail.
    backoff: Duration,
}

/// Backoff of the first retry of a failed commit.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest backoff between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a stopping worker tries to commit what it holds.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

impl Ingest {
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        store: Store,
        settings: IngestSettings,
        metrics: Arc<Metrics>,
        budget: FrameBudget,
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
            budget,
            by_stream,
            pending: Vec::new(),
            pending_events: 0,
            pending_bytes: 0,
            in_flight: Vec::new(),
            in_flight_events: 0,
            index: HashMap::new(),
            due: false,
            last_commit: Duration::ZERO,
            values: Vec::new(),
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
        // The first flush one interval from now; then flushes start early by the duration of
        // the last commit, so an event is committed within about one interval of its arrival.
        let period = self.settings.flush_interval;
        let mut next_flush = tokio::time::Instant::now() + period;
        let cap = self.settings.max_pending_events;
        let row_cap = self.settings.max_pending_rows.max(1);
        let mut task: Option<CommitTask> = None;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                done = wait(&mut task), if task.is_some() => {
                    task = self.finished(done, &shutdown).await;
                }
                () = tokio::time::sleep_until(next_flush) => {
                    self.due = true;
                    if task.is_none() {
                        task = self.start_commit();
                    }
                    next_flush = tokio::time::Instant::now() + flush_spacing(period, self.last_commit);
                }
                batch = rx.recv(), if self.pending_events + self.in_flight_events < cap
                    && self.pending_rows() < row_cap =>
                {
                    let Some(batch) = batch else { break };
                    self.accept(batch);
                    if self.pending_events >= cap / 2
                        || self.pending_rows() >= row_cap / 2
                        || self.pending_bytes >= self.budget.total() / 2
                    {
                        self.due = true;
                        if task.is_none() {
                            task = self.start_commit();
                        }
                    }
                }
            }
        }
        // Graceful stop: the listener is closed; take what connections already handed over,
        // then commit everything (the commit in flight first).
        rx.close();
        self.budget.close();
        while let Ok(batch) = rx.try_recv() {
            self.accept(batch);
        }
        // The deadline also ends the one-at-a-time commits a permanent error leads to (which
        // retry a database outage with backoff until told to stop).
        let expired = CancellationToken::new();
        let deadline = tokio::time::sleep(FINAL_FLUSH_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            if task.is_none() {
                self.due = true;
                task = self.start_commit();
            }
            if task.is_none() || expired.is_cancelled() {
                break;
            }
            tokio::select! {
                done = wait(&mut task) => {
                    let finishing = self.finished(done, &expired);
                    tokio::pin!(finishing);
                    task = tokio::select! {
                        t = &mut finishing => t,
                        () = &mut deadline => {
                            expired.cancel();
                            finishing.await
                        }
                    };
                }
                () = &mut deadline => expired.cancel(),
            }
        }
        if expired.is_cancelled() {
            tracing::warn!(
                pending = self.pending.len() + self.in_flight.len(),
                "shutdown: database did not accept the final flush within {FINAL_FLUSH_TIMEOUT:?}; those batches stay unacked and publishers will re-send them"
            );
            if let Some(t) = task.take() {
                t.abort();
            }
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
        tracing::warn!(
            "--discard-events: events are folded and acked but never stored (benchmark baseline)"
        );
        let period = self.settings.flush_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let rows: u64 = drain(&mut self.aggregators).unwrap_or_default().iter().map(|d| d.row_count() as u64).sum();
                    tracing::trace!(rows, "discarded");
                }
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    let reply = match self.take(&batch) {
                        Ok(_) => Reply::Ack(batch.frame.seq),
                        Err(refusal) => self.refusal(&batch, refusal),
                    };
                    let _ = batch.reply.send(reply);
                }
            }
        }
        self.budget.close();
    }

    fn accept(&mut self, batch: IncomingBatch) {
        let key = batch.key();
        match self.index.get(&key) {
            // The same batch again (a publisher re-sent it here before our ack arrived): fold it
            // once, ack both routes.
            Some(Loc::Pending(i)) => {
                self.pending[*i].also_reply.push(batch.reply);
                return;
            }
            Some(Loc::InFlight(i)) => {
                self.in_flight[*i].also_reply.push(batch.reply);
                return;
            }
            None => {}
        }
        match self.take(&batch) {
            Ok(n) => {
                self.pending_events += n;
                self.pending_bytes += batch.held.bytes();
                self.metrics
                    .pending_events
                    .fetch_add(i64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                self.index.insert(key, Loc::Pending(self.pending.len()));
                self.pending.push(Pending {
                    batch,
                    events: n,
                    also_reply: Vec::new(),
                });
            }
            Err(refusal) => {
                let reply = self.refusal(&batch, refusal);
                let _ = batch.reply.send(reply);
            }
        }
    }

    /// Decodes and checks every event of `batch` (once), then folds them all into the
    /// aggregators; a batch with one bad event is folded not at all. Returns the event count.
    fn take(&mut self, batch: &IncomingBatch) -> Result<usize, Refusal> {
        let mut values = recycle(std::mem::take(&mut self.values));
        let result = decode_checked(&self.catalog, batch, &mut values);
        if let Ok(n) = result {
            fold(
                &mut self.aggregators,
                &self.by_stream,
                &self.catalog,
                batch,
                &values,
                n,
            );
        }
        self.values = recycle(values);
        result
    }

    /// The reply to a refused batch, counted.
    fn refusal(&self, batch: &IncomingBatch, refusal: Refusal) -> Reply {
        match refusal {
            Refusal::Reject(code, reason) => {
                Metrics::add(&self.metrics.batches_rejected, 1);
                Reply::Reject(batch.frame.seq, code, reason)
            }
            Refusal::Malformed(code, message) => Reply::Malformed(code, message),
        }
    }

    /// The rows of every granularity the pending events would write (an upper bound), over
    /// every aggregator.
    fn pending_rows(&self) -> usize {
        self.aggregators
            .iter()
            .map(Aggregator::drain_rows_bound)
            .sum()
    }

    /// Drains the pending batches into a commit task, when a flush is due and there is
    /// something to commit (the caller knows no commit is in flight).
    fn start_commit(&mut self) -> Option<CommitTask> {
        if !self.due || self.pending.is_empty() {
            return None;
        }
        self.due = false;
        debug_assert!(self.in_flight.is_empty());
        let deltas = drain(&mut self.aggregators);
        self.in_flight = std::mem::take(&mut self.pending);
        self.in_flight_events = std::mem::take(&mut self.pending_events);
        self.pending_bytes = 0;
        for (i, p) in self.in_flight.iter().enumerate() {
            self.index.insert(p.batch.key(), Loc::InFlight(i));
        }
        let ids = self.in_flight.iter().map(|p| p.batch.batch_id()).collect();
        Some(self.spawn_commit(ids, deltas, Duration::ZERO, FIRST_BACKOFF))
    }

    /// Commits `deltas` with `ids` after `delay`, in a task. Deltas that could not be drained
    /// (`Err`) fail the commit at once, as a permanent error: the batches are then committed one
    /// at a time, and the one whose rows cannot be stored is rejected.
    fn spawn_commit(
        &self,
        ids: Vec<BatchId>,
        deltas: Result<Vec<Delta>, StoreError>,
        delay: Duration,
        backoff: Duration,
    ) -> CommitTask {
        let store = self.store.clone();
        let catalog = Arc::clone(&self.catalog);
        let shard = self.settings.shard_id.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let started = Instant::now();
            let (outcome, deltas) = match deltas {
                Ok(deltas) => {
                    let pairs: Vec<_> = catalog.layouts.iter().zip(deltas.iter()).collect();
                    (store.commit(&shard, &ids, &pairs).await, deltas)
                }
                Err(e) => (Err(e), Vec::new()),
            };
            // Only a retriable failure commits the same deltas again (the other outcomes rebuild
            // theirs from the frames): the rest are freed here, off the ingest task.
            let deltas = match &outcome {
                Err(e) if e.is_retriable() => deltas,
                _ => {
                    drop(deltas);
                    Vec::new()
                }
            };
            CommitDone {
                outcome,
                ids,
                deltas,
                micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                backoff,
            }
        })
    }

    /// Handles the end of the commit in flight; returns the next commit task (a retry, or the
    /// next flush if one is due).
    async fn finished(
        &mut self,
        done: Result<CommitDone, tokio::task::JoinError>,
        shutdown: &CancellationToken,
    ) -> Option<CommitTask> {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                // The commit task panicked or was aborted: its batches stay unacked; fold them
                // back so the next flush commits them (a commit that did go through comes back
                // as duplicates).
                tracing::error!(error = %e, "commit task failed; retrying its batches");
                self.return_in_flight();
                return self.start_commit();
            }
        };
        match done.outcome {
            Ok(CommitOutcome::Committed) => {
                self.last_commit = Duration::from_micros(done.micros);
                self.metrics.database_up.store(true, Ordering::Relaxed);
                self.metrics.observe_commit(done.micros);
                Metrics::add(&self.metrics.batches_committed, self.in_flight.len() as u64);
                Metrics::add(&self.metrics.events_committed, self.in_flight_events as u64);
                tracing::debug!(
                    batches = self.in_flight.len(),
                    events = self.in_flight_events,
                    micros = done.micros,
                    "committed"
                );
                self.ack_in_flight();
                self.start_commit()
            }
            Ok(CommitOutcome::Duplicates(dups)) => {
                self.metrics.database_up.store(true, Ordering::Relaxed);
                tracing::debug!(
                    count = dups.len(),
                    "batches already committed elsewhere; acking them without counting"
                );
                let found = self.ack_duplicates(&dups);
                if self.in_flight.is_empty() {
                    return self.start_commit();
                }
                let deltas = self.refold_in_flight();
                let ids = self.in_flight.iter().map(|p| p.batch.batch_id()).collect();
                if found == 0 {
                    // The store named none of ours: never spin on that, back off instead.
                    tracing::warn!(
                        ?dups,
                        "commit reported duplicates that are not in flight here; retrying"
                    );
                    let next = (done.backoff * 2).min(MAX_BACKOFF);
                    return Some(self.spawn_commit(ids, deltas, done.backoff, next));
                }
                if self.in_flight.is_empty() {
                    return self.start_commit();
                }
                Some(self.spawn_commit(ids, deltas, Duration::ZERO, FIRST_BACKOFF))
            }
            Err(e) if e.is_retriable() => {
                self.metrics.database_up.store(false, Ordering::Relaxed);
                Metrics::add(&self.metrics.commit_failures, 1);
                tracing::warn!(error = %e, retry_in = ?done.backoff, batches = self.in_flight.len(), "commit failed; holding acks and retrying");
                let next = (done.backoff * 2).min(MAX_BACKOFF);
                Some(self.spawn_commit(done.ids, Ok(done.deltas), done.backoff, next))
            }
            Err(e) => {
                Metrics::add(&self.metrics.commit_failures, 1);
                tracing::error!(error = %e, batches = self.in_flight.len(), "commit failed permanently; committing batches one at a time to isolate the cause");
                self.commit_one_by_one(shutdown).await;
                self.start_commit()
            }
        }
    }

    /// Commits the in-flight batches individually: the ones that fail for good are rejected,
    /// the others commit. A retriable error retries the same batch; a shutdown meanwhile folds
    /// the batches not yet committed back into pending, for the final flush.
    async fn commit_one_by_one(&mut self, shutdown: &CancellationToken) {
        self.index.retain(|_, loc| !matches!(loc, Loc::InFlight(_)));
        let mut queue: std::collections::VecDeque<Pending> =
            std::mem::take(&mut self.in_flight).into();
        self.in_flight_events = 0;
        let mut backoff = FIRST_BACKOFF;
        'batches: while let Some(p) = queue.pop_front() {
            let mut aggregators = self.catalog.aggregators();
            let n = match record(&mut aggregators, &self.by_stream, &self.catalog, &p.batch) {
                Ok(n) => n,
                Err(e) => {
                    self.refuse_undecodable(&p, &e);
                    continue;
                }
            };
            let deltas = match drain(&mut aggregators) {
                Ok(deltas) => deltas,
                Err(e) => {
                    self.settle(&p);
                    reject(&self.metrics, p, &e);
                    continue;
                }
            };
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
                        self.settle(&p);
                        p.reply(&Reply::Ack(p.batch.frame.seq));
                        continue 'batches;
                    }
                    Ok(CommitOutcome::Duplicates(_)) => {
                        Metrics::add(&self.metrics.batches_duplicate, 1);
                        self.settle(&p);
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
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Err(e) => {
                        self.settle(&p);
                        reject(&self.metrics, p, &e);
                        continue 'batches;
                    }
                }
            }
        }
        // Interrupted by a shutdown: what is left goes back to pending for the final flush.
        for p in queue {
            self.fold_back(p);
        }
    }

    /// A batch leaves the worker (acked or rejected): no longer counted as held.
    fn settle(&self, p: &Pending) {
        self.metrics
            .pending_events
            .fetch_sub(i64::try_from(p.events).unwrap_or(0), Ordering::Relaxed);
    }

    /// Settles and rejects (counted; never retried by the publisher) a batch whose frame failed
    /// to decode when folded again — unreachable for batches checked on arrival, kept so that
    /// one cannot poison the others.
    fn refuse_undecodable(&self, p: &Pending, e: &ProtocolError) {
        self.settle(p);
        Metrics::add(&self.metrics.batches_rejected, 1);
        p.reply(&Reply::Reject(
            p.batch.frame.seq,
            RejectCode::Invalid,
            e.to_string(),
        ));
    }

    /// Acks every in-flight batch (their commit went through).
    fn ack_in_flight(&mut self) {
        for p in std::mem::take(&mut self.in_flight) {
            self.index.remove(&p.batch.key());
            self.settle(&p);
            p.reply(&Reply::Ack(p.batch.frame.seq));
        }
        self.in_flight_events = 0;
    }

    /// Acks the in-flight batches named in `dups` (committed already, by anyone) and drops
    /// them. Returns how many were found.
    fn ack_duplicates(&mut self, dups: &[BatchId]) -> usize {
        let dup_keys: std::collections::HashSet<(&str, u64)> = dups
            .iter()
            .map(|d| (d.publisher_id.as_str(), d.seq))
            .collect();
        let mut kept = Vec::with_capacity(self.in_flight.len());
        let mut found = 0;
        for p in std::mem::take(&mut self.in_flight) {
            if dup_keys.contains(&(&*p.batch.publisher_id, p.batch.frame.seq)) {
                found += 1;
                self.index.remove(&p.batch.key());
                self.in_flight_events -= p.events;
                self.settle(&p);
                p.reply(&Reply::Ack(p.batch.frame.seq));
            } else {
                kept.push(p);
            }
        }
        self.in_flight = kept;
        for (i, p) in self.in_flight.iter().enumerate() {
            self.index.insert(p.batch.key(), Loc::InFlight(i));
        }
        Metrics::add(&self.metrics.batches_duplicate, found as u64);
        found
    }

    /// The deltas of the in-flight batches alone, folded again from their frames (after some
    /// of them turned out to be duplicates). A batch that no longer decodes is rejected.
    fn refold_in_flight(&mut self) -> Result<Vec<Delta>, StoreError> {
        let mut aggregators = self.catalog.aggregators();
        let mut kept = Vec::with_capacity(self.in_flight.len());
        for p in std::mem::take(&mut self.in_flight) {
            let mut one = self.catalog.aggregators();
            match record(&mut one, &self.by_stream, &self.catalog, &p.batch) {
                Ok(_) => {
                    // Folded again below into the shared set (a failed decode must not leave
                    // half a batch in it).
                    kept.push(p);
                }
                Err(e) => {
                    tracing::error!(error = %e, "in-flight batch failed to decode on rebuild; rejecting it");
                    self.index.remove(&p.batch.key());
                    self.in_flight_events -= p.events;
                    self.refuse_undecodable(&p, &e);
                }
            }
        }
        for p in &kept {
            // Decoded successfully just above.
            let _ = record(&mut aggregators, &self.by_stream, &self.catalog, &p.batch);
        }
        self.in_flight = kept;
        for (i, p) in self.in_flight.iter().enumerate() {
            self.index.insert(p.batch.key(), Loc::InFlight(i));
        }
        drain(&mut aggregators)
    }

    /// Puts every in-flight batch back into pending (folded into the current aggregators).
    fn return_in_flight(&mut self) {
        self.in_flight_events = 0;
        for p in std::mem::take(&mut self.in_flight) {
            self.fold_back(p);
        }
    }

    /// Folds a batch that was in flight into the current aggregators, as pending.
    fn fold_back(&mut self, p: Pending) {
        let key = p.batch.key();
        match record(
            &mut self.aggregators,
            &self.by_stream,
            &self.catalog,
            &p.batch,
        ) {
            Ok(n) => {
                self.pending_events += n;
                self.pending_bytes += p.batch.held.bytes();
                self.index.insert(key, Loc::Pending(self.pending.len()));
                self.pending.push(p);
            }
            Err(e) => {
                tracing::error!(error = %e, "batch failed to decode when folded back; rejecting it");
                self.index.remove(&key);
                self.rebuild();
                self.refuse_undecodable(&p, &e);
            }
        }
    }

    /// Re-folds every pending batch into fresh aggregators (after a batch failed to decode
    /// half-way through).
    fn rebuild(&mut self) {
        loop {
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
            let Some((i, e)) = failed else {
                self.pending_events = events;
                self.pending_bytes = self.pending.iter().map(|p| p.batch.held.bytes()).sum();
                break;
            };
            // Unreachable for validated batches; never let one poison the others.
            tracing::error!(error = %e, "pending batch failed to decode on rebuild; rejecting it");
            let p = self.pending.remove(i);
            self.refuse_undecodable(&p, &e);
        }
        self.index.retain(|_, loc| !matches!(loc, Loc::Pending(_)));
        for (i, p) in self.pending.iter().enumerate() {
            self.index.insert(p.batch.key(), Loc::Pending(i));
        }
    }
}

/// Time between the starts of two flushes: the flush interval less the duration of the last
/// commit (so a batch is committed about one interval after it arrives), but at least a quarter
/// of the interval. A database slower than that makes commits run back to back.
fn flush_spacing(period: Duration, last_commit: Duration) -> Duration {
    period.saturating_sub(last_commit).max(period / 4)
}

/// Waits for the commit task, if there is one (the handle stays in place, so a `select!` that
/// drops this future loses nothing; the caller replaces it once it has finished).
async fn wait(task: &mut Option<CommitTask>) -> Result<CommitDone, tokio::task::JoinError> {
    match task.as_mut() {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

fn reject(metrics: &Metrics, p: Pending, e: &StoreError) {
    Metrics::add(&metrics.batches_rejected, 1);
    tracing::warn!(publisher = %p.batch.publisher_id, seq = p.batch.frame.seq, error = %e, "batch rejected: it cannot be committed");
    p.reply(&Reply::Reject(
        p.batch.frame.seq,
        RejectCode::Invalid,
        format!("this batch cannot be committed: {e}"),
    ));
}

/// Drains every aggregator (all of them, even after one fails: nothing recorded is kept).
fn drain(aggregators: &mut [Aggregator]) -> Result<Vec<Delta>, StoreError> {
    let drained: Vec<_> = aggregators.iter_mut().map(Aggregator::drain).collect();
    drained
        .into_iter()
        .map(|d| d.map_err(StoreError::from))
        .collect()
}

/// Folds one batch's events into the aggregators of its stream, decoding them again from its
/// frame (a batch taken once already: refolds after duplicates, retries). Returns the event
/// count.
fn record(
    aggregators: &mut [Aggregator],
    by_stream: &[Vec<usize>],
    catalog: &Catalog,
    batch: &IncomingBatch,
) -> Result<usize, ProtocolError> {
    let mut values: Vec<ValueRef<'_>> = Vec::new();
    let mut event: Vec<ValueRef<'_>> = Vec::with_capacity(batch.positions.len());
    let mut reader = batch.frame.reader();
    let mut n = 0;
    while reader.next_event(&mut event)? {
        values.extend_from_slice(&event);
        n += 1;
    }
    fold(aggregators, by_stream, catalog, batch, &values, n);
    Ok(n)
}

/// Folds `n` decoded events of `batch` (`values`: one value per batch column, event after
/// event) into the aggregators of its stream.
fn fold(
    aggregators: &mut [Aggregator],
    by_stream: &[Vec<usize>],
    catalog: &Catalog,
    batch: &IncomingBatch,
    values: &[ValueRef<'_>],
    n: usize,
) {
    let width = catalog.streams()[batch.stream].attributes.len();
    let targets = &by_stream[batch.stream];
    let columns = batch.positions.len();
    let mut row: Vec<ValueRef<'_>> = vec![ValueRef::Null; width];
    for i in 0..n {
        row.fill(ValueRef::Null);
        let event = values.get(i * columns..(i + 1) * columns).unwrap_or(&[]);
        for (value, &pos) in event.iter().zip(batch.positions.iter()) {
            row[pos] = *value;
        }
        for &a in targets {
            aggregators[a].record(&row, batch.received_ms);
        }
    }
}

/// Empties a vector of value references and gives its allocation back under any lifetime (an
/// in-place collect: no allocation).
fn recycle<'b>(mut v: Vec<ValueRef<'_>>) -> Vec<ValueRef<'b>> {
    v.clear();
    v.into_iter().map(|_| ValueRef::Null).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_start_early_by_the_last_commit_but_not_too_often() {
        let p = Duration::from_millis(200);
        assert_eq!(flush_spacing(p, Duration::ZERO), p);
        assert_eq!(
            flush_spacing(p, Duration::from_millis(60)),
            Duration::from_millis(140)
        );
        assert_eq!(
            flush_spacing(p, Duration::from_millis(190)),
            Duration::from_millis(50)
        );
        assert_eq!(
            flush_spacing(p, Duration::from_secs(3)),
            Duration::from_millis(50)
        );
    }
}
