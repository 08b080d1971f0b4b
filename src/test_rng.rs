//! The tests' pseudo-random numbers: xorshift64, so property tests need no extra crate and a
//! failure reproduces from its seed.

/// The xorshift64 sequence from `seed` (not zero).
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
