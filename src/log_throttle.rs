//! At most one log line per interval for an event that may come thousands of times a second.
//!
//! An Alertmanager HA pair sends every notification twice, so "duplicate notification
//! dropped" is as frequent as real traffic; at normal rates every one is still logged, but a
//! flood of duplicates must not turn the log into the bottleneck (one line per request cost a
//! quarter of the duplicate path's throughput). Lock-free: intake coroutines on every worker
//! call it, and a mutex there would serialise them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

pub struct Throttle {
    every_ms: u64,
    /// Milliseconds after [`epoch`] before which no line is logged.
    next_ms: AtomicU64,
    /// Lines held back since the last one logged.
    held: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    pub const fn new(every_ms: u64) -> Throttle {
        Throttle { every_ms, next_ms: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    /// `Some(n)`: log now, `n` lines were held back since the last one; `None`: hold this one.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(epoch().elapsed().as_millis() as u64)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms < next
            || self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_next_counts_the_rest() {
        let t = Throttle::new(1000);
        assert_eq!(t.admit_at(5), Some(0));
        assert_eq!(t.admit_at(6), None);
        assert_eq!(t.admit_at(900), None);
        assert_eq!(t.admit_at(1004), None);
        assert_eq!(t.admit_at(1005), Some(3));
        // Sparse events are each logged.
        assert_eq!(t.admit_at(5000), Some(0));
        assert_eq!(t.admit_at(9000), Some(0));
    }

    #[test]
    fn concurrent_callers_log_once_and_lose_no_count() {
        let t = std::sync::Arc::new(Throttle::new(u64::MAX / 4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = std::sync::Arc::clone(&t);
                std::thread::spawn(move || (0..1000).filter(|_| t.admit_at(1).is_some()).count())
            })
            .collect();
        let logged: usize = threads.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(logged, 1);
        assert_eq!(t.held.load(Ordering::Relaxed), 3999);
    }
}
