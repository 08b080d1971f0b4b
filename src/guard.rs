//! Connection limits that `may_minihttp` does not have: how many connections, how long a
//! request may take to arrive, how many header bytes it may buffer.
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
//!   the previous answer (slowloris, idle keep-alive), and its body within `request_timeout` of
//!   its head. Past it: `408` and close.
//! - Header bytes: may_minihttp buffers a request head without limit. The kernel counts the
//!   bytes it received on the socket (`TCP_INFO.tcpi_bytes_received`); outside a request, more
//!   than `max_header_bytes` since the previous answer means a head that never ends: `431`
//!   and close.
//! - Count: past `max_connections`, a new connection gets `503` and a half-close, and lingers
//!   (uncounted) until its client has read the answer; past twice the limit, it is shut at
//!   once.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::metrics;

/// How often the reaper looks. The header-byte bound is enforced to within what a client
/// can send in this time.
const REAP_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub max_header_bytes: u64,
}

/// One connection's timing, shared by the connection (which updates it on every request with
/// plain atomic stores, never taking the registry lock) and the reaper.
pub struct ConnState {
    epoch: Instant,
    timeout_ms: u64,
    /// Milliseconds after `epoch` at which the current wait (for a head, or a body) ends.
    deadline_ms: AtomicU64,
    in_call: AtomicBool,
    /// Requests answered so far: when it changes, the reaper takes a new byte-count baseline.
    answered: AtomicU64,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request head arrived: its body now has `request_timeout` to follow.
    pub fn call_started(&self) {
        self.deadline_ms.store(self.now_ms() + self.timeout_ms, Ordering::Relaxed);
        self.in_call.store(true, Ordering::Relaxed);
    }

    /// The answer is ready: the next request has `request_timeout` to arrive.
    pub fn call_finished(&self) {
        self.deadline_ms.store(self.now_ms() + self.timeout_ms, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.in_call.store(false, Ordering::Relaxed);
    }
}

struct Entry {
    state: Arc<ConnState>,
    /// Bytes the kernel had received on this socket when the reaper last saw a new answer.
    baseline_bytes: u64,
    seen_answered: u64,
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
            answered: AtomicU64::new(0),
        });
        state.deadline_ms.store(state.now_ms() + timeout_ms, Ordering::Relaxed);
        let entry = Entry {
            state: Arc::clone(&state),
            baseline_bytes: 0,
            seen_answered: 0,
            killed: false,
            counted: !over,
        };
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
                metrics::request_rejected("timeout");
                answer_and_shut(fd, 408, "Request Timeout", "request not received in time");
                continue;
            }
            if st.in_call.load(Ordering::Relaxed) {
                continue;
            }
            let answered = st.answered.load(Ordering::Relaxed);
            let Some(bytes) = bytes_received(fd) else { continue };
            if answered != e.seen_answered {
                // Taken a little after the answer, so bytes of a pipelined request that
                // arrived meanwhile are not counted: errs on the side of the client.
                e.seen_answered = answered;
                e.baseline_bytes = bytes;
                continue;
            }
            if bytes.saturating_sub(e.baseline_bytes) > self.limits.max_header_bytes {
                e.killed = true;
                metrics::request_rejected("header_too_large");
                answer_and_shut(
                    fd,
                    431,
                    "Request Header Fields Too Large",
                    "request head too large",
                );
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

/// Total bytes the kernel received on a TCP socket (Linux ≥ 4.1).
fn bytes_received(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_bytes_received)
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

/// True when the peer is still connected and has sent nothing we have not read: how a
/// connection looks after may_minihttp gave up on an unparsable request head.
pub fn peer_waiting(fd: RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local; the fd is open (see module doc).
    let n = unsafe {
        libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    if n != -1 {
        // 0: the peer closed. More bytes: the rest of a request may_minihttp gave up on.
        return n > 0;
    }
    let err = std::io::Error::last_os_error().raw_os_error();
    err == Some(libc::EAGAIN) || err == Some(libc::EWOULDBLOCK)
}
