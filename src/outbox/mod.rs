//! The outbox between intake and WeCom: a bounded, optionally durable queue of rendered
//! messages for one robot, plus the sender thread that drains it within the rate budget.
//!
//! Intake calls [`Outbox::enqueue`] and answers Alertmanager from its result; it never waits
//! for WeCom. The sender ([`sender`]) takes the oldest pieces, packs as many as fit into one
//! message ([`split::merge_count`]), and reports back what became of them.
//!
//! Invariants:
//! - Bounded by messages and bytes; when full, enqueue fails and intake answers 503 so
//!   Alertmanager keeps the notification and retries: nothing is accepted and then dropped.
//! - With a spool, a notification is on disk before enqueue returns Ok.
//! - Pieces leave the queue in arrival order. Pieces being sent sit at the front and are
//!   never superseded mid-flight.
//! - A newer notification for the same group whose alerts cover every alert of an older,
//!   still unsent one supersedes it: a resolved never waits behind the firing it ends.
//!
//! Never parses Alertmanager JSON; knows alerts only as opaque identities.

pub mod dedup;
pub mod limiter;
pub mod sender;
pub mod split;
pub mod spool;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dedup::Dedup;
use spool::{Record, Spool};

/// A rendered notification ready to queue.
/// Pieces are strings, as the spool stores them. Most are markdown content; a piece that is a
/// whole JSON body to send as it is (a `text` message with @-mentions) starts with this
/// marker, which rendered markdown cannot contain (render drops control characters).
pub const RAW_BODY_MARKER: &str = "\u{1}raw-body\u{1}";

/// A piece holding a complete JSON body; never merged with others.
pub fn raw_body_piece(json_body: &str) -> String {
    format!("{RAW_BODY_MARKER}{json_body}")
}

/// The JSON body to POST for a batch's text: raw pieces as they are, content wrapped in the
/// robot's message type.
pub fn body_of(batch_text: &str, msgtype: crate::wecom::MsgType) -> String {
    match batch_text.strip_prefix(RAW_BODY_MARKER) {
        Some(raw) => raw.to_string(),
        None => msgtype.body(batch_text),
    }
}

pub struct NewItem {
    pub group_key: String,
    /// One per alert (fingerprint, or a label hash when the sender gave none).
    pub identities: Vec<String>,
    /// The key [`Outbox::seen`] recorded for this notification, taken back if the outbox
    /// refuses it so that Alertmanager's retry is not mistaken for a duplicate. `None`: not
    /// deduplicated (the notification holds a resolved alert).
    pub dedup_key: Option<u64>,
    pub alerts: usize,
    /// Messages within WeCom's limit, in order.
    pub parts: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued { id: u64, superseded: usize },
    Duplicate,
}

#[derive(Debug)]
pub enum EnqueueError {
    /// Over `--queue-max-messages` or `--queue-max-bytes`.
    Full,
    /// SIGTERM received: draining, not accepting.
    ShuttingDown,
    Disk(spool::Error),
}

impl fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            EnqueueError::Full => write!(f, "outbox is full"),
            EnqueueError::ShuttingDown => write!(f, "shutting down"),
            EnqueueError::Disk(e) => write!(f, "saving to spool: {e}"),
        }
    }
}

impl std::error::Error for EnqueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EnqueueError::Disk(e) => Some(e),
            _ => None,
        }
    }
}

pub struct Limits {
    pub max_messages: usize,
    pub max_bytes: u64,
    pub dedup_window: Duration,
}

struct Piece {
    item: u64,
    text: String,
}

struct ItemState {
    group_key: String,
    identities: Vec<String>,
    alerts: usize,
    /// Pieces of this item still queued (in flight included).
    remaining: usize,
    enqueued_at: Instant,
    created_unix: u64,
}

struct State {
    queue: VecDeque<Piece>,
    items: HashMap<u64, ItemState>,
    /// Bytes of queued pieces plus bytes reserved by enqueues still writing to disk.
    bytes: u64,
    /// Pieces reserved likewise.
    messages: usize,
    /// The first `in_flight` pieces of `queue` are being sent right now.
    in_flight: usize,
    dedup: Dedup,
    accepting: bool,
    stopped: bool,
    next_id: u64,
}

/// Snapshot for health, readiness and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub messages: usize,
    pub bytes: u64,
    pub notifications: usize,
    pub oldest_age: Duration,
    pub full: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Signalled on every change the sender or a drain may be waiting for.
    changed: Condvar,
    spool: Option<Spool>,
    limits: Limits,
}

/// What became of a batch the sender took.
pub enum Outcome {
    Delivered,
    /// Keep it at the front; the sender retries later.
    Retry,
    /// Drop it (logged and counted by the sender; kept in `failed/` when spooling).
    Failed,
}

/// Pieces taken for one message.
pub struct Batch {
    pub text: String,
    pub alerts: usize,
    pub notifications: usize,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Outbox {
    /// Builds the outbox, replaying what a spool recovered.
    pub fn new(limits: Limits, spool: Option<(Spool, Vec<Record>)>) -> Outbox {
        let mut state = State {
            queue: VecDeque::new(),
            items: HashMap::new(),
            bytes: 0,
            messages: 0,
            in_flight: 0,
            dedup: Dedup::new(limits.dedup_window),
            accepting: true,
            stopped: false,
            next_id: 1,
        };
        let spool = spool.map(|(spool, records)| {
            let now = Instant::now();
            for r in records {
                state.next_id = state.next_id.max(r.id + 1);
                // Recovered items are admitted even past the limits: they were acknowledged.
                insert(
                    &mut state,
                    r.id,
                    r.group_key,
                    r.identities,
                    r.alerts,
                    r.parts,
                    now,
                    r.created_unix,
                );
            }
            spool
        });
        Outbox { state: Mutex::new(state), changed: Condvar::new(), spool, limits }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue half-updated in a way that
        // matters more than stopping delivery would, so keep going with the data as it is.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True when `key` was seen within the dedup window; otherwise records it. Checked before
    /// rendering, so a duplicate costs a parse and a hash, nothing more.
    pub fn seen(&self, key: u64) -> bool {
        self.lock().dedup.is_duplicate(key, Instant::now())
    }

    pub fn enqueue(&self, item: NewItem) -> Result<Enqueued, EnqueueError> {
        let bytes: u64 = item.parts.iter().map(|p| p.len() as u64).sum();
        let now = Instant::now();
        let id = {
            let mut st = self.lock();
            if !st.accepting {
                if let Some(key) = item.dedup_key {
                    st.dedup.forget(key);
                }
                return Err(EnqueueError::ShuttingDown);
            }
            let over_messages = st.messages + item.parts.len() > self.limits.max_messages;
            let over_bytes = st.bytes + bytes > self.limits.max_bytes;
            // An empty outbox takes any one notification, however big, so it cannot wedge.
            if (over_messages || over_bytes) && st.messages > 0 {
                if let Some(key) = item.dedup_key {
                    st.dedup.forget(key);
                }
                return Err(EnqueueError::Full);
            }
            st.messages += item.parts.len();
            st.bytes += bytes;
            let id = st.next_id;
            st.next_id += 1;
            id
        };

        let created_unix = unix_now();
        if let Some(spool) = &self.spool {
            let record = Record {
                id,
                group_key: item.group_key.clone(),
                identities: item.identities.clone(),
                alerts: item.alerts,
                parts: item.parts.clone(),
                created_unix,
            };
            // Written outside the lock: an fsync must not stall the sender or other intakes.
            if let Err(e) = spool.write(&record) {
                let mut st = self.lock();
                st.messages -= item.parts.len();
                st.bytes -= bytes;
                if let Some(key) = item.dedup_key {
                    st.dedup.forget(key);
                }
                return Err(EnqueueError::Disk(e));
            }
        }

        let mut st = self.lock();
        // The reservation becomes the real thing inside `insert`.
        st.messages -= item.parts.len();
        st.bytes -= bytes;
        let superseded = self.supersede(&mut st, &item.group_key, &item.identities);
        insert(
            &mut st,
            id,
            item.group_key,
            item.identities,
            item.alerts,
            item.parts,
            now,
            created_unix,
        );
        drop(st);
        self.changed.notify_all();
        Ok(Enqueued::Queued { id, superseded })
    }

    /// Drops older unsent notifications of the same group whose alerts the new one covers.
    fn supersede(&self, st: &mut State, group_key: &str, identities: &[String]) -> usize {
        if group_key.is_empty() {
            return 0;
        }
        let in_flight_items: Vec<u64> =
            st.queue.iter().take(st.in_flight).map(|p| p.item).collect();
        let doomed: Vec<u64> = st
            .items
            .iter()
            .filter(|(id, it)| {
                it.group_key == group_key
                    && !in_flight_items.contains(id)
                    && it.identities.iter().all(|i| identities.contains(i))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &doomed {
            st.queue.retain(|p| p.item != *id);
            if let Some(it) = st.items.remove(id) {
                log::info!(
                    "notification superseded by a newer one for its group item={id} alerts={}",
                    it.alerts
                );
            }
            if let Some(spool) = &self.spool {
                if let Err(e) = spool.remove(*id) {
                    log::error!("{e}");
                }
            }
        }
        if !doomed.is_empty() {
            recount(st);
        }
        doomed.len()
    }

    /// Blocks until pieces are queued and `not_before` has passed, then takes as many front
    /// pieces as fit into one message of `limit` bytes. `None` once stopped.
    pub fn next_batch(&self, not_before: impl Fn() -> Instant, limit: usize) -> Option<Batch> {
        let mut st = self.lock();
        loop {
            if st.stopped {
                return None;
            }
            if !st.queue.is_empty() {
                let at = not_before();
                let now = Instant::now();
                if at <= now {
                    break;
                }
                st = self.wait(st, Some(at - now));
            } else {
                st = self.wait(st, None);
            }
        }
        let pieces = split::merge_count(st.queue.iter().map(|p| p.text.as_str()), limit);
        st.in_flight = pieces;
        let taken: Vec<&Piece> = st.queue.iter().take(pieces).collect();
        let text = split::merge(taken.iter().map(|p| p.text.as_str()));
        let mut items: Vec<u64> = taken.iter().map(|p| p.item).collect();
        items.dedup();
        let alerts = items.iter().filter_map(|id| st.items.get(id)).map(|it| it.alerts).sum();
        Some(Batch { text, alerts, notifications: items.len() })
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

    /// Settles the batch last returned by [`Outbox::next_batch`].
    pub fn complete(&self, outcome: Outcome) {
        let mut st = self.lock();
        let taken = std::mem::take(&mut st.in_flight);
        if matches!(outcome, Outcome::Retry) {
            return;
        }
        let mut touched: Vec<u64> = Vec::new();
        let mut failed_text: Vec<(u64, String)> = Vec::new();
        for _ in 0..taken {
            let Some(piece) = st.queue.pop_front() else {
                break;
            };
            if let Some(it) = st.items.get_mut(&piece.item) {
                it.remaining = it.remaining.saturating_sub(1);
            }
            if !touched.contains(&piece.item) {
                touched.push(piece.item);
            }
            if matches!(outcome, Outcome::Failed) {
                failed_text.push((piece.item, piece.text));
            }
        }
        for id in touched {
            let finished = st.items.get(&id).is_none_or(|it| it.remaining == 0);
            if finished {
                st.items.remove(&id);
            }
            let Some(spool) = &self.spool else { continue };
            let result = if finished {
                spool.remove(id)
            } else if let Some(it) = st.items.get(&id) {
                // Part of a long notification went out: keep only the rest on disk.
                let rest: Vec<String> =
                    st.queue.iter().filter(|p| p.item == id).map(|p| p.text.clone()).collect();
                spool.write(&Record {
                    id,
                    group_key: it.group_key.clone(),
                    identities: it.identities.clone(),
                    alerts: it.alerts,
                    parts: rest,
                    created_unix: it.created_unix,
                })
            } else {
                Ok(())
            };
            if let Err(e) = result {
                log::error!("{e}");
            }
        }
        if let Some(spool) = &self.spool {
            let now = unix_now();
            for (id, text) in failed_text {
                if let Err(e) = spool.keep_failed(id, now, &text) {
                    log::error!("{e}");
                }
            }
        }
        recount(&mut st);
        drop(st);
        self.changed.notify_all();
    }

    /// Stops intake (SIGTERM): enqueue answers `ShuttingDown` from now on.
    pub fn close_intake(&self) {
        self.lock().accepting = false;
        self.changed.notify_all();
    }

    /// Waits until the queue is empty or `deadline` passes; true when empty.
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

    /// Ends the sender loop after its current send.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    pub fn is_durable(&self) -> bool {
        self.spool.is_some()
    }

    pub fn stats(&self) -> Stats {
        let st = self.lock();
        let now = Instant::now();
        Stats {
            messages: st.queue.len(),
            bytes: st.bytes,
            notifications: st.items.len(),
            oldest_age: st
                .items
                .values()
                .map(|it| now.saturating_duration_since(it.enqueued_at))
                .max()
                .unwrap_or_default(),
            full: st.messages >= self.limits.max_messages || st.bytes >= self.limits.max_bytes,
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site per caller, each field named at the call
fn insert(
    st: &mut State,
    id: u64,
    group_key: String,
    identities: Vec<String>,
    alerts: usize,
    parts: Vec<String>,
    now: Instant,
    created_unix: u64,
) {
    let remaining = parts.len();
    for text in parts {
        st.bytes += text.len() as u64;
        st.messages += 1;
        st.queue.push_back(Piece { item: id, text });
    }
    if remaining > 0 {
        st.items.insert(
            id,
            ItemState { group_key, identities, alerts, remaining, enqueued_at: now, created_unix },
        );
    }
}

/// Recomputes the byte and message totals from the queue (after removals).
fn recount(st: &mut State) {
    st.bytes = st.queue.iter().map(|p| p.text.len() as u64).sum();
    st.messages = st.queue.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_messages: usize) -> Limits {
        Limits { max_messages, max_bytes: 1 << 20, dedup_window: Duration::from_secs(300) }
    }

    fn item(group: &str, ids: &[&str], dedup: Option<u64>, text: &str) -> NewItem {
        NewItem {
            group_key: group.into(),
            identities: ids.iter().map(|s| s.to_string()).collect(),
            dedup_key: dedup,
            alerts: ids.len(),
            parts: vec![text.into()],
        }
    }

    fn take(o: &Outbox) -> Option<String> {
        let b = o.next_batch(Instant::now, 1)?;
        o.complete(Outcome::Delivered);
        Some(b.text)
    }

    #[test]
    fn full_outbox_refuses_and_dedup_forgets() {
        let o = Outbox::new(limits(2), None);
        let offer = |group: &str, id: &str, key: u64| {
            if o.seen(key) {
                return Ok(Enqueued::Duplicate);
            }
            o.enqueue(item(group, &[id], Some(key), id))
        };
        assert!(matches!(offer("g1", "1", 1), Ok(Enqueued::Queued { .. })));
        assert!(matches!(offer("g2", "2", 2), Ok(Enqueued::Queued { .. })));
        assert!(matches!(offer("g3", "3", 3), Err(EnqueueError::Full)));
        assert_eq!(offer("g1", "1", 1).ok(), Some(Enqueued::Duplicate));
        assert_eq!(take(&o).as_deref(), Some("1"));
        // Key 3 was forgotten when refused, so Alertmanager's retry gets in.
        assert!(matches!(offer("g3", "3", 3), Ok(Enqueued::Queued { .. })));
    }

    #[test]
    fn resolved_supersedes_unsent_firing() {
        let o = Outbox::new(limits(10), None);
        let _ = o.enqueue(item("other", &["x"], None, "other"));
        let _ = o.enqueue(item("g", &["a", "b"], None, "firing a b"));
        let r = o.enqueue(item("g", &["a", "b", "c"], None, "resolved a b, firing c"));
        assert!(matches!(r, Ok(Enqueued::Queued { superseded: 1, .. })));
        assert_eq!(take(&o).as_deref(), Some("other"));
        assert_eq!(take(&o).as_deref(), Some("resolved a b, firing c"));
        assert_eq!(o.stats().messages, 0);
    }

    #[test]
    fn in_flight_is_never_superseded_and_retry_keeps_order() {
        let o = Outbox::new(limits(10), None);
        let _ = o.enqueue(item("g", &["a"], None, "first"));
        let batch = o.next_batch(Instant::now, 5).map(|b| b.text);
        assert_eq!(batch.as_deref(), Some("first"));
        let r = o.enqueue(item("g", &["a"], None, "second"));
        assert!(matches!(r, Ok(Enqueued::Queued { superseded: 0, .. })));
        o.complete(Outcome::Retry);
        assert_eq!(take(&o).as_deref(), Some("first"));
        assert_eq!(take(&o).as_deref(), Some("second"));
    }

    #[test]
    fn closed_intake_refuses() {
        let o = Outbox::new(limits(10), None);
        o.close_intake();
        assert!(matches!(o.enqueue(item("g", &["a"], None, "x")), Err(EnqueueError::ShuttingDown)));
        assert!(o.drain(Instant::now()));
    }
}
