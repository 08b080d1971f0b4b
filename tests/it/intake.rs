//! `POST /alertinfo` and friends: answers, status codes, and the exact JSON WeCom receives.

use std::time::Duration;

use serde_json::json;

use crate::util::*;

const FIRING: &str = r#"{
  "version": "4", "status": "firing", "receiver": "wecom", "groupKey": "{}:{alertname=\"InstanceDown\"}",
  "truncatedAlerts": 0, "groupLabels": {"alertname": "InstanceDown"}, "commonLabels": {}, "commonAnnotations": {},
  "externalURL": "http://am:9093", "someFutureField": {"ignored": true},
  "alerts": [{
    "status": "firing",
    "labels": {"alertname": "InstanceDown", "instance": "10.0.0.1:9100", "severity": "critical", "project": "ops"},
    "annotations": {"summary": "实例宕机", "description": "down for 5m"},
    "startsAt": "2024-05-01T12:00:00.123456Z", "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prom:9090/graph?g0.expr=up", "fingerprint": "abc123"
  }]
}"#;

#[test]
fn wecom_receives_exactly_this_json() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let r = relay.post(FIRING.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "queued");
    assert!(!r.body.contains("InstanceDown"), "the answer must not echo the payload");
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    let got = &fake.delivered()[0];
    assert_eq!(got.target, format!("/cgi-bin/webhook/send?key={SECRET}"));
    let content = "## <font color=\"warning\">告警通知</font> 共 1 条\n\n\
        **告警名称**: <font color=\"warning\">InstanceDown</font>\n\
        > 告警项目: ops\n\
        > 告警主题: 实例宕机\n\
        > 告警级别: <font color=\"warning\">critical</font>\n\
        > 告警时间: 2024-05-01 20:00:00\n\
        > 故障实例: 10.0.0.1:9100\n\
        > 告警详情: down for 5m\n\
        > [查看详情](http://prom:9090/graph?g0.expr=up) · \
        [静默此告警](http://am:9093/#/silences/new?filter=%7Balertname%3D%22InstanceDown%22%2Cinstance%3D%2210.0.0.1%3A9100%22%2Cproject%3D%22ops%22%2Cseverity%3D%22critical%22%7D)";
    assert_eq!(got.body, json!({"msgtype": "markdown", "markdown": {"content": content}}));
}

#[test]
fn tz_flag_changes_displayed_time() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--tz", "-05:30"]);
    assert_eq!(relay.post(FIRING.as_bytes()).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    assert!(fake.delivered()[0].content().contains("告警时间: 2024-05-01 06:30:00"));
}

#[test]
fn one_message_per_group_not_per_alert() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let body =
        payload("g", &[A("a", "firing", "A1"), A("b", "firing", "A2"), A("c", "resolved", "A3")]);
    assert_eq!(relay.post(&body).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    let content = fake.delivered()[0].content().to_string();
    assert_eq!(
        alerts_in(&content),
        [("a", "firing"), ("b", "firing"), ("c", "resolved")]
            .map(|(f, s)| (f.to_string(), s.to_string()))
    );
    let firing_at = content.find("告警通知").unwrap_or(usize::MAX);
    let resolved_at = content.find("恢复通知").unwrap_or(0);
    assert!(firing_at < resolved_at, "firing section first, then resolved:\n{content}");
}

#[test]
fn bad_requests_get_clear_4xx_and_the_relay_keeps_working() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let a = relay.addr;
    let cases: Vec<(Response, u16, &str)> = vec![
        (post(a, "/alertinfo", b""), 400, "body is not JSON"),
        (post(a, "/alertinfo", b"{not json"), 400, "body is not JSON"),
        (post(a, "/alertinfo", b"[]"), 400, "body: expected a JSON object"),
        (post(a, "/alertinfo", br#"{"alerts":"x"}"#), 400, "alerts: expected an array"),
        (
            post(a, "/alertinfo", br#"{"alerts":[{"labels":{"a":[1]}}]}"#),
            400,
            "alerts[0].labels.a: expected a string",
        ),
        (post(a, "/alertinfo", b"\xff\xfe{}"), 400, "body is not JSON"),
        (
            post(a, "/alertinfo", br#"{"alerts":[],"truncatedAlerts":1e999}"#),
            400,
            "body is not JSON",
        ),
        (
            post(a, "/alertinfo", format!("{}{}", "[".repeat(200), "]".repeat(200)).as_bytes()),
            400,
            "nested deeper",
        ),
        (get(a, "/alertinfo"), 405, "use POST"),
        (request(a, "PUT", "/alertinfo", b"{}"), 405, "use POST"),
        (get(a, "/nope"), 404, "no such path"),
        (post(a, "/healthz", b"x"), 405, "use GET"),
    ];
    for (i, (r, status, reason)) in cases.iter().enumerate() {
        assert_eq!(r.status, *status, "case {i}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(err.contains(reason), "case {i}: {err:?} lacks {reason:?}");
        assert_eq!(r.body.trim_end().lines().count(), 1, "case {i}: one line");
    }
    assert_eq!(get(a, "/alertinfo").header("Allow"), Some("POST"));
    // Still alive and delivering.
    assert_eq!(get(a, "/healthz").status, 200);
    assert_eq!(relay.post(&payload("g", &[A("after", "firing", "After")])).status, 200);
    wait_until(Duration::from_secs(10), "delivery after bad input", || {
        fake.delivered_alerts().contains(&("after".into(), "firing".into()))
    });
}

#[test]
fn health_endpoints() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    for path in ["/healthz", "/-/healthy", "/-/ready"] {
        assert_eq!(get(relay.addr, path).status, 200, "{path}");
    }
}

#[test]
fn errcode_is_logged_without_the_key() {
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Errcode(93000));
    let relay = Relay::start(&["--key", &fake.url()]);
    assert_eq!(relay.post(&payload("g", &[A("x", "firing", "BadKey")])).status, 200);
    wait_until(Duration::from_secs(10), "error log", || relay.logs().contains("errcode=93000"));
    let logs = relay.logs();
    assert!(logs.contains("the key is wrong"), "{logs}");
    assert!(logs.contains("key=***"), "startup line shows the redacted URL: {logs}");
    assert!(!logs.contains(SECRET), "{logs}");
}

#[test]
fn dry_run_prints_messages_and_needs_no_key() {
    let relay = Relay::start(&["--dry-run"]);
    assert_eq!(relay.post(&payload("g", &[A("dry", "firing", "DryRun")])).status, 200);
    wait_until(Duration::from_secs(10), "message on stdout", || relay.stdout().contains("DryRun"));
    let line = relay.stdout().lines().find(|l| l.contains("DryRun")).unwrap_or("").to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    assert_eq!(v["msgtype"], "markdown");
    assert!(v["markdown"]["content"].as_str().unwrap_or("").contains("fp=dry"));
}

#[test]
fn http_proxy_from_the_environment_is_honoured() {
    // The fake plays the proxy: a proxied plain-http request arrives in absolute form.
    let proxy = FakeWeCom::start();
    let url = format!("http://wecom.invalid/cgi-bin/webhook/send?key={SECRET}");
    let proxy_url = format!("http://{}", proxy.addr);
    let relay = Relay::start_env(
        &["--key", &url],
        &[("HTTP_PROXY", &proxy_url), ("http_proxy", &proxy_url)],
    );
    assert_eq!(relay.post(&payload("g", &[A("px", "firing", "Proxied")])).status, 200);
    wait_until(Duration::from_secs(10), "delivery through the proxy", || {
        proxy.delivered().len() == 1
    });
    assert_eq!(proxy.delivered()[0].target, url);

    // NO_PROXY exempts the host: the relay then tries wecom.invalid directly and cannot reach it.
    let proxy2 = FakeWeCom::start();
    let proxy_url = format!("http://{}", proxy2.addr);
    let relay = Relay::start_env(
        &["--key", &url, "--retry-initial", "50ms"],
        &[
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("NO_PROXY", "wecom.invalid"),
            ("no_proxy", "wecom.invalid"),
        ],
    );
    assert_eq!(relay.post(&payload("g", &[A("np", "firing", "Direct")])).status, 200);
    wait_until(Duration::from_secs(10), "direct attempt fails", || {
        relay.logs().contains("class=retry")
    });
    assert!(proxy2.received().is_empty());
}
