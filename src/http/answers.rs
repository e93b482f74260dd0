//! The streams of one HTTP/2 connection, each an answer its task polls when the stream is due.
//!
//! Each stream has a token (its slot) and a waker made once, when it opens. A wake-up of that
//! waker marks the stream due in the connection's [`Ready`] list and wakes the connection's
//! task; the members of a shared log are marked due in bulk by the task itself
//! (`hub::group`), with no wake-up at all. Each poll of the set polls the streams due, each once,
//! with their own wakers, in the order of their slots: nothing is allocated, cloned or linked
//! per poll.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::wake::Ready;

/// A connection's streams.
pub struct Answers<F> {
    slots: Slab<Slot<F>>,
    ready: Arc<Ready>,
    /// The tokens due and not polled yet: those of the poll running, and after it those left
    /// for the next poll when the connection's write budget ran out.
    due: Vec<usize>,
    /// Counts the polls of the set: a stream due twice in one is polled once.
    round: u64,
}

struct Slot<F> {
    answer: F,
    waker: Waker,
    round: u64,
}

/// A stream's answer: polled with the stream's waker and what the connection lends its streams
/// while it polls them (`S`: the connection's output, locked once for all of them); ready when
/// the stream is over.
pub trait Answering<S> {
    /// Makes progress; ready when the stream is over.
    fn poll_answer(&mut self, cx: &mut Context<'_>, shared: &mut S) -> Poll<()>;
}

impl<F> Answers<F> {
    /// No streams yet; `ready` lists those due.
    pub fn new(ready: Arc<Ready>) -> Answers<F> {
        Answers {
            slots: Slab::new(),
            ready,
            due: Vec::new(),
            round: 0,
        }
    }

    /// Adds the answer `make` builds for the stream's token; it is due at once.
    pub fn insert_with(&mut self, make: impl FnOnce(usize) -> F) {
        let entry = self.slots.vacant_entry();
        let token = entry.key();
        let waker = self.ready.waker(token);
        entry.insert(Slot {
            answer: make(token),
            waker,
            round: 0,
        });
        self.ready.mark([token]);
    }

    /// The streams still open.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no stream is open.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Polls each stream due (once) with `shared`, dropping those that end, while `more` says
    /// the connection may take more frames before its next write. The streams left then are polled
    /// first by the next call, and true says there are some: the caller polls again once the
    /// connection has written (nothing else wakes it for them). Streams that become due while
    /// this runs are polled by the next call.
    pub fn poll_due<S>(&mut self, shared: &mut S, mut more: impl FnMut(&mut S) -> bool) -> bool
    where
        F: Answering<S>,
    {
        let mut due = std::mem::take(&mut self.due);
        // The streams newly due are polled in the order of their slots, which lie side by side
        // in memory: a walk the processor can prefetch, where the order they were marked in
        // (after streams came and went, any order) missed the cache at every stream. Those
        // left from the last call go first.
        let left_over = due.len();
        self.ready.take_into(&mut due);
        due[left_over..].sort_unstable();
        self.round += 1;
        let mut polled = 0;
        for &token in &due {
            if !more(shared) {
                break;
            }
            polled += 1;
            // A token may be stale (its stream ended, the slot reused): a spurious poll.
            let Some(slot) = self.slots.get_mut(token) else {
                continue;
            };
            if slot.round == self.round {
                continue;
            }
            slot.round = self.round;
            let mut cx = Context::from_waker(&slot.waker);
            if slot.answer.poll_answer(&mut cx, shared).is_ready() {
                self.slots.remove(token);
            }
        }
        due.drain(..polled);
        let left = !due.is_empty();
        self.due = due;
        left
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    use super::*;
    use crate::wake::counting_waker;

    /// An answer that counts its polls, keeps the last waker it was given, and ends when told.
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Arc<parking_lot::Mutex<Option<Waker>>>,
        end: Arc<std::sync::atomic::AtomicBool>,
    }

    impl<S> Answering<S> for Probe {
        fn poll_answer(&mut self, cx: &mut Context<'_>, _: &mut S) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock() = Some(cx.waker().clone());
            if self.end.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn only_due_streams_are_polled_once_each_and_ended_ones_leave() {
        let (connection, task) = counting_waker();
        let ready = Ready::new(task);
        let mut answers = Answers::new(ready.clone());
        let probes: Vec<_> = (0..3)
            .map(|_| {
                let polls = Arc::new(AtomicUsize::new(0));
                let waker = Arc::new(parking_lot::Mutex::new(None));
                let end = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let probe = Probe {
                    polls: polls.clone(),
                    waker: waker.clone(),
                    end: end.clone(),
                };
                answers.insert_with(|_| probe);
                (polls, waker, end)
            })
            .collect();
        let polls = |i: usize| probes[i].0.load(Ordering::SeqCst);
        answers.poll_due(&mut (), |_| true);
        assert_eq!(
            (polls(0), polls(1), polls(2)),
            (1, 1, 1),
            "new streams are due"
        );
        answers.poll_due(&mut (), |_| true);
        assert_eq!((polls(0), polls(1), polls(2)), (1, 1, 1), "nothing due");

        // Woken twice, and marked due in bulk too: polled once.
        let waker = probes[1].1.lock().clone().unwrap();
        waker.wake_by_ref();
        waker.wake_by_ref();
        ready.mark([1]);
        assert_eq!(connection.get(), 2, "each wake-up wakes the connection");
        answers.poll_due(&mut (), |_| true);
        assert_eq!((polls(0), polls(1), polls(2)), (1, 2, 1));

        // A stream that ends leaves the set; a stale wake-up of it polls nothing.
        probes[2].2.store(true, Ordering::SeqCst);
        let waker = probes[2].1.lock().clone().unwrap();
        waker.wake_by_ref();
        answers.poll_due(&mut (), |_| true);
        assert_eq!(polls(2), 2);
        assert_eq!(answers.len(), 2);
        waker.wake_by_ref();
        answers.poll_due(&mut (), |_| true);
        assert_eq!(polls(2), 2);
    }

    #[test]
    fn streams_over_the_write_budget_wait_for_the_next_poll() {
        let (connection, task) = counting_waker();
        let ready = Ready::new(task);
        let mut answers = Answers::new(ready.clone());
        let polls = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            answers.insert_with(|_| Probe {
                polls: polls.clone(),
                waker: Arc::new(parking_lot::Mutex::new(None)),
                end: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            });
        }
        let spend = |budget: &mut usize| {
            let more = *budget > 0;
            *budget = budget.saturating_sub(1);
            more
        };
        assert!(answers.poll_due(&mut 2_usize, spend), "some left");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert!(
            answers.poll_due(&mut (), |_| false),
            "none polled while no write is done"
        );
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert_eq!(
            connection.get(),
            0,
            "the caller polls again once it has written"
        );
        assert!(!answers.poll_due(&mut (), |_| true));
        assert_eq!(polls.load(Ordering::SeqCst), 5);
        assert!(!answers.poll_due(&mut (), |_| true));
        assert_eq!(polls.load(Ordering::SeqCst), 5, "each polled once");
        assert_eq!(connection.get(), 0);
    }

    /// An answer that logs its token when polled.
    struct Logged(usize, Arc<parking_lot::Mutex<Vec<usize>>>);

    impl<S> Answering<S> for Logged {
        fn poll_answer(&mut self, _: &mut Context<'_>, _: &mut S) -> Poll<()> {
            self.1.lock().push(self.0);
            Poll::Pending
        }
    }

    #[test]
    fn streams_newly_due_are_polled_in_slot_order_after_those_left_over() {
        let (_, task) = counting_waker();
        let ready = Ready::new(task);
        let mut answers = Answers::new(ready.clone());
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        for _ in 0..8 {
            answers.insert_with(|token| Logged(token, log.clone()));
        }
        answers.poll_due(&mut (), |_| true);
        log.lock().clear();
        // Marked in any order (as a shared log lists its waiting streams after streams came
        // and went): polled in slot order, each once.
        ready.mark([6, 2, 7, 0, 2, 5]);
        answers.poll_due(&mut (), |_| true);
        assert_eq!(*log.lock(), [0, 2, 5, 6, 7]);
        // Three polled, then the budget is spent: the rest go first next time, before those
        // marked since (themselves in slot order).
        log.lock().clear();
        ready.mark([7, 3, 1, 4]);
        let mut budget = 2_usize;
        answers.poll_due(&mut budget, |budget| {
            let more = *budget > 0;
            *budget = budget.saturating_sub(1);
            more
        });
        assert_eq!(*log.lock(), [1, 3]);
        ready.mark([6, 0]);
        answers.poll_due(&mut (), |_| true);
        assert_eq!(*log.lock(), [1, 3, 4, 7, 0, 6]);
    }
}
