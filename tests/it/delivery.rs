//! Delivery against a misbehaving fake WeCom: retries, rate budget, packing, dedup,
//! supersede, backpressure, drain on SIGTERM. "Delivered" means answered errcode 0 in time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::util::*;

/// Fast settings so retry and budget behaviour shows up within seconds.
const FAST: &[&str] = &["--retry-initial", "20ms", "--retry-max", "200ms", "--timeout", "500ms"];

fn counts(alerts: &[(String, String)]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for a in alerts {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    m
}

fn assert_exactly_once(fake: &FakeWeCom, expected: &[(String, String)]) {
    let got = counts(&fake.delivered_alerts());
    for e in expected {
        assert_eq!(got.get(e).copied().unwrap_or(0), 1, "{e:?} delivered {:?} times", got.get(e));
    }
    assert_eq!(got.len(), expected.len(), "unexpected extra alerts: {got:?}");
}

#[test]
fn every_alert_survives_a_storm_of_failures_exactly_once() {
    let fake = FakeWeCom::start();
    fake.script([
        Behave::Errcode(45009),
        Behave::Errcode(-1),
        Behave::Http(500),
        Behave::Http(502),
        Behave::Garbage,
        Behave::Hang(Duration::from_millis(1500)),
        Behave::Errcode(45033),
        Behave::Errcode(45009),
    ]);
    let mut args = vec!["--key".to_string(), fake.url(), "--rate".into(), "20/2s".into()];
    args.extend(FAST.iter().map(|s| s.to_string()));
    let relay = Relay::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut expected = Vec::new();
    for i in 0..30 {
        let fp = format!("s{i:02}");
        assert_eq!(
            relay.post(&payload(&format!("g{i}"), &[A(&fp, "firing", "Storm")])).status,
            200
        );
        expected.push((fp, "firing".to_string()));
    }
    wait_until(Duration::from_secs(60), "all 30 alerts delivered", || {
        fake.delivered_alerts().len() >= 30
    });
    assert_exactly_once(&fake, &expected);
    let logs = relay.logs();
    assert!(logs.contains("errcode=45009"), "{logs}");
    // Logged when the failure changes, not once per attempt.
    assert!(logs.matches("send failed, will retry").count() <= 8, "{logs}");
}

#[test]
fn connection_refused_for_a_while_then_delivered() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/cgi-bin/webhook/send?key={SECRET}");
    let mut args = vec!["--key", &url];
    args.extend(FAST);
    let relay = Relay::start(&args);
    for i in 0..3 {
        assert_eq!(
            relay
                .post(&payload(&format!("g{i}"), &[A(&format!("r{i}"), "firing", "Refused")]))
                .status,
            200
        );
    }
    wait_until(Duration::from_secs(10), "refusal logged", || relay.logs().contains("class=retry"));
    let fake = FakeWeCom::start_at(port);
    wait_until(Duration::from_secs(10), "delivered after the server came up", || {
        fake.delivered_alerts().len() >= 3
    });
    let expected: Vec<_> = (0..3).map(|i| (format!("r{i}"), "firing".to_string())).collect();
    assert_exactly_once(&fake, &expected);
    // Logged once the relay has read the answer, a moment after the fake counted it.
    wait_until(Duration::from_secs(5), "recovery logged", || {
        relay.logs().contains("delivery recovered")
    });
}

#[test]
fn permanent_errors_are_dropped_not_retried_forever() {
    let fake = FakeWeCom::start();
    fake.script([Behave::Errcode(93000), Behave::Http(404)]);
    let mut args = vec!["--key".to_string(), fake.url(), "--rate".into(), "1/1s".into()];
    args.extend(FAST.iter().map(|s| s.to_string()));
    let relay = Relay::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // One at a time, so each is its own message rather than merged with the next.
    for i in 0..3 {
        assert_eq!(
            relay.post(&payload(&format!("g{i}"), &[A(&format!("p{i}"), "firing", "Perm")])).status,
            200
        );
        wait_until(Duration::from_secs(10), "message sent", || fake.received().len() == i + 1);
    }
    wait_until(Duration::from_secs(10), "third delivered", || fake.delivered().len() == 1);
    assert_eq!(fake.received().len(), 3, "each permanent failure tried once");
    assert_eq!(fake.delivered_alerts(), vec![("p2".to_string(), "firing".to_string())]);
    let logs = relay.logs();
    assert_eq!(logs.matches("message dropped").count(), 2, "{logs}");
    assert!(logs.contains("hint=\"the key is wrong"), "{logs}");
}

/// No window of the configured length may ever hold more sends than the budget, even though
/// the backlog is far larger, and the budget is used: the first burst goes out at once.
#[test]
fn burst_is_paced_within_budget_and_packed() {
    // A budget of 20 per 2 s drains about 100 notifications a second, far slower than even a
    // loaded machine posts them, so a backlog builds and packing shows.
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--rate", "20/2s", "--dedup-window", "0"]);
    let started = Instant::now();
    let mut expected = Vec::new();
    for i in 0..1000 {
        let fp = format!("b{i:03}");
        let r = relay.post(&payload(&format!("burst{i}"), &[A(&fp, "firing", "Burst")]));
        assert_eq!(r.status, 200);
        expected.push((fp, "firing".to_string()));
    }
    wait_until(Duration::from_secs(60), "burst delivered", || {
        fake.delivered_alerts().len() >= 1000
    });
    assert_exactly_once(&fake, &expected);

    let got = fake.received();
    let window = Duration::from_secs(2);
    for (i, r) in got.iter().enumerate() {
        let in_window = got[i..].iter().take_while(|s| s.at.duration_since(r.at) < window).count();
        assert!(in_window <= 20, "{in_window} sends within {window:?}");
    }
    // Packing: the first budget's worth goes out at once as notifications arrive; after that
    // a backlog waits for budget, and every message but the last could not have taken the
    // next notification as well (the sender merges greedily in arrival order).
    let sizes: Vec<usize> = got.iter().map(|r| r.content().len()).collect();
    assert!(sizes.iter().all(|&s| s <= 4096), "{sizes:?}");
    let one = got[0].content().split("\n\n## ").next().map_or(0, str::len);
    for s in &sizes[20..sizes.len() - 1] {
        assert!(
            s + 2 + one > 4096,
            "a message of {s} bytes had room for another notification: {sizes:?}"
        );
    }
    // Order: arrival order is kept across messages.
    let order: Vec<String> = fake.delivered_alerts().into_iter().map(|(fp, _)| fp).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "delivered out of arrival order");
    let _ = started;
}

#[test]
fn duplicates_within_the_window_are_sent_once() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let firing = payload("dup", &[A("d1", "firing", "Dup")]);
    let r1 = relay.post(&firing);
    let r2 = relay.post(&firing);
    assert_eq!((r1.status, r2.status), (200, 200));
    assert_eq!(r2.json()["status"], "duplicate");
    wait_until(Duration::from_secs(10), "first delivered", || fake.delivered().len() == 1);
    // The resolved is sent once; its copy from the HA peer is not (issue #14: the group was
    // already told this state). 1.0 sent every resolved twice.
    let resolved = payload("dup", &[A("d1", "resolved", "Dup")]);
    assert_eq!(relay.post(&resolved).json()["status"], "queued");
    wait_until(Duration::from_secs(10), "resolved delivered", || fake.delivered().len() == 2);
    assert_eq!(relay.post(&resolved).json()["status"], "duplicate");
    // The stale firing of a lagging peer after the resolved is not sent either.
    assert_eq!(relay.post(&firing).json()["status"], "duplicate");
    assert!(
        relay.metrics().contains("weixin_robot_dedup_hits_total{robot=\"default\"} 3"),
        "{}",
        relay.metrics()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fake.delivered().len(), 2);

    // --dedup-window 0 disables it.
    let fake2 = FakeWeCom::start();
    let relay2 = Relay::start(&["--key", &fake2.url(), "--dedup-window", "0"]);
    assert_eq!(relay2.post(&firing).json()["status"], "queued");
    wait_until(Duration::from_secs(10), "first delivered", || fake2.delivered().len() == 1);
    // Settled by the relay too (a moment after the fake counted it): an identical state still
    // pending is merged with it, whatever the window.
    wait_until(Duration::from_secs(10), "outbox empty", || {
        relay2.metrics().contains("weixin_robot_outbox_messages{robot=\"default\"} 0")
    });
    assert_eq!(relay2.post(&firing).json()["status"], "queued");
    wait_until(Duration::from_secs(10), "second delivered", || fake2.delivered().len() == 2);
}

#[test]
fn resolved_overtakes_queued_firing_for_the_same_alerts() {
    let fake = FakeWeCom::start();
    // The first send hangs past the timeout, so what comes next queues up behind it.
    fake.script([Behave::Hang(Duration::from_millis(1500))]);
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--timeout",
        "1s",
        "--retry-initial",
        "50ms",
        "--rate",
        "1/500ms",
    ]);
    assert_eq!(relay.post(&payload("other", &[A("o1", "firing", "Other")])).status, 200);
    wait_until(Duration::from_secs(10), "first send in flight", || fake.received().len() == 1);
    assert_eq!(
        relay.post(&payload("g", &[A("x1", "firing", "X"), A("x2", "firing", "X")])).status,
        200
    );
    let r = relay.post(&payload("g", &[A("x1", "resolved", "X"), A("x2", "firing", "X")]));
    assert_eq!(r.status, 200);
    wait_until(Duration::from_secs(20), "resolved delivered", || {
        fake.delivered_alerts().contains(&("x1".into(), "resolved".into()))
    });
    let alerts = fake.delivered_alerts();
    assert!(!alerts.contains(&("x1".into(), "firing".into())), "stale firing was sent: {alerts:?}");
    assert_exactly_once(
        &fake,
        &[("o1", "firing"), ("x1", "resolved"), ("x2", "firing")]
            .map(|(f, s)| (f.to_string(), s.to_string())),
    );
    assert!(relay.metrics().contains("weixin_robot_superseded_total{robot=\"default\"} 1"));
}

#[test]
fn full_outbox_answers_503_and_drops_nothing_it_accepted() {
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let mut args = vec!["--key".to_string(), fake.url(), "--queue-max-messages".into(), "3".into()];
    args.extend(FAST.iter().map(|s| s.to_string()));
    let relay = Relay::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..6 {
        let fp = format!("q{i}");
        let r = relay.post(&payload(&format!("g{i}"), &[A(&fp, "firing", "Full")]));
        match r.status {
            200 => accepted.push((fp, "firing".to_string())),
            503 => {
                refused += 1;
                assert_eq!(r.header("Retry-After"), Some("30"));
                assert!(r.body.contains("outbox is full"), "{}", r.body);
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((accepted.len(), refused), (3, 3));
    assert_eq!(get(relay.addr, "/-/ready").status, 503, "not ready while full");
    fake.set_default(Behave::Ok);
    wait_until(Duration::from_secs(20), "accepted delivered", || {
        fake.delivered_alerts().len() >= 3
    });
    assert_exactly_once(&fake, &accepted);
    // WeCom's answer comes before the relay settles the last message: poll.
    wait_until(Duration::from_secs(5), "ready again", || get(relay.addr, "/-/ready").status == 200);
}

#[test]
fn sigterm_drains_then_exits() {
    let fake = FakeWeCom::start();
    let mut relay = Relay::start(&["--key", &fake.url(), "--rate", "2/1s", "--grace", "10s"]);
    for i in 0..5 {
        assert_eq!(
            relay.post(&payload(&format!("g{i}"), &[A(&format!("t{i}"), "firing", "Term")])).status,
            200
        );
    }
    relay.signal("TERM");
    let status = relay.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert_eq!(fake.delivered_alerts().len(), 5);
    assert!(relay.logs().contains("outbox drained"), "{}", relay.logs());
}

#[test]
fn sigterm_without_spool_reports_what_is_lost() {
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(503));
    let mut args = vec!["--key".to_string(), fake.url(), "--grace".into(), "300ms".into()];
    args.extend(FAST.iter().map(|s| s.to_string()));
    let mut relay = Relay::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(relay.post(&payload("g", &[A("l1", "firing", "Lost")])).status, 200);
    relay.signal("INT");
    let status = relay.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    let logs = relay.logs();
    assert!(
        logs.contains("pending messages are lost (no --state-dir) robot=default messages=1"),
        "{logs}"
    );
}
