//! The outbox's bookkeeping as a pure state machine: what each robot's group has not yet been
//! told, per alert, and what it was told last. No I/O, no clock (the caller passes `now`), no
//! threads: [`super::Outbox`] holds it under one lock and performs the [`DiskAction`]s it
//! returns; the sender composes messages from its [`Snapshot`]s outside the lock.
//!
//! # State
//! - Pending alerts, per Alertmanager group (group key), keyed by identity (fingerprint, else a
//!   label hash), each with the state Alertmanager last reported and the spool record that
//!   holds it. A group keeps the metadata of its latest notification (group and common labels,
//!   `externalURL`, receiver, `truncatedAlerts`). Groups leave in the order their oldest pending
//!   alert arrived.
//! - Legacy pieces: messages rendered by 1.0.0 and recovered from its spool, sent as they are
//!   before anything else (they are older).
//! - "Told": per (group, identity), the last state delivered, for `--dedup-window`, so a later
//!   copy of a state the group already saw (an HA peer, a retry) is not sent again.
//!
//! # Invariants
//! - Which state is newer is decided by Alertmanager's times, never by arrival order: a firing
//!   whose `startsAt` is before a resolved's `endsAt` is stale and never follows it.
//! - A spool record is removed only when no pending alert or legacy piece refers to it.
//! - Limits are checked on every notification, including the first: the estimate of what is
//!   pending plus what concurrent enqueues reserved, under the same lock. A notification that
//!   could never fit even alone is refused as too large; one that does not fit now, as full.
//! - Everything is linear in the size of the notification: no scan over the other groups.
//!
//! Designed so a digest of everything pending can be composed at send time (storm mode):
//! [`Queue::next`] can hand out any number of groups.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::alertmanager::{Alert, Pairs, Payload, Status};
use crate::time::Timestamp;

pub type RecordId = u64;

/// After the first group, a snapshot takes groups only up to this many alerts in all: one
/// message holds a few dozen at most, so more would only be copied to be thrown away.
const SNAPSHOT_MAX_ALERTS: usize = 256;

/// Rendered bytes an alert costs beyond its labels and annotations (field names, markup).
const ALERT_OVERHEAD_BYTES: u64 = 200;

#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: u64,
    pub dedup_window: Duration,
    /// Bytes per message, for the message estimate (WeCom's markdown limit).
    pub message_bytes: usize,
    /// At most this many "told" entries are remembered (`--dedup-max-entries`); the oldest go
    /// first. One entry is a few dozen bytes, so this bounds the memory whatever the alert rate.
    pub max_told: usize,
}

/// An alert's identity: its fingerprint, or a hash of its labels when the sender gave none.
pub fn identity(alert: &Alert) -> String {
    if !alert.fingerprint.is_empty() {
        return alert.fingerprint.clone();
    }
    let mut h = DefaultHasher::new();
    alert.labels.0.hash(&mut h);
    format!("labels:{:016x}", h.finish())
}

/// What an alert's state says, for ordering and dedup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Episode {
    status: Status,
    starts_at: Option<Timestamp>,
    ends_at: Option<Timestamp>,
}

impl Episode {
    fn of(a: &Alert) -> Episode {
        Episode { status: a.status, starts_at: a.starts_at, ends_at: a.ends_at }
    }

    /// Same state as far as the group is concerned: same status of the same episode.
    fn same(&self, other: &Episode) -> bool {
        self.status == other.status && self.starts_at == other.starts_at
    }

    /// True when `self` may replace `old`: it is a later episode, or the same episode moved on
    /// (firing → resolved). Missing times fall back to arrival order.
    fn supersedes(&self, old: &Episode) -> bool {
        match (self.status, old.status) {
            // A new episode only once the old one ended.
            (Status::Firing, Status::Resolved) => match (self.starts_at, old.ends_at) {
                (Some(s), Some(e)) => s >= e,
                _ => match (self.starts_at, old.starts_at) {
                    (Some(s), Some(o)) => s > o,
                    _ => true,
                },
            },
            // Resolving this episode or a later one, never an earlier one.
            (Status::Resolved, Status::Firing) | (Status::Firing, Status::Firing) => {
                match (self.starts_at, old.starts_at) {
                    (Some(s), Some(o)) => s >= o,
                    _ => true,
                }
            }
            (Status::Resolved, Status::Resolved) => match (self.starts_at, old.starts_at) {
                (Some(s), Some(o)) if s != o => s > o,
                _ => match (self.ends_at, old.ends_at) {
                    (Some(s), Some(o)) => s >= o,
                    _ => true,
                },
            },
        }
    }
}

/// A group's metadata, from its latest notification.
#[derive(Clone, Debug)]
pub struct Meta {
    pub receiver: String,
    pub group_labels: Pairs,
    pub common_labels: Pairs,
    pub common_annotations: Pairs,
    pub external_url: Option<String>,
    pub truncated_alerts: u64,
}

impl Meta {
    fn of(p: &Payload) -> Meta {
        Meta {
            receiver: p.receiver.clone(),
            group_labels: p.group_labels.clone(),
            common_labels: p.common_labels.clone(),
            common_annotations: p.common_annotations.clone(),
            external_url: p.external_url.clone(),
            truncated_alerts: p.truncated_alerts,
        }
    }
}

struct Pending {
    alert: Alert,
    version: u64,
    record: RecordId,
    bytes: u64,
    /// Refused once as part of a bigger message: now sent alone.
    solo: bool,
    since: Instant,
    /// When this identity came into the group (kept by newer states): the order in the
    /// message. Derived per pending alert, so an alert delivered and back is listed once.
    arrived: u64,
    /// `truncatedAlerts` of the notification that brought this state: a changed count is
    /// news (more, or fewer, alerts than the message can list).
    truncated: u64,
}

struct Group {
    meta: Meta,
    alerts: HashMap<String, Pending>,
    /// Position in the send order (`Queue::order`).
    seq: u64,
    bytes: u64,
    /// Refused once when packed with other groups: now sent on its own.
    alone: bool,
}

struct LegacyPiece {
    record: RecordId,
    text: String,
    since: Instant,
}

/// A concurrent enqueue's claim on room, taken back by [`Queue::apply`] or [`Queue::cancel`].
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    bytes: u64,
    messages: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Room reserved; write the record, then [`Queue::apply`].
    Room(Reservation),
    /// Every alert is already pending in this state, or was told within the window.
    Nothing,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Would not fit even into an empty outbox: retrying will not help.
    TooLarge,
    /// Does not fit now: Alertmanager should retry later.
    Full,
}

/// What the caller must do on disk.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskAction {
    /// No pending alert refers to this record any more.
    Remove(RecordId),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Alerts now pending that were not (or were pending in an older state).
    pub changed: usize,
    /// Pending alerts replaced by a newer state.
    pub superseded: usize,
    pub actions: Vec<DiskAction>,
}

/// One group as it should be told now, for composing.
#[derive(Clone, Debug)]
pub struct GroupSnap {
    pub key: String,
    /// Firing alerts first, then resolved, each in arrival order (the order render keeps).
    pub payload: Payload,
    /// Aligned with `payload.alerts`.
    pub versions: Vec<(String, u64)>,
    pub solo: Vec<bool>,
    pub alone: bool,
    /// When each alert's pending state was accepted (for the delivery delay).
    pub since: Vec<Instant>,
}

#[derive(Clone, Debug)]
pub enum Snapshot {
    /// A message rendered by 1.0.0.
    Legacy {
        record: RecordId,
        text: String,
    },
    Groups(Vec<GroupSnap>),
}

/// What one message covered, to settle it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cover {
    pub legacy: Option<RecordId>,
    /// (group key, identity, version).
    pub alerts: Vec<(String, String, u64)>,
}

impl Cover {
    pub fn groups(&self) -> usize {
        let mut keys: Vec<&str> = self.alerts.iter().map(|(g, _, _)| g.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Keep everything as it is; the sender tries again.
    Retry,
    /// WeCom refused it for good.
    Refused,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub actions: Vec<DiskAction>,
    /// Alerts (or legacy pieces) given up for good: only a one-alert message is given up.
    pub given_up: usize,
    /// The refused message was split up to be retried in smaller pieces.
    pub isolated: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Estimated messages still to send.
    pub messages: usize,
    /// Estimated bytes still to send.
    pub bytes: u64,
    pub alerts: usize,
    pub groups: usize,
    pub oldest_age: Duration,
    pub full: bool,
}

pub struct Queue {
    limits: QueueLimits,
    groups: HashMap<String, Group>,
    order: BTreeMap<u64, String>,
    next_seq: u64,
    next_version: u64,
    legacy: VecDeque<LegacyPiece>,
    /// Pending alerts and legacy pieces referring to each record.
    records: HashMap<RecordId, usize>,
    told: HashMap<u64, (Episode, u64, Instant)>,
    told_order: VecDeque<(Instant, u64)>,
    // Derived totals, kept in step by every change under the caller's one lock.
    bytes: u64,
    messages: usize,
    alerts: usize,
    reserved_bytes: u64,
    reserved_messages: usize,
}

fn pairs_bytes(p: &Pairs) -> u64 {
    p.0.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

fn alert_bytes(a: &Alert) -> u64 {
    pairs_bytes(&a.labels)
        + pairs_bytes(&a.annotations)
        + a.generator_url.as_ref().map_or(0, |u| u.len() as u64)
        + ALERT_OVERHEAD_BYTES
}

/// Estimated messages for a group of `bytes`: at least one.
fn messages_for(bytes: u64, message_bytes: usize) -> usize {
    let per = message_bytes.max(1) as u64;
    usize::try_from(bytes.div_ceil(per)).unwrap_or(usize::MAX).max(1)
}

fn told_key(group: &str, identity: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (group, identity).hash(&mut h);
    h.finish()
}

impl Queue {
    pub fn new(limits: QueueLimits) -> Queue {
        Queue {
            limits,
            groups: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            next_version: 0,
            legacy: VecDeque::new(),
            records: HashMap::new(),
            told: HashMap::new(),
            told_order: VecDeque::new(),
            bytes: 0,
            messages: 0,
            alerts: 0,
            reserved_bytes: 0,
            reserved_messages: 0,
        }
    }

    fn group_messages(&self, bytes: u64) -> usize {
        messages_for(bytes, self.limits.message_bytes)
    }

    /// The group key a payload is kept under: notifications without one never merge.
    pub fn group_key(payload: &Payload, record: RecordId) -> String {
        if payload.group_key.is_empty() {
            format!("\u{0}record-{record}")
        } else {
            payload.group_key.clone()
        }
    }

    fn told_state(&self, key: u64, now: Instant) -> Option<(Episode, u64)> {
        let (episode, truncated, at) = self.told.get(&key)?;
        (now.saturating_duration_since(*at) < self.limits.dedup_window)
            .then_some((*episode, *truncated))
    }

    /// Would this alert change what the group will be told?
    fn is_news(
        &self,
        group: Option<&Group>,
        group_key: &str,
        id: &str,
        a: &Alert,
        truncated: u64,
        now: Instant,
    ) -> bool {
        let new = Episode::of(a);
        if let Some(p) = group.and_then(|g| g.alerts.get(id)) {
            let old = Episode::of(&p.alert);
            let unchanged = new.same(&old) && p.alert == *a && p.truncated == truncated;
            return new.supersedes(&old) && !unchanged;
        }
        match self.told_state(told_key(group_key, id), now) {
            Some((told, told_truncated)) => {
                (!new.same(&told) || told_truncated != truncated) && new.supersedes(&told)
            }
            None => true,
        }
    }

    /// Checks a notification against what is pending and the limits, and reserves room for
    /// it. Linear in its alerts.
    pub fn admit(&mut self, payload: &Payload, now: Instant) -> Result<Admit, Refusal> {
        let key =
            if payload.group_key.is_empty() { None } else { Some(payload.group_key.as_str()) };
        let group = key.and_then(|k| self.groups.get(k));
        // Bytes the notification adds, and bytes of the pending states it replaces.
        let (mut added, mut replaced) = (0u64, 0u64);
        let mut news = 0usize;
        for a in &payload.alerts {
            let id = identity(a);
            let truncated = payload.truncated_alerts;
            if self.is_news(group, key.unwrap_or(""), &id, a, truncated, now) {
                news += 1;
                added += alert_bytes(a);
                replaced += group.and_then(|g| g.alerts.get(&id)).map_or(0, |p| p.bytes);
            }
        }
        if news == 0 {
            return Ok(Admit::Nothing);
        }
        let group_bytes = group.map_or(0, |g| g.bytes);
        let group_messages = group.map_or(0, |g| self.group_messages(g.bytes));
        let after = self.group_messages((group_bytes + added).saturating_sub(replaced));
        let messages = after.saturating_sub(group_messages);
        let bytes = added.saturating_sub(replaced);
        if self.group_messages(added) > self.limits.max_messages || added > self.limits.max_bytes {
            return Err(Refusal::TooLarge);
        }
        if self.messages + self.reserved_messages + messages > self.limits.max_messages
            || self.bytes + self.reserved_bytes + bytes > self.limits.max_bytes
        {
            return Err(Refusal::Full);
        }
        self.reserved_bytes += bytes;
        self.reserved_messages += messages;
        Ok(Admit::Room(Reservation { bytes, messages }))
    }

    /// Takes back a reservation whose record could not be written.
    pub fn cancel(&mut self, r: Reservation) {
        debug_assert!(self.reserved_bytes >= r.bytes && self.reserved_messages >= r.messages);
        self.reserved_bytes = self.reserved_bytes.saturating_sub(r.bytes);
        self.reserved_messages = self.reserved_messages.saturating_sub(r.messages);
    }

    /// Applies a notification whose record is durable. State may have moved since `admit`:
    /// everything is decided again here.
    pub fn apply(
        &mut self,
        r: Reservation,
        record: RecordId,
        payload: Payload,
        now: Instant,
    ) -> Applied {
        self.cancel(r);
        self.insert(record, payload, now)
    }

    /// Applies a notification recovered from the spool (no limits: it was acknowledged).
    pub fn insert(&mut self, record: RecordId, payload: Payload, now: Instant) -> Applied {
        let key = Queue::group_key(&payload, record);
        let mut applied = Applied::default();
        let meta = Meta::of(&payload);
        let truncated = meta.truncated_alerts;
        let mut news: Vec<(String, Alert)> = Vec::new();
        {
            let group = self.groups.get(&key);
            for a in payload.alerts {
                let id = identity(&a);
                if self.is_news(group, &key, &id, &a, truncated, now) {
                    news.push((id, a));
                }
            }
        }
        if news.is_empty() {
            applied.actions.push(DiskAction::Remove(record));
            return applied;
        }
        let before = self.groups.get(&key).map_or(0, |g| self.group_messages(g.bytes));
        if !self.groups.contains_key(&key) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.order.insert(seq, key.clone());
            self.groups.insert(
                key.clone(),
                Group { meta: meta.clone(), alerts: HashMap::new(), seq, bytes: 0, alone: false },
            );
        }
        let mut released: Vec<RecordId> = Vec::new();
        let Some(group) = self.groups.get_mut(&key) else {
            return applied;
        };
        group.meta = meta;
        for (id, alert) in news {
            let bytes = alert_bytes(&alert);
            self.next_version += 1;
            let arrived = group.alerts.get(&id).map_or(self.next_version, |p| p.arrived);
            let pending = Pending {
                arrived,
                truncated,
                alert,
                version: self.next_version,
                record,
                bytes,
                solo: false,
                since: now,
            };
            *self.records.entry(record).or_insert(0) += 1;
            if let Some(old) = group.alerts.insert(id, pending) {
                applied.superseded += 1;
                group.bytes -= old.bytes;
                self.bytes -= old.bytes;
                self.alerts -= 1;
                released.push(old.record);
            }
            group.bytes += bytes;
            self.bytes += bytes;
            self.alerts += 1;
            applied.changed += 1;
        }
        let after = messages_for(group.bytes, self.limits.message_bytes);
        self.messages = self.messages + after - before;
        for rec in released {
            self.release(rec, &mut applied.actions);
        }
        applied
    }

    /// Adds a message rendered by 1.0.0 (recovered from its spool).
    pub fn insert_legacy(&mut self, record: RecordId, text: String, now: Instant) {
        *self.records.entry(record).or_insert(0) += 1;
        self.bytes += text.len() as u64;
        self.messages += 1;
        self.legacy.push_back(LegacyPiece { record, text, since: now });
    }

    fn release(&mut self, record: RecordId, actions: &mut Vec<DiskAction>) {
        if let Some(n) = self.records.get_mut(&record) {
            *n -= 1;
            if *n == 0 {
                self.records.remove(&record);
                actions.push(DiskAction::Remove(record));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.legacy.is_empty() && self.groups.is_empty()
    }

    /// The next thing to send: the oldest legacy piece, else up to `max_groups` groups in send
    /// order. Leaves the state as it is: [`Queue::settle`] says what became of it.
    pub fn next(&self, max_groups: usize) -> Option<Snapshot> {
        if let Some(piece) = self.legacy.front() {
            return Some(Snapshot::Legacy { record: piece.record, text: piece.text.clone() });
        }
        let mut out = Vec::new();
        let mut alerts = 0;
        for key in self.order.values().take(max_groups.max(1)) {
            let Some(g) = self.groups.get(key) else { continue };
            // The first group whole (its parts are numbered); after it only what packing
            // could use, so the copy made under the caller's lock stays small.
            if !out.is_empty() && alerts + g.alerts.len() > SNAPSHOT_MAX_ALERTS {
                break;
            }
            alerts += g.alerts.len();
            out.push(snap(key, g));
        }
        (!out.is_empty()).then_some(Snapshot::Groups(out))
    }

    /// Every pending group in send order, for storm mode's digest (which covers everything
    /// pending); empty while a legacy piece waits (those go first, as they are).
    pub fn snapshot_all(&self) -> Vec<GroupSnap> {
        if !self.legacy.is_empty() {
            return Vec::new();
        }
        self.order.values().filter_map(|k| self.groups.get(k).map(|g| snap(k, g))).collect()
    }

    /// Settles one message. Delivered: its alerts (in the versions sent) leave and are
    /// remembered as told. Refused: a message of several groups marks them to be sent alone,
    /// one of several alerts marks them to be sent one by one; only a one-alert (or legacy)
    /// message is given up.
    pub fn settle(&mut self, cover: &Cover, outcome: Outcome, now: Instant) -> Settled {
        let mut settled = Settled::default();
        match outcome {
            Outcome::Retry => return settled,
            Outcome::Refused if cover.legacy.is_none() && cover.alerts.len() > 1 => {
                settled.isolated = true;
                let several_groups = cover.groups() > 1;
                for (gk, id, version) in &cover.alerts {
                    let Some(g) = self.groups.get_mut(gk) else { continue };
                    if several_groups {
                        g.alone = true;
                    } else if let Some(p) = g.alerts.get_mut(id) {
                        if p.version == *version {
                            p.solo = true;
                        }
                    }
                }
                return settled;
            }
            Outcome::Refused | Outcome::Delivered => {}
        }
        if let Some(record) = cover.legacy {
            if let Some(pos) = self.legacy.iter().position(|p| p.record == record) {
                if let Some(piece) = self.legacy.remove(pos) {
                    self.bytes -= piece.text.len() as u64;
                    self.messages -= 1;
                    if outcome == Outcome::Refused {
                        settled.given_up += 1;
                    }
                    self.release(record, &mut settled.actions);
                }
            }
        }
        for (gk, id, version) in &cover.alerts {
            let Some(g) = self.groups.get_mut(gk) else { continue };
            let matches = g.alerts.get(id).is_some_and(|p| p.version == *version);
            if !matches {
                // A newer state arrived meanwhile: it still has to be told.
                continue;
            }
            let per = self.limits.message_bytes;
            let before = messages_for(g.bytes, per);
            let Some(p) = g.alerts.remove(id) else { continue };
            g.bytes -= p.bytes;
            self.bytes -= p.bytes;
            self.alerts -= 1;
            let emptied = g.alerts.is_empty();
            let after = if emptied { 0 } else { messages_for(g.bytes, per) };
            self.messages = self.messages + after - before;
            if emptied {
                if let Some(g) = self.groups.remove(gk) {
                    self.order.remove(&g.seq);
                }
            }
            if outcome == Outcome::Refused {
                settled.given_up += 1;
            } else {
                self.remember(gk, id, Episode::of(&p.alert), p.truncated, now);
            }
            self.release(p.record, &mut settled.actions);
        }
        settled
    }

    fn remember(&mut self, group: &str, id: &str, episode: Episode, truncated: u64, now: Instant) {
        if self.limits.dedup_window.is_zero() {
            return;
        }
        let key = told_key(group, id);
        self.told.insert(key, (episode, truncated, now));
        self.told_order.push_back((now, key));
        // Drop what expired, and the oldest past the cap.
        while let Some(&(at, k)) = self.told_order.front() {
            let expired = now.saturating_duration_since(at) >= self.limits.dedup_window;
            if !expired && self.told_order.len() <= self.limits.max_told {
                break;
            }
            self.told_order.pop_front();
            if self.told.get(&k).is_some_and(|(_, _, t)| *t == at) {
                self.told.remove(&k);
            }
        }
    }

    pub fn stats(&self, now: Instant) -> Stats {
        let oldest_group = self
            .order
            .values()
            .next()
            .and_then(|k| self.groups.get(k))
            .and_then(|g| g.alerts.values().map(|p| p.since).min());
        let oldest_legacy = self.legacy.front().map(|p| p.since);
        let oldest = [oldest_group, oldest_legacy].into_iter().flatten().min();
        Stats {
            messages: self.messages,
            bytes: self.bytes,
            alerts: self.alerts,
            groups: self.groups.len(),
            oldest_age: oldest.map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            full: self.messages + self.reserved_messages >= self.limits.max_messages
                || self.bytes + self.reserved_bytes >= self.limits.max_bytes,
        }
    }

    /// Recounts the derived totals from scratch (tests check they never drift).
    #[cfg(test)]
    fn recount(&self) -> (u64, usize, usize) {
        let mut bytes: u64 = self.legacy.iter().map(|p| p.text.len() as u64).sum();
        let mut messages = self.legacy.len();
        let mut alerts = 0;
        for g in self.groups.values() {
            let b: u64 = g.alerts.values().map(|p| p.bytes).sum();
            assert_eq!(b, g.bytes);
            bytes += b;
            messages += self.group_messages(b);
            alerts += g.alerts.len();
        }
        (bytes, messages, alerts)
    }
}

fn snap(key: &str, g: &Group) -> GroupSnap {
    let mut firing = Vec::new();
    let mut resolved = Vec::new();
    let mut arrived: Vec<(&String, &Pending)> = g.alerts.iter().collect();
    arrived.sort_unstable_by_key(|(_, p)| p.arrived);
    for (id, p) in arrived {
        match p.alert.status {
            Status::Firing => firing.push((id, p)),
            Status::Resolved => resolved.push((id, p)),
        }
    }
    let any_firing = !firing.is_empty();
    let all: Vec<(&String, &Pending)> = firing.into_iter().chain(resolved).collect();
    GroupSnap {
        key: key.to_string(),
        payload: Payload {
            status: if any_firing { Status::Firing } else { Status::Resolved },
            receiver: g.meta.receiver.clone(),
            group_key: if key.starts_with('\u{0}') { String::new() } else { key.to_string() },
            group_labels: g.meta.group_labels.clone(),
            common_labels: g.meta.common_labels.clone(),
            common_annotations: g.meta.common_annotations.clone(),
            external_url: g.meta.external_url.clone(),
            truncated_alerts: g.meta.truncated_alerts,
            alerts: all.iter().map(|(_, p)| p.alert.clone()).collect(),
        },
        versions: all.iter().map(|(id, p)| ((*id).clone(), p.version)).collect(),
        solo: all.iter().map(|(_, p)| p.solo).collect(),
        alone: g.alone,
        since: all.iter().map(|(_, p)| p.since).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Option<Timestamp> {
        Some(Timestamp { unix_seconds: s, nanos: 0 })
    }

    fn alert(fp: &str, status: Status, starts: i64, ends: Option<i64>) -> Alert {
        Alert {
            status,
            labels: Pairs(vec![("alertname".into(), "A".into())]),
            annotations: Pairs::default(),
            starts_at: ts(starts),
            ends_at: ends.and_then(ts),
            generator_url: None,
            fingerprint: fp.into(),
        }
    }

    fn payload(group: &str, alerts: Vec<Alert>) -> Payload {
        Payload::for_test(group, alerts)
    }

    fn limits(max_messages: usize) -> QueueLimits {
        QueueLimits {
            max_messages,
            max_bytes: 1 << 20,
            dedup_window: Duration::from_secs(300),
            message_bytes: 4096,
            max_told: 100_000,
        }
    }

    fn offer(q: &mut Queue, rec: RecordId, p: Payload, now: Instant) -> Result<Applied, Refusal> {
        match q.admit(&p, now)? {
            Admit::Room(r) => Ok(q.apply(r, rec, p, now)),
            Admit::Nothing => Ok(Applied::default()),
        }
    }

    fn cover_all(q: &Queue) -> Cover {
        let Some(Snapshot::Groups(groups)) = q.next(1000) else { return Cover::default() };
        let mut c = Cover::default();
        for g in groups {
            for (id, v) in g.versions {
                c.alerts.push((g.key.clone(), id, v));
            }
        }
        c
    }

    fn check(q: &Queue) {
        assert_eq!(q.recount(), (q.bytes, q.messages, q.alerts));
    }

    #[test]
    fn firing_then_resolved_unsent_leaves_one_resolved() {
        let now = Instant::now();
        let mut q = Queue::new(limits(100));
        let a = offer(&mut q, 1, payload("g", vec![alert("x", Status::Firing, 10, None)]), now);
        assert_eq!(a.map(|a| a.changed), Ok(1));
        let b =
            offer(&mut q, 2, payload("g", vec![alert("x", Status::Resolved, 10, Some(20))]), now);
        assert_eq!(b.map(|a| (a.superseded, a.actions)), Ok((1, vec![DiskAction::Remove(1)])));
        let Some(Snapshot::Groups(g)) = q.next(10) else { panic!("nothing pending") };
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].payload.alerts.len(), 1);
        assert_eq!(g[0].payload.alerts[0].status, Status::Resolved);
        check(&q);
    }

    #[test]
    fn stale_firing_never_follows_its_resolved() {
        let now = Instant::now();
        let mut q = Queue::new(limits(100));
        let resolved = alert("x", Status::Resolved, 10, Some(20));
        let _ = offer(&mut q, 1, payload("g", vec![resolved]), now);
        // A lagging peer's firing of the same episode, while the resolved is pending…
        let stale = alert("x", Status::Firing, 10, None);
        assert_eq!(q.admit(&payload("g", vec![stale.clone()]), now), Ok(Admit::Nothing));
        // …and after it was delivered.
        let c = cover_all(&q);
        let s = q.settle(&c, Outcome::Delivered, now);
        assert_eq!(s.actions, vec![DiskAction::Remove(1)]);
        assert!(q.is_empty());
        assert_eq!(q.admit(&payload("g", vec![stale]), now), Ok(Admit::Nothing));
        // A new episode, started after the resolution, is news.
        let refired = alert("x", Status::Firing, 30, None);
        assert!(matches!(q.admit(&payload("g", vec![refired]), now), Ok(Admit::Room(_))));
    }

    #[test]
    fn an_alert_delivered_and_back_while_its_group_waits_is_listed_once() {
        let now = Instant::now();
        let mut q = Queue::new(limits(100));
        let _ = offer(&mut q, 1, payload("g", vec![alert("x", Status::Firing, 10, None)]), now);
        let _ = offer(&mut q, 2, payload("g", vec![alert("y", Status::Firing, 10, None)]), now);
        // Only x was in the message WeCom took (y came while it was in flight).
        let mut c = cover_all(&q);
        c.alerts.retain(|(_, id, _)| id == "x");
        q.settle(&c, Outcome::Delivered, now);
        // x fires again (a new episode) while y still waits.
        let back = payload("g", vec![alert("x", Status::Firing, 30, None)]);
        assert!(offer(&mut q, 3, back, now).is_ok());
        let Some(Snapshot::Groups(g)) = q.next(10) else { panic!("nothing pending") };
        let ids: Vec<&str> = g[0].versions.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["y", "x"]);
        assert_eq!(g[0].payload.alerts.len(), 2);
        check(&q);
    }

    #[test]
    fn a_changed_truncated_count_is_news() {
        let now = Instant::now();
        let mut q = Queue::new(limits(100));
        let with = |n: u64| {
            let mut p = payload("g", vec![alert("x", Status::Firing, 10, None)]);
            p.truncated_alerts = n;
            p
        };
        let _ = offer(&mut q, 1, with(5), now);
        // While pending: the new count replaces the old state.
        assert!(matches!(q.admit(&with(9), now), Ok(Admit::Room(_))));
        assert_eq!(q.admit(&with(5), now), Ok(Admit::Nothing));
        let _ = offer(&mut q, 2, with(9), now);
        let c = cover_all(&q);
        q.settle(&c, Outcome::Delivered, now);
        // Once told: the same count is a duplicate, a higher one is sent.
        assert_eq!(q.admit(&with(9), now), Ok(Admit::Nothing));
        let a = offer(&mut q, 3, with(12), now);
        assert_eq!(a.map(|a| a.changed), Ok(1));
        let Some(Snapshot::Groups(g)) = q.next(10) else { panic!("nothing pending") };
        assert_eq!(g[0].payload.truncated_alerts, 12);
        check(&q);
    }

    #[test]
    fn told_state_is_not_resent_within_the_window_only() {
        let now = Instant::now();
        let mut q = Queue::new(limits(100));
        let resolved = || payload("g", vec![alert("x", Status::Resolved, 10, Some(20))]);
        let _ = offer(&mut q, 1, resolved(), now);
        let c = cover_all(&q);
        q.settle(&c, Outcome::Delivered, now);
        // The HA peer's copy of the resolved.
        assert_eq!(q.admit(&resolved(), now + Duration::from_secs(10)), Ok(Admit::Nothing));
        assert!(matches!(q.admit(&resolved(), now + Duration::from_secs(301)), Ok(Admit::Room(_))));
    }

    /// `--dedup-max-entries` bounds the told memory: past it the oldest are forgotten early
    /// (their copy is news again), the newest still deduplicated.
    #[test]
    fn the_told_memory_keeps_at_most_max_told_entries() {
        let now = Instant::now();
        let mut q = Queue::new(QueueLimits { max_told: 2, ..limits(100) });
        let resolved = |fp: &str| payload(fp, vec![alert(fp, Status::Resolved, 10, Some(20))]);
        for (i, fp) in ["x", "y", "z"].into_iter().enumerate() {
            let _ = offer(&mut q, i as RecordId + 1, resolved(fp), now);
            let c = cover_all(&q);
            q.settle(&c, Outcome::Delivered, now);
        }
        let later = now + Duration::from_secs(10);
        assert!(matches!(q.admit(&resolved("x"), later), Ok(Admit::Room(_))), "x forgotten");
        assert_eq!(q.admit(&resolved("y"), later), Ok(Admit::Nothing));
        assert_eq!(q.admit(&resolved("z"), later), Ok(Admit::Nothing));
    }

    #[test]
    fn in_flight_alert_replaced_meanwhile_stays_pending() {
        let now = Instant::now();
        let mut q = Queue::new(limits(100));
        let _ = offer(&mut q, 1, payload("g", vec![alert("x", Status::Firing, 10, None)]), now);
        let c = cover_all(&q);
        let _ =
            offer(&mut q, 2, payload("g", vec![alert("x", Status::Resolved, 10, Some(20))]), now);
        let s = q.settle(&c, Outcome::Delivered, now);
        assert!(s.actions.is_empty(), "record 1 was already released when superseded");
        let Some(Snapshot::Groups(g)) = q.next(10) else { panic!("resolved lost") };
        assert_eq!(g[0].payload.alerts[0].status, Status::Resolved);
        check(&q);
    }

    #[test]
    fn refusal_isolates_groups_then_alerts_then_gives_up_one() {
        let now = Instant::now();
        let mut q = Queue::new(limits(100));
        let two = vec![alert("a", Status::Firing, 1, None), alert("b", Status::Firing, 1, None)];
        let _ = offer(&mut q, 1, payload("g1", two), now);
        let _ = offer(&mut q, 2, payload("g2", vec![alert("c", Status::Firing, 1, None)]), now);
        let s = q.settle(&cover_all(&q), Outcome::Refused, now);
        assert!(s.isolated && s.given_up == 0);
        let Some(Snapshot::Groups(g)) = q.next(10) else { panic!() };
        assert!(g.iter().all(|g| g.alone));
        // g1 alone is refused: its alerts go one by one.
        let c1 = Cover {
            legacy: None,
            alerts: g[0].versions.iter().map(|(i, v)| (g[0].key.clone(), i.clone(), *v)).collect(),
        };
        let s = q.settle(&c1, Outcome::Refused, now);
        assert!(s.isolated);
        let Some(Snapshot::Groups(g)) = q.next(10) else { panic!() };
        assert_eq!(g[0].solo, vec![true, true]);
        // Only "a" is really refused.
        let ca =
            Cover { legacy: None, alerts: vec![("g1".into(), "a".into(), g[0].versions[0].1)] };
        let s = q.settle(&ca, Outcome::Refused, now);
        assert_eq!((s.given_up, s.isolated), (1, false));
        assert_eq!(q.stats(now).alerts, 2);
        check(&q);
    }

    #[test]
    fn limits_apply_to_the_first_notification_too() {
        let now = Instant::now();
        let mut q = Queue::new(QueueLimits { max_bytes: 1000, ..limits(100) });
        let many: Vec<Alert> =
            (0..10).map(|i| alert(&format!("f{i}"), Status::Firing, 1, None)).collect();
        assert_eq!(q.admit(&payload("g", many), now), Err(Refusal::TooLarge));
        let few = vec![alert("f", Status::Firing, 1, None)];
        assert!(offer(&mut q, 1, payload("g", few), now).is_ok());
        let more: Vec<Alert> =
            (0..4).map(|i| alert(&format!("m{i}"), Status::Firing, 1, None)).collect();
        assert_eq!(q.admit(&payload("h", more), now), Err(Refusal::Full));
    }

    #[test]
    fn legacy_pieces_go_first_and_release_their_record() {
        let now = Instant::now();
        let mut q = Queue::new(limits(100));
        q.insert_legacy(7, "one".into(), now);
        q.insert_legacy(7, "two".into(), now);
        let _ = offer(&mut q, 8, payload("g", vec![alert("x", Status::Firing, 1, None)]), now);
        for text in ["one", "two"] {
            let Some(Snapshot::Legacy { record, text: t }) = q.next(10) else { panic!() };
            assert_eq!((record, t.as_str()), (7, text));
            let s = q.settle(&Cover { legacy: Some(7), alerts: vec![] }, Outcome::Delivered, now);
            assert_eq!(s.actions.is_empty(), text == "one");
        }
        assert!(matches!(q.next(10), Some(Snapshot::Groups(_))));
        check(&q);
    }

    #[test]
    fn supersede_is_linear_on_a_huge_group() {
        let now = Instant::now();
        let mut q =
            Queue::new(QueueLimits { max_messages: 1 << 30, max_bytes: 1 << 40, ..limits(1) });
        let make = |status| -> Payload {
            payload("g", (0..60_000).map(|i| alert(&format!("f{i}"), status, 1, Some(2))).collect())
        };
        let _ = offer(&mut q, 1, make(Status::Firing), now);
        let a = offer(&mut q, 2, make(Status::Resolved), now);
        assert_eq!(a.map(|a| a.superseded), Ok(60_000));
        check(&q);
    }
}
