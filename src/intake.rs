//! One webhook body → queued alert state: parse, check, dedup, enqueue.
//!
//! The server maps the result onto HTTP status codes; the `render` subcommand and tests use
//! [`prepare`] without queueing anything. Everything here is bounded: the JSON nesting depth is
//! checked before serde_json recurses (we run on a coroutine's fixed stack), and nothing in a
//! rejection echoes the payload.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::alertmanager::{self, Payload, Status};
use crate::log_throttle::Throttle;
use crate::metrics;
use crate::outbox::queue::identity;
use crate::outbox::split::split;
use crate::outbox::{EnqueueError, Enqueued};
use crate::render;
use crate::routing::{Robot, Robots};
use crate::time::TzOffset;
use crate::wecom::MsgType;

/// Alertmanager's payload is 4 levels deep; 16 leaves room for hand-written senders while
/// keeping serde_json's recursion (and `Value`'s recursive drop) far from the end of a
/// coroutine's stack (see `COROUTINE_STACK_WORDS` in main.rs).
pub const MAX_JSON_DEPTH: usize = 16;

#[derive(Debug)]
pub enum Rejected {
    /// The body cannot become a notification: retrying will not help (400).
    BadPayload(String),
    /// Over `--max-alerts`, or larger than the whole outbox: retrying will not help (413).
    TooLarge(String),
    /// The outbox cannot take it now: Alertmanager should retry (503).
    Unavailable(EnqueueError),
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Rejected::BadPayload(reason) | Rejected::TooLarge(reason) => write!(f, "{reason}"),
            Rejected::Unavailable(e) => write!(f, "{e}"),
        }
    }
}

/// What one pass over a body finds before it is parsed. Iterative and safe on any input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Scan {
    /// Arrays/objects nest deeper than the limit (strings are skipped correctly).
    too_deep: bool,
    /// The top-level `alerts` array holds more elements than the limit; exact for valid JSON.
    too_many_alerts: bool,
}

/// Both checks that run before parsing, in one pass over the body: the nesting depth (serde_json
/// recurses, and we run on a coroutine's fixed stack) and the alert count (4 MiB of `{}` is
/// 1.4 M alerts, refused without building them). Stops early once the alerts are too many.
///
/// Most of an Alertmanager body is string contents: those are skipped a word at a time to the
/// next quote or backslash (on a 50-alert body, the byte-wise loops of the two former scans
/// took a third of the intake profile).
fn scan(body: &[u8], max_depth: usize, max_alerts: usize) -> Scan {
    let mut found = Scan { too_deep: false, too_many_alerts: false };
    let mut depth = 0usize;
    // The last string seen at depth 1 (a key, when a ':' follows) and whether we are inside
    // the top-level "alerts" array, with its element count so far.
    let mut last_key_is_alerts = false;
    let (mut in_alerts, mut count, mut element_open) = (false, 0usize, false);
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if in_alerts
            && depth == 2
            && !element_open
            && !b.is_ascii_whitespace()
            && b != b']'
            && b != b','
        {
            element_open = true;
            count += 1;
            if count > max_alerts {
                found.too_many_alerts = true;
                return found;
            }
        }
        match b {
            b'"' => {
                // Skip the string: a backslash escapes the byte after it.
                let start = i + 1;
                let mut j = start;
                loop {
                    match string_stop(&body[j.min(body.len())..]) {
                        Some(k) if body[j + k] == b'\\' => j += k + 2,
                        Some(k) => {
                            j += k;
                            break;
                        }
                        None => return found, // unterminated: nothing more to count
                    }
                }
                if depth == 1 {
                    last_key_is_alerts = &body[start..j] == b"alerts";
                }
                i = j;
            }
            b'[' | b'{' => {
                if depth == 1 && b == b'[' && last_key_is_alerts {
                    in_alerts = true;
                }
                depth += 1;
                found.too_deep |= depth > max_depth;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    in_alerts = false;
                }
            }
            b',' if in_alerts && depth == 2 => element_open = false,
            b':' if depth == 1 => {}
            _ if depth == 1 && !b.is_ascii_whitespace() => last_key_is_alerts &= b == b':',
            _ => {}
        }
        i += 1;
    }
    found
}

/// Where the next quote or backslash is, eight bytes at a time (the SWAR zero-byte test:
/// `(x - 0x01…) & !x & 0x80…` flags a zero byte exactly at the lowest one it flags, and
/// `x = word ^ 0x22…` is zero where the word holds `"`). Byte by byte this loop was most of
/// the pre-scan's cost on a 50-alert body.
#[inline]
fn string_stop(rest: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    for chunk in rest.chunks_exact(8) {
        let Some(bytes) = chunk.first_chunk::<8>() else { break };
        let w = u64::from_le_bytes(*bytes);
        let (q, b) = (w ^ (LO * u64::from(b'"')), w ^ (LO * u64::from(b'\\')));
        let hits = ((q.wrapping_sub(LO) & !q) | (b.wrapping_sub(LO) & !b)) & HI;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    rest[at..].iter().position(|&c| c == b'"' || c == b'\\').map(|k| at + k)
}

/// True when the top-level `alerts` array holds more than `max` elements (see [`scan`]).
#[cfg(test)]
fn alerts_exceed(body: &[u8], max: usize) -> bool {
    scan(body, usize::MAX, max).too_many_alerts
}

/// True when arrays/objects nest deeper than `max` (see [`scan`]).
fn json_depth_exceeds(body: &[u8], max: usize) -> bool {
    scan(body, max, usize::MAX).too_deep
}

fn too_deep() -> Rejected {
    Rejected::BadPayload(format!("body is nested deeper than {MAX_JSON_DEPTH} levels"))
}

/// Parses a body, refusing JSON nested too deep for a coroutine's stack.
fn parse(body: &[u8]) -> Result<Payload, Rejected> {
    if json_depth_exceeds(body, MAX_JSON_DEPTH) {
        return Err(too_deep());
    }
    parse_checked(body)
}

/// Parses a body whose depth was checked.
fn parse_checked(body: &[u8]) -> Result<Payload, Rejected> {
    alertmanager::parse(body).map_err(|e| Rejected::BadPayload(e.to_string()))
}

/// The messages a notification becomes with the built-in layout. `render` only needs the
/// checks; the fuzz test reads the parts.
pub struct Prepared {
    #[cfg_attr(not(test), allow(dead_code))]
    pub parts: Vec<String>,
}

/// Parses, renders and splits a body into messages.
pub fn prepare(body: &[u8], tz: TzOffset) -> Result<Prepared, Rejected> {
    let payload = parse(body)?;
    let doc = render::render(&payload, tz);
    let parts = split(&render::adapt(doc, MsgType::Markdown), MsgType::Markdown.limit());
    Ok(Prepared { parts })
}

/// Bodies at least this large are parsed and queued on an OS thread, not on the coroutine that
/// read them: a 60,000-alert notification takes seconds to parse, and a coroutine worker busy
/// that long stalls every other connection on it (`/healthz` included).
const OFFLOAD_BYTES: usize = 64 * 1024;

/// At most this many such threads at once; past it the work runs in place.
const MAX_OFFLOADED: usize = 4;

static OFFLOADED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Queues a body for the robot the request chose (path, `?key=`), or the one routing picks.
/// Logs one line per notification received. Messages are composed later, at send time.
/// Safe on a coroutine: big bodies are handled on an OS thread while the coroutine yields.
pub fn accept(
    body: &[u8],
    max_alerts: usize,
    robots: &Arc<Robots>,
    chosen: Option<&Arc<Robot>>,
) -> Result<Enqueued, Rejected> {
    use std::sync::atomic::Ordering;
    if body.len() < OFFLOAD_BYTES || OFFLOADED.fetch_add(1, Ordering::AcqRel) >= MAX_OFFLOADED {
        if body.len() >= OFFLOAD_BYTES {
            OFFLOADED.fetch_sub(1, Ordering::AcqRel);
        }
        return accept_here(body, max_alerts, robots, chosen);
    }
    let (tx, rx) = may::sync::mpsc::channel();
    let (body, robots, chosen) = (body.to_vec(), Arc::clone(robots), chosen.cloned());
    let spawned = std::thread::Builder::new().name("intake".into()).spawn(move || {
        let result = accept_here(&body, max_alerts, &robots, chosen.as_ref());
        OFFLOADED.fetch_sub(1, Ordering::AcqRel);
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        OFFLOADED.fetch_sub(1, Ordering::AcqRel);
        log::error!("starting an intake thread: {e}");
        return Err(Rejected::Unavailable(EnqueueError::Disk(
            "no thread for a large notification".into(),
        )));
    }
    rx.recv().unwrap_or_else(|_| {
        Err(Rejected::Unavailable(EnqueueError::Disk("intake thread failed".into())))
    })
}

fn accept_here(
    body: &[u8],
    max_alerts: usize,
    robots: &Robots,
    chosen: Option<&Arc<Robot>>,
) -> Result<Enqueued, Rejected> {
    let found = scan(body, MAX_JSON_DEPTH, max_alerts);
    if found.too_many_alerts {
        return Err(Rejected::TooLarge(format!(
            "notification holds more than --max-alerts {max_alerts} alerts; lower max_alerts in Alertmanager's webhook_config"
        )));
    }
    if found.too_deep {
        return Err(too_deep());
    }
    let payload = parse_checked(body)?;
    if payload.alerts.len() > max_alerts {
        return Err(Rejected::TooLarge(format!(
            "notification holds {} alerts, more than --max-alerts {max_alerts}; lower max_alerts in Alertmanager's webhook_config",
            payload.alerts.len()
        )));
    }
    let robot = chosen.unwrap_or_else(|| robots.pick(&payload));
    if payload.alerts.is_empty() {
        // Nothing to tell: accepted (a 4xx would only make Alertmanager log an error).
        log::info!("notification without alerts, nothing to send robot={}", robot.name);
        return Ok(Enqueued::Empty);
    }
    let outbox = &robot.outbox;
    let firing = payload.alerts.iter().filter(|a| a.status == Status::Firing).count();
    let resolved = payload.alerts.len() - firing;
    let alerts = payload.alerts.len();
    let (status, receiver) = (payload.status, payload.receiver.clone());
    let key = dedup_key(&payload);
    let duplicate = key.is_some_and(|key| outbox.seen(key));
    let result = if duplicate {
        Enqueued::Duplicate
    } else {
        let result = outbox.enqueue(payload, body, key).map_err(|e| match e {
            EnqueueError::TooLarge => Rejected::TooLarge(e.to_string()),
            e => Rejected::Unavailable(e),
        })?;
        if let Enqueued::Queued { id, superseded } = &result {
            if *superseded > 0 {
                metrics::superseded(&robot.name, *superseded);
            }
            log::info!(
                "notification queued robot={} item={id} receiver={receiver:?} status={} firing={firing} resolved={resolved} superseded={superseded}",
                robot.name,
                status.as_str(),
            );
        }
        result
    };
    metrics::notification_received(status == Status::Resolved, firing as u64, resolved as u64);
    if result == Enqueued::Duplicate {
        metrics::dedup_hit(&robot.name);
        // Every duplicate at normal rates; at most one line a second in a flood.
        static DUPLICATES: Throttle = Throttle::new(1000);
        if let Some(held) = DUPLICATES.admit() {
            let more = match held {
                0 => String::new(),
                n => format!(" (and {n} more duplicates since the last line)"),
            };
            log::info!(
                "duplicate notification dropped robot={} receiver={receiver:?} status={} alerts={alerts}{more}",
                robot.name,
                status.as_str(),
            );
        }
    }
    Ok(result)
}

/// Same group, receiver, status, truncated count and alerts (identity, status, start time) →
/// same key. A re-fired alert has a new start time, so it is never mistaken for a duplicate
/// of the previous episode; more alerts truncated is news too. `None` for notifications
/// holding a resolved alert: those are checked per alert by the outbox, against what the
/// group was told.
fn dedup_key(p: &Payload) -> Option<u64> {
    if p.status == Status::Resolved || p.alerts.iter().any(|a| a.status == Status::Resolved) {
        return None;
    }
    // Borrowed where the identity is the fingerprint (always, from Alertmanager): hashes the
    // same as the owned `identity` string, without a copy per alert.
    let mut alerts: Vec<(Cow<str>, &str, Option<i64>)> = p
        .alerts
        .iter()
        .map(|a| {
            let id = if a.fingerprint.is_empty() {
                Cow::Owned(identity(a))
            } else {
                Cow::Borrowed(a.fingerprint.as_str())
            };
            (id, a.status.as_str(), a.starts_at.map(|t| t.unix_seconds))
        })
        .collect();
    alerts.sort();
    let mut h = DefaultHasher::new();
    (&p.group_key, &p.receiver, p.status.as_str(), p.truncated_alerts, alerts).hash(&mut h);
    Some(h.finish())
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

    /// The two byte-wise scans [`scan`] replaced, kept as its oracle.
    fn reference_scan(body: &[u8], max_depth: usize, max_alerts: usize) -> Scan {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        let (mut string_start, mut last_key_is_alerts) = (0usize, false);
        let (mut in_alerts, mut count, mut element_open) = (false, 0usize, false);
        let (mut too_deep, mut too_many_alerts) = (false, false);
        for (i, &b) in body.iter().enumerate() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                    if depth == 1 {
                        last_key_is_alerts = &body[string_start..i] == b"alerts";
                    }
                }
                continue;
            }
            if in_alerts
                && depth == 2
                && !element_open
                && !b.is_ascii_whitespace()
                && b != b']'
                && b != b','
            {
                element_open = true;
                count += 1;
                too_many_alerts |= count > max_alerts;
            }
            match b {
                b'"' => {
                    in_string = true;
                    string_start = i + 1;
                }
                b'[' | b'{' => {
                    if depth == 1 && b == b'[' && last_key_is_alerts {
                        in_alerts = true;
                    }
                    depth += 1;
                    too_deep |= depth > max_depth;
                }
                b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 1 {
                        in_alerts = false;
                    }
                }
                b',' if in_alerts && depth == 2 => element_open = false,
                b':' if depth == 1 => {}
                _ if depth == 1 && !b.is_ascii_whitespace() => last_key_is_alerts &= b == b':',
                _ => {}
            }
        }
        Scan { too_deep, too_many_alerts }
    }

    /// Same answers as the byte-wise scans on golden bodies cut and spliced with quotes,
    /// backslashes and brackets (what the fast string skip could get wrong).
    #[test]
    fn scan_agrees_with_bytewise_reference() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|p| std::fs::read(p).ok())
            .collect();
        assert!(!bodies.is_empty());
        bodies.push(br#"{"alerts":[{"a":"\\"},{"b":"\"x"},"\\\"",[],{}],"x":"alerts"}"#.to_vec());
        bodies.push(br#"{"alerts":[{},"unterminated \"#.to_vec());
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut checked = 0;
        for seed in &bodies {
            for round in 0..300 {
                let mut body = seed.clone();
                for _ in 0..(round % 5) {
                    let pos = (next() as usize) % (body.len() + 1);
                    match next() % 3 {
                        0 if pos < body.len() => body[pos] = b"\"\\[]{},"[(next() % 7) as usize],
                        1 => body.truncate(pos),
                        _ => body.insert(pos, b"\"\\[{"[(next() % 4) as usize]),
                    }
                }
                for (depth, alerts) in
                    [(16, 1000), (3, 2), (4, 0), (usize::MAX, 1), (2, usize::MAX)]
                {
                    let fast = scan(&body, depth, alerts);
                    let slow = reference_scan(&body, depth, alerts);
                    let text = String::from_utf8_lossy(&body);
                    assert_eq!(fast.too_many_alerts, slow.too_many_alerts, "{alerts}: {text}");
                    // Past the alert limit the fast scan stops: its depth answer is moot then.
                    if !fast.too_many_alerts {
                        assert_eq!(fast.too_deep, slow.too_deep, "depth {depth}: {text}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000);
    }

    fn key(body: &str) -> Option<u64> {
        parse(body.as_bytes()).ok().and_then(|p| dedup_key(&p))
    }

    #[test]
    fn alert_count_scan() {
        let max = |body: &str, n: usize| alerts_exceed(body.as_bytes(), n);
        assert!(!max(r#"{"alerts":[{},{}]}"#, 2));
        assert!(max(r#"{"alerts":[{},{},{}]}"#, 2));
        assert!(max(r#"{ "alerts" : [ {"a":[1,2,3]} , {} , {"s":"],}"} ] }"#, 2));
        assert!(!max(r#"{ "alerts" : [ {"a":[1,2,3]} , {} , {"s":"],}"} ] }"#, 3));
        // Other arrays, nested "alerts" keys and strings do not count.
        assert!(!max(r#"{"x":[1,2,3],"alerts":[],"y":{"alerts":[1,2,3]},"z":"alerts"}"#, 0));
        assert!(!max(r#"{"alerts":[]}"#, 0));
    }

    #[test]
    fn dedup_keys() {
        let a = r#"{"groupKey":"g","status":"firing","alerts":[{"fingerprint":"f1","startsAt":"2024-01-01T00:00:00Z"}]}"#;
        let refired = a.replace("00:00:00Z", "01:00:00Z");
        let resolved = r#"{"groupKey":"g","status":"resolved","alerts":[{"status":"resolved","fingerprint":"f1"}]}"#;
        assert!(key(a).is_some());
        assert_eq!(key(a), key(&a.replace("\"groupKey\"", "\"extra\":1,\"groupKey\"")));
        assert_ne!(key(a), key(&refired));
        assert_eq!(key(resolved), None, "resolved notifications are checked per alert");
        // Issue #17: the same alerts with more truncated is not a duplicate.
        let truncated = a.replace("\"groupKey\"", "\"truncatedAlerts\":17,\"groupKey\"");
        assert_ne!(key(a), key(&truncated));
    }

    /// Fuzzing without nightly or extra crates: golden payloads mutated at the byte level and
    /// at the JSON level (values swapped for other types, huge strings, deep nesting) go
    /// through parse → render → split. Nothing may panic, and whatever is accepted must come
    /// out as messages within WeCom's limit. Runs for `WEIXIN_ROBOT_FUZZ_SECONDS` (default 2;
    /// ci/test.sh gives it more), seeded deterministically so a failure can be replayed.
    #[test]
    fn fuzz_prepare_never_panics() {
        use serde_json::Value;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|p| std::fs::read(p).ok())
            .collect();
        assert!(!corpus.is_empty());
        let seconds: u64 = std::env::var("WEIXIN_ROBOT_FUZZ_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let mut next = crate::test_rng::xorshift(0x853c_49e6_748f_ea9b);
        fn random_value(next: &mut impl FnMut() -> u64) -> Value {
            match next() % 9 {
                0 => Value::Null,
                1 => Value::Bool(next() % 2 == 0),
                2 => serde_json::json!(next() as i64),
                3 => serde_json::json!(-1.5e300),
                4 => Value::String("<@all>*`[x](y)\n\u{0}告警🔥".repeat((next() % 300) as usize)),
                5 => serde_json::json!([]),
                6 => serde_json::json!({"k": [[[[[1]]]]]}),
                7 => Value::String("0001-01-01T00:00:00Z".into()),
                _ => Value::String("2024-02-30T25:61:61+99:99".into()),
            }
        }
        fn mutate_json(v: &mut Value, next: &mut impl FnMut() -> u64, depth: u32) {
            let replace = depth > 0 && next() % 4 == 0;
            if replace {
                *v = random_value(next);
                return;
            }
            match v {
                Value::Object(map) if !map.is_empty() => {
                    let keys: Vec<String> = map.keys().cloned().collect();
                    let k = &keys[(next() % keys.len() as u64) as usize];
                    if next() % 10 == 0 {
                        map.remove(k);
                    } else if let Some(child) = map.get_mut(k) {
                        mutate_json(child, next, depth + 1);
                    }
                }
                Value::Array(items) if !items.is_empty() => {
                    let i = (next() % items.len() as u64) as usize;
                    if next() % 8 == 0 {
                        let copy = items[i].clone();
                        for _ in 0..(next() % 50) {
                            items.push(copy.clone());
                        }
                    }
                    mutate_json(&mut items[i], next, depth + 1);
                }
                _ => *v = random_value(next),
            }
        }
        let mut iterations = 0u64;
        let mut accepted = 0u64;
        while std::time::Instant::now() < deadline {
            iterations += 1;
            let seed = &corpus[(next() % corpus.len() as u64) as usize];
            let mut bytes = if next() % 2 == 0 {
                let mut v: Value = serde_json::from_slice(seed).unwrap_or(Value::Null);
                for _ in 0..=(next() % 4) {
                    mutate_json(&mut v, &mut next, 0);
                }
                v.to_string().into_bytes()
            } else {
                seed.clone()
            };
            for _ in 0..(next() % 4) {
                let pos = (next() as usize) % (bytes.len() + 1);
                match next() % 3 {
                    0 if pos < bytes.len() => bytes[pos] = next() as u8,
                    1 => bytes.truncate(pos),
                    _ => bytes.insert(pos, b"{[\"\\\xff"[(next() % 5) as usize]),
                }
            }
            if let Ok(item) = prepare(&bytes, TZ) {
                accepted += 1;
                assert!(!item.parts.is_empty());
                for part in &item.parts {
                    assert!(part.len() <= crate::wecom::MARKDOWN_MAX_BYTES, "{} bytes", part.len());
                }
            }
        }
        println!("fuzz: {iterations} inputs, {accepted} accepted, none panicked");
    }
}
