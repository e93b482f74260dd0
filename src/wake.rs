//! Wake-ups held back to the end of a batch of records.
//!
//! The Kafka reader fans each record out to many streams, and each stream's queue wakes the
//! task of the connection the stream is on. Woken at once, a connection task could run on
//! another worker while the fan-out goes on, write a few streams' events, and be woken again:
//! a write (and a TLS record) per stream and record. Inside [`batch`], a connection's wake-up
//! is recorded once and done when the batch ends, so a connection writes the whole batch for
//! all its streams in one go. Outside a batch (catch-up readers, timers), wake-ups are at once.
//!
//! Within a connection, [`Ready`] lists the streams due for a poll by the connection's task.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

thread_local! {
    /// The wake-ups held back by the batch running on this thread, by connection.
    static HELD: RefCell<Option<HashMap<usize, Arc<Deferred>>>> = const { RefCell::new(None) };
}

/// Runs `f` as one batch: wake-ups of [`Deferred`] wakers on this thread happen when it ends,
/// each at most once.
pub fn batch<R>(f: impl FnOnce() -> R) -> R {
    let nested = HELD.with(|held| {
        let mut held = held.borrow_mut();
        let nested = held.is_some();
        held.get_or_insert_with(HashMap::new);
        nested
    });
    let result = f();
    if !nested {
        let due = HELD
            .with(|held| held.borrow_mut().take())
            .unwrap_or_default();
        for deferred in due.into_values() {
            deferred.task.wake();
        }
    }
    result
}

/// A waker for one connection task that defers its wake-ups inside a [`batch`].
#[derive(Default)]
pub struct Deferred {
    task: AtomicWaker,
}

impl Deferred {
    /// A waker that wakes the task last given to [`Deferred::register`].
    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }

    /// The task to wake: the current one of the polling context.
    pub fn register(&self, task: &Waker) {
        self.task.register(task);
    }
}

impl Wake for Deferred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let held = HELD.with(|held| match held.borrow_mut().as_mut() {
            Some(due) => {
                due.entry(Arc::as_ptr(self) as usize)
                    .or_insert_with(|| self.clone());
                true
            }
            None => false,
        });
        if !held {
            self.task.wake();
        }
    }
}

/// The streams of one connection that are due for a poll, by their token on the connection,
/// and the waker of the connection's task, which polls them.
///
/// A stream is due when its own waker is woken (by `h2`, a timer, its queue) or when the
/// connection's task finds it among the members of a shared log that a new event wakes
/// (`hub::group`): those are marked due in bulk, under one lock, with no waker at all.
pub struct Ready {
    due: Mutex<Vec<usize>>,
    connection: Waker,
}

impl Ready {
    /// The due list of the connection whose task `connection` wakes.
    pub fn new(connection: Waker) -> Arc<Ready> {
        Arc::new(Ready {
            due: Mutex::new(Vec::new()),
            connection,
        })
    }

    /// Marks the streams `tokens` due (the caller wakes the connection if it is not the
    /// connection's task itself).
    pub fn mark(&self, tokens: impl IntoIterator<Item = usize>) {
        self.due.lock().extend(tokens);
    }

    /// Wakes the connection's task.
    pub fn wake_connection(&self) {
        self.connection.wake_by_ref();
    }

    /// Moves the due tokens to the end of `into`, leaving none due.
    pub fn take_into(&self, into: &mut Vec<usize>) {
        let mut due = self.due.lock();
        if into.is_empty() {
            std::mem::swap(&mut *due, into);
        } else {
            into.append(&mut due);
        }
    }

    /// The waker of the stream `token`: a wake-up marks it due and wakes the connection's
    /// task.
    ///
    /// It keeps no flag to mark the stream due only once until its next poll: the connection
    /// skips a stream already polled in the same round (`http::answers`), and what wakes a
    /// stream (a timer, its queue, `h2`) wakes it at most once per registration, that is once
    /// per poll. A flag would be one more line of memory per stream to clear at every poll,
    /// which a fan-out paid on each of its streams for every event.
    pub fn waker(self: &Arc<Self>, token: usize) -> Waker {
        Waker::from(Arc::new(StreamWake {
            ready: self.clone(),
            token,
        }))
    }
}

/// One stream's waker (see [`Ready::waker`]).
struct StreamWake {
    ready: Arc<Ready>,
    token: usize,
}

impl Wake for StreamWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.mark([self.token]);
        self.ready.wake_connection();
    }
}

/// A waker that counts its wake-ups, for tests of what wakes tasks.
#[cfg(test)]
pub(crate) fn counting_waker() -> (Arc<WakeCount>, Waker) {
    let count = Arc::new(WakeCount(std::sync::atomic::AtomicUsize::new(0)));
    (count.clone(), Waker::from(count))
}

/// The count of a [`counting_waker`].
#[cfg(test)]
pub(crate) struct WakeCount(std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl WakeCount {
    /// Wake-ups so far.
    pub(crate) fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
impl Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_wakes_each_connection_once_at_its_end() {
        let (count, task) = counting_waker();
        let deferred = Arc::new(Deferred::default());
        deferred.register(&task);
        let waker = deferred.waker();
        batch(|| {
            for _ in 0..100 {
                waker.wake_by_ref();
            }
            batch(|| waker.wake_by_ref());
            assert_eq!(count.get(), 0, "held until the batch ends");
        });
        assert_eq!(count.get(), 1);
        // Outside a batch: at once (once registered again, as a polled task would be).
        deferred.register(&task);
        waker.wake_by_ref();
        assert_eq!(count.get(), 2);
    }
}
