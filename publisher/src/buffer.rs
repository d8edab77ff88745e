//! The bounded buffer: how many events and bytes may wait for an ack, and what `publish` does
//! when that is reached.
//!
//! An event occupies the buffer from `publish` until its batch is acked (or fails) in every
//! group. Reservation is two atomic adds with rollback, so it never overshoots the bounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// What `publish` does when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Wait up to `timeout` for space, then drop the event (counted, and an error returned).
    Block {
        /// The longest `publish` waits.
        timeout: Duration,
    },
    /// Drop the new event at once (counted, and an error returned).
    DropNewest,
}

impl Default for FullPolicy {
    fn default() -> FullPolicy {
        FullPolicy::Block {
            timeout: Duration::from_millis(100),
        }
    }
}

/// Event and byte accounting with a waiter list.
#[derive(Debug)]
pub(crate) struct Buffer {
    max_events: u64,
    max_bytes: u64,
    events: AtomicU64,
    bytes: AtomicU64,
    space: Notify,
}

impl Buffer {
    pub(crate) fn new(max_events: u64, max_bytes: u64) -> Buffer {
        Buffer {
            max_events,
            max_bytes,
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            space: Notify::new(),
        }
    }

    /// The byte bound.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Takes room for `events` events of `bytes` bytes, or returns `false` without taking any.
    pub(crate) fn try_reserve(&self, events: u64, bytes: u64) -> bool {
        let before = self.events.fetch_add(events, Ordering::AcqRel);
        if before + events > self.max_events {
            self.events.fetch_sub(events, Ordering::AcqRel);
            return false;
        }
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > self.max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.events.fetch_sub(events, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives room back and wakes the waiters.
    pub(crate) fn release(&self, events: u64, bytes: u64) {
        if events == 0 && bytes == 0 {
            return;
        }
        self.events.fetch_sub(events, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.space.notify_waiters();
    }

    /// Wakes every waiter (e.g. on close).
    pub(crate) fn wake_all(&self) {
        self.space.notify_waiters();
    }

    /// The notifier `publish` waits on; create the `Notified` future before trying to reserve.
    pub(crate) fn space(&self) -> &Notify {
        &self.space
    }

    /// Events held.
    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Acquire)
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn reserves_up_to_both_bounds_exactly() {
        let b = Buffer::new(3, 100);
        assert!(b.try_reserve(1, 40));
        assert!(b.try_reserve(1, 40));
        // Bytes would exceed: nothing taken.
        assert!(!b.try_reserve(1, 21));
        assert_eq!((b.events(), b.bytes()), (2, 80));
        assert!(b.try_reserve(1, 20));
        // Events would exceed: nothing taken.
        assert!(!b.try_reserve(1, 0));
        assert_eq!((b.events(), b.bytes()), (3, 100));
        b.release(2, 80);
        assert_eq!((b.events(), b.bytes()), (1, 20));
        assert!(b.try_reserve(2, 80));
    }

    #[test]
    fn concurrent_reservations_never_overshoot() {
        let b = Arc::new(Buffer::new(1000, u64::MAX));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || (0..1000).filter(|_| b.try_reserve(1, 1)).count())
            })
            .collect();
        let taken: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(taken, 1000);
        assert_eq!(b.events(), 1000);
    }

    #[tokio::test]
    async fn release_wakes_a_waiter() {
        let b = Arc::new(Buffer::new(1, 10));
        assert!(b.try_reserve(1, 10));
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                loop {
                    let notified = b.space().notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if b.try_reserve(1, 10) {
                        return true;
                    }
                    notified.await;
                }
            })
        };
        tokio::task::yield_now().await;
        b.release(1, 10);
        assert!(waiter.await.unwrap());
        assert_eq!(b.events(), 1);
    }
}
