//! Forgets nothing for `window`: the same notification arriving twice within it is sent once.
//!
//! Alertmanager HA peers each send the same notification, and Alertmanager itself resends
//! when our answer got lost. The key (built by the caller) covers group, status and every
//! alert's fingerprint, status and start time, so a re-fired alert (new start time) is new.
//! Notifications holding a resolved alert are never looked up here: losing a "recovered"
//! message is worse than a duplicate one.
//!
//! Pure: the caller passes `now`.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

pub struct Dedup {
    window: Duration,
    seen: HashSet<u64>,
    order: VecDeque<(Instant, u64)>,
}

impl Dedup {
    pub fn new(window: Duration) -> Dedup {
        Dedup { window, seen: HashSet::new(), order: VecDeque::new() }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }

    /// True when `key` was seen within the window; otherwise remembers it and returns false.
    pub fn is_duplicate(&mut self, key: u64, now: Instant) -> bool {
        if self.window.is_zero() {
            return false;
        }
        self.prune(now);
        if self.seen.contains(&key) {
            return true;
        }
        self.seen.insert(key);
        self.order.push_back((now, key));
        false
    }

    /// Takes back a key whose notification could not be queued after all, so its retry counts.
    pub fn forget(&mut self, key: u64) {
        if self.seen.remove(&key) {
            self.order.retain(|&(_, k)| k != key);
        }
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
    fn forget_lets_a_retry_through() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(300));
        assert!(!d.is_duplicate(7, t0));
        d.forget(7);
        assert!(!d.is_duplicate(7, t0));
    }
}
