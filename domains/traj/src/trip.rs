//! A trip: a route of segment ids with optional per-segment timestamps, plus time helpers.

use serde::{Deserialize, Serialize};

/// One trip on a road network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// Segment indices in driving order.
    pub route: Vec<usize>,
    /// Entry time of each segment, Unix seconds (UTC), when known.
    pub times: Option<Vec<i64>>,
}

impl Trip {
    /// A trip without times.
    pub fn new(route: Vec<usize>) -> Self {
        Self { route, times: None }
    }

    /// Departure time (entry into the first segment), Unix seconds.
    pub fn departure(&self) -> Option<i64> {
        self.times.as_ref().and_then(|t| t.first().copied())
    }

    /// First segment.
    pub fn origin(&self) -> Option<usize> {
        self.route.first().copied()
    }

    /// Last segment.
    pub fn destination(&self) -> Option<usize> {
        self.route.last().copied()
    }
}

/// Number of departure-time buckets used as a condition (hour of day / 3).
pub const TIME_BUCKETS: usize = 8;

/// Departure-time bucket of a Unix time: hour of day (UTC) / 3, in `0..TIME_BUCKETS`.
pub fn time_bucket(unix_s: i64) -> usize {
    (unix_s.rem_euclid(86_400) / 3600 / 3) as usize
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds → `YYYY-MM-DDTHH:MM:SSZ` (the form HOSER's `time_list` uses).
pub fn format_iso(unix_s: i64) -> String {
    let (y, mo, d) = civil_from_days(unix_s.div_euclid(86_400));
    let s = unix_s.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS` with an optional `Z` (or a space instead of `T`) to Unix
/// seconds; `None` if malformed.
pub fn parse_iso(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    if d.next().is_some()
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || !(0.0..61.0).contains(&sec)
    {
        return None;
    }
    Some(days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + sec as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip() {
        assert_eq!(format_iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_iso("2019-11-25T00:00:52Z"), Some(1_574_640_052));
        for t in [0, 951_782_400, 1_574_640_052, 1_700_000_123, 4_102_444_799] {
            assert_eq!(parse_iso(&format_iso(t)), Some(t));
        }
        assert_eq!(parse_iso("2019-13-01T00:00:00Z"), None);
        assert_eq!(parse_iso("yesterday"), None);
        assert_eq!(time_bucket(1_574_640_052), 0);
        assert_eq!(time_bucket(86_400 + 23 * 3600), 7);
    }
}
