//! The replay ring: one topic's recent events in dispatch order, bounded in bytes.
//!
//! Kept in the order the hub dispatched them, so every stored event's id (the hub's position
//! after it) stays valid for a client that resumes from inside the ring. `start` is the
//! position before the oldest entry: the ring holds every record at or after it, so a resume
//! from a position at or after `start` on every partition is served from memory.
//!
//! A resumed stream reads the ring in place: its [`Replay`] is a place in the ring (a sequence
//! number) and the end the ring had when the stream went live, so a stream holds no handle on
//! an event before it sends it, however far back it resumed. The ring sits behind a lock of its
//! own, taken under the topic's lock by the Kafka reader that appends and alone by the readers;
//! nothing is locked under it. A replay whose next entry the ring has already dropped (its
//! client read more slowly than the topic's records filled the ring) ends its stream, counted
//! as a slow-stream cut-off: the client resumes from its last id, from Kafka.
//!
//! A record that no stream took when it was dispatched is kept as it came (its value, or the
//! size of a value over `KSG_MAX_EVENT_BYTES`) and encoded when a replay first needs it, with
//! the id the hub would have given it (the replay walks the ring with the hub's position): a
//! record nobody reads costs no encoding. Once encoded, every replay shares the bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::RwLock;
use prometheus::IntCounter;

use super::floor::{id_for, judge, Verdict};
use crate::filter::{Filter, HeaderSource, Subject};
use crate::keyset::Keys;
use crate::position;
use crate::sse::{self, Format};

/// Fixed per-entry bookkeeping counted against the byte budget.
pub(crate) const ENTRY_OVERHEAD: usize = 64;

/// One dispatched record.
pub struct Entry {
    /// Partition of the record.
    pub partition: usize,
    /// Offset of the record.
    pub offset: i64,
    /// Key, for key-filtered replays.
    pub key: Option<Bytes>,
    /// The record as it came: what an envelope, or a plain event no stream took, is made of.
    record: Record,
    meta: Meta,
    /// The topic's partitions when it was dispatched: its ids name those.
    partitions: u32,
    /// Its plain event: encoded when it was dispatched (a stream took it), or by the first
    /// replay that needs it.
    plain: OnceLock<Bytes>,
    /// Its event in the envelope format, encoded by the first replay that needs it.
    envelope: OnceLock<Bytes>,
    /// The plain event came with the entry (counted in its cost, not as encoded later).
    plain_given: bool,
}

/// What a record's envelope says beyond its key and value.
#[derive(Clone, Default)]
pub struct Meta {
    /// Milliseconds since the epoch, if the record has a timestamp.
    pub timestamp_ms: Option<i64>,
    /// Its headers as a JSON object, if it has any.
    pub headers: Option<Bytes>,
}

/// What an event not encoded yet is made of.
pub enum Record {
    /// The record's value (`None`: a tombstone).
    Value(Option<Bytes>),
    /// A value over `KSG_MAX_EVENT_BYTES`, of this many bytes: its event is the
    /// `event: oversize` notice.
    Oversize(usize),
}

impl Entry {
    /// A record dispatched on a topic of `partitions` partitions; `plain`: its plain event, if
    /// a stream took it (otherwise encoded when a replay first needs it).
    pub fn new(
        (partition, offset): (usize, i64),
        key: Option<Bytes>,
        record: Record,
        meta: Meta,
        partitions: usize,
        plain: Option<Bytes>,
    ) -> Entry {
        let plain_given = plain.is_some();
        Entry {
            partition,
            offset,
            key,
            record,
            meta,
            partitions: partitions as u32,
            plain: plain.map_or_else(OnceLock::new, OnceLock::from),
            envelope: OnceLock::new(),
            plain_given,
        }
    }

    /// True when the record is among `keys` (`None`: every record) and passes `filter`.
    fn in_view(&self, keys: Option<&Keys>, filter: Option<&Filter>) -> bool {
        if keys.is_some_and(|keys| !keys.contains(self.key.as_deref())) {
            return false;
        }
        let Some(filter) = filter else {
            return true;
        };
        let headers = match &self.meta.headers {
            Some(json) => HeaderSource::Json(json),
            None => HeaderSource::None,
        };
        let subject = match &self.record {
            Record::Value(value) => Subject::new(headers, value.as_deref(), usize::MAX),
            Record::Oversize(_) => Subject::over_limit(headers),
        };
        filter.test(&subject).passes()
    }

    /// A record whose plain event was encoded as it was dispatched, without what other
    /// formats are made of: for tests of the plain format.
    #[cfg(test)]
    pub fn encoded(partition: usize, offset: i64, key: Option<Bytes>, event: Bytes) -> Entry {
        let (record, meta) = (Record::Value(None), Meta::default());
        Entry::new(
            (partition, offset),
            key,
            record,
            meta,
            usize::MAX,
            Some(event),
        )
    }

    /// A record no stream took, on a topic of `partitions` partitions: for tests.
    #[cfg(test)]
    pub fn later(
        partition: usize,
        offset: i64,
        key: Option<Bytes>,
        record: Record,
        partitions: usize,
    ) -> Entry {
        let meta = Meta::default();
        Entry::new((partition, offset), key, record, meta, partitions, None)
    }

    /// The bytes it holds as appended (an event encoded later is counted when it is; a value
    /// kept as a part of its plain event, once).
    fn cost(&self) -> usize {
        let value = match (&self.record, self.plain.get()) {
            (Record::Value(Some(value)), Some(plain))
                if plain.as_ptr_range().contains(&value.as_ptr()) =>
            {
                0
            }
            (Record::Value(value), _) => value.as_ref().map_or(0, Bytes::len),
            (Record::Oversize(_), _) => 0,
        };
        let plain = match self.plain_given {
            true => self.plain.get().map_or(0, Bytes::len),
            false => 0,
        };
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        value + plain + len(&self.key) + len(&self.meta.headers) + ENTRY_OVERHEAD
    }

    /// The bytes of events encoded after it was appended.
    fn encoded_later(&self) -> usize {
        let plain = match self.plain_given {
            true => 0,
            false => self.plain.get().map_or(0, Bytes::len),
        };
        plain + self.envelope.get().map_or(0, Bytes::len)
    }

    /// Its event in `format`, encoded now if it was not, with the id of `after` (the hub's
    /// position after the record) on topic `topic`; counted in `ring`.
    fn event(&self, format: Format, topic: &Named, after: &[i64], ring: &Ring) -> &Bytes {
        let cell = match format {
            Format::Plain => &self.plain,
            Format::Envelope => &self.envelope,
        };
        cell.get_or_init(|| {
            let partitions = self.partitions as usize;
            let id = position::encode_dense(topic.1, &after[..partitions.min(after.len())]);
            let event = match (&self.record, format) {
                (Record::Oversize(bytes), _) => {
                    sse::oversize_event(&id, self.partition, self.offset, *bytes)
                }
                (Record::Value(value), Format::Plain) => {
                    sse::record_event(&id, self.key.as_deref(), value.as_deref())
                }
                (Record::Value(value), Format::Envelope) => {
                    let envelope = sse::Envelope {
                        topic: topic.0,
                        partition: self.partition,
                        offset: self.offset,
                        timestamp_ms: self.meta.timestamp_ms,
                        key: self.key.as_deref(),
                        value: value.as_deref(),
                        headers: self.meta.headers.as_deref(),
                    };
                    sse::envelope_event(&id, &envelope)
                }
            };
            ring.encoded_later.fetch_add(event.len(), Ordering::Relaxed);
            if let Some(encoded) = &ring.encoded {
                encoded.inc();
            }
            event
        })
    }
}

/// A topic's name and fingerprint, for the events a replay encodes.
type Named<'a> = (&'a str, u32);

/// Entries between two marks: a replay finds its start from the latest mark before it, walking
/// at most this many entries more than those it sends.
const MARK_EVERY: u64 = 256;

/// The ring of one topic.
pub struct Ring {
    entries: VecDeque<Entry>,
    /// The sequence number of the oldest entry (one more for each entry ever appended before).
    first: u64,
    /// The bytes of the entries as appended, and of the events encoded since (by replays,
    /// under the read lock); both count against `limit`.
    bytes: usize,
    encoded_later: AtomicUsize,
    /// The total last reported by [`Ring::push`].
    reported: usize,
    /// Counts the events encoded by replays (the topic's `ksg_records_encoded_total`).
    encoded: Option<IntCounter>,
    limit: usize,
    /// The position before the oldest entry.
    start: Vec<i64>,
    /// The position after the newest entry.
    last: Vec<i64>,
    /// Every [`MARK_EVERY`]th entry's sequence number and the position before it, oldest first.
    marks: VecDeque<(u64, Vec<i64>)>,
}

/// A topic's ring behind its own lock, shared by the topic and the replays reading it.
pub type Shared = Arc<RwLock<Ring>>;

impl Ring {
    /// An empty ring whose coverage starts at `position`, holding at most `limit` bytes.
    pub fn new(limit: usize, position: Vec<i64>) -> Ring {
        Ring {
            entries: VecDeque::new(),
            first: 0,
            bytes: 0,
            encoded_later: AtomicUsize::new(0),
            reported: 0,
            encoded: None,
            limit,
            last: position.clone(),
            start: position,
            marks: VecDeque::new(),
        }
    }

    /// The ring counts the events its replays encode in `encoded`.
    pub fn counting(mut self, encoded: IntCounter) -> Ring {
        self.encoded = Some(encoded);
        self
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes + self.encoded_later.load(Ordering::Relaxed)
    }

    /// Appends an entry and evicts the oldest ones beyond the budget. Returns the change in
    /// bytes since the last call (events encoded by replays meanwhile included).
    pub fn push(&mut self, entry: Entry) -> isize {
        if self.end() % MARK_EVERY == 0 {
            self.marks.push_back((self.end(), self.last.clone()));
        }
        if let Some(last) = self.last.get_mut(entry.partition) {
            *last = entry.offset + 1;
        }
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        while self.bytes() > self.limit {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
            self.encoded_later
                .fetch_sub(old.encoded_later(), Ordering::Relaxed);
            self.first += 1;
            self.start[old.partition] = old.offset + 1;
        }
        while self.marks.front().is_some_and(|(seq, _)| *seq < self.first) {
            self.marks.pop_front();
        }
        let now = self.bytes();
        let change = now as isize - self.reported as isize;
        self.reported = now;
        change
    }

    /// Partitions added to the topic: the ring holds all of them from their log start.
    pub fn grow(&mut self, starts: &[i64]) {
        let positions = self.marks.iter_mut().map(|(_, position)| position);
        for position in [&mut self.start, &mut self.last]
            .into_iter()
            .chain(positions)
        {
            position.extend_from_slice(starts);
        }
    }

    /// True when every partition of `from` is at or after the ring's start (no gap).
    pub fn covers(&self, from: &[i64]) -> bool {
        from.len() == self.start.len() && from.iter().zip(&self.start).all(|(f, s)| f >= s)
    }

    /// The sequence number the next entry appended gets.
    pub fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// The entry of sequence number `seq`, while the ring holds it.
    fn get(&self, seq: u64) -> Option<&Entry> {
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.entries.get(index)
    }

    /// The entries from the latest one a client at `from` may still need, each with its
    /// sequence number, in dispatch order; and the position before the first. That is the
    /// latest mark whose position is at or before `from` on every partition (every entry before
    /// it is one the client has), or the oldest entry.
    fn walk_from(&self, from: &[i64]) -> (Vec<i64>, impl Iterator<Item = (u64, &Entry)> + '_) {
        let before =
            |p: &Vec<i64>| p.len() == from.len() && p.iter().zip(from).all(|(a, b)| a <= b);
        // Positions only grow from mark to mark: the usable marks come first.
        let usable = self.marks.partition_point(|(_, position)| before(position));
        let (seq, position) = match usable.checked_sub(1).and_then(|i| self.marks.get(i)) {
            Some((seq, position)) => (*seq, position.clone()),
            None => (self.first, self.start.clone()),
        };
        let index = usize::try_from(seq - self.first).unwrap_or(usize::MAX);
        let entries = self.entries.range(index.min(self.entries.len())..);
        (position, (seq..).zip(entries))
    }
}

/// A stream's replay: its place in the ring, read in place. Made under the topic's lock when
/// the stream goes live, so its end is exactly where the stream's live events begin.
pub struct Replay {
    /// The ring, and the topic's slow-stream cut-offs, counted when the ring drops what the
    /// replay had left; `None`: nothing from the ring, only the prefix.
    ring: Option<(Shared, IntCounter)>,
    /// Sent first: what a catch-up reader hands over with the replay (the rest of a snapshot).
    prefix: Option<Bytes>,
    /// The next entry to look at, and one past the last one of the replay.
    next: u64,
    end: u64,
    /// The hub's position before entry `next` (ids named for the stream are made from it).
    position: Vec<i64>,
    /// The position the client already has, until an event's id covers it.
    floor: Option<Vec<i64>>,
    keys: Option<Keys>,
    filter: Option<Filter>,
    scope: Option<usize>,
    fingerprint: u32,
    format: Format,
    /// The topic's name, for envelopes (empty for the plain format).
    topic: String,
}

/// What a stream's replay starts from: its filter, its ids and the position its client has.
pub struct Origin<'a> {
    /// The stream's keys (`None`: every record).
    pub keys: Option<&'a Keys>,
    /// The format of its events.
    pub format: Format,
    /// The tests its records pass, if any.
    pub filter: Option<&'a Filter>,
    /// Its topic's name (which envelopes carry).
    pub topic: &'a str,
    /// The partition its ids name alone, for a short-id key stream.
    pub scope: Option<usize>,
    /// The topic's fingerprint, for the ids made for the stream.
    pub fingerprint: u32,
    /// The position its client already has.
    pub position: Vec<i64>,
}

/// The ring dropped an entry a replay had not read yet.
#[derive(Debug, PartialEq, Eq)]
pub struct Behind;

impl Replay {
    /// The replay of what the ring (`shared`, locked as `held`) holds after `from` for a
    /// stream, and the stream's floor once it has read it all (`None`: its ids are the shared
    /// ones from then on). Walks the entries from the latest mark before `from`, without
    /// touching their bytes, to find the first one the stream gets and the floor after the last.
    pub fn start(
        shared: &Shared,
        held: &Ring,
        from: Origin<'_>,
        cutoffs: &IntCounter,
    ) -> (Replay, Option<Vec<i64>>) {
        let (mut position, entries) = held.walk_from(&from.position);
        let mut floor = Some(from.position.clone());
        let mut begin: Option<(u64, Vec<i64>)> = None;
        for (seq, entry) in entries {
            if floor.is_none() {
                break;
            }
            let p = entry.partition;
            let before = std::mem::replace(&mut position[p], entry.offset + 1);
            if !entry.in_view(from.keys, from.filter) {
                continue;
            }
            let verdict = judge(&mut floor, p, entry.offset, &position);
            if begin.is_none() && verdict != Verdict::Skip {
                let mut at = position.clone();
                at[p] = before;
                begin = Some((seq, at));
            }
        }
        let end = held.end();
        let (next, position) = begin.unwrap_or((end, Vec::new()));
        let replay = Replay {
            ring: Some((shared.clone(), cutoffs.clone())),
            prefix: None,
            next,
            end,
            position,
            floor: Some(from.position),
            keys: from.keys.cloned(),
            filter: from.filter.cloned(),
            scope: from.scope,
            fingerprint: from.fingerprint,
            format: from.format,
            topic: match from.format {
                Format::Plain => String::new(),
                Format::Envelope => from.topic.to_string(),
            },
        };
        (replay, floor)
    }

    /// A replay of nothing from the ring: only `prefix`, if any.
    pub fn nothing_but(prefix: Option<Bytes>) -> Replay {
        Replay {
            ring: None,
            prefix,
            next: 0,
            end: 0,
            position: Vec::new(),
            floor: None,
            keys: None,
            filter: None,
            scope: None,
            fingerprint: 0,
            format: Format::Plain,
            topic: String::new(),
        }
    }

    /// The same replay, with `prefix` sent before it.
    pub fn after(mut self, prefix: Option<Bytes>) -> Replay {
        self.prefix = prefix;
        self
    }

    /// True when the replay has nothing to send.
    pub fn is_empty(&self) -> bool {
        self.prefix.is_none() && self.next >= self.end
    }

    /// The next event of the replay, `Ok(None)` once it has sent everything, or [`Behind`]
    /// (counted as a cut-off) when the ring no longer holds its next entry.
    pub fn next_event(&mut self) -> Result<Option<Bytes>, Behind> {
        if let Some(prefix) = self.prefix.take() {
            return Ok(Some(prefix));
        }
        let Some((ring, cutoffs)) = &self.ring else {
            return Ok(None);
        };
        let ring = ring.read();
        while self.next < self.end {
            let Some(entry) = ring.get(self.next) else {
                self.next = self.end;
                cutoffs.inc();
                return Err(Behind);
            };
            self.next += 1;
            let p = entry.partition;
            if p >= self.position.len() {
                // Not in the ring when the replay started: cannot happen; skipped, not sent.
                continue;
            }
            self.position[p] = entry.offset + 1;
            if !entry.in_view(self.keys.as_ref(), self.filter.as_ref()) {
                continue;
            }
            // The id the stream gets, when it is not the shared event's own.
            let id = match judge(&mut self.floor, p, entry.offset, &self.position) {
                Verdict::Skip => continue,
                Verdict::Shared if self.scope.is_none() => None,
                Verdict::Shared => Some(id_for(self.fingerprint, self.scope, &self.position)),
                Verdict::Raised => {
                    let floor = self.floor.as_deref().unwrap_or(&self.position);
                    Some(id_for(self.fingerprint, self.scope, floor))
                }
            };
            let topic = (self.topic.as_str(), self.fingerprint);
            let event = entry.event(self.format, &topic, &self.position, &ring);
            return Ok(Some(match id {
                None => event.clone(),
                Some(id) => sse::with_id(event, &id),
            }));
        }
        Ok(None)
    }
}

/// A ring of `events` (one partition, offsets from 0, `limit` bytes) and a replay of all of
/// them: for tests of what reads a replay.
#[cfg(test)]
pub(crate) fn replay_of(events: &[Bytes], limit: usize) -> (Shared, Replay) {
    let mut ring = Ring::new(limit, vec![0]);
    for (offset, event) in (0..).zip(events) {
        ring.push(Entry::encoded(0, offset, None, event.clone()));
    }
    let shared = Arc::new(RwLock::new(ring));
    let origin = Origin {
        keys: None,
        format: Format::Plain,
        filter: None,
        topic: "t",
        scope: None,
        fingerprint: 0,
        position: vec![0],
    };
    let cutoffs = IntCounter::new("cutoffs", "cutoffs").unwrap();
    let (replay, _) = Replay::start(&shared, &shared.read(), origin, &cutoffs);
    (shared, replay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position;

    fn entry(partition: usize, offset: i64, size: usize) -> Entry {
        Entry::encoded(partition, offset, None, Bytes::from(vec![b'x'; size]))
    }

    #[test]
    fn evicts_oldest_and_moves_start() {
        let mut ring = Ring::new(3 * (100 + ENTRY_OVERHEAD), vec![10, 20]);
        ring.push(entry(0, 10, 100));
        ring.push(entry(1, 20, 100));
        ring.push(entry(0, 11, 100));
        assert!(ring.covers(&[10, 20]));
        ring.push(entry(1, 21, 100));
        assert_eq!(ring.bytes(), 3 * (100 + ENTRY_OVERHEAD));
        assert!(
            !ring.covers(&[10, 20]),
            "offset 10 of partition 0 was evicted"
        );
        assert!(ring.covers(&[11, 20]));
        assert_eq!((ring.first, ring.end()), (1, 4));
        assert!(ring.get(0).is_none(), "evicted");
        assert_eq!(ring.get(3).map(|e| (e.partition, e.offset)), Some((1, 21)));
        assert!(ring.get(4).is_none(), "not yet appended");
    }

    /// A ring from position [10, 20] holding p0@10 (key a), p1@20 (key b), p0@11 (key a), each
    /// encoded with the dense id of the position after it, as the hub encodes them.
    fn keyed(fp: u32, limit: usize) -> (Shared, Vec<Bytes>) {
        let mut ring = Ring::new(limit, vec![10, 20]);
        let mut events = Vec::new();
        let mut at = vec![10, 20];
        for (partition, offset, key) in [(0, 10, "a"), (1, 20, "b"), (0, 11, "a")] {
            at[partition] = offset + 1;
            let event = sse::record_event(
                &position::encode_dense(fp, &at),
                Some(key.as_bytes()),
                Some(b"v"),
            );
            events.push(event.clone());
            ring.push(Entry::encoded(
                partition,
                offset,
                Some(Bytes::from(key)),
                event,
            ));
        }
        (Arc::new(RwLock::new(ring)), events)
    }

    fn from<'a>(keys: Option<&'a Keys>, scope: Option<usize>, fp: u32, at: &[i64]) -> Origin<'a> {
        Origin {
            keys,
            format: Format::Plain,
            filter: None,
            topic: "t",
            scope,
            fingerprint: fp,
            position: at.to_vec(),
        }
    }

    fn start(ring: &Shared, from: Origin<'_>) -> (Replay, Option<Vec<i64>>) {
        let held = ring.read();
        Replay::start(ring, &held, from, &IntCounter::new("c", "c").unwrap())
    }

    /// Everything the replay sends, to its end.
    fn drain(replay: &mut Replay) -> Vec<Bytes> {
        std::iter::from_fn(|| replay.next_event().unwrap()).collect()
    }

    #[test]
    fn a_replay_sends_the_rings_own_bytes_once_the_floor_is_covered() {
        let fp = position::fingerprint("t");
        let (ring, events) = keyed(fp, 1 << 20);
        let (mut replay, floor) = start(&ring, from(None, None, fp, &[10, 20]));
        assert_eq!(floor, None);
        let sent = drain(&mut replay);
        assert_eq!(sent, events);
        assert!(
            sent.iter()
                .zip(&events)
                .all(|(a, b)| a.as_ptr() == b.as_ptr()),
            "the ring's own bytes, not copies"
        );
        let (mut replay, floor) = start(
            &ring,
            from(Some(&Keys::one(b"a".to_vec())), None, fp, &[11, 20]),
        );
        assert_eq!(floor, None);
        assert_eq!(
            drain(&mut replay),
            [events[2].clone()],
            "only key a, after offset 10"
        );
        let (replay, floor) = start(&ring, from(None, None, fp, &[12, 21]));
        assert!(replay.is_empty(), "the client has everything");
        assert_eq!(floor, Some(vec![12, 21]), "no event: the floor stays");
        assert!(!replay.after(Some(Bytes::from_static(b"p"))).is_empty());
    }

    #[test]
    fn a_replay_raises_ids_below_the_floor_and_names_only_the_scope() {
        let fp = position::fingerprint("t");
        let (ring, events) = keyed(fp, 1 << 20);
        // Another replica's client has p0 up to 12: p0@10 and p0@11 are skipped, p1@20 goes
        // out with an id that covers both positions, and the floor stays.
        let (mut replay, floor) = start(&ring, from(None, None, fp, &[12, 20]));
        assert_eq!(floor, Some(vec![12, 21]));
        let raised = sse::with_id(&events[1], &position::encode_dense(fp, &[12, 21]));
        assert_eq!(drain(&mut replay), [raised]);
        // A short-id stream of key a on partition 0 gets ids naming p0 alone.
        let (mut replay, floor) = start(
            &ring,
            from(Some(&Keys::one(b"a".to_vec())), Some(0), fp, &[11, 21]),
        );
        assert_eq!(floor, None);
        let short = sse::with_id(&events[2], &position::encode_sparse(fp, &[(0, 12)]));
        assert_eq!(drain(&mut replay), [short]);
    }

    #[test]
    fn a_replay_walks_from_the_latest_mark_before_it_and_sends_what_a_walk_from_the_oldest_would() {
        let fp = position::fingerprint("t");
        // 1,000 entries of two partitions, unevenly interleaved; the ring keeps about 700.
        let mut ring = Ring::new(700 * (10 + ENTRY_OVERHEAD), vec![0, 100]);
        let mut at = vec![0, 100];
        let mut after = Vec::new();
        for i in 0..1000 {
            let p = usize::from(i % 3 == 0);
            ring.push(Entry::encoded(
                p,
                at[p],
                None,
                Bytes::from(format!("{i:010}")),
            ));
            at[p] += 1;
            after.push(at.clone());
        }
        assert_eq!((ring.first, ring.end()), (300, 1000));
        assert!(ring
            .marks
            .iter()
            .all(|(seq, _)| seq % MARK_EVERY == 0 && *seq >= 300));
        assert_eq!(ring.marks.len(), 2, "512 and 768");
        let shared = Arc::new(RwLock::new(ring));
        for i in (300..1000).step_by(7) {
            let client = &after[i - 1];
            let (walked, _) = shared.read().walk_from(client).1.next().unwrap();
            let mark = if i >= 768 {
                768
            } else if i >= 512 {
                512
            } else {
                300
            };
            assert_eq!(walked, mark, "resumed before entry {i}");
            let (mut replay, floor) = start(&shared, from(None, None, fp, client));
            assert_eq!(floor, None);
            let sent = drain(&mut replay);
            let expected: Vec<Bytes> = (i..1000).map(|j| Bytes::from(format!("{j:010}"))).collect();
            assert_eq!(sent, expected, "resumed before entry {i}");
        }
        // A partition added: the marks name it too, and still serve.
        shared.write().grow(&[7]);
        let mut client = after[899].clone();
        client.push(7);
        assert_eq!(shared.read().walk_from(&client).1.next().unwrap().0, 768);
        let (mut replay, _) = start(&shared, from(None, None, fp, &client));
        assert_eq!(drain(&mut replay).len(), 100);
    }

    #[test]
    fn a_replay_reads_in_place_and_ends_where_it_started_live() {
        let fp = position::fingerprint("t");
        let (ring, events) = keyed(fp, 1 << 20);
        let (mut replay, _) = start(&ring, from(None, None, fp, &[10, 20]));
        assert_eq!(replay.next_event(), Ok(Some(events[0].clone())));
        // Appended after the stream went live: its live events, not its replay.
        ring.write().push(entry(1, 21, 10));
        assert_eq!(drain(&mut replay), events[1..]);
    }

    #[test]
    fn a_replay_the_ring_outran_ends_its_stream_counted() {
        let fp = position::fingerprint("t");
        let (ring, events) = keyed(fp, 1 << 20);
        let cutoffs = IntCounter::new("c", "c").unwrap();
        let (replay, _) = {
            let held = ring.read();
            Replay::start(&ring, &held, from(None, None, fp, &[10, 20]), &cutoffs)
        };
        let mut replay = replay.after(Some(Bytes::from_static(b"prefix")));
        assert_eq!(replay.next_event(), Ok(Some(Bytes::from_static(b"prefix"))));
        assert_eq!(replay.next_event(), Ok(Some(events[0].clone())));
        // The ring drops the next two entries before the stream reads them.
        {
            let mut held = ring.write();
            held.limit = 0;
            held.push(entry(1, 21, 10));
        }
        assert_eq!(replay.next_event(), Err(Behind));
        assert_eq!(cutoffs.get(), 1);
        assert_eq!(replay.next_event(), Ok(None), "over once behind");
    }

    #[test]
    fn a_record_no_stream_took_is_encoded_once_when_a_replay_first_needs_it() {
        let fp = position::fingerprint("t");
        let encoded = IntCounter::new("encoded", "encoded").unwrap();
        let mut ring = Ring::new(1 << 20, vec![10, 20]).counting(encoded.clone());
        // A value, a tombstone and a value over the limit kept as they came; one encoded at
        // dispatch between them. The eager encodings are what the hub would have sent.
        let mut at = vec![10, 20];
        let mut eager = Vec::new();
        let records: [(usize, i64, Option<&[u8]>, Record); 4] = [
            (
                0,
                10,
                Some(b"a"),
                Record::Value(Some(Bytes::from_static(b"v1"))),
            ),
            (
                1,
                20,
                Some(b"b"),
                Record::Value(Some(Bytes::from_static(b"v2"))),
            ),
            (1, 21, Some(b"a"), Record::Value(None)),
            (0, 11, None, Record::Oversize(5000)),
        ];
        for (i, (p, offset, key, record)) in records.into_iter().enumerate() {
            at[p] = offset + 1;
            let id = position::encode_dense(fp, &at);
            let event = match &record {
                Record::Value(value) => sse::record_event(&id, key, value.as_deref()),
                Record::Oversize(bytes) => sse::oversize_event(&id, p, offset, *bytes),
            };
            eager.push(event.clone());
            let key = key.map(Bytes::copy_from_slice);
            ring.push(match i {
                1 => Entry::encoded(p, offset, key, event),
                _ => Entry::later(p, offset, key, record, 2),
            });
        }
        let appended = ring.bytes();
        assert_eq!(encoded.get(), 0, "nothing encoded while nobody reads");
        let ring = Arc::new(RwLock::new(ring));
        let (mut replay, _) = start(&ring, from(None, None, fp, &[10, 20]));
        let first = drain(&mut replay);
        assert_eq!(first, eager, "the bytes the hub would have sent");
        assert_eq!(encoded.get(), 3, "each kept record encoded once");
        let later: usize = [0, 2, 3].iter().map(|&i| eager[i].len()).sum();
        assert_eq!(
            ring.read().bytes(),
            appended + later,
            "counted in the ring's bytes"
        );
        // A second replay shares the bytes the first one made.
        let (mut replay, _) = start(&ring, from(None, None, fp, &[10, 20]));
        let second = drain(&mut replay);
        assert!(first
            .iter()
            .zip(&second)
            .all(|(a, b)| a.as_ptr() == b.as_ptr()));
        assert_eq!(encoded.get(), 3);
        // Key a only, short ids of partition 1: made from the kept record's encoding.
        let (mut replay, _) = start(
            &ring,
            from(Some(&Keys::one(b"a".to_vec())), Some(1), fp, &[11, 20]),
        );
        let short = sse::with_id(&eager[2], &position::encode_sparse(fp, &[(1, 22)]));
        assert_eq!(drain(&mut replay), [short]);
        // Evicted, an entry takes its encoding's bytes with it.
        let mut held = ring.write();
        held.limit = 0;
        held.push(Entry::later(0, 12, None, Record::Value(None), 2));
        assert_eq!(held.bytes(), 0);
    }

    #[test]
    fn a_replay_in_the_envelope_format_encodes_each_record_as_it_came_with_the_same_ids() {
        let fp = position::fingerprint("orders");
        let mut ring = Ring::new(1 << 20, vec![0, 0]);
        let headers = sse::headers_json([("tenant", Some(&b"acme"[..]))]);
        let mut plain = Vec::new();
        let mut at = vec![0, 0];
        // Taken at dispatch (its plain event given), then one no stream took, then a tombstone.
        for (p, offset, value, taken) in [
            (1, 0, Some("v0"), true),
            (0, 0, Some("v1"), false),
            (1, 1, None, true),
        ] {
            at[p] = offset + 1;
            let id = position::encode_dense(fp, &at);
            let event = sse::record_event(&id, Some(b"k"), value.map(str::as_bytes));
            plain.push(event.clone());
            let meta = Meta {
                timestamp_ms: Some(1000 + offset),
                headers: headers.clone(),
            };
            let record = Record::Value(value.map(|v| Bytes::copy_from_slice(v.as_bytes())));
            let key = Some(Bytes::from_static(b"k"));
            ring.push(Entry::new(
                (p, offset),
                key,
                record,
                meta,
                2,
                taken.then_some(event),
            ));
        }
        let shared = Arc::new(RwLock::new(ring));
        let origin = |format| Origin {
            keys: None,
            format,
            filter: None,
            topic: "orders",
            scope: None,
            fingerprint: fp,
            position: vec![0, 0],
        };
        let (mut replay, _) = start(&shared, origin(Format::Plain));
        assert_eq!(
            drain(&mut replay),
            plain,
            "the plain events, the given ones shared"
        );
        let (mut replay, _) = start(&shared, origin(Format::Envelope));
        let sent = drain(&mut replay);
        assert_eq!(sent.len(), 3);
        for (envelope, plain) in sent.iter().zip(&plain) {
            let (text, plain) = (
                String::from_utf8_lossy(envelope),
                String::from_utf8_lossy(plain),
            );
            let id = |t: &str| {
                t.lines()
                    .find(|l| l.starts_with("id: "))
                    .map(str::to_string)
            };
            assert_eq!(id(&text), id(&plain), "the same id");
            let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let json: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(json["topic"], "orders");
            assert_eq!(json["key"], "k");
            assert_eq!(json["headers"], serde_json::json!({"tenant": "acme"}));
            assert_eq!(json["timestamp"], 1000 + json["offset"].as_i64().unwrap());
        }
        let value = |e: &Bytes| {
            let t = String::from_utf8_lossy(e).to_string();
            let data = t
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap()
                .to_string();
            serde_json::from_str::<serde_json::Value>(&data).unwrap()["value"].clone()
        };
        assert_eq!(value(&sent[0]), "v0");
        assert_eq!(value(&sent[1]), "v1");
        assert_eq!(value(&sent[2]), serde_json::Value::Null);
        assert!(String::from_utf8_lossy(&sent[2]).starts_with("event: delete\n"));
        // Encoded once: a second replay shares the bytes.
        let (mut again, _) = start(&shared, origin(Format::Envelope));
        assert!(drain(&mut again)
            .iter()
            .zip(&sent)
            .all(|(a, b)| a.as_ptr() == b.as_ptr()));
    }

    #[test]
    fn a_value_kept_within_its_plain_event_is_counted_once() {
        let event = sse::record_event("ID", Some(b"k"), Some(b"one line"));
        let within = sse::value_within(&event, b"one line").unwrap();
        let entry = |value: Bytes| {
            let record = Record::Value(Some(value));
            Entry::new(
                (0, 0),
                None,
                record,
                Meta::default(),
                1,
                Some(event.clone()),
            )
        };
        let shared = entry(within);
        assert_eq!(shared.cost(), event.len() + ENTRY_OVERHEAD);
        let copied = entry(Bytes::from_static(b"one line"));
        assert_eq!(copied.cost(), event.len() + 8 + ENTRY_OVERHEAD);
    }

    #[test]
    fn an_oversized_event_does_not_stay() {
        let mut ring = Ring::new(50, vec![0]);
        ring.push(entry(0, 0, 1000));
        assert_eq!(ring.bytes(), 0);
        assert!(ring.covers(&[1]) && !ring.covers(&[0]));
    }

    #[test]
    fn wrong_partition_count_is_not_covered() {
        assert!(!Ring::new(10, vec![0, 0]).covers(&[0]));
    }

    /// The replay as it was before it read the ring in place: every entry walked from the
    /// oldest, each event judged against the floor as it came, every event encoded as it was
    /// dispatched (`eager`, by sequence number). The in-place replay must send exactly this,
    /// and leave the same floor.
    fn walked(ring: &Ring, eager: &[Bytes], from: Origin<'_>) -> (Vec<Bytes>, Option<Vec<i64>>) {
        let (fp, scope) = (from.fingerprint, from.scope);
        let mut floor = Some(from.position);
        let mut position = ring.start.clone();
        let mut sent = Vec::new();
        for (seq, entry) in (ring.first..).zip(&ring.entries) {
            let event = &eager[seq as usize];
            position[entry.partition] = entry.offset + 1;
            if from.keys.is_some_and(|k| !k.contains(entry.key.as_deref())) {
                continue;
            }
            let shared = match scope {
                None => event.clone(),
                Some(_) => sse::with_id(event, &id_for(fp, scope, &position)),
            };
            let (p, offset) = (entry.partition, entry.offset);
            let event = super::super::floor::for_stream(
                &mut floor, scope, p, offset, &position, &shared, fp,
            );
            sent.extend(event);
        }
        (sent, floor)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        #[test]
        fn a_replay_in_place_sends_what_a_walk_from_the_oldest_entry_sends(
            records in proptest::collection::vec((0usize..3, 0u8..3, proptest::prelude::any::<bool>()), 1..1200),
            kept in 50usize..1500,
            resume in proptest::prelude::any::<proptest::sample::Index>(),
            own in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 3),
            at_an_event in proptest::prelude::any::<bool>(),
            key in proptest::option::of(0u8..4),
            scope in proptest::option::of(0usize..3),
        ) {
            let fp = position::fingerprint("t");
            let names = [&b"a"[..], b"b", b"c"];
            let mut ring = Ring::new(kept * (40 + ENTRY_OVERHEAD), vec![5, 0, 9]);
            let mut at = vec![5, 0, 9];
            let mut after = Vec::new();
            let mut eager = Vec::new();
            // Records a stream took are encoded as dispatched, the others (`later`) when a
            // replay first needs them: a replay sends the same bytes either way.
            for (i, (p, k, later)) in records.iter().enumerate() {
                let offset = at[*p];
                at[*p] += 1;
                let value = format!("{i:06}");
                let key = Some(Bytes::from_static(names[usize::from(*k)]));
                let event = sse::record_event(
                    &position::encode_dense(fp, &at),
                    Some(names[usize::from(*k)]),
                    Some(value.as_bytes()),
                );
                eager.push(event.clone());
                ring.push(match later {
                    true => Entry::later(*p, offset, key, Record::Value(Some(Bytes::from(value))), 3),
                    false => Entry::encoded(*p, offset, key, event),
                });
                after.push(at.clone());
            }
            // The client's position: after one of the ring's events (an id this replica
            // gave), or anywhere between the ring's start and end on each partition (an id
            // from another replica, which interleaved the partitions otherwise).
            let held = ring.entries.len();
            let client: Vec<i64> = if at_an_event && held > 0 {
                after[records.len() - held + resume.index(held)].clone()
            } else {
                (0..3)
                    .map(|p| {
                        let span = (at[p] - ring.start[p] + 1) as usize;
                        ring.start[p] + own[p].index(span) as i64
                    })
                    .collect()
            };
            // A key, or (3) a set of two keys, whose streams carry full ids.
            let keys = key.map(|k| match k {
                3 => Keys::new(vec![b"a".to_vec(), b"c".to_vec()]).unwrap(),
                k => Keys::one(names[usize::from(k)].to_vec()),
            });
            let scope = scope.filter(|_| key != Some(3));
            let origin = || from(keys.as_ref(), scope, fp, &client);
            let (expected, expected_floor) = walked(&ring, &eager, origin());
            let shared = Arc::new(RwLock::new(ring));
            let (mut replay, floor) = start(&shared, origin());
            proptest::prop_assert_eq!(floor, expected_floor);
            proptest::prop_assert_eq!(drain(&mut replay), expected);
        }
    }
}
