//! Intake speed, memory and start-up of the relay, driven by `wrk` over loopback, with the
//! fake WeCom server from the integration tests receiving deliveries. Prints markdown tables;
//! asserts nothing. Run through `benches/run.sh` (which builds the static binary and sets
//! WEIXIN_ROBOT_BIN) or directly: `cargo bench --bench intake`.

#[path = "../tests/it/util.rs"]
mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

struct WrkResult {
    rps: String,
    p50: String,
    p99: String,
    non_2xx: String,
}

/// Runs wrk with a Lua script that posts `body` (and, when `unique`, rewrites the group key and
/// fingerprints per request so no two notifications are alike).
fn wrk(
    addr: std::net::SocketAddr,
    body: &str,
    connections: u32,
    seconds: u32,
    unique: bool,
) -> WrkResult {
    let dir = std::env::temp_dir().join(format!("wxr-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let body_path = dir.join("body.json");
    std::fs::write(&body_path, body).expect("body");
    let script = dir.join("post.lua");
    let lua = format!(
        r#"
local f = io.open("{}", "r")
local template = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = template
local n = 0
local unique = {unique}
request = function()
  if unique then
    n = n + 1
    local id = tostring(math.random(1, 1000000000)) .. "-" .. n
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
        .args([
            "-t",
            &threads,
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{addr}/alertinfo"))
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let find = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(prefix)
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| "-".into())
    };
    WrkResult {
        rps: find("Requests/sec:"),
        p50: find("50%"),
        p99: find("99%"),
        non_2xx: find("Non-2xx or 3xx responses:").replace('-', "0"),
    }
}

fn payload_with(alerts: usize) -> String {
    let list: Vec<(String, String)> =
        (0..alerts).map(|i| (format!("UNIQ-{i}"), format!("BenchAlert{i}"))).collect();
    let a: Vec<A> = list.iter().map(|(fp, name)| A(fp, "firing", name)).collect();
    String::from_utf8(payload("bench-UNIQ", &a)).expect("utf8")
}

/// One table: 1- and 50-alert payloads at 1, 16 and 64 connections. Returns the peak RSS.
fn table(relay: &Relay, seconds: u32, unique: bool, non_2xx: &str) -> u64 {
    println!(
        "| alerts/notification | connections | req/s | p50 | p99 | {non_2xx} | RSS after run |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut peak = 0;
    for alerts in [1usize, 50] {
        let body = payload_with(alerts);
        for c in [1u32, 16, 64] {
            let r = wrk(relay.addr, &body, c, seconds, unique);
            let rss = rss_kib(relay.child.id());
            peak = peak.max(rss);
            println!(
                "| {alerts} | {c} | {} | {} | {} | {} | {rss} KiB |",
                r.rps, r.p50, r.p99, r.non_2xx
            );
        }
    }
    peak
}

fn main() {
    let seconds: u32 =
        std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let bin = std::env::var("WEIXIN_ROBOT_BIN").unwrap_or_else(|_| BIN.to_string());
    println!("binary: {bin} ({} bytes)", std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0));

    // Start-up: spawn to first 200 on /healthz, best of 10.
    let mut startups = Vec::new();
    for _ in 0..10 {
        let port = free_port();
        let t = Instant::now();
        let mut child = relay_command()
            .args(["--dry-run", "--listen", "127.0.0.1", "--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
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
    println!(
        "\nstart-up to first 200 on /healthz: best {:?}, median {:?}",
        startups[0],
        startups[startups.len() / 2]
    );

    let fake = FakeWeCom::start();
    // Delivery on, real defaults (dedup 5m, rate 20/60s), logs at info as shipped.
    let relay = Relay::start(&["--key", &fake.url()]);
    let pid = relay.child.id();
    let idle = rss_kib(pid);
    println!("\nRSS idle: {idle} KiB");
    println!("\n### Same notification repeated (HA duplicates: parse, hash, answer 200)\n");
    let mut peak = table(&relay, seconds, false, "non-2xx").max(idle);
    drop(relay);

    // Every notification new: parse, render, split, enqueue, then packed and sent to the fake
    // as fast as it takes them (budget lifted). 503s show where the outbox filled up.
    let relay = Relay::start(&["--key", &fake.url(), "--rate", "1000000/1s"]);
    let pid = relay.child.id();
    println!("\n### Every notification new (rendered, queued, delivered to the fake)\n");
    peak = peak.max(table(&relay, seconds, true, "non-2xx (503: outbox full)"));
    wait_until(Duration::from_secs(120), "outbox drained", || {
        relay.metrics().contains("weixin_robot_outbox_messages{robot=\"default\"} 0")
    });
    std::thread::sleep(Duration::from_secs(1));
    println!("\nRSS peak under load: {peak} KiB; after the outbox drained: {} KiB", rss_kib(pid));
}
