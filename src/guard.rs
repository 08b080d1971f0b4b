//! Connection limits that `may_minihttp` does not have: how many connections, how long a
//! request may take to arrive, how many header bytes it may buffer.
//!
//! may_minihttp creates one service object per connection, passes it the socket's fd, and drops
//! it before the socket closes. So the connection's [`crate::server::Conn`] registers its fd
//! here when created and deregisters it on drop, and a reaper thread enforces the limits from
//! outside the connection's coroutine: it writes a short answer to the fd and shuts the socket,
//! after which may_minihttp's own loop ends on its next read. All of that happens under the
//! registry lock, and deregistration takes the same lock, so the reaper never touches an fd
//! after its connection closed (and the number was reused).
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
use std::sync::{Mutex, MutexGuard};
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

struct Entry {
    deadline: Instant,
    /// Bytes the kernel had received on this socket when the last answer was given.
    baseline_bytes: u64,
    in_call: bool,
    /// Set when the reaper closed the connection: the service then knows not to answer again.
    killed: bool,
}

pub struct Guard {
    limits: Limits,
    conns: Mutex<HashMap<RawFd, Entry>>,
}

impl Guard {
    pub fn new(limits: Limits) -> Guard {
        Guard { limits, conns: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RawFd, Entry>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection; false (after answering 503 and closing it) when over the limit.
    pub fn open(&self, fd: RawFd) -> bool {
        let mut conns = self.lock();
        if conns.len() >= self.limits.max_connections {
            drop(conns);
            metrics::request_rejected("too_many_connections");
            answer_and_shut(fd, 503, "Service Unavailable", "too many connections");
            return false;
        }
        conns.insert(
            fd,
            Entry {
                deadline: Instant::now() + self.limits.request_timeout,
                baseline_bytes: 0,
                in_call: false,
                killed: false,
            },
        );
        true
    }

    /// A request head arrived: its body now has `request_timeout` to follow.
    pub fn call_started(&self, fd: RawFd) {
        if let Some(e) = self.lock().get_mut(&fd) {
            e.in_call = true;
            e.deadline = Instant::now() + self.limits.request_timeout;
        }
    }

    /// The answer is ready: the next request has `request_timeout` to arrive.
    pub fn call_finished(&self, fd: RawFd) {
        let bytes = bytes_received(fd);
        if let Some(e) = self.lock().get_mut(&fd) {
            e.in_call = false;
            e.deadline = Instant::now() + self.limits.request_timeout;
            e.baseline_bytes = bytes.unwrap_or(e.baseline_bytes);
        }
    }

    /// Deregisters a connection. True when the reaper had closed it.
    pub fn close(&self, fd: RawFd) -> bool {
        self.lock().remove(&fd).is_some_and(|e| e.killed)
    }

    pub fn connections(&self) -> usize {
        self.lock().len()
    }

    /// One pass of the reaper.
    pub fn reap(&self, now: Instant) {
        let mut conns = self.lock();
        for (&fd, e) in conns.iter_mut() {
            if e.killed {
                continue;
            }
            if now >= e.deadline {
                e.killed = true;
                metrics::request_rejected("timeout");
                answer_and_shut(fd, 408, "Request Timeout", "request not received in time");
                continue;
            }
            if e.in_call {
                continue;
            }
            let pending = bytes_received(fd).map_or(0, |b| b.saturating_sub(e.baseline_bytes));
            if pending > self.limits.max_header_bytes {
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
    pub fn spawn_reaper(guard: std::sync::Arc<Guard>) -> std::io::Result<()> {
        std::thread::Builder::new().name("reaper".into()).spawn(move || loop {
            std::thread::sleep(REAP_INTERVAL);
            guard.reap(Instant::now());
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
