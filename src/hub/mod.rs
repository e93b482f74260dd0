//! The hub: a registry from topic to its live channel, key filters, replay and fan-out.
//!
//! The poll thread calls [`Hub::dispatch`] for every record. Under the topic's lock it advances
//! the topic's position vector, encodes the event once if a stream takes it (its id is the
//! vector after the record; a record nobody takes is kept as it came, see [`replay`]), keeps it
//! in the topic's replay ring and appends the same [`Bytes`] once to each connection's shared
//! log of a matching view (every record, or the record's key), where every live stream, HTTP/2
//! or HTTP/1.1, reads at its own place ([`group`]). Only a resumed stream whose id is ahead of
//! the live position gets it in its own bounded queue ([`queue`]), after its replay or
//! catch-up, until the live position covers its id. A full queue or log ends the slow stream
//! (counted); the consumer and the other streams never wait. Locks are never held across an
//! `.await`, and are taken in one order, written and checked in `order`: a topic's state, then
//! a connection's groups, then a group's log.
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
mod order;
pub mod queue;
pub mod replay;
mod subscribe;
mod topic;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use thiserror::Error;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::partitioner::KeyPartitioner;
use crate::position;
use crate::source::{LiveRecord, RecordSink, Source, SourceError};
use crate::sse;
use floor::for_stream;
use group::Group;
pub use group::{Fanout, Seat};
use replay::{Entry, Record};
pub use subscribe::{Events, Parts, Subscription};
use topic::{KeyGroups, Sub, Topic, TopicState};

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
    /// the topic, and keeps them in its ring under one lock of the ring. Called by the poll
    /// thread only.
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
        let live =
            !state.all.is_empty() || !state.groups.is_empty() || subs.is_some() || keyed.is_some();
        if !live {
            state.ring.as_ref()?;
            let kept = match self.oversize(hub, p, record.offset, record.value) {
                Some(bytes) => Record::Oversize(bytes),
                None => Record::Value(record.value.map(Bytes::copy_from_slice)),
            };
            let partitions = state.positions.len();
            let key = key.map(Bytes::copy_from_slice);
            return Some(Entry::later(p, record.offset, key, kept, partitions));
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
            gone: 0,
            cut: 0,
        };
        let moving_all = fan.offer(&mut state.all, &state.positions);
        let mut moving_key = Vec::new();
        if let Some(k) = key {
            if let Some(set) = state.by_key.get_mut(k) {
                moving_key = fan.offer(set, &state.positions);
                if set.is_empty() {
                    state.by_key.remove(k);
                }
            }
        }
        fan.push_to_groups(state.groups.values());
        if let Some(keyed) = keyed {
            fan.push_to_groups(keyed.iter());
        }
        let (gone, cut) = (fan.gone, fan.cut);
        // After the groups took this event, so the moved streams read from the next one.
        self.move_to_groups(hub, state, None, moving_all, moved);
        if let Some(k) = key.filter(|_| !moving_key.is_empty()) {
            self.move_to_groups(hub, state, Some(k), moving_key, moved);
            if state.by_key.get(k).is_some_and(HashMap::is_empty) {
                state.by_key.remove(k);
            }
        }
        for _ in 0..gone {
            state.stream_gone();
        }
        if cut > 0 {
            state.log_cutoffs(record.topic, cut);
        }
        state.ring.as_ref()?;
        let key = key.map(Bytes::copy_from_slice);
        Some(Entry::encoded(p, record.offset, key, event))
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

    /// Hands the streams of `key` (every record: `None`) listed in `ids` over to their
    /// connection's group; they are dropped into `moved`, after the lock.
    fn move_to_groups(
        &self,
        hub: &Arc<Topic>,
        state: &mut TopicState,
        key: Option<&[u8]>,
        ids: Vec<u64>,
        moved: &mut Vec<Sub>,
    ) {
        for id in ids {
            let sub = match key {
                None => state.all.remove(&id),
                Some(k) => state.by_key.get_mut(k).and_then(|set| set.remove(&id)),
            };
            if let Some(sub) = sub {
                self.hand_to_group(hub, state, key, &sub);
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

/// One record's event on its way to the streams, and what the way cost (streams gone, and
/// of those, streams cut off as too slow).
struct Fan<'a> {
    hub: &'a Topic,
    p: usize,
    offset: i64,
    event: &'a Bytes,
    /// The event with an id naming only its partition, for short-id key streams.
    scoped: Option<&'a Bytes>,
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

    /// Offers the event to streams with queues of their own (resumed ones, until the live
    /// position `after` covers their floor); a full queue cuts its stream off. Returns the
    /// streams whose floor the event covered: they go to their connection's group.
    fn offer(&mut self, streams: &mut HashMap<u64, Sub>, after: &[i64]) -> Vec<u64> {
        let mut moving = Vec::new();
        streams.retain(|id, sub| {
            let shared = self.shared(sub.scope);
            let Some(bytes) = for_stream(
                &mut sub.floor,
                sub.scope,
                self.p,
                self.offset,
                after,
                shared,
                self.hub.fingerprint,
            ) else {
                return true;
            };
            match sub.tx.try_send(bytes) {
                Ok(()) => {
                    if sub.floor.is_none() {
                        moving.push(*id);
                    }
                    true
                }
                Err(queue::TrySendError::Full(_)) => {
                    self.hub.cutoffs.inc();
                    debug!(topic = %self.hub.name, "stream cut off: its client fell behind (queue full)");
                    self.cut += 1;
                    self.gone += 1;
                    false
                }
                Err(queue::TrySendError::Closed(_)) => {
                    self.gone += 1;
                    false
                }
            }
        });
        moving
    }

    /// Pushes the event to `groups` (connections' groups of the topic's records, or of the
    /// record's key): once per group, for all its streams; the slowest past the bound are cut
    /// off.
    fn push_to_groups<'g>(&mut self, groups: impl Iterator<Item = &'g Arc<Group>>) {
        for group in groups {
            let slow = group.push(self.shared(group.view().scope));
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
}
