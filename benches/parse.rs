//! `alertmanager::parse` alone, on the 1- and 50-alert payloads of `benches/intake.rs`: time per
//! parse, for the instruction counts in BENCHMARKS.md run it under
//! `valgrind --tool=callgrind` (deterministic, unlike time on a shared machine). Asserts nothing.
//! `cargo bench --bench parse`; PARSE_ITERATIONS sets the count (default 20,000).

#[allow(dead_code)]
#[path = "../src/alertmanager.rs"]
mod alertmanager;
#[allow(dead_code)]
#[path = "../src/time.rs"]
mod time;
#[path = "../tests/it/util.rs"]
mod util;

use std::time::Instant;

use util::{payload, A};

fn main() {
    let iterations: u32 =
        std::env::var("PARSE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    for alerts in [1usize, 50] {
        let list: Vec<(String, String)> =
            (0..alerts).map(|i| (format!("fp-{i}"), format!("BenchAlert{i}"))).collect();
        let a: Vec<A> = list.iter().map(|(fp, name)| A(fp, "firing", name)).collect();
        let body = payload("bench", &a);
        let t = Instant::now();
        let mut labels = 0;
        for _ in 0..iterations {
            match alertmanager::parse(std::hint::black_box(&body)) {
                Ok(p) => labels += p.alerts.iter().map(|a| a.labels.0.len()).sum::<usize>(),
                Err(e) => panic!("bench payload rejected: {e}"),
            }
        }
        let per = t.elapsed() / iterations;
        println!(
            "parse, {alerts} alert(s), {} bytes: {per:?} per parse ({labels} labels seen)",
            body.len()
        );
    }
}
