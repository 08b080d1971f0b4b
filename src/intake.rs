//! One webhook body → queued messages: parse, render, split, enqueue.
//!
//! The server maps the result onto HTTP status codes; the `render` subcommand and tests use
//! [`prepare`] without queueing anything. Everything here is bounded: the JSON nesting depth is
//! checked before serde_json recurses (we run on a coroutine's fixed stack), and nothing in a
//! rejection echoes the payload.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::alertmanager::{self, Alert, Payload, Status};
use crate::config::TzOffset;
use crate::metrics;
use crate::outbox::split::{split, WECOM_MARKDOWN_MAX_BYTES};
use crate::outbox::{EnqueueError, Enqueued, NewItem, Outbox};
use crate::render;

/// Alertmanager's payload is 3 levels deep; 32 leaves room for hand-written senders while
/// keeping serde_json's recursion (and `Value`'s recursive drop) far from the stack's end.
pub const MAX_JSON_DEPTH: usize = 32;

#[derive(Debug)]
pub enum Rejected {
    /// The body cannot become a notification: retrying will not help (400).
    BadPayload(String),
    /// The outbox cannot take it now: Alertmanager should retry (503).
    Unavailable(EnqueueError),
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Rejected::BadPayload(reason) => write!(f, "{reason}"),
            Rejected::Unavailable(e) => write!(f, "{e}"),
        }
    }
}

/// What a body turns into before queueing.
pub struct Prepared {
    pub payload: Payload,
    pub item: NewItem,
}

/// Parses, renders and splits a body into messages ready for the outbox.
pub fn prepare(body: &[u8], tz: TzOffset) -> Result<Prepared, Rejected> {
    if json_depth_exceeds(body, MAX_JSON_DEPTH) {
        return Err(Rejected::BadPayload(format!(
            "body is nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    let payload = alertmanager::parse(body).map_err(|e| Rejected::BadPayload(e.to_string()))?;
    let parts = split(&render::render(&payload, tz), WECOM_MARKDOWN_MAX_BYTES);
    let identities: Vec<String> = payload.alerts.iter().map(identity).collect();
    let has_resolved = payload.alerts.iter().any(|a| a.status == Status::Resolved)
        || payload.status == Status::Resolved;
    let dedup_key = (!has_resolved).then(|| dedup_key(&payload));
    let item = NewItem {
        group_key: payload.group_key.clone(),
        identities,
        dedup_key,
        alerts: payload.alerts.len(),
        parts,
    };
    Ok(Prepared { payload, item })
}

/// Queues a body. Logs one line per notification received.
pub fn accept(body: &[u8], tz: TzOffset, outbox: &Outbox) -> Result<Enqueued, Rejected> {
    let Prepared { payload, item } = prepare(body, tz)?;
    let firing = payload.alerts.iter().filter(|a| a.status == Status::Firing).count();
    let resolved = payload.alerts.len() - firing;
    let parts = item.parts.len();
    let bytes: usize = item.parts.iter().map(String::len).sum();
    let result = outbox.enqueue(item).map_err(Rejected::Unavailable)?;
    metrics::notification_received(
        payload.status == Status::Resolved,
        firing as u64,
        resolved as u64,
    );
    match &result {
        Enqueued::Queued { id, superseded } => {
            if *superseded > 0 {
                metrics::superseded(*superseded);
            }
            log::info!(
                "notification queued item={id} receiver={:?} status={} firing={firing} resolved={resolved} messages={parts} bytes={bytes} superseded={superseded}",
                payload.receiver,
                payload.status.as_str(),
            );
        }
        Enqueued::Duplicate => {
            metrics::dedup_hit();
            log::info!(
                "duplicate notification dropped receiver={:?} status={} alerts={}",
                payload.receiver,
                payload.status.as_str(),
                payload.alerts.len()
            );
        }
    }
    Ok(result)
}

/// An alert's identity: its fingerprint, or a hash of its labels when the sender gave none.
fn identity(alert: &Alert) -> String {
    if !alert.fingerprint.is_empty() {
        return alert.fingerprint.clone();
    }
    let mut h = DefaultHasher::new();
    alert.labels.0.hash(&mut h);
    format!("labels:{:016x}", h.finish())
}

/// Same group, status, and alerts (identity, status, start time) → same key. A re-fired alert
/// has a new start time, so it is never mistaken for a duplicate of the previous episode.
fn dedup_key(p: &Payload) -> u64 {
    let mut alerts: Vec<(String, &str, Option<i64>)> = p
        .alerts
        .iter()
        .map(|a| (identity(a), a.status.as_str(), a.starts_at.map(|t| t.unix_seconds)))
        .collect();
    alerts.sort();
    let mut h = DefaultHasher::new();
    (&p.group_key, &p.receiver, p.status.as_str(), alerts).hash(&mut h);
    h.finish()
}

/// True when arrays/objects nest deeper than `max` (strings are skipped correctly).
/// Iterative, so it is safe on any input.
pub fn json_depth_exceeds(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const TZ: TzOffset = TzOffset { seconds: 0 };

    #[test]
    fn depth_check_skips_strings() {
        assert!(!json_depth_exceeds(
            br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"[[["}"#,
            3
        ));
        assert!(json_depth_exceeds(b"[[[[", 3));
        assert!(!json_depth_exceeds(b"[[[]]]", 3));
    }

    fn key(body: &str) -> Option<u64> {
        prepare(body.as_bytes(), TZ).ok().and_then(|p| p.item.dedup_key)
    }

    #[test]
    fn dedup_keys() {
        let a = r#"{"groupKey":"g","status":"firing","alerts":[{"fingerprint":"f1","startsAt":"2024-01-01T00:00:00Z"}]}"#;
        let refired = a.replace("00:00:00Z", "01:00:00Z");
        let resolved = r#"{"groupKey":"g","status":"resolved","alerts":[{"status":"resolved","fingerprint":"f1"}]}"#;
        assert!(key(a).is_some());
        assert_eq!(key(a), key(&a.replace("\"groupKey\"", "\"extra\":1,\"groupKey\"")));
        assert_ne!(key(a), key(&refired));
        assert_eq!(key(resolved), None, "resolved notifications are never deduplicated");
    }
}
