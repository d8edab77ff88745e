//! Reconnect backoff: capped exponential with full jitter, as a pure function.

use std::time::Duration;

/// The delay before reconnect attempt number `attempt` (0 = the first retry after a failure).
///
/// The ceiling doubles per attempt from `min` up to `max`; the delay is drawn uniformly between
/// `min` and that ceiling using `jitter` ∈ [0, 1) ("full jitter", floored at `min` so that a
/// flapping worker is never hammered in a tight loop). Out-of-range `jitter` is clamped.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let max = max.max(min);
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let ceiling = min.saturating_mul(factor).min(max);
    let span = ceiling.saturating_sub(min);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    min + span.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn ceiling_doubles_and_is_capped() {
        let top = |a| backoff_delay(a, MIN, MAX, 1.0);
        assert_eq!(top(0), MIN);
        assert_eq!(top(1), Duration::from_millis(200));
        assert_eq!(top(2), Duration::from_millis(400));
        assert_eq!(top(6), Duration::from_millis(6400));
        assert_eq!(top(7), MAX);
        assert_eq!(top(1000), MAX);
    }

    #[test]
    fn zero_jitter_is_the_minimum() {
        for a in [0, 1, 5, 40, u32::MAX] {
            assert_eq!(backoff_delay(a, MIN, MAX, 0.0), MIN);
        }
    }

    #[test]
    fn jitter_spreads_linearly() {
        assert_eq!(
            backoff_delay(3, MIN, MAX, 0.5),
            Duration::from_millis(100 + 350)
        );
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(backoff_delay(3, MAX, MIN, 0.7), MAX);
        assert_eq!(backoff_delay(3, MIN, MAX, f64::NAN), MIN);
        assert_eq!(backoff_delay(3, MIN, MAX, 7.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(3, Duration::ZERO, MAX, 0.9), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn always_within_bounds(attempt in any::<u32>(), jitter in 0.0f64..1.0,
                                min_ms in 0u64..10_000, extra_ms in 0u64..100_000) {
            let min = Duration::from_millis(min_ms);
            let max = min + Duration::from_millis(extra_ms);
            let d = backoff_delay(attempt, min, max, jitter);
            prop_assert!(d >= min && d <= max, "{d:?} not in [{min:?}, {max:?}]");
        }
    }
}
