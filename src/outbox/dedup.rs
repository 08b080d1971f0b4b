//! Forgets nothing for `window`: the same notification arriving twice within it is sent once.
//!
//! Alertmanager HA peers each send the same notification, and Alertmanager itself resends
//! when our answer got lost. The key (built by the caller) covers group, status and every
//! alert's fingerprint, status and start time, so a re-fired alert (new start time) is new.
//! Notifications holding a resolved alert are never looked up here: losing a "recovered"
//! message is worse than a duplicate one.
//!
//! Bounded: at most `--dedup-max-entries` keys per table (set once at start-up with
//! [`set_max_entries`]); past it the oldest key is forgotten early and counted in
//! `weixin_robot_dedup_evictions_total`, so memory stays bounded whatever the rate of unique
//! notifications. An entry costs about 40 bytes: the key and its time in a `HashMap<u64, u64>`
//! plus the same pair in the age queue.
//!
//! Pure apart from the process-wide cap and counters: the caller passes `now`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::metrics;

/// `--dedup-max-entries`, per table.
static MAX_ENTRIES: AtomicUsize = AtomicUsize::new(100_000);

/// Sets the per-table cap for tables created from now on (called once, before any robot).
pub fn set_max_entries(n: usize) {
    MAX_ENTRIES.store(n.max(1), Ordering::Relaxed);
}

pub struct Dedup {
    window: Duration,
    max_entries: usize,
    /// The first `now` passed in; times are kept as milliseconds after it (8 bytes, not 16).
    epoch: Option<Instant>,
    /// Key → when it was recorded (milliseconds after `epoch`).
    seen: HashMap<u64, u64>,
    /// `(recorded_ms, key)`, oldest first. A pair whose time no longer matches `seen` is stale
    /// (the key was forgotten, or recorded again) and is skipped.
    order: VecDeque<(u64, u64)>,
}

impl Dedup {
    pub fn new(window: Duration) -> Dedup {
        Dedup::with_max_entries(window, MAX_ENTRIES.load(Ordering::Relaxed))
    }

    pub fn with_max_entries(window: Duration, max_entries: usize) -> Dedup {
        Dedup {
            window,
            max_entries: max_entries.max(1),
            epoch: None,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn ms(&mut self, at: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(at);
        u64::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Drops the oldest pair; true when it held a live key.
    fn pop_oldest(&mut self) -> bool {
        let Some((at, key)) = self.order.pop_front() else { return false };
        if self.seen.get(&key) == Some(&at) {
            self.seen.remove(&key);
            metrics::dedup_entries(false, 1);
            return true;
        }
        false
    }

    fn prune(&mut self, now_ms: u64) {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        while let Some(&(at, _)) = self.order.front() {
            if now_ms.saturating_sub(at) < window_ms {
                break;
            }
            self.pop_oldest();
        }
        // Full, or the queue is mostly stale pairs (many `forget`s): drop from the old end.
        while self.seen.len() >= self.max_entries || self.order.len() > 2 * self.max_entries {
            if self.pop_oldest() {
                metrics::dedup_evicted();
            }
            if self.order.is_empty() {
                break;
            }
        }
    }

    /// True when `key` was seen within the window; otherwise remembers it and returns false.
    pub fn is_duplicate(&mut self, key: u64, now: Instant) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let now_ms = self.ms(now);
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        if let Some(&at) = self.seen.get(&key) {
            if now_ms.saturating_sub(at) < window_ms {
                return true;
            }
        }
        self.prune(now_ms);
        if self.seen.insert(key, now_ms).is_none() {
            metrics::dedup_entries(true, 1);
        }
        self.order.push_back((now_ms, key));
        false
    }

    /// Takes back a key whose notification could not be queued after all, so its retry counts.
    /// Constant time: its pair in the age queue goes stale and is skipped later.
    pub fn forget(&mut self, key: u64) {
        if self.seen.remove(&key).is_some() {
            metrics::dedup_entries(false, 1);
        }
    }

    /// Keys held by this table.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

impl Drop for Dedup {
    fn drop(&mut self) {
        metrics::dedup_entries(false, self.seen.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_window_only() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(300));
        assert!(!d.is_duplicate(1, t0));
        assert!(d.is_duplicate(1, t0 + Duration::from_secs(299)));
        assert!(!d.is_duplicate(2, t0));
        assert!(!d.is_duplicate(1, t0 + Duration::from_secs(300)));
    }

    #[test]
    fn zero_window_disables() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::ZERO);
        assert!(!d.is_duplicate(1, t0));
        assert!(!d.is_duplicate(1, t0));
    }

    #[test]
    fn the_cap_forgets_the_oldest_first_and_counts_it() {
        let t0 = Instant::now();
        let mut d = Dedup::with_max_entries(Duration::from_secs(300), 3);
        let before = metrics::dedup_evictions();
        for k in 0..10u64 {
            assert!(!d.is_duplicate(k, t0 + Duration::from_millis(k)));
            assert!(d.len() <= 3);
        }
        assert!(metrics::dedup_evictions() - before >= 7, "evictions counted");
        // The newest are still known, the oldest were forgotten.
        assert!(d.is_duplicate(9, t0 + Duration::from_secs(1)));
        assert!(!d.is_duplicate(0, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn forget_then_record_again_keeps_the_new_time() {
        let t0 = Instant::now();
        let mut d = Dedup::with_max_entries(Duration::from_secs(10), 100);
        assert!(!d.is_duplicate(1, t0));
        d.forget(1);
        assert!(!d.is_duplicate(1, t0 + Duration::from_secs(8)));
        // The stale pair from t0 expires at 10 s without taking the new record with it.
        assert!(d.is_duplicate(1, t0 + Duration::from_secs(12)));
        // Many forgets leave the age queue bounded.
        for _ in 0..1000 {
            d.forget(1);
            assert!(!d.is_duplicate(1, t0 + Duration::from_secs(13)));
        }
        assert!(d.order.len() <= 201, "{}", d.order.len());
    }

    #[test]
    fn forget_lets_a_retry_through() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(300));
        assert!(!d.is_duplicate(7, t0));
        d.forget(7);
        assert!(!d.is_duplicate(7, t0));
    }
}
