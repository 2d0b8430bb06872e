//! The HTTP server's connection guard: a bounded number of connections, none of which can hold
//! a slot without sending a request.
//!
//! [`GuardedAcceptor`] wraps the TCP acceptor. Each connection's stream is a [`GuardedIo`] that
//! watches the bytes it reads for the end of a request head (`\r\n\r\n`):
//!
//! * **Header timeout.** From the moment a connection starts waiting for a request — when it is
//!   accepted, and again after each response — the whole request head must arrive within
//!   `header_timeout`, however slowly its bytes trickle in (slowloris). Otherwise the
//!   connection is closed. This also closes idle keep-alive connections.
//! * **Connection limit.** At most `max_connections` are open. When a new one arrives at the
//!   limit, the connection that has been waiting longest for a request head is closed to make
//!   room — an attacker's half-sent or idle connections go first, requests in progress are
//!   never cut — so `/healthz` and `/readyz` keep answering under a flood. If every connection
//!   is busy with a request, the newcomer is refused.
//!
//! * **Malformed heads** get the API's JSON error body, not the HTTP library's bare status: a
//!   request line over [`MAX_REQUEST_LINE`] bytes is a 414, a head over [`MAX_HEAD`] a 431, and
//!   a request target with bytes a URI may not hold (controls, spaces, non-ASCII) a 400.
//!
//! Requests whose head has arrived are bounded by the server's idle timeout (no byte in either
//! direction for that long closes the connection) and by the body limit of each operation.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Limits of the HTTP server's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Longest request line (method, target, version) accepted.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 32 * 1024;

/// A complete HTTP response with the API's JSON error body, closing the connection.
fn error_response(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Where the reader is in a request head.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    /// Bytes of the head so far.
    len: usize,
    /// Still in the request line.
    in_line: bool,
    /// Spaces seen in the request line (1: inside the target, 2: in the version).
    spaces: u8,
    /// Bytes of the version seen (it must start `HTTP/`).
    version: usize,
}

/// `u64::MAX` in `waiting_since`: the connection is inside a request.
const BUSY: u64 = u64::MAX;

struct Entry {
    /// Milliseconds after the registry's base since the connection waits for a request head.
    waiting_since: AtomicU64,
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Entry {
    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }
}

/// The open connections.
struct Registry {
    base: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Entry>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
}

/// Accepts connections from `inner` within [`ConnectionLimits`].
pub struct GuardedAcceptor<A> {
    inner: A,
    limits: ConnectionLimits,
    registry: Arc<Registry>,
}

impl<A> GuardedAcceptor<A> {
    pub fn new(inner: A, limits: ConnectionLimits) -> Self {
        Self {
            inner,
            limits,
            registry: Arc::new(Registry {
                base: Instant::now(),
                next_id: AtomicU64::new(0),
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Makes room for one more connection; `false` when every open one is inside a request.
    fn make_room(&self) -> bool {
        let open = self.registry.open.lock().unwrap_or_else(|e| e.into_inner());
        let live = open
            .values()
            .filter(|e| !e.evicted.load(Ordering::SeqCst))
            .count();
        if live < self.limits.max_connections {
            return true;
        }
        let oldest = open
            .values()
            .filter(|e| !e.evicted.load(Ordering::SeqCst))
            .filter(|e| e.waiting_since.load(Ordering::SeqCst) != BUSY)
            .min_by_key(|e| e.waiting_since.load(Ordering::SeqCst));
        match oldest {
            Some(entry) => {
                entry.evict();
                true
            }
            None => false,
        }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (io, local, remote, scheme) = self.inner.accept().await?;
            if !self.make_room() {
                tracing::warn!(remote = %remote, max = self.limits.max_connections, "connection refused: every connection is busy");
                drop(io);
                continue;
            }
            let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
            let entry = Arc::new(Entry {
                waiting_since: AtomicU64::new(self.registry.now_ms()),
                evicted: AtomicBool::new(false),
                waker: Mutex::new(None),
            });
            self.registry
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, entry.clone());
            let io = GuardedIo {
                inner: io,
                id,
                entry,
                registry: self.registry.clone(),
                header_timeout: self.limits.header_timeout,
                deadline: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
                waiting: true,
                tail: [0; 3],
                head: Head {
                    in_line: true,
                    ..Head::default()
                },
                reject: None,
            };
            return Ok((io, local, remote, scheme));
        }
    }
}

/// A connection's stream under the guard.
pub struct GuardedIo<I> {
    inner: I,
    id: u64,
    entry: Arc<Entry>,
    registry: Arc<Registry>,
    header_timeout: Duration,
    /// When the awaited request head must have arrived.
    deadline: Pin<Box<Sleep>>,
    /// Waiting for a request head (not inside a request).
    waiting: bool,
    /// The last three bytes read, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    /// The head being read.
    head: Head,
    /// An error response still to write before closing (a malformed head).
    reject: Option<(Vec<u8>, usize)>,
}

impl<I> GuardedIo<I> {
    fn start_waiting(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.tail = [0; 3];
            self.head = Head {
                in_line: true,
                ..Head::default()
            };
            self.entry
                .waiting_since
                .store(self.registry.now_ms(), Ordering::SeqCst);
            let at = Instant::now() + self.header_timeout;
            self.deadline.as_mut().reset(at);
        }
    }

    /// Scans newly read bytes for the end of the request head.
    fn saw(&mut self, bytes: &[u8]) {
        if !self.waiting || bytes.is_empty() {
            return;
        }
        let mut window = [0u8; 4];
        window[..3].copy_from_slice(&self.tail);
        let mut found = false;
        for &b in bytes {
            self.head.len += 1;
            if self.head.in_line {
                match b {
                    b'\r' | b'\n' => {
                        self.head.in_line = false;
                        if self.head.spaces != 2 {
                            self.refuse_request_line();
                            return;
                        }
                    }
                    // A third space, or a version that is not `HTTP/…`: the target held a space.
                    // Refused as soon as seen — the HTTP library may parse a partial line.
                    b' ' if self.head.spaces == 2 => {
                        self.refuse_request_line();
                        return;
                    }
                    b' ' => self.head.spaces += 1,
                    _ if self.head.spaces == 2 => {
                        if self.head.version < 5 && b != b"HTTP/"[self.head.version] {
                            self.refuse_request_line();
                            return;
                        }
                        self.head.version += 1;
                    }
                    _ if self.head.spaces == 1 && !(0x21..=0x7e).contains(&b) => {
                        self.refuse(
                            "400 Bad Request",
                            "bad_request",
                            "the request path holds bytes a URI may not contain; percent-encode them",
                        );
                        return;
                    }
                    _ => {}
                }
                if self.head.in_line && self.head.len > MAX_REQUEST_LINE {
                    self.refuse(
                        "414 URI Too Long",
                        "uri_too_long",
                        &format!("the request line is longer than {MAX_REQUEST_LINE} bytes"),
                    );
                    return;
                }
            }
            if self.head.len > MAX_HEAD {
                self.refuse(
                    "431 Request Header Fields Too Large",
                    "headers_too_large",
                    &format!("the request head is larger than {MAX_HEAD} bytes"),
                );
                return;
            }
            window = [window[1], window[2], window[3], b];
            if &window == b"\r\n\r\n" {
                found = true;
                break;
            }
        }
        if found {
            self.waiting = false;
            self.entry.waiting_since.store(BUSY, Ordering::SeqCst);
        } else {
            self.tail = [window[1], window[2], window[3]];
        }
    }

    fn refuse_request_line(&mut self) {
        self.refuse(
            "400 Bad Request",
            "bad_request",
            "the request line must be `METHOD path HTTP/1.1`; percent-encode spaces in the path",
        );
    }

    /// Answers the malformed head with a JSON error, then closes.
    fn refuse(&mut self, status: &str, code: &str, message: &str) {
        if self.reject.is_none() {
            self.reject = Some((error_response(status, code, message), 0));
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        *self.entry.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if self.entry.evicted.load(Ordering::SeqCst) {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a new connection",
            ));
        }
        if self.waiting && self.deadline.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head within the header timeout",
            ));
        }
        None
    }
}

impl<I> Drop for GuardedIo<I> {
    fn drop(&mut self) {
        self.registry
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let this = &mut *self;
        if let Some((response, written)) = &mut this.reject {
            // Write the error answer ourselves, then end the connection.
            while *written < response.len() {
                match Pin::new(&mut this.inner).poll_write(cx, &response[*written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
            let _ = Pin::new(&mut this.inner).poll_flush(cx);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed request head (answered)",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                this.saw(&new);
                if this.reject.is_some() {
                    // Nothing of a refused head goes to the HTTP library.
                    buf.set_filled(before);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for GuardedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.entry.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a new connection",
            )));
        }
        // A response is on its way: the next request head is awaited from now on.
        self.start_waiting();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft limit of open files to the hard limit and returns it (connections, probes
/// and database sessions all use file descriptors).
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// The default connection limit: half the open-file limit (the other half is for probes,
/// database sessions and the engine), at most 10,000.
pub fn default_max_connections(open_files: u64) -> usize {
    (open_files / 2).clamp(64, 10_000) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_leaves_room_for_everything_else() {
        assert_eq!(default_max_connections(1024), 512);
        assert_eq!(default_max_connections(1_048_576), 10_000);
        assert_eq!(default_max_connections(10), 64);
    }
}
