//! Issue #14 with a real Alertmanager HA pair: two `prometheus-alertmanager` processes
//! clustered on loopback, both notifying at once (`--cluster.peer-timeout=0s`), both fed the
//! same alerts as Prometheus feeds both. The group must see one firing and one resolved
//! message (1.0 sent the resolved twice). Ignored by default; `ci/test.sh` runs it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::alertmanager_e2e::{alertmanager_bin, rfc3339};
use crate::util::*;

struct Peer {
    child: Child,
    port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_peer(dir: &TempDir, name: &str, webhook: &str, cluster: u16, other: u16) -> Peer {
    let config = format!(
        "route:\n  receiver: relay\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n- name: relay\n  webhook_configs:\n  - url: '{webhook}'\n    send_resolved: true\n"
    );
    let config_path = dir.path().join(format!("{name}.yml"));
    std::fs::write(&config_path, config).expect("config");
    let port = free_port();
    let child = Command::new(alertmanager_bin())
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.path={}", dir.path().join(name).display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--cluster.listen-address=127.0.0.1:{cluster}"))
        .arg(format!("--cluster.advertise-address=127.0.0.1:{cluster}"))
        .arg(format!("--cluster.peer=127.0.0.1:{other}"))
        .arg("--cluster.peer-timeout=0s")
        .arg("--cluster.settle-timeout=1s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
    let peer = Peer { child, port };
    let addr = ([127, 0, 0, 1], port).into();
    wait_until(Duration::from_secs(30), "alertmanager ready", || {
        raw_request(addr, b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_ok_and(|r| r.status == 200)
    });
    peer
}

fn post_both(peers: &[&Peer], alerts: &serde_json::Value) {
    for p in peers {
        let addr = ([127, 0, 0, 1], p.port).into();
        let r = post(addr, "/api/v2/alerts", alerts.to_string().as_bytes());
        assert_eq!(r.status, 200, "alertmanager refused alerts: {}", r.body);
    }
}

#[test]
#[ignore = "needs Alertmanager; run by ci/test.sh"]
fn an_alertmanager_ha_pair_gives_one_firing_and_one_resolved_message() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let webhook = format!("http://{}/alertinfo", relay.addr);
    let dir = TempDir::new("am-ha");
    let (c1, c2) = (free_port(), free_port());
    let a = start_peer(&dir, "a", &webhook, c1, c2);
    let b = start_peer(&dir, "b", &webhook, c2, c1);

    let now = SystemTime::now();
    let labels = |i: u32| json!({"alertname": "HaPair", "severity": "critical", "instance": format!("node{i}:9100")});
    let firing: Vec<_> = (1..=2)
        .map(|i| json!({"labels": labels(i), "annotations": {"summary": "HA"}, "startsAt": rfc3339(now)}))
        .collect();
    post_both(&[&a, &b], &json!(firing));
    wait_until(Duration::from_secs(30), "firing message", || !fake.delivered().is_empty());
    // Both peers notify; give the second notification time to arrive and be judged. Counted
    // by the metric: log lines for duplicates are throttled in a flood.
    let received = |status: &str| -> u64 {
        let series = format!("weixin_robot_notifications_received_total{{status=\"{status}\"}} ");
        relay
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), "both peers notified", || received("firing") >= 2);

    let ended = SystemTime::now() - Duration::from_secs(1);
    let resolved: Vec<_> = (1..=2)
        .map(|i| json!({"labels": labels(i), "annotations": {"summary": "HA"}, "startsAt": rfc3339(now), "endsAt": rfc3339(ended)}))
        .collect();
    post_both(&[&a, &b], &json!(resolved));
    wait_until(Duration::from_secs(30), "resolved message", || {
        fake.delivered().iter().any(|r| r.content().contains("恢复通知"))
    });
    // Both peers' resolved notifications reached the relay.
    wait_until(Duration::from_secs(30), "both resolved notifications received", || {
        received("resolved") >= 2
    });
    // Both were judged on arrival: once the outbox is empty, nothing more is going out.
    wait_until(Duration::from_secs(30), "outbox settled", || {
        relay.metrics().contains("weixin_robot_outbox_messages{robot=\"default\"} 0")
    });
    let contents: Vec<String> = fake.delivered().iter().map(|r| r.content().to_string()).collect();
    let firing_msgs = contents.iter().filter(|c| c.contains("告警通知")).count();
    let resolved_msgs = contents.iter().filter(|c| c.contains("恢复通知")).count();
    assert_eq!((firing_msgs, resolved_msgs), (1, 1), "{contents:#?}\n{}", relay.logs());
}
