//! What a connection's requests are doing, for its serving task: how many are open now (a
//! request is open from its arrival until its response body is dropped, so an SSE stream is
//! open as long as it streams) and whether any was ever served.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;

/// One connection's requests.
#[derive(Clone)]
pub struct Activity {
    open: Arc<watch::Sender<usize>>,
    served: Arc<AtomicBool>,
}

impl Activity {
    /// No request yet.
    pub fn new() -> Self {
        Activity {
            open: Arc::new(watch::Sender::new(0)),
            served: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts a request as open until the returned guard is dropped.
    pub fn open(&self) -> Open {
        self.served.store(true, Ordering::Relaxed);
        self.open.send_modify(|n| *n += 1);
        Open(self.open.clone())
    }

    /// Watches the number of open requests.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.open.subscribe()
    }

    /// True once the connection has had a request.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// An open request; dropping it closes it.
pub struct Open(Arc<watch::Sender<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A response body that keeps its request open until it is dropped.
pub struct Tracked<B> {
    body: B,
    _open: Open,
}

impl<B> Tracked<B> {
    /// `body`, holding `open`.
    pub fn new(body: B, open: Open) -> Self {
        Tracked { body, _open: open }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_open_until_their_guard_is_dropped() {
        let activity = Activity::new();
        let watch = activity.watch();
        assert!(!activity.served());
        let a = activity.open();
        let b = activity.open();
        assert_eq!(*watch.borrow(), 2);
        drop(a);
        let body = Tracked::new(http_body::Frame::data(()), b);
        assert_eq!(*watch.borrow(), 1);
        drop(body);
        assert_eq!(*watch.borrow(), 0);
        assert!(activity.served());
    }
}
