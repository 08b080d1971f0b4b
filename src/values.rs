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

/// Longest number `parse_duration` reads, in characters (digits and the dot).
const MAX_NUMBER_LEN: usize = 64;

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
        // `decimal` is exact, in time quadratic in the digits: no duration needs more than a few.
        if num.len() > MAX_NUMBER_LEN {
            return Err(format!("{s:?} has a number longer than {MAX_NUMBER_LEN} characters"));
        }
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let value = decimal(num).ok_or_else(|| format!("{s:?} is not a duration ({UNITS})"))?;
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

/// `num.parse::<f64>()` for a `num` of ASCII digits and dots, as `parse_duration` has it:
/// the nearest `f64` (ties to even), `None` unless it is DIGITS, DIGITS., .DIGITS or
/// DIGITS.DIGITS. Not `str::parse`, whose float parser and tables are 16 kB of the static
/// binary (#18). Exact: small values as (whole number) / 10^k (both exact in an `f64`, so the
/// division rounds once), the rest with big-integer arithmetic. Only a subnormal result
/// (below 2.2e-308 s) may round twice, which no duration can tell.
fn decimal(num: &str) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
    if fraction.contains('.') || (whole.is_empty() && fraction.is_empty()) {
        return None;
    }
    if !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction = fraction.trim_end_matches('0');
    let k = fraction.len();
    let digits: String = whole.chars().chain(fraction.chars()).skip_while(|&c| c == '0').collect();
    if digits.is_empty() {
        return Some(0.0);
    }
    if let Ok(w) = digits.parse::<u64>() {
        if w < 1 << 53 && k < POW10.len() {
            return Some(w as f64 / POW10[k]);
        }
    }
    // value = W / 10^k. Q = floor(W × 2^s / 10^k) with 2^56 <= Q < 2^62; then Q rounded to
    // 53 bits, times 2^-s.
    let estimate = (digits.len() as i64 - k as i64 - 1) * 3_321_928_094 / 1_000_000_000;
    let s = 57 - estimate; // estimate may be 1 too high or low: Q keeps 55 to 62 bits
    let mut n = crate::bignum::BigUint::from_digits(&digits);
    let mut sticky = false;
    if s >= 0 {
        for _ in 0..s {
            n.mul_small(2);
        }
    } else {
        for _ in 0..-s {
            sticky |= n.div_small(2) != 0;
        }
    }
    for _ in 0..k {
        sticky |= n.div_small(10) != 0;
    }
    let q = n.to_u64()?;
    let extra = (64 - q.leading_zeros()).saturating_sub(53);
    let mut mantissa = q >> extra;
    let rest = q & ((1 << extra) - 1);
    let half = 1u64 << extra >> 1;
    let mut exponent = extra as i64 - s;
    if extra > 0 && (rest > half || (rest == half && (sticky || mantissa & 1 == 1))) {
        mantissa += 1;
        if mantissa == 1 << 53 {
            mantissa >>= 1;
            exponent += 1;
        }
    }
    // mantissa × 2^exponent, through exact powers of two.
    let mut value = mantissa as f64;
    while exponent > 0 {
        let step = exponent.min(1000);
        value *= f64::from_bits(((step + 1023) as u64) << 52);
        exponent -= step;
    }
    while exponent < 0 {
        let step = (-exponent).min(1000);
        value *= f64::from_bits(((1023 - step) as u64) << 52);
        exponent += step;
    }
    Some(value)
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
        // A number of 64 characters is read; a longer one is refused at once (a million zeros
        // would cost `decimal` minutes).
        let long = format!("0.{}1s", "0".repeat(61));
        assert_eq!(parse_duration(&long), Ok(Duration::ZERO));
        let huge = format!("1{}s", "0".repeat(1_000_000));
        assert!(parse_duration(&huge).is_err_and(|e| e.contains("longer than 64 characters")));
        assert_eq!(
            Rate::parse("20/60s"),
            Ok(Rate { messages: 20, window: Duration::from_secs(60) })
        );
        assert!(Rate::parse("0/60s").is_err());
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
    }

    /// `decimal` is `str::parse::<f64>` on what `parse_duration` hands it.
    #[test]
    fn decimals_parse_as_std_parses_them() {
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut cases: Vec<String> = [
            "", ".", "..", "1.2.3", "0", "00", "5.", ".5", "0.1", "0.3", "1.5", "007.50",
            "9007199254740993", "9007199254740992.5", "9007199254740993.0000000000001",
            "123456789012345678901234567890", "0.000000000000000000000000000001",
            "1000000000.0000000001", "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497791",
            "2.4703282292062327208828439643411068618252990130716238221279284125033775363510437593264991818081799618989828234772285886546332835517796989819938739800539093906315035659515570226392290858392449105184435931802849936536152500319370457678249219365623669863658480757001585769269903706311928279558551332927834338409351978015531246597263579574622766465272827220056374006485499977096599470454020828166226237857393450736339007967761930577506740176324673600968951340535537458516661134223766678604162159680461914467291840300530057530849048765391711386591646239524912623653881879636239373280423891018672348497668235089863388587925628302755995657524455507255189313690836254779186948667994968324049705821028513185451396213837722826145437693412532098591327667236328125e-324",
        ]
        .iter()
        .map(|s| s.trim_end_matches("e-324").to_string())
        .collect();
        for _ in 0..20_000 {
            let len = 1 + next() % 40;
            let mut t: String = (0..len).map(|_| char::from(b'0' + (next() % 10) as u8)).collect();
            if next() % 4 != 0 {
                t.insert((next() % (len + 1)) as usize, '.');
            }
            cases.push(t);
        }
        for t in cases {
            assert_eq!(decimal(&t), t.parse::<f64>().ok(), "{t:?}");
        }
    }
}
