//! Connection limits that `may_minihttp` does not have: how many connections and how long a
//! request may take to arrive. (Head size and unsent answers are bounded inside the connection
//! loop of our vendored copy, `vendor/may_minihttp/PATCHES.md`, through `HttpService` hooks.)
//!
//! may_minihttp creates one service object per connection, passes it the socket's fd, and drops
//! it before the socket closes. So the connection's [`crate::server::Conn`] registers its fd
//! here when created and deregisters it on drop, and a reaper thread enforces the limits from
//! outside the connection's coroutine: it writes a short answer to the fd and shuts the socket,
//! after which may_minihttp's own loop ends on its next read. All of that happens under the
//! registry lock, and deregistration takes the same lock, so the reaper never touches an fd
//! after its connection closed (and the number was reused). Per-request bookkeeping is atomic
//! stores into the connection's own [`ConnState`]; only opening, closing and the reaper take
//! the registry lock, and only the reaper asks the kernel for byte counts.
//!
//! - Deadline: a request must arrive within `request_timeout` of the connection opening or of
//!   the previous answer (slowloris), and its body within `request_timeout` of its head. Past
//!   it: `408` and close. An *idle* connection (no byte of a next request held by the loop nor
//!   waiting in the kernel) is closed without an answer instead: a request sent just as the
//!   deadline passes then meets a closed connection, which every client treats as a network
//!   error and retries, whereas a `408` for it would be taken as the answer to that request
//!   (Alertmanager never retries a 4xx, so the alert would be lost). A request that has begun
//!   arriving when the deadline passes (bytes held by the loop or unread in the kernel, which
//!   is also how a request looks while we are too busy to read it) gets one more
//!   `request_timeout` before its `408`.
//! - Count: past `max_connections`, a new connection gets `503` and a half-close, and lingers
//!   (uncounted) until its client has read the answer; past twice the limit, it is shut at
//!   once.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::metrics;

/// How often the reaper looks for connections past their deadline.
const REAP_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
    /// Enforced by the connection loop (`HttpService::max_head_bytes`), kept here with the
    /// other per-connection limits.
    pub max_header_bytes: u64,
    /// `--max-headers`, enforced by the connection loop (`HttpService::max_headers`).
    pub max_headers: usize,
    /// Answer bytes a client may leave unread before its connection stops handling requests.
    pub max_unsent_bytes: u64,
}

/// One connection's timing, shared by the connection (which updates it on every request with
/// plain atomic stores, never taking the registry lock) and the reaper.
pub struct ConnState {
    epoch: Instant,
    timeout_ms: u64,
    /// Milliseconds after `epoch` at which the current wait (for a head, or a body) ends.
    deadline_ms: AtomicU64,
    in_call: AtomicBool,
    /// The connection loop holds part of a next request (set before each wait for the client).
    partial: AtomicBool,
    /// The reaper gave a request that began arriving near the idle deadline more time.
    extended: AtomicBool,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request head arrived: its body now has `request_timeout` to follow.
    pub fn call_started(&self) {
        self.deadline_ms.store(self.now_ms() + self.timeout_ms, Ordering::Relaxed);
        self.extended.store(false, Ordering::Relaxed);
        self.in_call.store(true, Ordering::Relaxed);
    }

    /// The whole request is in: what follows (parsing, queueing, the spool's fsync) is our
    /// time, not the client's, so the reaper must not answer 408 for a notification that may
    /// already be queued. `call_finished` sets the next deadline.
    pub fn body_received(&self) {
        self.deadline_ms.store(u64::MAX, Ordering::Relaxed);
    }

    /// The answer is ready: the next request has `request_timeout` to arrive.
    pub fn call_finished(&self) {
        self.deadline_ms.store(self.now_ms() + self.timeout_ms, Ordering::Relaxed);
        self.extended.store(false, Ordering::Relaxed);
        self.in_call.store(false, Ordering::Relaxed);
    }

    /// The connection waits for the client holding `buffered` bytes of an incomplete request.
    pub fn waiting(&self, buffered: usize) {
        self.partial.store(buffered > 0, Ordering::Relaxed);
    }
}

struct Entry {
    state: Arc<ConnState>,
    /// Set when the reaper closed the connection: the service then knows not to answer again.
    killed: bool,
    /// False for a connection refused over the limit, kept only until its client has read the
    /// 503 (closing at once would reset the connection and lose the answer).
    counted: bool,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<RawFd, Entry>,
    /// Entries with `counted`: the connections the limit is about.
    active: usize,
}

pub struct Guard {
    limits: Limits,
    epoch: Instant,
    registry: Mutex<Registry>,
}

/// How long a refused connection may linger for its client to read the 503.
const REFUSED_LINGER: Duration = Duration::from_secs(2);

impl Guard {
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn new(limits: Limits) -> Guard {
        Guard { limits, epoch: Instant::now(), registry: Mutex::new(Registry::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection. Over the limit it answers 503 and half-closes the socket,
    /// keeping it registered (uncounted) for [`REFUSED_LINGER`] so the client reads the answer
    /// instead of a reset; `Admission::Refused` then tells the service to answer nothing. Past
    /// twice the limit (a flood), connections are shut at once.
    pub fn open(&self, fd: RawFd) -> Admission {
        let mut reg = self.lock();
        let over = reg.active >= self.limits.max_connections;
        if over && reg.conns.len() >= 2 * self.limits.max_connections {
            drop(reg);
            metrics::request_rejected("too_many_connections");
            answer_and_shut(fd, 503, "Service Unavailable", "too many connections");
            return Admission::Dropped;
        }
        let timeout = if over {
            REFUSED_LINGER.min(self.limits.request_timeout)
        } else {
            self.limits.request_timeout
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let state = Arc::new(ConnState {
            epoch: self.epoch,
            timeout_ms,
            deadline_ms: AtomicU64::new(0),
            in_call: AtomicBool::new(false),
            partial: AtomicBool::new(false),
            extended: AtomicBool::new(false),
        });
        state.deadline_ms.store(state.now_ms() + timeout_ms, Ordering::Relaxed);
        let entry = Entry { state: Arc::clone(&state), killed: false, counted: !over };
        reg.conns.insert(fd, entry);
        if over {
            drop(reg);
            metrics::request_rejected("too_many_connections");
            answer(fd, 503, "Service Unavailable", "too many connections", libc::SHUT_WR);
            return Admission::Refused(state);
        }
        reg.active += 1;
        Admission::Admitted(state)
    }

    /// Deregisters a connection. True when the reaper had closed it.
    pub fn close(&self, fd: RawFd) -> bool {
        let mut reg = self.lock();
        match reg.conns.remove(&fd) {
            Some(e) => {
                if e.counted {
                    reg.active -= 1;
                }
                e.killed
            }
            None => false,
        }
    }

    /// Connections counted against the limit.
    pub fn connections(&self) -> usize {
        self.lock().active
    }

    /// One pass of the reaper.
    pub fn reap(&self) {
        let mut reg = self.lock();
        for (&fd, e) in reg.conns.iter_mut() {
            if e.killed {
                continue;
            }
            let st = &e.state;
            if st.now_ms() >= st.deadline_ms.load(Ordering::Relaxed) {
                e.killed = true;
                if !e.counted {
                    // A refused connection whose client never closed: it has its 503.
                    write_and_shut(fd, b"");
                    continue;
                }
                let in_call = st.in_call.load(Ordering::Relaxed);
                let idle = !in_call && !st.partial.load(Ordering::Relaxed) && unread_bytes(fd) == 0;
                if idle {
                    // Nothing of a next request anywhere: close, do not answer (module doc).
                    write_and_shut(fd, b"");
                    continue;
                }
                if !in_call && !st.extended.swap(true, Ordering::Relaxed) {
                    // A request began arriving before the idle deadline (or waits unread
                    // while we are busy): it gets its own `request_timeout`, once.
                    e.killed = false;
                    st.deadline_ms.store(st.now_ms() + st.timeout_ms, Ordering::Relaxed);
                    continue;
                }
                metrics::request_rejected("timeout");
                crate::reject_log::rejected(peer_addr(fd), 408, "request not received in time");
                answer_and_shut(fd, 408, "Request Timeout", "request not received in time");
            }
        }
    }

    /// Runs the reaper on its own OS thread for the life of the process.
    pub fn spawn_reaper(guard: Arc<Guard>) -> std::io::Result<()> {
        std::thread::Builder::new().name("reaper".into()).spawn(move || loop {
            std::thread::sleep(REAP_INTERVAL);
            guard.reap();
        })?;
        Ok(())
    }
}

/// Bytes received on the socket that nobody has read yet (`FIONREAD`); errors count as none.
fn unread_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; the fd is open (see the module doc).
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// What [`Guard::open`] decided for a new connection.
pub enum Admission {
    Admitted(Arc<ConnState>),
    /// Answered 503 and half-closed; tracked until it goes.
    Refused(Arc<ConnState>),
    /// Answered 503 and closed at once (a flood); not tracked.
    Dropped,
}

/// Writes a complete one-line JSON answer to the socket without blocking, then shuts it both
/// ways. Used where may_minihttp cannot be asked to answer: the connection's coroutine is
/// parked in a read, or never reached our service.
pub fn answer_and_shut(fd: RawFd, code: u16, reason: &str, message: &str) {
    answer(fd, code, reason, message, libc::SHUT_RDWR);
}

/// [`answer_and_shut`] with a choice of shutdown: `SHUT_WR` sends the answer and a FIN but
/// keeps reading, so the client's request is consumed and closing later sends no reset.
fn answer(fd: RawFd, code: u16, reason: &str, message: &str, how: libc::c_int) {
    let body = serde_json::json!({ "error": message }).to_string();
    write_then_shutdown(fd, raw_response(code, reason, &[], &body).as_bytes(), how);
}

/// A whole `Connection: close` HTTP response carrying one line of JSON, for writing straight
/// to a socket.
pub fn raw_response(code: u16, reason: &str, headers: &[&str], json_line: &str) -> String {
    let mut raw = format!("HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n");
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{json_line}\n",
        json_line.len() + 1
    ));
    raw
}

/// See [`answer_and_shut`]; `raw` is a whole HTTP response.
pub fn write_and_shut(fd: RawFd, raw: &[u8]) {
    write_then_shutdown(fd, raw, libc::SHUT_RDWR);
}

fn write_then_shutdown(fd: RawFd, raw: &[u8], how: libc::c_int) {
    if fd < 0 {
        return;
    }
    // SAFETY: callers hold the fd of a socket that stays open until its service is dropped,
    // which cannot happen concurrently (see the module doc). A short write only loses the
    // answer to a client that is misbehaving anyway; shutdown never invalidates the fd.
    unsafe {
        if !raw.is_empty() {
            libc::send(fd, raw.as_ptr().cast(), raw.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
        }
        libc::shutdown(fd, how);
    }
}

/// The client's address, for log lines.
pub fn peer_addr(fd: RawFd) -> Option<std::net::SocketAddr> {
    if fd < 0 {
        return None;
    }
    use std::os::fd::FromRawFd;
    // SAFETY: the fd is an open socket (see the module doc); `ManuallyDrop` keeps this
    // borrowed view from closing it.
    let stream = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    stream.peer_addr().ok()
}

/// `--max-body-in-flight`: request bodies held at once, across all connections. A body
/// reserves its declared length before its first byte is read; past the budget the request is
/// answered 503 (Alertmanager retries) without reading it, so slow or parallel uploads cannot
/// hold more than this. One body is always admitted when none is held, so a budget below
/// `--max-body` cannot refuse a notification forever.
pub struct BodyBudget {
    max_bytes: u64,
    used_bytes: AtomicU64,
}

/// Bytes reserved for one body; given back on drop.
pub struct BodyPermit<'a> {
    budget: &'a BodyBudget,
    bytes: u64,
}

impl BodyBudget {
    pub fn new(max_bytes: u64) -> BodyBudget {
        BodyBudget { max_bytes, used_bytes: AtomicU64::new(0) }
    }

    pub fn take(&self, bytes: u64) -> Option<BodyPermit<'_>> {
        let mut used = self.used_bytes.load(Ordering::Relaxed);
        loop {
            if used > 0 && used.saturating_add(bytes) > self.max_bytes {
                return None;
            }
            match self.used_bytes.compare_exchange_weak(
                used,
                used.saturating_add(bytes),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(BodyPermit { budget: self, bytes }),
                Err(now) => used = now,
            }
        }
    }

    /// Bytes reserved right now.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for BodyPermit<'_> {
    fn drop(&mut self) {
        self.budget.used_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_budget_admits_up_to_its_size_and_one_body_always() {
        let b = BodyBudget::new(10);
        let big = b.take(50).expect("one body when none is held");
        assert!(b.take(1).is_none());
        drop(big);
        let p1 = b.take(6).expect("6 of 10");
        assert!(b.take(5).is_none());
        let p2 = b.take(4).expect("10 of 10");
        assert_eq!(b.used(), 10);
        drop((p1, p2));
        assert_eq!(b.used(), 0);
    }
}
