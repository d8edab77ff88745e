//! The time strings of `within`: `yyyy-MM-dd HH:mm:ss[ +hh:mm]`, and the single-string pattern
//! whose trailing fields may be `**` (`"2026-11-** **:**:**"` is all of November 2026).

use jiff::ToSpan;
use jiff::civil::DateTime;
use jiff::tz::Offset;

/// The period a time string names: `[start, end)` in epoch ms. Without wildcards it is the one
/// second written; with wildcards, the whole period of the first wildcard's enclosing field
/// (`"2026-11-20 10:**:**"` is the hour 10:00–11:00). An offset (`+05:30`) says in which local
/// time the fields are; without one they are UTC.
pub(crate) fn period(text: &str) -> Result<(i64, i64), String> {
    let bad = || {
        format!(
            "bad time \"{text}\": expected yyyy-MM-dd HH:mm:ss with an optional offset like +05:30, \
             trailing fields may be ** (\"2026-11-** **:**:**\")"
        )
    };
    let t = text.trim();
    let (main, offset) = match t.get(19..) {
        None => return Err(bad()),
        Some("") => (t, 0),
        Some(rest) => (
            t.get(..19).ok_or_else(bad)?,
            parse_offset(rest).ok_or_else(bad)?,
        ),
    };
    let b = main.as_bytes();
    // yyyy-MM-dd HH:mm:ss
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let spans = [(0, 4), (5, 7), (8, 10), (11, 13), (14, 16), (17, 19)];
    let mut fields = [0i16; 6];
    let mut first_wild = None;
    for (i, (s, e)) in spans.into_iter().enumerate() {
        let f = &main[s..e];
        if f.bytes().all(|c| c == b'*') {
            if i == 0 {
                return Err(format!("bad time \"{text}\": the year cannot be **"));
            }
            first_wild.get_or_insert(i);
            fields[i] = if i <= 2 { 1 } else { 0 };
        } else if first_wild.is_some() {
            return Err(format!(
                "bad time \"{text}\": only trailing fields can be ** (after a ** field, every field must be **)"
            ));
        } else if f.bytes().all(|c| c.is_ascii_digit()) {
            fields[i] = f.parse().map_err(|_| bad())?;
        } else {
            return Err(bad());
        }
    }
    let small = |v: i16| i8::try_from(v).map_err(|_| bad());
    let start = DateTime::new(
        fields[0],
        small(fields[1])?,
        small(fields[2])?,
        small(fields[3])?,
        small(fields[4])?,
        small(fields[5])?,
        0,
    )
    .map_err(|e| format!("bad time \"{text}\": {e}"))?;
    let end = match first_wild {
        Some(1) => start.checked_add(1.year()),
        Some(2) => start.checked_add(1.month()),
        Some(3) => start.checked_add(1.day()),
        Some(4) => start.checked_add(1.hour()),
        Some(5) => start.checked_add(1.minute()),
        _ => start.checked_add(1.second()),
    }
    .map_err(|e| format!("bad time \"{text}\": {e}"))?;
    let offset = Offset::from_seconds(offset).map_err(|e| format!("bad time \"{text}\": {e}"))?;
    let ms = |dt: DateTime| {
        offset
            .to_timestamp(dt)
            .map(|ts| ts.as_millisecond())
            .map_err(|e| format!("bad time \"{text}\": {e}"))
    };
    Ok((ms(start)?, ms(end)?))
}

/// ` +hh:mm` / ` -hh:mm` → seconds east of UTC.
fn parse_offset(s: &str) -> Option<i32> {
    let s = s.trim_start();
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn wildcards_name_whole_periods() {
        let p = |s: &str| period(s).unwrap();
        assert_eq!(
            p("2026-11-** **:**:**"),
            (ms("2026-11-01T00:00:00Z"), ms("2026-12-01T00:00:00Z"))
        );
        assert_eq!(
            p("2026-**-** **:**:**"),
            (ms("2026-01-01T00:00:00Z"), ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            p("2026-12-** **:**:**"),
            (ms("2026-12-01T00:00:00Z"), ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            p("2024-02-29 **:**:**"),
            (ms("2024-02-29T00:00:00Z"), ms("2024-03-01T00:00:00Z"))
        );
        assert_eq!(
            p("2026-11-20 10:**:**"),
            (ms("2026-11-20T10:00:00Z"), ms("2026-11-20T11:00:00Z"))
        );
        assert_eq!(
            p("2017-12-18 06:21:**"),
            (ms("2017-12-18T06:21:00Z"), ms("2017-12-18T06:22:00Z"))
        );
        assert_eq!(
            p("2017-06-01 04:05:50"),
            (1_496_289_950_000, 1_496_289_951_000)
        );
        assert_eq!(
            p("2017-12-18 11:51:27 +05:30"),
            (1_513_578_087_000, 1_513_578_088_000)
        );
        assert_eq!(
            p("2017-06-** **:**:** -01:00"),
            (ms("2017-06-01T01:00:00Z"), ms("2017-07-01T01:00:00Z"))
        );
    }

    #[test]
    fn rejects_malformed_times() {
        let e = |s: &str| period(s).unwrap_err();
        assert_eq!(
            e("2017-06-** 12:**:**"),
            "bad time \"2017-06-** 12:**:**\": only trailing fields can be ** (after a ** field, every field must be **)"
        );
        assert!(
            e("2017-06-** **:**:**:1000")
                .starts_with("bad time \"2017-06-** **:**:**:1000\": expected yyyy-MM-dd HH:mm:ss")
        );
        assert_eq!(
            e("****-06-01 00:00:00"),
            "bad time \"****-06-01 00:00:00\": the year cannot be **"
        );
        assert!(
            e("2017-02-30 00:00:00").contains("day"),
            "{}",
            e("2017-02-30 00:00:00")
        );
        assert!(e("2017-13-01 00:00:00").starts_with("bad time"));
        assert!(e("2017-06-01 24:00:00").starts_with("bad time"));
        assert!(e("2017-06-01").starts_with("bad time"));
        assert!(e("2017-06-01T00:00:00").starts_with("bad time"));
        assert!(e("2017-06-01 00:00:00 +5:30").starts_with("bad time"));
        assert!(e("2017-06-01 00:00:00 +24:00").starts_with("bad time"));
        assert!(e("2017-06-01 00:00:00 €").starts_with("bad time"));
        assert!(e("2017-06-01 0€:00:00").starts_with("bad time"));
        assert!(e("9999-12-** **:**:** -12:00").starts_with("bad time"));
    }
}
