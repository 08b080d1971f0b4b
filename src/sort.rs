//! Stable sorting for cold paths (message composition, start-up, commands), in one instance.
//!
//! `slice::sort_by` is generic over the element type and the comparison: every call site
//! with its own closure gets its own copy of the standard library's driftsort, 3–6 kB each in
//! the static binary (#18's size budget; the sorts of storm digests, compact messages and the
//! like added up to about 50 kB). Here the standard sort runs once, on indices, comparing
//! through `&mut dyn FnMut`; each call site adds only the small closures that compare two
//! elements and swap them into order. The result is exactly `slice::sort_by`'s (stable: equal
//! elements keep their order), at the price of one `Vec<usize>` and an indirect call per
//! comparison, so code that sorts per request on the intake path keeps `slice::sort*`.

use std::cmp::Ordering;

/// `v.sort_by(compare)`, same order.
pub fn sort_by<T>(v: &mut [T], mut compare: impl FnMut(&T, &T) -> Ordering) {
    let order = sorted_indices(v.len(), &mut |a, b| compare(&v[a], &v[b]));
    permute(order, &mut |a, b| v.swap(a, b));
}

/// `v.sort_by_key(key)`, same order (the key is computed per comparison, as there).
pub fn sort_by_key<T, K: Ord>(v: &mut [T], mut key: impl FnMut(&T) -> K) {
    sort_by(v, |a, b| key(a).cmp(&key(b)));
}

/// `v.sort()`, same order.
pub fn sort<T: Ord>(v: &mut [T]) {
    sort_by(v, T::cmp);
}

/// The indices `0..len` in the order that sorts the elements stably by `compare`.
#[inline(never)]
fn sorted_indices(len: usize, compare: &mut dyn FnMut(usize, usize) -> Ordering) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by(|&a, &b| compare(a, b));
    order
}

/// Moves element `order[i]` to position `i` for every `i`, by following each cycle of the
/// permutation with `swap`: at most `len` swaps.
#[inline(never)]
fn permute(mut order: Vec<usize>, swap: &mut dyn FnMut(usize, usize)) {
    for start in 0..order.len() {
        let mut at = start;
        loop {
            let from = order[at];
            order[at] = at;
            if from == start {
                break;
            }
            swap(at, from);
            at = from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same result as the standard library's stable sort, ties included, on many shapes.
    #[test]
    fn the_order_is_the_standard_stable_sorts() {
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        for len in (0..40).chain([100, 257, 1000]) {
            for spread in [1, 3, 10, 1000] {
                // (key, original position): equal keys must keep their positions' order.
                let v: Vec<(u64, usize)> = (0..len).map(|i| (next() % spread, i)).collect();
                let mut ours = v.clone();
                sort_by(&mut ours, |a, b| a.0.cmp(&b.0));
                let mut std = v.clone();
                std.sort_by_key(|a| a.0);
                assert_eq!(ours, std, "len {len} spread {spread}");
                let mut ours = v.clone();
                sort_by_key(&mut ours, |x| std::cmp::Reverse(x.0));
                let mut std = v.clone();
                std.sort_by_key(|x| std::cmp::Reverse(x.0));
                assert_eq!(ours, std, "len {len} spread {spread}, by key");
            }
        }
        let mut words = vec!["b", "a", "c", "a"];
        sort(&mut words);
        assert_eq!(words, ["a", "a", "b", "c"]);
    }
}
