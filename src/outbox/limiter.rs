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
//! Pacing a burst ([`Limiter::next_round`], issue 15): the sliding log alone lets a burst of
//! notifications spend a whole window's budget in its first second, each message carrying the
//! few alerts that arrived during the previous send, and the rest wait for the next window.
//! So while a burst is arriving (at least two notifications arrived since the sender last
//! composed), a round that would start in a window that has already started spending waits
//! for the earlier of
//! - its paced slot: what is left of the window spread evenly over the rest of it
//!   (`last send + (window end − last send) / budget left`; 3.3 s at 20/60 s after one send), and
//! - the arrivals pausing for `window / 60` (1 s at 60 s),
//!
//! so the next round sees the whole burst and storm mode picks compact or the digest for it.
//! A stream of single notifications spaced wider than one send never piles up two, yet
//! spends a window just as fast; so once a window has spent a quarter of its budget, single
//! notifications wait for their paced slot too.
//! Not paced: the first sends of a window (a lone alert in a quiet minute goes at once), and
//! the messages of a round once composed (they are full; the round chose its layout for the
//! budget). Pacing only delays: the sliding log above still bounds every window.
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

    /// How long a burst's arrivals must pause before a paced round starts early.
    fn quiet(&self) -> Duration {
        self.window / 60
    }

    /// The earliest instant at which the next *round* (a snapshot composed into messages) may
    /// start. `burst` is when the newest notification arrived, given only when at least two
    /// arrived since the previous round was composed. See the module doc for the rule.
    pub fn next_round(&mut self, now: Instant, burst: Option<Instant>) -> Instant {
        let hard = self.next_allowed(now);
        let (Some(&first), Some(&last)) = (self.sends.front(), self.sends.back()) else {
            return hard; // nothing sent in the window: the first message goes at once
        };
        let left = self.max.saturating_sub(self.sends.len());
        if left == 0 {
            return hard; // spent: the sliding log decides
        }
        let window_end = first + self.span();
        let slot = last + window_end.saturating_duration_since(last) / left as u32;
        match burst {
            Some(newest) => hard.max(slot.min(newest + self.quiet())),
            // One notification at a time, in a window that has spent less than its quarter:
            // it goes at once.
            None if self.sends.len() < self.stream_after() => hard,
            // One at a time but fast (a stream spaced wider than one send): paced too, or it
            // spends the window on one-alert messages as surely as a burst does.
            None => hard.max(slot),
        }
    }

    /// Sends in a window after which even single notifications are paced: a quarter of the
    /// budget (5 of WeCom's 20), so a few alerts in a quiet minute still go at once.
    fn stream_after(&self) -> usize {
        self.max.div_ceil(4)
    }

    /// The earliest instant at which `n` sends (at most the budget) may start back to back:
    /// a digest goes only with room for its file message in the same window.
    pub fn free_at(&mut self, n: usize, now: Instant) -> Instant {
        self.prune(now);
        let n = n.clamp(1, self.max);
        let excess = (self.sends.len() + n).saturating_sub(self.max);
        match excess {
            0 => now,
            k => self.sends[k - 1] + self.span(),
        }
    }

    /// How many sends may start at `now` without waiting (what is left of the window).
    pub fn left_now(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.max.saturating_sub(self.sends.len())
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

    /// A sender driven by `next_round`: it wakes at each arrival or when the rule allows, takes
    /// everything arrived so far as one round, and each round's send takes `send`. Stops when
    /// every arrival is taken or after 300 s. Returns each round's start and size, and the time
    /// the last send finished.
    fn simulate(
        lim: &mut Limiter,
        arrivals: &[Instant],
        send: Duration,
    ) -> (Vec<(Instant, usize)>, Instant) {
        let t0 = arrivals[0];
        let (mut now, mut taken, mut rounds) = (t0, 0usize, Vec::new());
        while taken < arrivals.len() && now < t0 + Duration::from_secs(300) {
            // Arrivals the sender has seen by `now`, and whether it is a burst.
            let seen = arrivals.iter().take_while(|&&a| a <= now).count();
            if seen == taken {
                now = arrivals[taken];
                continue;
            }
            let burst = (seen - taken >= 2).then(|| arrivals[seen - 1]);
            let at = lim.next_round(now, burst);
            if at > now {
                // Waiting; a new arrival wakes the sender and the rule is asked again.
                now = arrivals.get(seen).map_or(at, |&next| next.min(at));
                continue;
            }
            rounds.push((now, seen - taken));
            taken = seen;
            now += send;
            lim.record(now);
        }
        (rounds, now)
    }

    /// The most of `times` (sorted) within any span shorter than `window`.
    fn most_in_any(times: &[Instant], window: Duration) -> usize {
        (0..times.len())
            .map(|i| times[i..].iter().take_while(|&&b| b - times[i] < window).count())
            .max()
            .unwrap_or(0)
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
            let in_window = most_in_any(&arrivals, Duration::from_secs(60));
            assert!(in_window <= 20, "latency {latency_ms}ms: {in_window} in a window");
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

    /// Issue 15: 1,000 notifications within one second at 20/60 s, each send taking 50 ms.
    /// The first goes at once; then at most one more round starts before the burst is over
    /// and quiet, so the round after it sees (nearly) everything, with budget left for it.
    #[test]
    fn a_burst_is_not_spent_on_near_empty_rounds() {
        let t0 = Instant::now();
        let mut lim = wecom();
        let arrivals: Vec<Instant> =
            (0..1000).map(|i| t0 + Duration::from_micros(i * 1000)).collect();
        let (rounds, now) = simulate(&mut lim, &arrivals, Duration::from_millis(50));
        assert_eq!(rounds.iter().map(|r| r.1).sum::<usize>(), 1000, "everything taken");
        assert_eq!(rounds[0], (t0, 1), "the first notification goes at once");
        let burst_end = arrivals[999];
        let early = rounds.iter().filter(|(at, _)| *at <= burst_end).count();
        assert!(early <= 2, "{early} rounds during the burst: {rounds:?}");
        // Everything arrived is taken within 2 s of the first, by 3 rounds at most.
        assert!(rounds.len() <= 3, "{rounds:?}");
        assert!(rounds.last().is_some_and(|(at, _)| *at - t0 < Duration::from_secs(2)));
        assert!(lim.recent(now).len() < 20, "budget left for the storm round");
    }

    /// A steady stream faster than the sends (one notification every 50 ms for a minute, each
    /// send taking 120 ms) is spread over the window instead of spending it in the first
    /// seconds; the window's budget is still used, and no window exceeds it.
    #[test]
    fn a_stream_is_paced_over_the_window() {
        let t0 = Instant::now();
        let mut lim = wecom();
        let arrivals: Vec<Instant> =
            (0..1200).map(|i| t0 + Duration::from_millis(i * 50)).collect();
        let (rounds, _) = simulate(&mut lim, &arrivals, Duration::from_millis(120));
        let sends: Vec<Instant> = rounds.iter().map(|r| r.0).collect();
        assert_eq!(rounds.iter().map(|r| r.1).sum::<usize>(), 1200);
        let within = |secs| sends.iter().filter(|&&s| s - t0 < Duration::from_secs(secs)).count();
        assert!(within(10) <= 5, "{} sends in the first 10 s: {sends:?}", within(10));
        assert!(within(62) >= 18, "the budget is used: {sends:?}");
        assert!(most_in_any(&sends, Duration::from_secs(60)) <= 20);
    }

    /// Without a burst nothing is paced: a lone notification goes as soon as the log allows.
    #[test]
    fn a_lone_notification_is_not_paced() {
        let t0 = Instant::now();
        let mut lim = wecom();
        lim.record(t0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(lim.next_round(t1, None), t1);
        // Two arriving: paced, but no later than the arrivals pausing for 1 s.
        assert_eq!(lim.next_round(t1, Some(t1)), t1 + Duration::from_secs(1));
        // ...or the paced slot, when that comes first: 62 s / 19 after the last send.
        let slot = t0 + Duration::from_secs(62) / 19;
        assert_eq!(lim.next_round(t1, Some(t1 + Duration::from_secs(5))), slot);
        // A spent window: the sliding log decides, as before.
        for _ in 1..20 {
            lim.record(t1);
        }
        assert_eq!(lim.next_round(t1, Some(t1)), t0 + Duration::from_secs(62));
    }

    /// A stream one notification at a time, spaced wider than a send (one every 50 ms, each
    /// send 10 ms): never two waiting, yet without pacing it spends the window's 20 messages
    /// in its first second. The first quarter goes at once, the rest is spread.
    #[test]
    fn a_one_at_a_time_stream_is_paced_after_a_quarter_of_the_budget() {
        let t0 = Instant::now();
        let mut lim = wecom();
        let arrivals: Vec<Instant> = (0..600).map(|i| t0 + Duration::from_millis(i * 50)).collect();
        let (rounds, _) = simulate(&mut lim, &arrivals, Duration::from_millis(10));
        let sends: Vec<Instant> = rounds.iter().map(|r| r.0).collect();
        assert_eq!(rounds.iter().map(|r| r.1).sum::<usize>(), 600);
        let within = |ms| sends.iter().filter(|&&s| s - t0 < Duration::from_millis(ms)).count();
        assert!(within(1000) <= 6, "{} sends in the first second: {sends:?}", within(1000));
        assert_eq!(within(300), 5, "the first quarter goes at once: {sends:?}");
        assert!(most_in_any(&sends, Duration::from_secs(60)) <= 20);
    }

    #[test]
    fn free_at_waits_for_room_for_n_sends() {
        let t0 = Instant::now();
        let mut lim = wecom();
        assert_eq!(lim.free_at(2, t0), t0);
        for i in 0..19 {
            lim.record(t0 + Duration::from_secs(i));
        }
        // One left: two need the oldest send to leave the window (60 s + 2 s margin).
        assert_eq!(lim.free_at(1, t0 + Duration::from_secs(20)), t0 + Duration::from_secs(20));
        assert_eq!(lim.free_at(2, t0 + Duration::from_secs(20)), t0 + Duration::from_secs(62));
        // Never more than the budget is asked for.
        let mut one = Limiter::new(Rate { messages: 1, window: Duration::from_secs(3) });
        one.record(t0);
        assert_eq!(one.free_at(2, t0), t0 + Duration::from_millis(3100));
    }

    #[test]
    fn left_now_counts_what_the_window_still_allows() {
        let t0 = Instant::now();
        let mut lim = wecom();
        assert_eq!(lim.left_now(t0), 20);
        for _ in 0..19 {
            lim.record(t0);
        }
        assert_eq!(lim.left_now(t0), 1);
        lim.record(t0);
        assert_eq!(lim.left_now(t0), 0);
        // The window (plus its margin) has passed: all of it again.
        assert_eq!(lim.left_now(t0 + Duration::from_secs(62)), 20);
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
