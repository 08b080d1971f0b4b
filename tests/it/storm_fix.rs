//! Storm mode fixes from an adversarial review (issue 15), over the real binary.

use std::time::Duration;

use serde_json::json;

use crate::storm::{all_told, post_storm};
use crate::util::{payload, run_to_exit, wait_until, FakeWeCom, Relay, TempDir, A};

/// Starts a relay on `fake` whose storm only a digest can tell (2 messages per 2 s,
/// `--max-delay 1ms`, quick retries), with `extra` arguments, and posts 10 groups of 30 alerts.
fn storm(fake: &FakeWeCom, extra: &[&str]) -> (Relay, Vec<String>) {
    let url = fake.url();
    let mut args = vec![
        "--key",
        url.as_str(),
        "--rate",
        "2/2s",
        "--max-delay",
        "1ms",
        "--dedup-window",
        "0",
        "--retry-initial",
        "200ms",
        "--retry-max",
        "400ms",
    ];
    args.extend_from_slice(extra);
    let relay = Relay::start(&args);
    let fps = post_storm(&relay, "s", "StormFix");
    (relay, fps)
}

/// Digest messages that reached WeCom (accepted or not).
fn digest_messages(fake: &FakeWeCom) -> usize {
    fake.received().iter().filter(|r| r.content().contains("告警汇总")).count()
}

fn file_messages(fake: &FakeWeCom) -> usize {
    fake.received().iter().filter(|r| r.msgtype() == "file").count()
}

/// Bug 1: without `--state-dir`, each retry of a digest whose file message WeCom refused
/// (-1, busy) uploaded the file again and sent the digest message again; the group saw the
/// digest once per retry. The record of the digest in flight now lives in memory too.
#[test]
fn issue_15_a_retried_digest_without_a_state_dir_reuses_its_upload() {
    let fake = FakeWeCom::start();
    fake.enforce_budget(2, Duration::from_secs(2));
    fake.fail_file_messages(Some(-1));
    let (relay, fps) = storm(&fake, &[]);
    wait_until(Duration::from_secs(30), "three refused file messages", || {
        file_messages(&fake) >= 3
    });
    fake.fail_file_messages(None);
    wait_until(Duration::from_secs(30), "a delivered file message", || {
        fake.delivered().iter().any(|r| r.msgtype() == "file")
    });
    assert_eq!(fake.uploads().len(), 1, "uploaded again on a retry");
    assert_eq!(digest_messages(&fake), 1, "digest message sent again on a retry");
    assert!(all_told(&fake, &fps), "an alert never told");
    assert!(relay.logs().contains("media_id_reused=true"), "{}", relay.logs());
}

/// Bug 2: a long label sorting before `instance` used to push `instance=…` past the compact
/// line's cut, so the preview's compact message showed five lines without their host.
#[test]
fn issue_15_compact_lines_name_their_host_despite_long_labels() {
    let dir = TempDir::new("storm-fix-long");
    let long = format!("/0/{}", "z".repeat(400));
    let alerts: Vec<_> = (0..5)
        .map(|i| {
            json!({
                "status": "firing",
                "labels": {"alertname": "DiskFull", "aaa_path": format!("{long}{i}"),
                           "instance": format!("host-{i}:9100"), "severity": "warning"},
                "annotations": {"summary": "disk full"},
                "startsAt": "2024-05-01T12:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": format!("f{i}"),
            })
        })
        .collect();
    let body = json!({
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
        "receiver": "wecom", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am:9093", "alerts": alerts,
    });
    let file = dir.path().join("long.json");
    std::fs::write(&file, body.to_string()).expect("write");
    let (code, out, err) = run_to_exit(&["render", "--digest", file.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(0), "{err}");
    let compact = &out[out.find("----- compact message").expect("a compact message")..];
    for i in 0..5 {
        let line = compact
            .lines()
            .find(|l| l.contains(&format!("instance=host-{i}:9100")))
            .unwrap_or_else(|| panic!("host-{i} on no compact line:\n{compact}"));
        assert!(line.contains("z…"), "the long value is cut, not the line: {line}");
    }
}

/// Bug 3: file names had minute resolution, so two digests in the same minute attached two
/// files named alike. A second storm right after the first: every file has its own name.
#[test]
fn issue_15_two_digests_attach_files_with_distinct_names() {
    let fake = FakeWeCom::start();
    fake.enforce_budget(2, Duration::from_secs(2));
    let (relay, _) = storm(&fake, &[]);
    wait_until(Duration::from_secs(30), "the first file message", || {
        fake.delivered().iter().any(|r| r.msgtype() == "file")
    });
    for g in 0..10 {
        let group: Vec<String> = (0..30).map(|i| format!("t{g}x{i}")).collect();
        let alerts: Vec<A> = group.iter().map(|fp| A(fp, "firing", "StormFix2")).collect();
        assert_eq!(relay.post(&payload(&format!("again{g}"), &alerts)).status, 200);
    }
    wait_until(Duration::from_secs(30), "a second upload", || fake.uploads().len() >= 2);
    let names: Vec<String> = fake.uploads().iter().map(|u| u.file_name.clone()).collect();
    let mut distinct = names.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), names.len(), "files named alike: {names:?}");
    for n in &names {
        let stem = n.strip_prefix("alerts-").and_then(|r| r.strip_suffix(".md")).unwrap_or("");
        let ok = stem.len() >= 13
            && stem[..8].bytes().all(|b| b.is_ascii_digit())
            && &stem[8..9] == "-"
            && stem[9..13].bytes().all(|b| b.is_ascii_digit())
            && (stem.len() == 13 || stem[13..].starts_with('-'));
        assert!(ok, "file name of another shape: {n}");
    }
}

/// Bug 4: a reload lowering the rate while the file was uploading was ignored for the digest
/// message, sent right after the upload at the old rate. The fake enforces the new budget
/// from the reload on: nothing may be refused with 45009.
#[test]
fn issue_15_a_reload_during_the_upload_paces_the_digest_at_the_new_rate() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("storm-fix-reload");
    let robot = |rate: &str| {
        format!("[robots.ops]\nkey = \"{}\"\nrate = \"{rate}\"\nmax_delay = \"1ms\"\n", fake.url())
    };
    let config = dir.path().join("robots.toml");
    std::fs::write(&config, robot("4/2s")).expect("write");
    let config = config.to_str().expect("utf8").to_string();
    let relay = Relay::start(&["--config", &config, "--dedup-window", "0"]);
    fake.delay_uploads(Duration::from_secs(4));
    for g in 0..10 {
        let alerts: Vec<String> = (0..30).map(|i| format!("r{g}x{i}")).collect();
        let alerts: Vec<A> = alerts.iter().map(|fp| A(fp, "firing", "ReloadStorm")).collect();
        assert_eq!(relay.post(&payload(&format!("reload{g}"), &alerts)).status, 200);
    }
    wait_until(Duration::from_secs(20), "an upload under way", || fake.uploads_started() >= 1);
    std::fs::write(dir.path().join("robots.toml"), robot("1/6s")).expect("write");
    relay.signal("HUP");
    wait_until(Duration::from_secs(10), "reload", || {
        relay.logs().contains("configuration reloaded (SIGHUP)")
    });
    assert!(fake.uploads().is_empty(), "the reload came after the upload: test too slow");
    fake.enforce_budget(1, Duration::from_secs(6));
    wait_until(Duration::from_secs(40), "the file message", || {
        fake.delivered().iter().any(|r| r.msgtype() == "file")
    });
    let refused: Vec<String> =
        fake.received().iter().filter(|r| !r.delivered).map(|r| r.answered.clone()).collect();
    assert!(refused.is_empty(), "WeCom refused: {refused:?}\n{}", relay.logs());
}
