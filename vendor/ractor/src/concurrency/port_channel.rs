// Tranche patch (see vendor/ractor/TRANCHE-PATCH.md).
//
//! The unbounded channel behind an actor's supervision and message ports.
//!
//! Upstream ractor uses `tokio::sync::mpsc::unbounded_channel` for both ports. tokio allocates
//! each channel's first 32-slot block up front and pads its shared state to cache lines, so an
//! actor that never receives a supervision event still pays ~3 KB for that port, and ~2 KB for its
//! message port. With a million mostly idle actors per node that is most of their memory.
//!
//! This channel allocates nothing until a value is sent (a `VecDeque` behind a mutex, plus the
//! receiver's waker): ~100 bytes per idle port. It keeps the semantics ractor relies on: FIFO
//! order; `recv` is cancel-safe and spends tokio's cooperative budget; it returns `None` once
//! every sender is gone and the queue is empty; `close` refuses further sends; and dropping the
//! receiver drops what is queued (so queued messages holding actor references cannot form a
//! cycle).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

pub use tokio::sync::mpsc::error::{SendError, TryRecvError};

struct State<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    senders: usize,
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a single VecDeque operation), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The sending half of a port channel
pub struct PortSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half of a port channel
pub struct PortReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// A new port channel. Allocates only its shared header; the queue grows on first send.
pub fn port_channel<T>() -> (PortSender<T>, PortReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            senders: 1,
            closed: false,
        }),
    });
    (
        PortSender {
            shared: shared.clone(),
        },
        PortReceiver { shared },
    )
}

impl<T> std::fmt::Debug for PortSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortSender").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for PortReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortReceiver").finish_non_exhaustive()
    }
}

impl<T> PortSender<T> {
    /// Queue a value; fails (returning it) when the receiver is closed or dropped.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(SendError(value));
            }
            state.queue.push_back(value);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver is closed or dropped
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl<T> Clone for PortSender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for PortSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> PortReceiver<T> {
    /// Poll for the next value: `Ready(None)` once the channel is closed (or every sender is
    /// gone) and empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Take part in tokio's cooperative budget, as tokio's own channels do: an actor whose
        // queue never empties still yields its worker thread now and then.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let mut state = self.shared.lock();
        if let Some(value) = state.queue.pop_front() {
            coop.made_progress();
            return Poll::Ready(Some(value));
        }
        if state.closed || state.senders == 0 {
            coop.made_progress();
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Receive the next value. Cancel-safe: a value is only taken when the future completes.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Take the next value without waiting
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        match state.queue.pop_front() {
            Some(value) => Ok(value),
            None if state.closed || state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Refuse further sends; values already queued can still be received.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
    }
}

impl<T> Drop for PortReceiver<T> {
    fn drop(&mut self) {
        // Drop queued values outside the lock: they may hold senders of this very channel.
        let queued = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.queue)
        };
        drop(queued);
    }
}

// Tests: actors/tests/ractor_ports.rs in Tranche's workspace (run by its `cargo test --workspace`).
