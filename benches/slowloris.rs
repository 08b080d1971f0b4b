//! Memory and `/healthz` latency under each hostile client of issue 20: the relay's RSS before,
//! at its peak during and after each attack, and how long a fresh-connection `/healthz` probe
//! (what a kubelet does) takes meanwhile. Release binary, fake WeCom on loopback, 127.0.0.1
//! only, every loop bounded in count and time. `cargo bench --bench slowloris`; asserts
//! nothing. `SLOWLORIS_ONLY=name` runs one attack.
//!
//! Attacks: `slowloris` (1,000 connections idle or trickling a head), `pipeliner` (4
//! connections pipelining requests, never reading, 3 s), `slow-bodies` (200 connections each
//! sending a 4 MiB body but its last byte), `big-posts` (8 clients × 20 fresh connections
//! posting 200 KB notifications), `unique` (20,000 unique notifications with
//! `--dedup-max-entries 5000`).

#[path = "../tests/it/util.rs"]
mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::*;

/// Probes `/healthz` on fresh connections every 50 ms until `done`, tracking peak RSS.
fn probe(relay: &Relay, done: &AtomicBool) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut peak = rss_kib(relay.child.id());
    let started = Instant::now();
    while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        let ok = raw_request(relay.addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            .is_ok_and(|r| r.status == 200);
        latencies.push(if ok { t.elapsed() } else { Duration::from_secs(99) });
        peak = peak.max(rss_kib(relay.child.id()));
        std::thread::sleep(Duration::from_millis(50));
    }
    (latencies, peak)
}

fn report(name: &str, what: &str, idle: u64, peak: u64, after: u64, mut lat: Vec<Duration>) {
    lat.sort();
    let (median, max) = if lat.is_empty() {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (lat[lat.len() / 2], lat[lat.len() - 1])
    };
    println!("{name}: {what}");
    println!(
        "  RSS idle {idle} KiB, peak {peak} KiB, after {after} KiB; /healthz median {median:?}, max {max:?} ({} probes)",
        lat.len()
    );
    println!(
        "  | {name} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0,
        median.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
}

/// Runs `attack` on a thread while probing; returns what the attack said about itself.
fn run(name: &str, args: &[&str], attack: impl FnOnce(SocketAddr) -> String + Send + 'static) {
    let only = std::env::var("SLOWLORIS_ONLY").ok();
    if only.as_deref().is_some_and(|o| o != name) {
        return;
    }
    let fake = FakeWeCom::start();
    let mut all = vec!["--key".to_string(), fake.url()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let relay = Relay::start(&all);
    std::thread::sleep(Duration::from_millis(200));
    let idle = rss_kib(relay.child.id());
    let done = Arc::new(AtomicBool::new(false));
    let (addr, d) = (relay.addr, Arc::clone(&done));
    let worker = std::thread::spawn(move || {
        let what = attack(addr);
        d.store(true, Ordering::Relaxed);
        what
    });
    let (lat, peak) = probe(&relay, &done);
    let what = worker.join().unwrap_or_else(|_| "attack thread panicked".into());
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(relay.child.id());
    report(name, &what, idle, peak, after, lat);
    let metrics = relay.metrics();
    let of = |m: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(m)?.strip_prefix(' '))
            .unwrap_or("?")
            .to_string()
    };
    println!(
        "  dedup entries {}, dedup evictions {}",
        of("weixin_robot_dedup_entries"),
        of("weixin_robot_dedup_evictions_total")
    );
}

fn post_raw(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let head = format!("POST /alertinfo HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes())?;
    s.write_all(body)
}

fn main() {
    println!("| attack | RSS idle MiB | RSS peak MiB | RSS after MiB | /healthz median ms | /healthz max ms |");
    println!("|---|---|---|---|---|---|");

    let held: usize =
        std::env::var("SLOWLORIS_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    run("slowloris", &["--request-timeout", "60s"], move |addr| {
        let mut conns = Vec::new();
        for i in 0..held {
            let Ok(mut s) = TcpStream::connect(addr) else { continue };
            if i % 2 == 1 {
                let _ = s.write_all(b"POST /alertinfo HTTP/1.1\r\nX-Slow: ");
            }
            conns.push(s);
        }
        for s in conns.iter_mut().skip(1).step_by(2) {
            let _ = s.write_all(b"x");
        }
        std::thread::sleep(Duration::from_secs(3));
        format!("{} connections held 3 s (half idle, half trickling a head)", conns.len())
    });

    run("pipeliner", &["--request-timeout", "60s"], |addr| {
        let sent = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let sent = Arc::clone(&sent);
                std::thread::spawn(move || {
                    let Ok(mut s) = TcpStream::connect(addr) else { return };
                    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                    let burst = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
                    let started = Instant::now();
                    while started.elapsed() < Duration::from_secs(3) {
                        match s.write(&burst) {
                            Ok(n) => {
                                sent.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        format!(
            "4 connections pipelining /healthz for 3 s, never reading ({} MB of requests taken)",
            sent.load(Ordering::Relaxed) >> 20
        )
    });

    run("slow-bodies", &["--request-timeout", "60s"], |addr| {
        let len = 4usize << 20;
        let mut conns: Vec<(TcpStream, usize)> = (0..200)
            .filter_map(|_| {
                let mut s = TcpStream::connect(addr).ok()?;
                s.set_write_timeout(Some(Duration::from_millis(20))).ok()?;
                let head = format!("POST /alertinfo HTTP/1.1\r\nContent-Length: {len}\r\n\r\n");
                s.write_all(head.as_bytes()).ok()?;
                Some((s, 0))
            })
            .collect();
        let chunk = vec![b' '; 64 << 10];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let mut progress = false;
            for (s, sent) in conns.iter_mut() {
                if *sent == usize::MAX || *sent >= len - 1 {
                    continue;
                }
                match s.write(&chunk[..chunk.len().min(len - 1 - *sent)]) {
                    Ok(w) => {
                        *sent += w;
                        progress = true;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => *sent = usize::MAX,
                }
            }
            if !progress {
                break;
            }
        }
        let refused = conns.iter().filter(|(_, s)| *s == usize::MAX).count();
        std::thread::sleep(Duration::from_secs(1));
        format!("200 connections × 4 MiB body minus one byte; {refused} answered 503 and closed")
    });

    run("big-posts", &[], |addr| {
        let body = {
            let fps: Vec<String> = (0..550).map(|i| format!("big-{i:05}")).collect();
            let alerts: Vec<A> = fps.iter().map(|fp| A(fp, "firing", "BigGroup")).collect();
            Arc::new(payload("big", &alerts))
        };
        let kb = body.len() / 1000;
        let refused = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let (body, refused) = (Arc::clone(&body), Arc::clone(&refused));
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        if post(addr, "/alertinfo", &body).status != 200 {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            let _ = c.join();
        }
        format!(
            "8 clients × 20 fresh connections posting {kb} KB notifications in {:?}: {} refused",
            started.elapsed(),
            refused.load(Ordering::Relaxed)
        )
    });

    run("unique", &["--dedup-max-entries", "5000", "--queue-max-messages", "100000"], |addr| {
        let started = Instant::now();
        let clients: Vec<_> = (0..4)
            .map(|c| {
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        let fp = format!("u{c}-{i}");
                        let _ = post_raw_alert(addr, &fp);
                    }
                })
            })
            .collect();
        for c in clients {
            let _ = c.join();
        }
        format!(
            "20,000 unique one-alert notifications from 4 clients in {:?}, --dedup-max-entries 5000",
            started.elapsed()
        )
    });
}

fn post_raw_alert(addr: SocketAddr, fp: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    post_raw(&mut s, &payload(fp, &[A(fp, "firing", "Unique")]))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    read_response(&mut s).map(|_| ())
}
