//! A stream's bounded queue of encoded events: several senders (the hub's live fan-out, a
//! catch-up reader), one receiver (the stream's body).
//!
//! Lighter than a general channel for this one use: an idle stream's queue holds no buffer at
//! all (the buffer grows with what is queued), there is no semaphore, and a send is one
//! uncontended lock and one wake-up. A full queue refuses the event: the hub then ends the
//! stream (its client resumes from its last id), so the queue never grows past its bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

/// Why an event was not queued; the event comes back.
#[derive(Debug)]
pub enum TrySendError {
    /// The queue holds its bound: the stream's client fell behind.
    Full(Bytes),
    /// The stream is gone.
    Closed(Bytes),
}

struct Shared {
    state: Mutex<State>,
    receiver: AtomicWaker,
    senders: AtomicUsize,
    bound: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<Bytes>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing here can panic half-way through an update.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A queue holding at most `bound` items (each item may carry several events).
pub fn channel(bound: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        receiver: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
        bound: bound.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The sending side; the receiver sees the end once every sender is dropped.
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queues `event` unless the queue is full or the receiver is gone.
    pub fn try_send(&self, event: Bytes) -> Result<(), TrySendError> {
        {
            let mut state = self.0.lock();
            if state.closed {
                return Err(TrySendError::Closed(event));
            }
            if state.items.len() >= self.0.bound {
                return Err(TrySendError::Full(event));
            }
            state.items.push_back(event);
        }
        self.0.receiver.wake();
        Ok(())
    }

    /// Items that can be queued now.
    pub fn capacity(&self) -> usize {
        let state = self.0.lock();
        self.0.bound.saturating_sub(state.items.len())
    }

    /// True once the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.lock().closed
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.receiver.wake();
        }
    }
}

/// The receiving side: the stream's body.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// The next item; `None` once the queue is empty and every sender is gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(ready) = self.ready() {
            return Poll::Ready(ready);
        }
        self.0.receiver.register(cx.waker());
        // A send between the first look and the registration woke nobody: look again.
        match self.ready() {
            Some(ready) => Poll::Ready(ready),
            None => Poll::Pending,
        }
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.0.lock().items.pop_front()
    }

    fn ready(&self) -> Option<Option<Bytes>> {
        let mut state = self.0.lock();
        if let Some(item) = state.items.pop_front() {
            if state.items.is_empty() && state.items.capacity() > 64 {
                // A burst is over: give its buffer back.
                state.items = VecDeque::new();
            }
            return Some(Some(item));
        }
        (self.0.senders.load(Ordering::Acquire) == 0).then_some(None)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        state.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(rx: &mut Receiver) -> Poll<Option<Bytes>> {
        rx.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn bounded_in_order_and_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = channel(2);
        let tx2 = tx.clone();
        assert!(tx.try_send(Bytes::from_static(b"a")).is_ok());
        assert!(tx2.try_send(Bytes::from_static(b"b")).is_ok());
        assert!(matches!(
            tx.try_send(Bytes::from_static(b"c")),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(tx.capacity(), 0);
        assert_eq!(poll(&mut rx), Poll::Ready(Some(Bytes::from_static(b"a"))));
        assert_eq!(rx.try_recv(), Some(Bytes::from_static(b"b")));
        assert_eq!(poll(&mut rx), Poll::Pending);
        drop(tx);
        assert_eq!(poll(&mut rx), Poll::Pending, "one sender is left");
        tx2.try_send(Bytes::from_static(b"d")).unwrap();
        drop(tx2);
        assert_eq!(poll(&mut rx), Poll::Ready(Some(Bytes::from_static(b"d"))));
        assert_eq!(poll(&mut rx), Poll::Ready(None));
    }

    #[test]
    fn a_gone_receiver_closes_the_queue() {
        let (tx, rx) = channel(4);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(
            tx.try_send(Bytes::new()),
            Err(TrySendError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn a_send_wakes_the_waiting_receiver() {
        let (tx, mut rx) = channel(4);
        let waiting =
            tokio::spawn(async move { std::future::poll_fn(|cx| rx.poll_recv(cx)).await });
        tokio::task::yield_now().await;
        tx.try_send(Bytes::from_static(b"x")).unwrap();
        assert_eq!(waiting.await.unwrap(), Some(Bytes::from_static(b"x")));
    }
}
