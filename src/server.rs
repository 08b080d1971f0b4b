//! HTTP: `POST /alertinfo`, health, readiness and metrics, on `may_minihttp`.
//!
//! This module maps outcomes to status codes and does nothing else. Our status codes are part
//! of the delivery contract: Alertmanager retries 5xx and network errors but never a 4xx, so a
//! 4xx means "this body can never succeed" and a 503 means "keep it and try again".
//!
//! `may_minihttp` 0.1.11 is built for benchmarks and trusts its input. We run a vendored copy
//! with a small diff (`vendor/may_minihttp/PATCHES.md`): the head size and the answers a client
//! leaves unread are bounded in its connection loop (our `max_head_bytes`/`max_unsent_bytes`),
//! a malformed or oversized head is answered through [`HttpService::bad_head`], HEAD and
//! HTTP/1.0 are answered correctly, and `Response::close` ends a connection after its answer.
//! The sharp edges left, and how we guard them from our side:
//! - `Request::body()` unwraps the Content-Length parse: we validate Content-Length first and
//!   only call `body()` with a valid one; `Transfer-Encoding` is refused.
//! - Body bytes we did not read would be parsed as the next request: every body is read,
//!   discarded through `body()`, or the answer closes the connection (`Response::close`), after
//!   the answers to earlier pipelined requests have been written.
//! - No timeouts, no connection limit: see [`crate::guard`]; bodies held at once are bounded
//!   by [`crate::guard::BodyBudget`].

use std::io::{self, Read};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use may_minihttp::{BadHead, HttpService, HttpServiceFactory, Request, Response};
use serde_json::json;

use crate::auth::Auth;
use crate::fleet::Fleet;
use crate::guard::{self, Admission, BodyBudget, ConnState, Guard};
use crate::intake::{self, Rejected};
use crate::key_param::KeyParamHost;
use crate::metrics;
use crate::outbox::{EnqueueError, Enqueued};
use crate::reject_log;

/// Bodies above `--max-body` but at most this big are read and thrown away so the client gets
/// a clean 413 on a healthy connection; anything larger gets its answer and a closed socket.
const DISCARD_LIMIT_BYTES: u64 = 64 << 20;

/// Everything request handling needs, shared by all connections.
pub struct App {
    pub fleet: Fleet,
    pub allow_key_param: bool,
    /// `--key-param-host`: what a `?key=` URL may name (checked before a robot is made).
    pub key_param_host: KeyParamHost,
    pub max_body_bytes: u64,
    /// `--max-alerts`: more alerts in one notification → 413.
    pub max_alerts: usize,
    pub auth: Option<Auth>,
    pub guard: Arc<Guard>,
    /// `--max-body-in-flight`.
    pub body_budget: BodyBudget,
    /// Cleared on SIGTERM: `/alertinfo` answers 503 and readiness fails.
    pub accepting: AtomicBool,
}

pub struct Factory {
    pub app: Arc<App>,
}

impl HttpServiceFactory for Factory {
    type Service = Conn;

    /// may_minihttp passes the socket's fd as the id; we keep it to enforce limits and to
    /// answer and close directly.
    fn new_service(&self, id: usize) -> Conn {
        let fd = RawFd::try_from(id).unwrap_or(-1);
        let (state, closed) = match self.app.guard.open(fd) {
            Admission::Admitted(state) => (Some(state), false),
            Admission::Refused(state) => (Some(state), true),
            Admission::Dropped => (None, true),
        };
        Conn { app: Arc::clone(&self.app), fd, state, closed }
    }
}

/// One connection. Lives exactly as long as its connection.
pub struct Conn {
    app: Arc<App>,
    fd: RawFd,
    /// `None` only when the guard shut the connection at once (a flood past twice the limit);
    /// a connection refused with a lingering 503 keeps its state (and `closed` is set).
    state: Option<Arc<ConnState>>,
    /// Set once we shut the socket: bytes may_minihttp still holds must not become requests.
    closed: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.state.is_none() {
            return;
        }
        let killed = self.app.guard.close(self.fd);
        if self.closed || killed {
            return;
        }
        if std::thread::panicking() {
            // A bug in handling this request; may catches the panic, the process lives on.
            metrics::request_rejected("internal_error");
            guard::answer_and_shut(self.fd, 500, "Internal Server Error", "internal error");
        }
    }
}

/// An answer: status, reason phrase, extra headers and a one-line JSON body.
struct Reply {
    code: usize,
    reason: &'static str,
    headers: &'static [&'static str],
    body: String,
    /// For a refusal: its one-line reason, logged (rate-limited) with the client's address.
    why: Option<String>,
}

fn reply(code: usize, reason: &'static str, body: serde_json::Value) -> Reply {
    Reply { code, reason, headers: &[], body: body.to_string(), why: None }
}

fn error(code: usize, reason: &'static str, metric: &'static str, message: &str) -> Reply {
    metrics::request_rejected(metric);
    let mut r = reply(code, reason, json!({ "error": message }));
    r.why = Some(message.to_string());
    r
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Intake,
    Healthy,
    Ready,
    Metrics,
    Reload,
    #[cfg(debug_assertions)]
    Panic,
    Unknown,
}

impl Route {
    /// `path` is the request target without its query.
    fn of(path: &str) -> Route {
        match path {
            "/alertinfo" => Route::Intake,
            p if p.starts_with("/alertinfo/") => Route::Intake,
            "/healthz" | "/-/healthy" => Route::Healthy,
            "/-/ready" => Route::Ready,
            "/metrics" => Route::Metrics,
            "/-/reload" => Route::Reload,
            // Debug builds only: lets a test prove that a panicking request takes down neither
            // the process nor the queue. Release builds have no such path.
            #[cfg(debug_assertions)]
            "/-/debug/panic" => Route::Panic,
            _ => Route::Unknown,
        }
    }

    fn needs_auth(self) -> bool {
        matches!(self, Route::Intake | Route::Metrics | Route::Reload)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Other,
}

impl Method {
    fn of(method: &str) -> Method {
        match method {
            "GET" | "HEAD" => Method::Get,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }
}

/// How the request's body is framed.
enum Framing {
    Length(u64),
    Missing,
    Chunked,
    Invalid(&'static str),
}

fn framing(req: &Request) -> Framing {
    let mut length: Option<u64> = None;
    for h in req.headers() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Framing::Chunked;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, length) {
                (None, _) => return Framing::Invalid("invalid Content-Length"),
                (Some(n), Some(prev)) if n != prev => {
                    return Framing::Invalid("conflicting Content-Length headers")
                }
                (Some(n), _) => length = Some(n),
            }
        }
    }
    length.map_or(Framing::Missing, Framing::Length)
}

fn authorization<'a>(req: &'a Request) -> Option<&'a [u8]> {
    req.headers().iter().find(|h| h.name.eq_ignore_ascii_case("authorization")).map(|h| h.value)
}

impl HttpService for Conn {
    // Not inlined into may_minihttp's connection loop: that loop's frame is what an idle
    // connection's coroutine stack holds, and with the request handling inlined it was 11 KiB,
    // every page of it probed (touched) on entry: 20 KiB resident per idle connection instead
    // of 12 (#18: ≤ 16 KiB per idle connection; BENCHMARKS.md "Hostile clients").
    #[inline(never)]
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        if let Some(state) = &self.state {
            state.call_started();
        }
        self.handle(req, rsp);
        if let Some(state) = &self.state {
            state.call_finished();
        }
        Ok(())
    }

    fn max_head_bytes(&self) -> usize {
        usize::try_from(self.app.guard.limits().max_header_bytes).unwrap_or(usize::MAX)
    }

    fn max_unsent_bytes(&self) -> usize {
        usize::try_from(self.app.guard.limits().max_unsent_bytes).unwrap_or(usize::MAX)
    }

    fn max_headers(&self) -> usize {
        self.app.guard.limits().max_headers
    }

    /// A head that does not parse (a line without a colon, …), carries more than
    /// `--max-headers` headers or grew past `--max-header-bytes`; the connection closes after
    /// this answer.
    fn bad_head(&mut self, why: BadHead, rsp: &mut Response) -> bool {
        if self.closed {
            return false;
        }
        let r = match why {
            BadHead::Malformed => error(
                400,
                "Bad Request",
                "bad_head",
                "malformed request head (each header \"Name: value\")",
            ),
            BadHead::TooManyHeaders => error(
                431,
                "Request Header Fields Too Large",
                "too_many_headers",
                &format!(
                    "too many request headers (at most {}, --max-headers)",
                    self.app.guard.limits().max_headers
                ),
            ),
            BadHead::TooLarge => error(
                431,
                "Request Header Fields Too Large",
                "header_too_large",
                "request head too large (--max-header-bytes)",
            ),
        };
        self.respond(rsp, r);
        true
    }

    fn waiting(&mut self, buffered: usize) {
        if let Some(state) = &self.state {
            state.waiting(buffered);
        }
    }
}

impl Conn {
    fn handle(&mut self, req: Request, rsp: &mut Response) {
        let target = req.path();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let route = Route::of(path);
        // `/alertinfo/{robot}` and `?key=`: copied out before reading the body consumes `req`.
        let path_robot = path
            .strip_prefix("/alertinfo/")
            .map(|name| name.trim_end_matches('/').to_string())
            .filter(|name| !name.is_empty());
        let key_param = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned());
        let method = Method::of(req.method());
        let wants_body = route == Route::Intake && method == Method::Post;

        let length = match framing(&req) {
            Framing::Invalid(why) => {
                return self.answer_and_close(rsp, error(400, "Bad Request", "bad_framing", why));
            }
            Framing::Chunked => {
                let why = "Transfer-Encoding is not supported; send Content-Length";
                return self.answer_and_close(rsp, error(411, "Length Required", "chunked", why));
            }
            Framing::Missing if wants_body => {
                let r = error(411, "Length Required", "no_length", "Content-Length is required");
                return self.answer_and_close(rsp, r);
            }
            Framing::Missing => 0,
            Framing::Length(n) => n,
        };

        // Decided before any body byte is read; a refusal still has to get rid of the body.
        let refusal = if route.needs_auth() && !self.authorized(&req) {
            let mut r = error(401, "Unauthorized", "unauthorized", "missing or wrong credentials");
            r.headers = self.app.auth.as_ref().map_or(&[][..], Auth::challenge);
            Some(r)
        } else if wants_body && length > self.app.max_body_bytes {
            Some(error(413, "Payload Too Large", "too_large", "body exceeds --max-body"))
        } else if !wants_body {
            Some(self.route(method, route))
        } else {
            None
        };

        if let Some(r) = refusal {
            if length > DISCARD_LIMIT_BYTES {
                return self.answer_and_close(rsp, r);
            }
            // Read and throw away whatever body came along, in small steps, never keeping it.
            let discarded = io::copy(&mut req.body().take(length), &mut io::sink());
            if discarded.map_or(true, |n| n < length) {
                return self.close();
            }
            return self.respond(rsp, r);
        }

        // Reserved before the first body byte is read; given back when this request is done.
        let app = Arc::clone(&self.app);
        let Some(_permit) = app.body_budget.take(length) else {
            metrics::request_rejected("bodies_in_flight");
            let r = Reply {
                code: 503,
                reason: "Service Unavailable",
                headers: &["Retry-After: 5"],
                body: json!({ "error": "busy: too many request bodies in flight, retry" })
                    .to_string(),
                why: None,
            };
            return self.answer_and_close(rsp, r);
        };
        // `length` is within --max-body here, so this allocation is bounded.
        let mut body = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
        let read = req.body().take(length).read_to_end(&mut body);
        if read.map_or(true, |n| (n as u64) < length) {
            // The client went away (or was cut off by the deadline) mid-body.
            metrics::request_rejected("short_body");
            return self.close();
        }
        if let Some(state) = &self.state {
            state.body_received();
        }
        let r = self.intake(&body, path_robot.as_deref(), key_param.as_deref());
        self.respond(rsp, r);
    }

    /// Writes the answer; a refusal (4xx) is logged with the client's address.
    fn respond(&self, rsp: &mut Response, r: Reply) {
        if let (400..=499, Some(why)) = (r.code, r.why.as_deref()) {
            let code = u16::try_from(r.code).unwrap_or(400);
            reject_log::rejected(guard::peer_addr(self.fd), code, why);
        }
        write_reply(rsp, r);
    }

    fn authorized(&self, req: &Request) -> bool {
        self.app.auth.as_ref().is_none_or(|auth| auth.allows(authorization(req)))
    }

    fn route(&self, method: Method, route: Route) -> Reply {
        let get = method == Method::Get;
        match route {
            Route::Intake => {
                let mut r = error(405, "Method Not Allowed", "bad_method", "use POST");
                r.headers = &["Allow: POST"];
                r
            }
            Route::Healthy if get => reply(200, "OK", json!({"status": "ok"})),
            Route::Ready if get => {
                let not_ready = self.app.fleet.not_ready();
                if !self.app.accepting.load(Ordering::Relaxed) {
                    reply(503, "Service Unavailable", json!({"status": "shutting down"}))
                } else if let Some(why) = not_ready {
                    reply(503, "Service Unavailable", json!({ "status": why }))
                } else {
                    reply(200, "OK", json!({"status": "ready"}))
                }
            }
            Route::Metrics if get => {
                let gauges: Vec<metrics::Gauges> = self
                    .app
                    .fleet
                    .all()
                    .iter()
                    .map(|r| {
                        let s = r.outbox.stats();
                        metrics::Gauges {
                            robot: r.name.clone(),
                            messages: s.messages,
                            bytes: s.bytes,
                            oldest_age: s.oldest_age,
                        }
                    })
                    .collect();
                Reply {
                    code: 200,
                    reason: "OK",
                    headers: &["Content-Type: text/plain; version=0.0.4; charset=utf-8"],
                    body: metrics::render(&gauges, self.app.guard.connections()),
                    why: None,
                }
            }
            Route::Reload if method == Method::Post => match self.reload() {
                Ok(summary) => {
                    log::info!("configuration reloaded (POST /-/reload) {summary}");
                    reply(200, "OK", json!({"status": "reloaded"}))
                }
                Err(e) => {
                    log::error!("reload failed, the old configuration stays: {e}");
                    error(500, "Internal Server Error", "reload_failed", &e)
                }
            },
            Route::Reload => {
                let mut r = error(405, "Method Not Allowed", "bad_method", "use POST");
                r.headers = &["Allow: POST"];
                r
            }
            #[cfg(debug_assertions)]
            Route::Panic => panic!("deliberate panic from /-/debug/panic"),
            Route::Healthy | Route::Ready | Route::Metrics => {
                let mut r = error(405, "Method Not Allowed", "bad_method", "use GET");
                r.headers = &["Allow: GET, HEAD"];
                r
            }
            Route::Unknown => error(
                404,
                "Not Found",
                "not_found",
                "no such path; Alertmanager posts to /alertinfo",
            ),
        }
    }

    /// `POST /-/reload`, off the coroutine (disk work, sender threads).
    fn reload(&self) -> Result<String, String> {
        let app = Arc::clone(&self.app);
        off_coroutine("reload", move || app.fleet.reload())
    }

    /// The `?key=` robot; made on first use off the coroutine (disk work, and an eviction
    /// joins a spool writer thread).
    fn key_robot(&self, key: &str) -> Result<Arc<crate::routing::Robot>, String> {
        if let Some(robot) = self.app.fleet.adhoc_ready(key) {
            return Ok(robot);
        }
        let (app, key) = (Arc::clone(&self.app), key.to_string());
        off_coroutine("key-robot", move || app.fleet.adhoc(&key))
    }

    fn intake(&self, body: &[u8], path_robot: Option<&str>, key_param: Option<&str>) -> Reply {
        if !self.app.accepting.load(Ordering::Relaxed) {
            return unavailable(&EnqueueError::ShuttingDown, "shutting_down");
        }
        let robots = self.app.fleet.robots();
        let chosen = match (path_robot, key_param) {
            (Some(_), Some(_)) => {
                let why = "name a robot in the path or give ?key=, not both";
                return error(400, "Bad Request", "bad_robot", why);
            }
            (Some(name), None) => match robots.named(name) {
                Some(robot) => Some(Arc::clone(robot)),
                None => {
                    let why = format!("no robot named {name:?}");
                    return error(404, "Not Found", "unknown_robot", &why);
                }
            },
            (None, Some(_)) if !self.app.allow_key_param => {
                let why = "?key= is off; start the relay with --allow-key-param";
                return error(400, "Bad Request", "key_param_off", why);
            }
            (None, Some(key)) => match self.app.key_param_host.check(key) {
                Err(e) => {
                    return error(400, "Bad Request", "bad_key_param", &format!("?key=: {e}"))
                }
                // The key passed the check: what fails now is room (every `?key=` robot has
                // messages pending) or the disk, both passing. 503, so Alertmanager retries; a
                // 4xx would lose the notification.
                Ok(()) => match self.key_robot(key) {
                    Ok(robot) => Some(robot),
                    Err(e) => {
                        let mut r = error(503, "Service Unavailable", "key_robot_unavailable", &e);
                        r.headers = &["Retry-After: 30"];
                        return r;
                    }
                },
            },
            (None, None) => None,
        };
        match intake::accept(body, self.app.max_alerts, &robots, chosen.as_ref()) {
            Ok(accepted) => accepted_reply(&accepted),
            Err(Rejected::TooLarge(reason)) => {
                metrics::request_rejected("too_many_alerts");
                error(413, "Payload Too Large", "too_many_alerts", &reason)
            }
            Err(Rejected::BadPayload(reason)) => error(400, "Bad Request", "bad_payload", &reason),
            Err(Rejected::Unavailable(e)) => {
                let metric = match e {
                    EnqueueError::Full | EnqueueError::TooLarge => "outbox_full",
                    EnqueueError::ShuttingDown => "shutting_down",
                    EnqueueError::Disk(_) => "disk_error",
                };
                if let EnqueueError::Disk(err) = &e {
                    log::error!("notification not accepted: {err}");
                } else {
                    log::warn!("notification not accepted: {e}");
                }
                unavailable(&e, metric)
            }
        }
    }

    /// Answers and closes the connection, for requests whose remaining bytes we cannot or
    /// will not read. Answers to earlier pipelined requests go out first; whatever follows
    /// this request is never parsed (`Response::close`, vendored may_minihttp).
    fn answer_and_close(&mut self, rsp: &mut Response, r: Reply) {
        self.respond(rsp, r);
        rsp.close();
    }

    /// Shuts the socket both ways; the connection loop then ends on its next read or write.
    fn close(&mut self) {
        self.closed = true;
        guard::write_and_shut(self.fd, b"");
    }
}

/// Runs `work` on an OS thread while the calling coroutine yields: disk work and thread
/// joins must not block a `may` worker (as `intake::accept` does for large bodies).
fn off_coroutine<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = may::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| format!("starting a {name} thread: {e}"))?;
    rx.recv().unwrap_or_else(|_| Err(format!("the {name} thread failed")))
}

fn unavailable(e: &EnqueueError, metric: &'static str) -> Reply {
    metrics::request_rejected(metric);
    Reply {
        code: 503,
        reason: "Service Unavailable",
        // Alertmanager ignores Retry-After and uses its own backoff; other senders may not.
        headers: &["Retry-After: 30"],
        body: json!({ "error": e.to_string() }).to_string(),
        why: None,
    }
}

/// The 200 answers, on every accepted notification: written directly, byte for byte what
/// `json!(…).to_string()` gives (keys sorted), without building a `Value` map per request.
fn accepted_reply(accepted: &Enqueued) -> Reply {
    let body = match accepted {
        Enqueued::Queued { id, .. } => format!("{{\"id\":{id},\"status\":\"queued\"}}"),
        Enqueued::Duplicate => r#"{"status":"duplicate"}"#.to_string(),
        Enqueued::Empty => r#"{"status":"empty"}"#.to_string(),
    };
    Reply { code: 200, reason: "OK", headers: &[], body, why: None }
}

fn write_reply(rsp: &mut Response, r: Reply) {
    rsp.status_code(r.code, r.reason);
    if !r.headers.iter().any(|h| h.starts_with("Content-Type")) {
        rsp.header("Content-Type: application/json");
    }
    for h in r.headers {
        rsp.header(h);
    }
    let mut body = r.body.into_bytes();
    body.push(b'\n');
    rsp.body_vec(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_answers_are_the_json_they_replaced() {
        let cases = [
            (Enqueued::Queued { id: 42, superseded: 0 }, json!({"status": "queued", "id": 42u64})),
            (
                Enqueued::Queued { id: u64::MAX, superseded: 3 },
                json!({"status": "queued", "id": u64::MAX}),
            ),
            (Enqueued::Duplicate, json!({"status": "duplicate"})),
            (Enqueued::Empty, json!({"status": "empty"})),
        ];
        for (accepted, want) in cases {
            assert_eq!(accepted_reply(&accepted).body, want.to_string());
        }
    }
}
