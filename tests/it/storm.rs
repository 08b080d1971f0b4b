//! Storm mode (issue 15): the preview `render --digest`, `--max-delay` and per-robot
//! `max_delay`, and WeCom's file path (`upload_media`, then a `file` message) exercised by
//! `send-test --with-file` against the fake WeCom, which checks the multipart upload the way
//! WeCom does, answers 40007 for a media id it never issued and enforces a budget the test
//! chooses (45009 past it).
//!
//! The relay itself: a storm told by a digest and a file within the budget, and a refused
//! upload falling back to the usual messages.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::util::{
    alerts_in, payload, post, run_to_exit, wait_until, Behave, FakeWeCom, Relay, TempDir, A, SECRET,
};

#[test]
fn send_test_with_file_uploads_the_file_and_sends_it() {
    let fake = FakeWeCom::start();
    let (code, out, err) = run_to_exit(&["send-test", "--key", &fake.url(), "--with-file"], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1, "{out}");
    let upload = &uploads[0];
    assert_eq!(upload.file_name, "weixin-robot-test.md");
    assert_eq!(upload.file_length, upload.data.len());
    assert!(String::from_utf8_lossy(&upload.data).starts_with("# weixin-robot 测试文件\n"));
    assert_eq!(upload.target, "/cgi-bin/webhook/upload_media?key=KEY&type=file");
    let sent = fake.received();
    assert_eq!(sent.len(), 2, "the test message, then the file message");
    // The fake answers 40007 for an id it did not issue, so exit 0 means the right one.
    assert_eq!(sent[1].body, json!({"msgtype": "file", "file": {"media_id": upload.media_id}}));
    assert!(out.contains("upload_media?key=***&type=file"), "{out}");
    assert!(!out.contains(SECRET) && !err.contains(SECRET), "key leaked: {out}{err}");
}

#[test]
fn upload_errors_are_classified_and_never_show_the_key() {
    for (errcode, class, hint) in [
        (93000, "permanent", "the key is wrong"),
        (45009, "rate_limited", "20 messages per minute"),
        (-1, "retry", "busy"),
    ] {
        let fake = FakeWeCom::start();
        // The test message goes through; the upload gets the errcode.
        fake.script([Behave::Ok, Behave::Errcode(errcode)]);
        let (code, out, err) =
            run_to_exit(&["send-test", "--key", &fake.url(), "--with-file"], &[]);
        assert_eq!(code, Some(1), "{errcode}: {out}{err}");
        assert!(out.contains(&format!("errcode {errcode}")) && out.contains(hint), "{out}");
        assert!(err.contains(&format!("send-test failed ({class})")), "{err}");
        assert!(!out.contains(SECRET) && !err.contains(SECRET), "key leaked: {out}{err}");
        assert_eq!(fake.received().len(), 1, "no file message after a failed upload");
    }
    // Without --with-file nothing is uploaded.
    let fake = FakeWeCom::start();
    let (code, _, _) = run_to_exit(&["send-test", "--key", &fake.url()], &[]);
    assert_eq!(code, Some(0));
    assert!(fake.uploads().is_empty());
}

/// The fake WeCom refuses a file message whose media id it never issued (40007), as WeCom
/// does, so a relay that sent a stale or made-up id would be caught.
#[test]
fn the_fake_refuses_unknown_media_ids() {
    let fake = FakeWeCom::start();
    let path = format!("/cgi-bin/webhook/send?key={SECRET}");
    let body = json!({"msgtype": "file", "file": {"media_id": "never-issued"}}).to_string();
    let answer = post(fake.addr, &path, body.as_bytes()).json();
    assert_eq!(answer["errcode"], 40007, "{answer}");
    assert!(fake.delivered().is_empty());
}

/// The fake enforces a budget the test chooses (45009 past it); a relay with the same
/// `--rate` never hits it, whatever the backlog.
#[test]
fn a_relay_at_the_fakes_budget_is_never_rate_limited() {
    let fake = FakeWeCom::start();
    fake.enforce_budget(1, Duration::from_secs(1));
    let relay = Relay::start(&["--key", &fake.url(), "--rate", "1/1s", "--dedup-window", "0"]);
    let mut want = Vec::new();
    for g in 0..3 {
        let fps: Vec<String> = (0..16).map(|i| format!("b{g}x{i}")).collect();
        let alerts: Vec<A> = fps.iter().map(|fp| A(fp, "firing", "BudgetTest")).collect();
        assert_eq!(relay.post(&payload(&format!("budget{g}"), &alerts)).status, 200);
        want.extend(fps);
    }
    wait_until(Duration::from_secs(30), "every alert delivered", || {
        let got = fake.delivered_alerts();
        want.iter().all(|fp| got.iter().any(|(f, _)| f == fp))
    });
    let sent = fake.received();
    assert!(sent.len() >= 3, "{} messages", sent.len());
    assert!(
        sent.iter().all(|r| r.answered == "Ok"),
        "answers: {:?}",
        sent.iter().map(|r| &r.answered).collect::<Vec<_>>()
    );
    // The budget is real: a second send within the window is refused.
    let path = format!("/cgi-bin/webhook/send?key={SECRET}");
    let body = json!({"msgtype": "text", "text": {"content": "x"}}).to_string();
    let answers: Vec<i64> = (0..2)
        .map(|_| post(fake.addr, &path, body.as_bytes()).json()["errcode"].as_i64().unwrap_or(0))
        .collect();
    assert!(answers.contains(&45009), "{answers:?}");
}

/// `render --digest` output split at its `----- … -----` headers: (header, text).
fn sections(out: &str) -> Vec<(String, String)> {
    let mut parts: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        if line.starts_with("----- ") && line.ends_with(" -----") {
            parts.push((line.to_string(), String::new()));
        } else if let Some((_, text)) = parts.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    parts
}

/// Ten groups of 30 alerts of 3 alertnames; a third of each group resolved.
fn storm_files(dir: &TempDir) -> Vec<String> {
    (0..10)
        .map(|g| {
            let fps: Vec<String> = (0..30).map(|i| format!("g{g}a{i}")).collect();
            let alerts: Vec<A> = fps
                .iter()
                .enumerate()
                .map(|(i, fp)| {
                    let status = if i % 3 == 0 { "resolved" } else { "firing" };
                    A(fp, status, ["NodeDown", "DiskFull", "HighLoad"][i % 3])
                })
                .collect();
            let path = dir.path().join(format!("g{g}.json"));
            std::fs::write(&path, payload(&format!("g{g}"), &alerts)).expect("write");
            path.to_str().expect("utf8").to_string()
        })
        .collect()
}

#[test]
fn render_digest_previews_the_digest_the_file_and_compact_messages() {
    let dir = TempDir::new("digest");
    let files = storm_files(&dir);
    let mut args = vec!["render", "--digest", "--tz", "Z"];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = run_to_exit(&args, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("robot default: 20/60s, max-delay 120s: at most 40 messages"), "{err}");
    assert!(err.contains("300 alerts in 10 groups: full layout "), "{err}");
    let parts = sections(&out);
    let (head, digest) = &parts[0];
    assert!(head.starts_with("----- digest message ("), "{head}");
    assert!(digest.len() <= 4096 + 1, "{}", digest.len());
    assert!(
        digest.starts_with("## <font color=\"warning\">告警汇总</font> 共 300 条\n"),
        "{digest}"
    );
    assert!(digest.contains("告警中 200</font> · <font color=\"info\">已恢复 100</font> · 分组 10"));
    assert!(digest.contains("> DiskFull · <font color=\"warning\">critical</font> · **100**"));
    assert!(digest.contains("> NodeDown · <font color=\"info\">critical</font> · **100**"));
    let (file_head, file) = &parts[1];
    let name = file_head.split_whitespace().nth(2).unwrap_or("");
    assert!(
        name.len() == "alerts-20261202-1030.md".len()
            && name.starts_with("alerts-")
            && name.ends_with(".md"),
        "{file_head}"
    );
    assert!(digest.contains(&format!("完整列表见随后的附件 {name}")), "{digest}");
    assert!(file.contains("共 300 条：告警中 200 条，已恢复 100 条；10 个分组。"), "{file}");
    let rows: Vec<&str> = file.lines().filter(|l| l.ends_with("graph>) |")).collect();
    assert_eq!(rows.len(), 300, "one row per alert");
    assert_eq!(rows.iter().filter(|r| r.starts_with("| 已恢复 | NodeDown |")).count(), 100);
    // Every alert appears once among the compact messages, each within WeCom's limit.
    let compact: Vec<&(String, String)> =
        parts.iter().filter(|(h, _)| h.starts_with("----- compact message")).collect();
    assert!(!compact.is_empty());
    assert!(compact.iter().all(|(_, t)| t.len() <= 4096 + 1));
    let lines: usize = compact.iter().map(|(_, t)| t.matches("instance=g").count()).sum();
    assert_eq!(lines, 300, "{out}");

    // A tight budget (1 message within max-delay) leaves only the digest.
    let mut tight = args.clone();
    tight.extend(["--rate", "1/60s", "--max-delay", "30s"]);
    let (code, _, err) = run_to_exit(&tight, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("at most 1 messages") && err.ends_with("-> digest + file\n"), "{err}");
    // A generous one keeps the full layout.
    let mut loose = args;
    loose.extend(["--max-delay", "1h"]);
    let (_, _, err) = run_to_exit(&loose, &[]);
    assert!(err.ends_with("-> full\n"), "{err}");
}

#[test]
fn max_delay_from_flag_and_config_file() {
    let dir = TempDir::new("max-delay");
    let files = storm_files(&dir);
    let config = dir.path().join("robots.toml");
    std::fs::write(
        &config,
        "[robots.ops]\nkey_file = \"/nonexistent\"\nrate = \"2/60s\"\nmax_delay = \"10m\"\n",
    )
    .expect("write");
    let config = config.to_str().expect("utf8");
    let (code, _, err) = run_to_exit(&["render", "--digest", "--config", config, &files[0]], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("robot ops: 2/60s, max-delay 600s: at most 20 messages"), "{err}");

    std::fs::write(dir.path().join("bad.toml"), "[robots.ops]\nkey = \"k\"\nmax_delay = \"5\"\n")
        .expect("write");
    let bad = dir.path().join("bad.toml");
    let (code, _, err) =
        run_to_exit(&["render", "--digest", "--config", bad.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("[robots.ops]: max_delay: expected a duration above zero"), "{err}");

    for (value, want) in [("0", "must be above zero"), ("5", "has no unit")] {
        let (code, _, err) = run_to_exit(&["--dry-run", "--max-delay", value], &[]);
        assert_eq!(code, Some(2), "{value}");
        assert!(err.contains("invalid --max-delay") && err.contains(want), "{err}");
    }
    let (code, _, err) = run_to_exit(&["--dry-run"], &[("WEIXIN_ROBOT_MAX_DELAY", "soon")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid WEIXIN_ROBOT_MAX_DELAY (environment)"), "{err}");
}

/// A `text` robot gets its digest and compact messages in plain text within 2,048 bytes; with
/// no file (or `-`) the payload comes from stdin.
#[test]
fn render_digest_for_a_text_robot_and_from_stdin() {
    let dir = TempDir::new("digest-text");
    let files = storm_files(&dir);
    let config = dir.path().join("robots.toml");
    std::fs::write(&config, "[robots.plain]\nkey = \"k\"\nmsgtype = \"text\"\n").expect("write");
    let mut args = vec!["render", "--digest", "--config", config.to_str().expect("utf8")];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = run_to_exit(&args, &[]);
    assert_eq!(code, Some(0), "{err}");
    let parts = sections(&out);
    let messages: Vec<&(String, String)> =
        parts.iter().filter(|(h, _)| !h.starts_with("----- file")).collect();
    assert!(messages.len() > 2);
    for (head, text) in messages {
        assert!(text.len() <= 2048 + 1, "{head}: {}", text.len());
        assert!(
            !text.contains("<font") && !text.contains("**") && !text.contains("\n> "),
            "{text}"
        );
    }
    assert!(parts[0].1.starts_with("告警汇总 共 300 条\n"), "{}", parts[0].1);

    for stdin_args in [vec!["render", "--digest"], vec!["render", "--digest", "-"]] {
        let mut child = crate::util::relay_command()
            .args(&stdin_args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let body = std::fs::read(&files[0]).expect("read");
        child.stdin.take().expect("stdin").write_all(&body).expect("write");
        let out = child.wait_with_output().expect("output");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("30 alerts in 1 groups"), "{err}");
    }
}

/// Whether a delivered message tells `fp` (built by `payload`): in the full layout by its
/// `fp=` marker, in the compact one by its `instance=` line.
fn told_in_messages(fake: &FakeWeCom, fp: &str) -> bool {
    let compact = format!("instance={fp}.example:9100");
    fake.delivered_alerts().iter().any(|(f, _)| f == fp)
        || fake.delivered().iter().any(|r| r.content().contains(&compact))
}

/// Issue 15: a storm the budget cannot show within `--max-delay` is told by one digest message
/// and the full list as a file, within the budget (the fake enforces it), with every alert in
/// a message or in the file; afterwards a single new alert goes out in full again.
#[test]
fn a_storm_is_told_by_a_digest_and_a_file_within_the_budget() {
    let fake = FakeWeCom::start();
    fake.enforce_budget(2, Duration::from_secs(2));
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--rate",
        "2/2s",
        "--max-delay",
        "3s",
        "--dedup-window",
        "0",
    ]);
    let mut fps = Vec::new();
    for g in 0..10 {
        let group: Vec<String> = (0..30).map(|i| format!("s{g}x{i}")).collect();
        let alerts: Vec<A> = group
            .iter()
            .enumerate()
            .map(|(i, fp)| A(fp, if i % 3 == 0 { "resolved" } else { "firing" }, "StormTest"))
            .collect();
        assert_eq!(relay.post(&payload(&format!("storm{g}"), &alerts)).status, 200);
        fps.extend(group);
    }
    let told = |fp: &String| {
        let in_file = fake
            .uploads()
            .iter()
            .any(|u| String::from_utf8_lossy(&u.data).contains(&format!("fp={fp} ")));
        in_file || told_in_messages(&fake, fp)
    };
    wait_until(Duration::from_secs(30), "every alert in a message or the file", || {
        fake.delivered().iter().any(|r| r.msgtype() == "file") && fps.iter().all(told)
    });
    let sent = fake.received();
    assert!(sent.iter().all(|r| r.answered == "Ok"), "the budget was exceeded");
    let digest = sent.iter().find(|r| r.content().contains("告警汇总")).expect("a digest");
    assert!(digest.content().contains("完整列表见随后的附件 alerts-"), "{}", digest.content());
    assert!(sent.len() <= 6, "{} messages for 300 alerts", sent.len());
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1);
    assert!(uploads[0].file_name.starts_with("alerts-") && uploads[0].file_name.ends_with(".md"));
    // Counted once the file message is settled (just after the fake answered it).
    let want = [
        "weixin_robot_digests_total{robot=\"default\"} 1\n",
        // Every alert's delay observed once: by the message or the file that told it.
        "weixin_robot_delivery_delay_seconds_count{robot=\"default\"} 300\n",
    ];
    wait_until(Duration::from_secs(5), "digest metrics", || {
        let metrics = relay.metrics();
        want.iter().all(|w| metrics.contains(w))
    });
    assert!(relay.logs().contains("digest sent robot=default"), "{}", relay.logs());

    // The storm is over: one new alert is sent in full, not digested.
    let before = fake.received().len();
    assert_eq!(relay.post(&payload("calm", &[A("calm1", "firing", "AfterStorm")])).status, 200);
    wait_until(Duration::from_secs(10), "the new alert in full", || {
        fake.delivered_alerts().iter().any(|(f, _)| f == "calm1")
    });
    assert!(fake.received()[before..].iter().all(|r| !r.content().contains("告警汇总")));
    assert_eq!(fake.uploads().len(), 1);
}

/// An upload WeCom refuses for good: the relay sends compact messages instead (nothing is
/// lost, no file message, the budget kept) and tries the file path again only after a back-off.
#[test]
fn a_refused_upload_falls_back_to_compact_messages() {
    let fake = FakeWeCom::start();
    fake.enforce_budget(5, Duration::from_secs(1));
    fake.fail_uploads(93000);
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--rate",
        "5/1s",
        "--max-delay",
        "1ms",
        "--dedup-window",
        "0",
    ]);
    let mut fps = Vec::new();
    for g in 0..5 {
        let group: Vec<String> = (0..300).map(|i| format!("f{g}x{i}")).collect();
        let alerts: Vec<A> = group.iter().map(|fp| A(fp, "firing", "FallbackTest")).collect();
        assert_eq!(relay.post(&payload(&format!("fallback{g}"), &alerts)).status, 200);
        fps.extend(group);
    }
    wait_until(Duration::from_secs(60), "every alert in a message", || {
        fps.iter().all(|fp| told_in_messages(&fake, fp))
    });
    assert!(fake.upload_failures() >= 1, "the file path was tried");
    let sent = fake.received();
    assert!(sent.iter().all(|r| r.msgtype() != "file"), "no file message without a file");
    assert!(sent.iter().all(|r| r.answered == "Ok"), "the budget was exceeded");
    let logs = relay.logs();
    assert!(logs.contains("file upload failed") && logs.contains("errcode=93000"), "{logs}");
    assert_eq!(logs.matches("file upload failed").count(), 1, "logged once: {logs}");
    assert!(!logs.contains(SECRET), "key in the logs");
    assert!(sent.iter().any(|r| r.content().contains("FallbackTest</font> × ")), "compact");
    // Back-off: far fewer upload attempts than messages.
    assert!(fake.upload_failures() * 2 < sent.len(), "{} uploads", fake.upload_failures());
}

/// Issue 15, item 4: WeCom refuses only the first upload. The compact fallback sends only what
/// the budget allows in that window, then the file path is tried again once its back-off has
/// passed: the storm is told by a file within back-off + one window of the refusal (sending
/// the fallback round to its end would take about 7 windows here), every alert exactly once (in a
/// compact message or in the file), nothing lost, no window over budget.
#[test]
fn issue_15_a_one_off_refused_upload_costs_one_window_not_the_storm() {
    let fake = FakeWeCom::start();
    let window = Duration::from_secs(2);
    fake.enforce_budget(3, window);
    fake.fail_uploads_first(40006, 1);
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--rate",
        "3/2s",
        "--max-delay",
        "1ms",
        "--dedup-window",
        "0",
        "--retry-initial",
        "500ms",
    ]);
    // One notification, so the round whose upload is refused has the whole storm to tell.
    let fps: Vec<String> = (0..1500).map(|i| format!("o{i}")).collect();
    let alerts: Vec<A> = fps.iter().map(|fp| A(fp, "firing", "OneOffTest")).collect();
    assert_eq!(relay.post(&payload("oneoff", &alerts)).status, 200);
    wait_until(Duration::from_secs(60), "every alert told", || all_told(&fake, &fps));
    let refused = fake.upload_refused_at();
    assert_eq!(refused.len(), 1, "one refusal");
    let sent = fake.received();
    assert!(sent.iter().all(|r| r.answered == "Ok"), "the budget was exceeded");
    let file_at = sent.iter().find(|r| r.msgtype() == "file").expect("a file message").at;
    // Compact messages between the refusal and the file: what one window allows, no more.
    let fallback = sent.iter().filter(|r| r.at > refused[0] && r.at < file_at);
    let fallback: Vec<_> = fallback.filter(|r| !r.content().contains("告警汇总")).collect();
    assert!(!fallback.is_empty(), "no compact message meanwhile");
    assert!(fallback.len() <= 3, "{} compact messages before the file", fallback.len());
    // Back-off (at most --retry-initial) + one window and its margin, and one window of slack.
    let bound = Duration::from_millis(500) + window + window / 30 + window;
    assert!(file_at - refused[0] <= bound, "file after {:?}", file_at - refused[0]);
    // Exactly once: an alert in a compact message is not in the file, and in one message only.
    let file = fake
        .uploads()
        .iter()
        .map(|u| String::from_utf8_lossy(&u.data).into_owned())
        .collect::<String>();
    let messages: Vec<&str> =
        sent.iter().filter(|r| !r.content().contains("告警汇总")).map(|r| r.content()).collect();
    for fp in &fps {
        let line = format!("instance={fp}.example");
        let in_messages = messages.iter().filter(|m| m.contains(&line)).count();
        let in_file = file.contains(&format!("fp={fp} "));
        assert_eq!(
            in_messages + usize::from(in_file),
            1,
            "{fp}: {in_messages} messages, file {in_file}"
        );
    }
    let logs = relay.logs();
    assert_eq!(logs.matches("file upload failed").count(), 1, "{logs}");
    assert!(logs.contains("errcode=40006"), "{logs}");
}

/// When the full layout does not fit the budget within `--max-delay` and the compact one fits
/// what the window still allows, the backlog goes out compact: a crowd of one alertname as one
/// block, every alert on a line.
#[test]
fn a_backlog_that_fits_compact_goes_out_compact() {
    let fake = FakeWeCom::start();
    fake.enforce_budget(12, Duration::from_secs(2));
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--rate",
        "12/2s",
        "--max-delay",
        "1500ms",
        "--dedup-window",
        "0",
    ]);
    let mut fps = Vec::new();
    for g in 0..6 {
        let group: Vec<String> = (0..30).map(|i| format!("c{g}x{i}")).collect();
        let alerts: Vec<A> = group.iter().map(|fp| A(fp, "firing", "CompactTest")).collect();
        assert_eq!(relay.post(&payload(&format!("compact{g}"), &alerts)).status, 200);
        fps.extend(group);
    }
    wait_until(Duration::from_secs(30), "every alert in a message", || {
        fps.iter().all(|fp| told_in_messages(&fake, fp))
    });
    let sent = fake.received();
    assert!(sent.iter().all(|r| r.answered == "Ok"), "the budget was exceeded");
    let compact: Vec<_> = sent
        .iter()
        .filter(|r| r.content().contains("<font color=\"warning\">CompactTest</font> × "))
        .collect();
    assert!(!compact.is_empty(), "no compact message");
    assert!(fake.uploads().is_empty(), "no digest needed");
    // 180 alerts in the full layout take about 36 messages; compact a handful.
    assert!(sent.len() <= 12, "{} messages", sent.len());
    assert!(sent.iter().all(|r| r.content().len() <= 4096));
}

/// A compact round @-mentions once for all its groups (the full layout mentions per group).
#[test]
fn a_compact_round_mentions_once() {
    let fake = FakeWeCom::start();
    fake.enforce_budget(12, Duration::from_secs(2));
    let dir = TempDir::new("storm-mention");
    let config = dir.path().join("robots.toml");
    std::fs::write(
        &config,
        format!(
            "[robots.ops]\nkey = \"{}\"\nrate = \"12/2s\"\nmax_delay = \"1500ms\"\nmention_users = [\"zhangsan\"]\n",
            fake.url()
        ),
    )
    .expect("config");
    let relay = Relay::start(&["--config", config.to_str().expect("utf8"), "--dedup-window", "0"]);
    let mut fps = Vec::new();
    for g in 0..6 {
        let group: Vec<String> = (0..30).map(|i| format!("m{g}x{i}")).collect();
        let alerts: Vec<A> = group.iter().map(|fp| A(fp, "firing", "MentionTest")).collect();
        assert_eq!(relay.post(&payload(&format!("mention{g}"), &alerts)).status, 200);
        fps.extend(group);
    }
    wait_until(Duration::from_secs(30), "every alert in a message", || {
        fps.iter().all(|fp| told_in_messages(&fake, fp))
    });
    wait_until(Duration::from_secs(5), "the mention after the compact round", || {
        fake.delivered().last().is_some_and(|r| r.msgtype() == "text")
    });
    let sent = fake.received();
    assert!(sent.iter().all(|r| r.answered == "Ok"), "the budget was exceeded");
    let mentions: Vec<_> = sent.iter().filter(|r| r.msgtype() == "text").collect();
    assert!(!mentions.is_empty() && mentions.len() < 6, "{} mentions", mentions.len());
    let last = mentions.last().map(|r| r.body.clone()).unwrap_or_default();
    assert_eq!(last["text"]["mentioned_list"], json!(["zhangsan"]), "{last}");
}

/// Issue 15, at the real budget sped up 10× (20 per 6 s, enforced by the fake): 1,000
/// one-alert notifications posted within a fraction of the window. The first message goes
/// while the burst is still arriving; the window's budget is not spent on near-empty
/// messages, so within one window of the burst ≥ 95 % of the alerts are readable in the group
/// (in messages, or in the file once its file message is in), with no 45009 and no window
/// over budget.
#[test]
fn issue_15_a_burst_is_paced_and_readable_within_a_window() {
    let window = Duration::from_secs(6);
    let fake = FakeWeCom::start();
    fake.enforce_budget(20, window);
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--rate",
        "20/6s",
        "--max-delay",
        "12s",
        "--dedup-window",
        "0",
    ]);
    let fps: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
    let bodies: Vec<Vec<u8>> = fps
        .iter()
        .map(|fp| payload(&format!("burst-{fp}"), &[A(fp, "firing", "BurstTest")]))
        .collect();
    // The first notification alone, then the rest from 8 connections at once.
    assert_eq!(relay.post(&bodies[0]).status, 200);
    let addr = relay.addr;
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let mine: Vec<Vec<u8>> = bodies.iter().skip(1 + w).step_by(8).cloned().collect();
            std::thread::spawn(move || {
                mine.iter().all(|b| crate::util::post(addr, "/alertinfo", b).status == 200)
            })
        })
        .collect();
    for w in workers {
        assert!(w.join().expect("poster"), "a notification was refused");
    }
    let burst_end = std::time::Instant::now();
    let first = fake.received().first().map(|r| r.at).expect("a message during the burst");
    assert!(first < burst_end, "the first message waited for the burst");

    // Everything eventually (generous), then what the group could read one window after.
    let file_text = |uploads: &[crate::util::Upload], id: &str| {
        uploads
            .iter()
            .find(|u| u.media_id == id)
            .map(|u| String::from_utf8_lossy(&u.data).into_owned())
            .unwrap_or_default()
    };
    let readable_by = |deadline: std::time::Instant| {
        let uploads = fake.uploads();
        let mut text = String::new();
        for r in fake.delivered().iter().filter(|r| r.at <= deadline) {
            text.push_str(r.content());
            if r.msgtype() == "file" {
                text.push_str(&file_text(
                    &uploads,
                    r.body["file"]["media_id"].as_str().unwrap_or(""),
                ));
            }
            text.push('\n');
        }
        fps.iter()
            .filter(|fp| {
                text.contains(&format!("instance={fp}.example:9100"))
                    || text.contains(&format!("fp={fp} "))
            })
            .count()
    };
    wait_until(Duration::from_secs(60), "every alert readable", || {
        readable_by(std::time::Instant::now()) == fps.len()
    });
    let within = readable_by(burst_end + window);
    let sent = fake.received();
    let early: Vec<usize> =
        sent.iter().filter(|r| r.at <= burst_end + window).map(|r| r.content().len()).collect();
    assert!(within * 100 >= fps.len() * 95, "{within} of 1000 readable within a window: {early:?}");
    assert!(sent.iter().all(|r| r.answered == "Ok"), "45009: the budget was exceeded");
    for (i, a) in sent.iter().enumerate() {
        let n = sent[i..].iter().take_while(|b| b.at - a.at < window).count();
        assert!(n <= 20, "{n} messages within one window");
    }
    // Afterwards a single new alert still goes out in full, by itself.
    let before = fake.received().len();
    assert_eq!(relay.post(&payload("calm", &[A("calm2", "firing", "AfterBurst")])).status, 200);
    wait_until(Duration::from_secs(15), "the new alert in full", || {
        fake.delivered_alerts().iter().any(|(f, _)| f == "calm2")
    });
    assert_eq!(fake.received().len(), before + 1, "one message for one alert");
}

/// Digests in flight across kill -9 (issue 15, durability): a relay with `--state-dir`
/// running a storm that only a digest can tell (2 messages per 2 s, `--max-delay 1ms`),
/// retries held back for longer than the test takes.
fn durable_storm(fake: &FakeWeCom, state: &str) -> (Relay, Vec<String>, Vec<&'static str>) {
    let args = vec![
        "--rate",
        "2/2s",
        "--max-delay",
        "1ms",
        "--dedup-window",
        "0",
        "--retry-initial",
        "60s",
        "--retry-max",
        "60s",
    ];
    let mut all = vec!["--key".to_string(), fake.url(), "--state-dir".into(), state.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let relay = Relay::start(&refs);
    let fps = post_storm(&relay, "d", "DurableTest");
    (relay, fps, args)
}

/// Posts 10 groups (`{prefix}0` …) of 30 firing alerts named `alertname`, fingerprints
/// `{prefix}{group}x{i}`; returns the fingerprints.
pub fn post_storm(relay: &Relay, prefix: &str, alertname: &str) -> Vec<String> {
    let mut fps = Vec::new();
    for g in 0..10 {
        let group: Vec<String> = (0..30).map(|i| format!("{prefix}{g}x{i}")).collect();
        let alerts: Vec<A> = group.iter().map(|fp| A(fp, "firing", alertname)).collect();
        assert_eq!(relay.post(&payload(&format!("{prefix}-storm{g}"), &alerts)).status, 200);
        fps.extend(group);
    }
    fps
}

fn restart(fake: &FakeWeCom, state: &str, args: &[&str]) -> Relay {
    let mut all = vec!["--key".to_string(), fake.url(), "--state-dir".into(), state.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Relay::start(&refs)
}

/// The text of every uploaded file whose file message was delivered.
fn delivered_files(fake: &FakeWeCom) -> String {
    let uploads = fake.uploads();
    let mut text = String::new();
    for r in fake.delivered().iter().filter(|r| r.msgtype() == "file") {
        let id = r.body["file"]["media_id"].as_str().unwrap_or("");
        if let Some(u) = uploads.iter().find(|u| u.media_id == id) {
            text.push_str(&String::from_utf8_lossy(&u.data));
        }
    }
    text
}

/// Every alert in a delivered message or in a file whose file message was delivered (a file
/// row has the description, `fp=…`; a message line the instance).
pub fn all_told(fake: &FakeWeCom, fps: &[String]) -> bool {
    let mut text: String = fake.delivered().iter().map(|r| r.content()).collect();
    text.push_str(&delivered_files(fake));
    fps.iter().all(|fp| {
        text.contains(&format!("fp={fp} ")) || text.contains(&format!("instance={fp}.example"))
    })
}

/// The storm's arguments with a `--max-delay` under which the full layout fits: a relay
/// deciding afresh would send the storm's alerts in messages.
fn calm_args(args: &[&'static str]) -> Vec<&'static str> {
    args.iter().map(|a| if *a == "1ms" { "1h" } else { a }).collect()
}

/// Alerts of `durable_storm` told both in a delivered file and in a message other than the
/// digest: a group that saw them twice.
fn told_twice(fake: &FakeWeCom, fps: &[String]) -> Vec<String> {
    let delivered = fake.delivered();
    let file = delivered_files(fake);
    let messages: Vec<&str> =
        delivered.iter().map(|r| r.content()).filter(|c| !c.contains("告警汇总")).collect();
    fps.iter()
        .filter(|fp| file.contains(&format!("fp={fp} ")))
        .filter(|fp| {
            let line = format!("instance={fp}.example");
            messages.iter().any(|m| m.contains(&line) || alerts_in(m).iter().any(|(f, _)| f == *fp))
        })
        .cloned()
        .collect()
}

fn digests(fake: &FakeWeCom) -> usize {
    fake.delivered().iter().filter(|r| r.content().contains("告警汇总")).count()
}

fn file_messages(fake: &FakeWeCom) -> usize {
    fake.delivered().iter().filter(|r| r.msgtype() == "file").count()
}

/// Killed after the upload, before the digest message went through: after the restart the
/// digest goes on with the same media id (no second upload) and every alert arrives, even
/// though the restarted relay's budget would now fit the full layout (`--max-delay 1h`).
#[test]
fn issue_15_kill_9_after_the_upload_reuses_the_media_id() {
    let dir = TempDir::new("inflight-upload");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.enforce_budget(2, Duration::from_secs(2));
    fake.refuse_containing("告警汇总", -1);
    let (mut relay, fps, args) = durable_storm(&fake, &state);
    wait_until(Duration::from_secs(30), "the digest message refused after the upload", || {
        fake.received().iter().any(|r| r.content().contains("告警汇总"))
    });
    assert_eq!(fake.uploads().len(), 1);
    assert!(dir.path().join("digest-inflight.json").exists(), "no record of the upload");
    relay.kill9();
    fake.stop_refusing();
    let relay = restart(&fake, &state, &calm_args(&args));
    wait_until(Duration::from_secs(30), "every alert told", || {
        file_messages(&fake) == 1 && all_told(&fake, &fps)
    });
    assert_eq!(fake.uploads().len(), 1, "uploaded again instead of reusing the media id");
    assert_eq!(digests(&fake), 1);
    assert_eq!(told_twice(&fake, &fps), Vec::<String>::new(), "told twice");
    assert!(relay.logs().contains("media_id_reused=true"), "{}", relay.logs());
}

/// Killed after the digest message, before the file message went through: after the restart
/// only the file message is sent (with the same media id), not a second digest or upload, and
/// not the digested alerts in messages although the restarted relay's budget would now fit
/// the full layout (`--max-delay 1h`): the group does not see them twice.
#[test]
fn issue_15_kill_9_after_the_digest_sends_only_the_file() {
    let dir = TempDir::new("inflight-digest");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.enforce_budget(2, Duration::from_secs(2));
    fake.fail_file_messages(Some(-1));
    let (mut relay, fps, args) = durable_storm(&fake, &state);
    wait_until(Duration::from_secs(30), "the file message refused after the digest", || {
        fake.received().iter().any(|r| r.msgtype() == "file")
    });
    assert_eq!(digests(&fake), 1);
    relay.kill9();
    fake.fail_file_messages(None);
    let relay = restart(&fake, &state, &calm_args(&args));
    wait_until(Duration::from_secs(30), "every alert told", || {
        file_messages(&fake) == 1 && all_told(&fake, &fps)
    });
    assert_eq!(fake.uploads().len(), 1, "uploaded again");
    assert_eq!(digests(&fake), 1, "the digest was sent again");
    assert_eq!(told_twice(&fake, &fps), Vec::<String>::new(), "told twice");
    assert!(relay.logs().contains("media_id_reused=true"), "{}", relay.logs());
}

/// Killed right after the file message was accepted (and the relay knew it): the restart does
/// not send the digest or the file again for the same changes (whether the spool had forgotten
/// them or not), and a new alert afterwards goes out as usual. (Killed before the relay heard
/// WeCom's answer, the file goes once more: the crash window.)
#[test]
fn issue_15_kill_9_after_the_file_sends_nothing_again() {
    let dir = TempDir::new("inflight-file");
    let state = dir.path().to_str().expect("utf8").to_string();
    let fake = FakeWeCom::start();
    fake.enforce_budget(2, Duration::from_secs(2));
    let (mut relay, fps, args) = durable_storm(&fake, &state);
    wait_until(Duration::from_secs(30), "the file message", || {
        file_messages(&fake) == 1 && relay.logs().contains("digest sent robot=default")
    });
    relay.kill9();
    assert!(all_told(&fake, &fps));
    let relay = restart(&fake, &state, &args);
    // Replayed states would be sent before a newer group: wait for one.
    assert_eq!(relay.post(&payload("after", &[A("after1", "firing", "AfterKill")])).status, 200);
    wait_until(Duration::from_secs(30), "the new alert", || {
        fake.delivered_alerts().iter().any(|(f, _)| f == "after1")
            || fake.delivered().iter().any(|r| r.content().contains("instance=after1.example"))
    });
    assert_eq!(file_messages(&fake), 1, "the file was sent again");
    assert_eq!(digests(&fake), 1, "the digest was sent again");
    assert_eq!(fake.uploads().len(), 1);
}

/// A template with a `[compact]` section draws storm mode's compact messages itself; every
/// alert still appears once, on its `[compact_line]`, within the budget.
#[test]
fn a_template_with_a_compact_section_draws_the_compact_messages() {
    let fake = FakeWeCom::start();
    fake.enforce_budget(5, Duration::from_secs(1));
    let dir = TempDir::new("storm-template");
    let template = dir.path().join("ops.tpl");
    std::fs::write(
        &template,
        "[alert]\n**{{labels.alertname}}** {{labels}}\n> {{annotations}} · {{generator_url}}\n\
         [compact]\n### 🌀 {{alertname}} × {{count}} ({{severity}})\n> {{shared_labels}}\n\
         [compact_line]\n- {{labels.instance}} 自 {{starts_at}}\n",
    )
    .expect("template");
    let config = dir.path().join("robots.toml");
    std::fs::write(
        &config,
        format!(
            "[robots.ops]\nkey = \"{}\"\nrate = \"5/1s\"\nmax_delay = \"2s\"\ntemplate = \"{}\"\n",
            fake.url(),
            template.display()
        ),
    )
    .expect("config");
    let relay = Relay::start(&["--config", config.to_str().expect("utf8"), "--dedup-window", "0"]);
    let mut fps = Vec::new();
    for g in 0..6 {
        let group: Vec<String> = (0..30).map(|i| format!("t{g}x{i}")).collect();
        let alerts: Vec<A> = group.iter().map(|fp| A(fp, "firing", "TemplateTest")).collect();
        assert_eq!(relay.post(&payload(&format!("tpl{g}"), &alerts)).status, 200);
        fps.extend(group);
    }
    // Full layout (the template's [alert]) shows `fp=`; compact lines show `- <instance>`.
    let told = |fp: &String| {
        let line = format!("\n- {fp}.example:9100 自 ");
        fake.delivered()
            .iter()
            .any(|r| r.content().contains(&line) || r.content().contains(&format!("fp={fp} ")))
    };
    wait_until(Duration::from_secs(30), "every alert in a message", || fps.iter().all(told));
    let sent = fake.received();
    assert!(sent.iter().all(|r| r.answered == "Ok"), "the budget was exceeded");
    let compact: Vec<_> =
        sent.iter().filter(|r| r.content().contains("### 🌀 TemplateTest × ")).collect();
    assert!(!compact.is_empty(), "no compact message in the template's look");
    let first = compact[0].content();
    assert!(
        first.contains("(critical)\n> instance") || first.contains("(critical)\n> project=it"),
        "{first}"
    );
    assert!(!first.contains("告警名称"), "the built-in look: {first}");
    assert!(sent.len() <= 12, "{} messages", sent.len());
}
