//! A stream's bounded queue of encoded events: several senders (the hub's live fan-out, a
//! catch-up reader), one receiver (the stream's body).
//!
//! Lighter than a general channel for this one use: an idle stream's queue holds no buffer at
//! all (the buffer grows with what is queued), there is no semaphore, and a send is one lock and
//! at most one wake-up. The sender (the Kafka reader) and the receiver (a connection task)
//! may run on different cores, so the receiver touches the lock only to take what is queued: it
//! learns that the queue is empty from a counter, and its waker stays registered across
//! events (the sender wakes it when the queue stops being empty, without taking it). A full
//! queue refuses the event: the hub then ends the stream (its client resumes from its last
//! id), so the queue never grows past its bound for long: like a connection's shared log
//! (`hub::group`), it may hold a burst of live events past the bound for [`BURST_GRACE`], up to
//! [`BURST_FACTOR`] times the bound, so a resumed stream that reads a burst in that time is not
//! cut off for it.
//!
//! A resumed stream's replay takes one slot however many events it holds: a place in the
//! topic's replay ring ([`Replay`]), read in place one event at a time as the stream sends them,
//! so a stream that resumed from far back holds neither copies nor handles of what it missed.
//! A replay the ring outran ends the stream: the queue is closed and its receiver sees the end
//! ([`Receiver::cut_off`] tells that end from the others).
//!
//! The queue is bounded in items and, for what a stream holds of its own (a catch-up reader's
//! chunks, a snapshot: [`Sender::try_send_owned`]), in bytes: an owned chunk is refused while the
//! queue holds that many bytes, unless the queue is empty (one chunk larger than the bound still
//! goes, alone).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use prometheus::IntGauge;

use tokio::time::Instant;

use super::group::{BURST_FACTOR, BURST_GRACE};
use super::replay::{Behind, Replay};

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
    /// Items queued, readable without the lock (set under it).
    queued: AtomicUsize,
    senders: AtomicUsize,
    bound: usize,
    /// Bytes of single items queued before an owned chunk is refused.
    max_bytes: usize,
    /// Set when a replay the ring outran ended the queue.
    cut: AtomicBool,
}

/// One slot of a queue.
enum Item {
    /// An event, or a chunk of several.
    One(Bytes),
    /// A replay from the ring, read one event at a time; boxed, so a slot is no larger than
    /// an event.
    Replay(Box<Replay>),
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// Bytes of the single items queued (a replay's shared handles are not counted).
    bytes: usize,
    closed: bool,
    /// The receiver's task, woken whenever the queue stops being empty or ends.
    receiver: Option<Waker>,
    /// Since when live events have held the queue at or past its bound (a burst).
    over_since: Option<Instant>,
}

impl State {
    fn wake_receiver(&self) {
        if let Some(task) = &self.receiver {
            task.wake_by_ref();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

/// A queue holding at most `bound` items (each item may carry several events), and owned chunks
/// only while it holds less than `max_bytes`.
pub fn channel(bound: usize, max_bytes: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        queued: AtomicUsize::new(0),
        senders: AtomicUsize::new(1),
        bound: bound.max(1),
        max_bytes,
        cut: AtomicBool::new(false),
    });
    (
        Sender(shared.clone()),
        Receiver {
            shared,
            registered: None,
            gauge: None,
        },
    )
}

/// The sending side; the receiver sees the end once every sender is dropped.
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queues the live event `event` unless the queue is full or the receiver is gone. Full:
    /// at its bound for [`BURST_GRACE`] already, or at [`BURST_FACTOR`] times it.
    pub fn try_send(&self, event: Bytes) -> Result<(), TrySendError> {
        self.try_send_at(event, Instant::now)
    }

    /// [`Sender::try_send`], with the clock read only when the queue is at its bound.
    fn try_send_at(&self, event: Bytes, now: impl FnOnce() -> Instant) -> Result<(), TrySendError> {
        let mut state = self.0.lock();
        if state.closed {
            return Err(TrySendError::Closed(event));
        }
        let queued = state.items.len();
        if queued < self.0.bound {
            state.over_since = None;
        } else {
            let now = now();
            let since = *state.over_since.get_or_insert(now);
            if now.duration_since(since) >= BURST_GRACE
                || queued >= self.0.bound.saturating_mul(BURST_FACTOR)
            {
                return Err(TrySendError::Full(event));
            }
        }
        Self::push(&self.0, &mut state, Item::One(event));
        Ok(())
    }

    /// Queues `chunk`, bytes the stream holds alone (not shared with the topic), unless the
    /// queue is full in items or already holds its byte bound, or the receiver is gone.
    pub fn try_send_owned(&self, chunk: Bytes) -> Result<(), TrySendError> {
        let mut state = self.0.lock();
        if state.closed {
            return Err(TrySendError::Closed(chunk));
        }
        let over = !state.items.is_empty() && state.bytes + chunk.len() > self.0.max_bytes;
        if over || state.items.len() >= self.0.bound {
            return Err(TrySendError::Full(chunk));
        }
        Self::push(&self.0, &mut state, Item::One(chunk));
        Ok(())
    }

    /// Queues `replay` in one slot, its events received one by one; false when the queue is
    /// full or the receiver is gone. An empty replay: nothing queued, true.
    pub fn try_send_replay(&self, replay: Replay) -> bool {
        if replay.is_empty() {
            return true;
        }
        let mut state = self.0.lock();
        if state.closed || state.items.len() >= self.0.bound {
            return false;
        }
        Self::push(&self.0, &mut state, Item::Replay(Box::new(replay)));
        true
    }

    fn push(shared: &Shared, state: &mut State, item: Item) {
        if let Item::One(event) = &item {
            state.bytes += event.len();
        }
        let queued = state.items.len();
        state.items.push_back(item);
        shared.queued.store(queued + 1, Ordering::Release);
        // A receiver finds what was queued before it polled again: only the first item after
        // an empty queue needs a wake-up.
        if queued == 0 {
            state.wake_receiver();
        }
    }

    /// Items that can be queued now (an owned chunk also needs the byte bound: see
    /// [`Sender::has_room_for_owned`]).
    pub fn capacity(&self) -> usize {
        let state = self.0.lock();
        self.0.bound.saturating_sub(state.items.len())
    }

    /// True when an owned chunk of `len` bytes would be queued now.
    pub fn has_room_for_owned(&self, len: usize) -> bool {
        let state = self.0.lock();
        state.items.len() < self.0.bound
            && (state.items.is_empty() || state.bytes + len <= self.0.max_bytes)
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
            self.0.lock().wake_receiver();
        }
    }
}

/// The receiving side: the stream's body.
pub struct Receiver {
    shared: Arc<Shared>,
    /// The waker last registered with the senders, so an unchanged one is not registered again.
    registered: Option<Waker>,
    /// The gauge of streams reading a queue of their own, decremented when this one goes.
    gauge: Option<IntGauge>,
}

impl Receiver {
    /// Counts the receiver in `gauge` for as long as it exists.
    pub fn counted(mut self, gauge: &IntGauge) -> Receiver {
        gauge.inc();
        self.gauge = Some(gauge.clone());
        self
    }

    /// The next item; `None` once the queue is empty and every sender is gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(ready) = self.ready() {
            return Poll::Ready(ready);
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|task| task.will_wake(cx.waker()))
        {
            // Registered, and the senders wake it when an item comes: nothing to do.
            return Poll::Pending;
        }
        self.shared.lock().receiver = Some(cx.waker().clone());
        self.registered = Some(cx.waker().clone());
        // A send between the first look and the registration woke nobody: look again.
        match self.ready() {
            Some(ready) => Poll::Ready(ready),
            None => Poll::Pending,
        }
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        if self.shared.queued.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.take()
    }

    fn take(&self) -> Option<Bytes> {
        let mut state = self.shared.lock();
        let event = loop {
            let Some(item) = state.items.pop_front() else {
                break None;
            };
            match item {
                Item::One(event) => {
                    state.bytes -= event.len();
                    break Some(event);
                }
                Item::Replay(mut replay) => match replay.next_event() {
                    Ok(Some(event)) => {
                        state.items.push_front(Item::Replay(replay));
                        break Some(event);
                    }
                    Ok(None) => {}
                    Err(Behind) => {
                        // The ring outran the stream: it ends here, nothing after is sent.
                        self.shared.cut.store(true, Ordering::Release);
                        Self::close(&mut state);
                        break None;
                    }
                },
            }
        };
        self.shared
            .queued
            .store(state.items.len(), Ordering::Release);
        if state.items.is_empty() && state.items.capacity() > 64 {
            // A burst is over: give its buffer back.
            state.items = VecDeque::new();
        }
        event
    }

    /// Empties the queue for good: senders find it closed.
    fn close(state: &mut State) {
        state.closed = true;
        state.items = VecDeque::new();
        state.bytes = 0;
        state.receiver = None;
    }

    /// True when the queue ended because a replay could not keep up with the ring: the stream
    /// ends there (its client resumes from its last id), rather than go on to what follows.
    pub fn cut_off(&self) -> bool {
        self.shared.cut.load(Ordering::Acquire)
    }

    fn ready(&self) -> Option<Option<Bytes>> {
        if self.shared.queued.load(Ordering::Acquire) > 0 {
            if let Some(item) = self.take() {
                return Some(Some(item));
            }
        }
        if self.cut_off() {
            return Some(None);
        }
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            // The last sender may have queued an item just before it went.
            return Some(self.take());
        }
        None
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
        Self::close(&mut self.shared.lock());
        self.shared.queued.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::replay::{replay_of, Entry, ENTRY_OVERHEAD};
    use std::task::Waker;

    fn poll(rx: &mut Receiver) -> Poll<Option<Bytes>> {
        rx.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn bounded_in_order_and_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = channel(2, usize::MAX);
        let tx2 = tx.clone();
        assert!(tx.try_send(Bytes::from_static(b"a")).is_ok());
        assert!(tx2.try_send(Bytes::from_static(b"b")).is_ok());
        assert_eq!(tx.capacity(), 0);
        // At its bound for longer than a burst's grace: full.
        let t0 = Instant::now();
        let late = t0 + BURST_GRACE;
        assert!(tx.try_send_at(Bytes::from_static(b"c"), || t0).is_ok());
        assert!(matches!(
            tx.try_send_at(Bytes::from_static(b"c"), || late),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(poll(&mut rx), Poll::Ready(Some(Bytes::from_static(b"a"))));
        assert_eq!(rx.try_recv(), Some(Bytes::from_static(b"b")));
        assert_eq!(rx.try_recv(), Some(Bytes::from_static(b"c")));
        assert_eq!(poll(&mut rx), Poll::Pending);
        drop(tx);
        assert_eq!(poll(&mut rx), Poll::Pending, "one sender is left");
        tx2.try_send(Bytes::from_static(b"d")).unwrap();
        drop(tx2);
        assert_eq!(poll(&mut rx), Poll::Ready(Some(Bytes::from_static(b"d"))));
        assert_eq!(poll(&mut rx), Poll::Ready(None));
    }

    #[test]
    fn a_burst_of_live_events_may_pass_the_bound_for_its_grace_up_to_its_factor() {
        let bound = 4;
        let (tx, mut rx) = channel(bound, usize::MAX);
        let t0 = Instant::now();
        let event = Bytes::from_static(b"data: x\n\n");
        for _ in 0..bound * BURST_FACTOR {
            tx.try_send_at(event.clone(), || t0).unwrap();
        }
        assert!(
            matches!(
                tx.try_send_at(event.clone(), || t0),
                Err(TrySendError::Full(_))
            ),
            "never past the burst's bound"
        );
        // The client reads it within the grace: under the bound again, the grace starts over.
        for _ in 0..bound * BURST_FACTOR - 1 {
            assert_eq!(rx.try_recv(), Some(event.clone()));
        }
        let later = t0 + BURST_GRACE;
        tx.try_send_at(event.clone(), || later).unwrap();
        for _ in 0..bound - 2 {
            tx.try_send_at(event.clone(), || later).unwrap();
        }
        assert!(
            tx.try_send_at(event.clone(), || later).is_ok(),
            "at the bound: a new burst"
        );
        assert!(
            matches!(
                tx.try_send_at(event.clone(), || later + BURST_GRACE),
                Err(TrySendError::Full(_))
            ),
            "at the bound for the whole grace: full"
        );
        // Owned chunks and replays never go past the bound.
        assert!(matches!(
            tx.try_send_owned(event.clone()),
            Err(TrySendError::Full(_))
        ));
        let (_ring, replay) = replay_of(std::slice::from_ref(&event), 1 << 20);
        assert!(!tx.try_send_replay(replay));
    }

    #[test]
    fn a_replay_takes_one_slot_and_is_read_in_place_event_by_event() {
        let (tx, mut rx) = channel(2, usize::MAX);
        let events: Vec<Bytes> = [&b"r1"[..], b"r2", b"r3"].map(Bytes::from_static).into();
        let (_ring, replay) = replay_of(&events, 1 << 20);
        let (_, empty) = replay_of(&[], 1 << 20);
        assert!(tx.try_send_replay(empty), "nothing to queue");
        assert_eq!(tx.capacity(), 2);
        assert!(tx.try_send_replay(replay));
        assert_eq!(tx.capacity(), 1, "one slot for three events");
        tx.try_send(Bytes::from_static(b"live")).unwrap();
        let (_, more) = replay_of(&events, 1 << 20);
        assert!(!tx.try_send_replay(more), "full");
        assert_eq!(rx.try_recv(), Some(Bytes::from_static(b"r1")));
        let second = rx.try_recv().unwrap();
        assert_eq!(
            (&second[..], second.as_ptr()),
            (&b"r2"[..], events[1].as_ptr())
        );
        assert_eq!(
            tx.capacity(),
            0,
            "the slot is held until its last event is taken"
        );
        assert_eq!(poll(&mut rx), Poll::Ready(Some(Bytes::from_static(b"r3"))));
        assert_eq!(rx.try_recv(), Some(Bytes::from_static(b"live")));
        assert_eq!(tx.capacity(), 2);
        assert_eq!(rx.try_recv(), None);
        assert!(!rx.cut_off());
        drop(rx);
        let (_, late) = replay_of(&events, 1 << 20);
        assert!(!tx.try_send_replay(late), "closed");
    }

    #[test]
    fn a_replay_the_ring_outran_ends_the_queue_and_nothing_after_it_is_sent() {
        let (tx, mut rx) = channel(8, usize::MAX);
        let events: Vec<Bytes> = [&b"r1"[..], b"r2"].map(Bytes::from_static).into();
        // Room for two entries: a third appended drops the first.
        let (ring, replay) = replay_of(&events, 2 * (2 + ENTRY_OVERHEAD));
        assert!(tx.try_send_replay(replay));
        tx.try_send(Bytes::from_static(b"live")).unwrap();
        ring.write()
            .push(Entry::encoded(0, 2, None, Bytes::from_static(b"r3")));
        assert_eq!(rx.try_recv(), None, "r1 is gone from the ring");
        assert!(rx.cut_off());
        assert_eq!(poll(&mut rx), Poll::Ready(None), "the stream ends");
        assert!(tx.is_closed(), "the hub finds the stream gone");
        assert!(matches!(
            tx.try_send(Bytes::from_static(b"later")),
            Err(TrySendError::Closed(_))
        ));
    }

    #[test]
    fn owned_chunks_are_bounded_in_bytes_and_one_large_chunk_goes_alone() {
        let (tx, mut rx) = channel(100, 10);
        let chunk = |n: usize| Bytes::from(vec![b'x'; n]);
        tx.try_send_owned(chunk(6)).unwrap();
        assert!(!tx.has_room_for_owned(5));
        assert!(matches!(
            tx.try_send_owned(chunk(5)),
            Err(TrySendError::Full(_))
        ));
        // Shared events are bounded by the item count alone, but they count toward the bytes.
        tx.try_send(chunk(4)).unwrap();
        assert!(!tx.has_room_for_owned(1));
        assert_eq!(rx.try_recv().map(|b| b.len()), Some(6));
        assert!(tx.has_room_for_owned(6));
        assert!(!tx.has_room_for_owned(7));
        assert_eq!(rx.try_recv().map(|b| b.len()), Some(4));
        // Empty: a chunk over the bound still goes, alone.
        tx.try_send_owned(chunk(50)).unwrap();
        assert!(!tx.has_room_for_owned(1));
        assert_eq!(rx.try_recv().map(|b| b.len()), Some(50));
        assert!(tx.has_room_for_owned(10));
    }

    #[test]
    fn a_slot_is_the_size_of_an_event() {
        assert_eq!(std::mem::size_of::<Item>(), std::mem::size_of::<Bytes>());
    }

    #[test]
    fn a_gone_receiver_closes_the_queue() {
        let (tx, rx) = channel(4, usize::MAX);
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
        let (tx, mut rx) = channel(4, usize::MAX);
        let waiting =
            tokio::spawn(async move { std::future::poll_fn(|cx| rx.poll_recv(cx)).await });
        tokio::task::yield_now().await;
        tx.try_send(Bytes::from_static(b"x")).unwrap();
        assert_eq!(waiting.await.unwrap(), Some(Bytes::from_static(b"x")));
    }
}
