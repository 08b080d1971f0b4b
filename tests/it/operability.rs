//! Operability: the `render` and `send-test` commands, `/metrics`, and a run that forces every
//! failure path and then searches all logs, metrics and spool file names for the key.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::util::*;

/// `render` prints exactly the messages the golden file lists, after splitting.
#[test]
fn render_command_matches_golden_files() {
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for case in ["firing", "mixed", "oversized", "cjk"] {
        let json = golden.join(format!("{case}.json"));
        let (code, out, err) = run_to_exit(&["render", json.to_str().expect("utf8")], &[]);
        assert_eq!(code, Some(0), "{case}: {err}");
        let want: Vec<String> = std::fs::read_to_string(golden.join(format!("{case}.md")))
            .expect("golden md")
            .trim_end_matches('\n')
            .split("\n\n----- next message -----\n\n")
            .map(str::to_string)
            .collect();
        let mut got: Vec<String> = Vec::new();
        for line in out.lines() {
            if line.starts_with("----- message ") {
                got.push(String::new());
            } else if let Some(last) = got.last_mut() {
                if !last.is_empty() {
                    last.push('\n');
                }
                last.push_str(line);
            }
        }
        assert_eq!(got, want, "{case}");
        for (i, part) in got.iter().enumerate() {
            assert!(out.contains(&format!(
                "----- message {}/{} ({} bytes) -----",
                i + 1,
                got.len(),
                part.len()
            )));
        }
    }
}

#[test]
fn render_reads_stdin_and_rejects_bad_payloads() {
    let mut child = relay_command()
        .args(["render", "-", "--tz", "Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let body = payload("stdin", &[A("st1", "firing", "FromStdin")]);
    child.stdin.take().expect("stdin").write_all(&body).expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FromStdin") && text.contains("告警时间: 2024-05-01 12:00:00"), "{text}");

    let (code, _, err) = run_to_exit(&["render", "/dev/null"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("payload rejected: body is not JSON"), "{err}");
}

#[test]
fn send_test_prints_the_answer_with_a_hint() {
    let fake = FakeWeCom::start();
    let (code, out, _) = run_to_exit(&["send-test", "--key", &fake.url()], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok: WeCom answered errcode 0"), "{out}");
    // The fake records a message a moment after it has answered: poll, do not index at once.
    wait_until(Duration::from_secs(5), "test message recorded", || {
        fake.delivered().first().is_some_and(|r| r.content().contains("weixin-robot 测试消息"))
    });

    for (errcode, hint) in
        [(93000, "the key is wrong or the robot was removed"), (45009, "rate limited")]
    {
        fake.script([Behave::Errcode(errcode)]);
        let (code, out, err) = run_to_exit(&["send-test", "--key", &fake.url()], &[]);
        assert_eq!(code, Some(1));
        assert!(out.contains(&format!("errcode {errcode}")) && out.contains(hint), "{out}");
        assert!(!out.contains(SECRET) && !err.contains(SECRET), "{out}{err}");
    }
}

#[test]
fn metrics_count_what_happened() {
    let fake = FakeWeCom::start();
    fake.script([Behave::Errcode(45009)]);
    let relay =
        Relay::start(&["--key", &fake.url(), "--rate", "5/500ms", "--retry-initial", "20ms"]);
    assert_eq!(
        relay.post(&payload("m", &[A("m1", "firing", "M"), A("m2", "resolved", "M")])).status,
        200
    );
    assert_eq!(relay.post(b"nope").status, 400);
    wait_until(Duration::from_secs(10), "delivered after 45009", || fake.delivered().len() == 1);
    // The relay counts a send once it has read the answer, a moment after the fake counted it.
    wait_until(Duration::from_secs(5), "send counted", || {
        relay.metrics().contains("weixin_robot_outbox_messages{robot=\"default\"} 0")
    });
    let m = relay.metrics();
    for line in [
        "weixin_robot_notifications_received_total{status=\"firing\"} 1",
        "weixin_robot_alerts_received_total{status=\"firing\"} 1",
        "weixin_robot_alerts_received_total{status=\"resolved\"} 1",
        "weixin_robot_requests_rejected_total{reason=\"bad_payload\"} 1",
        "weixin_robot_messages_sent_total{robot=\"default\"} 1",
        "weixin_robot_messages_failed_total{robot=\"default\",reason=\"errcode\",class=\"rate_limited\",errcode=\"45009\"} 1",
        "weixin_robot_retries_total{robot=\"default\"} 1",
        "weixin_robot_outbox_messages{robot=\"default\"} 0",
        "weixin_robot_send_duration_seconds_count{robot=\"default\"} 2",
        "weixin_robot_build_info{version=\"",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    // Every sample line is `name{labels} value` or `name value`: the text format parses.
    for l in m.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = l.rsplit(' ').next().unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "bad sample line {l:?}");
    }
}

/// Force every failure path, at debug log level, and look for the key everywhere.
#[test]
fn the_key_never_leaks() {
    let dir = TempDir::new("leak");
    let fake = FakeWeCom::start();
    fake.script([
        Behave::Errcode(93000),
        Behave::Errcode(45009),
        Behave::Http(500),
        Behave::Http(404),
        Behave::Garbage,
        Behave::Hang(Duration::from_millis(800)),
        Behave::Errcode(40058),
        Behave::Errcode(-1),
    ]);
    let state = dir.path().to_str().expect("utf8");
    let mut relay = Relay::start_env(
        &[
            "--key",
            &fake.url(),
            "--state-dir",
            state,
            "--timeout",
            "300ms",
            "--retry-initial",
            "20ms",
            "--retry-max",
            "50ms",
            "--rate",
            "50/1s",
        ],
        &[("RUST_LOG", "debug"), ("IT_RUST_LOG", "debug")],
    );
    for i in 0..6 {
        let _ =
            relay.post(&payload(&format!("leak{i}"), &[A(&format!("lk{i}"), "firing", "Leak")]));
        wait_until(Duration::from_secs(10), "each message attempted", || fake.received().len() > i);
    }
    let _ = relay.post(b"{bad");
    // Merging packs queued notifications together, so count settled work, not sends.
    wait_until(Duration::from_secs(20), "the outbox settled", || {
        relay.metrics().contains("weixin_robot_outbox_messages{robot=\"default\"} 0")
    });
    let metrics = relay.metrics();
    relay.signal("TERM");
    relay.wait_exit(Duration::from_secs(15));
    let logs = relay.logs();
    assert!(logs.contains("DEBUG"), "the run was at debug level");
    assert!(
        logs.contains("errcode=93000") && logs.contains("timed out"),
        "failure paths were hit:\n{logs}"
    );
    assert!(!logs.contains(SECRET), "key in logs:\n{logs}");
    assert!(!metrics.contains(SECRET), "key in metrics");
    let mut names = Vec::new();
    for sub in ["queue", "failed", "corrupt"] {
        for e in std::fs::read_dir(dir.path().join(sub)).into_iter().flatten().flatten() {
            names.push(e.file_name().to_string_lossy().into_owned());
            let content = std::fs::read_to_string(e.path()).unwrap_or_default();
            assert!(!content.contains(SECRET), "key inside {sub}/{:?}", e.file_name());
        }
    }
    assert!(
        names.iter().any(|n| n.ends_with(".md")),
        "failed/ has the dropped messages: {names:?}"
    );
    assert!(!names.iter().any(|n| n.contains(SECRET)));

    // Usage errors and --help, with the key in the environment.
    let (_, help, _) = run_to_exit(&["--help"], &[("KEY", &fake.url())]);
    assert!(!help.contains(SECRET));
    let (_, _, err) = run_to_exit(&["--port", "x"], &[("KEY", &fake.url())]);
    assert!(!err.contains(SECRET), "{err}");
}

#[test]
fn healthcheck_command_for_images_without_a_shell() {
    let relay = Relay::start(&["--dry-run"]);
    let port = relay.addr.port().to_string();
    let (code, out, _) = run_to_exit(&["healthcheck", "--port", &port], &[]);
    assert_eq!(code, Some(0), "{out}");
    // Same as a container would: PORT from the environment, default listen address.
    let (code, _, _) = run_to_exit(&["healthcheck"], &[("PORT", &port)]);
    assert_eq!(code, Some(0));
    drop(relay);
    let (code, _, err) = run_to_exit(&["healthcheck", "--port", &port], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("healthcheck: connecting"), "{err}");
}

/// The messages `render` prints, split at its `----- message i/n (N bytes) -----` headers.
fn rendered_messages(out: &str) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    for line in out.lines() {
        if line.starts_with("----- message ") {
            got.push(String::new());
        } else if let Some(last) = got.last_mut() {
            if !last.is_empty() {
                last.push('\n');
            }
            last.push_str(line);
        }
    }
    got
}

/// What WeCom received, in the form `render` prints: the content, or the whole JSON body of
/// an @-mention message.
fn as_rendered(r: &Received) -> String {
    let body = &r.body;
    if body["msgtype"] == "text" && body["text"].get("mentioned_list").is_some() {
        return body.to_string();
    }
    let kind = body["msgtype"].as_str().unwrap_or("");
    body[kind]["content"].as_str().unwrap_or("").to_string()
}

/// Issue #16: `render` ignored `--config`. Now `render --config FILE [--robot NAME]` prints
/// exactly what the relay sends for that robot: its template, msgtype, split and mentions.
#[test]
fn render_with_config_prints_what_the_robot_sends() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("render-config");
    let tpl = dir.path().join("ops.tpl");
    std::fs::write(&tpl, "[alert]\n**{{labels.alertname}}** on {{labels.instance}}\n")
        .expect("template");
    let config = dir.path().join("config.toml");
    let text = |key_line: &str| {
        format!(
            "default_robot = \"ops\"\n\
             [robots.ops]\n{key_line}\ntemplate = \"{}\"\nmention_users = [\"zhangsan\"]\n\n\
             [robots.dba]\n{key_line}\nmsgtype = \"text\"\n\n\
             [[mentions]]\nlabel = \"severity\"\nvalue = \"critical\"\nusers = [\"lisi\"]\nrobot = \"ops\"\n",
            tpl.display()
        )
    };
    std::fs::write(&config, text(&format!("key = \"{}\"", fake.url()))).expect("config");
    let body = payload("rc", &[A("rc1", "firing", "Rendered"), A("rc2", "firing", "Rendered")]);
    let json = dir.path().join("payload.json");
    std::fs::write(&json, &body).expect("payload");
    let (config_s, json_s) = (config.to_str().expect("utf8"), json.to_str().expect("utf8"));

    let relay = Relay::start(&["--config", config_s]);
    assert_eq!(relay.post(&body).status, 200);
    wait_until(Duration::from_secs(10), "ops: markdown and mention", || {
        fake.delivered().len() == 2
    });
    assert_eq!(post(relay.addr, "/alertinfo/dba", &body).status, 200);
    wait_until(Duration::from_secs(10), "dba: text", || fake.delivered().len() == 3);
    let sent: Vec<String> = fake.delivered().iter().map(as_rendered).collect();
    drop(relay);

    // render reads no key: point every key at a file nobody can read.
    std::fs::write(&config, text("key_file = \"/nonexistent/key\"")).expect("config");
    let (code, out, err) = run_to_exit(&["render", "--config", config_s, json_s], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("robot ops"), "{err}");
    assert_eq!(rendered_messages(&out), sent[..2], "ops (routed by default)");
    assert!(sent[0].contains("**Rendered** on rc1.example:9100"), "template used: {}", sent[0]);
    assert!(sent[1].contains("zhangsan") && sent[1].contains("lisi"), "mentions: {}", sent[1]);

    let (code, out, err) =
        run_to_exit(&["render", "--config", config_s, "--robot=dba", json_s], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(rendered_messages(&out), sent[2..], "dba");

    // Routed by the label, as the relay would.
    let labelled = String::from_utf8(body.clone())
        .expect("utf8")
        .replace("\"labels\":{", "\"labels\":{\"wecom_robot\":\"dba\",");
    std::fs::write(&json, labelled).expect("payload");
    let (code, out, err) = run_to_exit(&["render", "--config", config_s, json_s], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("robot dba: msgtype Text"), "{err}");
    assert!(!out.contains("zhangsan") && !out.contains("**"), "{out}");

    let (code, _, err) = run_to_exit(&["render", "--config", config_s, "--robot", "nope"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid --robot: no such robot (robots: ops, dba)"), "{err}");
}

/// `send-test --config FILE --robot NAME` tests that robot's key, not the default one's.
#[test]
fn send_test_uses_the_chosen_robot() {
    let (ops, dba) = (FakeWeCom::start(), FakeWeCom::start());
    let dir = TempDir::new("send-test-robot");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "default_robot = \"ops\"\n[robots.ops]\nkey = \"{}\"\n[robots.dba]\nkey = \"{}\"\n",
            ops.url(),
            dba.url()
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf8");
    let (code, out, err) = run_to_exit(&["send-test", "--config", config, "--robot", "dba"], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("(robot dba)") && !out.contains(SECRET), "{out}");
    assert_eq!((ops.delivered().len(), dba.delivered().len()), (0, 1));
    let (code, out, _) = run_to_exit(&["send-test", "--config", config], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!((ops.delivered().len(), dba.delivered().len()), (1, 1));
}

/// `--log-format logfmt|json`: one line per event, fields split out, the key nowhere.
#[test]
fn log_formats_for_collectors() {
    for format in ["logfmt", "json"] {
        let fake = FakeWeCom::start();
        let mut relay = Relay::start(&["--key", &fake.url(), "--log-format", format]);
        assert_eq!(relay.post(&payload("lf", &[A("lf1", "firing", "Logs")])).status, 200);
        wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
        relay.signal("TERM");
        relay.wait_exit(Duration::from_secs(15));
        let logs = relay.logs();
        assert!(!logs.contains(SECRET), "{logs}");
        let queued = logs
            .lines()
            .find(|l| l.contains("notification queued"))
            .unwrap_or_else(|| panic!("no queued line:\n{logs}"));
        if format == "json" {
            for line in logs.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string());
            }
            let v: serde_json::Value = serde_json::from_str(queued).expect("json");
            assert_eq!(v["msg"], "notification queued");
            assert_eq!(v["robot"], "default");
            assert_eq!(v["firing"], "1");
        } else {
            for line in logs.lines() {
                assert!(line.starts_with("ts=") && line.contains(" level="), "{line}");
            }
            assert!(
                queued.contains(" level=info msg=\"notification queued\" robot=default "),
                "{queued}"
            );
        }
    }
}

/// The value of a sample line `series value` in an exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
}

/// Issue #16: process metrics, config reload state, last delivery per robot, and the
/// `robot` label on latency, dedup and superseded.
#[test]
fn self_monitoring_metrics() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("selfmon");
    let config = dir.path().join("config.toml");
    let good = format!("[robots.ops]\nkey = \"{}\"\n", fake.url());
    std::fs::write(&config, &good).expect("config");
    let relay = Relay::start(&["--config", config.to_str().expect("utf8")]);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let body = payload("sm", &[A("sm1", "firing", "SelfMon")]);
    assert_eq!(relay.post(&body).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    assert_eq!(relay.post(&body).status, 200, "a duplicate is still accepted");
    wait_until(Duration::from_secs(5), "send counted", || {
        relay.metrics().contains("weixin_robot_send_duration_seconds_count{robot=\"ops\"} 1")
    });
    let m = relay.metrics();
    assert_eq!(sample(&m, "weixin_robot_dedup_hits_total{robot=\"ops\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "weixin_robot_config_last_reload_successful"), Some(1.0));
    let last = sample(&m, "weixin_robot_last_delivery_timestamp_seconds{robot=\"ops\"}");
    assert!(last.is_some_and(|t| t >= before - 1.0 && t < before + 60.0), "{last:?}");
    let started = sample(&m, "process_start_time_seconds").expect("process_start_time_seconds");
    assert!(started <= before + 1.0 && started > before - 120.0, "{started} vs {before}");
    let rss = sample(&m, "process_resident_memory_bytes").expect("rss");
    assert!(rss > 100_000.0 && rss < 1e9, "{rss}");
    assert!(sample(&m, "process_open_fds").is_some_and(|n| n >= 3.0));
    assert!(sample(&m, "process_cpu_seconds_total").is_some_and(|s| s >= 0.0));

    // A failed reload flips the gauge and keeps the success timestamp; a good one restores it.
    let ok_at = sample(&m, "weixin_robot_config_last_reload_success_timestamp_seconds")
        .expect("reload timestamp");
    assert!(ok_at >= before - 60.0, "{ok_at}");
    std::fs::write(&config, "[robots.ops]\nbogus = 1\n").expect("config");
    relay.signal("HUP");
    wait_until(Duration::from_secs(10), "failed reload visible", || {
        sample(&relay.metrics(), "weixin_robot_config_last_reload_successful") == Some(0.0)
    });
    let m = relay.metrics();
    assert_eq!(
        sample(&m, "weixin_robot_config_last_reload_success_timestamp_seconds"),
        Some(ok_at)
    );
    std::fs::write(&config, &good).expect("config");
    assert_eq!(post(relay.addr, "/-/reload", b"").status, 200);
    let m = relay.metrics();
    assert_eq!(sample(&m, "weixin_robot_config_last_reload_successful"), Some(1.0));
}

/// Runs promtool with `args`; panics when it is missing (ci/test.sh installs prometheus).
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = std::process::Command::new("promtool");
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("promtool (apt-get install prometheus)");
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool output");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `/metrics` passes `promtool check metrics` (names, types, help, units) after every kind
/// of series has been created.
#[test]
#[ignore = "needs promtool; run by ci/test.sh"]
fn promtool_check_metrics_is_clean() {
    let fake = FakeWeCom::start();
    fake.script([Behave::Errcode(45009)]);
    let relay =
        Relay::start(&["--key", &fake.url(), "--rate", "5/500ms", "--retry-initial", "20ms"]);
    let body = payload("pc", &[A("pc1", "firing", "Promtool")]);
    assert_eq!(relay.post(&body).status, 200);
    assert_eq!(relay.post(b"nope").status, 400);
    wait_until(Duration::from_secs(10), "delivered", || fake.delivered().len() == 1);
    assert_eq!(relay.post(&body).status, 200);
    wait_until(Duration::from_secs(5), "counted", || {
        relay.metrics().contains("weixin_robot_dedup_hits_total{robot=\"default\"} 1")
    });
    let (ok, out) = promtool(&["check", "metrics"], Some(&relay.metrics()));
    assert!(ok && out.trim().is_empty(), "promtool check metrics:\n{out}");
}

fn dashboard() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/grafana/weixin-robot-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Every query of every panel (rows have none).
fn dashboard_queries(d: &serde_json::Value) -> Vec<String> {
    let panels = d["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect()
}

/// Metric names a PromQL expression uses (ours and the process ones; `up` is Prometheus's).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("weixin_robot_") || t.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// The dashboard is a Grafana dashboard (panels with unique ids, positions on the 24-column
/// grid, targets on the templated data source) and every metric it queries exists in the
/// relay's `/metrics`.
#[test]
fn grafana_dashboard_is_valid_and_queries_real_metrics() {
    let d = dashboard();
    assert_eq!(d["uid"], "weixin-robot");
    assert!(d["title"].is_string() && d["schemaVersion"].is_u64());
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate id: {title}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(x + w <= 24 && g["h"].as_u64().is_some() && g["y"].as_u64().is_some(), "{title}");
        let kind = p["type"].as_str().expect("type");
        if kind == "row" {
            continue;
        }
        assert!(["timeseries", "stat", "gauge", "table"].contains(&kind), "{title}: {kind}");
        let ds = p["datasource"]["uid"].as_str().expect("datasource");
        assert!(vars.iter().any(|v| ds == format!("${{{v}}}")), "{title}: datasource {ds}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert!(t["refId"].is_string() && t["expr"].is_string(), "{title}");
            for var in ["$job", "$instance"] {
                assert!(t["expr"].as_str().unwrap_or("").contains(var), "{title}: {t}");
            }
        }
    }

    let relay = Relay::start(&["--dry-run"]);
    let m = relay.metrics();
    let declared: Vec<&str> =
        m.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let queries = dashboard_queries(&d);
    let mut used = Vec::new();
    for q in &queries {
        used.extend(metric_names(q));
    }
    assert!(used.len() >= 15, "{used:?}");
    for name in used {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| declared.contains(b))
            .unwrap_or(&name);
        assert!(declared.contains(&base), "the dashboard queries {name}, not in /metrics:\n{m}");
    }
    for required in [
        "weixin_robot_notifications_received_total",
        "weixin_robot_messages_sent_total",
        "weixin_robot_messages_failed_total",
        "weixin_robot_outbox_messages",
        "weixin_robot_outbox_oldest_age_seconds",
        "weixin_robot_send_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(queries.iter().any(|q| q.contains(required)), "no panel shows {required}");
    }
}

/// The shipped alerting rules load, their unit tests pass, and the dashboard's queries are
/// valid PromQL (checked by wrapping each in a recording rule).
#[test]
#[ignore = "needs promtool; run by ci/test.sh"]
fn promtool_checks_rules_and_dashboard_queries() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let rules = dir.join("weixin-robot-rules.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().expect("utf8")], None);
    assert!(ok && out.contains("SUCCESS: 6 rules found"), "{out}");
    let tests = dir.join("weixin-robot-rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().expect("utf8")], None);
    assert!(ok && out.contains("SUCCESS"), "{out}");

    let tmp = TempDir::new("dashboard-promql");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries(&dashboard()).iter().enumerate() {
        let q =
            q.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*");
        text.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::json!(q)
        ));
    }
    let file = tmp.path().join("dashboard.yml");
    std::fs::write(&file, text).expect("write");
    let (ok, out) = promtool(&["check", "rules", file.to_str().expect("utf8")], None);
    assert!(ok, "a dashboard query is not valid PromQL:\n{out}");
}

/// Duplicates (an Alertmanager HA pair doubles everything) are each logged at normal rates,
/// but a flood of them logs at most one line a second, the next line saying how many it held
/// back: the log must not be what limits the duplicate path.
#[test]
fn a_flood_of_duplicates_logs_a_line_a_second() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let body = payload("dupflood", &[A("dupflood1", "firing", "DupFlood")]);
    assert_eq!(relay.post(&body).status, 200);
    let started = std::time::Instant::now();
    let mut posted = 0;
    wait_until(Duration::from_secs(10), "a line counting the held duplicates", || {
        for _ in 0..50 {
            assert_eq!(relay.post(&body).status, 200);
            posted += 1;
        }
        relay.logs().contains("more duplicates since the last line")
    });
    let logs = relay.logs();
    let lines = logs.lines().filter(|l| l.contains("duplicate notification dropped")).count();
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        lines >= 2 && lines <= seconds + 2,
        "{lines} lines for {posted} duplicates in {seconds} s"
    );
    assert!(posted > 4 * lines, "{posted} duplicates, {lines} lines");
    assert!(relay
        .metrics()
        .contains(&format!("weixin_robot_dedup_hits_total{{robot=\"default\"}} {posted}")));
}

/// The main thread's stack pages that start-up touched (about 160 KiB) are given back once it
/// only waits for signals, and again after a reload: idle RSS (#18) counts them.
#[test]
fn the_start_up_stack_is_given_back() {
    let stack_rss_kib = |pid: u32| -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mut in_stack = false;
        for line in smaps.lines() {
            if line.contains('-') && line.split_whitespace().count() >= 5 {
                in_stack = line.ends_with("[stack]");
            } else if in_stack && line.starts_with("Rss:") {
                return line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        0
    };
    let fake = FakeWeCom::start();
    let dir = TempDir::new("stack-trim");
    let relay =
        Relay::start(&["--key", &fake.url(), "--state-dir", dir.path().to_str().expect("utf8")]);
    let pid = relay.child.id();
    wait_until(Duration::from_secs(5), "the main stack trimmed", || stack_rss_kib(pid) <= 64);
    relay.signal("HUP");
    wait_until(Duration::from_secs(5), "trimmed again after a reload", || {
        relay.logs().contains("configuration reloaded") && stack_rss_kib(pid) <= 64
    });
}
