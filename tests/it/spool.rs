//! Durability with `--state-dir`: kill -9 with a backlog loses nothing; SIGTERM keeps the rest.

use std::time::Duration;

use crate::util::*;

#[test]
fn kill_9_with_a_backlog_loses_nothing() {
    let dir = TempDir::new("kill9");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let args = [
        "--key",
        &fake.url(),
        "--state-dir",
        &state,
        "--retry-initial",
        "20ms",
        "--retry-max",
        "100ms",
        // Durability is under test, not the budget: the backlog (about 25 messages since
        // alerts carry a silence link) must not wait a whole 60 s window.
        "--rate",
        "100/60s",
    ];
    let mut relay = Relay::start(&args);
    let mut expected = Vec::new();
    for i in 0..25 {
        let fp = format!("k{i:02}");
        let long = if i % 5 == 0 { 30 } else { 1 };
        let alerts: Vec<(String, &str)> =
            (0..long).map(|j| (format!("{fp}-{j}"), "firing")).collect();
        let list: Vec<A> = alerts.iter().map(|(f, s)| A(f, s, "Kill9")).collect();
        assert_eq!(relay.post(&payload(&format!("g{i}"), &list)).status, 200);
        expected.extend(alerts.into_iter().map(|(f, s)| (f, s.to_string())));
    }
    wait_until(Duration::from_secs(10), "failures happening", || fake.received().len() >= 3);
    relay.kill9();
    fake.wait_idle();
    assert!(fake.delivered().is_empty());

    fake.set_default(Behave::Ok);
    let relay = Relay::start(&args);
    wait_until(Duration::from_secs(30), "backlog delivered after restart", || {
        let got = fake.delivered_alerts();
        expected.iter().all(|e| got.contains(e))
    });
    // Every message intact: valid markdown JSON within the limit.
    for r in fake.delivered() {
        assert_eq!(r.body["msgtype"], "markdown");
        assert!(!r.content().is_empty() && r.content().len() <= 4096);
    }
    assert!(
        relay.logs().contains("recovered pending notifications from spool robot=default count=25"),
        "{}",
        relay.logs()
    );
    wait_until(Duration::from_secs(10), "spool emptied", || {
        std::fs::read_dir(dir.path().join("queue")).map(|d| d.count()).unwrap_or(1) == 0
    });
}

#[test]
fn sigterm_keeps_undelivered_on_disk_for_the_next_start() {
    let dir = TempDir::new("term");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Errcode(-1));
    let args = [
        "--key",
        &fake.url(),
        "--state-dir",
        &state,
        "--grace",
        "200ms",
        "--retry-initial",
        "20ms",
    ];
    let mut relay = Relay::start(&args);
    assert_eq!(relay.post(&payload("g", &[A("m1", "firing", "Kept")])).status, 200);
    relay.signal("TERM");
    assert!(relay.wait_exit(Duration::from_secs(10)).success());
    assert!(relay.logs().contains("pending messages stay in the spool"), "{}", relay.logs());

    fake.set_default(Behave::Ok);
    let _relay = Relay::start(&args);
    wait_until(Duration::from_secs(10), "delivered after restart", || {
        fake.delivered_alerts().len() == 1
    });
}

/// The relay's segment files in `queue/` (the ledger aside).
fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("queue"))
        .expect("queue dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rec"))
        .collect();
    files.sort();
    files
}

/// Three notifications in flight (WeCom failing), then the relay is killed and its segment
/// edited before the next start; returns once the fake has answered all the dead relay sent.
fn three_queued_then_killed(dir: &TempDir, fake: &FakeWeCom, args: &[&str]) -> Vec<u8> {
    let mut relay = Relay::start(args);
    for i in 0..3 {
        assert_eq!(
            relay.post(&payload(&format!("g{i}"), &[A(&format!("c{i}"), "firing", "C")])).status,
            200
        );
    }
    relay.kill9();
    fake.wait_idle();
    let files = segments(dir.path());
    assert_eq!(files.len(), 1, "one segment: {files:?}");
    std::fs::read(&files[0]).expect("read")
}

#[test]
fn corrupt_spool_file_is_set_aside_and_the_rest_delivered() {
    let dir = TempDir::new("corrupt");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let args = ["--key", &fake.url(), "--state-dir", &state, "--retry-initial", "20ms"];
    let mut bytes = three_queued_then_killed(&dir, &fake, &args);
    // Rot one byte of the second record's body.
    let second = bytes.windows(5).enumerate().filter(|(_, w)| w == b"WXR2 ").nth(1);
    let at = second.expect("a second frame").0 + 100;
    bytes[at] ^= 0x01;
    std::fs::write(&segments(dir.path())[0], &bytes).expect("rot");

    fake.set_default(Behave::Ok);
    let relay = Relay::start(&args);
    wait_until(Duration::from_secs(10), "the two good ones delivered", || {
        fake.delivered_alerts().len() == 2
    });
    let got = fake.delivered_alerts();
    assert!(got.contains(&("c0".into(), "firing".into())), "{got:?}");
    assert!(got.contains(&("c2".into(), "firing".into())), "{got:?}");
    assert!(relay.logs().contains("spool had corrupt files"), "{}", relay.logs());
    assert_eq!(std::fs::read_dir(dir.path().join("corrupt")).map(|d| d.count()).unwrap_or(0), 1);
}

/// kill -9 in the middle of a write leaves the beginning of a frame at the end of the
/// segment: it was never acknowledged, so it is ignored, and nothing before it is lost or
/// set aside.
#[test]
fn a_torn_tail_after_kill_9_loses_nothing_acknowledged() {
    let dir = TempDir::new("torn");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let args = ["--key", &fake.url(), "--state-dir", &state, "--retry-initial", "20ms"];
    let mut bytes = three_queued_then_killed(&dir, &fake, &args);
    // Half a frame written after the data, over the zeros written ahead of it.
    let second = bytes.windows(5).enumerate().filter(|(_, w)| w == b"WXR2 ").nth(1);
    let half = bytes[..second.expect("a second frame").0 / 2].to_vec();
    let end = bytes.iter().rposition(|&b| b != 0).expect("data") + 1;
    bytes.truncate(end);
    bytes.extend(half);
    bytes.resize(bytes.len().max(1 << 20), 0);
    std::fs::write(&segments(dir.path())[0], &bytes).expect("tear");

    fake.set_default(Behave::Ok);
    let relay = Relay::start(&args);
    wait_until(Duration::from_secs(10), "the three delivered", || {
        fake.delivered_alerts().len() == 3
    });
    assert!(relay.logs().contains("ends in a partial record"), "{}", relay.logs());
    assert!(!relay.logs().contains("corrupt"), "{}", relay.logs());
    assert_eq!(std::fs::read_dir(dir.path().join("corrupt")).map(|d| d.count()).unwrap_or(9), 0);
    wait_until(Duration::from_secs(10), "spool emptied", || {
        std::fs::read_dir(dir.path().join("queue")).map(|d| d.count()).unwrap_or(1) == 0
    });
}

/// kill -9 while many clients post at once (group commit batches in flight): every
/// notification answered 200 before the kill is delivered after the restart.
#[test]
fn kill_9_during_concurrent_intake_loses_no_acknowledged_notification() {
    let dir = TempDir::new("kill9-busy");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let args =
        ["--key", &fake.url(), "--state-dir", &state, "--retry-initial", "1s", "--rate", "600/60s"];
    let mut relay = Relay::start(&args);
    let addr = relay.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                // Bounded: at most 500 posts per client.
                for i in 0..500 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let fp = format!("b{c}-{i}");
                    let body = payload(&format!("g{c}-{i}"), &[A(&fp, "firing", "Busy")]);
                    match raw_post(addr, &body) {
                        Some(200) => acked.push(fp),
                        Some(_) | None => break,
                    }
                }
                acked
            })
        })
        .collect();
    wait_until(Duration::from_secs(20), "a hundred or so written", || {
        let frames = |p: &std::path::PathBuf| {
            std::fs::read(p).map_or(0, |b| b.windows(5).filter(|w| w == b"WXR2 ").count())
        };
        segments(dir.path()).iter().map(frames).sum::<usize>() >= 100
    });
    relay.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<String> = clients.into_iter().flat_map(|c| c.join().expect("client")).collect();
    assert!(acked.len() > 50, "{}", acked.len());

    fake.wait_idle();
    fake.set_default(Behave::Ok);
    let _relay = Relay::start(&args);
    wait_until(Duration::from_secs(60), "every acknowledged notification delivered", || {
        let got: std::collections::HashSet<String> =
            fake.delivered_alerts().into_iter().map(|(fp, _)| fp).collect();
        acked.iter().all(|fp| got.contains(fp))
    });
}

/// One POST that reports a failure instead of panicking (the relay may be killed meanwhile).
fn raw_post(addr: std::net::SocketAddr, body: &[u8]) -> Option<u16> {
    let mut raw = format!(
        "POST /alertinfo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw).ok().map(|r| r.status)
}
