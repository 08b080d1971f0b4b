//! Intake hardening: malformed requests, limits, timeouts, auth, greedy clients, panics.
//! After every abuse a normal alert must still be accepted and delivered.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::*;

fn assert_still_delivers(relay: &Relay, fake: &FakeWeCom, fp: &str) {
    let r = relay.post(&payload(&format!("after-{fp}"), &[A(fp, "firing", "StillAlive")]));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(Duration::from_secs(10), "alert after abuse delivered", || {
        fake.delivered_alerts().contains(&(fp.to_string(), "firing".to_string()))
    });
}

/// Sends raw bytes, returns the answer (or what happened instead).
fn raw(relay: &Relay, bytes: &[u8]) -> Response {
    raw_request(relay.addr, bytes).unwrap_or_else(|e| Response {
        status: 0,
        headers: vec![],
        body: e.to_string(),
    })
}

fn post_raw_body(relay: &Relay, body: &[u8]) -> Response {
    post(relay.addr, "/alertinfo", body)
}

#[test]
fn malformed_requests_table() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let ten_mb = vec![b'x'; 10 << 20];
    let headers100: String = (0..100).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let cases: Vec<(&str, Response, u16, &str)> = vec![
        ("empty body", post_raw_body(&relay, b""), 400, "body is not JSON"),
        ("invalid JSON", post_raw_body(&relay, b"{\"alerts\": [}"), 400, "body is not JSON"),
        ("wrong types", post_raw_body(&relay, br#"{"alerts":[{"status":5}]}"#), 400, "alerts[0].status"),
        ("top-level array", post_raw_body(&relay, b"[{\"alerts\":[]}]"), 400, "expected a JSON object"),
        ("non-UTF-8", post_raw_body(&relay, b"{\"alerts\":[{\"labels\":{\"a\":\"\xc3\x28\"}}]}"), 400, "body is not JSON"),
        ("huge number", post_raw_body(&relay, br#"{"alerts":[],"truncatedAlerts":123456789012345678901234567890}"#), 400, "truncatedAlerts"),
        ("huge float", post_raw_body(&relay, br#"{"alerts":[],"truncatedAlerts":1e400}"#), 400, "body is not JSON"),
        ("deep nesting", post_raw_body(&relay, format!("{{\"alerts\":{}{}}}", "[".repeat(5000), "]".repeat(5000)).as_bytes()), 400, "nested deeper"),
        ("nesting at the limit", post_raw_body(&relay, format!("{{\"alerts\":[{{\"labels\":{{\"a\":{}{}}}}}]}}", "[".repeat(12), "]".repeat(12)).as_bytes()), 400, "alerts[0].labels.a: expected a string"),
        ("10 MB body", post_raw_body(&relay, &ten_mb), 413, "--max-body"),
        ("100 headers", raw(&relay, format!("POST /alertinfo HTTP/1.1\r\n{headers100}Content-Length: 2\r\n\r\n{{}}").as_bytes()), 431, "too many request headers (at most 32, --max-headers)"),
        ("header without colon", raw(&relay, b"POST /alertinfo HTTP/1.1\r\nNoColonHere\r\nContent-Length: 2\r\n\r\n{}"), 400, "malformed request head"),
        ("garbage request line", raw(&relay, b"\x00\x01\x02 what\r\n\r\n"), 400, "malformed request head"),
        ("missing Content-Length", raw(&relay, b"POST /alertinfo HTTP/1.1\r\nHost: x\r\n\r\n"), 411, "Content-Length is required"),
        ("chunked", raw(&relay, b"POST /alertinfo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"), 411, "Transfer-Encoding"),
        ("invalid Content-Length", raw(&relay, b"POST /alertinfo HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n{}"), 400, "invalid Content-Length"),
        ("negative Content-Length", raw(&relay, b"POST /alertinfo HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}"), 400, "invalid Content-Length"),
        ("overflowing Content-Length", raw(&relay, b"POST /alertinfo HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n{}"), 400, "invalid Content-Length"),
        ("conflicting Content-Length", raw(&relay, b"POST /alertinfo HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{} "), 400, "conflicting"),
        ("declared 1 TB, never sent", raw(&relay, b"POST /alertinfo HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n{}"), 413, "--max-body"),
    ];
    let mut table = String::from("\n| case | status | answer |\n|---|---|---|\n");
    for (name, r, status, reason) in &cases {
        table.push_str(&format!("| {name} | {} | {} |\n", r.status, r.body.trim()));
        assert_eq!(r.status, *status, "{name}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(err.contains(reason), "{name}: {err:?} lacks {reason:?}");
    }
    // The table goes into the closing note: `cargo test malformed -- --nocapture`.
    println!("{table}");
    assert_still_delivers(&relay, &fake, "after-table");
}

#[test]
fn head_bytes_limit_closes_greedy_clients_with_431() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--max-header-bytes", "16KiB"]);
    let mut s = TcpStream::connect(relay.addr).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = s.write_all(b"POST /alertinfo HTTP/1.1\r\nX-Endless: ");
    // Keep sending until the relay cuts us off (or 64 MiB, which would be a failure).
    let chunk = [b'a'; 4096];
    let mut sent = 0usize;
    while sent < 64 << 20 && s.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 64 << 20, "relay kept reading an endless header");
    let mut answer = Vec::new();
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    // The write side may see a reset before the answer is read; the metric proves the cause.
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    wait_until(Duration::from_secs(5), "431 counted", || {
        relay.metrics().contains("reason=\"header_too_large\"} 1")
    });
    assert_still_delivers(&relay, &fake, "after-greedy");
}

/// A slow request gets 408; an idle connection is closed without an answer (issue 20 item 6:
/// a 408 there would be read as the answer to a request sent just as the deadline passed).
#[test]
fn idle_connections_close_and_slow_requests_time_out_with_408() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--request-timeout", "500ms"]);
    // Idle: connect, send nothing.
    let mut idle = TcpStream::connect(relay.addr).expect("connect");
    // Slow head: half a request line.
    let mut slow = TcpStream::connect(relay.addr).expect("connect");
    slow.write_all(b"POST /alertinfo HTTP/1.1\r\nHost: x\r\n").expect("write");
    // Slow body: head complete, body never finished.
    let mut slow_body = TcpStream::connect(relay.addr).expect("connect");
    slow_body
        .write_all(b"POST /alertinfo HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"al")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let r = read_response(&mut slow).unwrap_or_else(|e| panic!("slow head: {e}"));
    assert_eq!(r.status, 408, "slow head");
    idle.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut nothing = Vec::new();
    let closed = idle.read_to_end(&mut nothing);
    assert!(closed.is_ok() && nothing.is_empty(), "idle: {closed:?} {nothing:?}");
    // The slow body is cut off: connection closed (the answer may or may not make it).
    slow_body.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut rest = Vec::new();
    assert!(slow_body.read_to_end(&mut rest).is_ok(), "closed within the deadline");
    wait_until(Duration::from_secs(5), "connections released", || {
        relay.metrics().contains("weixin_robot_connections 1\n")
    });
    assert_still_delivers(&relay, &fake, "after-slow");
}

#[test]
fn connection_limit_answers_503() {
    let fake = FakeWeCom::start();
    let relay =
        Relay::start(&["--key", &fake.url(), "--max-connections", "4", "--request-timeout", "20s"]);
    // Hold four connections, each proven admitted by a keep-alive request answered 200 (the
    // start-up probe's connection may still count for a moment, refusing one of them).
    let mut held: Vec<TcpStream> = Vec::new();
    wait_until(Duration::from_secs(10), "four admitted", || {
        let Ok(mut s) = TcpStream::connect(relay.addr) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let ok = s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").is_ok()
            && read_response(&mut s).is_ok_and(|r| r.status == 200);
        if ok {
            held.push(s);
        }
        held.len() == 4
    });
    wait_until(Duration::from_secs(5), "four held", || {
        // Probe with a request that also needs a connection: refused while four are held.
        raw_request(relay.addr, b"GET /healthz HTTP/1.1\r\n\r\n").is_ok_and(|r| r.status == 503)
    });
    drop(held);
    wait_until(Duration::from_secs(5), "slots free again", || {
        raw_request(relay.addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            .is_ok_and(|r| r.status == 200)
    });
    assert!(relay.metrics().contains("reason=\"too_many_connections\""));
    assert_still_delivers(&relay, &fake, "after-limit");
}

/// 1,000 idle or trickling connections do not stop a normal alert from getting through, and
/// memory stays bounded. (Figures for the README come from benches/, not from here.)
#[test]
fn thousand_slow_connections_do_not_block_a_normal_alert() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--request-timeout", "30s"]);
    let before = rss_kib(relay.child.id());
    let mut conns = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(relay.addr).expect("connect");
        if i % 2 == 1 {
            let _ = s.write_all(b"POST /alertinfo HTTP/1.1\r\nX-Slow: ");
        }
        conns.push(s);
    }
    wait_until(Duration::from_secs(10), "1000 connections registered", || {
        relay.metrics().contains("weixin_robot_connections 1001\n")
            || relay.metrics().contains("weixin_robot_connections 1000\n")
    });
    // Trickle one more byte on the slow half, then send a normal alert.
    for s in conns.iter_mut().skip(1).step_by(2) {
        let _ = s.write_all(b"x");
    }
    let r = relay.post(&payload("held", &[A("held", "firing", "WhileHeld")]));
    assert_eq!(r.status, 200);
    wait_until(Duration::from_secs(10), "delivered while held", || fake.delivered().len() == 1);
    let during = rss_kib(relay.child.id());
    println!("RSS idle {before} KiB, with 1000 slow connections {during} KiB");
    assert!(during < 256 * 1024, "RSS {during} KiB with 1000 idle connections");
    drop(conns);
    wait_until(Duration::from_secs(10), "connections released", || {
        relay.metrics().contains("weixin_robot_connections 1\n")
    });
}

#[cfg(debug_assertions)]
#[test]
fn a_panicking_request_loses_neither_process_nor_queue() {
    if !has_debug_hooks() {
        return;
    }
    let fake = FakeWeCom::start();
    fake.set_default(Behave::Http(500));
    let relay =
        Relay::start(&["--key", &fake.url(), "--retry-initial", "50ms", "--retry-max", "100ms"]);
    for i in 0..3 {
        assert_eq!(
            relay
                .post(&payload(&format!("g{i}"), &[A(&format!("pq{i}"), "firing", "Queued")]))
                .status,
            200
        );
    }
    for _ in 0..3 {
        let r = get(relay.addr, "/-/debug/panic");
        assert_eq!(r.status, 500, "{}", r.body);
    }
    assert_eq!(get(relay.addr, "/healthz").status, 200);
    fake.set_default(Behave::Ok);
    wait_until(Duration::from_secs(10), "queued alerts delivered", || {
        fake.delivered_alerts().len() == 3
    });
    assert!(relay.metrics().contains("reason=\"internal_error\"} 3"));
}

/// Random and mutated raw requests over the socket: whatever comes in, the process answers or
/// closes, never dies, and a normal alert still gets through.
#[test]
fn random_raw_requests_never_kill_the_relay() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url(), "--request-timeout", "100ms"]);
    let seeds: Vec<Vec<u8>> = vec![
        b"POST /alertinfo HTTP/1.1\r\nContent-Length: 14\r\n\r\n{\"alerts\":[]}".to_vec(),
        b"GET /metrics HTTP/1.1\r\nAuthorization: Basic x\r\n\r\n".to_vec(),
        payload("fuzz", &[A("fz", "firing", "Fuzz")]),
    ];
    let iterations: usize = std::env::var("WEIXIN_ROBOT_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    // Four clients at once: a truncated request waits out the relay's deadline.
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let seeds = seeds.clone();
            let addr = relay.addr;
            std::thread::spawn(move || {
                let mut rng: u64 =
                    0x2545_f491_4f6c_dd1d ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                for _ in 0..iterations / 4 {
                    let _ = raw_request(addr, &mutate(&seeds, &mut next));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("fuzz worker");
    }
    assert_eq!(get(relay.addr, "/healthz").status, 200);
    assert_still_delivers(&relay, &fake, "after-fuzz");
}

/// One random request: a seed (a body gets a head), then up to 8 byte-level mutations.
fn mutate(seeds: &[Vec<u8>], next: &mut impl FnMut() -> u64) -> Vec<u8> {
    let mut bytes = seeds[(next() % seeds.len() as u64) as usize].clone();
    if bytes.starts_with(b"{") {
        let head = format!("POST /alertinfo HTTP/1.1\r\nContent-Length: {}\r\n\r\n", bytes.len());
        bytes.splice(0..0, head.into_bytes());
    }
    for _ in 0..(next() % 8) {
        let pos = (next() as usize) % (bytes.len() + 1);
        match next() % 5 {
            0 if pos < bytes.len() => bytes[pos] = next() as u8,
            1 => bytes.insert(
                pos,
                [b'\r', b'\n', b':', b' ', 0, 0xff, b'{', b'"'][(next() % 8) as usize],
            ),
            2 if pos < bytes.len() => {
                bytes.remove(pos);
            }
            3 => bytes.truncate(pos),
            _ => {
                let copy = bytes[pos.min(bytes.len())..].to_vec();
                bytes.extend_from_slice(&copy[..copy.len().min(64)]);
            }
        }
    }
    bytes
}

fn with_auth(relay: &Relay, path: &str, auth: Option<&str>, body: &[u8]) -> Response {
    let mut raw =
        format!("POST {path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    if let Some(a) = auth {
        raw.push_str(&format!("Authorization: {a}\r\n"));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    raw_request(relay.addr, &bytes).expect("request")
}

#[test]
fn bearer_and_basic_auth() {
    let fake = FakeWeCom::start();
    let (relay, dir) =
        relay_with_auth(&fake, "t0ken-SeCrEt", "# alertmanager peers\nam:pa55word\nother:x\n");
    let users = dir.path().join("users");
    let body = payload("auth", &[A("au1", "firing", "Auth")]);
    // am:pa55word and am:wrong in base64.
    let (good_basic, bad_basic) = ("Basic YW06cGE1NXdvcmQ=", "Basic YW06d3Jvbmc=");
    for (auth, want) in [
        (None, 401),
        (Some("Bearer wrong"), 401),
        (Some("Bearer t0ken-SeCrEt-and-more"), 401),
        (Some(bad_basic), 401),
        (Some("Bearer t0ken-SeCrEt"), 200),
        (Some("bearer t0ken-SeCrEt"), 200),
        (Some(good_basic), 200),
    ] {
        let r = with_auth(&relay, "/alertinfo", auth, &body);
        assert_eq!(r.status, want, "{auth:?}: {}", r.body);
        if want == 401 {
            let challenge = r.header("WWW-Authenticate").unwrap_or("");
            assert!(challenge.contains("Basic") && challenge.contains("Bearer"), "{challenge}");
            assert!(!r.body.contains("t0ken"), "{}", r.body);
        }
    }
    // Probes stay open; metrics need credentials too.
    assert_eq!(get(relay.addr, "/healthz").status, 200);
    assert_eq!(get(relay.addr, "/-/ready").status, 200);
    assert_eq!(get(relay.addr, "/metrics").status, 401);
    let metrics = raw_request(
        relay.addr,
        b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer t0ken-SeCrEt\r\nConnection: close\r\n\r\n",
    )
    .expect("metrics");
    assert_eq!(metrics.status, 200);
    // Four refused posts above plus the unauthenticated /metrics probe.
    assert!(metrics.body.contains("reason=\"unauthorized\"} 5"), "{}", metrics.body);
    wait_until(Duration::from_secs(10), "authorised alert delivered", || {
        !fake.delivered().is_empty()
    });
    assert!(!relay.logs().contains("t0ken-SeCrEt") && !relay.logs().contains("pa55word"));

    // Bad auth files are start-up errors (exit 2), without quoting their content.
    std::fs::write(&users, "no-colon-here\n").expect("users");
    let (code, _, stderr) =
        run_to_exit(&["--dry-run", "--basic-auth-file", users.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("line 1: expected user:password") && !stderr.contains("no-colon-here"),
        "{stderr}"
    );
}

/// A proxy or service-mesh sidecar in front of the relay adds headers (x-forwarded-*,
/// x-request-id, tracing): 20 of them pass by default, and `--max-headers` sets the bound;
/// past it a clear 431, not a lost alert behind a vague 400.
#[test]
fn headers_added_by_proxies_pass_and_max_headers_bounds_them() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let body = payload("proxied", &[A("proxied1", "firing", "Proxied")]);
    let request = |relay: &Relay, n: usize| {
        let extra: String = (0..n).map(|i| format!("X-Sidecar-{i}: v\r\n")).collect();
        let mut bytes = format!(
            "POST /alertinfo HTTP/1.1\r\nHost: relay\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        raw(relay, &bytes)
    };
    let r = request(&relay, 20);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);

    let strict = Relay::start(&["--key", &fake.url(), "--max-headers", "8"]);
    let r = request(&strict, 5); // 5 + Host, Content-Type, Content-Length = 8
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(&strict, 6);
    assert_eq!(r.status, 431, "{}", r.body);
    assert!(r.body.contains("at most 8, --max-headers"), "{}", r.body);
}
