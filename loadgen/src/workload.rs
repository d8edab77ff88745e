//! The benchmark's workload: events of the bundled GeoLocation app's `geoTempStream`
//! (`apiName, country, city, requestTimestamp`) over a fixed number of distinct keys and a span
//! of event time, produced without allocating.
//!
//! Event `i` of `n` is a pure function of `(seed, i)`:
//! - its key is one of `keys` distinct `(apiName, country, city)` triples, drawn uniformly (a
//!   hash of `i`, so any subset of the events — one publisher's share — is drawn the same way);
//!   `(country, city)`, the aggregation's group-by key, is distinct per triple;
//! - its timestamp lies in `[start, start + spread)`: in [`TimeOrder::Ascending`] order, event
//!   `i` is stamped `start + i·spread/n` (a replay of the span, in time order, as a gateway's
//!   log would be); in [`TimeOrder::Random`] order, uniformly anywhere in the span (the worst
//!   case for the SECONDS table: every flush touches rows all over the span).
//!
//! Publisher `k` of `m` takes events `k, k+m, k+2m, …` ([`Workload::share`]), so together the
//! publishers keep the global time order.

use std::ops::Range;

use shardtally_publisher::ValueRef;

/// How event timestamps are laid over the span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeOrder {
    /// Event `i` at `start + i·spread/n`: a replay of the span in time order.
    Ascending,
    /// Uniformly anywhere in the span, in no order.
    Random,
}

/// One key: the three string attributes of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// `apiName` (a latest value in the GeoLocation aggregation).
    pub api: String,
    /// `country` (group-by).
    pub country: String,
    /// `city` (group-by; distinct per key).
    pub city: String,
}

/// The events of one benchmark run.
#[derive(Debug, Clone)]
pub struct Workload {
    keys: Vec<Key>,
    events: u64,
    start_ms: i64,
    spread_ms: i64,
    order: TimeOrder,
    seed: u64,
}

/// 2026-11-20T10:00:00Z, the hour of the SPEC's example: the default start of the event span.
pub const DEFAULT_START_MS: i64 = 1_795_168_800_000;

impl Workload {
    /// `events` events over `keys` distinct keys (at least 1), stamped over
    /// `[start_ms, start_ms + spread_ms)` (a spread of 0 stamps every event `start_ms`).
    pub fn new(
        events: u64,
        keys: usize,
        start_ms: i64,
        spread_ms: i64,
        order: TimeOrder,
        seed: u64,
    ) -> Workload {
        let keys = (0..keys.max(1))
            .map(|j| Key {
                api: format!("API-{:02}", j % 17),
                country: format!("Country-{:02}", j % 97),
                city: format!("City-{j:06}"),
            })
            .collect();
        Workload {
            keys,
            events,
            start_ms,
            spread_ms: spread_ms.max(0),
            order,
            seed,
        }
    }

    /// Number of events.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The distinct keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The span of event time, `[start, end)` in epoch ms.
    pub fn span_ms(&self) -> Range<i64> {
        self.start_ms..self.start_ms + self.spread_ms.max(1)
    }

    /// The index of event `i`'s key.
    pub fn key_of(&self, i: u64) -> usize {
        let n = self.keys.len() as u64;
        // `n` fits usize (it is a Vec's length), and the remainder is below it.
        #[allow(clippy::cast_possible_truncation)]
        let k = (mix(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % n) as usize;
        k
    }

    /// Event `i`'s timestamp, epoch ms.
    pub fn timestamp_of(&self, i: u64) -> i64 {
        if self.spread_ms == 0 {
            return self.start_ms;
        }
        let spread = self.spread_ms.unsigned_abs();
        let offset = match self.order {
            TimeOrder::Ascending => {
                // i < events, so the quotient is below `spread`, which fits i64. 64-bit
                // arithmetic when the product fits (a 128-bit division is slow).
                let n = self.events.max(1);
                match i.checked_mul(spread) {
                    Some(p) => p / n,
                    None => {
                        let q = u128::from(i) * u128::from(spread) / u128::from(n);
                        u64::try_from(q).unwrap_or(spread - 1)
                    }
                }
            }
            TimeOrder::Random => mix(!self.seed ^ i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)) % spread,
        };
        self.start_ms + i64::try_from(offset).unwrap_or(0)
    }

    /// Writes event `i`'s values, in `geoTempStream` order, into `out`.
    pub fn event<'a>(&'a self, i: u64, out: &mut [ValueRef<'a>; 4]) {
        let k = &self.keys[self.key_of(i)];
        *out = [
            ValueRef::String(&k.api),
            ValueRef::String(&k.country),
            ValueRef::String(&k.city),
            ValueRef::Long(self.timestamp_of(i)),
        ];
    }

    /// The event indices of publisher `k` of `m`: `k, k+m, k+2m, …` below the event count.
    pub fn share(&self, k: u64, m: u64) -> impl Iterator<Item = u64> + use<> {
        let m = m.max(1);
        (k..self.events).step_by(usize::try_from(m).unwrap_or(usize::MAX))
    }

    /// How many events publisher `k` of `m` publishes.
    pub fn share_len(&self, k: u64, m: u64) -> u64 {
        let m = m.max(1);
        if k >= self.events {
            0
        } else {
            (self.events - k).div_ceil(m)
        }
    }
}

/// SplitMix64's finaliser: a cheap, well-mixed hash of a 64-bit value.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn keys_are_distinct_by_group_key_and_all_used() {
        let w = Workload::new(
            100_000,
            1000,
            DEFAULT_START_MS,
            3_600_000,
            TimeOrder::Random,
            7,
        );
        let groups: HashSet<(&str, &str)> = w
            .keys()
            .iter()
            .map(|k| (k.country.as_str(), k.city.as_str()))
            .collect();
        assert_eq!(groups.len(), 1000);
        let used: HashSet<usize> = (0..100_000).map(|i| w.key_of(i)).collect();
        assert_eq!(used.len(), 1000);
    }

    #[test]
    fn ascending_timestamps_cover_the_span_in_order() {
        let w = Workload::new(
            7200,
            10,
            DEFAULT_START_MS,
            3_600_000,
            TimeOrder::Ascending,
            1,
        );
        let ts: Vec<i64> = (0..7200).map(|i| w.timestamp_of(i)).collect();
        assert!(ts.windows(2).all(|p| p[0] <= p[1]));
        assert_eq!(ts[0], DEFAULT_START_MS);
        assert_eq!(ts[7199], DEFAULT_START_MS + 3_599_500);
        // Two events per second of the hour.
        let seconds: HashSet<i64> = ts.iter().map(|t| t / 1000).collect();
        assert_eq!(seconds.len(), 3600);
    }

    #[test]
    fn huge_products_take_the_wide_path() {
        let w = Workload::new(u64::MAX, 1, 0, i64::MAX, TimeOrder::Ascending, 0);
        assert_eq!(w.timestamp_of(u64::MAX / 2), i64::MAX / 2);
        assert!(w.timestamp_of(u64::MAX - 1) < i64::MAX);
    }

    #[test]
    fn random_timestamps_stay_in_the_span() {
        let w = Workload::new(50_000, 10, DEFAULT_START_MS, 60_000, TimeOrder::Random, 3);
        let span = w.span_ms();
        assert!((0..50_000).all(|i| span.contains(&w.timestamp_of(i))));
        let zero = Workload::new(10, 10, DEFAULT_START_MS, 0, TimeOrder::Random, 3);
        assert_eq!(zero.timestamp_of(5), DEFAULT_START_MS);
    }

    #[test]
    fn shares_partition_the_events() {
        let w = Workload::new(1003, 5, 0, 1000, TimeOrder::Ascending, 0);
        let mut all: Vec<u64> = (0..3).flat_map(|k| w.share(k, 3)).collect();
        assert_eq!(
            (0..3).map(|k| w.share_len(k, 3)).sum::<u64>(),
            1003,
            "share lengths"
        );
        all.sort_unstable();
        assert_eq!(all, (0..1003).collect::<Vec<_>>());
        assert_eq!(w.share(1, 3).count() as u64, w.share_len(1, 3));
    }

    #[test]
    fn events_are_deterministic_per_seed() {
        let a = Workload::new(100, 50, 0, 1000, TimeOrder::Random, 9);
        let b = Workload::new(100, 50, 0, 1000, TimeOrder::Random, 9);
        let c = Workload::new(100, 50, 0, 1000, TimeOrder::Random, 10);
        let keys = |w: &Workload| (0..100).map(|i| w.key_of(i)).collect::<Vec<_>>();
        assert_eq!(keys(&a), keys(&b));
        assert_ne!(keys(&a), keys(&c));
        let mut out = [ValueRef::Null; 4];
        a.event(3, &mut out);
        let k = &a.keys()[a.key_of(3)];
        assert_eq!(out[2], ValueRef::String(&k.city));
        assert_eq!(out[3], ValueRef::Long(a.timestamp_of(3)));
    }
}
