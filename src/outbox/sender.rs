//! The sender thread: the only code that calls [`crate::wecom`].
//!
//! It takes the oldest queued pieces once the limiter and any backoff allow, sends them as one
//! message and settles the batch by the error's class: delivered → dropped from the outbox;
//! `Retry` → exponential backoff with jitter, same batch again; `RateLimited` (45009) → this
//! robot pauses until its window has passed; `Permanent` → logged at error with a hint,
//! counted, dropped. Every attempt spends budget, as WeCom counts failed calls too.
//!
//! A failure is logged when it starts or changes, not on every retry.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics;
use crate::outbox::limiter::Limiter;
use crate::outbox::{self, Outbox, Outcome};
use crate::values::Rate;
use crate::wecom::{self, Class, MsgType, SendError, WebhookUrl};

/// Where messages go: WeCom, or stdout for `--dry-run`.
#[derive(Clone)]
pub enum Target {
    WeCom { client: wecom::Client, url: WebhookUrl },
    Stdout,
}

pub struct Settings {
    pub robot: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// Where a robot sends and how fast: shared with the config reload, which swaps it while the
/// sender runs. Read once per message.
pub type Live = Arc<Mutex<(Target, Rate, MsgType)>>;

/// Exponential backoff with "equal jitter": half fixed, half random, so a fleet of relays
/// that failed together does not retry together.
struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt += 1;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = exp / 2;
        let half_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng % half_nanos.saturating_add(1))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Spawns the sender as an OS thread (attohttpc blocks; coroutines must not).
pub fn spawn(
    outbox: Arc<Outbox>,
    live: Live,
    settings: Settings,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sender-{}", settings.robot))
        .spawn(move || run(&outbox, &live, &settings))
}

fn current(live: &Live) -> (Target, Rate, MsgType) {
    live.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn run(outbox: &Outbox, live: &Live, settings: &Settings) {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1);
    let mut backoff = Backoff {
        initial: settings.retry_initial,
        max: settings.retry_max,
        attempt: 0,
        rng: (u64::from(seed) << 32 | u64::from(std::process::id())) | 1,
    };
    let (_, mut rate, _) = current(live);
    let limiter = RefCell::new(Limiter::new(rate));
    let mut hold_until = Instant::now();
    let mut failing: Option<String> = None;
    let robot = settings.robot.as_str();

    loop {
        let not_before = || {
            let now = Instant::now();
            limiter.borrow_mut().next_allowed(now).max(hold_until)
        };
        let limit = current(live).2.limit();
        let Some(batch) = outbox.next_batch(not_before, limit) else {
            return;
        };
        // Read again: a reload may have changed the key or the budget while we waited.
        let (target, new_rate, msgtype) = current(live);
        if new_rate != rate {
            rate = new_rate;
            limiter.borrow_mut().set_rate(rate);
        }
        let target = &target;
        let (result, latency) = match target {
            Target::WeCom { client, url } => {
                client.send(url, &outbox::body_of(&batch.text, msgtype))
            }
            Target::Stdout => {
                println!("{}", outbox::body_of(&batch.text, msgtype));
                (Ok(()), Duration::ZERO)
            }
        };
        let finished = Instant::now();
        if matches!(target, Target::WeCom { .. }) {
            limiter.borrow_mut().record(finished);
        }
        metrics::observe_send_latency(robot, latency);
        let latency_ms = latency.as_millis();
        let bytes = batch.text.len();
        match result {
            Ok(()) => {
                metrics::inc_sent(robot);
                if let Some(previous) = failing.take() {
                    log::info!("delivery recovered robot={robot} after=\"{previous}\"");
                }
                log::info!(
                    "message sent robot={robot} notifications={} alerts={} bytes={bytes} errcode=0 latency_ms={latency_ms}",
                    batch.notifications,
                    batch.alerts
                );
                backoff.reset();
                outbox.complete(Outcome::Delivered);
            }
            Err(e) => {
                let class = e.class();
                metrics::inc_failed(robot, &e);
                match class {
                    Class::Retry | Class::RateLimited => {
                        metrics::inc_retry(robot);
                        let wait = if class == Class::RateLimited {
                            let until = limiter.borrow_mut().pause_after_rate_limit(finished);
                            until.saturating_duration_since(finished)
                        } else {
                            backoff.next()
                        };
                        hold_until = finished + wait;
                        let summary = summarize(&e);
                        if failing.as_deref() != Some(summary.as_str()) {
                            log::warn!(
                                "send failed, will retry robot={robot} class={} {} retry_in_ms={} latency_ms={latency_ms}",
                                class.as_str(),
                                summary,
                                wait.as_millis()
                            );
                            failing = Some(summary);
                        } else {
                            log::debug!(
                                "send failed again robot={robot} retry_in_ms={}",
                                wait.as_millis()
                            );
                        }
                        outbox.complete(Outcome::Retry);
                    }
                    Class::Permanent => {
                        log::error!(
                            "message dropped robot={robot} notifications={} alerts={} bytes={bytes} {}",
                            batch.notifications,
                            batch.alerts,
                            summarize(&e)
                        );
                        failing = None;
                        backoff.reset();
                        outbox.complete(Outcome::Failed);
                    }
                }
            }
        }
    }
}

/// `errcode=N errmsg="…" hint="…"` or `error="…"`, for one log line.
fn summarize(e: &SendError) -> String {
    match e {
        SendError::Api { errcode, errmsg } => {
            let mut s = format!("errcode={errcode} errmsg={errmsg:?}");
            if let Some(h) = wecom::hint(*errcode) {
                s.push_str(&format!(" hint={h:?}"));
            }
            s
        }
        other => format!("error={:?}", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempt: 0,
            rng: 12345,
        };
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        for (i, w) in waits.iter().enumerate() {
            let exp = Duration::from_secs(1 << i.min(6)).min(Duration::from_secs(60));
            assert!(*w >= exp / 2 && *w <= exp, "attempt {i}: {w:?} vs {exp:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_secs(1));
    }
}
