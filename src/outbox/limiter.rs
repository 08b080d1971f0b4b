//! The per-robot send budget: at most N sends in any window, as WeCom counts them.
//!
//! WeCom allows 20 messages per minute per robot and answers 45009 past that.
//! <https://developer.work.weixin.qq.com/document/path/91770#消息发送频率限制>
//! A token bucket refilling one token every 3 s after a burst of 20 lets a 21st message into
//! the same 60 s window, so this is a sliding log instead: a send may start only when fewer
//! than N sends *finished* within the last window plus a margin. Counting finish times (not
//! start times) is conservative: WeCom saw each earlier request no later than it finished, and
//! will see the next one no earlier than it starts. The margin absorbs clock and network skew.
//!
//! Pure: the caller passes `now`, so tests need no sleeps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::values::Rate;

pub struct Limiter {
    max: usize,
    window: Duration,
    margin: Duration,
    sends: VecDeque<Instant>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            max: rate.messages as usize,
            window: rate.window,
            // 2 s on WeCom's 60 s window.
            margin: rate.window / 30,
            sends: VecDeque::new(),
        }
    }

    /// A reload changed the budget: keep the log of what was sent, judge it by the new rule.
    pub fn set_rate(&mut self, rate: Rate) {
        self.max = rate.messages as usize;
        self.window = rate.window;
        self.margin = rate.window / 30;
    }

    fn span(&self) -> Duration {
        self.window + self.margin
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&first) = self.sends.front() {
            if now.saturating_duration_since(first) >= self.span() {
                self.sends.pop_front();
            } else {
                break;
            }
        }
    }

    /// The earliest instant at which the next send may start (`now` when budget remains).
    pub fn next_allowed(&mut self, now: Instant) -> Instant {
        self.prune(now);
        if self.sends.len() < self.max {
            return now;
        }
        // The send that must leave the window before another may start.
        let oldest_blocking = self.sends[self.sends.len() - self.max];
        oldest_blocking + self.span()
    }

    /// How long ago each send still in the window finished, for `digest::capacity`.
    pub fn recent(&mut self, now: Instant) -> Vec<Duration> {
        self.prune(now);
        self.sends.iter().map(|t| now.saturating_duration_since(*t)).collect()
    }

    /// Records a finished send (successful or not: WeCom may have counted it either way).
    pub fn record(&mut self, finished: Instant) {
        self.sends.push_back(finished);
    }

    /// After a 45009: WeCom says the budget is spent even if our log disagrees (another
    /// sender shares the key, or we restarted). Wait until our oldest logged send leaves the
    /// window, or a whole window when we have none to go by.
    pub fn pause_after_rate_limit(&mut self, now: Instant) -> Instant {
        self.prune(now);
        match self.sends.front() {
            Some(&first) if self.sends.len() >= self.max => first + self.span(),
            _ => now + self.span(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wecom() -> Limiter {
        Limiter::new(Rate { messages: 20, window: Duration::from_secs(60) })
    }

    /// Simulates a sender that always sends as soon as allowed, each send taking `latency`,
    /// and checks that no 60 s window (as WeCom sees arrivals) ever holds more than 20.
    #[test]
    fn no_window_ever_holds_more_than_twenty() {
        let t0 = Instant::now();
        for latency_ms in [0u64, 5, 150, 2500] {
            let mut lim = wecom();
            let mut now = t0;
            let mut arrivals = Vec::new();
            for _ in 0..200 {
                now = lim.next_allowed(now).max(now);
                arrivals.push(now); // WeCom sees it no earlier than it starts
                now += Duration::from_millis(latency_ms);
                lim.record(now);
            }
            for (i, &a) in arrivals.iter().enumerate() {
                let in_window =
                    arrivals[i..].iter().take_while(|&&b| b - a < Duration::from_secs(60)).count();
                assert!(in_window <= 20, "latency {latency_ms}ms: {in_window} in a window");
            }
            // ...and the budget is actually used: 200 sends need 10 windows (each stretched by
            // one send's latency), not more.
            let total = now - t0;
            let bound = (Duration::from_secs(62) + Duration::from_millis(latency_ms)) * 10;
            assert!(total < bound, "too slow: {total:?} vs {bound:?}");
        }
    }

    #[test]
    fn burst_of_twenty_goes_at_once() {
        let t0 = Instant::now();
        let mut lim = wecom();
        for _ in 0..20 {
            assert_eq!(lim.next_allowed(t0), t0);
            lim.record(t0);
        }
        assert_eq!(lim.next_allowed(t0), t0 + Duration::from_secs(62));
    }

    #[test]
    fn rate_limit_pause_without_history_is_a_full_window() {
        let t0 = Instant::now();
        let mut lim = wecom();
        assert_eq!(lim.pause_after_rate_limit(t0), t0 + Duration::from_secs(62));
        lim.record(t0);
        // With history but under our own budget, WeCom knows better: wait a full window too.
        assert_eq!(
            lim.pause_after_rate_limit(t0 + Duration::from_secs(1)),
            t0 + Duration::from_secs(63)
        );
    }
}
