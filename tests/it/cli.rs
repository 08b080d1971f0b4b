//! The command line: the old tool's invocation, env vars, exit code 2 with one line on bad input.

use std::time::Duration;

use crate::util::*;

#[test]
fn old_tool_invocation_and_env_vars_work() {
    let fake = FakeWeCom::start();
    // Exactly as the old tool's docs: --port N --key URL.
    let relay = Relay::start(&["--key", &fake.url()]);
    assert_eq!(relay.post(&payload("g", &[A("f1", "firing", "Cli")])).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);

    // And via the environment, PORT and KEY, with a bare key against a custom URL is not
    // possible (bare keys go to WeCom), so KEY carries the URL here.
    let port = free_port();
    let mut cmd = std::process::Command::new(BIN);
    cmd.env("PORT", port.to_string())
        .env("KEY", fake.url())
        .env("WEIXIN_ROBOT_LISTEN", "127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let addr = ([127, 0, 0, 1], port).into();
    wait_until(Duration::from_secs(10), "env-configured relay up", || {
        raw_request(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            .is_ok_and(|r| r.status == 200)
    });
    assert_eq!(post(addr, "/alertinfo", &payload("g2", &[A("f2", "firing", "Env")])).status, 200);
    wait_until(Duration::from_secs(10), "env relay delivery", || fake.delivered().len() == 2);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn key_file_keeps_the_key_out_of_argv() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("keyfile");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{}\n", fake.url())).expect("write key");
    let relay = Relay::start(&["--key-file", key_file.to_str().expect("utf8")]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", relay.child.id())).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains(SECRET));
    assert_eq!(relay.post(&payload("g", &[A("k1", "firing", "KeyFile")])).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    assert!(fake.delivered()[0].target.ends_with(&format!("key={SECRET}")));
}

#[test]
fn bad_command_lines_exit_2_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus", "-k", "k"], "unexpected argument --bogus"),
        (&[], "missing webhook key"),
        (&["-k", "ftp://example.com/send?key=SeCrEtKeY-0123456789-abcdef"], "invalid --key"),
        (&["-k", "https://example.com/send?nokey=SeCrEtKeY-0123456789-abcdef"], "invalid --key"),
        (&["-k", "k", "--tz", "8"], "invalid --tz"),
        (&["-k", "k", "--port", "70000"], "invalid --port"),
        (&["-k", "k", "--rate", "0/1s"], "invalid --rate"),
        (&["-k", "k", "--listen", "localhost"], "invalid --listen"),
        (&["--key-file", "/nonexistent/key"], "reading key file"),
        (&["-k", "k", "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
    ];
    for (args, want) in cases {
        let (code, _, stderr) = run_to_exit(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains(SECRET), "{args:?} leaked the key: {stderr}");
    }
}

#[test]
fn help_and_version() {
    let (code, out, _) = run_to_exit(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for flag in ["--port", "--key", "--key-file", "--listen", "--tz", "--ca-file", "--state-dir"] {
        assert!(out.contains(flag), "help lacks {flag}");
    }
    let (code, out, _) = run_to_exit(&["-V"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with(&format!("weixin-robot {} (", env!("CARGO_PKG_VERSION"))), "{out}");
    assert!(out.contains("rev "), "{out}");
}

#[test]
fn ipv6_listen() {
    let fake = FakeWeCom::start();
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .args(["--listen", "::1", "--port", &port.to_string(), "--key", &fake.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let up = (0..500).any(|_| {
        let ok = raw_request(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            .is_ok_and(|r| r.status == 200);
        if !ok {
            std::thread::sleep(Duration::from_millis(10));
        }
        ok
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "relay did not answer on [::1]:{port}");
}
