//! Outbox v2 (issue #14): alert state is queued and messages are composed at send time, so no
//! reload, restart, upgrade or refused message loses or repeats an accepted alert. Also the
//! outbox's part of issue #20 (items 2, 5, 7, 10 and idle `?key=` robots).
//! <https://github.com/weixin-robot/weixin-robot/issues/14>

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::util::*;

fn write_config(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("config");
    path.to_str().expect("utf8").to_string()
}

fn counts(alerts: &[(String, String)]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for a in alerts {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    m
}

fn alerts(prefix: &str, n: usize, status: &str) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("{prefix}{i:02}"), status.to_string())).collect()
}

fn body(group: &str, list: &[(String, String)], name: &str) -> Vec<u8> {
    let a: Vec<A> = list.iter().map(|(f, s)| A(f, s, name)).collect();
    payload(group, &a)
}

/// Every expected alert delivered exactly once, nothing else.
fn assert_exactly_once(fake: &FakeWeCom, expected: &[(String, String)]) {
    let got = counts(&fake.delivered_alerts());
    for e in expected {
        assert_eq!(got.get(e).copied().unwrap_or(0), 1, "{e:?} delivered {:?} times", got.get(e));
    }
    assert_eq!(got.len(), expected.len(), "unexpected extra alerts: {got:?}");
}

fn queue_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("queue")).map(|d| d.count()).unwrap_or(0)
}

/// Issue #14: three 10-alert notifications (≈3.9 KB of markdown each) wait behind the budget
/// when a reload switches the robot to `text` (2,048 bytes) and then to a template: 1.0 sent the
/// markdown-sized pieces as text and WeCom refused 16 of 30 alerts. Now every alert arrives,
/// in the type and layout in force when it is sent, and WeCom refuses nothing.
#[test]
fn reload_changing_msgtype_and_template_loses_nothing() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("reload-msgtype");
    let robot =
        |extra: &str| format!("[robots.ops]\nkey = \"{}\"\nrate = \"1/2s\"\n{extra}", fake.url());
    let config = write_config(&dir, &robot(""));
    let relay = Relay::start(&["--config", &config]);
    let mut expected = Vec::new();
    for g in 0..3 {
        let list = alerts(&format!("m{g}-"), 10, "firing");
        assert_eq!(relay.post(&body(&format!("g{g}"), &list, "Reload")).status, 200);
        expected.extend(list);
    }
    // The first message went out at once as markdown; the rest wait for budget.
    wait_until(Duration::from_secs(10), "first send", || !fake.received().is_empty());
    write_config(&dir, &robot("msgtype = \"text\"\n"));
    relay.signal("HUP");
    wait_until(Duration::from_secs(10), "reload", || {
        relay.logs().contains("configuration reloaded (SIGHUP)")
    });
    wait_until(Duration::from_secs(60), "every alert delivered", || {
        let got = fake.delivered_alerts();
        expected.iter().all(|e| got.contains(e))
    });
    let refused: Vec<String> =
        fake.received().iter().filter(|r| !r.delivered).map(|r| r.answered.clone()).collect();
    assert!(refused.is_empty(), "WeCom refused: {refused:?}");
    assert_exactly_once(&fake, &expected);
    let types: Vec<String> = fake.received().iter().map(|r| r.msgtype().to_string()).collect();
    assert_eq!(types[0], "markdown");
    assert!(types[1..].iter().all(|t| t == "text"), "{types:?}");
    for r in fake.received() {
        assert!(r.content().len() <= TEXT_LIMIT || r.msgtype() != "text");
    }

    // A template set by reload applies to what is already queued, too.
    let template = dir.path().join("t.txt");
    std::fs::write(
        &template,
        "[firing_heading]\n## NEW LAYOUT {{count}}\n[resolved_heading]\n## NEW DONE {{count}}\n[alert]\n{{labels.alertname}} {{annotations.description}}\n",
    )
    .expect("template");
    let sent_before = fake.received().len();
    let more = alerts("t-", 3, "firing");
    assert_eq!(relay.post(&body("tpl", &more, "Tpl")).status, 200);
    let more2 = alerts("u-", 3, "firing");
    assert_eq!(relay.post(&body("tpl2", &more2, "Tpl")).status, 200);
    write_config(&dir, &robot(&format!("template = \"{}\"\n", template.display())));
    relay.signal("HUP");
    wait_until(Duration::from_secs(20), "templated backlog delivered", || {
        let got = fake.delivered_alerts();
        more.iter().chain(&more2).all(|e| got.contains(e))
    });
    let last = fake.received();
    assert!(last[sent_before..].iter().any(|r| r.content().contains("NEW LAYOUT")), "{last:?}");
}

/// Issue #14: one notification WeCom refuses (93000 here), queued behind a spent budget with
/// six healthy ones, used to take their alerts down with it when they were merged. Now the
/// refused message is retried per group, then per alert: only the bad alert is given up, it is
/// readable in `failed/`, and counted in `weixin_robot_alerts_failed_total`.
#[test]
fn a_poisoned_notification_merged_with_healthy_ones_fails_alone() {
    let fake = FakeWeCom::start();
    fake.refuse_containing("POISON", 93000);
    let dir = TempDir::new("poison");
    let state = dir.path().to_str().expect("utf8").to_string();
    // The first send hangs past the timeout, so everything else queues up behind it.
    fake.script([Behave::Hang(Duration::from_millis(1500))]);
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--state-dir",
        &state,
        "--timeout",
        "1s",
        "--retry-initial",
        "50ms",
        "--retry-max",
        "100ms",
    ]);
    assert_eq!(relay.post(&body("first", &alerts("f", 1, "firing"), "First")).status, 200);
    wait_until(Duration::from_secs(10), "first send in flight", || fake.received().len() == 1);
    let mut expected = alerts("f", 1, "firing");
    for g in 0..6 {
        let list = alerts(&format!("h{g}-"), 2, "firing");
        assert_eq!(relay.post(&body(&format!("healthy{g}"), &list, "Healthy")).status, 200);
        expected.extend(list);
    }
    // The bad group: one poisoned alert next to a healthy one.
    let bad = vec![("bad-ok".to_string(), "firing".to_string())];
    let mut bad_body = String::from_utf8(body("bad", &bad, "Bad")).expect("utf8");
    bad_body = bad_body.replacen("\"alerts\":[", "\"alerts\":[{\"status\":\"firing\",\"labels\":{\"alertname\":\"POISON\"},\"annotations\":{\"description\":\"fp=bad-poison\"},\"startsAt\":\"2024-05-01T12:00:00Z\",\"fingerprint\":\"bad-poison\"},", 1);
    assert_eq!(relay.post(bad_body.as_bytes()).status, 200);
    expected.extend(bad);

    wait_until(Duration::from_secs(30), "healthy alerts delivered", || {
        let got = fake.delivered_alerts();
        expected.iter().all(|e| got.contains(e))
    });
    assert_exactly_once(&fake, &expected);
    wait_until(Duration::from_secs(10), "the bad alert kept in failed/", || {
        std::fs::read_dir(dir.path().join("failed")).map(|d| d.count()).unwrap_or(0) == 1
    });
    let failed: Vec<String> = std::fs::read_dir(dir.path().join("failed"))
        .expect("failed dir")
        .filter_map(Result::ok)
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(failed[0].contains("POISON") && failed[0].contains("errcode=93000"), "{failed:?}");
    assert!(!failed[0].contains("Healthy"), "a healthy alert was given up: {failed:?}");
    let metrics = relay.metrics();
    assert!(
        metrics
            .contains("weixin_robot_alerts_failed_total{robot=\"default\",reason=\"errcode\"} 1"),
        "{metrics}"
    );
    let logs = relay.logs();
    assert!(logs.contains("message refused, sending its groups or alerts one by one"), "{logs}");
    assert_eq!(logs.matches("message dropped").count(), 1, "{logs}");
    wait_until(Duration::from_secs(10), "spool emptied", || queue_files(dir.path()) == 0);
}

/// Issue #14: firing then resolved for the same alert, both unsent: the group is told once,
/// "resolved". Then a lagging HA peer's firing of the same episode (its `startsAt` before the
/// resolved's `endsAt`) arrives in a notification that also holds news: only the news is sent.
#[test]
fn stale_states_never_follow_the_resolved() {
    let fake = FakeWeCom::start();
    fake.script([Behave::Hang(Duration::from_millis(1500))]);
    let relay = Relay::start(&["--key", &fake.url(), "--timeout", "1s", "--retry-initial", "50ms"]);
    assert_eq!(relay.post(&payload("other", &[A("o1", "firing", "Other")])).status, 200);
    wait_until(Duration::from_secs(10), "first send in flight", || fake.received().len() == 1);
    assert_eq!(relay.post(&payload("g", &[A("x1", "firing", "X")])).status, 200);
    assert_eq!(relay.post(&payload("g", &[A("x1", "resolved", "X")])).status, 200);
    wait_until(Duration::from_secs(20), "resolved delivered", || {
        fake.delivered_alerts().contains(&("x1".into(), "resolved".into()))
    });
    // The peer's stale firing of x1, with a new alert x2: x2 only.
    let r = relay.post(&payload("g", &[A("x1", "firing", "X"), A("x2", "firing", "X")]));
    assert_eq!(r.json()["status"], "queued");
    wait_until(Duration::from_secs(10), "x2 delivered", || {
        fake.delivered_alerts().contains(&("x2".into(), "firing".into()))
    });
    assert_exactly_once(
        &fake,
        &[("o1", "firing"), ("x1", "resolved"), ("x2", "firing")]
            .map(|(f, s)| (f.to_string(), s.to_string())),
    );
}

/// Issue #14: a robot removed and re-added by two reloads while its backlog drains takes its
/// outbox back: each alert is delivered exactly once, and no sender thread leaks.
#[test]
fn a_robot_removed_and_added_back_takes_its_outbox_back() {
    let (ops, dba) = (FakeWeCom::start(), FakeWeCom::start());
    dba.set_default(Behave::Http(500));
    let dir = TempDir::new("readd");
    let state = dir.path().join("state");
    let with_dba = format!(
        "default_robot = \"ops\"\n[robots.ops]\nkey = \"{}\"\n[robots.dba]\nkey = \"{}\"\n",
        ops.url(),
        dba.url()
    );
    let without = format!("[robots.ops]\nkey = \"{}\"\n", ops.url());
    let config = write_config(&dir, &with_dba);
    let relay = Relay::start(&[
        "--config",
        &config,
        "--state-dir",
        state.to_str().expect("utf8"),
        "--retry-initial",
        "50ms",
        "--retry-max",
        "200ms",
    ]);
    let mut expected = Vec::new();
    for g in 0..5 {
        let list = alerts(&format!("d{g}-"), 2, "firing");
        let r = post(relay.addr, "/alertinfo/dba", &body(&format!("dba{g}"), &list, "Dba"));
        assert_eq!(r.status, 200);
        expected.extend(list);
    }
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", relay.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = threads();
    for cycle in 0..10 {
        write_config(&dir, &without);
        relay.signal("HUP");
        wait_until(Duration::from_secs(10), "removed", || {
            relay.logs().matches("removed=1").count() > cycle
        });
        write_config(&dir, &with_dba);
        relay.signal("HUP");
        wait_until(Duration::from_secs(10), "added back", || {
            relay.logs().matches("added=1 removed=0").count() > cycle
        });
    }
    assert!(threads() <= before, "threads grew from {before} to {}", threads());
    dba.set_default(Behave::Ok);
    wait_until(Duration::from_secs(30), "backlog delivered", || {
        let got = dba.delivered_alerts();
        expected.iter().all(|e| got.contains(e))
    });
    assert_exactly_once(&dba, &expected);
    let m = relay.metrics();
    assert_eq!(m.matches("weixin_robot_outbox_messages{robot=\"dba\"}").count(), 1, "{m}");
}

/// Issue #14: a restart without a robot keeps its spooled alerts (logged once, exposed as
/// `weixin_robot_unrouted_alerts`), and delivers them when a reload brings the robot back.
#[test]
fn alerts_of_an_unconfigured_robot_wait_and_are_delivered_when_it_returns() {
    let (ops, dba) = (FakeWeCom::start(), FakeWeCom::start());
    dba.set_default(Behave::Http(500));
    let dir = TempDir::new("unrouted");
    let state = dir.path().join("state");
    let state_arg = state.to_str().expect("utf8").to_string();
    let with_dba = format!(
        "default_robot = \"ops\"\n[robots.ops]\nkey = \"{}\"\n[robots.dba]\nkey = \"{}\"\n",
        ops.url(),
        dba.url()
    );
    let config = write_config(&dir, &with_dba);
    let args = ["--config", &config, "--state-dir", &state_arg, "--retry-initial", "50ms"];
    let mut relay = Relay::start(&args);
    let list = alerts("w", 3, "firing");
    assert_eq!(post(relay.addr, "/alertinfo/dba", &body("wait", &list, "Wait")).status, 200);
    wait_until(Duration::from_secs(10), "a failed try", || !dba.received().is_empty());
    relay.kill9();
    dba.wait_idle();

    write_config(&dir, &format!("[robots.ops]\nkey = \"{}\"\n", ops.url()));
    dba.set_default(Behave::Ok);
    let relay = Relay::start(&args);
    let logs = relay.logs();
    assert_eq!(logs.matches("robot dba is not configured; 3 alerts wait in").count(), 1, "{logs}");
    assert!(relay.metrics().contains("weixin_robot_unrouted_alerts{robot=\"dba\"} 3"));
    let tried = dba.received().len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dba.received().len(), tried, "an unconfigured robot must not send");

    write_config(&dir, &with_dba);
    relay.signal("HUP");
    wait_until(Duration::from_secs(10), "delivered once the robot is back", || {
        dba.delivered_alerts().len() == 3
    });
    assert_exactly_once(&dba, &list);
    assert!(!relay.metrics().contains("weixin_robot_unrouted_alerts{robot=\"dba\"}"));
}

/// Review of #14, point 3: the same alerts again with more of the group truncated by
/// Alertmanager are not a duplicate: the group is told again, with the new count.
#[test]
fn more_truncated_alerts_is_sent_not_answered_duplicate() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let list = alerts("t", 2, "firing");
    let first = body("trunc", &list, "Trunc");
    assert_eq!(relay.post(&first).json()["status"], "queued");
    wait_until(Duration::from_secs(10), "first message", || fake.delivered().len() == 1);
    assert_eq!(relay.post(&first).json()["status"], "duplicate");
    let text = String::from_utf8(first).expect("utf8");
    let more = text.replace("\"truncatedAlerts\":0", "\"truncatedAlerts\":7");
    assert_ne!(more, text);
    assert_eq!(relay.post(more.as_bytes()).json()["status"], "queued");
    wait_until(Duration::from_secs(10), "second message", || fake.delivered().len() == 2);
    assert!(fake.delivered()[1].content().contains('7'), "{}", fake.delivered()[1].content());
}

/// Review of #14, point 11: a reload that brings a parked robot back but fails on a later
/// robot leaves the outbox parked (still counted as unrouted), and the next good reload
/// delivers it.
#[test]
fn a_failed_reload_leaves_a_parked_outbox_parked() {
    let (ops, dba) = (FakeWeCom::start(), FakeWeCom::start());
    dba.set_default(Behave::Http(500));
    let dir = TempDir::new("parked-reload");
    let state = dir.path().join("state");
    let state_arg = state.to_str().expect("utf8").to_string();
    let robot = |name: &str, url: String| format!("[robots.{name}]\nkey = \"{url}\"\n");
    let with_dba =
        format!("default_robot = \"ops\"\n{}{}", robot("ops", ops.url()), robot("dba", dba.url()));
    let config = write_config(&dir, &with_dba);
    let args = ["--config", &config, "--state-dir", &state_arg, "--retry-initial", "50ms"];
    let mut relay = Relay::start(&args);
    let list = alerts("p", 3, "firing");
    assert_eq!(post(relay.addr, "/alertinfo/dba", &body("park", &list, "Park")).status, 200);
    wait_until(Duration::from_secs(10), "a failed try", || !dba.received().is_empty());
    relay.kill9();
    dba.wait_idle();
    write_config(&dir, &robot("ops", ops.url()));
    dba.set_default(Behave::Ok);
    let relay = Relay::start(&args);
    assert!(relay.metrics().contains("weixin_robot_unrouted_alerts{robot=\"dba\"} 3"));
    // dba comes back with a robot whose directory cannot be made: the reload fails.
    std::fs::write(state.join("robots/zzz"), b"not a directory").expect("block");
    write_config(&dir, &format!("{with_dba}{}", robot("zzz", ops.url())));
    relay.signal("HUP");
    wait_until(Duration::from_secs(10), "the reload failed", || {
        relay.logs().contains("reload failed")
    });
    assert!(relay.metrics().contains("weixin_robot_unrouted_alerts{robot=\"dba\"} 3"));
    write_config(&dir, &with_dba);
    relay.signal("HUP");
    wait_until(Duration::from_secs(10), "delivered once the robot is back", || {
        dba.delivered_alerts().len() == 3
    });
    assert_exactly_once(&dba, &list);
}

/// Issue #14: a spool written by 1.0.0 (`WXR1` files holding rendered messages, made by
/// `tests/fixtures/make-spool-1.0.0.sh` from the 1.0.0 binary) is delivered as it is.
#[test]
fn a_1_0_0_spool_is_delivered_after_the_upgrade() {
    let dir = TempDir::new("upgrade");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-1.0.0/queue");
    std::fs::create_dir_all(dir.path().join("queue")).expect("queue");
    for e in std::fs::read_dir(&fixture).expect("fixture").filter_map(Result::ok) {
        std::fs::copy(e.path(), dir.path().join("queue").join(e.file_name())).expect("copy");
    }
    let fake = FakeWeCom::start();
    let relay =
        Relay::start(&["--key", &fake.url(), "--state-dir", dir.path().to_str().expect("utf8")]);
    let mut expected = vec![("one-0".to_string(), "firing".to_string())];
    expected.extend((0..30).map(|i| (format!("long-{i}"), "firing".to_string())));
    expected.extend((0..2).map(|i| (format!("gone-{i}"), "resolved".to_string())));
    wait_until(Duration::from_secs(30), "1.0.0 backlog delivered", || {
        fake.delivered_alerts().len() >= expected.len()
    });
    assert_exactly_once(&fake, &expected);
    assert!(fake.received().iter().all(|r| r.delivered));
    wait_until(Duration::from_secs(10), "old files removed", || queue_files(dir.path()) == 0);
    assert!(relay
        .logs()
        .contains("recovered pending notifications from spool robot=default count=3"));
}

/// A spool file as the relay's group commit writes it: one `WXR2` frame per notification.
fn spool_file(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let fnv = |b: &[u8]| {
        b.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let mut out = Vec::new();
    for (id, body) in records {
        let mut payload = format!("{{\"id\":{id},\"created_unix\":1700000000}}\n").into_bytes();
        payload.extend_from_slice(body);
        out.extend(format!("WXR2 {} {:016x}\n", payload.len(), fnv(&payload)).into_bytes());
        out.extend(payload);
    }
    out
}

/// Review of #14, point 1: a notification delivered while another one written in the same
/// group-commit file still waits is not sent again after a clean restart (the file stays for
/// the pending one; recovery skips what was released).
#[test]
fn a_clean_restart_does_not_resend_what_shared_a_file_with_a_pending_notification() {
    let dir = TempDir::new("shared-file");
    let state = dir.path().to_str().expect("utf8").to_string();
    let short = alerts("x", 1, "firing");
    let long = alerts("l", 40, "firing");
    std::fs::create_dir_all(dir.path().join("queue")).expect("queue");
    let file = spool_file(&[(1, body("short", &short, "Short")), (2, body("long", &long, "Long"))]);
    std::fs::write(dir.path().join("queue/00000000000000000001.rec"), file).expect("seed");
    let fake = FakeWeCom::start();
    // The short group goes first (alone: the long one is split) and is delivered; the long
    // one keeps failing.
    fake.set_default(Behave::Http(500));
    fake.script([Behave::Ok]);
    let args = ["--key", &fake.url(), "--state-dir", &state, "--grace", "300ms"];
    let mut relay =
        Relay::start(&[&args[..], &["--retry-initial", "20ms", "--retry-max", "200ms"]].concat());
    wait_until(Duration::from_secs(10), "the short group delivered, the long one tried", || {
        fake.delivered_alerts() == short && fake.received().len() >= 2
    });
    relay.signal("TERM");
    relay.wait_exit(Duration::from_secs(10));
    fake.set_default(Behave::Ok);
    let _relay = Relay::start(&args);
    let expected: Vec<(String, String)> = short.iter().chain(&long).cloned().collect();
    wait_until(Duration::from_secs(30), "the long group delivered", || {
        fake.delivered_alerts().len() >= expected.len()
    });
    wait_until(Duration::from_secs(10), "spool emptied", || queue_files(dir.path()) == 0);
    assert_exactly_once(&fake, &expected);
}

/// Issue #14: kill -9 while WeCom holds a message (sent, not yet acknowledged, so not yet
/// deleted), and again during a split notification's partial delivery: after the restart every
/// alert reaches the group, none more than twice.
#[test]
fn kill_9_between_send_and_delete_repeats_at_most_once() {
    let dir = TempDir::new("kill-send");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Hang(Duration::from_secs(5)));
    let args = ["--key", &fake.url(), "--state-dir", &state, "--rate", "20/1s", "--timeout", "20s"];
    let mut relay = Relay::start(&args);
    // One short notification and one split into several parts.
    let short = alerts("s", 1, "firing");
    let long = alerts("l", 40, "firing");
    assert_eq!(relay.post(&body("short", &short, "Short")).status, 200);
    wait_until(Duration::from_secs(10), "short sent", || fake.received().len() == 1);
    relay.kill9();
    fake.wait_idle();
    fake.set_default(Behave::Ok);
    let mut relay = Relay::start(&args);
    assert_eq!(relay.post(&body("long", &long, "Long")).status, 200);
    // Part 1 delivered, part 2 held by WeCom when the relay dies.
    fake.script([Behave::Ok, Behave::Hang(Duration::from_secs(5))]);
    let t0 = fake.received().len();
    wait_until(Duration::from_secs(10), "a partial delivery", || fake.received().len() >= t0 + 2);
    relay.kill9();
    fake.set_default(Behave::Ok);
    let _relay = Relay::start(&args);
    let expected: Vec<(String, String)> = short.iter().chain(&long).cloned().collect();
    wait_until(Duration::from_secs(30), "everything shown in the group", || {
        let seen: Vec<(String, String)> =
            fake.received().iter().flat_map(|r| alerts_in(r.content())).collect();
        expected.iter().all(|e| seen.contains(e))
    });
    wait_until(Duration::from_secs(10), "spool emptied", || queue_files(dir.path()) == 0);
    // WeCom showed what it received, acknowledged or not.
    let seen: Vec<(String, String)> =
        fake.received().iter().flat_map(|r| alerts_in(r.content())).collect();
    for (alert, n) in counts(&seen) {
        assert!(n <= 2, "{alert:?} shown {n} times");
    }
}

/// Issue #20 item 2: 4 MiB of empty alerts is refused with 413 and the reason (Alertmanager
/// does not retry it; its own `max_alerts` keeps notifications below), memory stays small,
/// and queue limits apply to the first notification too.
#[test]
fn a_notification_over_max_alerts_is_413_and_memory_stays_small() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let mut big = String::from("{\"alerts\":[");
    while big.len() < 4 * 1024 * 1024 - 16 {
        big.push_str("{},");
    }
    big.pop();
    big.push_str("]}");
    let r = relay.post(big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("more than --max-alerts 5000"), "{}", r.body);
    let rss = rss_kib(relay.child.id());
    assert!(rss < 64 * 1024, "RSS {rss} KiB");
    // The peak too: the alerts are counted before anything is parsed.
    let peak = peak_rss_kib(relay.child.id());
    assert!(peak > 0 && peak < 64 * 1024, "peak RSS {peak} KiB");
    // Under the cap, but over the whole outbox: 413 too, even for the first notification.
    let small = Relay::start(&["--key", &fake.url(), "--queue-max-bytes", "2KiB"]);
    let r = small.post(&body("big", &alerts("q", 40, "firing"), "Big"));
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(fake.received().is_empty());
}

/// Issue #20 item 10: `{"alerts":[]}` is answered 200 and nothing is sent (1.0 sent
/// "恢复通知 共 0 条").
#[test]
fn a_notification_without_alerts_sends_nothing() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let r = relay.post(br#"{"alerts":[]}"#);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("empty")));
    assert_eq!(relay.post(&payload("after", &[A("a1", "firing", "After")])).status, 200);
    wait_until(Duration::from_secs(10), "the next one delivered", || fake.delivered().len() == 1);
    assert_eq!(fake.received().len(), 1);
}

/// Issue #20 item 5: a 60,000-alert notification (posted twice: the second supersedes every
/// alert) does not stall `/healthz`, and the client gets its answer, not 408, even when
/// processing takes longer than `--request-timeout`. The figure is printed, not asserted
/// (timing belongs in BENCHMARKS.md).
#[test]
fn health_answers_while_a_huge_notification_is_accepted() {
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--max-alerts",
        "60000",
        "--max-body",
        "64MiB",
        "--queue-max-bytes",
        "1GiB",
        // Shorter than a debug build takes to parse and queue 60,000 alerts: the deadline is
        // the client's (to send the request), not ours (to process it), so no 408.
        "--request-timeout",
        "3s",
    ]);
    let make = |status: &str| -> Vec<u8> {
        let list: Vec<(String, String)> =
            (0..60_000).map(|i| (format!("h{i}"), status.to_string())).collect();
        body("huge", &list, "Huge")
    };
    let (firing, resolved) = (make("firing"), make("resolved"));
    let addr = relay.addr;
    // A debug build parses 25 MB slowly: wait longer than `post` does.
    let slow_post = move |body: &[u8]| -> u16 {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        let head = format!(
            "POST /alertinfo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).expect("send");
        read_response(&mut s).expect("answer").status
    };
    let poster = std::thread::spawn(move || (slow_post(&firing), slow_post(&resolved)));
    let mut worst = Duration::ZERO;
    while !poster.is_finished() {
        let t = Instant::now();
        assert_eq!(get(addr, "/healthz").status, 200);
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (a, b) = poster.join().expect("poster");
    assert_eq!((a, b), (200, 200));
    println!("slowest /healthz while accepting 2 × 60,000 alerts: {} ms", worst.as_millis());
}

/// Issue #20 item 7: a state dir that cannot be written is exit 1 at start with the reason;
/// while the spool cannot take writes at run time `/-/ready` is 503, notifications get 503
/// with a body that names no path, and both recover once it can.
#[test]
fn an_unusable_state_dir_fails_at_start_and_makes_ready_503() {
    let dir = TempDir::new("rodir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("file");
    let bad = file.join("state");
    let (code, _, stderr) = run_to_exit(
        &[
            "--key",
            "http://127.0.0.1:9/cgi-bin/webhook/send?key=x",
            "--state-dir",
            bad.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("state dir unusable"), "{stderr}");

    let fake = FakeWeCom::start();
    let state = dir.path().join("state");
    let relay = Relay::start(&["--key", &fake.url(), "--state-dir", state.to_str().expect("utf8")]);
    assert_eq!(get(relay.addr, "/-/ready").status, 200);
    // The queue directory disappears under the relay (as a full or read-only disk would fail).
    let queue = state.join("queue");
    let aside = state.join("queue.aside");
    std::fs::rename(&queue, &aside).expect("move queue");
    std::fs::write(&queue, b"not a directory").expect("block");
    let r = relay.post(&payload("g", &[A("d1", "firing", "Disk")]));
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(!r.body.contains(state.to_str().expect("utf8")), "path disclosed: {}", r.body);
    assert!(!r.body.contains("/queue"), "path disclosed: {}", r.body);
    assert_eq!(get(relay.addr, "/-/ready").status, 503);
    std::fs::remove_file(&queue).expect("unblock");
    std::fs::rename(&aside, &queue).expect("restore");
    wait_until(Duration::from_secs(10), "ready again", || {
        get(relay.addr, "/-/ready").status == 200
    });
    assert_eq!(relay.post(&payload("g", &[A("d1", "firing", "Disk")])).status, 200);
    wait_until(Duration::from_secs(10), "delivered", || fake.delivered().len() == 1);
}

/// Issue #20 item 8: 32 junk `?key=` robots no longer hold every slot until a restart: idle
/// ones are evicted, and a new key gets a robot.
#[test]
fn idle_key_param_robots_are_evicted() {
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Errcode(93000));
    let host = fake.addr.to_string();
    let relay =
        Relay::start(&["--key", &fake.url(), "--allow-key-param", "--key-param-host", &host]);
    let url = |k: &str| format!("http://{}/cgi-bin/webhook/send?key={k}", fake.addr);
    for i in 0..32 {
        let path = format!("/alertinfo?key={}", url_encode(&url(&format!("junk{i}"))));
        let r = post(
            relay.addr,
            &path,
            &payload(&format!("j{i}"), &[A(&format!("j{i}"), "firing", "J")]),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Every junk message is refused for good, so their outboxes empty.
    wait_until(Duration::from_secs(20), "junk refused", || fake.received().len() >= 32);
    fake.set_default(Behave::Ok);
    wait_until(Duration::from_secs(10), "outboxes empty", || {
        !relay
            .metrics()
            .lines()
            .any(|l| l.starts_with("weixin_robot_outbox_messages{") && !l.ends_with(" 0"))
    });
    let path = format!("/alertinfo?key={}", url_encode(&url("legit")));
    let r = post(relay.addr, &path, &payload("legit", &[A("ok1", "firing", "Legit")]));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(Duration::from_secs(10), "legit delivered", || fake.delivered().len() == 1);
    assert!(relay.logs().contains("idle ?key= robot evicted"));
}

/// Issue #20 item 8: when every `?key=` slot holds a robot with messages pending, a new key is
/// answered 503 (Alertmanager retries), not 4xx (it would not), and gets in once one drains.
#[test]
fn a_new_key_waits_with_503_while_every_slot_is_busy() {
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let host = fake.addr.to_string();
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--allow-key-param",
        "--key-param-host",
        &host,
        "--retry-initial",
        "200ms",
        "--retry-max",
        "500ms",
        "--max-key-robots",
        "4",
    ]);
    let url = |k: &str| format!("http://{}/cgi-bin/webhook/send?key={k}", fake.addr);
    let post_key = |k: &str| {
        let path = format!("/alertinfo?key={}", url_encode(&url(k)));
        post(relay.addr, &path, &payload(k, &[A(&format!("{k}-a"), "firing", "Busy")]))
    };
    for i in 0..4 {
        assert_eq!(post_key(&format!("busy{i}")).status, 200);
    }
    let r = post_key("late");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert!(r.body.contains("pending"), "{}", r.body);
    fake.set_default(Behave::Ok);
    wait_until(Duration::from_secs(30), "busy robots drained", || {
        !relay
            .metrics()
            .lines()
            .any(|l| l.starts_with("weixin_robot_outbox_messages{") && !l.ends_with(" 0"))
    });
    assert_eq!(post_key("late").status, 200);
    wait_until(Duration::from_secs(10), "late delivered", || {
        fake.delivered_alerts().iter().any(|(f, _)| f == "late-a")
    });
}

/// A `?key=` naming the key the relay already sends with uses that robot, its outbox and its
/// budget: a second robot on the same key would send up to twice WeCom's 20 a minute.
#[test]
fn a_key_param_with_the_configured_key_uses_that_robot() {
    let fake = FakeWeCom::start();
    let host = fake.addr.to_string();
    let relay =
        Relay::start(&["--key", &fake.url(), "--allow-key-param", "--key-param-host", &host]);
    let path = format!("/alertinfo?key={}", url_encode(&fake.url()));
    let r = post(relay.addr, &path, &payload("same", &[A("same-a", "firing", "Same")]));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(Duration::from_secs(10), "delivered", || fake.delivered().len() == 1);
    let metrics = relay.metrics();
    assert!(metrics.contains("weixin_robot_messages_sent_total{robot=\"default\"} 1"), "{metrics}");
    assert!(!metrics.contains("robot=\"key-"), "a second robot was made: {metrics}");
}

/// Issue #14 item 8: a panicking sender is logged, counted and restarted; delivery goes on.
/// Issue #16: a dry run says so, with the robot, on stdout and in the log.
#[test]
fn a_panicking_sender_is_restarted_and_dry_run_names_the_robot() {
    if !has_debug_hooks() {
        return;
    }
    let relay = Relay::start_env(&["--dry-run"], &[("WEIXIN_ROBOT_DEBUG_SENDER_PANIC", "default")]);
    assert_eq!(relay.post(&payload("p", &[A("p1", "firing", "Panic")])).status, 200);
    // Down for its 1 s backoff: not ready meanwhile.
    wait_until(Duration::from_secs(5), "not ready while the sender is down", || {
        let r = get(relay.addr, "/-/ready");
        r.status == 503 && r.body.contains("no live sender")
    });
    // The log line follows the printed message: wait for it, not only for stdout.
    wait_until(Duration::from_secs(15), "printed after the restart", || {
        relay.stdout().contains("dry run robot=default")
            && relay.logs().contains("dry run: message printed robot=default")
    });
    let logs = relay.logs();
    assert!(logs.contains("sender panicked, restarting robot=default"), "{logs}");
    assert!(logs.contains("dry run: message printed robot=default"), "{logs}");
    assert!(relay.metrics().contains("weixin_robot_sender_restarts_total{robot=\"default\"} 1"));
    assert_eq!(get(relay.addr, "/-/ready").status, 200);
}

/// The process's peak resident set (VmHWM) in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}
