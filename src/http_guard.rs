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
}

impl<I> GuardedIo<I> {
    fn start_waiting(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.tail = [0; 3];
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

impl<I: AsyncRead + Unpin> AsyncRead for GuardedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                this.saw(&new);
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
