//! Delivery packing for a burst of 1,000 alerts: messages sent, bytes per message, time to the
//! first message, time to drain, alerts lost. Runs the release binary against the fake WeCom
//! from the integration tests, at a fast test rate (`BURST_RATE`, default 20/1s).
//!
//! `cargo bench --bench burst` prints the figures; it asserts nothing about speed.

#[path = "../tests/it/util.rs"]
mod util;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use util::*;

fn main() {
    let rate = std::env::var("BURST_RATE").unwrap_or_else(|_| "20/1s".into());
    let alerts: usize =
        std::env::var("BURST_ALERTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--rate", &rate, "--dedup-window", "0"]);

    let started = Instant::now();
    for i in 0..alerts {
        let fp = format!("b{i:04}");
        let r = relay.post(&payload(&format!("burst{i}"), &[A(&fp, "firing", "BurstAlert")]));
        assert_eq!(r.status, 200);
    }
    let posted = started.elapsed();
    wait_until(Duration::from_secs(600), "burst delivered", || {
        fake.delivered_alerts().len() >= alerts
    });
    let drained = started.elapsed();

    let got = fake.received();
    let sizes: Vec<usize> = got.iter().map(|r| r.content().len()).collect();
    let unique: HashSet<_> = fake.delivered_alerts().into_iter().collect();
    let first = got.first().map(|r| r.at.duration_since(started)).unwrap_or_default();
    let total: usize = sizes.iter().sum();
    let budget: usize = rate.split('/').next().and_then(|n| n.parse().ok()).unwrap_or(20);
    // Messages sent while a backlog waited for budget (after the first budget's worth, before
    // the last): the ones packing is about.
    let backlog =
        if sizes.len() > budget + 1 { &sizes[budget..sizes.len() - 1] } else { &sizes[..] };
    let backlog_mean = backlog.iter().sum::<usize>() as f64 / backlog.len().max(1) as f64;
    let mut sorted = sizes.clone();
    sorted.sort_unstable();

    println!("burst: {alerts} alerts, one per notification, rate {rate}");
    println!("  accepted (all 200) in      {posted:?}");
    println!("  time to first message      {first:?}");
    println!("  time to drain              {drained:?}");
    println!("  messages sent              {}", sizes.len());
    println!("  alerts per message         {:.1}", alerts as f64 / sizes.len().max(1) as f64);
    println!(
        "  bytes per message          mean {:.0}, min {}, median {}, max {}",
        total as f64 / sizes.len().max(1) as f64,
        sorted.first().unwrap_or(&0),
        sorted.get(sorted.len() / 2).unwrap_or(&0),
        sorted.last().unwrap_or(&0)
    );
    println!(
        "  backlog messages           {} at mean {:.0} bytes = {:.1}% of 4096",
        backlog.len(),
        backlog_mean,
        backlog_mean / 40.96
    );
    println!("  alerts lost                {}", alerts - unique.len().min(alerts));
    println!("  duplicates                 {}", fake.delivered_alerts().len() - unique.len());
}
