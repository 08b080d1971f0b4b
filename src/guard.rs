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
//! - Count: past `max_connections`, a new connection gets `503` and is closed at once.

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
}

pub struct Guard {
    limits: Limits,
    epoch: Instant,
    conns: Mutex<HashMap<RawFd, Entry>>,
}

impl Guard {
    pub fn new(limits: Limits) -> Guard {
        Guard { limits, epoch: Instant::now(), conns: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RawFd, Entry>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection; `None` (after answering 503 and closing it) when over the
    /// limit.
    pub fn open(&self, fd: RawFd) -> Option<Arc<ConnState>> {
        let mut conns = self.lock();
        if conns.len() >= self.limits.max_connections {
            drop(conns);
            metrics::request_rejected("too_many_connections");
            answer_and_shut(fd, 503, "Service Unavailable", "too many connections");
            return None;
        }
        let timeout_ms = u64::try_from(self.limits.request_timeout.as_millis()).unwrap_or(u64::MAX);
        let state = Arc::new(ConnState {
            epoch: self.epoch,
            timeout_ms,
            deadline_ms: AtomicU64::new(0),
            in_call: AtomicBool::new(false),
            answered: AtomicU64::new(0),
        });
        state.deadline_ms.store(state.now_ms() + timeout_ms, Ordering::Relaxed);
        conns.insert(
            fd,
            Entry { state: Arc::clone(&state), baseline_bytes: 0, seen_answered: 0, killed: false },
        );
        Some(state)
    }

    /// Deregisters a connection. True when the reaper had closed it.
    pub fn close(&self, fd: RawFd) -> bool {
        self.lock().remove(&fd).is_some_and(|e| e.killed)
    }

    pub fn connections(&self) -> usize {
        self.lock().len()
    }

    /// One pass of the reaper.
    pub fn reap(&self) {
        let mut conns = self.lock();
        for (&fd, e) in conns.iter_mut() {
            if e.killed {
                continue;
            }
            let st = &e.state;
            if st.now_ms() >= st.deadline_ms.load(Ordering::Relaxed) {
                e.killed = true;
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

/// Writes a complete one-line JSON answer to the socket without blocking, then shuts it both
/// ways. Used where may_minihttp cannot be asked to answer: the connection's coroutine is
/// parked in a read, or never reached our service.
pub fn answer_and_shut(fd: RawFd, code: u16, reason: &str, message: &str) {
    let body = format!("{{\"error\":\"{message}\"}}\n");
    let raw = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    write_and_shut(fd, raw.as_bytes());
}

/// See [`answer_and_shut`]; `raw` is a whole HTTP response.
pub fn write_and_shut(fd: RawFd, raw: &[u8]) {
    if fd < 0 {
        return;
    }
    // SAFETY: callers hold the fd of a socket that stays open until its service is dropped,
    // which cannot happen concurrently (see the module doc). A short write only loses the
    // answer to a client that is misbehaving anyway; shutdown never invalidates the fd.
    unsafe {
        libc::send(fd, raw.as_ptr().cast(), raw.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
        libc::shutdown(fd, libc::SHUT_RDWR);
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
