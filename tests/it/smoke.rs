//! A smoke test of whichever binary `WEIXIN_ROBOT_BIN` names (default: the one cargo built):
//! ci/test.sh runs it against both static builds, the aarch64 one under qemu-aarch64-static.

use std::time::Duration;

use crate::util::*;

#[test]
fn smoke_version_health_and_one_alert() {
    let (code, out, _) = run_to_exit(&["--version"], &[]);
    assert_eq!(code, Some(0));
    println!("{}", out.trim());
    if let Ok(target) = std::env::var("WEIXIN_ROBOT_EXPECT_TARGET") {
        assert!(out.contains(&format!("({target}, rev ")), "{out}");
    }
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let health = get(relay.addr, "/healthz");
    assert_eq!(health.status, 200);
    println!("GET /healthz -> {} {}", health.status, health.body.trim());
    let r = relay.post(&payload("smoke", &[A("smoke1", "firing", "SmokeTest")]));
    assert_eq!(r.status, 200);
    println!("POST /alertinfo -> {} {}", r.status, r.body.trim());
    wait_until(Duration::from_secs(30), "alert relayed", || fake.delivered().len() == 1);
    println!("fake WeCom received {} bytes of markdown", fake.delivered()[0].content().len());
    assert!(fake.delivered()[0].content().contains("SmokeTest"));
}
