//! What a connection's requests are doing, for its serving task: how many are open now (a
//! request is open from its arrival until its response body is dropped, so an SSE stream is
//! open as long as it streams) and whether any was ever served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
        assert_eq!(*watch.borrow(), 1);
        drop(b);
        assert_eq!(*watch.borrow(), 0);
        assert!(activity.served());
    }
}
