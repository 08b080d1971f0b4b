//! http server implementation on top of `MAY`

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::ToSocketAddrs;

use crate::request::{self, Request};
use crate::response::{self, Response};

#[cfg(unix)]
use bytes::Buf;
use bytes::{BufMut, BytesMut};
#[cfg(unix)]
use may::io::WaitIo;
use may::net::{TcpListener, TcpStream};
use may::{coroutine, go};

macro_rules! t_c {
    ($e: expr) => {
        match $e {
            Ok(val) => val,
            Err(err) => {
                error!("call = {:?}\nerr = {:?}", stringify!($e), err);
                continue;
            }
        }
    };
}

/// the http service trait
/// user code should supply a type that impl the `call` method for the http server
///
pub trait HttpService {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()>;

    // weixin-robot: the hooks below have defaults that keep upstream behaviour (no limits,
    // close silently on a bad head), so the trait stays source compatible.

    /// weixin-robot: bytes of an incomplete request head the connection may buffer; past it
    /// the head is refused with [`BadHead::TooLarge`]. Counts only unparsed head bytes, never
    /// body bytes, whenever they arrive.
    fn max_head_bytes(&self) -> usize {
        usize::MAX
    }

    /// weixin-robot: answer bytes the client has not taken yet past which the connection
    /// stops reading and handling requests until the client reads (a pipeliner that never
    /// reads cannot grow the answer buffer without bound).
    fn max_unsent_bytes(&self) -> usize {
        usize::MAX
    }

    /// weixin-robot: headers a request may carry (at most [`request::HEADER_CAPACITY`]); more
    /// is refused with [`BadHead::TooManyHeaders`].
    fn max_headers(&self) -> usize {
        request::MAX_HEADERS
    }

    /// weixin-robot: the request head is malformed or too large. Fill `rsp` and return true
    /// to send an answer; the connection is closed after it either way.
    fn bad_head(&mut self, _why: BadHead, _rsp: &mut Response) -> bool {
        false
    }

    /// weixin-robot: the connection is about to wait for the client, holding `buffered` bytes
    /// of a request that is not complete yet (0: idle between requests).
    fn waiting(&mut self, _buffered: usize) {}
}

/// weixin-robot: why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHead {
    Malformed,
    TooLarge,
    TooManyHeaders,
}

pub trait HttpServiceFactory: Send + Sized + 'static {
    type Service: HttpService + Send;
    // create a new http service for each connection
    fn new_service(&self, id: usize) -> Self::Service;

    /// Spawns the http service, binding to the given address
    /// return a coroutine that you can cancel it when need to stop the service
    fn start<L: ToSocketAddrs>(self, addr: L) -> io::Result<coroutine::JoinHandle<()>> {
        let listener = TcpListener::bind(addr)?;
        self.start_on(listener)
    }

    /// weixin-robot: serves on a listener the caller bound (upstream's `bind` sets
    /// SO_REUSEPORT, so a second server on the same port would start and share the traffic).
    fn start_on(self, listener: TcpListener) -> io::Result<coroutine::JoinHandle<()>> {
        go!(
            coroutine::Builder::new().name("TcpServerFac".to_owned()),
            move || {
                #[cfg(unix)]
                use std::os::fd::AsRawFd;
                #[cfg(windows)]
                use std::os::windows::io::AsRawSocket;
                for stream in listener.incoming() {
                    let mut stream = t_c!(stream);
                    #[cfg(unix)]
                    let id = stream.as_raw_fd() as usize;
                    #[cfg(windows)]
                    let id = stream.as_raw_socket() as usize;
                    // t_c!(stream.set_nodelay(true));
                    let service = self.new_service(id);
                    let builder = may::coroutine::Builder::new().id(id);
                    go!(
                        builder,
                        move || if let Err(e) = each_connection_loop(&mut stream, service) {
                            error!("service err = {:?}", e);
                            stream.shutdown(std::net::Shutdown::Both).ok();
                        }
                    )
                    .unwrap();
                }
            }
        )
    }
}

#[inline]
#[cold]
pub(crate) fn err<T>(e: io::Error) -> io::Result<T> {
    Err(e)
}

#[cfg(unix)]
#[inline]
fn nonblock_read(stream: &mut impl Read, req_buf: &mut BytesMut) -> io::Result<bool> {
    reserve_buf(req_buf);
    let read_buf: &mut [u8] = unsafe { std::mem::transmute(req_buf.chunk_mut()) };
    let len = read_buf.len();

    let mut read_cnt = 0;
    while read_cnt < len {
        match stream.read(unsafe { read_buf.get_unchecked_mut(read_cnt..) }) {
            Ok(0) => return err(io::Error::new(io::ErrorKind::BrokenPipe, "read closed")),
            Ok(n) => read_cnt += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return err(e),
        }
    }

    unsafe { req_buf.advance_mut(read_cnt) };
    Ok(read_cnt < len)
}

#[cfg(unix)]
#[inline]
fn nonblock_write(stream: &mut impl Write, rsp_buf: &mut BytesMut) -> io::Result<usize> {
    let write_buf = rsp_buf.chunk();
    let len = write_buf.len();
    let mut write_cnt = 0;
    while write_cnt < len {
        match stream.write(unsafe { write_buf.get_unchecked(write_cnt..) }) {
            Ok(0) => return err(io::Error::new(io::ErrorKind::BrokenPipe, "write closed")),
            Ok(n) => write_cnt += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return err(e),
        }
    }
    rsp_buf.advance(write_cnt);
    Ok(write_cnt)
}

const BUF_LEN: usize = 4096 * 8;
/// weixin-robot: first read buffer of a connection (see `each_connection_loop`).
#[cfg(unix)]
const IDLE_BUF_LEN: usize = 4096;
#[inline]
pub(crate) fn reserve_buf(buf: &mut BytesMut) {
    let rem = buf.capacity() - buf.len();
    if rem < 1024 {
        buf.reserve(BUF_LEN - rem);
    }
}

/// this is the generic type http server
/// with a type parameter that impl `HttpService` trait
///
pub struct HttpServer<T>(pub T);

#[cfg(unix)]
fn each_connection_loop<T: HttpService>(stream: &mut TcpStream, mut service: T) -> io::Result<()> {
    // weixin-robot: start small and grow on use (`reserve_buf`): an idle or slow connection
    // then holds one 4 KiB read buffer instead of 68 KiB of buffers, whose first pages malloc
    // touches anyway. The answer buffer is allocated with the first answer; `body_buf` only
    // serves `Response::body_mut`, which weixin-robot does not use.
    let mut req_buf = BytesMut::with_capacity(IDLE_BUF_LEN);
    let mut rsp_buf = BytesMut::new();
    let mut body_buf = BytesMut::new();
    // weixin-robot: limits from the service, read once per connection.
    let max_head = service.max_head_bytes();
    let max_unsent = service.max_unsent_bytes();

    loop {
        // weixin-robot: while the client leaves `max_unsent` answer bytes unread, read and
        // handle nothing more; only write, and wait for the socket to take bytes.
        let throttled = rsp_buf.len() >= max_unsent;
        let mut read_blocked = false;
        let mut closing = false;
        // weixin-robot: nor read while more than a head's worth of requests wait in
        // `req_buf` (left there by the bound above): handle those first, so the buffer stays
        // within `max_head` plus one read.
        if !throttled && req_buf.len() <= max_head {
            read_blocked = nonblock_read(stream.inner_mut(), &mut req_buf)?;
        }

        // prepare the requests, we should make sure the request is fully read
        // weixin-robot: out of line, see `handle_buffered`; not even entered with nothing
        // buffered (an empty buffer holds no request), so a connection waiting for its first
        // byte never reaches that frame's depth.
        if !throttled && !req_buf.is_empty() {
            let handled = handle_buffered(
                stream,
                &mut service,
                [&mut req_buf, &mut rsp_buf, &mut body_buf],
                max_head,
                max_unsent,
            )?;
            match handled {
                Handled::Closed => return Ok(()),
                Handled::Closing => closing = true,
                Handled::Open => {}
            }
        }

        if closing {
            // weixin-robot: bytes after this request are never parsed.
            return close_after_flush(stream, &mut rsp_buf, &mut req_buf);
        }

        // write out the responses
        nonblock_write(stream.inner_mut(), &mut rsp_buf)?;

        if rsp_buf.len() >= max_unsent {
            // weixin-robot: the client is not reading; wake when the socket takes bytes.
            stream.wait_io();
        } else if throttled {
            // weixin-robot: drained below the bound: handle what is buffered, then read.
        } else if read_blocked {
            service.waiting(req_buf.len());
            stream.wait_io();
        }
    }
}

/// weixin-robot: how handling the buffered requests ended.
#[cfg(unix)]
enum Handled {
    /// Keep reading.
    Open,
    /// Answered a request that ends the connection: flush and close.
    Closing,
    /// A bad head was answered and the connection closed.
    Closed,
}

/// weixin-robot: decodes and answers the requests buffered in `req_buf` (`[req_buf, rsp_buf,
/// body_buf]`), until one is incomplete or `max_unsent` answer bytes wait. Out of line, so its
/// frame (the header array, the request, the service's call) is on the coroutine's stack only
/// while requests are handled: the connection loop's own frame is what a waiting connection
/// keeps, and every page of a frame is touched (probed) on entry. Inlined, the loop's frame
/// was 11 KiB and an idle connection held 20 KiB of stack.
#[cfg(unix)]
#[inline(never)]
fn handle_buffered<T: HttpService>(
    stream: &mut TcpStream,
    service: &mut T,
    [req_buf, rsp_buf, body_buf]: [&mut BytesMut; 3],
    max_head: usize,
    max_unsent: usize,
) -> io::Result<Handled> {
    while rsp_buf.len() < max_unsent {
            let mut headers = [MaybeUninit::uninit(); request::HEADER_CAPACITY];
            let allowed = service.max_headers().clamp(1, request::HEADER_CAPACITY);
            // weixin-robot: an incomplete head stays whole in `req_buf`; a refused one ends
            // the loop (after the borrow of `req_buf` by `decode`).
            let buffered = req_buf.len();
            let refused = match request::decode(&mut headers[..allowed], req_buf, stream) {
                Ok(Some(req)) => Ok(req),
                Ok(None) if buffered > max_head => Err(BadHead::TooLarge),
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(BadHead::Malformed),
                Err(e) if e.kind() == io::ErrorKind::OutOfMemory => Err(BadHead::TooManyHeaders),
                Err(e) => return Err(e),
            };
            let req = match refused {
                Ok(req) => req,
                Err(why) => {
                    bad_head(service, why, body_buf, rsp_buf);
                    return close_after_flush(stream, rsp_buf, req_buf).map(|()| Handled::Closed);
                }
            };
            // weixin-robot: HEAD gets the headers of the GET answer without its body; an
            // HTTP/1.0 request or `Connection: close` ends the connection after the answer.
            let head_only = req.method() == "HEAD";
            let close = req.version() == 0 || request::wants_close(&req);
            reserve_buf(rsp_buf);
            let mut rsp = Response::new(body_buf);
            rsp.head_only = head_only;
            let closing = match service.call(req, &mut rsp) {
                Ok(()) => {
                    let closing = close || rsp.closing;
                    response::encode(rsp, rsp_buf, closing);
                    closing
                }
                Err(e) => {
                    // weixin-robot: through `log` instead of an untimestamped stderr line.
                    error!("service err = {:?}", e);
                    response::encode_error(e, rsp_buf);
                    false
                }
            };
            if closing {
                return Ok(Handled::Closing);
            }
            // here need to use no_delay tcp option
            // nonblock_write(stream.inner_mut(), &mut rsp_buf)?;
        }
    Ok(Handled::Open)
}

/// weixin-robot: asks the service for an answer to a bad head and queues it.
#[cfg(unix)]
fn bad_head<T: HttpService>(
    service: &mut T,
    why: BadHead,
    body_buf: &mut BytesMut,
    rsp_buf: &mut BytesMut,
) {
    let mut rsp = Response::new(body_buf);
    if service.bad_head(why, &mut rsp) {
        response::encode(rsp, rsp_buf, true);
    }
}

/// weixin-robot: bytes read and thrown away after the last answer, so that closing does not
/// reset the connection (and lose the answer) while the client is still sending.
#[cfg(unix)]
const LINGER_BYTES: usize = 256 * 1024;

/// weixin-robot: writes every queued answer, half-closes, and reads what the client still
/// sends (up to [`LINGER_BYTES`]) until it closes. Waits are bounded by the caller's
/// deadlines (weixin-robot's reaper shuts a socket that overstays).
#[cfg(unix)]
fn close_after_flush(
    stream: &mut TcpStream,
    rsp_buf: &mut BytesMut,
    req_buf: &mut BytesMut,
) -> io::Result<()> {
    while !rsp_buf.is_empty() {
        nonblock_write(stream.inner_mut(), rsp_buf)?;
        if !rsp_buf.is_empty() {
            stream.wait_io();
        }
    }
    stream.shutdown(std::net::Shutdown::Write).ok();
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        req_buf.clear();
        match nonblock_read(stream.inner_mut(), req_buf) {
            Ok(blocked) => {
                discarded += req_buf.len();
                if blocked {
                    stream.wait_io();
                }
            }
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn each_connection_loop<T: HttpService>(stream: &mut TcpStream, mut service: T) -> io::Result<()> {
    let mut req_buf = BytesMut::with_capacity(BUF_LEN);
    let mut rsp_buf = BytesMut::with_capacity(BUF_LEN);
    let mut body_buf = BytesMut::with_capacity(BUF_LEN);
    loop {
        // read the socket for requests
        reserve_buf(&mut req_buf);
        let read_buf: &mut [u8] = unsafe { std::mem::transmute(&mut *req_buf.chunk_mut()) };
        let read_cnt = stream.read(read_buf)?;
        if read_cnt == 0 {
            //connection was closed
            return err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"));
        }
        unsafe { req_buf.advance_mut(read_cnt) };

        // prepare the requests
        if read_cnt > 0 {
            loop {
                let mut headers = [MaybeUninit::uninit(); request::MAX_HEADERS];
                let req = match request::decode(&mut headers[..], &mut req_buf, stream)? {
                    Some(req) => req,
                    None => break,
                };
                let mut rsp = Response::new(&mut body_buf);
                match service.call(req, &mut rsp) {
                    Ok(()) => response::encode(rsp, &mut rsp_buf, false),
                    Err(e) => {
                        eprintln!("service err = {:?}", e);
                        response::encode_error(e, &mut rsp_buf);
                    }
                }
            }
        }

        // send the result back to client
        stream.write_all(&rsp_buf)?;
    }
}

impl<T: HttpService + Clone + Send + Sync + 'static> HttpServer<T> {
    /// Spawns the http service, binding to the given address
    /// return a coroutine that you can cancel it when need to stop the service
    pub fn start<L: ToSocketAddrs>(self, addr: L) -> io::Result<coroutine::JoinHandle<()>> {
        let listener = TcpListener::bind(addr)?;
        let service = self.0;
        go!(
            coroutine::Builder::new().name("TcpServer".to_owned()),
            move || {
                for stream in listener.incoming() {
                    let mut stream = t_c!(stream);
                    // t_c!(stream.set_nodelay(true));
                    let service = service.clone();
                    go!(
                        move || if let Err(e) = each_connection_loop(&mut stream, service) {
                            error!("service err = {:?}", e);
                            stream.shutdown(std::net::Shutdown::Both).ok();
                        }
                    );
                }
            }
        )
    }
}
