//! Intake speed, memory and start-up of the relay, driven by `wrk` over loopback, with the
//! fake WeCom server from the integration tests receiving deliveries. Every intake figure is
//! also given as a ratio to a bare may_minihttp server (`benches/bare.rs`) measured in the same
//! run, interleaved with the relay's runs: on a shared machine the absolute figures wander, the
//! ratios much less. Prints markdown tables; asserts nothing.
//!
//! Run through `benches/run.sh`, or directly: `cargo bench --bench intake`, with
//! - `WEIXIN_ROBOT_BINS="musl=dist/a glibc=target/release/weixin-robot"`: the builds to compare
//!   (label=path, space separated; default `WEIXIN_ROBOT_BIN` or the cargo-built binary);
//! - `WEIXIN_ROBOT_BARE_BIN`: the bare server (ratios are left out without it);
//! - `BENCH_SECONDS` per wrk run (default 5), `BENCH_RUNS` runs per figure, median (default 3);
//! - `BENCH_NEW_ARGS`: more flags for the relay taking new notifications (e.g. outbox limits);
//! - `BENCH_NEW=0` to measure duplicates only, `BENCH_ALERTS="1 50"`, `BENCH_CONNECTIONS="1 16 64"`.

#[path = "../tests/it/util.rs"]
mod util;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

#[derive(Clone, Copy, Default)]
struct WrkResult {
    rps: f64,
    p99_ms: f64,
    non_2xx: u64,
    /// Answers with a 2xx status per second: what was accepted (wrk's req/s counts 503s too).
    ok_rps: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// wrk's latency figures ("812.00us", "2.26ms", "1.02s") in milliseconds.
fn millis(text: &str) -> f64 {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, f64::NAN)
    };
    number.parse::<f64>().map(|n| n * factor).unwrap_or(f64::NAN)
}

/// Runs wrk with a Lua script that posts `body` (and, when `unique`, rewrites the group key and
/// fingerprints per request so no two notifications are alike).
fn wrk(
    addr: std::net::SocketAddr,
    body: &str,
    connections: usize,
    seconds: u32,
    unique: bool,
) -> WrkResult {
    let dir = std::env::temp_dir().join(format!("wxr-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let body_path = dir.join("body.json");
    std::fs::write(&body_path, body).expect("body");
    let script = dir.join("post.lua");
    // Unique ids must differ between wrk's threads (each has its own Lua state, with the same
    // random seed) and between runs against the same relay: run number, thread, counter.
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let lua = format!(
        r#"
local f = io.open("{}", "r")
local template = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = template
local threads = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
local unique = {unique}
request = function()
  if unique then
    n = n + 1
    local id = "r{run}t" .. tostring(tid) .. "n" .. n
    return wrk.format(nil, nil, nil, (template:gsub("UNIQ", id)))
  end
  return wrk.format()
end
"#,
        body_path.display()
    );
    std::fs::write(&script, lua).expect("lua");
    let threads = connections.min(2).to_string();
    let out = Command::new("wrk")
        .args(["-t", &threads, "-c", &connections.to_string(), "-d", &format!("{seconds}s")])
        .args(["--latency", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/alertinfo"))
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let find = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                l.trim().strip_prefix(prefix).map(|v| v.split_whitespace().next().unwrap_or(""))
            })
            .unwrap_or("")
            .to_string()
    };
    // "  123456 requests in 3.00s, 12.34MB read"
    let total = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse::<u64>().ok())
        .unwrap_or(0);
    let non_2xx = find("Non-2xx or 3xx responses:").parse().unwrap_or(0);
    let rps: f64 = find("Requests/sec:").parse().unwrap_or(0.0);
    let ok_share =
        if total > 0 { total.saturating_sub(non_2xx) as f64 / total as f64 } else { 0.0 };
    WrkResult { rps, p99_ms: millis(&find("99%")), non_2xx, ok_rps: rps * ok_share }
}

/// The median run by requests per second, with the median p99 of the runs.
fn median(mut runs: Vec<WrkResult>) -> WrkResult {
    if runs.is_empty() {
        return WrkResult::default();
    }
    let mid = runs.len() / 2;
    let mut p99: Vec<f64> = runs.iter().map(|r| r.p99_ms).collect();
    p99.sort_by(f64::total_cmp);
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    WrkResult { p99_ms: p99[mid], non_2xx: runs.iter().map(|r| r.non_2xx).sum(), ..runs[mid] }
}

fn payload_with(alerts: usize) -> String {
    let list: Vec<(String, String)> =
        (0..alerts).map(|i| (format!("UNIQ-{i}"), format!("BenchAlert{i}"))).collect();
    let a: Vec<A> = list.iter().map(|(fp, name)| A(fp, "firing", name)).collect();
    String::from_utf8(payload("bench-UNIQ", &a)).expect("utf8")
}

/// One relay build under test: a process answering duplicates (real defaults) and, unless
/// only duplicates are measured, one whose every notification is new (see `new_relay_args`).
struct Build {
    label: String,
    path: String,
    dup: Relay,
    new: Option<Relay>,
    idle_kib: u64,
    peak_kib: u64,
    results: Vec<((usize, usize, bool), WrkResult)>,
}

/// The relay taking new notifications: WeCom's real budget (20 a minute), so what it accepts
/// waits in its outbox as in a storm, with outbox limits raised so that a run fits: with the
/// defaults (10,000 messages) a 50-alert run fills it within a second and the rest is 503 by
/// design, which would measure the limit, not the intake. `extra` adds flags.
fn new_relay_args(url: &str, extra: &str) -> Vec<String> {
    let mut args: Vec<String> =
        ["--key", url, "--queue-max-messages", "10000000", "--queue-max-bytes", "4GiB"]
            .into_iter()
            .map(String::from)
            .collect();
    args.extend(extra.split_whitespace().map(String::from));
    args
}

fn start_relay<S: AsRef<str>>(bin: &str, args: &[S]) -> Relay {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    // Relay::start reads the binary from the environment; the bench is single-threaded here.
    std::env::set_var("WEIXIN_ROBOT_BIN", bin);
    Relay::start(&args)
}

struct Bare {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Bare {
    fn start(bin: &str) -> Bare {
        let port = free_port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the bare server");
        let addr = ([127, 0, 0, 1], port).into();
        wait_until(Duration::from_secs(10), "bare server listening", || {
            raw_request(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .is_ok_and(|r| r.status == 200)
        });
        Bare { child, addr }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn startup(bin: &str) -> (Duration, Duration) {
    std::env::set_var("WEIXIN_ROBOT_BIN", bin);
    let mut startups = Vec::new();
    for _ in 0..10 {
        let port = free_port();
        let t = Instant::now();
        let mut child = relay_command()
            .args(["--dry-run", "--listen", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let addr = ([127, 0, 0, 1], port).into();
        loop {
            if raw_request(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
                .is_ok_and(|r| r.status == 200)
            {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "relay did not start");
            std::thread::sleep(Duration::from_micros(200));
        }
        startups.push(t.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    startups.sort();
    (startups[0], startups[startups.len() / 2])
}

fn main() {
    let seconds: u32 = env_or("BENCH_SECONDS", 5);
    let runs: usize = env_or("BENCH_RUNS", 3);
    let with_new = env_or("BENCH_NEW", 1) != 0;
    let new_args = std::env::var("BENCH_NEW_ARGS").unwrap_or_default();
    let alert_counts = env_list("BENCH_ALERTS", "1 50");
    let connection_counts = env_list("BENCH_CONNECTIONS", "1 16 64");
    let specs: Vec<(String, String)> = match std::env::var("WEIXIN_ROBOT_BINS") {
        Ok(list) => list
            .split_whitespace()
            .filter_map(|s| s.split_once('='))
            .map(|(l, p)| (l.to_string(), p.to_string()))
            .collect(),
        Err(_) => vec![(
            "relay".into(),
            std::env::var("WEIXIN_ROBOT_BIN").unwrap_or_else(|_| BIN.to_string()),
        )],
    };
    let bare_bin = std::env::var("WEIXIN_ROBOT_BARE_BIN").ok().filter(|b| !b.is_empty());

    println!("| build | binary | bytes | start-up best / median |");
    println!("|---|---|---|---|");
    for (label, bin) in &specs {
        let (best, med) = startup(bin);
        let bytes = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
        println!("| {label} | {bin} | {bytes} | {best:.1?} / {med:.1?} |");
    }

    let fake = FakeWeCom::start();
    let url = fake.url();
    let mut builds: Vec<Build> = specs
        .into_iter()
        .map(|(label, bin)| {
            let dup = start_relay(&bin, &["--key", &url]);
            let new = with_new.then(|| start_relay(&bin, &new_relay_args(&url, &new_args)));
            let idle_kib = rss_kib(dup.child.id());
            Build { label, path: bin, dup, new, idle_kib, peak_kib: idle_kib, results: Vec::new() }
        })
        .collect();
    let bare = bare_bin.as_deref().map(Bare::start);

    // Interleaved: for each figure, run i of the bare server, then run i of every build.
    let mut bare_results = Vec::new();
    for &alerts in &alert_counts {
        let body = payload_with(alerts);
        for &c in &connection_counts {
            let mut bare_runs = Vec::new();
            let mut build_runs: Vec<Vec<(bool, WrkResult)>> = vec![Vec::new(); builds.len()];
            for _ in 0..runs {
                if let Some(b) = &bare {
                    bare_runs.push(wrk(b.addr, &body, c, seconds, false));
                }
                for (i, b) in builds.iter_mut().enumerate() {
                    build_runs[i].push((false, wrk(b.dup.addr, &body, c, seconds, false)));
                    b.peak_kib = b.peak_kib.max(rss_kib(b.dup.child.id()));
                    if let Some(new) = b.new.take() {
                        build_runs[i].push((true, wrk(new.addr, &body, c, seconds, true)));
                        b.peak_kib = b.peak_kib.max(rss_kib(new.child.id()));
                        // Its outbox now holds the run's alerts, waiting for WeCom's budget:
                        // a fresh relay for the next run, as if the storm had been told.
                        drop(new);
                        b.new = Some(start_relay(&b.path, &new_relay_args(&url, &new_args)));
                    }
                }
            }
            bare_results.push(((alerts, c), median(bare_runs)));
            for (b, runs) in builds.iter_mut().zip(build_runs) {
                for unique in [false, true] {
                    let these: Vec<WrkResult> =
                        runs.iter().filter(|(u, _)| *u == unique).map(|(_, r)| *r).collect();
                    if !these.is_empty() {
                        b.results.push(((alerts, c, unique), median(these)));
                    }
                }
            }
        }
    }

    println!(
        "\nwrk -t2 (-t1 at 1 connection), {seconds} s per run, median of {runs} runs; \
         load before/after: see run.sh. `ratio` = relay req/s / bare server req/s, same run.\n"
    );
    println!(
        "| build | alerts | conns | bare req/s | bare p99 | dup req/s | dup p99 | dup ratio | \
         new req/s | new p99 | new ratio | new non-2xx (503) | new accepted/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for b in &builds {
        for ((alerts, c), bare) in &bare_results {
            let get = |unique| {
                b.results
                    .iter()
                    .find(|((a, cc, u), _)| a == alerts && cc == c && *u == unique)
                    .map(|(_, r)| *r)
            };
            let ratio = |r: &WrkResult| {
                if bare.rps > 0.0 {
                    format!("{:.2}", r.rps / bare.rps)
                } else {
                    "-".into()
                }
            };
            let cell = |r: Option<WrkResult>| match r {
                Some(r) => format!("{:.0} | {:.2} ms | {}", r.rps, r.p99_ms, ratio(&r)),
                None => "- | - | -".into(),
            };
            let new = get(true);
            println!(
                "| {} | {alerts} | {c} | {:.0} | {:.2} ms | {} | {} | {} | {} |",
                b.label,
                bare.rps,
                bare.p99_ms,
                cell(get(false)),
                cell(new),
                new.map(|r| r.non_2xx.to_string()).unwrap_or_else(|| "-".into()),
                new.map(|r| format!("{:.0}", r.ok_rps)).unwrap_or_else(|| "-".into()),
            );
        }
    }
    println!(
        "\n| build | RSS idle | RSS peak under load (the new-notification relay holds a run's \
         alerts) | RSS after load (duplicates relay) |"
    );
    println!("|---|---|---|---|");
    for b in &builds {
        let after = rss_kib(b.dup.child.id());
        println!("| {} | {} KiB | {} KiB | {after} KiB |", b.label, b.idle_kib, b.peak_kib);
    }
}
