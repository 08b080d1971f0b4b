//! End to end with a real Alertmanager (Debian's `prometheus-alertmanager`) on loopback:
//! alerts posted to its API, grouped by it, delivered through the relay to the fake WeCom.
//! Ignored by default; `ci/test.sh` installs Alertmanager and runs these with --include-ignored.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::util::*;

pub(crate) struct Alertmanager {
    child: Child,
    pub(crate) port: u16,
    _dir: TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn alertmanager_bin() -> String {
    if let Ok(bin) = std::env::var("ALERTMANAGER_BIN") {
        return bin;
    }
    for candidate in ["prometheus-alertmanager", "alertmanager"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {candidate}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return candidate.to_string();
        }
    }
    panic!("Alertmanager not found: apt-get install prometheus-alertmanager (ci/test.sh does)");
}

pub(crate) fn start_alertmanager(webhook: &str) -> Alertmanager {
    start_alertmanager_with(webhook, "")
}

/// `http_config` is inserted under the webhook config (already indented), e.g. credentials.
fn start_alertmanager_with(webhook: &str, http_config: &str) -> Alertmanager {
    let dir = TempDir::new("am");
    let config = format!(
        "route:\n  receiver: relay\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n- name: relay\n  webhook_configs:\n  - url: '{webhook}'\n    send_resolved: true\n{http_config}"
    );
    let config_path = dir.path().join("alertmanager.yml");
    std::fs::write(&config_path, config).expect("config");
    let port = free_port();
    let child = Command::new(alertmanager_bin())
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
    let am = Alertmanager { child, port, _dir: dir };
    let addr = ([127, 0, 0, 1], port).into();
    wait_until(Duration::from_secs(30), "alertmanager ready", || {
        raw_request(addr, b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_ok_and(|r| r.status == 200)
    });
    am
}

/// RFC 3339 in UTC, from date(1): the relay's own formatter is what is under test.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    String::from_utf8_lossy(&out.expect("date").stdout).trim().to_string()
}

pub(crate) fn post_alerts(am: &Alertmanager, alerts: serde_json::Value) {
    let addr = ([127, 0, 0, 1], am.port).into();
    let r = post(addr, "/api/v2/alerts", alerts.to_string().as_bytes());
    assert_eq!(r.status, 200, "alertmanager refused alerts: {}", r.body);
}

#[test]
#[ignore = "needs Alertmanager; run by ci/test.sh"]
fn alertmanager_firing_then_resolved() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--tz", "+08:00"]);
    let am = start_alertmanager(&format!("http://{}/alertinfo", relay.addr));

    let now = SystemTime::now();
    let labels = |i: u32| json!({"alertname": "E2EDiskFull", "severity": "critical", "instance": format!("node{i}:9100"), "project": "e2e"});
    let firing: Vec<_> = (1..=2)
        .map(|i| json!({"labels": labels(i), "annotations": {"summary": "磁盘将满", "description": format!("node{i} disk 95%")},
                        "startsAt": rfc3339(now), "generatorURL": "http://prometheus.local:9090/graph"}))
        .collect();
    post_alerts(&am, json!(firing));

    wait_until(Duration::from_secs(30), "firing message", || !fake.delivered().is_empty());
    let first = fake.delivered()[0].content().to_string();
    assert!(first.contains("告警通知</font> 共 2 条"), "{first}");
    assert!(
        first.contains("E2EDiskFull")
            && first.contains("node1:9100")
            && first.contains("node2:9100"),
        "{first}"
    );
    assert!(first.contains("告警主题: 磁盘将满"), "{first}");
    assert!(first.contains("[查看详情](http://prometheus.local:9090/graph)"), "{first}");
    assert_eq!(fake.delivered().len(), 1, "one message per group, not per alert");

    let ended = SystemTime::now() - Duration::from_secs(1);
    let resolved: Vec<_> = (1..=2)
        .map(|i| json!({"labels": labels(i), "annotations": {"summary": "磁盘将满"}, "startsAt": rfc3339(now), "endsAt": rfc3339(ended)}))
        .collect();
    post_alerts(&am, json!(resolved));
    wait_until(Duration::from_secs(30), "resolved message", || {
        fake.delivered().iter().any(|r| r.content().contains("恢复通知"))
    });
    let last = fake.delivered().last().map(|r| r.content().to_string()).unwrap_or_default();
    assert!(last.contains("恢复通知</font> 共 2 条") && last.contains("恢复时间"), "{last}");
    assert!(!relay.logs().contains(SECRET));
}

#[test]
#[ignore = "needs Alertmanager; run by ci/test.sh"]
fn alertmanager_retries_when_the_relay_answers_503() {
    // A full outbox answers 503; Alertmanager keeps the notification and retries it.
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--queue-max-messages",
        "1",
        "--retry-initial",
        "50ms",
        "--retry-max",
        "100ms",
    ]);
    // Fill the outbox directly.
    assert_eq!(relay.post(&payload("filler", &[A("fill", "firing", "Filler")])).status, 200);
    let am = start_alertmanager(&format!("http://{}/alertinfo", relay.addr));
    post_alerts(
        &am,
        json!([{"labels": {"alertname": "E2ERetry", "instance": "n1"}, "startsAt": rfc3339(SystemTime::now())}]),
    );
    wait_until(Duration::from_secs(30), "alertmanager got a 503", || {
        relay.metrics().contains("reason=\"outbox_full\"")
    });
    fake.set_default(Behave::Ok);
    wait_until(Duration::from_secs(60), "retried notification delivered", || {
        fake.delivered().iter().any(|r| r.content().contains("E2ERetry"))
    });
}

#[test]
#[ignore = "needs Alertmanager; run by ci/test.sh"]
fn alertmanager_authenticates_with_bearer_and_basic() {
    let fake = FakeWeCom::start();
    let (relay, dir) = relay_with_auth(&fake, "am-t0ken", "alertmanager:s3cret\n");
    let token = dir.path().join("token");
    let url = format!("http://{}/alertinfo", relay.addr);
    let bearer = format!(
        "    http_config:\n      authorization:\n        credentials_file: '{}'\n",
        token.display()
    );
    let basic = "    http_config:\n      basic_auth:\n        username: alertmanager\n        password: s3cret\n";
    let wrong = "    http_config:\n      basic_auth:\n        username: alertmanager\n        password: wrong\n";
    for (name, http_config, delivered) in
        [("bearer", bearer.as_str(), true), ("basic", basic, true), ("wrong", wrong, false)]
    {
        let am = start_alertmanager_with(&url, http_config);
        let alertname = format!("E2EAuth{name}");
        post_alerts(
            &am,
            json!([{"labels": {"alertname": alertname, "instance": "n1"}, "startsAt": rfc3339(SystemTime::now())}]),
        );
        if delivered {
            wait_until(Duration::from_secs(30), name, || {
                fake.delivered().iter().any(|r| r.content().contains(&alertname))
            });
        } else {
            wait_until(Duration::from_secs(30), "401 answered", || {
                relay.metrics_with("Bearer am-t0ken").contains("reason=\"unauthorized\"")
            });
            assert!(!fake.received().iter().any(|r| r.content().contains(&alertname)));
        }
    }
}
