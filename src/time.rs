//! Times and zones: [`Timestamp`], RFC 3339 parsing, the civil-date arithmetic and the fixed
//! display offset [`TzOffset`] with [`format_time`].
//!
//! A leaf module: it uses nothing else of ours, so the payload parser, the renderer, the
//! templates and the flags can all name it without forming a cycle.

use std::fmt;

/// A point in time as seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub unix_seconds: i64,
    pub nanos: u32,
}

/// A fixed UTC offset for displaying times; Alertmanager sends any offset, people want one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TzOffset {
    pub seconds: i32,
}

impl TzOffset {
    pub fn parse(s: &str) -> Result<TzOffset, String> {
        let s = s.trim();
        if s == "Z" || s == "z" || s.eq_ignore_ascii_case("utc") {
            return Ok(TzOffset { seconds: 0 });
        }
        let b = s.as_bytes();
        let sign = match b.first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err("expected +HH:MM, -HH:MM or Z".into()),
        };
        let rest = &s[1..];
        let (h, m) = match rest.split_once(':') {
            Some((h, m)) => (h, m),
            None if rest.len() == 4 => rest.split_at(2),
            None => (rest, "0"),
        };
        let digits =
            |x: &str| !x.is_empty() && x.len() <= 2 && x.bytes().all(|c| c.is_ascii_digit());
        if !digits(h) || !digits(m) {
            return Err("expected +HH:MM, -HH:MM or Z".into());
        }
        let (h, m): (i32, i32) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
        if h > 14 || m > 59 {
            return Err("offset out of range (-14:00..+14:00)".into());
        }
        Ok(TzOffset { seconds: sign * (h * 3600 + m * 60) })
    }
}

impl fmt::Display for TzOffset {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let sign = if self.seconds < 0 { '-' } else { '+' };
        let abs = self.seconds.abs();
        write!(f, "{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    }
}

/// Parses RFC 3339 (`2024-05-01T12:00:00.123456789+08:00`, `…Z`). Lenient on a space instead
/// of `T` and on lower-case letters; returns `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.iter().all(u8::is_ascii_digit) {
            Some(part.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
        } else {
            None
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut pos = 19;
    let mut nanos: u32 = 0;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 9 {
                nanos = nanos * 10 + u32::from(b[pos] - b'0');
            }
            pos += 1;
        }
        let digits = pos - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_seconds = match b.get(pos)? {
        b'Z' | b'z' if pos + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if pos + 6 == b.len() && b[pos + 3] == b':' => {
            let (oh, om) = (num(pos + 1..pos + 3)?, num(pos + 4..pos + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    // A leap second (:60) is shown as the following second.
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(Timestamp { unix_seconds: local - offset_seconds, nanos })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD HH:MM:SS` in the display offset.
pub fn format_time(t: Timestamp, tz: TzOffset) -> String {
    let local = t.unix_seconds + i64::from(tz.seconds);
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// `2024-05-01T12:00:00.123Z`: UTC with milliseconds, for log lines.
pub fn format_rfc3339_utc(t: Timestamp) -> String {
    let (days, secs) = (t.unix_seconds.div_euclid(86_400), t.unix_seconds.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        t.nanos / 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Option<i64> {
        parse_rfc3339(s).map(|t| t.unix_seconds)
    }

    #[test]
    fn rfc3339_offsets_and_fractions() {
        assert_eq!(ts("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(ts("2024-05-01T12:00:00Z"), Some(1_714_564_800));
        assert_eq!(ts("2024-05-01T20:00:00+08:00"), Some(1_714_564_800));
        assert_eq!(ts("2024-05-01T06:30:00-05:30"), Some(1_714_564_800));
        let t = parse_rfc3339("2024-05-01T12:00:00.123456789123Z");
        assert_eq!(t.map(|t| t.nanos), Some(123_456_789));
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00.5+08:00").map(|t| t.nanos),
            Some(500_000_000)
        );
        assert_eq!(ts("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    }

    #[test]
    fn rfc3339_rejects_garbage() {
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00+0800",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00Zjunk",
            "２０２４-05-01T12:00:00Z",
            "2024-05-01T24:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_utc_round_trip() {
        let t = parse_rfc3339("2024-05-01T20:00:00.250+08:00");
        assert_eq!(t.map(format_rfc3339_utc).as_deref(), Some("2024-05-01T12:00:00.250Z"));
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn tz_offsets() {
        assert_eq!(TzOffset::parse("+08:00").map(|t| t.seconds), Ok(28800));
        assert_eq!(TzOffset::parse("-05:30").map(|t| t.seconds), Ok(-19800));
        assert_eq!(TzOffset::parse("Z").map(|t| t.seconds), Ok(0));
        assert_eq!(TzOffset::parse("+0530").map(|t| t.seconds), Ok(19800));
        assert!(TzOffset::parse("8").is_err());
        assert!(TzOffset::parse("+25:00").is_err());
        assert_eq!(TzOffset { seconds: -19800 }.to_string(), "-05:30");
    }
}
