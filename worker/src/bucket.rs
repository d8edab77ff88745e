//! Time buckets: the granularities of Siddhi's `every sec ... year` and calendar-aligned bucket
//! starts in UTC (epoch milliseconds).

use std::fmt;
use std::str::FromStr;

/// One aggregation granularity, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    /// One-second buckets (`_SECONDS` table).
    Seconds,
    /// One-minute buckets (`_MINUTES`).
    Minutes,
    /// One-hour buckets (`_HOURS`).
    Hours,
    /// One-day buckets, UTC midnight (`_DAYS`).
    Days,
    /// Calendar months, UTC (`_MONTHS`).
    Months,
    /// Calendar years, UTC (`_YEARS`).
    Years,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Granularity; 6] = [
        Granularity::Seconds,
        Granularity::Minutes,
        Granularity::Hours,
        Granularity::Days,
        Granularity::Months,
        Granularity::Years,
    ];

    /// The suffix of this granularity's table: `SECONDS` … `YEARS`.
    pub fn table_suffix(self) -> &'static str {
        match self {
            Granularity::Seconds => "SECONDS",
            Granularity::Minutes => "MINUTES",
            Granularity::Hours => "HOURS",
            Granularity::Days => "DAYS",
            Granularity::Months => "MONTHS",
            Granularity::Years => "YEARS",
        }
    }

    /// The table holding this granularity of `aggregation`: `GeoLocationAgg_HOURS`.
    pub fn table_name(self, aggregation: &str) -> String {
        format!("{aggregation}_{}", self.table_suffix())
    }

    /// The plural lower-case name used by `per "hours"`.
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Seconds => "seconds",
            Granularity::Minutes => "minutes",
            Granularity::Hours => "hours",
            Granularity::Days => "days",
            Granularity::Months => "months",
            Granularity::Years => "years",
        }
    }

    /// The start (epoch ms, UTC) of the bucket of this granularity containing `ts_ms`.
    ///
    /// Fixed-length granularities are plain floor division; months and years use the UTC calendar.
    /// Timestamps before 1970 floor correctly (towards negative infinity).
    pub fn bucket_start(self, ts_ms: i64) -> i64 {
        const SEC: i64 = 1_000;
        const MIN: i64 = 60 * SEC;
        const HOUR: i64 = 60 * MIN;
        const DAY: i64 = 24 * HOUR;
        match self {
            Granularity::Seconds => ts_ms.div_euclid(SEC) * SEC,
            Granularity::Minutes => ts_ms.div_euclid(MIN) * MIN,
            Granularity::Hours => ts_ms.div_euclid(HOUR) * HOUR,
            Granularity::Days => ts_ms.div_euclid(DAY) * DAY,
            Granularity::Months | Granularity::Years => {
                let days = ts_ms.div_euclid(DAY);
                let (y, m, _) = civil_from_days(days);
                let m = if self == Granularity::Years { 1 } else { m };
                days_from_civil(y, m, 1) * DAY
            }
        }
    }

    /// The start of the bucket after the one starting at `bucket_start` (exclusive end).
    pub fn next_bucket(self, bucket_start: i64) -> i64 {
        const DAY: i64 = 86_400_000;
        match self {
            Granularity::Seconds => bucket_start + 1_000,
            Granularity::Minutes => bucket_start + 60_000,
            Granularity::Hours => bucket_start + 3_600_000,
            Granularity::Days => bucket_start + DAY,
            Granularity::Months | Granularity::Years => {
                let (y, m, _) = civil_from_days(bucket_start.div_euclid(DAY));
                let (y, m) = match self {
                    Granularity::Years => (y + 1, 1),
                    _ if m == 12 => (y + 1, 1),
                    _ => (y, m + 1),
                };
                days_from_civil(y, m, 1) * DAY
            }
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Granularity {
    type Err = String;

    /// Accepts Siddhi's spellings: `sec`, `second`, `seconds`, `min`, `minute(s)`, `hour(s)`,
    /// `day(s)`, `month(s)`, `year(s)`, case-insensitive.
    fn from_str(s: &str) -> Result<Granularity, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "sec" | "secs" | "second" | "seconds" => Granularity::Seconds,
            "min" | "mins" | "minute" | "minutes" => Granularity::Minutes,
            "hour" | "hours" => Granularity::Hours,
            "day" | "days" => Granularity::Days,
            "month" | "months" => Granularity::Months,
            "year" | "years" => Granularity::Years,
            other => {
                return Err(format!(
                    "unknown granularity `{other}` (expected seconds, minutes, hours, days, months or years)"
                ));
            }
        })
    }
}

// Proleptic Gregorian conversions (H. Hinnant's algorithms): exact for every i64 day count that
// fits an epoch-millisecond timestamp, branch-light, and free of allocation. jiff covers a
// narrower range (years -9999..=9999) than an i64 of milliseconds, and these two functions are the
// whole of what bucketing needs.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn buckets_are_calendar_aligned_in_utc() {
        let t = ms("2024-02-29T13:45:59.999Z");
        assert_eq!(
            Granularity::Seconds.bucket_start(t),
            ms("2024-02-29T13:45:59Z")
        );
        assert_eq!(
            Granularity::Minutes.bucket_start(t),
            ms("2024-02-29T13:45:00Z")
        );
        assert_eq!(
            Granularity::Hours.bucket_start(t),
            ms("2024-02-29T13:00:00Z")
        );
        assert_eq!(
            Granularity::Days.bucket_start(t),
            ms("2024-02-29T00:00:00Z")
        );
        assert_eq!(
            Granularity::Months.bucket_start(t),
            ms("2024-02-01T00:00:00Z")
        );
        assert_eq!(
            Granularity::Years.bucket_start(t),
            ms("2024-01-01T00:00:00Z")
        );
        assert_eq!(
            Granularity::Months.next_bucket(ms("2024-02-01T00:00:00Z")),
            ms("2024-03-01T00:00:00Z")
        );
        assert_eq!(
            Granularity::Months.next_bucket(ms("2024-12-01T00:00:00Z")),
            ms("2025-01-01T00:00:00Z")
        );
        assert_eq!(
            Granularity::Years.next_bucket(ms("2024-01-01T00:00:00Z")),
            ms("2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn negative_timestamps_floor() {
        assert_eq!(Granularity::Seconds.bucket_start(-1), -1_000);
        assert_eq!(
            Granularity::Years.bucket_start(-1),
            ms("1969-01-01T00:00:00Z")
        );
        assert_eq!(
            Granularity::Months.bucket_start(-1),
            ms("1969-12-01T00:00:00Z")
        );
    }

    #[test]
    fn civil_conversions_round_trip_and_agree_with_jiff() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        for s in ["1900-03-01", "2000-02-29", "2100-12-31", "1601-01-01"] {
            let t = ms(&format!("{s}T12:00:00Z"));
            let (y, m, _) = civil_from_days(t.div_euclid(86_400_000));
            assert_eq!(format!("{y:04}-{m:02}"), &s[..7]);
        }
    }

    #[test]
    fn parses_siddhi_spellings() {
        assert_eq!("sec".parse::<Granularity>(), Ok(Granularity::Seconds));
        assert_eq!("Hours".parse::<Granularity>(), Ok(Granularity::Hours));
        assert!("fortnight".parse::<Granularity>().is_err());
    }
}
