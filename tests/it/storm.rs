//! Storm mode (issue 15): the preview `render --digest`, `--max-delay` and per-robot
//! `max_delay`, and WeCom's file path (`upload_media`, then a `file` message) exercised by
//! `send-test --with-file` against a small fake WeCom on 127.0.0.1 that checks the multipart
//! upload the way WeCom does and answers 40007 for a media id it never issued.
//!
//! The sender does not use storm mode yet (it waits for the state outbox of issue 14), so
//! these tests cover the parts that exist: what the group would see, and the upload path.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{json, Value};

use crate::util::{payload, run_to_exit, TempDir, A, SECRET};

/// What the upload fake saw.
#[derive(Default)]
struct Seen {
    /// (file name, `filelength` from the part header, the file's bytes).
    uploads: Vec<(String, usize, Vec<u8>)>,
    /// Every `send` body.
    sends: Vec<Value>,
    /// Request targets with the key replaced, to check where requests went.
    targets: Vec<String>,
    /// Errcodes to answer the next uploads with, in order (then 0).
    upload_errcodes: Vec<i64>,
    issued: Vec<String>,
}

/// A fake WeCom that knows `send` and `upload_media`.
struct UploadFake {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl UploadFake {
    fn start(upload_errcodes: &[i64]) -> UploadFake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Seen {
            upload_errcodes: upload_errcodes.to_vec(),
            ..Seen::default()
        }));
        let shared = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = Arc::clone(&shared);
                thread::spawn(move || serve(stream, &seen));
            }
        });
        UploadFake { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cgi-bin/webhook/send?key={SECRET}", self.port)
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Seen>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut length, mut content_type) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or(("", ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "content-type" => content_type = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let answer = answer(&target, &content_type, &body, seen);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

fn errcode(code: i64, msg: &str) -> String {
    json!({"errcode": code, "errmsg": msg}).to_string()
}

/// WeCom's checks: the key, `type=file`, one multipart part `media` with a filename whose
/// `filelength` matches, 5 B to 20 MB; `file` messages only with a media id it issued.
fn answer(target: &str, content_type: &str, body: &[u8], seen: &Mutex<Seen>) -> String {
    let mut seen = seen.lock().expect("lock");
    seen.targets.push(target.replace(SECRET, "KEY"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<&str> = query.split('&').collect();
    if !params.contains(&format!("key={SECRET}").as_str()) {
        return errcode(93000, "invalid webhook url");
    }
    match path {
        "/cgi-bin/webhook/upload_media" => {
            if !params.contains(&"type=file") {
                return errcode(40004, "invalid media type");
            }
            let Some(boundary) = content_type.strip_prefix("multipart/form-data; boundary=") else {
                return errcode(40005, "not multipart");
            };
            let Some((name, filelength, data)) = media_part(body, boundary) else {
                return errcode(41005, "media data missing");
            };
            if data.len() < 5 || data.len() > 20_000_000 || filelength != data.len() {
                return errcode(40006, "invalid media size");
            }
            seen.uploads.push((name, filelength, data));
            if !seen.upload_errcodes.is_empty() {
                let code = seen.upload_errcodes.remove(0);
                if code != 0 {
                    return errcode(code, "scripted");
                }
            }
            let id = format!("media-{}", seen.issued.len() + 1);
            seen.issued.push(id.clone());
            json!({"errcode": 0, "errmsg": "ok", "type": "file", "media_id": id, "created_at": "1380000000"})
                .to_string()
        }
        "/cgi-bin/webhook/send" => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            seen.sends.push(v.clone());
            if v["msgtype"] == "file" {
                let id = v["file"]["media_id"].as_str().unwrap_or("");
                if !seen.issued.iter().any(|i| i == id) {
                    return errcode(40007, "invalid media_id");
                }
            }
            errcode(0, "ok")
        }
        _ => errcode(404, "no such api"),
    }
}

/// The one part named `media`: its filename, `filelength` and bytes.
fn media_part(body: &[u8], boundary: &str) -> Option<(String, usize, Vec<u8>)> {
    let open = format!("--{boundary}\r\n");
    let close = format!("\r\n--{boundary}--\r\n");
    let inner = body.strip_prefix(open.as_bytes())?.strip_suffix(close.as_bytes())?;
    let split = inner.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&inner[..split]).ok()?;
    let data = inner[split + 4..].to_vec();
    let disposition = head.lines().find(|l| l.starts_with("Content-Disposition: form-data;"))?;
    if !disposition.contains("name=\"media\"") {
        return None;
    }
    let field = |name: &str| {
        let start = disposition.find(&format!("{name}="))? + name.len() + 1;
        let rest = &disposition[start..];
        Some(rest.split(';').next()?.trim().trim_matches('"').to_string())
    };
    Some((field("filename")?, field("filelength")?.parse().ok()?, data))
}

#[test]
fn send_test_with_file_uploads_the_file_and_sends_it() {
    let fake = UploadFake::start(&[]);
    let (code, out, err) = run_to_exit(&["send-test", "--key", &fake.url(), "--with-file"], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let seen = fake.seen.lock().expect("lock");
    assert_eq!(seen.uploads.len(), 1, "{out}");
    let (name, length, data) = &seen.uploads[0];
    assert_eq!(name, "weixin-robot-test.md");
    assert_eq!(*length, data.len());
    assert!(String::from_utf8_lossy(data).starts_with("# weixin-robot 测试文件\n"));
    assert_eq!(
        seen.targets,
        [
            "/cgi-bin/webhook/send?key=KEY",
            "/cgi-bin/webhook/upload_media?key=KEY&type=file",
            "/cgi-bin/webhook/send?key=KEY"
        ]
    );
    // The fake answers 40007 for an id it did not issue, so exit 0 means the right one.
    assert_eq!(seen.sends[1], json!({"msgtype": "file", "file": {"media_id": "media-1"}}));
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
        let fake = UploadFake::start(&[errcode]);
        let (code, out, err) =
            run_to_exit(&["send-test", "--key", &fake.url(), "--with-file"], &[]);
        assert_eq!(code, Some(1), "{errcode}: {out}{err}");
        assert!(out.contains(&format!("errcode {errcode}")) && out.contains(hint), "{out}");
        assert!(err.contains(&format!("send-test failed ({class})")), "{err}");
        assert!(!out.contains(SECRET) && !err.contains(SECRET), "key leaked: {out}{err}");
        let seen = fake.seen.lock().expect("lock");
        assert_eq!(seen.sends.len(), 1, "no file message after a failed upload");
    }
    // Without --with-file nothing is uploaded.
    let fake = UploadFake::start(&[]);
    let (code, _, _) = run_to_exit(&["send-test", "--key", &fake.url()], &[]);
    assert_eq!(code, Some(0));
    assert!(fake.seen.lock().expect("lock").uploads.is_empty());
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
