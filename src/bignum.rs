//! A non-negative integer in base 10^9 limbs: the exact arithmetic behind the metrics' number
//! formats (`metrics::num`) and the durations' decimal reading (`values::decimal`), which
//! stand in for the standard library's float formatting and parsing (#18, binary size).

use std::fmt;

/// Limbs least significant first, each below [`BigUint::BASE`]; no leading zero limbs.
pub struct BigUint(Vec<u64>);

impl BigUint {
    const BASE: u64 = 1_000_000_000;

    pub fn from_u128(mut n: u128) -> BigUint {
        let mut limbs = Vec::new();
        while n > 0 {
            limbs.push((n % u128::from(Self::BASE)) as u64);
            n /= u128::from(Self::BASE);
        }
        BigUint(limbs)
    }

    /// The value of a string of ASCII digits.
    pub fn from_digits(digits: &str) -> BigUint {
        let mut n = BigUint(Vec::new());
        for d in digits.bytes() {
            n.mul_small(10);
            n.add_small(u64::from(d - b'0'));
        }
        n
    }

    /// Multiplies in place by a small `factor` (limb × factor must fit a `u64`).
    pub fn mul_small(&mut self, factor: u64) {
        let mut carry = 0;
        for limb in &mut self.0 {
            let x = *limb * factor + carry;
            *limb = x % Self::BASE;
            carry = x / Self::BASE;
        }
        if carry > 0 {
            self.0.push(carry);
        }
    }

    pub fn add_small(&mut self, mut carry: u64) {
        for limb in &mut self.0 {
            let x = *limb + carry;
            *limb = x % Self::BASE;
            carry = x / Self::BASE;
            if carry == 0 {
                return;
            }
        }
        if carry > 0 {
            self.0.push(carry);
        }
    }

    /// Divides in place (rounding down) and returns the remainder.
    pub fn div_small(&mut self, divisor: u64) -> u64 {
        let mut rem = 0;
        for limb in self.0.iter_mut().rev() {
            let x = rem * Self::BASE + *limb;
            *limb = x / divisor;
            rem = x % divisor;
        }
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        rem
    }

    /// The value, if it fits a `u64`.
    pub fn to_u64(&self) -> Option<u64> {
        self.0
            .iter()
            .rev()
            .try_fold(0u64, |acc, &limb| acc.checked_mul(Self::BASE)?.checked_add(limb))
    }
}

impl fmt::Display for BigUint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut limbs = self.0.iter().rev();
        match limbs.next() {
            None => f.write_str("0"),
            Some(top) => {
                write!(f, "{top}")?;
                limbs.try_for_each(|limb| write!(f, "{limb:09}"))
            }
        }
    }
}
