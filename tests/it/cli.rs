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
fn a_key_given_with_dash_dash_key_is_hidden_from_ps() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", relay.child.id())).unwrap_or_default();
    let shown = String::from_utf8_lossy(&cmdline);
    assert!(shown.contains("--key"), "the command line is still there: {shown:?}");
    assert!(!shown.contains(SECRET), "the key shows in /proc/PID/cmdline: {shown:?}");
    // The relay kept the real key: it still delivers with it.
    assert_eq!(relay.post(&payload("g", &[A("k2", "firing", "KeyArg")])).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    assert!(fake.delivered()[0].target.ends_with(&format!("key={SECRET}")));
}

#[test]
fn bad_command_lines_exit_2_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus", "-k", "k"], "unknown option --bogus"),
        (&[], "missing webhook key"),
        (&["-k", "ftp://example.com/send?key=SeCrEtKeY-0123456789-abcdef"], "invalid --key"),
        (&["-k", "https://example.com/send?nokey=SeCrEtKeY-0123456789-abcdef"], "invalid --key"),
        (&["-k", "k", "--tz", "8"], "invalid --tz"),
        (&["-k", "k", "--port", "70000"], "invalid --port"),
        (&["-k", "k", "--max-headers", "65"], "invalid --max-headers"),
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

/// Issue #16: `--key=URL` was refused with the key in the message; `--port=N` and `-pN` too.
#[test]
fn flag_equals_value_and_attached_short_values() {
    let fake = FakeWeCom::start();
    let port = free_port();
    let mut child = relay_command()
        .args([
            "--listen=127.0.0.1".to_string(),
            format!("-p{port}"),
            format!("--key={}", fake.url()),
            "--dedup-window=1m30s".to_string(),
        ])
        .env_remove("KEY")
        .env_remove("PORT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let addr = ([127, 0, 0, 1], port).into();
    wait_until(Duration::from_secs(10), "relay up with --flag=value", || {
        raw_request(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            .is_ok_and(|r| r.status == 200)
    });
    assert_eq!(post(addr, "/alertinfo", &payload("eq", &[A("eq1", "firing", "Eq")])).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn no_error_echoes_a_secret_value() {
    let url = format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={SECRET}");
    let kye = format!("--kye={url}");
    let dry = format!("--dry-run={SECRET}");
    let key_eq = format!("--key={url}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&kye], "unknown option --kye"),
        (vec![&dry], "--dry-run takes no value"),
        (vec![&url], "unexpected argument"),
        (vec!["--key"], "--key needs a value"),
        (vec![&key_eq, "-k", "x"], "--key given twice"),
        (vec!["render", &key_eq], "render does not take --key"),
        (vec!["healthcheck", "-k", &url], "healthcheck does not take -k"),
    ];
    for (args, want) in &cases {
        let (code, out, err) = run_to_exit(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains(SECRET) && !out.contains(SECRET), "{args:?} leaked: {err}");
    }
}

/// `help`, `version` and unknown commands used to print "unexpected argument a value";
/// every command's `--help` printed the whole relay help.
#[test]
fn commands_have_their_own_help_version_and_errors() {
    let (code, out, _) = run_to_exit(&["help"], &[]);
    assert_eq!(code, Some(0));
    for cmd in ["render", "send-test", "healthcheck", "help", "version", "--state-dir"] {
        assert!(out.contains(cmd), "help lacks {cmd}:\n{out}");
    }
    let (code, out, _) = run_to_exit(&["version"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with(&format!("weixin-robot {} (", env!("CARGO_PKG_VERSION"))), "{out}");

    for (cmd, has, lacks) in [
        ("render", "--robot", "--state-dir"),
        ("send-test", "--key-file", "--max-body"),
        ("healthcheck", "--port", "--key"),
    ] {
        for args in [vec![cmd, "--help"], vec!["help", cmd], vec![cmd, "-h"]] {
            let (code, out, err) = run_to_exit(&args, &[]);
            assert_eq!(code, Some(0), "{args:?}: {err}");
            assert!(out.contains(&format!("weixin-robot {cmd}")), "{args:?}:\n{out}");
            assert!(out.contains(has) && !out.contains(lacks), "{args:?}:\n{out}");
        }
    }
    for (args, want) in [
        (vec!["frobnicate"], "unknown command \"frobnicate\""),
        (vec!["help", "frobnicate"], "unknown command"),
        (vec!["render", "a.json", "b.json"], "unexpected argument"),
        (vec!["render", "--state-dir", "/tmp"], "render does not take --state-dir"),
    ] {
        let (code, _, err) = run_to_exit(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(want)
                && err.contains("commands: render") == (want.starts_with("unknown command")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn errors_name_the_environment_variable_and_duration_units() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["-k", "k"], &[("PORT", "abc")], "invalid PORT (environment): "),
        (&["-k", "k", "--port", "abc"], &[], "invalid --port: "),
        (&["-k", "k"], &[("WEIXIN_ROBOT_TIMEOUT", "10")], "invalid WEIXIN_ROBOT_TIMEOUT (environment): \"10\" has no unit (use a unit: ms, s, m, h, d or w"),
        (&["-k", "k", "--grace", "30"], &[], "invalid --grace: \"30\" has no unit"),
        (&[], &[("WEIXIN_ROBOT_DRY_RUN", "maybe")], "invalid WEIXIN_ROBOT_DRY_RUN (environment)"),
        (&["-k", "k", "--retry-max", "5parsecs"], &[], "unknown unit"),
        (&["-k", "k"], &[("WEIXIN_ROBOT_LOG_FORMAT", "xml")], "invalid WEIXIN_ROBOT_LOG_FORMAT (environment): expected text, logfmt or json"),
    ];
    for (args, env, want) in cases {
        let (code, _, err) = run_to_exit(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(want), "{args:?} {env:?}: {err}");
    }
    // Go/Alertmanager durations are accepted.
    let relay = Relay::start(&[
        "--dry-run",
        "--grace",
        "1m30s",
        "--retry-max",
        "1d",
        "--retry-initial",
        "500ms",
        "--dedup-window",
        "1h",
    ]);
    assert_eq!(relay.post(&payload("d", &[A("d1", "firing", "Dur")])).status, 200);
}

#[test]
fn key_mistakes_are_explained_without_the_key() {
    let dir = TempDir::new("keyerr");
    let url = format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={SECRET}");
    let assignment = dir.path().join("assignment");
    std::fs::write(&assignment, format!("# the key\nKEY={url}\n")).expect("write");
    let quoted_file = dir.path().join("quoted");
    std::fs::write(&quoted_file, format!("\"{url}\"\n")).expect("write");
    let spaced = format!("{url} x");
    let quoted = format!("'{url}'");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--key", &spaced], "contains a space"),
        (vec!["--key", &quoted], "wrapped in quotes"),
        (vec!["--key-file", assignment.to_str().expect("utf8")], "starts with KEY="),
        (vec!["--key-file", quoted_file.to_str().expect("utf8")], "wrapped in quotes"),
    ];
    for (args, want) in &cases {
        let (code, out, err) = run_to_exit(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains(SECRET) && !out.contains(SECRET), "leaked: {err}");
    }
    let (code, _, err) = run_to_exit(&[], &[("KEY", &quoted)]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid KEY (environment): it is wrapped in quotes"), "{err}");
}

/// `render … | head` ends quietly when the reader goes, instead of panicking in `println!`
/// with "failed printing to stdout: Broken pipe" and a backtrace.
#[test]
fn render_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let dir = TempDir::new("render-pipe");
    let ids: Vec<String> = (0..2000).map(|i| format!("pipe{i}")).collect();
    let alerts: Vec<A> = ids.iter().map(|id| A(id, "firing", "PipeTest")).collect();
    let file = dir.path().join("storm.json");
    std::fs::write(&file, payload("pipe", &alerts)).expect("write payload");
    let mut child = relay_command()
        .args(["render", "--digest", file.to_str().expect("utf8")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn render");
    let mut first = [0u8; 64];
    let mut stdout = child.stdout.take().expect("stdout");
    stdout.read_exact(&mut first).expect("render prints");
    drop(stdout); // the reader goes, as `head` does
    let out = child.wait_with_output().expect("render ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
