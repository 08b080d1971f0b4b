//! Memory and latency while 1,000 connections sit idle or trickle a request head: the relay's
//! RSS before, during and after, and how long a normal alert takes to be accepted meanwhile.
//! Release binary, fake WeCom on loopback. `cargo bench --bench slowloris`; asserts nothing.

#[path = "../tests/it/util.rs"]
mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::*;

fn main() {
    let held: usize =
        std::env::var("SLOWLORIS_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--request-timeout", "60s"]);
    let pid = relay.child.id();
    let idle = rss_kib(pid);

    let mut conns = Vec::new();
    for i in 0..held {
        let mut s = TcpStream::connect(relay.addr).expect("connect");
        if i % 2 == 1 {
            let _ = s.write_all(b"POST /alertinfo HTTP/1.1\r\nX-Slow: ");
        }
        conns.push(s);
    }
    wait_until(Duration::from_secs(30), "connections registered", || {
        relay.metrics().contains(&format!("weixin_robot_connections {}\n", held + 1))
    });
    for s in conns.iter_mut().skip(1).step_by(2) {
        let _ = s.write_all(b"x");
    }
    let mut latencies = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let r = relay
            .post(&payload(&format!("held{i}"), &[A(&format!("h{i}"), "firing", "WhileHeld")]));
        latencies.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    let during = rss_kib(pid);
    drop(conns);
    wait_until(Duration::from_secs(30), "connections released", || {
        relay.metrics().contains("weixin_robot_connections 1\n")
    });
    let after = rss_kib(pid);
    latencies.sort();
    println!("slowloris: {held} connections held (half idle, half trickling a head)");
    println!("  RSS idle                   {idle} KiB");
    println!(
        "  RSS while held             {during} KiB ({:.1} KiB per connection)",
        (during.saturating_sub(idle)) as f64 / held as f64
    );
    println!("  RSS after release          {after} KiB");
    println!(
        "  normal alert accepted in   median {:?}, max {:?} (20 posts)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}
