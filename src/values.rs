//! Value types of flags and the config file: send budgets ([`Rate`]), durations and sizes.

use std::time::Duration;

/// A send budget: at most `messages` within any `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub messages: u32,
    pub window: Duration,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, w) = s.split_once('/').ok_or("expected N/DURATION such as 20/60s")?;
        let messages: u32 = n.trim().parse().map_err(|_| "N must be a whole number")?;
        let window = parse_duration(w)?;
        if messages == 0 || window.is_zero() {
            return Err("both N and DURATION must be above zero".into());
        }
        Ok(Rate { messages, window })
    }
}

/// Go and Alertmanager style: `500ms`, `10s`, `1m30s`, `1h`, `1d`, `1w`, `1.5h`; `0` is zero.
/// A bare number is refused: `60` could mean seconds or minutes, so it must say which.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "use a unit: ms, s, m, h, d or w, e.g. 10s, 1m30s, 1h";
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(format!("empty duration ({UNITS})"));
    }
    let mut rest = s;
    let mut secs = 0.0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration ({UNITS})"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "" => return Err(format!("{s:?} has no unit ({UNITS})")),
            _ => return Err(format!("{s:?}: unknown unit {unit:?} ({UNITS})")),
        };
        secs += value * scale;
        rest = next;
    }
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `4096`, `64KiB`, `4MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: u64 = num.parse().map_err(|_| format!("{s:?} is not a size such as 4MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit (use KiB, MiB or GiB)")),
    };
    value.checked_mul(mult).ok_or_else(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_rates_bytes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h0m0.5s"), Ok(Duration::from_millis(3_600_500)));
        let bare = parse_duration("60").expect_err("bare number");
        assert!(bare.contains("no unit") && bare.contains("ms, s, m, h, d or w"), "{bare}");
        assert!(parse_duration("10x").is_err_and(|e| e.contains("unknown unit")));
        assert!(parse_duration("").is_err());
        assert_eq!(
            Rate::parse("20/60s"),
            Ok(Rate { messages: 20, window: Duration::from_secs(60) })
        );
        assert!(Rate::parse("0/60s").is_err());
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
    }
}
