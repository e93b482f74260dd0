//! The hub: a registry from topic to its live channel, key filters, replay and fan-out.
//!
//! The Kafka reader ([`crate::source::Source::read_live`]) calls [`Hub::dispatch`] for every
//! record, a batch at a time. Under the topic's lock it advances the topic's position vector,
//! encodes the event once if a stream takes it (its id is the vector after the record; a record
//! nobody takes is kept as it came, see [`replay`]), keeps it in the topic's replay ring and
//! appends the same [`Bytes`] once to each connection's shared
//! log of a matching view (every record, the record's key, or a set of keys holding it: such a
//! log is listed under each of its keys, so a record finds it once, through its key), where
//! every live stream, HTTP/2 or HTTP/1.1, reads at its own place ([`group`]). Only a resumed
//! stream whose id is ahead of the live position gets it in its own bounded queue ([`queue`]),
//! after its replay or catch-up, until the live position covers its id (streams of several
//! keys are found there through an index from key to streams, too). A full queue or log ends
//! the slow stream (counted); the consumer and the other streams never wait. Locks are never
//! held across an `.await`, and are taken in one order, written and checked in `order`: a
//! topic's state, then a connection's groups, then a group's log.
//!
//! Key streams read every partition and carry full ids, whatever partitioner the producers use.
//! When the operator promises a partitioner (`KSG_KEY_PARTITIONER`), a key stream reads only its
//! key's partition and its ids name only that partition; every keyed record the gateway reads
//! (live, catch-up, snapshot) is checked against the promise, and the first one off its
//! partition ends the promise for the topic: its short-id streams end with an id that tells any
//! replica to read every partition, and its key streams carry full ids from then on.
//!
//! A resumed stream carries a *floor*: the position its client already has. Records below the
//! floor are skipped; an event whose shared id does not yet cover the floor (the client came
//! from a replica that saw another interleaving of partitions) gets its id raised to cover both,
//! until the shared ids pass the floor and the stream shares bytes again.
//!
//! Layout: `topic`, one topic's state and streams; `subscribe`, opening a stream; `floor`, the
//! floor and id rules; `catchup`, reading from Kafka what the ring no longer holds; `lifecycle`,
//! attaching, growing and releasing topics; [`replay`], the ring; [`queue`], a stream's queue.

mod catchup;
mod floor;
pub mod group;
mod lifecycle;
pub mod merge;
mod order;
pub mod queue;
pub mod replay;
mod subscribe;
mod topic;

use std::cell::{OnceCell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use thiserror::Error;
use tracing::{debug, warn};

use crate::filter::{Filter, Subject, Tested};
use crate::metrics::Metrics;
use crate::partitioner::KeyPartitioner;
use crate::position;
use crate::source::{LiveRecord, RecordSink, Source, SourceError};
use crate::sse::{self, Format};
use floor::for_stream;
use group::Group;
pub use group::{Fanout, Seat};
use replay::{Entry, Meta, Record};
pub use subscribe::{Events, Parts, Subscription};
use topic::{KeyGroups, Listed, SetSubs, Sub, Topic, TopicState};

/// Why a stream could not be opened.
#[derive(Debug, Error)]
pub enum SubscribeError {
    /// Kafka says the topic does not exist (404).
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// Kafka did not answer (503).
    #[error("{0}")]
    Unavailable(String),
    /// The gateway is shutting down (503).
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl From<SourceError> for SubscribeError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::UnknownTopic(t) => SubscribeError::UnknownTopic(t),
            SourceError::Unavailable(e) => {
                SubscribeError::Unavailable(format!("Kafka is unavailable: {e}"))
            }
        }
    }
}

/// Hub settings.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Events queued per stream.
    pub queue: usize,
    /// Bytes of its own (catch-up and snapshot chunks) a stream may hold queued.
    pub queue_bytes: usize,
    /// Replay ring budget per topic, bytes.
    pub replay_bytes: usize,
    /// Catch-up readers (Kafka consumers) at most.
    pub catchup_readers: usize,
    /// A catch-up reader left unused this long is closed (its consumer's threads, connections
    /// and buffers given back).
    pub catchup_reader_idle: std::time::Duration,
    /// Bytes a snapshot may hold before it is sent early.
    pub snapshot_bytes: usize,
    /// Largest record value sent as an event; larger ones become `event: oversize`.
    pub max_event_bytes: usize,
    /// The partitioner the operator promises every producer uses: key streams' ids name only
    /// their key's partition while no record breaks the promise.
    pub key_partitioner: Option<KeyPartitioner>,
}

/// The hub of one gateway.
pub struct Hub {
    topics: DashMap<String, Arc<Topic>>,
    source: Arc<Source>,
    metrics: Metrics,
    config: HubConfig,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Serializes assignment changes so a release and a re-attach of one topic never cross.
    assignment: Arc<tokio::sync::Mutex<()>>,
    readers: catchup::Readers,
    /// Topics where a record broke the partitioner promise: full ids for the process lifetime.
    broken_promises: Mutex<HashSet<String>>,
    /// One copy of each distinct filter in use: a record is tested once per distinct filter.
    filters: crate::filter::Interner,
}

impl Hub {
    /// A hub reading from `source`.
    pub fn new(source: Arc<Source>, metrics: Metrics, config: HubConfig) -> Hub {
        Hub {
            topics: DashMap::new(),
            readers: catchup::Readers::new(config.catchup_readers),
            source,
            metrics,
            config,
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            assignment: Arc::new(tokio::sync::Mutex::new(())),
            broken_promises: Mutex::new(HashSet::new()),
            filters: crate::filter::Interner::default(),
        }
    }

    /// The size of a record's value over `KSG_MAX_EVENT_BYTES` (counted and logged), whose
    /// event is an `event: oversize` notice; `None` for a value within it, or a tombstone.
    fn oversize(
        &self,
        hub: &Topic,
        partition: usize,
        offset: i64,
        value: Option<&[u8]>,
    ) -> Option<usize> {
        let bytes = value?.len();
        if bytes <= self.config.max_event_bytes {
            return None;
        }
        hub.oversize.inc();
        debug!(topic = %hub.name, partition, offset, bytes, "record over KSG_MAX_EVENT_BYTES");
        Some(bytes)
    }

    /// Encodes one record, or an `event: oversize` notice for a value over the limit (counted).
    fn encode(
        &self,
        hub: &Topic,
        id: &str,
        partition: usize,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Bytes {
        match self.oversize(hub, partition, offset, value) {
            Some(bytes) => sse::oversize_event(id, partition, offset, bytes),
            None => sse::record_event(id, key, value),
        }
    }

    /// Encodes one record read by a catch-up reader in `format`: see [`Hub::encode`].
    fn encode_read(
        &self,
        hub: &Topic,
        format: Format,
        id: &str,
        partition: usize,
        message: &crate::source::Record<'_>,
    ) -> Bytes {
        let (offset, key, value) = (message.offset(), message.key(), message.payload());
        if format == Format::Plain {
            return self.encode(hub, id, partition, offset, key, value);
        }
        if let Some(bytes) = self.oversize(hub, partition, offset, value) {
            return sse::oversize_event(id, partition, offset, bytes);
        }
        let headers = message.headers_json();
        let envelope = sse::Envelope {
            topic: &hub.name,
            partition,
            offset,
            timestamp_ms: message.timestamp_ms(),
            key,
            value,
            headers: headers.as_deref(),
        };
        sse::envelope_event(id, &envelope)
    }

    /// A record was found off the partition the promised partitioner gives its key: counted,
    /// logged once per topic, and the topic's key streams carry full ids for good.
    fn promise_broken(&self, hub: &Topic, state: &mut TopicState, partition: usize, seen_by: &str) {
        if hub.broken.swap(true, Ordering::AcqRel) {
            return;
        }
        hub.mismatches.inc();
        let promise = hub.promise.map_or("", KeyPartitioner::name);
        warn!(topic = %hub.name, partition, seen_by, promise, "a record's key is not on the partition KSG_KEY_PARTITIONER promises: this topic's key streams read every partition and carry full ids from now on (short-id streams end and resume with nothing lost)");
        self.broken_promises.lock().insert(hub.name.clone());
        state.end_short_streams(hub.fingerprint);
    }

    /// The event with an id naming only partition `p`, for short-id key streams of `key`
    /// (`subs` and `groups`: the key's streams with queues of their own, and its groups);
    /// `None` when there are none.
    fn scoped_event(
        state: &TopicState,
        subs: Option<&HashMap<u64, Sub>>,
        groups: Option<&KeyGroups>,
        fingerprint: u32,
        (p, offset): (usize, i64),
        event: &Bytes,
    ) -> Option<Bytes> {
        if !state.key_scoping {
            return None;
        }
        let subs = subs.into_iter().flat_map(HashMap::values);
        let groups = groups.into_iter().flat_map(KeyGroups::iter);
        let any = subs
            .map(|sub| sub.scope)
            .chain(groups.map(|g| g.view().scope));
        if !any.into_iter().any(|scope| scope.is_some()) {
            return None;
        }
        let id = position::encode_sparse(fingerprint, &[(p as i32, offset + 1)]);
        Some(sse::with_id(event, &id))
    }

    /// Fans the records of one topic that came in a row out to its streams, under one lock of
    /// the topic, and keeps them in its ring under one lock of the ring. Called by the Kafka
    /// reader only.
    fn dispatch_run(&self, run: &[LiveRecord<'_>], now_ms: i64) {
        let Some(first) = run.first() else {
            return;
        };
        let Some(hub) = self.topics.get(first.topic).map(|e| e.value().clone()) else {
            return;
        };
        hub.records.inc_by(run.len() as u64);
        // Streams that move to their connection's group: dropped after the lock (a stream that
        // is gone leaves its cursor to them, and a cursor's drop takes the lock).
        let mut moved: Vec<Sub> = Vec::new();
        let mut guard = hub.lock();
        let state = &mut *guard;
        let mut kept = Vec::new();
        for record in run {
            if let Some(entry) = self.dispatch(&hub, state, record, now_ms, &mut moved) {
                kept.push(entry);
            }
        }
        if let Some(ring) = state.ring.as_ref().filter(|_| !kept.is_empty()) {
            let mut ring = ring.write();
            let change: isize = kept.into_iter().map(|entry| ring.push(entry)).sum();
            self.metrics.replay_bytes.add(change as i64);
        }
        drop(guard);
        drop(moved);
    }

    /// Fans one record of the live consumer out to the matching streams, in steps: advance the
    /// topic's position, encode the event once, offer it to the streams with queues of their
    /// own, push it to the connections' groups, and move the streams it carried past their
    /// floor into their groups (into `moved`, dropped by the caller after the lock). Returns
    /// the record's entry for the ring, if the topic has one: the event, or the record as it
    /// came when no stream takes it (encoded when a replay first needs it: never, for most).
    fn dispatch(
        &self,
        hub: &Arc<Topic>,
        state: &mut TopicState,
        record: &LiveRecord<'_>,
        now_ms: i64,
        moved: &mut Vec<Sub>,
    ) -> Option<Entry> {
        let p = self.advance_position(hub, state, record)?;
        let key = record.key;
        let subs = key
            .and_then(|k| state.by_key.get(k))
            .filter(|set| !set.is_empty());
        let keyed = key.and_then(|k| state.key_groups.get(k));
        let in_sets =
            !state.sets.subs.is_empty() && key.is_some_and(|k| state.sets.index.contains_key(k));
        let live = !state.all.is_empty()
            || !state.groups.is_empty()
            || !state.filtered.is_empty()
            || subs.is_some()
            || keyed.is_some()
            || in_sets;
        if !live {
            state.ring.as_ref()?;
            let headers = record.headers_json();
            return Some(self.ring_entry(hub, state, record, p, None, headers));
        }
        let id = position::encode_dense(hub.fingerprint, &state.positions);
        let event = self.encode(hub, &id, p, record.offset, key, record.value);
        hub.encoded.inc();
        observe_latency(hub, record.timestamp_ms, now_ms);
        // Key streams whose ids name only their key's partition share a second encoding.
        let scoped = key.and_then(|_| {
            Self::scoped_event(
                state,
                subs,
                keyed,
                hub.fingerprint,
                (p, record.offset),
                &event,
            )
        });
        let mut fan = Fan {
            hub,
            p,
            offset: record.offset,
            event: &event,
            scoped: scoped.as_ref(),
            envelope: OnceCell::new(),
            headers: OnceCell::new(),
            record,
            id: &id,
            oversized: record
                .value
                .is_some_and(|v| v.len() > self.config.max_event_bytes),
            subject: Subject::new(
                record.header_source(),
                record.value,
                self.config.max_event_bytes,
            ),
            tested: RefCell::default(),
            gone: 0,
            cut: 0,
        };
        let moving_all = fan.offer(&mut state.all, &state.positions);
        let (mut moving_key, mut moving_set) = (Vec::new(), Vec::new());
        if let Some(k) = key {
            if let Some(set) = state.by_key.get_mut(k) {
                moving_key = fan.offer(set, &state.positions);
                if set.is_empty() {
                    state.by_key.remove(k);
                }
            }
            if in_sets {
                moving_set = fan.offer_sets(&mut state.sets, k, &state.positions);
            }
        }
        fan.push_to_groups(state.groups.values());
        // Each filter of the topic's groups of every record is tested once, for all its logs.
        for (filter, groups) in &state.filtered {
            if fan.passes(Some(filter)) {
                groups.values().for_each(|group| fan.push(group));
            }
        }
        if let Some(keyed) = keyed {
            fan.push_to_groups(keyed.iter());
        }
        let (gone, cut, headers) = (fan.gone, fan.cut, fan.headers_json());
        hub.unmatchable.inc_by(fan.tested.borrow().unmatchable());
        // After the groups took this event, so the moved streams read from the next one.
        self.move_to_groups(hub, state, Listed::All, moving_all, moved);
        if let Some(k) = key {
            self.move_to_groups(hub, state, Listed::Key(k), moving_key, moved);
            self.move_to_groups(hub, state, Listed::Set, moving_set, moved);
        }
        for _ in 0..gone {
            state.stream_gone();
        }
        if cut > 0 {
            state.log_cutoffs(record.topic, cut);
        }
        state.ring.as_ref()?;
        Some(self.ring_entry(hub, state, record, p, Some(event), headers))
    }

    /// The ring's entry of `record` (on partition `p`): the record as it came (what any format
    /// of its event is made of, later), with its plain `event` if a stream took it, and its
    /// `headers` as JSON.
    fn ring_entry(
        &self,
        hub: &Topic,
        state: &TopicState,
        record: &LiveRecord<'_>,
        p: usize,
        event: Option<Bytes>,
        headers: Option<Bytes>,
    ) -> Entry {
        // A record that has its event was counted as oversize when it was encoded.
        let over = match event {
            Some(_) => record
                .value
                .map(<[u8]>::len)
                .filter(|&bytes| bytes > self.config.max_event_bytes),
            None => self.oversize(hub, p, record.offset, record.value),
        };
        // A value its plain event carries unchanged is kept as a part of it, not copied.
        let kept = match (over, record.value, &event) {
            (Some(bytes), _, _) => Record::Oversize(bytes),
            (None, Some(value), Some(event)) => Record::Value(Some(
                sse::value_within(event, value).unwrap_or_else(|| Bytes::copy_from_slice(value)),
            )),
            (None, value, _) => Record::Value(value.map(Bytes::copy_from_slice)),
        };
        let meta = Meta {
            timestamp_ms: record.timestamp_ms,
            headers,
        };
        let key = record.key.map(Bytes::copy_from_slice);
        let partitions = state.positions.len();
        Entry::new((p, record.offset), key, kept, meta, partitions, event)
    }

    /// Advances the topic's position past the record and checks it against the partitioner
    /// promise; the record's partition, or `None` when the record is not for the stream (an
    /// unknown partition, or before the position).
    fn advance_position(
        &self,
        hub: &Topic,
        state: &mut TopicState,
        record: &LiveRecord<'_>,
    ) -> Option<usize> {
        let p = usize::try_from(record.partition)
            .ok()
            .filter(|p| *p < state.positions.len())?;
        if record.offset < state.positions[p] {
            debug!(
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                "record before the position, skipped"
            );
            return None;
        }
        state.positions[p] = record.offset + 1;
        if let Some(k) = record.key.filter(|_| state.key_scoping) {
            if hub.off_promise(k, p, state.positions.len()) {
                self.promise_broken(hub, state, p, "live");
            }
        }
        Some(p)
    }

    /// Hands the streams of `list` whose ids are `ids` over to their connection's group; they
    /// are dropped into `moved`, after the lock.
    fn move_to_groups(
        &self,
        hub: &Arc<Topic>,
        state: &mut TopicState,
        list: Listed<'_>,
        ids: Vec<u64>,
        moved: &mut Vec<Sub>,
    ) {
        if ids.is_empty() {
            return;
        }
        for id in ids {
            if let Some(sub) = state.unregister(id, list) {
                self.hand_to_group(hub, state, &sub);
                moved.push(sub);
            }
        }
        state.tidy();
    }

    /// Ends every stream (their queues drain first, then an id of the live position) and
    /// refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.readers.close();
        for entry in self.topics.iter() {
            let topic = entry.value();
            topic.lock().end_all_at_live(topic.fingerprint);
        }
    }
}

impl RecordSink for Hub {
    /// A batch of records: the records of one topic in a row are dispatched under one lock of
    /// it, and every connection their streams wake is woken once, at the end.
    fn batch(&self, records: &[LiveRecord<'_>]) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        crate::wake::batch(|| {
            for run in records.chunk_by(|a, b| a.topic == b.topic) {
                self.dispatch_run(run, now_ms);
            }
        });
    }
}

/// Observes the produce-to-dispatch latency of a record handed to streams (once per record,
/// never per stream), against the time its batch was polled.
fn observe_latency(hub: &Topic, timestamp_ms: Option<i64>, now_ms: i64) {
    if let Some(ms) = timestamp_ms {
        hub.latency.observe((now_ms - ms).max(0) as f64 / 1000.0);
    }
}

/// What offering an event did to a stream with a queue of its own.
enum Offered {
    /// Queued or skipped; it stays where it is.
    Kept,
    /// Queued, and its floor is covered: it goes to its connection's group.
    Covered,
    /// Cut off, or its client is gone.
    Gone,
}

/// One record's event on its way to the streams, and what the way cost (streams gone, and
/// of those, streams cut off as too slow).
struct Fan<'a> {
    hub: &'a Topic,
    p: usize,
    offset: i64,
    event: &'a Bytes,
    /// The event with an id naming only its partition, for short-id key streams.
    scoped: Option<&'a Bytes>,
    /// The event in the envelope format, encoded for the first stream that takes it, of the
    /// record, with the event's id.
    envelope: OnceCell<Bytes>,
    /// The record's headers as JSON, made once for the envelope and the ring.
    headers: OnceCell<Option<Bytes>>,
    record: &'a LiveRecord<'a>,
    id: &'a str,
    /// The record is over `KSG_MAX_EVENT_BYTES`: every format's event is the notice.
    oversized: bool,
    /// The record as filters see it, its value parsed at most once.
    subject: Subject<'a>,
    /// What the filters tested so far made of the record (each tested once).
    tested: RefCell<Tested>,
    gone: usize,
    cut: u64,
}

impl<'a> Fan<'a> {
    /// The bytes a stream (or group) of `scope` shares (borrowed for the whole fan-out, not
    /// from `self`: no handle is taken per stream).
    fn shared(&self, scope: Option<usize>) -> &'a Bytes {
        match (self.scoped, scope) {
            (Some(scoped), Some(_)) => scoped,
            _ => self.event,
        }
    }

    /// The bytes a stream (or group) of `scope` and `format` shares: the envelope is encoded
    /// once, for the first that takes it (streams of that format carry full ids).
    fn for_view(&self, scope: Option<usize>, format: Format) -> &Bytes {
        match format {
            Format::Envelope if !self.oversized => {
                let record = self.record;
                self.envelope.get_or_init(|| {
                    let headers = self.headers_json();
                    let envelope = sse::Envelope {
                        topic: &self.hub.name,
                        partition: self.p,
                        offset: self.offset,
                        timestamp_ms: record.timestamp_ms,
                        key: record.key,
                        value: record.value,
                        headers: headers.as_deref(),
                    };
                    sse::envelope_event(self.id, &envelope)
                })
            }
            _ => self.shared(scope),
        }
    }

    /// The record's headers as JSON (`None`: it has none), made at the first call.
    fn headers_json(&self) -> Option<Bytes> {
        self.headers
            .get_or_init(|| self.record.headers_json())
            .clone()
    }

    /// True when the record passes `filter` (`None`: no filter), tested at its first call.
    fn passes(&self, filter: Option<&Filter>) -> bool {
        filter.is_none_or(|f| self.tested.borrow_mut().verdict(f, &self.subject).passes())
    }

    /// Offers the event to streams with queues of their own (resumed ones, until the live
    /// position `after` covers their floor); a full queue cuts its stream off. Returns the
    /// streams whose floor the event covered: they go to their connection's group.
    fn offer(&mut self, streams: &mut HashMap<u64, Sub>, after: &[i64]) -> Vec<u64> {
        let mut moving = Vec::new();
        streams.retain(|id, sub| match self.offer_one(sub, after) {
            Offered::Kept => true,
            Offered::Covered => {
                moving.push(*id);
                true
            }
            Offered::Gone => false,
        });
        moving
    }

    /// [`Fan::offer`] for the streams of several keys among which the record's key `key` is,
    /// found through their index.
    fn offer_sets(&mut self, sets: &mut SetSubs, key: &[u8], after: &[i64]) -> Vec<u64> {
        let (mut moving, mut gone) = (Vec::new(), Vec::new());
        let SetSubs { subs, index } = sets;
        for id in index.get(key).into_iter().flatten() {
            let Some(sub) = subs.get_mut(id) else {
                continue;
            };
            match self.offer_one(sub, after) {
                Offered::Kept => {}
                Offered::Covered => moving.push(*id),
                Offered::Gone => gone.push(*id),
            }
        }
        for id in gone {
            sets.remove(id);
        }
        moving
    }

    /// Offers the event to one stream with a queue of its own.
    fn offer_one(&mut self, sub: &mut Sub, after: &[i64]) -> Offered {
        if !self.passes(sub.filter.as_ref()) {
            return Offered::Kept;
        }
        let shared = self.for_view(sub.scope, sub.format);
        let Some(bytes) = for_stream(
            &mut sub.floor,
            sub.scope,
            self.p,
            self.offset,
            after,
            shared,
            self.hub.fingerprint,
        ) else {
            return Offered::Kept;
        };
        match sub.tx.try_send(bytes) {
            Ok(()) if sub.floor.is_none() => Offered::Covered,
            Ok(()) => Offered::Kept,
            Err(queue::TrySendError::Full(_)) => {
                self.hub.cutoffs.inc();
                debug!(topic = %self.hub.name, "stream cut off: its client fell behind (queue full)");
                self.cut += 1;
                self.gone += 1;
                Offered::Gone
            }
            Err(queue::TrySendError::Closed(_)) => {
                self.gone += 1;
                Offered::Gone
            }
        }
    }

    /// Pushes the event to `groups` (connections' groups of the topic's records, or of the
    /// record's key): once per group, for all its streams; the slowest past the bound are cut
    /// off.
    fn push_to_groups<'g>(&mut self, groups: impl Iterator<Item = &'g Arc<Group>>) {
        for group in groups {
            if self.passes(group.view().filter) {
                self.push(group);
            }
        }
    }

    /// Pushes the event to one group, whose filter (if any) the record passes.
    fn push(&mut self, group: &Arc<Group>) {
        let view = group.view();
        let slow = group.push(self.for_view(view.scope, view.format));
        if slow > 0 {
            self.hub.cutoffs.inc_by(slow);
            debug!(
                topic = %self.hub.name,
                streams = slow,
                "streams cut off: their clients fell behind"
            );
            self.cut += slow;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::Keys;
    use crate::wake::Ready;
    use group::Handoff;

    fn keys(list: &[&str]) -> Keys {
        Keys::new(list.iter().map(|k| k.as_bytes().to_vec()).collect()).unwrap()
    }

    /// A hub with topic `t` of `partitions` partitions attached at offset 0 (its consumer
    /// never connects: records are dispatched by the test).
    fn hub_with_topic(partitions: usize) -> (Hub, Arc<Topic>) {
        let metrics = Metrics::new(&[]);
        let source = Source::new("127.0.0.1:9", &Default::default(), metrics.clone()).unwrap();
        let config = HubConfig {
            queue: 8,
            queue_bytes: 1 << 16,
            replay_bytes: 0,
            catchup_readers: 1,
            catchup_reader_idle: std::time::Duration::from_secs(1),
            snapshot_bytes: 1 << 20,
            max_event_bytes: 1 << 20,
            key_partitioner: None,
        };
        let hub = Hub::new(Arc::new(source), metrics.clone(), config);
        let topic = Arc::new(Topic::new("t", None, false, &metrics));
        topic.lock().positions = vec![0; partitions];
        let _ = topic.attached.set(());
        hub.topics.insert("t".into(), topic.clone());
        (hub, topic)
    }

    fn record<'a>(p: i32, offset: i64, key: &'a str, value: &'a str) -> LiveRecord<'a> {
        LiveRecord {
            topic: "t",
            partition: p,
            offset,
            key: Some(key.as_bytes()),
            value: Some(value.as_bytes()),
            timestamp_ms: None,
            headers: None,
        }
    }

    fn value_and_id(event: Option<Bytes>) -> (String, Vec<(i32, i64)>) {
        let event = event.expect("an event");
        let text = String::from_utf8(event.to_vec()).unwrap();
        let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap();
        let id = position::decode(field("id: "), "t").unwrap().entries;
        (field("data: ").to_string(), id)
    }

    #[test]
    fn a_resumed_stream_of_several_keys_waits_for_its_floor_then_reads_its_group() {
        let (hub, topic) = hub_with_topic(2);
        let fanout = Fanout::new(crate::wake::Ready::new(futures_util::task::noop_waker()));
        let (tx, mut rx) = queue::channel(8, 1 << 16);
        let handoff = Handoff::new(&fanout.seat(5));
        let slot = handoff.slot.clone();
        {
            // Its client came from a replica that read partition 0 up to offset 3.
            let mut state = topic.lock();
            state.streams += 1;
            let sub = Sub {
                keys: Some(keys(&["b", "a"])),
                format: Format::Plain,
                filter: None,
                tx,
                floor: Some(vec![3, 0]),
                scope: None,
                handoff,
            };
            state.register(1, sub);
        }
        hub.dispatch_run(
            &[
                record(0, 0, "a", "a0"),
                record(0, 1, "c", "c1"),
                record(1, 0, "b", "b0"),
                record(0, 2, "b", "b2"),
            ],
            0,
        );
        // Below the floor: skipped; another key: not offered; past the floor on partition 1:
        // its id raised to cover the client's position.
        assert_eq!(
            value_and_id(rx.try_recv()),
            ("b0".into(), vec![(0, 3), (1, 1)])
        );
        assert_eq!(rx.try_recv(), None);
        assert!(slot.lock().is_none(), "still on its own queue");
        hub.dispatch_run(&[record(0, 3, "a", "a3"), record(1, 1, "a", "a1")], 0);
        // The event that covers the floor is the shared one; the stream then reads its group.
        assert_eq!(
            value_and_id(rx.try_recv()),
            ("a3".into(), vec![(0, 4), (1, 1)])
        );
        assert_eq!(rx.try_recv(), None);
        let mut cursor = slot.lock().take().expect("handed to its group");
        assert_eq!(
            value_and_id(cursor.try_recv()),
            ("a1".into(), vec![(0, 4), (1, 2)])
        );
        hub.dispatch_run(&[record(0, 4, "c", "c4"), record(1, 2, "b", "b2")], 0);
        assert_eq!(value_and_id(cursor.try_recv()).0, "b2");
        assert_eq!(cursor.try_recv(), None);
        let state = topic.lock();
        assert!(state.sets.subs.is_empty() && state.sets.index.is_empty());
        assert!(
            state.key_groups.contains_key(&b"a"[..]) && state.key_groups.contains_key(&b"b"[..])
        );
        drop(state);
        drop(cursor);
        let state = topic.lock();
        assert!(
            state.key_groups.is_empty(),
            "its group leaves with its last stream"
        );
        assert_eq!(state.streams, 0);
    }

    #[test]
    fn streams_of_several_keys_get_the_records_of_their_keys_through_the_index() {
        let metrics = Metrics::new(&[]);
        let topic = Topic::new("t", None, false, &metrics);
        let fp = topic.fingerprint;
        let fanout = Fanout::new(Ready::new(futures_util::task::noop_waker()));
        let sub = |list: &[&str], floor: Vec<i64>| {
            let (tx, rx) = queue::channel(8, usize::MAX);
            let handoff = Handoff::new(&fanout.seat(0));
            let sub = Sub {
                keys: Some(keys(list)),
                format: Format::Plain,
                filter: None,
                tx,
                floor: Some(floor),
                scope: None,
                handoff,
            };
            (sub, rx)
        };
        // Resumed streams whose clients have more than the live position on some partition.
        let (ab, mut ab_rx) = sub(&["a", "b"], vec![5, 5]);
        let (bc, bc_rx) = sub(&["b", "c"], vec![0, 9]);
        let (cd, mut cd_rx) = sub(&["c", "d"], vec![0, 0]);
        let mut sets = SetSubs::default();
        for (id, sub) in [(1, ab), (2, bc), (3, cd)] {
            sets.insert(id, sub);
        }
        let listed = |sets: &SetSubs, key: &str| sets.index.get(key.as_bytes()).cloned();
        assert_eq!(listed(&sets, "b"), Some(vec![1, 2]));
        // Offers record `key`@`p`/`offset`, after which the position is `after`.
        let offer = |sets: &mut SetSubs, key: &str, (p, offset): (usize, i64), after: &[i64]| {
            let id = position::encode_dense(fp, after);
            let event = sse::record_event(&id, Some(key.as_bytes()), Some(b"v"));
            let record = record(p as i32, offset, key, "v");
            let mut fan = Fan {
                hub: &topic,
                p,
                offset,
                event: &event,
                scoped: None,
                envelope: OnceCell::new(),
                headers: OnceCell::new(),
                record: &record,
                id: &id,
                oversized: false,
                subject: Subject::new(crate::filter::HeaderSource::None, None, 0),
                tested: RefCell::default(),
                gone: 0,
                cut: 0,
            };
            let moving = fan.offer_sets(sets, key.as_bytes(), after);
            (moving, fan.gone)
        };
        let id_of = |event: Option<Bytes>| {
            let event = event.expect("an event");
            let text = String::from_utf8(event.to_vec()).unwrap();
            let id = text.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
            position::decode(id, "t").unwrap().entries
        };
        // a: only the streams of a; its id raised to cover the client's floor.
        assert_eq!(offer(&mut sets, "a", (0, 5), &[6, 3]), (vec![], 0));
        assert_eq!(id_of(ab_rx.try_recv()), [(0, 6), (1, 5)]);
        assert_eq!(cd_rx.try_recv(), None);
        // b: a stream whose client is gone leaves the list and the index.
        drop(bc_rx);
        assert_eq!(offer(&mut sets, "b", (0, 6), &[7, 3]), (vec![], 1));
        assert_eq!(id_of(ab_rx.try_recv()), [(0, 7), (1, 5)]);
        assert_eq!(listed(&sets, "b"), Some(vec![1]));
        assert!(!sets.subs.contains_key(&2));
        // A record below a floor is skipped.
        assert_eq!(offer(&mut sets, "b", (1, 3), &[7, 4]), (vec![], 0));
        assert_eq!(ab_rx.try_recv(), None);
        // c covers cd's floor: it goes to its group, with the shared event.
        assert_eq!(offer(&mut sets, "c", (1, 4), &[7, 5]), (vec![3], 0));
        assert_eq!(id_of(cd_rx.try_recv()), [(0, 7), (1, 5)]);
        // A key no stream asked for reaches none.
        assert_eq!(offer(&mut sets, "e", (0, 7), &[8, 5]), (vec![], 0));
        assert!(sets.remove(3).is_some());
        assert_eq!((listed(&sets, "c"), listed(&sets, "d")), (None, None));
        assert!(sets.remove(1).is_some());
        assert!(sets.index.is_empty() && sets.subs.is_empty());
    }
}
