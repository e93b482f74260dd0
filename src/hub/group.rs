//! A connection's live streams of one view of a topic (every record, or the records of one key):
//! one shared log, each stream a cursor into it. Every kind of stream, on HTTP/2 or HTTP/1.1
//! (`http::h1`), reads here once it is live: fresh streams at once; resumed streams after what
//! their own queue holds (the ring's replay, or what a catch-up reader read) and once the live
//! position covers what their client already has.
//!
//! The Kafka reader appends each event to the group once, whatever the number of its
//! streams, and wakes the connection's task at most once per batch of records; the connection's
//! task then marks its waiting streams due and polls them (on its own core). The members have
//! no wakers of their own: each is known by its token on the connection (its [`Seat`]), and
//! they are marked due in bulk, under one lock ([`crate::wake::Ready`]). Without the group, the
//! reader queued the event for each stream and woke each stream's task: a lock, a queue
//! slot and a wake-up per stream and record, each touching memory the connection's thread read
//! next.
//!
//! The log keeps an event until every stream of the group has read it. A stream may be the
//! stream queue bound (`KSG_STREAM_QUEUE`) of events behind the newest; past it, a burst is
//! allowed for [`BURST_GRACE`], up to [`BURST_FACTOR`] times the bound: records that reach the
//! gateway together (after a broker's or a network's hiccup) are appended faster than the
//! connection's task writes them, and a client that reads them all in that time is not cut off
//! for the gateway's own burst. An append that finds the log past the bound for longer than the
//! grace, or past the burst's bound, cuts off every stream at least the bound behind, as a full
//! queue does for a stream on its own. A cut-off stream ends at its next read (its client
//! resumes from the last id it received, so nothing is lost) and its unread events are released
//! at once.
//!
//! Everything a group's streams touch per event is the connection's own: a small event is
//! copied into the group once (its streams' handles on it then count in memory no other
//! connection's thread touches), and the events and bytes its streams write are added up in the
//! group and counted into the topic's series once per poll of the connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use prometheus::IntCounter;
use tokio::time::Instant;

use super::order::{Level, Ordered};
use crate::filter::Filter;
use crate::keyset::Keys;
use crate::sse::Format;
use crate::wake::Ready;

/// One connection's groups, one per view of a topic it streams.
pub struct Fanout {
    /// The connection's streams due for a poll, and its task's waker.
    ready: Arc<Ready>,
    groups: Mutex<Vec<Arc<Group>>>,
    touched: Arc<Touched>,
}

/// The groups of a connection with something for its task to do: waiting members to mark due
/// (listed by the append that finds them waiting) and reads to count (listed by the first read
/// since the last count). The task looks at these, not at every group: a connection with
/// hundreds of groups (key streams of many keys) does work for the few that a batch of records
/// touched, and leaves the others' memory alone. Locked on their own, under a group's log at
/// most (see `hub::order`), never with another lock taken inside.
#[derive(Default)]
struct Touched {
    notified: Mutex<Vec<Weak<Group>>>,
    read: Mutex<Vec<Weak<Group>>>,
}

/// Which records of a topic a group's streams take, and which ids they carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct View<'a> {
    /// Every record (`None`), or only those of these keys.
    pub(super) keys: Option<&'a Keys>,
    /// For a key stream whose ids name only its key's partition, that partition.
    pub(super) scope: Option<usize>,
    /// How its events carry records.
    pub(super) format: Format,
    /// The tests a record must pass, if any.
    pub(super) filter: Option<&'a Filter>,
}

/// A stream's place on its connection: the connection's groups and the stream's token, by which
/// the connection polls it. The connection hands it to each request it answers.
#[derive(Clone)]
pub struct Seat {
    pub(super) fanout: Arc<Fanout>,
    pub(super) token: usize,
}

/// Where a stream that starts from its own queue (the ring's replay, what a catch-up reader
/// read) goes once it is live: its seat on the connection, and the slot the hub leaves its
/// cursor in. The stream reads its queue to the end, then the cursor.
#[derive(Clone)]
pub(super) struct Handoff {
    pub(super) seat: Seat,
    pub(super) slot: Arc<Mutex<Option<Cursor>>>,
}

impl Handoff {
    pub(super) fn new(seat: &Seat) -> Handoff {
        Handoff {
            seat: seat.clone(),
            slot: Arc::new(Mutex::new(None)),
        }
    }
}

impl Fanout {
    /// The groups of a connection whose streams `ready` lists when due.
    pub fn new(ready: Arc<Ready>) -> Arc<Fanout> {
        Arc::new(Fanout {
            ready,
            groups: Mutex::new(Vec::new()),
            touched: Arc::default(),
        })
    }

    /// The seat of the connection's stream `token`.
    pub fn seat(self: &Arc<Self>, token: usize) -> Seat {
        Seat {
            fanout: self.clone(),
            token,
        }
    }

    /// Marks due every stream that waits for an event appended since the last call. The
    /// connection's task calls it before polling its due streams; only the groups appended to
    /// since are looked at.
    pub fn mark_readers_due(&self) {
        let notified = std::mem::take(&mut *self.touched.notified.lock());
        // Every group's waiting members in one list, marked due under one lock of the list:
        // a connection of many groups of one stream each (streams of many keys) takes it once.
        let mut due = Vec::new();
        for group in notified.iter().filter_map(Weak::upgrade) {
            group.take_waiting(&mut due);
        }
        if !due.is_empty() {
            self.ready.mark(due);
        }
    }

    /// Counts what the streams wrote since the last call into the topics' series. The
    /// connection's task calls it after polling its streams; only the groups read since are
    /// looked at.
    pub fn count_sent(&self) {
        let read = std::mem::take(&mut *self.touched.read.lock());
        for group in read.iter().filter_map(Weak::upgrade) {
            if group.unflushed.swap(false, Ordering::Relaxed) {
                group.sent.flush(&mut group.log());
            }
        }
    }

    /// The connection's group for `view` of `topic` still registered under `id`s the topic
    /// holds, or a new one (the caller registers it). Called under the topic's lock.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn group_for(
        self: &Arc<Self>,
        owner: &Arc<dyn Owner>,
        view: View<'_>,
        registered: impl Fn(u64) -> bool,
        new_id: u64,
        bound: usize,
        counters: impl FnOnce() -> (IntCounter, IntCounter),
    ) -> (Arc<Group>, bool) {
        let mut groups = self.groups();
        let found = groups.iter().find(|g| {
            std::ptr::addr_eq(g.owner.as_ptr(), Arc::as_ptr(owner))
                && g.view() == view
                && registered(g.id)
        });
        if let Some(group) = found {
            return (group.clone(), false);
        }
        let group = Arc::new(Group {
            id: new_id,
            keys: view.keys.cloned(),
            format: view.format,
            filter: view.filter.cloned(),
            scope: AtomicUsize::new(view.scope.unwrap_or(NO_SCOPE)),
            unflushed: AtomicBool::new(false),
            owner: Arc::downgrade(owner),
            fanout: Arc::downgrade(self),
            ready: self.ready.clone(),
            touched: self.touched.clone(),
            bound: bound.max(1),
            log: Mutex::new(Log::default()),
            version: AtomicU64::new(0),
            sent: Sent::new(counters()),
        });
        groups.push(group.clone());
        (group, true)
    }

    fn forget(&self, group: &Arc<Group>) {
        self.groups().retain(|g| !Arc::ptr_eq(g, group));
    }

    /// The list of groups, locked (see `hub::order`).
    fn groups(&self) -> Ordered<MutexGuard<'_, Vec<Arc<Group>>>> {
        Ordered::new(Level::Groups, self.groups.lock())
    }
}

/// What a group knows of its topic: the one place a stream leaving the group is accounted for.
pub(super) trait Owner: Send + Sync {
    /// A stream of `group` leaves: under the topic's lock (taken before the group's log, see
    /// `hub::order`), `leave_log` takes it out of the log and says whether the log is now
    /// empty; the topic counts the stream gone and, when the log is empty, forgets the group.
    fn leave(&self, group: &Arc<Group>, leave_log: &mut dyn FnMut() -> bool) -> bool;
}

/// A connection's live streams of one view of a topic: the log they share and their cursors.
pub(super) struct Group {
    /// Its key among the topic's groups.
    pub(super) id: u64,
    /// The record keys its streams take, or `None` for every record.
    pub(super) keys: Option<Keys>,
    /// How its events carry records.
    format: Format,
    /// The tests a record must pass, if any.
    pub(super) filter: Option<Filter>,
    /// The partition its streams' ids name alone ([`NO_SCOPE`]: full ids); changed only under
    /// the topic's lock (partitions added widen it).
    scope: AtomicUsize,
    /// Its streams read events not yet counted into the topic's series (and it is listed in
    /// its connection's `Touched::read`).
    unflushed: AtomicBool,
    /// Its topic, not kept alive by it (the topic's state holds its groups: a strong reference
    /// back would be a cycle), and known only as an [`Owner`].
    owner: Weak<dyn Owner>,
    fanout: Weak<Fanout>,
    /// The connection's due list.
    ready: Arc<Ready>,
    /// The connection's lists of groups to look at.
    touched: Arc<Touched>,
    /// Events kept for the slowest stream at most.
    bound: usize,
    log: Mutex<Log>,
    /// Changed (under the log's lock) by every append, by the close and when waiting members
    /// are marked due: a member that read everything, waits, and saw this value has nothing
    /// new and is still listed as waiting while it stays.
    version: AtomicU64,
    sent: Sent,
}

/// Events up to this size are copied into each group that takes them, while the group's log
/// holds fewer than [`COPY_WHILE_BELOW`] events: a group whose streams keep up (the case that
/// matters for CPU) gets its own copies, and one that lags holds at most that many copies
/// (64 × 4 KiB), the rest shared with the topic's ring.
const COPY_MAX: usize = 4096;
const COPY_WHILE_BELOW: usize = 64;

/// A group whose streams carry full ids.
const NO_SCOPE: usize = usize::MAX;

/// The room for entries a log keeps after a burst while it is not empty (40 KiB): more is
/// given back once an eighth of it is in use.
const KEPT_ENTRIES: usize = 1024;

/// How long a group's log may stay past its bound (a burst) before the streams that far behind
/// are cut off, and how many times the bound it may reach in that time.
/// A stream on a queue of its own has the same allowance (`hub::queue`).
pub(super) const BURST_GRACE: Duration = Duration::from_secs(1);
pub(super) const BURST_FACTOR: usize = 16;

/// `ksg_events_sent_total` and `ksg_event_bytes_sent_total` of the topic: the events and bytes
/// the group's streams read are added up in the log, under the lock each read takes anyway, and
/// counted here once per poll of the connection.
struct Sent {
    counters: (IntCounter, IntCounter),
}

impl Sent {
    fn new(counters: (IntCounter, IntCounter)) -> Sent {
        Sent { counters }
    }

    fn flush(&self, log: &mut Log) {
        let events = std::mem::take(&mut log.sent_events);
        if events > 0 {
            self.counters.0.inc_by(events);
            self.counters.1.inc_by(std::mem::take(&mut log.sent_bytes));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.sent.flush(self.log.get_mut());
    }
}

#[derive(Default)]
struct Log {
    /// The sequence number of the first entry.
    base: u64,
    entries: VecDeque<Entry>,
    /// Streams by slot; a free slot is reused.
    members: Vec<Member>,
    free: Vec<usize>,
    /// Members that read everything and wait, by slot.
    waiting: Vec<usize>,
    /// The connection was woken for the waiting members and has not woken them yet.
    notified: bool,
    /// Members still reading (not cut off).
    readers: u32,
    /// Since when the log has been past its bound (a burst), if it is.
    over_since: Option<Instant>,
    /// No more events: members read what is left, then end.
    closed: bool,
    /// Events read by the members, and their bytes, not counted yet.
    sent_events: u64,
    sent_bytes: u64,
}

struct Entry {
    event: Bytes,
    /// Members that have still to read it.
    unread: u32,
}

#[derive(Default)]
struct Member {
    /// The sequence number of the next event to read.
    pos: u64,
    /// The stream's token on its connection.
    token: usize,
    waiting: bool,
    cut: bool,
    used: bool,
}

impl Log {
    fn head(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Members, cut off or not.
    fn members(&self) -> usize {
        self.members.len() - self.free.len()
    }

    /// Marks the members waiting for an event due; they wait no more.
    fn mark_waiting_due(&mut self, ready: &Ready) {
        let mut due = Vec::new();
        self.take_waiting(&mut due);
        ready.mark(due);
    }

    /// Adds the tokens of the members waiting for an event to `due`; they wait no more.
    fn take_waiting(&mut self, due: &mut Vec<usize>) {
        let members = &mut self.members;
        due.extend(self.waiting.drain(..).map(|slot| {
            let m = &mut members[slot];
            m.waiting = false;
            m.token
        }));
    }

    /// Drops the events every member has read.
    fn trim(&mut self) {
        while self.entries.front().is_some_and(|e| e.unread == 0) {
            self.entries.pop_front();
            self.base += 1;
        }
        let (len, room) = (self.entries.len(), self.entries.capacity());
        if len == 0 && room > 64 {
            // A burst is over: give its buffer back.
            self.entries = VecDeque::new();
        } else if room > KEPT_ENTRIES && len < room / 8 {
            // A burst is mostly read, and the log may never be empty again (a busy topic):
            // most of its room goes back now, not only once it is empty.
            self.entries.shrink_to((2 * len).max(KEPT_ENTRIES));
        }
    }

    /// The member at `slot` stops reading: the events it had not read no longer wait for it.
    fn stop_reading(&mut self, slot: usize) {
        let pos = self.members[slot].pos.max(self.base);
        let from = (pos - self.base) as usize;
        for entry in self.entries.iter_mut().skip(from) {
            entry.unread -= 1;
        }
        self.readers -= 1;
    }

    /// Cuts off the members at least `behind` events behind the newest and marks them due (to
    /// end); returns how many. Their unread events are released in one pass over the log.
    fn cut_behind(&mut self, ready: &Ready, behind: usize) -> u64 {
        let (base, limit) = (self.base, self.head().saturating_sub(behind as u64));
        let slow = |m: &Member| m.used && !m.cut && m.pos <= limit;
        if !self.members.iter().any(slow) {
            return 0;
        }
        // How many cut members start reading at each entry; each entry is unread by those that
        // start at or before it.
        let mut starting = vec![0u32; self.entries.len() + 1];
        let mut cut = 0;
        ready.mark(self.members.iter_mut().filter(|m| slow(m)).map(|m| {
            m.cut = true;
            cut += 1;
            starting[(m.pos.max(base) - base) as usize] += 1;
            m.token
        }));
        ready.wake_connection();
        let mut releasing = 0;
        for (entry, starts) in self.entries.iter_mut().zip(&starting) {
            releasing += starts;
            entry.unread -= releasing;
        }
        self.readers -= cut;
        self.trim();
        u64::from(cut)
    }
}

impl Group {
    /// The log, locked (see `hub::order`).
    fn log(&self) -> Ordered<MutexGuard<'_, Log>> {
        Ordered::new(Level::Log, self.log.lock())
    }

    /// Appends `event` for every member (under the topic's lock, by the Kafka reader); returns
    /// the members cut off as slow to make room.
    pub(super) fn push(self: &Arc<Self>, event: &Bytes) -> u64 {
        self.push_at(event, Instant::now)
    }

    /// [`Group::push`], with the clock read only when the log is past its bound.
    fn push_at(self: &Arc<Self>, event: &Bytes, now: impl FnOnce() -> Instant) -> u64 {
        let mut log = self.log();
        if log.closed || log.readers == 0 {
            return 0;
        }
        self.version.fetch_add(1, Ordering::Release);
        let cut = if log.entries.len() < self.bound {
            log.over_since = None;
            0
        } else {
            let now = now();
            let since = *log.over_since.get_or_insert(now);
            let burst_over = now.duration_since(since) >= BURST_GRACE
                || log.entries.len() >= self.bound.saturating_mul(BURST_FACTOR);
            if burst_over {
                let cut = log.cut_behind(&self.ready, self.bound);
                if log.entries.len() < self.bound {
                    log.over_since = None;
                }
                cut
            } else {
                0
            }
        };
        if log.readers == 0 {
            return cut;
        }
        let unread = log.readers;
        let copy = unread > 1 && event.len() <= COPY_MAX && log.entries.len() < COPY_WHILE_BELOW;
        let event = if copy {
            Bytes::copy_from_slice(event)
        } else {
            event.clone()
        };
        log.entries.push_back(Entry { event, unread });
        if !log.waiting.is_empty() && !log.notified {
            log.notified = true;
            self.touched.notified.lock().push(Arc::downgrade(self));
            self.ready.wake_connection();
        }
        cut
    }

    /// The records its streams take and the ids they carry.
    pub(super) fn view(&self) -> View<'_> {
        let scope = self.scope.load(Ordering::Relaxed);
        View {
            keys: self.keys.as_ref(),
            scope: (scope != NO_SCOPE).then_some(scope),
            format: self.format,
            filter: self.filter.as_ref(),
        }
    }

    /// Its streams carry full ids from now on (under the topic's lock).
    pub(super) fn widen(&self) {
        self.scope.store(NO_SCOPE, Ordering::Relaxed);
    }

    /// Appends `last` (if any) for every member and closes the log: members read what is
    /// left, then end. Returns the members, each still counted as a stream of the topic.
    pub(super) fn close(&self, last: Option<&Bytes>) -> usize {
        let mut log = self.log();
        if let Some(last) = last.filter(|_| log.readers > 0 && !log.closed) {
            let unread = log.readers;
            log.entries.push_back(Entry {
                event: last.clone(),
                unread,
            });
        }
        log.closed = true;
        self.version.fetch_add(1, Ordering::Release);
        log.mark_waiting_due(&self.ready);
        self.ready.wake_connection();
        log.members()
    }

    /// Adds to `due` the members waiting for the events appended since the last call (the
    /// connection marks them due).
    fn take_waiting(&self, due: &mut Vec<usize>) {
        let mut log = self.log();
        if !log.notified {
            return;
        }
        log.notified = false;
        log.take_waiting(due);
        // They wait no more: their next look takes the lock (and waits again if need be).
        self.version.fetch_add(1, Ordering::Release);
    }

    /// A new member, the connection's stream `token`, reading from the next event appended
    /// (under the topic's lock).
    pub(super) fn join(self: &Arc<Self>, token: usize) -> Cursor {
        let mut log = self.log();
        let pos = log.head();
        let member = Member {
            pos,
            token,
            used: true,
            ..Member::default()
        };
        let slot = match log.free.pop() {
            Some(slot) => {
                log.members[slot] = member;
                slot
            }
            None => {
                log.members.push(member);
                log.members.len() - 1
            }
        };
        log.readers += 1;
        Cursor {
            group: self.clone(),
            seen: 0,
            slot: slot as u32,
            more: false,
            parked: false,
        }
    }
}

/// A stream's place in its group's log. Dropping it leaves the group.
///
/// Small (24 bytes), as every open stream has one: its slot is a `u32` (a connection has at
/// most a few hundred streams) and its parked version a plain `u64` beside a flag.
pub struct Cursor {
    group: Arc<Group>,
    /// The version of the group seen when the member parked (see `parked`).
    seen: u64,
    slot: u32,
    /// The last read left more events to read (a hint for [`Cursor::try_more`]).
    more: bool,
    /// The member read everything, waits for the next event, and saw version `seen` of the
    /// group: until it changes, a look finds nothing without taking the log's lock.
    parked: bool,
}

/// What a cursor read.
enum Read {
    /// An event, and whether more were there after it.
    Event(Bytes, bool),
    End,
    Nothing,
}

impl Cursor {
    /// Reads the member's next event from the locked log (counted as sent).
    fn read_locked(log: &mut Log, slot: usize) -> Read {
        let base = log.base;
        let len = log.entries.len();
        let m = &mut log.members[slot];
        if m.cut {
            return Read::End;
        }
        let at = (m.pos - base) as usize;
        if at >= len {
            return if log.closed { Read::End } else { Read::Nothing };
        }
        m.pos += 1;
        let more = at + 1 < len;
        let entry = &mut log.entries[at];
        entry.unread -= 1;
        log.sent_events += 1;
        log.sent_bytes += entry.event.len() as u64;
        if at == 0 && entry.unread == 0 {
            // The last reader takes the event itself.
            let event = log.entries.pop_front().map(|e| e.event);
            log.base += 1;
            log.trim();
            return event.map_or(Read::Nothing, |event| Read::Event(event, more));
        }
        Read::Event(entry.event.clone(), more)
    }

    /// The next event; `None` once the stream was cut off as slow, or the log closed and
    /// everything in it was read. When there is none yet, the stream is marked due on its
    /// connection (by its token) once there is.
    pub fn poll_recv(&mut self) -> Poll<Option<Bytes>> {
        if self.parked && self.group.version.load(Ordering::Acquire) == self.seen {
            return Poll::Pending;
        }
        match self.read() {
            Read::Event(event, _) => Poll::Ready(Some(event)),
            Read::End => Poll::Ready(None),
            Read::Nothing => Poll::Pending,
        }
    }

    /// Reads the next event under the log's lock. When it was the last one there, or there was
    /// none, the member waits (under the same lock as the look: an append after it sees the
    /// member waiting and marks it due).
    fn read(&mut self) -> Read {
        let mut log = self.group.log();
        let slot = self.slot as usize;
        let read = Self::read_locked(&mut log, slot);
        let first = |flag: &AtomicBool| {
            !flag.load(Ordering::Relaxed) && !flag.swap(true, Ordering::Relaxed)
        };
        if matches!(read, Read::Event(..)) && first(&self.group.unflushed) {
            let group = Arc::downgrade(&self.group);
            self.group.touched.read.lock().push(group);
        }
        self.more = matches!(read, Read::Event(_, true));
        self.parked = false;
        // A closed log has its end to tell at the next look.
        if !log.closed && matches!(read, Read::Event(_, false) | Read::Nothing) {
            let m = &mut log.members[slot];
            if !m.waiting {
                m.waiting = true;
                log.waiting.push(slot);
            }
            self.seen = self.group.version.load(Ordering::Relaxed);
            self.parked = true;
        }
        read
    }

    /// The next event if there was one after the last event read: what a stream takes along
    /// with an event just received, without a look at the log when there is nothing (an event
    /// appended since is read by the next [`Cursor::poll_recv`]).
    pub fn try_more(&mut self) -> Option<Bytes> {
        if !self.more {
            return None;
        }
        self.try_recv()
    }

    /// The next event if there is one now.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        match self.read() {
            Read::Event(event, _) => Some(event),
            _ => None,
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let (group, slot) = (&self.group, self.slot as usize);
        let mut leave_log = || {
            let mut log = group.log();
            let m = &log.members[slot];
            if !m.cut {
                log.stop_reading(slot);
            }
            log.members[slot] = Member::default();
            log.free.push(slot);
            log.waiting.retain(|&s| s != slot);
            log.trim();
            log.members() == 0
        };
        // A topic already gone has no streams left to count.
        let empty = match group.owner.upgrade() {
            Some(owner) => owner.leave(group, &mut leave_log),
            None => leave_log(),
        };
        if empty {
            if let Some(fanout) = group.fanout.upgrade() {
                fanout.forget(group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::queue;
    use crate::hub::topic::{KeyGroups, Topic};
    use crate::hub::Events;
    use crate::metrics::Metrics;
    use crate::wake::{counting_waker, WakeCount};
    use std::task::{Context, Waker};

    /// The tokens marked due since the last look, sorted.
    fn due(ready: &Ready) -> Vec<usize> {
        let mut due = Vec::new();
        ready.take_into(&mut due);
        due.sort_unstable();
        due
    }

    fn ev(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// What [`group`] makes: the connection's wake count, its due list, its fanout, the group
    /// and its topic.
    type Fixture = (
        Arc<WakeCount>,
        Arc<Ready>,
        Arc<Fanout>,
        Arc<Group>,
        Arc<Topic>,
    );

    /// A group of a fresh topic on a connection whose wake-ups `connection` counts and whose
    /// due streams `ready` lists; the group is registered in the topic's state as subscribe
    /// would. The topic is returned too: the group does not keep it alive.
    fn group(bound: usize) -> Fixture {
        let (count, connection) = counting_waker();
        let metrics = Metrics::new(&[]);
        let topic = Arc::new(Topic::new("t", None, false, &metrics));
        let ready = Ready::new(connection);
        let fanout = Fanout::new(ready.clone());
        let counter = |n: &str| IntCounter::new(n, n).unwrap();
        let counters = || (counter("events"), counter("bytes"));
        let all = View {
            keys: None,
            scope: None,
            format: Format::Plain,
            filter: None,
        };
        let (group, new) = fanout.group_for(
            &(topic.clone() as Arc<dyn Owner>),
            all,
            |_| true,
            7,
            bound,
            counters,
        );
        assert!(new);
        topic.lock().insert_group(group.clone());
        (count, ready, fanout, group, topic)
    }

    /// A new member, the connection's stream `token`, counted as a stream of `topic`.
    fn join(topic: &Topic, group: &Arc<Group>, token: usize) -> Cursor {
        topic.lock().streams += 1;
        group.join(token)
    }

    #[test]
    fn members_read_each_event_once_and_the_log_keeps_only_the_unread() {
        let (_, _ready, _fanout, group, topic) = group(8);
        let (mut a, mut b) = (join(&topic, &group, 0), join(&topic, &group, 1));
        group.push(&ev("1"));
        group.push(&ev("2"));
        let later = join(&topic, &group, 2);
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("1"))));
        assert_eq!(a.try_more(), Some(ev("2")));
        assert_eq!(a.try_more(), None);
        assert_eq!(a.try_recv(), None);
        assert_eq!(group.log().entries.len(), 2, "b has read nothing");
        assert_eq!(b.try_recv(), Some(ev("1")));
        assert_eq!(group.log().entries.len(), 1);
        // The last reader gets the event itself, not a new handle on it.
        let kept = group.log().entries[0].event.as_ptr();
        let last = b.try_recv().unwrap();
        assert_eq!(last.as_ptr(), kept);
        assert!(group.log().entries.is_empty());
        drop(later);
    }

    #[test]
    fn the_connection_is_woken_once_and_marks_the_waiting_members_due() {
        let (connection, ready, fanout, group, topic) = group(8);
        let (mut a, mut b) = (join(&topic, &group, 3), join(&topic, &group, 5));
        assert_eq!(a.poll_recv(), Poll::Pending);
        assert_eq!(b.poll_recv(), Poll::Pending);
        assert_eq!(b.poll_recv(), Poll::Pending, "waiting once");
        group.push(&ev("1"));
        group.push(&ev("2"));
        assert_eq!(
            connection.get(),
            1,
            "one wake-up of the connection per batch"
        );
        assert!(due(&ready).is_empty(), "the reader marks no stream");
        fanout.mark_readers_due();
        assert_eq!(due(&ready), [3, 5]);
        fanout.mark_readers_due();
        assert!(due(&ready).is_empty(), "nothing new");
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("1"))));
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("2"))));
        assert_eq!(a.poll_recv(), Poll::Pending);
        // b is not waiting (it has unread events): only a's wait wakes the connection.
        group.push(&ev("3"));
        assert_eq!(connection.get(), 2);
        fanout.mark_readers_due();
        assert_eq!(due(&ready), [3]);
    }

    #[test]
    fn the_connection_looks_only_at_the_groups_a_batch_touched() {
        let (_, ready, fanout, group, topic) = group(8);
        let counter = |n: &str| IntCounter::new(n, n).unwrap();
        let other = Keys::one(b"other".to_vec());
        let view = View {
            keys: Some(&other),
            scope: None,
            format: Format::Plain,
            filter: None,
        };
        let owner = topic.clone() as Arc<dyn Owner>;
        let counters = || (counter("events"), counter("bytes"));
        let (other, _) = fanout.group_for(&owner, view, |_| true, 8, 8, counters);
        topic.lock().insert_group(other.clone());
        let (mut a, _b) = (join(&topic, &group, 1), join(&topic, &other, 2));
        assert_eq!(a.poll_recv(), Poll::Pending);
        group.push(&ev("1"));
        group.push(&ev("2"));
        let listed = |list: &Mutex<Vec<Weak<Group>>>| {
            let list = list.lock();
            list.iter().map(|g| g.as_ptr()).collect::<Vec<_>>()
        };
        assert_eq!(
            listed(&fanout.touched.notified),
            [Arc::as_ptr(&group)],
            "listed once, the other group not at all"
        );
        fanout.mark_readers_due();
        assert!(listed(&fanout.touched.notified).is_empty());
        assert_eq!(due(&ready), [1]);
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("1"))));
        assert_eq!(a.try_more(), Some(ev("2")));
        assert_eq!(listed(&fanout.touched.read), [Arc::as_ptr(&group)]);
        fanout.count_sent();
        assert!(listed(&fanout.touched.read).is_empty());
        assert_eq!(group.sent.counters.0.get(), 2);
    }

    #[test]
    fn past_the_bound_for_longer_than_a_burst_the_slowest_are_cut_off_and_release_their_events() {
        let (connection, ready, _fanout, group, topic) = group(2);
        let (mut slow, mut fast) = (join(&topic, &group, 0), join(&topic, &group, 1));
        let mut slow2 = join(&topic, &group, 2);
        assert_eq!(slow.poll_recv(), Poll::Pending);
        let t0 = Instant::now();
        let at = |ms: u64| move || t0 + Duration::from_millis(ms);
        assert_eq!(group.push_at(&ev("1"), at(0)), 0);
        assert_eq!(fast.try_recv(), Some(ev("1")));
        assert_eq!(group.push_at(&ev("2"), at(0)), 0);
        assert_eq!(fast.try_recv(), Some(ev("2")));
        // Two events held for the slow members: the bound. A burst past it is allowed...
        assert_eq!(group.push_at(&ev("3"), at(10)), 0);
        assert_eq!(fast.try_recv(), Some(ev("3")));
        assert_eq!(due(&ready), [0; 0], "nobody is cut off yet");
        // ... for the grace: the append after it cuts off the two members two or more behind.
        let after = BURST_GRACE.as_millis() as u64 + 10;
        assert_eq!(group.push_at(&ev("4"), at(after)), 2);
        assert_eq!(due(&ready), [0, 2], "the cut members are due, to end");
        assert_eq!(
            connection.get(),
            2,
            "the first event and the cut-off woke the connection"
        );
        {
            let log = group.log();
            assert_eq!(
                log.entries.len(),
                1,
                "only what the fast member has not read"
            );
            assert_eq!(log.entries[0].unread, 1);
            assert_eq!(log.over_since, None, "under the bound again");
        }
        assert_eq!(slow.poll_recv(), Poll::Ready(None));
        assert_eq!(slow2.try_recv(), None);
        assert_eq!(fast.try_recv(), Some(ev("4")));
        assert_eq!(group.push_at(&ev("5"), at(after + 2000)), 0, "cut once");
        drop((slow, slow2));
        assert_eq!(topic.lock().streams, 1);
        assert_eq!(fast.try_recv(), Some(ev("5")));
    }

    #[test]
    fn a_log_gives_back_the_room_of_a_burst_while_it_is_never_empty() {
        let bound = 1024;
        let (_, _ready, _fanout, group, topic) = group(bound);
        let mut reader = join(&topic, &group, 0);
        let t0 = Instant::now();
        for i in 0..bound * 8 {
            group.push_at(&Bytes::from(i.to_string()), || t0);
        }
        let burst = group.log().entries.capacity();
        assert!(burst >= bound * 8);
        // The reader catches up to ten events behind; records keep coming.
        for i in 0..bound * 8 - 10 {
            assert_eq!(reader.try_recv(), Some(Bytes::from(i.to_string())));
        }
        group.push_at(&ev("more"), || t0);
        let log = group.log();
        assert_eq!(log.entries.len(), 11);
        assert!(
            log.entries.capacity() < burst / 4,
            "{} of {burst} entries' room kept",
            log.entries.capacity()
        );
    }

    #[test]
    fn a_burst_within_the_grace_is_read_by_every_member_and_only_a_reader_left_behind_is_cut() {
        let bound = 4;
        let (_, _ready, _fanout, group, topic) = group(bound);
        let (mut a, mut b) = (join(&topic, &group, 0), join(&topic, &group, 1));
        let mut lagging = join(&topic, &group, 2);
        let t0 = Instant::now();
        // Ten times the bound at once, faster than the connection writes: nobody is cut off.
        let burst: Vec<Bytes> = (0..bound * 10)
            .map(|i| Bytes::from(i.to_string()))
            .collect();
        for event in &burst {
            assert_eq!(group.push_at(event, || t0), 0);
        }
        // Two members read it all; the third reads half of it.
        for reader in [&mut a, &mut b] {
            for event in &burst {
                assert_eq!(reader.try_recv().as_ref(), Some(event));
            }
        }
        for event in &burst[..bound * 5] {
            assert_eq!(lagging.try_recv().as_ref(), Some(event));
        }
        // Still past the bound after the grace: only the member that far behind is cut off,
        // and the events only it had not read are released.
        let late = || t0 + BURST_GRACE;
        assert_eq!(group.push_at(&ev("next"), late), 1);
        assert_eq!(group.log().entries.len(), 1);
        assert_eq!(lagging.try_recv(), None);
        assert_eq!(a.try_recv(), Some(ev("next")));
        assert_eq!(b.try_recv(), Some(ev("next")));
    }

    #[test]
    fn a_burst_past_its_own_bound_cuts_off_at_once() {
        let bound = 4;
        let (_, _ready, _fanout, group, topic) = group(bound);
        let (mut reader, mut idle) = (join(&topic, &group, 0), join(&topic, &group, 1));
        let t0 = Instant::now();
        let mut cut = 0;
        for i in 0..bound * BURST_FACTOR {
            cut += group.push_at(&Bytes::from(i.to_string()), || t0);
            assert_eq!(reader.try_recv(), Some(Bytes::from(i.to_string())));
        }
        assert_eq!(cut, 0, "up to the burst's bound");
        assert_eq!(
            group.push_at(&ev("over"), || t0),
            1,
            "past it, within the grace"
        );
        assert_eq!(idle.try_recv(), None);
        assert_eq!(reader.try_recv(), Some(ev("over")));
        assert_eq!(group.log().entries.len(), 0);
    }

    #[test]
    fn a_member_leaving_releases_its_unread_events_and_the_last_one_unregisters() {
        let (_, _ready, fanout, group, topic) = group(8);
        let (a, mut b) = (join(&topic, &group, 0), join(&topic, &group, 1));
        group.push(&ev("1"));
        group.push(&ev("2"));
        drop(a);
        assert_eq!(b.try_recv(), Some(ev("1")));
        assert_eq!(group.log().entries.len(), 1);
        drop(b);
        assert!(group.log().entries.is_empty());
        let state = topic.lock();
        assert_eq!(state.streams, 0);
        assert!(state.groups.is_empty());
        assert!(fanout.groups().is_empty());
    }

    #[test]
    fn a_small_event_is_copied_once_per_group_and_sent_counts_are_flushed_by_the_connection() {
        let (_, _ready, fanout, group, topic) = group(8);
        let (mut a, mut b) = (join(&topic, &group, 0), join(&topic, &group, 1));
        let shared = Bytes::from(vec![b'x'; 100]);
        group.push(&shared);
        let (ea, eb) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert_eq!(ea, shared);
        assert_ne!(ea.as_ptr(), shared.as_ptr(), "the group's own copy");
        assert_eq!(ea.as_ptr(), eb.as_ptr(), "one copy for the whole group");
        group.push(&Bytes::from(vec![b'y'; 50]));
        assert!(b.try_recv().is_some());
        let (events, bytes) = group.sent.counters.clone();
        assert_eq!(events.get(), 0, "counted by the connection's poll");
        fanout.count_sent();
        assert_eq!((events.get(), bytes.get()), (3, 250), "each read counts");
        fanout.count_sent();
        assert_eq!((events.get(), bytes.get()), (3, 250));
        assert!(a.try_recv().is_some());
        drop((a, b, group));
        assert_eq!(
            events.get(),
            4,
            "what is left is counted when the group goes"
        );
    }

    #[test]
    fn a_group_that_lags_holds_few_copies_of_its_own() {
        let (_, _ready, _fanout, group, topic) = group(4 * COPY_WHILE_BELOW);
        let _members = (join(&topic, &group, 0), join(&topic, &group, 1));
        let shared = Bytes::from(vec![b'x'; 100]);
        for _ in 0..2 * COPY_WHILE_BELOW {
            group.push(&shared);
        }
        let log = group.log();
        assert_eq!(log.entries.len(), 2 * COPY_WHILE_BELOW);
        let own = log.entries.iter();
        let own = own.filter(|e| e.event.as_ptr() != shared.as_ptr()).count();
        assert_eq!(own, COPY_WHILE_BELOW, "the rest shared with the topic");
    }

    #[test]
    fn a_member_that_read_the_last_event_waits_without_another_look() {
        let (connection, ready, fanout, group, topic) = group(8);
        let mut a = join(&topic, &group, 3);
        group.push(&ev("1"));
        assert_eq!(connection.get(), 0, "nobody waited");
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("1"))));
        assert!(a.parked);
        assert!(
            group.log().members[a.slot as usize].waiting,
            "waits from its last read"
        );
        assert_eq!(a.poll_recv(), Poll::Pending);
        assert_eq!(group.log().waiting, [a.slot as usize], "listed once");
        group.push(&ev("2"));
        // Read before the connection marked it due (it was polled for something else).
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("2"))));
        assert_eq!(connection.get(), 1);
        fanout.mark_readers_due();
        assert_eq!(due(&ready), [3], "a spurious poll at most");
        assert_eq!(a.poll_recv(), Poll::Pending);
        assert_eq!(group.log().waiting, [a.slot as usize], "waits again");
        group.push(&ev("3"));
        assert_eq!(connection.get(), 2);
        fanout.mark_readers_due();
        assert_eq!(due(&ready), [3]);
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("3"))));
    }

    #[test]
    fn a_closed_log_is_read_to_its_end_then_ends() {
        let (connection, ready, _fanout, group, topic) = group(8);
        let mut a = join(&topic, &group, 4);
        group.push(&ev("1"));
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("1"))));
        assert_eq!(a.poll_recv(), Poll::Pending);
        assert_eq!(group.close(Some(&ev("end"))), 1);
        assert_eq!(due(&ready), [4]);
        assert_eq!(connection.get(), 1);
        assert_eq!(group.push(&ev("2")), 0, "closed: nothing appended");
        assert_eq!(a.poll_recv(), Poll::Ready(Some(ev("end"))));
        assert_eq!(a.poll_recv(), Poll::Ready(None));
    }

    #[test]
    fn a_connection_has_one_group_per_view_of_a_topic() {
        let (_, _ready, fanout, all, topic) = group(8);
        let counter = |n: &str| IntCounter::new(n, n).unwrap();
        let find = |key: Option<&[u8]>, scope: Option<usize>, id: u64| {
            let keys = key.map(|k| Keys::one(k.to_vec()));
            let view = View {
                keys: keys.as_ref(),
                scope,
                format: Format::Plain,
                filter: None,
            };
            let counters = || (counter("events"), counter("bytes"));
            let (group, new) = fanout.group_for(
                &(topic.clone() as Arc<dyn Owner>),
                view,
                |_| true,
                id,
                8,
                counters,
            );
            if new {
                topic.lock().insert_group(group.clone());
            }
            (group, new)
        };
        let (a, new) = find(Some(b"a"), None, 8);
        assert!(new && a.view().keys.and_then(Keys::single) == Some(&b"a"[..]));
        assert!(!Arc::ptr_eq(&a, &all));
        let (b, new) = find(Some(b"b"), None, 9);
        assert!(new && !Arc::ptr_eq(&a, &b));
        let (short, new) = find(Some(b"a"), Some(1), 10);
        assert!(
            new && !Arc::ptr_eq(&a, &short),
            "short ids: a view of their own"
        );
        let (again, new) = find(Some(b"a"), None, 11);
        assert!(!new && Arc::ptr_eq(&a, &again));
        let (again, new) = find(None, None, 12);
        assert!(!new && Arc::ptr_eq(&all, &again));
        let mut state = topic.lock();
        assert!(state.holds_group(&a) && state.holds_group(&short) && state.holds_group(&all));
        assert_eq!(state.key_groups[&b"a"[..]].len(), 2);
        assert!(
            matches!(state.key_groups[&b"b"[..]], KeyGroups::One(_)),
            "one connection: inline"
        );
        // Their groups leave one at a time; the key leaves with the last.
        state.remove_group(&short);
        assert!(!state.holds_group(&short) && state.holds_group(&a));
        state.remove_group(&a);
        assert!(!state.key_groups.contains_key(&b"a"[..]));
        state.remove_group(&b);
        assert!(state.key_groups.is_empty() && state.holds_group(&all));
        for group in [&a, &short, &b] {
            state.insert_group(group.clone());
        }
        assert!([&a, &short, &b].iter().all(|g| state.holds_group(g)));
        drop(state);
        // Widened (partitions added), the short-id group carries full ids.
        short.widen();
        assert_eq!(short.view().scope, None);
    }

    #[test]
    fn a_group_of_several_keys_is_found_under_each_and_ended_once() {
        let (_, _ready, fanout, all, topic) = group(8);
        let counter = |n: &str| IntCounter::new(n, n).unwrap();
        let owner = topic.clone() as Arc<dyn Owner>;
        let set = Keys::new(vec![b"b".to_vec(), b"a".to_vec()]).unwrap();
        let view = View {
            keys: Some(&set),
            scope: None,
            format: Format::Plain,
            filter: None,
        };
        let counters = || (counter("events"), counter("bytes"));
        let (ab, new) = fanout.group_for(&owner, view, |_| true, 8, 8, counters);
        assert!(new);
        topic.lock().insert_group(ab.clone());
        let same = Keys::new(vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec()]).unwrap();
        let view = View {
            keys: Some(&same),
            scope: None,
            format: Format::Plain,
            filter: None,
        };
        let (again, new) = fanout.group_for(&owner, view, |_| true, 9, 8, counters);
        assert!(
            !new && Arc::ptr_eq(&ab, &again),
            "the same keys: the same group"
        );
        let mut members = (join(&topic, &ab, 1), join(&topic, &all, 2));
        {
            let state = topic.lock();
            assert!(state.holds_group(&ab));
            for key in [&b"a"[..], b"b"] {
                assert!(state.key_groups[key].get(ab.id).is_some());
            }
        }
        // Every stream ends once (a stream counted twice would take the count below zero).
        topic
            .lock()
            .end_all(|_, _| Bytes::from_static(b"id: end\n\n"));
        assert_eq!(topic.lock().streams, 0);
        assert_eq!(members.0.poll_recv(), Poll::Ready(Some(ev("id: end\n\n"))));
        assert_eq!(members.1.poll_recv(), Poll::Ready(Some(ev("id: end\n\n"))));
        let mut state = topic.lock();
        state.insert_group(ab.clone());
        state.remove_group(&ab);
        assert!(state.key_groups.is_empty() && !state.holds_group(&ab));
    }

    #[test]
    fn a_stream_reads_its_queue_to_the_end_then_its_place_in_the_log() {
        let (_, _ready, _fanout, group, topic) = group(8);
        let mut cx = Context::from_waker(Waker::noop());
        let (tx, rx) = queue::channel(8, usize::MAX);
        let slot = Arc::new(Mutex::new(None));
        let mut events = Events::then(rx, slot.clone(), None);
        tx.try_send(ev("replayed")).unwrap();
        // The hand-over: its place in the log from the next event on, its queue then ends.
        *slot.lock() = Some(join(&topic, &group, 0));
        group.push(&ev("live"));
        assert_eq!(events.poll_recv(&mut cx), Poll::Ready(Some(ev("replayed"))));
        assert_eq!(events.try_recv(), None, "one source per call");
        assert_eq!(
            events.poll_recv(&mut cx),
            Poll::Pending,
            "the queue goes on"
        );
        drop(tx);
        assert_eq!(events.poll_recv(&mut cx), Poll::Ready(Some(ev("live"))));
        assert!(matches!(events, Events::Group(_)));
        assert!(slot.lock().is_none());
        // No place left in the slot (cut off before its hand-over): the stream ends.
        let (tx, rx) = queue::channel(8, usize::MAX);
        let mut events = Events::then(rx, Arc::new(Mutex::new(None)), None);
        drop(tx);
        assert_eq!(events.poll_recv(&mut cx), Poll::Ready(None));
    }
}
