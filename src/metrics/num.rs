//! Numbers in the metrics text, written as `{}` and `{:.3}` write an `f64`, without the
//! standard library's float formatting (Grisu and Dragon4 with their tables: about 11 kB of
//! the static binary, #18, for a page scraped a few times a minute).
//!
//! [`Shortest`] takes the shortest round-tripping digits from serde_json's formatter (zmij,
//! already linked for JSON numbers) and lays them out as std does: no exponent, no `.0` on
//! whole numbers. [`Millis`] rounds the exact binary value half to even at the third decimal,
//! as std does. Tests compare both with std on many values.

use std::fmt;

use crate::bignum::BigUint;

/// What std writes for a NaN or an infinity; `None` for a finite `v`.
fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v.is_infinite() {
        Some(if v < 0.0 { "-inf" } else { "inf" })
    } else {
        None
    }
}

/// `format!("{}", v)` for an `f64`.
pub struct Shortest(pub f64);

impl fmt::Display for Shortest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if let Some(text) = non_finite(v) {
            return f.write_str(text);
        }
        // zmij writes `[-]D[.DDD][e[-]X]`: the digits and where the decimal point goes.
        let text = serde_json::Number::from_f64(v).map(|n| n.to_string()).unwrap_or_default();
        let (negative, text) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let (mantissa, exponent) = match text.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
            None => (text, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits: String = whole.chars().chain(fraction.chars()).collect();
        // The value is 0.DIGITS × 10^point.
        let mut point = whole.len() as i32 + exponent;
        let leading = digits.len() - digits.trim_start_matches('0').len();
        point -= leading as i32;
        let mut digits = digits.trim_start_matches('0').trim_end_matches('0').to_string();
        // Where the value lies exactly halfway between two shortest candidates, zmij takes
        // the even one and std the one further from zero.
        let (exact, exact_point) = exact_digits(v);
        if !digits.is_empty() && exact.len() == digits.len() + 1 && exact.ends_with('5') {
            let (up, carried) = increment(&exact[..digits.len()]);
            digits = up.trim_end_matches('0').to_string();
            point = exact_point + i32::from(carried);
        }
        let digits = digits.as_str();
        if negative {
            f.write_str("-")?;
        }
        if digits.is_empty() {
            return f.write_str("0");
        }
        let len = digits.len() as i32;
        if point <= 0 {
            f.write_str("0.")?;
            for _ in 0..-point {
                f.write_str("0")?;
            }
            f.write_str(digits)
        } else if point < len {
            let (a, b) = digits.split_at(point as usize);
            write!(f, "{a}.{b}")
        } else {
            f.write_str(digits)?;
            for _ in 0..point - len {
                f.write_str("0")?;
            }
            Ok(())
        }
    }
}

/// `|v|` for a finite `v`, exactly: its significant digits (no leading or trailing zeros)
/// and where the point goes, as for [`Shortest`]: 0.DIGITS × 10^point.
fn exact_digits(v: f64) -> (String, i32) {
    let (m, e) = parts(v);
    // m × 2^e = m × 5^-e / 10^-e when e < 0.
    let mut n = BigUint::from_u128(u128::from(m));
    for _ in 0..e.unsigned_abs() {
        n.mul_small(if e < 0 { 5 } else { 2 });
    }
    let text = n.to_string();
    let digits = text.trim_start_matches('0');
    let point = digits.len() as i32 + e.min(0);
    (digits.trim_end_matches('0').to_string(), point)
}

/// DIGITS + 1 in the last place, and whether that carried into a new first digit.
fn increment(digits: &str) -> (String, bool) {
    let mut out: Vec<u8> = digits.bytes().collect();
    for d in out.iter_mut().rev() {
        if *d == b'9' {
            *d = b'0';
        } else {
            *d += 1;
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
    }
    out.insert(0, b'1');
    (String::from_utf8_lossy(&out).into_owned(), true)
}

/// `|v| = m × 2^e` exactly, for a finite `v`.
fn parts(v: f64) -> (u64, i32) {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | 1 << 52, biased - 1075)
    }
}

/// `format!("{:.3}", v)` for an `f64`.
pub struct Millis(pub f64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if let Some(text) = non_finite(v) {
            return f.write_str(text);
        }
        let (m, e) = parts(v);
        // n = v × 1000 rounded half to even, as decimal digits.
        let n = if e >= 0 {
            let mut n = BigUint::from_u128(u128::from(m) * 1000);
            for _ in 0..e {
                n.mul_small(2);
            }
            n.to_string()
        } else {
            let shift = -e as u32;
            let product = u128::from(m) * 1000; // < 2^63
            let n = if shift >= 64 {
                // product × 2^-shift < 0.5
                0
            } else {
                let q = product >> shift;
                let r = product & ((1u128 << shift) - 1);
                let half = 1u128 << (shift - 1);
                q + u128::from(r > half || (r == half && q & 1 == 1))
            };
            n.to_string()
        };
        if v.is_sign_negative() {
            f.write_str("-")?;
        }
        let n = format!("{n:0>4}");
        let (whole, thousandths) = n.split_at(n.len() - 3);
        write!(f, "{whole}.{thousandths}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<f64> {
        let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            0.01,
            0.025,
            2.5,
            3600.0,
            1e15,
            1e16,
            1e21,
            1e22,
            1e-7,
            123456789012345680000.0,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            0.0005,
            0.0015,
            0.0025,
            -0.0005,
            1_764_669_600.000_5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        // Powers of two (an uneven rounding interval) and their neighbours.
        for k in -1074..1024 {
            let bits = if k >= -1022 { ((k + 1023) as u64) << 52 } else { 1 << (k + 1074) };
            let p = f64::from_bits(bits);
            v.extend([p, f64::from_bits(p.to_bits() + 1), f64::from_bits(p.to_bits() - 1)]);
        }
        for _ in 0..25_000 {
            // Any bit pattern, and values such as metrics hold: times, sums of durations.
            v.push(f64::from_bits(next()));
            let nanos = next() % 4_000_000_000_000_000_000;
            v.push(std::time::Duration::from_nanos(nanos).as_secs_f64());
            v.push((next() % 1_000_000) as f64 / 1000.0);
            v.push((next() % 10_000) as f64 / 100.0 + (next() % 1000) as f64 / 7.0);
        }
        v
    }

    #[test]
    fn written_as_std_writes_them() {
        for v in values() {
            assert_eq!(Shortest(v).to_string(), format!("{v}"), "{{}} of {:#x}", v.to_bits());
            assert_eq!(Millis(v).to_string(), format!("{v:.3}"), "{{:.3}} of {:#x}", v.to_bits());
        }
    }
}
