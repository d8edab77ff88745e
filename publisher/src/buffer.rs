//! The bounded buffer: how many events and bytes may wait for an ack, and what `publish` does
//! when that is reached.
//!
//! An event occupies the buffer from `publish` until its batch is acked (or fails) in every
//! group. Taking room is two atomic adds with rollback ([`Buffer::try_reserve`]), so it never
//! overshoots the bounds.
//!
//! The counters are shared with the background task, which gives room back as batches are
//! acked, so `publish` takes room for many events at a time ([`Credit`], kept under the batcher's
//! lock) and counts each event out of it with no atomic operation. Near the bounds it reserves
//! event by event again: an event is refused exactly when the buffer cannot hold it.

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

/// How many events' room [`Buffer::reserve_event`] takes at a time, at most.
const CREDIT_EVENTS: u64 = 128;

/// Room taken from the buffer ahead of the events that will use it. Only ever touched with the
/// batcher locked; [`Buffer::return_credit`] gives it back (on close, and before a refill).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credit {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
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

    /// Takes room for one event of `bytes` bytes: out of `credit` when it holds enough. Else the
    /// credit goes back and a new one is taken — up to [`CREDIT_EVENTS`] events and twice their
    /// bytes at this event's size, but no more than a sixteenth of the free room — or, when that
    /// would be under two events, room for this event alone. `false` when the buffer cannot hold
    /// the event, which is decided with no credit out: exactly as [`Buffer::try_reserve`] alone.
    pub(crate) fn reserve_event(&self, credit: &mut Credit, bytes: u64) -> bool {
        if credit.events > 0 && credit.bytes >= bytes {
            credit.events -= 1;
            credit.bytes -= bytes;
            return true;
        }
        self.return_credit(credit);
        let free_events = self.max_events.saturating_sub(self.events());
        let free_bytes = self.max_bytes.saturating_sub(self.bytes());
        let events = CREDIT_EVENTS.min(free_events / 16);
        let chunk_bytes = bytes.saturating_mul(2 * events).min(free_bytes / 16);
        if events > 1 && chunk_bytes >= bytes && self.try_reserve(events, chunk_bytes) {
            *credit = Credit {
                events: events - 1,
                bytes: chunk_bytes - bytes,
            };
            return true;
        }
        self.try_reserve(1, bytes)
    }

    /// Gives `credit` back (it is left empty).
    pub(crate) fn return_credit(&self, credit: &mut Credit) {
        let Credit { events, bytes } = std::mem::take(credit);
        self.release(events, bytes);
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

    use proptest::prelude::*;

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
    fn events_are_counted_out_of_a_credit_taken_in_chunks() {
        let b = Buffer::new(1_000_000, 64 << 20);
        let mut credit = Credit::default();
        assert!(b.reserve_event(&mut credit, 50));
        // One chunk: 128 events and twice their bytes at this size, this event's taken out.
        assert_eq!((b.events(), b.bytes()), (128, 12_800));
        assert_eq!(
            credit,
            Credit {
                events: 127,
                bytes: 12_750
            }
        );
        for _ in 0..127 {
            assert!(b.reserve_event(&mut credit, 50));
        }
        assert_eq!((b.events(), b.bytes()), (128, 12_800));
        assert_eq!(
            credit,
            Credit {
                events: 0,
                bytes: 6_400
            }
        );
        // The next one returns what is left and takes a new chunk.
        assert!(b.reserve_event(&mut credit, 50));
        assert_eq!((b.events(), b.bytes()), (256, 6_400 + 12_800));
        b.return_credit(&mut credit);
        assert_eq!(credit, Credit::default());
        assert_eq!((b.events(), b.bytes()), (129, 6_450));
    }

    #[test]
    fn a_credit_never_refuses_an_event_the_buffer_has_room_for() {
        for (max_events, max_bytes, size) in [
            (100, u64::MAX, 10),
            (u64::MAX, 1_000, 10),
            (1_000, 9_999, 7),
        ] {
            let b = Buffer::new(max_events, max_bytes);
            let mut credit = Credit::default();
            let fits = max_events.min(max_bytes / size);
            for i in 0..fits {
                assert!(
                    b.reserve_event(&mut credit, size),
                    "event {i} of {fits} refused"
                );
            }
            assert!(!b.reserve_event(&mut credit, size));
            assert_eq!(credit, Credit::default());
            assert_eq!((b.events(), b.bytes()), (fits, fits * size));
        }
    }

    proptest! {
        /// Against a model of exact accounting: with credit, an event is refused exactly when
        /// the events held (not the room taken) plus it would pass a bound, and the counters net
        /// of the credit are always the events held.
        #[test]
        fn reserving_with_credit_is_exact(
            max_events in 1u64..400,
            max_bytes in 1u64..20_000,
            steps in proptest::collection::vec((1u64..120, 0u8..4), 1..600),
        ) {
            let b = Buffer::new(max_events, max_bytes);
            let mut credit = Credit::default();
            let mut held: std::collections::VecDeque<u64> = Default::default();
            let (mut events, mut bytes) = (0u64, 0u64);
            for (size, op) in steps {
                if op == 0 {
                    // The background task gives back the oldest event's room (an ack).
                    if let Some(s) = held.pop_front() {
                        b.release(1, s);
                        events -= 1;
                        bytes -= s;
                    }
                    continue;
                }
                let fits = events < max_events && bytes + size <= max_bytes;
                prop_assert_eq!(b.reserve_event(&mut credit, size), fits);
                if fits {
                    held.push_back(size);
                    events += 1;
                    bytes += size;
                }
                prop_assert_eq!(b.events() - credit.events, events);
                prop_assert_eq!(b.bytes() - credit.bytes, bytes);
                prop_assert!(b.events() <= max_events && b.bytes() <= max_bytes);
            }
            b.return_credit(&mut credit);
            prop_assert_eq!((b.events(), b.bytes()), (events, bytes));
        }
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
