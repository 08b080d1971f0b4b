//! Small copies for the static x86_64 binary.
//!
//! musl's x86_64 `memcpy` is `rep movsq` plus a byte loop for the tail. Its start-up costs tens
//! of cycles whatever the size, and most copies here are small: the strings of a parsed
//! notification, header names, structs moved between functions (a duplicate 1-alert
//! notification makes about 48 calls, two thirds of them under 64 bytes). Under load `memcpy`
//! was the largest user-space item of the static binary's profile (8%, 78% of it on the
//! `rep movsq` and its tail; BENCHMARKS.md #18), where glibc's build pays a fraction of that.
//!
//! The optimised x86_64 musl build links with `-Wl,--wrap=memcpy` and sets `cfg(wrap_memcpy)`
//! (`build.rs`, both or neither): every call to `memcpy`, ours, std's and musl's own, comes to
//! `__wrap_memcpy` below, which copies up to 128 bytes with a fixed number of unaligned loads
//! and stores and hands anything larger to musl's (`__real_memcpy`), unchanged. No loops: a copying loop could be turned back into a
//! `memcpy` call by the compiler, which would come back here. The aarch64 musl `memcpy` is
//! already written for small sizes, and glibc builds keep glibc's.

/// Copies `n <= 128` bytes from `src` to `dst` and returns true; returns false, copying
/// nothing, when `n` is larger. Every load is done before the stores of its size class.
///
/// # Safety
/// As `memcpy`: `src` readable and `dst` writable for `n` bytes, the ranges not overlapping.
#[cfg_attr(not(any(test, wrap_memcpy)), allow(dead_code))]
#[inline(always)]
pub unsafe fn copy_small(dst: *mut u8, src: *const u8, n: usize) -> bool {
    use core::ptr::{read_unaligned as load, write_unaligned as store};
    // SAFETY: each access is within [0, n) of its buffer, as the caller promises; the head and
    // tail pieces overlap for sizes between the powers of two, which is harmless.
    unsafe {
        match n {
            0 => {}
            1..=3 => {
                let (a, b, c) = (*src, *src.add(n / 2), *src.add(n - 1));
                *dst = a;
                *dst.add(n / 2) = b;
                *dst.add(n - 1) = c;
            }
            4..=7 => {
                let (a, b) = (load(src as *const u32), load(src.add(n - 4) as *const u32));
                store(dst as *mut u32, a);
                store(dst.add(n - 4) as *mut u32, b);
            }
            8..=16 => {
                let (a, b) = (load(src as *const u64), load(src.add(n - 8) as *const u64));
                store(dst as *mut u64, a);
                store(dst.add(n - 8) as *mut u64, b);
            }
            17..=32 => {
                let (a, b) = (load(src as *const u128), load(src.add(n - 16) as *const u128));
                store(dst as *mut u128, a);
                store(dst.add(n - 16) as *mut u128, b);
            }
            33..=64 => {
                let p = |i: usize| src.add(i) as *const u128;
                let (a, b, c, d) = (load(p(0)), load(p(16)), load(p(n - 32)), load(p(n - 16)));
                let q = |i: usize| dst.add(i) as *mut u128;
                store(q(0), a);
                store(q(16), b);
                store(q(n - 32), c);
                store(q(n - 16), d);
            }
            65..=128 => {
                let p = |i: usize| src.add(i) as *const u128;
                let head = [load(p(0)), load(p(16)), load(p(32)), load(p(48))];
                let tail = [load(p(n - 64)), load(p(n - 48)), load(p(n - 32)), load(p(n - 16))];
                let q = |i: usize| dst.add(i) as *mut u128;
                store(q(0), head[0]);
                store(q(16), head[1]);
                store(q(32), head[2]);
                store(q(48), head[3]);
                store(q(n - 64), tail[0]);
                store(q(n - 48), tail[1]);
                store(q(n - 32), tail[2]);
                store(q(n - 16), tail[3]);
            }
            _ => return false,
        }
    }
    true
}

#[cfg(wrap_memcpy)]
mod wrap {
    extern "C" {
        /// musl's own `memcpy`, under the name `--wrap` gives it.
        fn __real_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    }

    /// What every `memcpy` call in the binary reaches (see the module's comment).
    ///
    /// # Safety
    /// As `memcpy`.
    #[no_mangle]
    pub unsafe extern "C" fn __wrap_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's `memcpy` contract is passed on unchanged.
        unsafe {
            if super::copy_small(dst, src, n) {
                dst
            } else {
                __real_memcpy(dst, src, n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::copy_small;

    /// Every size up to past the limit, every source and destination offset within 16 bytes:
    /// exactly the `n` bytes are copied, nothing around them is touched.
    #[test]
    fn copies_exactly_n_bytes_at_any_alignment() {
        let src: Vec<u8> = (0..200u32).map(|i| (i * 7 + 1) as u8).collect();
        for n in 0..=140usize {
            for so in 0..16 {
                for d_off in 0..16 {
                    let mut dst = vec![0xEEu8; 200];
                    // SAFETY: so + n <= 156 < 200 and d_off + n <= 156 < 200.
                    let done =
                        unsafe { copy_small(dst.as_mut_ptr().add(d_off), src.as_ptr().add(so), n) };
                    assert_eq!(done, n <= 128, "n={n}");
                    if !done {
                        assert!(dst.iter().all(|&b| b == 0xEE), "n={n}: copied though refused");
                        continue;
                    }
                    assert_eq!(
                        &dst[d_off..d_off + n],
                        &src[so..so + n],
                        "n={n} so={so} do={d_off}"
                    );
                    assert!(dst[..d_off].iter().all(|&b| b == 0xEE), "n={n}: wrote before");
                    assert!(dst[d_off + n..].iter().all(|&b| b == 0xEE), "n={n}: wrote after");
                }
            }
        }
    }
}
