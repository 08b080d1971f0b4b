//! Test harness: the real relay binary, a fake WeCom server, a raw HTTP client, polling.
//!
//! Everything listens on 127.0.0.1 only. Nothing here sleeps to synchronise: [`wait_until`]
//! polls a condition with a deadline.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_weixin-robot");

/// The relay command: `WEIXIN_ROBOT_BIN` overrides the binary under test (the static builds in
/// dist/), and `WEIXIN_ROBOT_RUNNER` runs it through an emulator such as qemu-aarch64-static.
pub fn relay_command() -> Command {
    let bin = std::env::var("WEIXIN_ROBOT_BIN").unwrap_or_else(|_| BIN.to_string());
    match std::env::var("WEIXIN_ROBOT_RUNNER").ok().filter(|r| !r.is_empty()) {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(bin);
            c
        }
        None => Command::new(bin),
    }
}
/// True when the binary under test is cargo's debug build, which has the deliberate-panic hooks
/// (`/-/debug/panic`, `WEIXIN_ROBOT_DEBUG_SENDER_PANIC`); release binaries given by
/// `WEIXIN_ROBOT_BIN` have none, so the tests of those hooks are skipped for them.
pub fn has_debug_hooks() -> bool {
    let bin = std::env::var("WEIXIN_ROBOT_BIN").unwrap_or_else(|_| BIN.to_string());
    let debug = bin == BIN && cfg!(debug_assertions);
    if !debug {
        eprintln!("skipped: {bin} has no debug hooks (a release build)");
    }
    debug
}

pub const SECRET: &str = "SeCrEtKeY-0123456789-abcdef";

/// Polls `cond` every 10 ms until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wxr-it-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP client

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends raw bytes and reads one response (by Content-Length, or to EOF).
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw)?;
    read_response(&mut s)
}

pub fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(Response { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Response {
    request(addr, "POST", path, body)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"")
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// One alert for [`payload`]: fingerprint, status, alertname.
pub struct A<'a>(pub &'a str, pub &'a str, pub &'a str);

/// An Alertmanager v4 notification for `group` holding `alerts`.
pub fn payload(group: &str, alerts: &[A]) -> Vec<u8> {
    let any_firing = alerts.iter().any(|a| a.1 == "firing");
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|A(fp, status, name)| {
            json!({
                "status": status,
                "labels": {"alertname": name, "severity": "critical", "instance": format!("{fp}.example:9100"), "project": "it"},
                "annotations": {"summary": format!("{name} summary"), "description": format!("{name} fp={fp} description")},
                "startsAt": "2024-05-01T12:00:00Z",
                "endsAt": if *status == "resolved" { "2024-05-01T12:30:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": "http://prometheus.example:9090/graph",
                "fingerprint": fp,
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{group=\"{group}\"}}"),
        "truncatedAlerts": 0,
        "status": if any_firing { "firing" } else { "resolved" },
        "receiver": "wecom",
        "groupLabels": {"group": group},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
    })
    .to_string()
    .into_bytes()
}

/// `(fingerprint, status)` pairs found in a delivered markdown text, via the `fp=` marker that
/// [`payload`] puts in each description and the section the alert sits in.
pub fn alerts_in(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut status = "firing";
    for line in markdown.lines() {
        // Headings: "## 告警通知 共 N 条" in markdown, without the "## " in text messages.
        let heading = line.starts_with("## ") || line.contains(" 共 ");
        if line.contains("告警通知") && heading {
            status = "firing";
        } else if line.contains("恢复通知") && heading {
            status = "resolved";
        }
        if let Some(i) = line.find(" fp=") {
            let fp: String = line[i + 4..].chars().take_while(|c| !c.is_whitespace()).collect();
            out.push((fp, status.to_string()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Fake WeCom

#[derive(Clone, Debug)]
pub enum Behave {
    /// `{"errcode":0,"errmsg":"ok"}`
    Ok,
    /// HTTP 200 with this errcode.
    Errcode(i64),
    /// This HTTP status with an empty JSON body.
    Http(u16),
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// Read the request, then say nothing for this long before answering ok.
    Hang(Duration),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub target: String,
    pub body: Value,
    pub raw_len: usize,
    /// What the fake answered; only `Ok` counts as delivered.
    pub answered: String,
    pub delivered: bool,
}

impl Received {
    /// The message text, whatever its type (markdown, markdown_v2, text).
    pub fn content(&self) -> &str {
        ["markdown", "markdown_v2", "text"]
            .iter()
            .find_map(|t| self.body[*t]["content"].as_str())
            .unwrap_or("")
    }

    pub fn msgtype(&self) -> &str {
        self.body["msgtype"].as_str().unwrap_or("")
    }
}

/// WeCom's content limits in UTF-8 bytes: over them it answers errcode 40058.
/// <https://developer.work.weixin.qq.com/document/path/91770>
pub const MARKDOWN_LIMIT: usize = 4096;
pub const TEXT_LIMIT: usize = 2048;

struct FakeState {
    script: VecDeque<Behave>,
    default: Behave,
    received: Vec<Received>,
    /// Content containing this is refused with this errcode (a "poisoned" notification).
    poison: Option<(String, i64)>,
    /// Files accepted by `upload_media`; a file message must name one of their ids.
    uploads: Vec<Upload>,
    /// WeCom's send budget: past this many sends within the window, errcode 45009.
    budget: Option<(usize, Duration)>,
    /// Every upload is answered with this errcode (and counted in `upload_failures`).
    upload_errcode: Option<i64>,
    /// How many more uploads `upload_errcode` refuses (`None`: every one).
    upload_refusals_left: Option<usize>,
    upload_failures: usize,
    /// When each refused upload arrived.
    upload_refused_at: Vec<Instant>,
    /// Every `file` message is answered with this errcode while set.
    file_errcode: Option<i64>,
    /// Every upload is answered only after this long.
    upload_delay: Duration,
    /// Uploads whose request was read (answered or not yet).
    uploads_started: usize,
}

/// A file the fake accepted on `…/upload_media` (multipart part `media`).
#[derive(Clone, Debug)]
pub struct Upload {
    pub media_id: String,
    pub file_name: String,
    /// The part's `filelength`, which WeCom's example sends and which must match.
    pub file_length: usize,
    pub data: Vec<u8>,
    pub target: String,
}

pub struct FakeWeCom {
    pub addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    /// Connections being served, and polls of the accept queue that found it empty: together
    /// they tell `wait_idle` that nothing a killed relay sent is still to be answered.
    open: Arc<AtomicUsize>,
    empty_polls: Arc<AtomicUsize>,
}

impl FakeWeCom {
    pub fn start() -> FakeWeCom {
        FakeWeCom::start_on(TcpListener::bind("127.0.0.1:0").expect("bind fake"), None)
    }

    /// Binds a specific port (for "connection refused for a while" tests).
    pub fn start_at(port: u16) -> FakeWeCom {
        FakeWeCom::start_on(TcpListener::bind(("127.0.0.1", port)).expect("bind fake port"), None)
    }

    /// HTTPS with the given server certificate chain and key (PEM files).
    pub fn start_tls(cert: &Path, key: &Path) -> FakeWeCom {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("cert pem")
            .map(|c| c.expect("cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key pem");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        FakeWeCom::start_on(TcpListener::bind("127.0.0.1:0").expect("bind"), Some(Arc::new(config)))
    }

    fn start_on(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> FakeWeCom {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(FakeState {
            script: VecDeque::new(),
            default: Behave::Ok,
            received: Vec::new(),
            poison: None,
            uploads: Vec::new(),
            budget: None,
            upload_errcode: None,
            upload_refusals_left: None,
            upload_failures: 0,
            upload_refused_at: Vec::new(),
            upload_delay: Duration::ZERO,
            uploads_started: 0,
            file_errcode: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (open, empty_polls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        listener.set_nonblocking(true).expect("nonblocking");
        let (st, stop2) = (Arc::clone(&state), Arc::clone(&stop));
        let (open2, polls2) = (Arc::clone(&open), Arc::clone(&empty_polls));
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = Arc::clone(&st);
                        let tls = tls.clone();
                        open2.fetch_add(1, Ordering::SeqCst);
                        let served = Arc::clone(&open2);
                        thread::spawn(move || {
                            /// Counts the connection as served however the handler ends.
                            struct Served(Arc<AtomicUsize>);
                            impl Drop for Served {
                                fn drop(&mut self) {
                                    self.0.fetch_sub(1, Ordering::SeqCst);
                                }
                            }
                            let _served = Served(served);
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                            match tls {
                                None => serve(stream, &st),
                                Some(cfg) => {
                                    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                                        return;
                                    };
                                    serve(rustls::StreamOwned::new(conn, stream), &st)
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        polls2.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        FakeWeCom { addr, state, stop, open, empty_polls }
    }

    /// A webhook URL for the relay pointing here, with the test secret as key.
    pub fn url(&self) -> String {
        format!("http://{}/cgi-bin/webhook/send?key={SECRET}", self.addr)
    }

    pub fn script(&self, behaviours: impl IntoIterator<Item = Behave>) {
        self.state.lock().expect("fake").script.extend(behaviours);
    }

    /// Waits until every request a relay sent has been answered: after `kill9` a request the
    /// dead relay sent may still be read, and the behaviour it gets is chosen only then, so a
    /// test switching the behaviour right away would race with it (a failure meant for the
    /// killed relay answered as a delivery nobody saw). Two empty polls of the accept queue
    /// after the call, then no connection being served.
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let polls = self.empty_polls.load(Ordering::SeqCst);
            while self.empty_polls.load(Ordering::SeqCst) < polls + 2 {
                assert!(Instant::now() < deadline, "the fake's accept loop stopped");
                thread::sleep(Duration::from_millis(1));
            }
            if self.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the fake still serves a connection after 10 s");
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn set_default(&self, b: Behave) {
        self.state.lock().expect("fake").default = b;
    }

    /// Refuses every message whose content contains `needle` with `errcode`, as WeCom refuses
    /// content it does not like (93000 …) whatever the script says.
    pub fn refuse_containing(&self, needle: &str, errcode: i64) {
        self.state.lock().expect("fake").poison = Some((needle.to_string(), errcode));
    }

    /// Enforces WeCom's budget: a send past `messages` sends (answered or not) within any
    /// `window` gets errcode 45009, as WeCom answers (20 per 60 s for real robots).
    pub fn enforce_budget(&self, messages: usize, window: Duration) {
        self.state.lock().expect("fake").budget = Some((messages, window));
    }

    /// Answers every upload with `errcode` from now on; returns nothing to undo it.
    pub fn fail_uploads(&self, errcode: i64) {
        let mut st = self.state.lock().expect("fake");
        st.upload_errcode = Some(errcode);
        st.upload_refusals_left = None;
    }

    /// Answers only the next `count` uploads with `errcode` (a one-off refusal), then accepts.
    pub fn fail_uploads_first(&self, errcode: i64, count: usize) {
        let mut st = self.state.lock().expect("fake");
        st.upload_errcode = Some(errcode);
        st.upload_refusals_left = Some(count);
    }

    /// When each upload refused by `fail_uploads`/`fail_uploads_first` arrived.
    pub fn upload_refused_at(&self) -> Vec<Instant> {
        self.state.lock().expect("fake").upload_refused_at.clone()
    }

    /// Answers every `file` message with `errcode` (`None`: as usual again), so a test can
    /// stop a digest between its digest message and its file message.
    pub fn fail_file_messages(&self, errcode: Option<i64>) {
        self.state.lock().expect("fake").file_errcode = errcode;
    }

    /// Answers every upload only after `delay` (a slow upload, during which a test may reload).
    pub fn delay_uploads(&self, delay: Duration) {
        self.state.lock().expect("fake").upload_delay = delay;
    }

    /// Uploads whose request was read, including one still waiting for `delay_uploads`.
    pub fn uploads_started(&self) -> usize {
        self.state.lock().expect("fake").uploads_started
    }

    /// Undoes `refuse_containing`.
    pub fn stop_refusing(&self) {
        self.state.lock().expect("fake").poison = None;
    }

    /// Uploads answered with the `fail_uploads` errcode.
    pub fn upload_failures(&self) -> usize {
        self.state.lock().expect("fake").upload_failures
    }

    /// Files accepted by `upload_media`, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state.lock().expect("fake").uploads.clone()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("fake").received.clone()
    }

    pub fn delivered(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.delivered).collect()
    }

    /// Every (fingerprint, status) in delivered messages, in order.
    pub fn delivered_alerts(&self) -> Vec<(String, String)> {
        self.delivered().iter().flat_map(|r| alerts_in(r.content())).collect()
    }
}

impl Drop for FakeWeCom {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: impl Read + Write, state: &Mutex<FakeState>) {
    // Read headers byte-wise (requests are small), then the body by Content-Length.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let target = head_text.split_whitespace().nth(1).unwrap_or("").to_string();
    let len: usize = head_text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if stream.read_exact(&mut body).is_err() {
        return;
    }
    if target.starts_with("/cgi-bin/webhook/upload_media") {
        let content_type = head_text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type").then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let delay = {
            let mut st = state.lock().expect("fake");
            st.uploads_started += 1;
            st.upload_delay
        };
        thread::sleep(delay);
        let answer = upload(&target, &content_type, &body, state);
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        return;
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let msgtype = parsed["msgtype"].as_str().unwrap_or("").to_string();
    let content_len = parsed[msgtype.as_str()]["content"].as_str().map_or(0, str::len);
    let over_limit = match msgtype.as_str() {
        "markdown" | "markdown_v2" => content_len > MARKDOWN_LIMIT,
        "text" => content_len > TEXT_LIMIT,
        _ => false,
    };
    let (behave, index) = {
        let mut st = state.lock().expect("fake");
        let poisoned = st.poison.as_ref().and_then(|(needle, code)| {
            let content = parsed[msgtype.as_str()]["content"].as_str().unwrap_or("");
            content.contains(needle.as_str()).then_some(*code)
        });
        let unknown_media = msgtype == "file" && {
            let id = parsed["file"]["media_id"].as_str().unwrap_or("");
            !st.uploads.iter().any(|u| u.media_id == id)
        };
        let over_budget = st.budget.is_some_and(|(max, window)| {
            st.received.iter().filter(|r| r.at.elapsed() < window).count() >= max
        });
        let file_errcode = st.file_errcode.filter(|_| msgtype == "file");
        let b = if over_budget {
            Behave::Errcode(45009)
        } else if let Some(code) = file_errcode {
            Behave::Errcode(code)
        } else if over_limit {
            Behave::Errcode(40058)
        } else if unknown_media {
            Behave::Errcode(40007)
        } else if let Some(code) = poisoned {
            Behave::Errcode(code)
        } else {
            st.script.pop_front().unwrap_or_else(|| st.default.clone())
        };
        let index = st.received.len();
        st.received.push(Received {
            at: Instant::now(),
            target,
            body: parsed,
            raw_len: len,
            answered: format!("{b:?}"),
            // Marked before the answer is written, so a test that saw the relay succeed never
            // reads `delivered` a moment too early; taken back below if the write fails.
            delivered: matches!(b, Behave::Ok),
        });
        (b, index)
    };
    let (status, answer) = match &behave {
        Behave::Ok => (200, r#"{"errcode":0,"errmsg":"ok"}"#.to_string()),
        Behave::Errcode(code) => {
            (200, format!(r#"{{"errcode":{code},"errmsg":"scripted error"}}"#))
        }
        Behave::Http(code) => (*code, "{}".to_string()),
        Behave::Garbage => (200, "<html>bad gateway</html>".to_string()),
        Behave::Hang(d) => {
            thread::sleep(*d);
            (200, r#"{"errcode":0,"errmsg":"ok"}"#.to_string())
        }
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let written = stream.write_all(resp.as_bytes()).and_then(|_| stream.flush()).is_ok();
    // Delivered means: errcode 0 answered promptly (a hang past the relay's timeout is a loss
    // from the relay's point of view, which then retries).
    if !written {
        state.lock().expect("fake").received[index].delivered = false;
    }
}

// ---------------------------------------------------------------------------------------------
// The relay process

pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn capture(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = Arc::clone(&buf);
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            b.lock().expect("log").push_str(&line);
            line.clear();
        }
    });
    buf
}

impl Relay {
    /// Starts the relay on a free loopback port with `args` and waits for `/healthz`.
    pub fn start(args: &[&str]) -> Relay {
        Relay::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Relay {
        for _attempt in 0..5 {
            let port = free_port();
            let mut cmd = relay_command();
            cmd.args(["--listen", "127.0.0.1", "--port", &port.to_string()])
                .args(args)
                .env_remove("KEY")
                .env_remove("PORT")
                .env("RUST_LOG", std::env::var("IT_RUST_LOG").unwrap_or_else(|_| "info".into()))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn relay");
            let stderr = capture(child.stderr.take().expect("stderr"));
            let stdout = capture(child.stdout.take().expect("stdout"));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut relay = Relay { child, addr, stderr, stdout };
            if relay.wait_healthy() {
                return relay;
            }
            // Lost the port race, or failed to start: show why if it was not the port.
            let logs = relay.logs();
            let _ = relay.child.kill();
            let _ = relay.child.wait();
            assert!(logs.contains("Address already in use"), "relay did not start:\n{logs}");
        }
        panic!("could not find a free port for the relay");
    }

    fn wait_healthy(&mut self) -> bool {
        // Generous: under qemu user emulation start-up takes a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(r) = raw_request(
                self.addr,
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            ) {
                if r.status == 200 {
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }

    pub fn post(&self, body: &[u8]) -> Response {
        post(self.addr, "/alertinfo", body)
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().expect("log").clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("log").clone()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (polling) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        wait_until(timeout, "relay to exit", || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        // Let the log readers catch the last lines.
        wait_until(Duration::from_secs(2), "log pipes to close", || {
            Arc::strong_count(&self.stderr) == 1 && Arc::strong_count(&self.stdout) == 1
        });
        status.expect("status")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn metrics(&self) -> String {
        get(self.addr, "/metrics").body
    }

    /// `/metrics` with an `Authorization` header.
    pub fn metrics_with(&self, authorization: &str) -> String {
        let raw = format!(
            "GET /metrics HTTP/1.1\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
        );
        raw_request(self.addr, raw.as_bytes()).map(|r| r.body).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for exit-code tests).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = relay_command();
    cmd.args(args).env_remove("KEY").env_remove("PORT").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Resident memory of a process, from /proc (KiB).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A relay requiring a bearer token (`token`) or basic auth (`users`, user:password lines),
/// both written to files in the returned directory as `token` and `users`.
pub fn relay_with_auth(fake: &FakeWeCom, token: &str, users: &str) -> (Relay, TempDir) {
    let dir = TempDir::new("auth");
    let token_path = dir.path().join("token");
    let users_path = dir.path().join("users");
    std::fs::write(&token_path, format!("{token}\n")).expect("token");
    std::fs::write(&users_path, users).expect("users");
    let relay = Relay::start(&[
        "--key",
        &fake.url(),
        "--auth-token-file",
        token_path.to_str().expect("utf8"),
        "--basic-auth-file",
        users_path.to_str().expect("utf8"),
    ]);
    (relay, dir)
}

/// WeCom's robot upload (`upload_media?key=…&type=file`): the key, one multipart part `media`
/// with a filename and a matching `filelength`, 5 B to 20 MB; a scripted behaviour applies as
/// for sends. Answers `{"errcode":0,"media_id":…}` and remembers the file.
fn upload(target: &str, content_type: &str, body: &[u8], state: &Mutex<FakeState>) -> String {
    let errcode = |code: i64| format!(r#"{{"errcode":{code},"errmsg":"fake upload"}}"#);
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let params: Vec<&str> = query.split('&').collect();
    if !params.contains(&format!("key={SECRET}").as_str()) {
        return errcode(93000);
    }
    if !params.contains(&"type=file") {
        return errcode(40004);
    }
    let Some(boundary) = content_type.strip_prefix("multipart/form-data; boundary=") else {
        return errcode(40005);
    };
    let Some((file_name, file_length, data)) = media_part(body, boundary) else {
        return errcode(41005);
    };
    if data.len() < 5 || data.len() > 20_000_000 || file_length != data.len() {
        return errcode(40006);
    }
    let mut st = state.lock().expect("fake");
    if let Some(code) = st.upload_errcode {
        if st.upload_refusals_left != Some(0) {
            st.upload_failures += 1;
            st.upload_refused_at.push(Instant::now());
            if let Some(left) = st.upload_refusals_left.as_mut() {
                *left -= 1;
            }
            return errcode(code);
        }
    }
    match st.script.pop_front().unwrap_or_else(|| st.default.clone()) {
        Behave::Ok => {}
        Behave::Errcode(code) => return errcode(code),
        _ => return errcode(-1),
    }
    let media_id = format!("media-{}", st.uploads.len() + 1);
    st.uploads.push(Upload {
        media_id: media_id.clone(),
        file_name,
        file_length,
        data,
        target: target.replace(SECRET, "KEY"),
    });
    json!({"errcode": 0, "errmsg": "ok", "type": "file", "media_id": media_id, "created_at": "1380000000"})
        .to_string()
}

/// The one multipart part named `media`: its filename, `filelength` and bytes.
fn media_part(body: &[u8], boundary: &str) -> Option<(String, usize, Vec<u8>)> {
    let open = format!("--{boundary}\r\n");
    let close = format!("\r\n--{boundary}--\r\n");
    let inner = body.strip_prefix(open.as_bytes())?.strip_suffix(close.as_bytes())?;
    let split = inner.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&inner[..split]).ok()?;
    let disposition = head.lines().find(|l| l.starts_with("Content-Disposition: form-data;"))?;
    if !disposition.contains("name=\"media\"") {
        return None;
    }
    let field = |name: &str| {
        let start = disposition.find(&format!("{name}="))? + name.len() + 1;
        Some(disposition[start..].split(';').next()?.trim().trim_matches('"').to_string())
    };
    Some((field("filename")?, field("filelength")?.parse().ok()?, inner[split + 4..].to_vec()))
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for `?key=` values).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
