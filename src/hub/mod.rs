//! The hub: a registry from topic to its live channel, key filters, replay and fan-out.
//!
//! The poll thread calls [`Hub::dispatch`] for every record. Under the topic's lock it advances
//! the topic's position vector, encodes the event once (its id is the vector after the record),
//! keeps it in the topic's replay ring and appends the same [`Bytes`] once to each HTTP/2
//! connection's shared log of a matching view (every record, or the record's key), where every
//! live HTTP/2 stream reads at its own place ([`group`]). Streams with no connection log
//! (HTTP/1.1), and resumed streams until the live position covers their id, get it in their own
//! bounded queue ([`queue`]). A full queue or log ends the slow stream (counted); the consumer
//! and the other streams never wait. Locks are never held across an `.await`.
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
use crate::source::{Source, SourceError};
use crate::sse;
use floor::for_stream;
use group::Group;
pub use group::{Fanout, Seat};
use replay::Entry;
pub use subscribe::{Events, Subscription};
use topic::{Sub, Topic, TopicState};

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
    /// The resume id names a position this topic's log has not reached (400): an id from
    /// another cluster, or from a topic deleted and recreated under the same name.
    #[error("{0}")]
    AheadOfLog(String),
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
        match value {
            Some(v) if v.len() > self.config.max_event_bytes => {
                hub.oversize.inc();
                debug!(topic = %hub.name, partition, offset, bytes = v.len(), "record over KSG_MAX_EVENT_BYTES");
                sse::oversize_event(id, partition, offset, v.len())
            }
            _ => sse::record_event(id, key, value),
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

    /// The event with an id naming only partition `p`, for short-id key streams of `key`;
    /// `None` when there are none.
    fn scoped_event(
        state: &TopicState,
        hub: &Topic,
        key: &[u8],
        p: usize,
        offset: i64,
        event: &Bytes,
    ) -> Option<Bytes> {
        if !state.key_scoping {
            return None;
        }
        let subs = state.by_key.get(key).into_iter().flat_map(HashMap::values);
        let groups = state
            .key_groups
            .get(key)
            .into_iter()
            .flat_map(HashMap::values);
        let any = subs
            .map(|sub| sub.scope)
            .chain(groups.map(|g| g.view().scope));
        if !any.into_iter().any(|scope| scope.is_some()) {
            return None;
        }
        let id = position::encode_sparse(hub.fingerprint, &[(p as i32, offset + 1)]);
        Some(sse::with_id(event, &id))
    }

    /// Fans one record out to the matching streams. Called by the poll thread only.
    pub fn dispatch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) {
        let Some(hub) = self.topics.get(topic).map(|e| e.value().clone()) else {
            return;
        };
        hub.records.inc();
        // Streams that move to their connection's group: dropped after the lock (a stream that
        // is gone leaves its cursor to them, and a cursor's drop takes the lock).
        let mut moved: Vec<Sub> = Vec::new();
        let mut guard = hub.lock();
        let state = &mut *guard;
        let Some(p) = usize::try_from(partition)
            .ok()
            .filter(|p| *p < state.positions.len())
        else {
            return;
        };
        if offset < state.positions[p] {
            debug!(
                topic,
                partition, offset, "record before the position, skipped"
            );
            return;
        }
        state.positions[p] = offset + 1;
        if let Some(k) = key.filter(|_| state.key_scoping) {
            if hub.off_promise(k, p, state.positions.len()) {
                self.promise_broken(&hub, state, p, "live");
            }
        }
        let keyed =
            key.is_some_and(|k| state.by_key.contains_key(k) || state.key_groups.contains_key(k));
        let live = !state.all.is_empty() || !state.groups.is_empty() || keyed;
        if !live && state.ring.is_none() {
            return;
        }
        let id = position::encode_dense(hub.fingerprint, &state.positions);
        let event = self.encode(&hub, &id, p, offset, key, value);
        if live {
            // Once per record handed to streams, never per stream.
            if let Some(ms) = timestamp_ms {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                hub.latency.observe((now - ms).max(0) as f64 / 1000.0);
            }
        }
        // Key streams whose ids name only their key's partition share a second encoding.
        let scoped = key.and_then(|k| Self::scoped_event(state, &hub, k, p, offset, &event));
        let after = &state.positions;
        let mut gone = 0;
        let mut cut = 0;
        // Streams whose floor this event covered and that have a group to go to: of every
        // record, of the record's key.
        let (mut moving_all, mut moving_key) = (Vec::new(), Vec::new());
        let mut offer = |streams: &mut HashMap<u64, Sub>, moving: &mut Vec<u64>| {
            streams.retain(|id, sub| {
                let shared = match (&scoped, sub.scope) {
                    (Some(scoped), Some(_)) => scoped,
                    _ => &event,
                };
                let Some(bytes) = for_stream(
                    &mut sub.floor,
                    sub.scope,
                    p,
                    offset,
                    after,
                    shared,
                    hub.fingerprint,
                ) else {
                    return true;
                };
                match sub.tx.try_send(bytes) {
                    Ok(()) => {
                        if sub.floor.is_none() && sub.handoff.is_some() {
                            moving.push(*id);
                        }
                        true
                    }
                    Err(queue::TrySendError::Full(_)) => {
                        hub.cutoffs.inc();
                        debug!(topic, "stream cut off: its client fell behind (queue full)");
                        cut += 1;
                        gone += 1;
                        false
                    }
                    Err(queue::TrySendError::Closed(_)) => {
                        gone += 1;
                        false
                    }
                }
            });
        };
        offer(&mut state.all, &mut moving_all);
        if let Some(k) = key {
            if let Some(set) = state.by_key.get_mut(k) {
                offer(set, &mut moving_key);
                if set.is_empty() {
                    state.by_key.remove(k);
                }
            }
        }
        // A connection's group takes the event once for all its streams.
        let mut push = |group: &Group, event: &Bytes| {
            let slow = group.push(event);
            if slow > 0 {
                hub.cutoffs.inc_by(slow);
                debug!(
                    topic,
                    streams = slow,
                    "streams cut off: their clients fell behind"
                );
                cut += slow;
            }
        };
        for group in state.groups.values() {
            push(group, &event);
        }
        if let Some(set) = key.and_then(|k| state.key_groups.get(k)) {
            for group in set.values() {
                let shared = match (&scoped, group.view().scope) {
                    (Some(scoped), Some(_)) => scoped,
                    _ => &event,
                };
                push(group, shared);
            }
        }
        // After the groups took this event, so the moved streams read from the next one.
        for id in moving_all {
            if let Some(sub) = state.all.remove(&id) {
                self.hand_to_group(&hub, state, None, &sub);
                moved.push(sub);
            }
        }
        if let Some(k) = key.filter(|_| !moving_key.is_empty()) {
            for id in moving_key {
                if let Some(sub) = state.by_key.get_mut(k).and_then(|set| set.remove(&id)) {
                    self.hand_to_group(&hub, state, key, &sub);
                    moved.push(sub);
                }
            }
            if state.by_key.get(k).is_some_and(HashMap::is_empty) {
                state.by_key.remove(k);
            }
        }
        for _ in 0..gone {
            state.stream_gone();
        }
        if cut > 0 {
            state.log_cutoffs(topic, cut);
        }
        if let Some(ring) = &mut state.ring {
            let entry = Entry {
                partition: p,
                offset,
                key: key.map(Bytes::copy_from_slice),
                event,
            };
            self.metrics.replay_bytes.add(ring.push(entry) as i64);
        }
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
