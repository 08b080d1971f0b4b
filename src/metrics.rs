//! Process-wide counters and the Prometheus text exposition.
//!
//! Label values come from fixed sets (statuses, rejection reasons, `SendError::reason`) or from
//! robot *names*, never from keys or request content, so cardinality stays bounded and nothing
//! secret can reach `/metrics`. Intake-path counters are plain atomics; the rest sit in one
//! mutex-guarded map, touched a few times per message sent.
//!
//! Depends on nothing else in the crate except the types it is handed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::wecom::SendError;

static NOTIFICATIONS_FIRING: AtomicU64 = AtomicU64::new(0);
static NOTIFICATIONS_RESOLVED: AtomicU64 = AtomicU64::new(0);
static ALERTS_FIRING: AtomicU64 = AtomicU64::new(0);
static ALERTS_RESOLVED: AtomicU64 = AtomicU64::new(0);
static DEDUP_HITS: AtomicU64 = AtomicU64::new(0);
static SUPERSEDED: AtomicU64 = AtomicU64::new(0);

/// Send latency buckets in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Labelled counters: series text (`name{labels}`) → value.
static COUNTERS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static LATENCY: Mutex<Histogram> =
    Mutex::new(Histogram { counts: [0; BUCKETS.len()], sum: 0.0, count: 0 });

fn add(series: String, delta: u64) {
    let mut map = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry(series).or_insert(0) += delta;
}

/// Escapes a label value per the exposition format.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn notification_received(resolved: bool, firing_alerts: u64, resolved_alerts: u64) {
    if resolved {
        NOTIFICATIONS_RESOLVED.fetch_add(1, Ordering::Relaxed);
    } else {
        NOTIFICATIONS_FIRING.fetch_add(1, Ordering::Relaxed);
    }
    ALERTS_FIRING.fetch_add(firing_alerts, Ordering::Relaxed);
    ALERTS_RESOLVED.fetch_add(resolved_alerts, Ordering::Relaxed);
}

/// `reason` must be one of a fixed set chosen by the server (bad_json, too_large, …).
pub fn request_rejected(reason: &'static str) {
    add(format!("weixin_robot_requests_rejected_total{{reason=\"{reason}\"}}"), 1);
}

pub fn dedup_hit() {
    DEDUP_HITS.fetch_add(1, Ordering::Relaxed);
}

pub fn superseded(n: usize) {
    SUPERSEDED.fetch_add(n as u64, Ordering::Relaxed);
}

pub fn inc_sent(robot: &str) {
    add(format!("weixin_robot_messages_sent_total{{robot=\"{}\"}}", label(robot)), 1);
}

pub fn inc_failed(robot: &str, e: &SendError) {
    let errcode = e.errcode().map_or_else(|| "none".to_string(), |c| c.to_string());
    add(
        format!(
            "weixin_robot_messages_failed_total{{robot=\"{}\",reason=\"{}\",class=\"{}\",errcode=\"{errcode}\"}}",
            label(robot),
            e.reason(),
            e.class().as_str()
        ),
        1,
    );
}

pub fn inc_retry(robot: &str) {
    add(format!("weixin_robot_retries_total{{robot=\"{}\"}}", label(robot)), 1);
}

pub fn observe_send_latency(d: Duration) {
    let secs = d.as_secs_f64();
    let mut h = LATENCY.lock().unwrap_or_else(|p| p.into_inner());
    for (i, bound) in BUCKETS.iter().enumerate() {
        if secs <= *bound {
            h.counts[i] += 1;
        }
    }
    h.sum += secs;
    h.count += 1;
}

/// Outbox gauges, passed in by the caller so this module needs no outbox.
pub struct Gauges {
    pub robot: String,
    pub messages: usize,
    pub bytes: u64,
    pub oldest_age: Duration,
}

/// The whole exposition, Prometheus text format 0.0.4.
pub fn render(gauges: &[Gauges], connections: usize) -> String {
    let mut out = String::with_capacity(4096);
    let counter = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    };
    counter(
        &mut out,
        "weixin_robot_notifications_received_total",
        "Notifications accepted from Alertmanager, by status.",
    );
    let _ = writeln!(
        out,
        "weixin_robot_notifications_received_total{{status=\"firing\"}} {}",
        NOTIFICATIONS_FIRING.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "weixin_robot_notifications_received_total{{status=\"resolved\"}} {}",
        NOTIFICATIONS_RESOLVED.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "weixin_robot_alerts_received_total",
        "Alerts inside accepted notifications, by status.",
    );
    let _ = writeln!(
        out,
        "weixin_robot_alerts_received_total{{status=\"firing\"}} {}",
        ALERTS_FIRING.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "weixin_robot_alerts_received_total{{status=\"resolved\"}} {}",
        ALERTS_RESOLVED.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "weixin_robot_dedup_hits_total",
        "Notifications dropped as duplicates within --dedup-window.",
    );
    let _ = writeln!(out, "weixin_robot_dedup_hits_total {}", DEDUP_HITS.load(Ordering::Relaxed));
    counter(
        &mut out,
        "weixin_robot_superseded_total",
        "Unsent notifications replaced by a newer one for the same alerts.",
    );
    let _ = writeln!(out, "weixin_robot_superseded_total {}", SUPERSEDED.load(Ordering::Relaxed));

    let map = COUNTERS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (name, help) in [
        ("weixin_robot_requests_rejected_total", "Requests answered 4xx/5xx by intake, by reason."),
        ("weixin_robot_messages_sent_total", "Messages WeCom accepted (errcode 0)."),
        (
            "weixin_robot_messages_failed_total",
            "Failed send attempts, by reason, class and errcode.",
        ),
        ("weixin_robot_retries_total", "Send attempts that will be retried."),
    ] {
        counter(&mut out, name, help);
        for (series, value) in map.range(format!("{name}{{")..) {
            if !series.starts_with(&format!("{name}{{")) {
                break;
            }
            let _ = writeln!(out, "{series} {value}");
        }
    }

    for (name, help) in [
        ("weixin_robot_outbox_messages", "Messages waiting in the outbox."),
        ("weixin_robot_outbox_bytes", "Bytes of messages waiting in the outbox."),
        ("weixin_robot_outbox_oldest_age_seconds", "Age of the oldest waiting notification."),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for g in gauges {
            let value = match name {
                "weixin_robot_outbox_messages" => g.messages as f64,
                "weixin_robot_outbox_bytes" => g.bytes as f64,
                _ => g.oldest_age.as_secs_f64(),
            };
            let _ = writeln!(out, "{name}{{robot=\"{}\"}} {value}", label(&g.robot));
        }
    }

    let _ = writeln!(
        out,
        "# HELP weixin_robot_connections Open HTTP connections.\n# TYPE weixin_robot_connections gauge\nweixin_robot_connections {connections}"
    );

    let h = LATENCY.lock().unwrap_or_else(|p| p.into_inner());
    let name = "weixin_robot_send_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time taken by each request to WeCom.\n# TYPE {name} histogram"
    );
    for (i, bound) in BUCKETS.iter().enumerate() {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", h.counts[i]);
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
        h.count, h.sum, h.count
    );
    drop(h);

    let _ = writeln!(
        out,
        "# HELP weixin_robot_build_info Build information.\n# TYPE weixin_robot_build_info gauge\nweixin_robot_build_info{{version=\"{}\",target=\"{}\",revision=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::build::TARGET,
        crate::build::GIT_REVISION
    );
    out
}
