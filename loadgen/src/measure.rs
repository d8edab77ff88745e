//! Measurements of a run: publish→ack latency, throughput over time, events per node.
//!
//! - [`LatencyRecorder`]: two HdrHistograms (µs, 3 significant figures, up to an hour) — one
//!   free of coordinated omission (latency from each event's due time in rate-limited phases),
//!   and the raw one (from the publish call; [`LatencyRecorder::record_scheduled`]). Both export
//!   the standard `.hgrm` percentile distribution ([`percentile_distribution`]).
//! - [`Throughput`]: acked events per fixed bucket (100 ms by default) since the start.
//! - [`NodeCounters`]: acked events per node id.
//!
//! All of it is plain synchronous data: each publisher task keeps its own and the run merges them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The highest latency the histograms track (larger ones are clamped to it and counted).
pub const MAX_LATENCY: Duration = Duration::from_secs(3_600);

/// Significant figures kept by the histograms.
pub const SIGNIFICANT_FIGURES: u8 = 3;

/// Publish→ack latencies: corrected for coordinated omission, and raw.
///
/// In a rate-limited (open-model) phase a stalled system delays the sends that should have
/// happened meanwhile, and measuring from the sends that did happen hides the stall. The run
/// measures each event from its *due* time instead (the corrected histogram, `latency.hgrm`, the
/// one to report) and keeps the latency from the actual publish call alongside (the raw one,
/// `latency-raw.hgrm`): the gap between the two is the time events spent waiting to be
/// published ([`LatencyRecorder::record_scheduled`]). In a max-rate phase there is no schedule:
/// both hold the latency from the publish call ([`LatencyRecorder::record`]).
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    corrected: Histogram<u64>,
    raw: Histogram<u64>,
    clamped: u64,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

fn new_histogram() -> Histogram<u64> {
    let max_us = u64::try_from(MAX_LATENCY.as_micros()).unwrap_or(u64::MAX);
    // Constant bounds within the crate's limits (1 ≤ low, high ≥ 2 × low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, max_us, SIGNIFICANT_FIGURES)
        .expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> LatencyRecorder {
        LatencyRecorder {
            corrected: new_histogram(),
            raw: new_histogram(),
            clamped: 0,
        }
    }

    fn clamp(&mut self, latency: Duration) -> u64 {
        let us = micros(latency);
        let high = self.raw.high();
        if us > high {
            self.clamped += 1;
            high
        } else {
            us
        }
    }

    /// Records one latency of a max-rate phase (from the publish call) in both histograms.
    pub fn record(&mut self, latency: Duration) {
        let us = self.clamp(latency);
        self.raw.saturating_record(us);
        self.corrected.saturating_record(us);
    }

    /// Records one event of a rate-limited phase: `from_due`, its latency from the time it was
    /// due (corrected), and `from_publish`, from the publish call (raw).
    pub fn record_scheduled(&mut self, from_due: Duration, from_publish: Duration) {
        let due = self.clamp(from_due);
        self.corrected.saturating_record(due);
        let published = self.clamp(from_publish);
        self.raw.saturating_record(published);
    }

    /// Adds another recorder's samples (e.g. one per publisher task).
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides, so adding cannot fail; count what could not be added.
        if self.raw.add(&other.raw).is_err() {
            self.clamped += other.raw.len();
        }
        if self.corrected.add(&other.corrected).is_err() {
            self.clamped += other.corrected.len();
        }
        self.clamped += other.clamped;
    }

    /// The corrected histogram (values in µs).
    pub fn corrected(&self) -> &Histogram<u64> {
        &self.corrected
    }

    /// The raw histogram (values in µs).
    pub fn raw(&self) -> &Histogram<u64> {
        &self.raw
    }

    /// Number of latencies recorded (raw; the corrected histogram may hold more samples).
    pub fn count(&self) -> u64 {
        self.raw.len()
    }

    /// Latencies above [`MAX_LATENCY`], recorded as that maximum.
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The corrected latency at `percentile` (0–100; 100 is the maximum), or zero when empty.
    pub fn value_at_percentile(&self, percentile: f64) -> Duration {
        value_at(&self.corrected, percentile)
    }

    /// Percentiles of the corrected histogram.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.corrected)
    }

    /// Percentiles of the raw histogram.
    pub fn raw_summary(&self) -> LatencySummary {
        LatencySummary::of(&self.raw)
    }

    /// `latency.hgrm`: the corrected percentile distribution, in milliseconds.
    pub fn hgrm(&self) -> String {
        percentile_distribution(&self.corrected, 5, 1_000.0)
    }

    /// `latency-raw.hgrm`: the raw percentile distribution, in milliseconds.
    pub fn raw_hgrm(&self) -> String {
        percentile_distribution(&self.raw, 5, 1_000.0)
    }

    /// The percentile curve of the corrected histogram, for charts.
    pub fn curve(&self) -> Vec<CurvePoint> {
        percentile_curve(&self.corrected)
    }

    /// The percentile curve of the raw histogram, for charts.
    pub fn raw_curve(&self) -> Vec<CurvePoint> {
        percentile_curve(&self.raw)
    }
}

fn value_at(h: &Histogram<u64>, percentile: f64) -> Duration {
    if h.is_empty() {
        return Duration::ZERO;
    }
    let us = if percentile >= 100.0 {
        h.max()
    } else {
        h.value_at_percentile(percentile)
    };
    Duration::from_micros(us)
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples in the histogram.
    pub count: u64,
    /// Smallest latency.
    pub min_ms: f64,
    /// Mean latency.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest latency.
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of a histogram of µs values.
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let at = |p: f64| us_to_ms(micros(value_at(h, p)));
        LatencySummary {
            count: h.len(),
            min_ms: us_to_ms(h.min()),
            mean_ms: h.mean() / 1_000.0,
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            p999_ms: at(99.9),
            max_ms: at(100.0),
        }
    }
}

/// One point of a latency percentile curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Percentile (0–100).
    pub percentile: f64,
    /// Latency at that percentile, in milliseconds.
    pub value_ms: f64,
}

/// The points of `h`'s percentile distribution (5 ticks per half distance, as in `.hgrm`).
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    percentile_rows(h, 5)
        .into_iter()
        .map(|r| CurvePoint {
            percentile: r.percentile,
            value_ms: us_to_ms(r.value),
        })
        .collect()
}

/// One row of a percentile distribution.
struct PercentileRow {
    /// The highest value equivalent to the bucket reached.
    value: u64,
    /// The percentile level iterated to (0–100).
    percentile: f64,
    /// Samples at or below `value`.
    total: u64,
}

/// The rows of HdrHistogram's percentile iteration, as the reference (Java) implementation
/// produces them. Levels start at 0% and each step adds `100 / (ticks × 2^(h + 1))`, where `h`
/// is the whole number of halvings `log2(100 / (100 − level))`. Each recorded value reports every
/// level its cumulative percentile reaches (the last value only the first), then one final row
/// at 100%.
fn percentile_rows(h: &Histogram<u64>, ticks_per_half_distance: u32) -> Vec<PercentileRow> {
    let n = h.len();
    let mut rows = Vec::new();
    if n == 0 {
        return rows;
    }
    let ticks = f64::from(ticks_per_half_distance.max(1));
    let mut level = 0.0f64;
    let mut total = 0u64;
    for v in h.iter_recorded() {
        total += v.count_at_value();
        let value = v.value_iterated_to();
        let current = 100.0 * total as f64 / n as f64;
        while current >= level {
            rows.push(PercentileRow {
                value,
                percentile: level,
                total,
            });
            let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln())
                .floor()
                .clamp(0.0, 61.0);
            level += 100.0 / (ticks * 2f64.powf(halvings + 1.0));
            if total >= n {
                break;
            }
        }
        if total >= n {
            rows.push(PercentileRow {
                value,
                percentile: 100.0,
                total,
            });
            break;
        }
    }
    rows
}

/// HdrHistogram's percentile distribution text (the `.hgrm` format of Java's
/// `outputPercentileDistribution`): a `Value Percentile TotalCount 1/(1-Percentile)` table with
/// `ticks_per_half_distance` rows per halving of the distance to 100%, values divided by
/// `value_scale` (1000 turns µs into ms), and the `#[Mean …]`, `#[Max …]`, `#[Buckets …]` footer.
pub fn percentile_distribution(
    h: &Histogram<u64>,
    ticks_per_half_distance: u32,
    value_scale: f64,
) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for row in percentile_rows(h, ticks_per_half_distance) {
        let value = row.value as f64 / value_scale;
        let q = row.percentile / 100.0;
        let total = row.total;
        #[allow(clippy::float_cmp)] // the last row is exactly 100
        if row.percentile != 100.0 {
            let _ = writeln!(
                out,
                "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:>12.digits$} {q:>2.12} {total:>10}");
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / value_scale,
            h.stdev() / value_scale,
            h.max() as f64 / value_scale,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    out
}

/// HdrHistogram's sub-bucket count for a precision: 2^⌈log2(2 × 10^digits)⌉ (2048 for 3).
fn sub_bucket_count(digits: u8) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(digits));
    let magnitude = 64 - (largest - 1).leading_zeros();
    1u64 << magnitude.max(1)
}

/// Acked events per fixed-width time bucket since the start of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throughput {
    /// Bucket width in milliseconds.
    pub bucket_ms: u64,
    /// Events per bucket; bucket `i` covers `[i × bucket_ms, (i + 1) × bucket_ms)`.
    pub counts: Vec<u64>,
}

/// Bucket index cap: events later than this many buckets after the start land in the last one
/// (a day at 100 ms), so a clock gone wild cannot allocate without bound.
const MAX_BUCKETS: usize = 864_000;

impl Default for Throughput {
    fn default() -> Self {
        Throughput::new(Duration::from_millis(100))
    }
}

impl Throughput {
    /// An empty timeline with `bucket`-wide buckets (at least 1 ms).
    pub fn new(bucket: Duration) -> Throughput {
        Throughput {
            bucket_ms: u64::try_from(bucket.as_millis()).unwrap_or(u64::MAX).max(1),
            counts: Vec::new(),
        }
    }

    /// Counts `n` events acked `since_start` after the start.
    pub fn record(&mut self, since_start: Duration, n: u64) {
        let ms = u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX);
        let index = usize::try_from(ms / self.bucket_ms)
            .unwrap_or(MAX_BUCKETS)
            .min(MAX_BUCKETS - 1);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += n;
    }

    /// Adds another timeline with the same bucket width (a different width is re-bucketed by
    /// each bucket's start).
    pub fn merge(&mut self, other: &Throughput) {
        for (i, n) in other.counts.iter().enumerate() {
            if *n > 0 {
                let start = other.bucket_ms.saturating_mul(i as u64);
                self.record(Duration::from_millis(start), *n);
            }
        }
    }

    /// All events counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The time covered, from the start to the end of the last non-empty bucket.
    pub fn span(&self) -> Duration {
        let last = self
            .counts
            .iter()
            .rposition(|n| *n > 0)
            .map_or(0, |i| i + 1);
        Duration::from_millis(self.bucket_ms.saturating_mul(last as u64))
    }

    /// Events per second over each bucket: `(bucket start in seconds, rate)`.
    pub fn rates(&self) -> Vec<(f64, f64)> {
        let width_s = self.bucket_ms as f64 / 1_000.0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64 * width_s, *n as f64 / width_s))
            .collect()
    }

    /// The mean rate over [`Throughput::span`] (events per second).
    pub fn mean_rate(&self) -> f64 {
        let s = self.span().as_secs_f64();
        if s > 0.0 {
            self.total() as f64 / s
        } else {
            0.0
        }
    }

    /// The highest bucket's rate (events per second).
    pub fn peak_rate(&self) -> f64 {
        let width_s = self.bucket_ms as f64 / 1_000.0;
        self.counts
            .iter()
            .max()
            .map_or(0.0, |n| *n as f64 / width_s)
    }
}

/// Acked events per node id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeCounters(pub BTreeMap<String, u64>);

impl NodeCounters {
    /// No counts.
    pub fn new() -> NodeCounters {
        NodeCounters::default()
    }

    /// Counts `n` events acked by `node_id`.
    pub fn add(&mut self, node_id: &str, n: u64) {
        if let Some(c) = self.0.get_mut(node_id) {
            *c += n;
        } else {
            self.0.insert(node_id.to_owned(), n);
        }
    }

    /// Events acked by `node_id`.
    pub fn get(&self, node_id: &str) -> u64 {
        self.0.get(node_id).copied().unwrap_or(0)
    }

    /// All events counted.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Adds another set of counters.
    pub fn merge(&mut self, other: &NodeCounters) {
        for (node, n) in &other.0 {
            self.add(node, *n);
        }
    }

    /// `(node id, count)` in node-id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = LatencyRecorder::new();
        for ms in 1..=100 {
            r.record(Duration::from_millis(ms));
        }
        assert_eq!(r.count(), 100);
        let s = r.summary();
        // 3 significant figures: values are exact to within 0.1%.
        assert_eq!(s.count, 100);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.p50_ms, 50.015);
        assert_eq!(s.p90_ms, 90.047);
        assert_eq!(s.p99_ms, 99.007);
        assert_eq!(s.p999_ms, 100.031);
        assert_eq!(s.max_ms, 100.031);
        assert_eq!(r.value_at_percentile(50.0), Duration::from_micros(50_015));
        assert_eq!(s, r.raw_summary());
    }

    #[test]
    fn scheduled_events_are_corrected_from_their_due_time_and_raw_from_the_publish_call() {
        let mut r = LatencyRecorder::new();
        // An event published 900 ms late (a stall), acked 100 ms after it was published.
        r.record_scheduled(Duration::from_millis(1_000), Duration::from_millis(100));
        r.record_scheduled(Duration::from_millis(20), Duration::from_millis(20));
        assert_eq!((r.raw().len(), r.corrected().len(), r.count()), (2, 2, 2));
        assert_eq!(r.summary().max_ms, 1_000.447);
        assert_eq!(r.raw_summary().max_ms, 100.031);
        assert_eq!(r.raw_summary().p50_ms, 20.015);
    }

    #[test]
    fn huge_latencies_are_clamped_and_counted() {
        let mut r = LatencyRecorder::new();
        r.record(Duration::from_secs(7_200));
        assert_eq!(r.clamped(), 1);
        assert_eq!(r.count(), 1);
        assert!(r.value_at_percentile(100.0) >= MAX_LATENCY);
        assert!(r.value_at_percentile(100.0) < MAX_LATENCY + Duration::from_secs(4));
    }

    #[test]
    fn merge_adds_samples() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        b.record_scheduled(Duration::from_millis(30), Duration::from_millis(10));
        a.merge(&b);
        assert_eq!((a.raw().len(), a.corrected().len()), (3, 3));
        assert_eq!(a.summary().max_ms, 30.015);
        assert_eq!(a.raw_summary().max_ms, 10.007);
    }

    #[test]
    fn hgrm_matches_hdrhistogram_format() {
        let mut r = LatencyRecorder::new();
        for ms in [1u64, 2, 3, 4] {
            r.record(Duration::from_millis(ms));
        }
        let expected = "       Value     Percentile TotalCount 1/(1-Percentile)

       1.000 0.000000000000          1           1.00
       1.000 0.100000000000          1           1.11
       1.000 0.200000000000          1           1.25
       2.000 0.300000000000          2           1.43
       2.000 0.400000000000          2           1.67
       2.000 0.500000000000          2           2.00
       3.001 0.550000000000          3           2.22
       3.001 0.600000000000          3           2.50
       3.001 0.650000000000          3           2.86
       3.001 0.700000000000          3           3.33
       3.001 0.750000000000          3           4.00
       4.001 0.775000000000          4           4.44
       4.001 1.000000000000          4
#[Mean    =        2.501, StdDeviation   =        1.118]
#[Max     =        4.001, Total count    =            4]
#[Buckets =           22, SubBuckets     =         2048]
";
        assert_eq!(r.hgrm(), expected);
        assert_eq!(r.raw_hgrm(), expected);
    }

    #[test]
    fn empty_hgrm_has_header_and_footer() {
        let r = LatencyRecorder::new();
        assert_eq!(
            r.hgrm(),
            "       Value     Percentile TotalCount 1/(1-Percentile)

#[Mean    =        0.000, StdDeviation   =        0.000]
#[Max     =        0.000, Total count    =            0]
#[Buckets =           22, SubBuckets     =         2048]
"
        );
        assert!(r.curve().is_empty());
        assert_eq!(r.summary(), LatencySummary::default());
    }

    #[test]
    fn curve_ends_at_the_maximum() {
        let mut r = LatencyRecorder::new();
        for ms in 1..=1000 {
            r.record(Duration::from_millis(ms));
        }
        let c = r.curve();
        assert_eq!(c.first().map(|p| p.percentile), Some(0.0));
        assert_eq!(
            c.last().map(|p| (p.percentile, p.value_ms)),
            Some((100.0, 1000.447))
        );
        assert!(
            c.windows(2)
                .all(|w| w[0].percentile <= w[1].percentile && w[0].value_ms <= w[1].value_ms)
        );
    }

    #[test]
    fn sub_bucket_counts() {
        assert_eq!(sub_bucket_count(1), 32);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(5), 262_144);
    }

    #[test]
    fn throughput_buckets() {
        let mut t = Throughput::default();
        t.record(Duration::from_millis(0), 5);
        t.record(Duration::from_millis(99), 5);
        t.record(Duration::from_millis(100), 7);
        t.record(Duration::from_millis(450), 3);
        assert_eq!(t.counts, [10, 7, 0, 0, 3]);
        assert_eq!(t.total(), 20);
        assert_eq!(t.span(), Duration::from_millis(500));
        assert_eq!(t.mean_rate(), 40.0);
        assert_eq!(t.peak_rate(), 100.0);
        assert_eq!(t.rates()[1], (0.1, 70.0));
        let mut u = Throughput::new(Duration::from_secs(1));
        u.merge(&t);
        assert_eq!(u.counts, [20]);
        let mut w = Throughput::default();
        w.merge(&t);
        w.merge(&t);
        assert_eq!(w.counts, [20, 14, 0, 0, 6]);
        // A wild clock cannot allocate without bound.
        w.record(Duration::from_secs(u64::MAX / 2), 1);
        assert_eq!(w.counts.len(), MAX_BUCKETS);
        assert_eq!(Throughput::new(Duration::ZERO).bucket_ms, 1);
    }

    #[test]
    fn node_counters() {
        let mut n = NodeCounters::new();
        n.add("b", 2);
        n.add("a", 1);
        n.add("b", 3);
        let mut m = NodeCounters::new();
        m.add("c", 4);
        m.add("a", 1);
        n.merge(&m);
        assert_eq!(n.iter().collect::<Vec<_>>(), [("a", 2), ("b", 5), ("c", 4)]);
        assert_eq!((n.get("b"), n.get("zz"), n.total()), (5, 0, 11));
        assert_eq!(
            serde_json::to_string(&n).ok().as_deref(),
            Some(r#"{"a":2,"b":5,"c":4}"#)
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// The `.hgrm` table's counts rise to the histogram's total; percentiles rise to 100.
            #[test]
            fn hgrm_rows_are_monotonic(values in proptest::collection::vec(0u64..10_000_000, 1..200)) {
                let mut r = LatencyRecorder::new();
                for v in &values {
                    r.record(Duration::from_micros(*v));
                }
                let rows = percentile_rows(r.raw(), 5);
                prop_assert!(rows.windows(2).all(|w| w[0].total <= w[1].total
                    && w[0].percentile <= w[1].percentile
                    && w[0].value <= w[1].value));
                let last = rows.last().map(|r| (r.percentile, r.total));
                prop_assert_eq!(last, Some((100.0, values.len() as u64)));
            }

            /// Merging timelines keeps every event, whatever the bucket widths.
            #[test]
            fn throughput_merge_keeps_totals(
                at in proptest::collection::vec((0u64..100_000, 1u64..100), 0..50),
                width_a in 1u64..2_000,
                width_b in 1u64..2_000,
            ) {
                let mut a = Throughput::new(Duration::from_millis(width_a));
                for (ms, n) in &at {
                    a.record(Duration::from_millis(*ms), *n);
                }
                let mut b = Throughput::new(Duration::from_millis(width_b));
                b.merge(&a);
                prop_assert_eq!(b.total(), at.iter().map(|(_, n)| n).sum::<u64>());
            }
        }
    }
}
