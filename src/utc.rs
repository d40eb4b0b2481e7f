//! UTC dates from Unix time, for the few lines wslb writes with a date in them (the
//! access log, certificate expiry): civil-from-days arithmetic, no date crate.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Year, month, day and second of the day of a Unix time (Howard Hinnant's
/// civil_from_days; proleptic Gregorian, any i64 day count).
pub(crate) fn civil(t: i64) -> (i64, i64, i64, i64) {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d, secs)
}

/// A time written as RFC 3339 in UTC with milliseconds, `2026-12-07T23:41:02.123Z`: the
/// form log pipelines parse without a format string, and that sorts as text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rfc3339Millis(pub SystemTime);

impl fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Milliseconds since the epoch, negative before it (a clock set wrong, not a case
        // to fail on). i64 milliseconds cover ±292 million years.
        let ms = match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        };
        let (y, m, d, secs) = civil(ms.div_euclid(1000));
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            ms.rem_euclid(1000)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> String {
        Rfc3339Millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }

    #[test]
    fn rfc3339_with_milliseconds() {
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_796_686_862_123), "2026-12-07T23:41:02.123Z");
        // A leap day, the last millisecond of a year, and sub-millisecond time truncated.
        assert_eq!(at(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
        let t = UNIX_EPOCH + Duration::from_nanos(1_500_999_999);
        assert_eq!(Rfc3339Millis(t).to_string(), "1970-01-01T00:00:01.500Z");
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(
            Rfc3339Millis(before).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
    }
}
