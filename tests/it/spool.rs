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

#[test]
fn corrupt_spool_file_is_set_aside_and_the_rest_delivered() {
    let dir = TempDir::new("corrupt");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let args = ["--key", &fake.url(), "--state-dir", &state, "--retry-initial", "20ms"];
    let mut relay = Relay::start(&args);
    for i in 0..3 {
        assert_eq!(
            relay.post(&payload(&format!("g{i}"), &[A(&format!("c{i}"), "firing", "C")])).status,
            200
        );
    }
    relay.kill9();
    let mut files: Vec<_> = std::fs::read_dir(dir.path().join("queue"))
        .expect("queue dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    let bytes = std::fs::read(&files[1]).expect("read");
    std::fs::write(&files[1], &bytes[..bytes.len() / 2]).expect("truncate");

    fake.set_default(Behave::Ok);
    let relay = Relay::start(&args);
    wait_until(Duration::from_secs(10), "the two good ones delivered", || {
        fake.delivered_alerts().len() == 2
    });
    assert!(relay.logs().contains("spool had corrupt files"), "{}", relay.logs());
    assert_eq!(std::fs::read_dir(dir.path().join("corrupt")).map(|d| d.count()).unwrap_or(0), 1);
}
