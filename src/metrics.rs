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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wecom::SendError;

mod num;
use num::{Millis, Shortest};

static NOTIFICATIONS_FIRING: AtomicU64 = AtomicU64::new(0);
static NOTIFICATIONS_RESOLVED: AtomicU64 = AtomicU64::new(0);
static ALERTS_FIRING: AtomicU64 = AtomicU64::new(0);
static ALERTS_RESOLVED: AtomicU64 = AtomicU64::new(0);
static DEDUP_EVICTIONS: AtomicU64 = AtomicU64::new(0);
static DEDUP_ENTRIES: AtomicU64 = AtomicU64::new(0);

/// Send latency buckets in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Delivery delay buckets in seconds: storm mode's `--max-delay` is 2 minutes by default.
const DELAY_BUCKETS: [f64; 10] = [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    const EMPTY: Histogram = Histogram { counts: [0; BUCKETS.len()], sum: 0.0, count: 0 };

    fn observe(&mut self, buckets: &[f64; BUCKETS.len()], value: f64) {
        for (i, bound) in buckets.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Labelled counters: series text (`name{labels}`) → value.
static COUNTERS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
/// Send latency per robot.
static LATENCY: Mutex<BTreeMap<String, Histogram>> = Mutex::new(BTreeMap::new());
/// Acceptance → the message or file that told the alert's state, per robot.
static DELAY: Mutex<BTreeMap<String, Histogram>> = Mutex::new(BTreeMap::new());
/// Unix time of the last message WeCom accepted, per robot.
static LAST_DELIVERY: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());
/// The last configuration load: (successful, unix time of the last successful one).
static RELOAD: Mutex<(bool, f64)> = Mutex::new((false, 0.0));

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

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

/// Duplicates per robot, apart from [`COUNTERS`]: counted on the intake path for every
/// duplicate (an HA pair sends everything twice), so no series string is built per call; the
/// name is copied once per robot.
static DEDUP_HITS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

pub fn dedup_hit(robot: &str) {
    let mut map = DEDUP_HITS.lock().unwrap_or_else(|p| p.into_inner());
    match map.get_mut(robot) {
        Some(n) => *n += 1,
        None => {
            map.insert(robot.to_string(), 1);
        }
    }
}

pub fn superseded(robot: &str, n: usize) {
    add(format!("weixin_robot_superseded_total{{robot=\"{}\"}}", label(robot)), n as u64);
}

/// A dedup table was full and forgot its oldest key before the window ended.
pub fn dedup_evicted() {
    DEDUP_EVICTIONS.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
pub fn dedup_evictions() -> u64 {
    DEDUP_EVICTIONS.load(Ordering::Relaxed)
}

/// Keys held by all dedup tables grew (`true`) or shrank by `n`.
pub fn dedup_entries(grew: bool, n: usize) {
    let n = n as u64;
    if grew {
        DEDUP_ENTRIES.fetch_add(n, Ordering::Relaxed);
    } else {
        DEDUP_ENTRIES.fetch_sub(n, Ordering::Relaxed);
    }
}

pub fn inc_sent(robot: &str) {
    add(format!("weixin_robot_messages_sent_total{{robot=\"{}\"}}", label(robot)), 1);
    let mut last = LAST_DELIVERY.lock().unwrap_or_else(|p| p.into_inner());
    last.insert(robot.to_string(), unix_now());
}

/// A configuration load (start-up, SIGHUP or `POST /-/reload`) ended; `ok` false leaves the
/// old configuration running.
pub fn config_loaded(ok: bool) {
    let mut r = RELOAD.lock().unwrap_or_else(|p| p.into_inner());
    r.0 = ok;
    if ok {
        r.1 = unix_now();
    }
}

pub fn inc_failed(robot: &str, e: &SendError) {
    let errcode = errcode_label(e.errcode());
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

/// One histogram per robot in the text format: `_bucket` per bound and `+Inf`, `_sum`, `_count`.
fn write_histograms(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: &[f64; BUCKETS.len()],
    per_robot: &BTreeMap<String, Histogram>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (robot, h) in per_robot {
        let robot = label(robot);
        for (i, bound) in buckets.iter().enumerate() {
            let bound = Shortest(*bound);
            let _ =
                writeln!(out, "{name}_bucket{{robot=\"{robot}\",le=\"{bound}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{robot=\"{robot}\",le=\"+Inf\"}} {}\n{name}_sum{{robot=\"{robot}\"}} {}\n{name}_count{{robot=\"{robot}\"}} {}",
            h.count,
            Shortest(h.sum),
            h.count
        );
    }
}

/// The `errcode` label: WeCom's documented codes by number, anything else as `other`, so an
/// upstream (or a `--key-param-host` proxy) answering arbitrary numbers cannot grow the number
/// of series without bound.
fn errcode_label(errcode: Option<i64>) -> &'static str {
    match errcode {
        None => "none",
        Some(-1) => "-1",
        Some(40007) => "40007",
        Some(40058) => "40058",
        Some(45009) => "45009",
        Some(93000) => "93000",
        Some(_) => "other",
    }
}

/// Storm mode: a digest and its file were accepted, telling the group `alerts` alert states.
pub fn digest_sent(robot: &str, alerts: usize) {
    add(format!("weixin_robot_digests_total{{robot=\"{}\"}}", label(robot)), 1);
    add(format!("weixin_robot_alerts_digested_total{{robot=\"{}\"}}", label(robot)), alerts as u64);
}

/// Alerts given up for good (WeCom refused the one-alert message), by the send error's reason.
pub fn alerts_failed(robot: &str, reason: &'static str, alerts: usize) {
    add(
        format!(
            "weixin_robot_alerts_failed_total{{robot=\"{}\",reason=\"{reason}\"}}",
            label(robot)
        ),
        alerts as u64,
    );
}

pub fn sender_restarted(robot: &str) {
    add(format!("weixin_robot_sender_restarts_total{{robot=\"{}\"}}", label(robot)), 1);
}

/// Alerts kept on disk for a robot that is not configured (`None`: it is again).
static UNROUTED: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

pub fn set_unrouted(robot: &str, alerts: Option<usize>) {
    let mut map = UNROUTED.lock().unwrap_or_else(|p| p.into_inner());
    match alerts {
        Some(n) => map.insert(robot.to_string(), n),
        None => map.remove(robot),
    };
}

pub fn inc_retry(robot: &str) {
    add(format!("weixin_robot_retries_total{{robot=\"{}\"}}", label(robot)), 1);
}

pub fn observe_send_latency(robot: &str, d: Duration) {
    let secs = d.as_secs_f64();
    let mut all = LATENCY.lock().unwrap_or_else(|p| p.into_inner());
    let h = all.entry(robot.to_string()).or_insert(Histogram {
        counts: [0; BUCKETS.len()],
        sum: 0.0,
        count: 0,
    });
    for (i, bound) in BUCKETS.iter().enumerate() {
        if secs <= *bound {
            h.counts[i] += 1;
        }
    }
    h.sum += secs;
    h.count += 1;
}

/// Alert states told to a robot's group, each `delays` after it was accepted.
pub fn observe_delivery_delays(robot: &str, delays: impl Iterator<Item = Duration>) {
    let mut all = DELAY.lock().unwrap_or_else(|p| p.into_inner());
    let h = all.entry(robot.to_string()).or_insert(Histogram::EMPTY);
    for d in delays {
        h.observe(&DELAY_BUCKETS, d.as_secs_f64());
    }
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
        "weixin_robot_dedup_evictions_total",
        "Notifications forgotten by dedup before --dedup-window ended (--dedup-max-entries).",
    );
    let _ = writeln!(
        out,
        "weixin_robot_dedup_evictions_total {}\n# HELP weixin_robot_dedup_entries Notifications remembered for dedup.\n# TYPE weixin_robot_dedup_entries gauge\nweixin_robot_dedup_entries {}",
        DEDUP_EVICTIONS.load(Ordering::Relaxed),
        DEDUP_ENTRIES.load(Ordering::Relaxed)
    );

    let mut map = COUNTERS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (robot, n) in DEDUP_HITS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        map.insert(format!("weixin_robot_dedup_hits_total{{robot=\"{}\"}}", label(robot)), *n);
    }
    for (name, help) in [
        ("weixin_robot_requests_rejected_total", "Requests answered 4xx/5xx by intake, by reason."),
        ("weixin_robot_messages_sent_total", "Messages WeCom accepted (errcode 0)."),
        (
            "weixin_robot_messages_failed_total",
            "Failed send attempts, by reason, class and errcode.",
        ),
        ("weixin_robot_retries_total", "Send attempts that will be retried."),
        (
            "weixin_robot_dedup_hits_total",
            "Notifications dropped as duplicates within --dedup-window, by robot.",
        ),
        (
            "weixin_robot_superseded_total",
            "Unsent alert states replaced by a newer one for the same alerts, by robot.",
        ),
        (
            "weixin_robot_alerts_failed_total",
            "Alerts given up because WeCom refused them for good, by reason.",
        ),
        ("weixin_robot_sender_restarts_total", "Sender threads restarted after a panic."),
        ("weixin_robot_digests_total", "Storm mode: digests whose file message WeCom accepted."),
        ("weixin_robot_alerts_digested_total", "Storm mode: alert states told by a digest."),
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
            let _ = writeln!(out, "{name}{{robot=\"{}\"}} {}", label(&g.robot), Shortest(value));
        }
    }

    let name = "weixin_robot_unrouted_alerts";
    let _ = writeln!(
        out,
        "# HELP {name} Alerts waiting on disk for a robot that is not configured.\n# TYPE {name} gauge"
    );
    for (robot, n) in UNROUTED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "{name}{{robot=\"{}\"}} {n}", label(robot));
    }

    let _ = writeln!(
        out,
        "# HELP weixin_robot_connections Open HTTP connections.\n# TYPE weixin_robot_connections gauge\nweixin_robot_connections {connections}"
    );

    write_histograms(
        &mut out,
        "weixin_robot_send_duration_seconds",
        "Time taken by each request to WeCom, by robot.",
        &BUCKETS,
        &LATENCY.lock().unwrap_or_else(|p| p.into_inner()),
    );
    write_histograms(
        &mut out,
        "weixin_robot_delivery_delay_seconds",
        "Time from accepting an alert state to the message or file that told it, by robot.",
        &DELAY_BUCKETS,
        &DELAY.lock().unwrap_or_else(|p| p.into_inner()),
    );

    let name = "weixin_robot_last_delivery_timestamp_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Unix time WeCom last accepted a message, by robot.\n# TYPE {name} gauge"
    );
    for (robot, at) in LAST_DELIVERY.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "{name}{{robot=\"{}\"}} {}", label(robot), Millis(*at));
    }

    let (ok, at) = *RELOAD.lock().unwrap_or_else(|p| p.into_inner());
    let at = Millis(at);
    let _ = writeln!(
        out,
        "# HELP weixin_robot_config_last_reload_successful Whether the last configuration load succeeded.\n\
         # TYPE weixin_robot_config_last_reload_successful gauge\n\
         weixin_robot_config_last_reload_successful {}\n\
         # HELP weixin_robot_config_last_reload_success_timestamp_seconds Unix time of the last successful configuration load.\n\
         # TYPE weixin_robot_config_last_reload_success_timestamp_seconds gauge\n\
         weixin_robot_config_last_reload_success_timestamp_seconds {at}",
        u8::from(ok)
    );

    let _ = writeln!(
        out,
        "# HELP weixin_robot_build_info Build information.\n# TYPE weixin_robot_build_info gauge\nweixin_robot_build_info{{version=\"{}\",target=\"{}\",revision=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::build::TARGET,
        crate::build::GIT_REVISION
    );
    process(&mut out);
    out
}

/// A field of /proc/self/stat as a number: they are whole numbers (signed for a few), the
/// state letter counts as 0. Not `str::parse::<f64>`, whose parser is 15 kB of the static
/// binary (#18); a whole number below 2^64 converts to the same `f64`.
fn whole_number(field: &str) -> f64 {
    match field.parse::<u64>() {
        Ok(n) => n as f64,
        Err(_) => field.parse::<i64>().map_or(0.0, |n| n as f64),
    }
}

/// The standard `process_*` metrics (as Prometheus client libraries export them), from
/// /proc/self. Missing files (not Linux) leave them out rather than report zeros.
fn process(out: &mut String) {
    let gauge = |out: &mut String, name: &str, kind: &str, help: &str, value: f64| {
        let value = Shortest(value);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    // SAFETY: sysconf and getrlimit only read process parameters into locals.
    let (ticks, page, max_fds) = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur as f64
        } else {
            0.0
        };
        (libc::sysconf(libc::_SC_CLK_TCK) as f64, libc::sysconf(libc::_SC_PAGESIZE) as f64, max)
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), starting at field 3 (state).
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(whole_number).collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).copied();
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|v| v as f64)
    });
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        if ticks > 0.0 {
            let help = "Total user and system CPU time spent in seconds.";
            gauge(out, "process_cpu_seconds_total", "counter", help, (utime + stime) / ticks);
        }
    }
    if let (Some(start), Some(boot)) = (field(22), boot_time) {
        if ticks > 0.0 {
            let help = "Start time of the process since unix epoch in seconds.";
            gauge(out, "process_start_time_seconds", "gauge", help, boot + start / ticks);
        }
    }
    if let Some(vsize) = field(23) {
        gauge(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize);
    }
    if let Some(rss) = field(24) {
        let help = "Resident memory size in bytes.";
        gauge(out, "process_resident_memory_bytes", "gauge", help, rss * page);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        let open = dir.count().saturating_sub(1) as f64;
        gauge(out, "process_open_fds", "gauge", "Number of open file descriptors.", open);
    }
    if max_fds > 0.0 {
        let help = "Maximum number of open file descriptors.";
        gauge(out, "process_max_fds", "gauge", help, max_fds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcode_label_is_a_fixed_set() {
        assert_eq!(errcode_label(None), "none");
        assert_eq!(errcode_label(Some(45009)), "45009");
        assert_eq!(errcode_label(Some(-1)), "-1");
        assert_eq!(errcode_label(Some(123_456_789)), "other");
        assert_eq!(errcode_label(Some(0)), "other");
    }
}
