//! The outbox between intake and WeCom, one per robot: the alert state the robot's group has not
//! yet been told ([`queue`]), optionally durable ([`spool`]), drained by the sender thread
//! ([`sender`]) which composes messages at send time ([`compose`]); a storm-mode digest in
//! flight is recorded next to the spool ([`inflight`]).
//!
//! Intake calls [`Outbox::enqueue`] and answers Alertmanager from its result; it never waits
//! for WeCom, only (with a spool) for the fsync covering its notification.
//!
//! Invariants:
//! - Bounded by estimated messages and bytes, checked for every notification: when full,
//!   enqueue fails and intake answers 503 so Alertmanager keeps the notification and retries;
//!   one that could never fit is refused as too large (413). Nothing accepted is dropped.
//! - With a spool, a notification is on disk before enqueue returns Ok; disk work happens on
//!   the spool's writer thread, never under this lock.
//! - The lock guards bookkeeping only: `queue` is linear in one notification's alerts.
//!
//! Never parses Alertmanager JSON except to replay its own spool.

pub mod compose;
pub mod dedup;
pub mod inflight;
pub mod limiter;
pub mod queue;
pub mod sender;
pub mod split;
pub mod spool;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::alertmanager::Payload;
use dedup::Dedup;
use queue::{Admit, Cover, DiskAction, Outcome, Queue, QueueLimits, Refusal, Settled, Snapshot};
use spool::{Record, Spool};

#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued {
        id: u64,
        superseded: usize,
    },
    /// Nothing in it the group has not been told or is not about to be told.
    Duplicate,
    /// No alerts at all (`{"alerts":[]}`): accepted, nothing to send.
    Empty,
}

#[derive(Debug)]
pub enum EnqueueError {
    /// Over `--queue-max-messages` or `--queue-max-bytes` right now.
    Full,
    /// Could not fit even into an empty outbox.
    TooLarge,
    /// SIGTERM received: draining, not accepting.
    ShuttingDown,
    /// The spool could not take it (the text names no path).
    Disk(String),
}

impl fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            EnqueueError::Full => write!(f, "outbox is full"),
            EnqueueError::TooLarge => write!(
                f,
                "notification is larger than the outbox (--queue-max-messages, --queue-max-bytes)"
            ),
            EnqueueError::ShuttingDown => write!(f, "shutting down"),
            EnqueueError::Disk(e) => write!(f, "saving to spool: {e}"),
        }
    }
}

impl std::error::Error for EnqueueError {}

pub struct Limits {
    pub max_messages: usize,
    pub max_bytes: u64,
    pub dedup_window: Duration,
    /// `--dedup-max-entries`: alert states remembered as told.
    pub max_told: usize,
}

struct State {
    queue: Queue,
    dedup: Dedup,
    accepting: bool,
    stopped: bool,
    next_id: u64,
    /// Notifications that changed something since the sender last took a snapshot, and when
    /// the newest arrived: the limiter paces rounds while a burst arrives (issue 15).
    arrived: usize,
    newest_arrival: Option<Instant>,
}

/// Snapshot for health, readiness and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub messages: usize,
    pub bytes: u64,
    pub alerts: usize,
    pub oldest_age: Duration,
    pub full: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Signalled on every change the sender or a drain may be waiting for.
    changed: Condvar,
    spool: Option<Spool>,
    /// False while the sender thread is down (panicked, waiting to restart).
    sender_alive: AtomicBool,
}

/// How many groups the sender looks at for one message (enough to fill one by packing).
pub const SNAPSHOT_GROUPS: usize = 64;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Outbox {
    /// Builds the outbox, replaying what a spool recovered (admitted past the limits: it was
    /// acknowledged). Returns it with the number of alerts pending afterwards.
    pub fn new(limits: Limits, spool: Option<(Spool, Vec<Record>)>) -> Outbox {
        let queue = Queue::new(QueueLimits {
            max_messages: limits.max_messages,
            max_bytes: limits.max_bytes,
            dedup_window: limits.dedup_window,
            message_bytes: crate::wecom::MARKDOWN_MAX_BYTES,
            max_told: limits.max_told,
        });
        let mut state = State {
            queue,
            dedup: Dedup::new(limits.dedup_window),
            accepting: true,
            stopped: false,
            next_id: 1,
            arrived: 0,
            newest_arrival: None,
        };
        let spool = spool.map(|(spool, records)| {
            let now = Instant::now();
            for r in records {
                state.next_id = state.next_id.max(r.id() + 1);
                match r {
                    Record::Body { id, body, .. } => match crate::alertmanager::parse(&body) {
                        Ok(payload) => {
                            let applied = state.queue.insert(id, payload, now);
                            perform(Some(&spool), applied.actions);
                        }
                        Err(e) => {
                            log::error!("spool record unreadable, kept on disk record={id} error=\"{e}\"");
                        }
                    },
                    Record::Rendered { id, parts, .. } => {
                        if parts.is_empty() {
                            spool.remove(id);
                        }
                        for text in parts {
                            state.queue.insert_legacy(id, text, now);
                        }
                    }
                }
            }
            // Released records still on disk are not replayed but keep their IDs.
            state.next_id = state.next_id.max(spool.first_free_id());
            spool
        });
        Outbox {
            state: Mutex::new(state),
            changed: Condvar::new(),
            spool,
            sender_alive: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Bookkeeping stays consistent within each call; keep going after a panic elsewhere.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True when `key` was seen within the dedup window; otherwise records it. Checked before
    /// anything else, so a repeated notification costs a parse and a hash.
    pub fn seen(&self, key: u64) -> bool {
        self.lock().dedup.is_duplicate(key, Instant::now())
    }

    /// Queues a parsed notification; `body` is what the spool keeps. Answers only once the
    /// notification is durable (with a spool).
    pub fn enqueue(
        &self,
        payload: Payload,
        body: &[u8],
        dedup_key: Option<u64>,
    ) -> Result<Enqueued, EnqueueError> {
        let now = Instant::now();
        let refuse = |st: &mut State, e: EnqueueError| {
            if let Some(key) = dedup_key {
                st.dedup.forget(key);
            }
            Err(e)
        };
        let (reservation, id) = {
            let mut st = self.lock();
            if !st.accepting {
                return refuse(&mut st, EnqueueError::ShuttingDown);
            }
            let reservation = match st.queue.admit(&payload, now) {
                Ok(Admit::Room(r)) => r,
                Ok(Admit::Nothing) => return Ok(Enqueued::Duplicate),
                Err(Refusal::Full) => return refuse(&mut st, EnqueueError::Full),
                Err(Refusal::TooLarge) => return refuse(&mut st, EnqueueError::TooLarge),
            };
            let id = st.next_id;
            st.next_id += 1;
            (reservation, id)
        };
        if let Some(spool) = &self.spool {
            if let Err(e) = spool.commit(id, unix_now(), body) {
                let mut st = self.lock();
                st.queue.cancel(reservation);
                return refuse(&mut st, EnqueueError::Disk(e));
            }
        }
        let applied = {
            let mut st = self.lock();
            let now = Instant::now();
            let applied = st.queue.apply(reservation, id, payload, now);
            if applied.changed > 0 {
                st.arrived += 1;
                st.newest_arrival = Some(now);
            }
            applied
        };
        perform(self.spool.as_ref(), applied.actions);
        self.changed.notify_all();
        if applied.changed == 0 {
            return Ok(Enqueued::Duplicate);
        }
        Ok(Enqueued::Queued { id, superseded: applied.superseded })
    }

    /// Blocks until something is pending and `not_before` has passed, then returns what to
    /// compose. `None` once stopped. `not_before` is given when the newest notification
    /// arrived if at least two arrived since the previous snapshot (a burst), and is asked
    /// again at every arrival.
    pub fn next(&self, not_before: impl Fn(Option<Instant>) -> Instant) -> Option<Snapshot> {
        let mut st = self.lock();
        loop {
            if st.stopped {
                return None;
            }
            if !st.queue.is_empty() {
                let burst = if st.arrived >= 2 { st.newest_arrival } else { None };
                let at = not_before(burst);
                let now = Instant::now();
                if at <= now {
                    break;
                }
                st = self.wait(st, Some(at - now));
            } else {
                st = self.wait(st, None);
            }
        }
        st.arrived = 0;
        st.queue.next(SNAPSHOT_GROUPS)
    }

    /// Waits until `at`; false when stopped meanwhile.
    pub fn pause_until(&self, at: Instant) -> bool {
        let mut st = self.lock();
        loop {
            if st.stopped {
                return false;
            }
            let now = Instant::now();
            if now >= at {
                return true;
            }
            st = self.wait(st, Some(at - now));
        }
    }

    fn wait<'a>(
        &self,
        st: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        match timeout {
            Some(t) => match self.changed.wait_timeout(st, t) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            },
            None => self.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Settles one sent message and performs the disk work it implies (off the lock).
    pub fn settle(&self, cover: &Cover, outcome: Outcome) -> Settled {
        let mut settled = self.lock().queue.settle(cover, outcome, Instant::now());
        perform(self.spool.as_ref(), std::mem::take(&mut settled.actions));
        self.changed.notify_all();
        settled
    }

    /// Keeps a refused message in `failed/` (with a spool).
    pub fn keep_failed(&self, text: String) {
        if let Some(spool) = &self.spool {
            spool.keep_failed(text);
        }
    }

    /// Stops intake (SIGTERM, robot removed): enqueue answers `ShuttingDown` from now on.
    pub fn close_intake(&self) {
        self.lock().accepting = false;
        self.changed.notify_all();
    }

    /// Takes notifications again (a removed robot added back).
    pub fn reopen_intake(&self) {
        self.lock().accepting = true;
    }

    /// Waits until nothing is pending or `deadline` passes; true when empty.
    pub fn drain(&self, deadline: Instant) -> bool {
        let mut st = self.lock();
        loop {
            if st.queue.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.wait(st, Some(deadline - now));
        }
    }

    /// Ends the sender loop after its current send, then lets the spool finish its work.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    /// Flushes the spool's pending deletes and stops its writer (at exit).
    pub fn close_spool(&self) {
        if let Some(spool) = &self.spool {
            spool.close();
        }
    }

    pub fn is_durable(&self) -> bool {
        self.spool.is_some()
    }

    /// False while the spool cannot take writes.
    pub fn spool_healthy(&self) -> bool {
        self.spool.as_ref().is_none_or(Spool::healthy)
    }

    pub fn set_sender_alive(&self, alive: bool) {
        self.sender_alive.store(alive, Ordering::Relaxed);
    }

    pub fn sender_alive(&self) -> bool {
        self.sender_alive.load(Ordering::Relaxed)
    }

    /// Everything pending, by group (storm mode's digest); see `Queue::snapshot_all`.
    pub fn snapshot_all(&self) -> Vec<queue::GroupSnap> {
        self.lock().queue.snapshot_all()
    }

    pub fn stats(&self) -> Stats {
        let s = self.lock().queue.stats(Instant::now());
        Stats {
            messages: s.messages,
            bytes: s.bytes,
            alerts: s.alerts,
            oldest_age: s.oldest_age,
            full: s.full,
        }
    }
}

fn perform(spool: Option<&Spool>, actions: Vec<DiskAction>) {
    let Some(spool) = spool else { return };
    for action in actions {
        match action {
            DiskAction::Remove(id) => spool.remove(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::{Alert, Pairs, Status};
    use crate::time::Timestamp;
    use std::sync::Arc;

    fn payload(group: &str, fp: &str) -> Payload {
        let alert = Alert {
            status: Status::Firing,
            labels: Pairs(vec![("alertname".into(), "A".into())]),
            annotations: Pairs::default(),
            starts_at: Some(Timestamp { unix_seconds: 1, nanos: 0 }),
            ends_at: None,
            generator_url: None,
            fingerprint: fp.into(),
        };
        Payload::for_test(group, vec![alert])
    }

    /// Many enqueuers against a sending thread: the limit holds at every moment, no count
    /// underflows (a debug build would panic), and everything accepted is sent exactly once.
    #[test]
    fn many_enqueuers_against_a_sender() {
        let outbox = Arc::new(Outbox::new(
            Limits {
                max_messages: 50,
                max_bytes: 1 << 30,
                dedup_window: Duration::from_secs(60),
                max_told: 100_000,
            },
            None,
        ));
        let sent = Arc::new(Mutex::new(Vec::<String>::new()));
        let sender = {
            let (o, sent) = (Arc::clone(&outbox), Arc::clone(&sent));
            std::thread::spawn(move || {
                while let Some(snap) = o.next(|_| Instant::now()) {
                    assert!(o.stats().messages <= 50);
                    if let Snapshot::Groups(groups) = snap {
                        let g = &groups[0];
                        let cover = Cover {
                            legacy: None,
                            alerts: g
                                .versions
                                .iter()
                                .map(|(id, v)| (g.key.clone(), id.clone(), *v))
                                .collect(),
                        };
                        o.settle(&cover, Outcome::Delivered);
                        sent.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(g.versions.iter().map(|(id, _)| id.clone()));
                    }
                }
            })
        };
        let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (o, accepted) = (Arc::clone(&outbox), Arc::clone(&accepted));
                std::thread::spawn(move || {
                    for i in 0..300 {
                        let fp = format!("w{w}-{i}");
                        match o.enqueue(payload(&format!("g{w}-{i}"), &fp), b"{}", None) {
                            Ok(Enqueued::Queued { .. }) => {
                                accepted.lock().unwrap_or_else(|p| p.into_inner()).push(fp)
                            }
                            Ok(other) => panic!("not queued: {other:?}"),
                            Err(EnqueueError::Full) => {}
                            Err(e) => panic!("{e}"),
                        }
                        assert!(o.stats().messages <= 50);
                    }
                })
            })
            .collect();
        for w in workers {
            assert!(w.join().is_ok());
        }
        assert!(outbox.drain(Instant::now() + Duration::from_secs(30)));
        outbox.stop();
        assert!(sender.join().is_ok());
        let mut a = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut s = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        a.sort();
        s.sort();
        assert!(!a.is_empty());
        assert_eq!(a, s);
        let st = outbox.stats();
        assert_eq!((st.messages, st.bytes, st.alerts), (0, 0, 0));
    }

    #[test]
    fn closed_intake_refuses_and_dedup_forgets() {
        let o = Outbox::new(
            Limits {
                max_messages: 10,
                max_bytes: 1 << 20,
                dedup_window: Duration::from_secs(60),
                max_told: 100_000,
            },
            None,
        );
        assert!(!o.seen(7));
        o.close_intake();
        assert!(matches!(
            o.enqueue(payload("g", "a"), b"{}", Some(7)),
            Err(EnqueueError::ShuttingDown)
        ));
        assert!(!o.seen(7), "a refused notification's retry is not a duplicate");
        assert!(o.drain(Instant::now()));
    }
}
