//! The bytes of batch frames a worker holds, bounded (`max_pending_bytes`).
//!
//! A connection reserves a batch's event bytes before it hands the batch to the ingest task, and
//! the reservation travels with the batch — through the ingest channel, pending, the commit in
//! flight — until the batch leaves the worker (acked, rejected, or dropped as a duplicate). When
//! the budget is spent, connections wait before handing over, and so stop reading their sockets
//! (backpressure), whatever the events' count or size. The event and row caps of the ingest task
//! bound the aggregates; this bounds the frames kept to rebuild them. Not counted: the batch each
//! connection has decoded and is waiting to reserve for (at most `max_frame_len`), frame headers,
//! and read-buffer slack around a batch's zero-copy slice.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// The worker's budget of frame bytes; cloned into every connection and the ingest task.
#[derive(Debug, Clone)]
pub(crate) struct FrameBudget {
    permits: Arc<Semaphore>,
    total: usize,
    metrics: Arc<Metrics>,
}

/// Bytes reserved for one batch (a permit per byte), given back when it is dropped.
#[derive(Debug)]
pub(crate) struct HeldBytes {
    permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

/// The ingest task has stopped: nothing more is handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

impl FrameBudget {
    /// A budget of `total` bytes (at least 1), reported as `shardtally_pending_bytes`.
    pub(crate) fn new(total: usize, metrics: Arc<Metrics>) -> FrameBudget {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        FrameBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
            metrics,
        }
    }

    /// Waits until `bytes` fit in what is left, then holds them. A batch larger than the whole
    /// budget takes all of it (configuration keeps `max_frame_len` within half the budget).
    pub(crate) async fn reserve(&self, bytes: usize) -> Result<HeldBytes, Closed> {
        let n = u32::try_from(bytes.clamp(1, self.total)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(n)
            .await
            .map_err(|_| Closed)?;
        Ok(HeldBytes::new(permit, &self.metrics))
    }

    /// Bytes held now, by every batch not yet acked.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.total.saturating_sub(self.permits.available_permits())
    }

    /// The whole budget.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Refuses every reservation from now on (the ingest task is stopping); the ones waiting
    /// get [`Closed`].
    pub(crate) fn close(&self) {
        self.permits.close();
    }
}

impl HeldBytes {
    /// Holds `permit`'s bytes, counted in `shardtally_pending_bytes` until dropped.
    fn new(permit: OwnedSemaphorePermit, metrics: &Arc<Metrics>) -> HeldBytes {
        let held = HeldBytes {
            permit,
            metrics: Arc::clone(metrics),
        };
        let n = held.signed();
        held.metrics.pending_bytes.fetch_add(n, Ordering::Relaxed);
        held
    }

    /// How many bytes this batch holds.
    pub(crate) fn bytes(&self) -> usize {
        self.permit.num_permits()
    }

    fn signed(&self) -> i64 {
        i64::try_from(self.bytes()).unwrap_or(i64::MAX)
    }

    /// Bytes held against a budget of their own (for unit tests of what carries them).
    #[cfg(test)]
    pub(crate) fn detached(bytes: u32) -> HeldBytes {
        let budget = Arc::new(Semaphore::new(bytes as usize));
        let permit = budget
            .try_acquire_many_owned(bytes)
            .expect("a fresh budget");
        HeldBytes::new(permit, &Arc::new(Metrics::new()))
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        let n = self.signed();
        self.metrics.pending_bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_give_it_back_when_dropped() {
        let metrics = Arc::new(Metrics::new());
        let budget = FrameBudget::new(100, Arc::clone(&metrics));
        let a = budget.reserve(60).await.expect("open");
        let b = budget.reserve(40).await.expect("open");
        assert_eq!(budget.held(), 100);
        assert_eq!(metrics.pending_bytes.load(Ordering::Relaxed), 100);
        // Full: the next one waits until a batch leaves.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(50).await.map(|h| h.bytes()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert_eq!(waiting.await.expect("join"), Ok(50));
        // The waiting reservation's bytes were dropped with it; b's remain.
        assert_eq!(budget.held(), 40);
        assert_eq!(metrics.pending_bytes.load(Ordering::Relaxed), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
        assert_eq!(metrics.pending_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_budget_takes_all_of_it_and_closing_refuses_waiters() {
        let metrics = Arc::new(Metrics::new());
        let budget = FrameBudget::new(100, Arc::clone(&metrics));
        let all = budget.reserve(1_000).await.expect("open");
        assert_eq!((all.bytes(), budget.held()), (100, 100));
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(1).await.map(|h| h.bytes()) }
        });
        tokio::task::yield_now().await;
        budget.close();
        assert_eq!(waiting.await.expect("join"), Err(Closed));
        assert_eq!(budget.reserve(1).await.map(|h| h.bytes()), Err(Closed));
        drop(all);
        assert_eq!(metrics.pending_bytes.load(Ordering::Relaxed), 0);
    }
}
