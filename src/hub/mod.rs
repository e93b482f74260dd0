//! The hub: a registry from topic to its live channel, key filters, replay and fan-out.
//!
//! The poll thread calls [`Hub::dispatch`] for every record. Under the topic's lock it advances
//! the topic's position vector, encodes the event once (its id is the vector after the record),
//! keeps it in the topic's replay ring and offers the same [`Bytes`] to every matching stream's
//! bounded queue. A full queue ends that stream (counted); the consumer and the other streams
//! never wait. Locks are never held across an `.await`.
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

mod catchup;
mod lifecycle;
pub mod queue;
pub mod replay;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};
use prometheus::IntCounter;
use thiserror::Error;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::partitioner::KeyPartitioner;
use crate::position::{self, Position};
use crate::source::{Source, SourceError};
use crate::sse;
use crate::start::{self, LogStart, PartitionStart, Start};
use replay::{Entry, Ring};

/// At most one slow-stream cut-off summary per topic this often.
const CUTOFF_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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
    topics: DashMap<String, Arc<TopicHub>>,
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

/// One topic's live channel.
struct TopicHub {
    name: String,
    fingerprint: u32,
    attached: tokio::sync::OnceCell<()>,
    state: Mutex<TopicState>,
    /// The partitioner promised for this topic; `None` without a promise or once it broke.
    promise: Option<KeyPartitioner>,
    /// Set once a record broke the promise (readers check it without the lock).
    broken: AtomicBool,
    mismatches: IntCounter,
    latency: prometheus::Histogram,
    records: IntCounter,
    cutoffs: IntCounter,
    oversize: IntCounter,
    keyless: IntCounter,
}

/// A registered stream: its queue, while resuming its floor, and for a key stream whose ids
/// name only its key's partition, that partition.
struct Sub {
    tx: queue::Sender,
    floor: Option<Vec<i64>>,
    scope: Option<usize>,
}

#[derive(Default)]
struct TopicState {
    released: bool,
    /// Key streams' ids name only their key's partition (a partitioner is promised, no record
    /// broke the promise and no partition was added).
    key_scoping: bool,
    /// Next offset per partition: the position after the last record dispatched.
    positions: Vec<i64>,
    ring: Option<Ring>,
    all: HashMap<u64, Sub>,
    by_key: HashMap<Vec<u8>, HashMap<u64, Sub>>,
    /// Streams catching up from Kafka, not yet receiving live records.
    pending: HashSet<u64>,
    streams: usize,
    idle_since: Option<Instant>,
    /// Slow-stream cut-offs not yet logged, and when the last summary was logged.
    cutoffs_unlogged: u64,
    cutoffs_logged_at: Option<Instant>,
}

/// An open subscription: the stream's queue and its start position. Dropping it unregisters.
pub struct Subscription {
    /// Encoded events, in order.
    pub events: queue::Receiver,
    /// The id the preamble carries: the start position, or `None` for a stream catching up
    /// from Kafka (its first event brings an id; until then the client's own id stands).
    pub start_id: Option<String>,
    /// The topic, for metric labels.
    pub topic: String,
    _registration: Registration,
}

struct Registration {
    topic: Arc<TopicHub>,
    id: u64,
    key: Option<Vec<u8>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.topic.lock();
        let removed = state.pending.remove(&self.id)
            || match &self.key {
                None => state.all.remove(&self.id).is_some(),
                Some(key) => match state.by_key.get_mut(key) {
                    Some(set) => {
                        let removed = set.remove(&self.id).is_some();
                        if set.is_empty() {
                            state.by_key.remove(key);
                        }
                        removed
                    }
                    None => false,
                },
            };
        if removed {
            state.stream_gone();
        }
    }
}

impl TopicState {
    /// From now on every key stream of the topic carries full ids: those with short ids switch
    /// in place (partitions were added: keys move, but no record of a key was ever elsewhere).
    fn widen_key_streams(&mut self) {
        self.key_scoping = false;
        for sub in self.by_key.values_mut().flat_map(|set| set.values_mut()) {
            sub.scope = None;
        }
    }

    /// A record broke the partitioner promise: records of a key may be on partitions its
    /// short-id streams never read. Each such stream gets an id-only block whose id tells any
    /// replica to read every partition (those it never read from their earliest offset), then
    /// ends; its client resumes with that id and loses nothing.
    fn end_short_streams(&mut self, fingerprint: u32) {
        self.key_scoping = false;
        let mut ended = 0;
        for set in self.by_key.values_mut() {
            set.retain(|_, sub| {
                let Some(p) = sub.scope else { return true };
                let at = sub
                    .floor
                    .as_ref()
                    .map_or(self.positions[p], |f| f[p].max(self.positions[p]));
                let id = position::encode_every(fingerprint, &[(p as i32, at)]);
                let _ = sub.tx.try_send(sse::id_only(&id));
                ended += 1;
                false
            });
        }
        self.by_key.retain(|_, set| !set.is_empty());
        for _ in 0..ended {
            self.stream_gone();
        }
    }

    /// Ends every stream of the topic: each gets `last` (if any) after what is already queued,
    /// then its queue closes; catch-ups in progress stop at their next hand-over check.
    fn end_all(&mut self, last: Option<&Bytes>) {
        if let Some(last) = last {
            for sub in self
                .all
                .values()
                .chain(self.by_key.values().flat_map(|m| m.values()))
            {
                let _ = sub.tx.try_send(last.clone());
            }
        }
        let count = self.all.len()
            + self.by_key.values().map(HashMap::len).sum::<usize>()
            + self.pending.len();
        self.all.clear();
        self.by_key.clear();
        self.pending.clear();
        for _ in 0..count {
            self.stream_gone();
        }
    }

    /// Counts `cut` slow-stream cut-offs toward a summary logged at most every
    /// [`CUTOFF_LOG_EVERY`] per topic, so a crowd of stalled clients cannot flood the log.
    fn log_cutoffs(&mut self, topic: &str, cut: u64) {
        self.cutoffs_unlogged += cut;
        let due = self
            .cutoffs_logged_at
            .is_none_or(|at| at.elapsed() >= CUTOFF_LOG_EVERY);
        if due {
            let streams = std::mem::take(&mut self.cutoffs_unlogged);
            warn!(topic, streams, "streams cut off: their clients fell behind (queue full); they resume from their last id (ksg_slow_stream_cutoffs_total; summarized every 10 s)");
            self.cutoffs_logged_at = Some(Instant::now());
        }
    }

    fn stream_gone(&mut self) {
        self.streams -= 1;
        if self.streams == 0 {
            self.idle_since = Some(Instant::now());
        }
    }

    fn register(&mut self, id: u64, key: Option<&[u8]>, sub: Sub) {
        match key {
            None => self.all.insert(id, sub),
            Some(k) => self.by_key.entry(k.to_vec()).or_default().insert(id, sub),
        };
    }
}

impl TopicHub {
    fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock()
    }
}

/// The partition whose offset alone a key stream's ids carry, or `None` for full ids: a
/// stream of key `key` on a topic of `partitions` partitions whose partitioner promise
/// (`promise`, while it holds) places the key there. A resumed stream stays short only when
/// resumed from a short id of its key's own partition; a full id, another partition's, or one
/// marked "every partition" is read with full-id meaning (partitions it does not name start at
/// their earliest offset).
fn key_scope(
    promise: Option<KeyPartitioner>,
    partitions: usize,
    key: Option<&[u8]>,
    start: &Start,
) -> Option<usize> {
    let p = match (key, promise) {
        (Some(k), Some(promise)) if !k.is_empty() => promise.partition(k, partitions),
        _ => return None,
    };
    match start {
        Start::Token(token)
            if token.every || token.entries.len() != 1 || token.offset(p as i32).is_none() =>
        {
            None
        }
        _ => Some(p),
    }
}

/// The id a stream carries for `position`: the whole vector, or only the scoped partition.
fn id_for(fingerprint: u32, scope: Option<usize>, position: &[i64]) -> String {
    match scope {
        None => position::encode_dense(fingerprint, position),
        Some(p) => position::encode_sparse(fingerprint, &[(p as i32, position[p])]),
    }
}

/// Appends to `batch` the ring's events after `from` for a stream with key filter `key` and
/// scope `scope`; returns the stream's floor after them (`None` once its ids are shared).
fn replay(
    fingerprint: u32,
    ring: Option<&Ring>,
    key: Option<&[u8]>,
    scope: Option<usize>,
    from: Vec<i64>,
    batch: &mut BytesMut,
) -> Option<Vec<i64>> {
    let mut floor = Some(from);
    for (entry, after) in ring.into_iter().flat_map(Ring::iter_with_positions) {
        if key.is_some() && entry.key.as_deref() != key {
            continue;
        }
        let shared = match scope {
            None => entry.event.clone(),
            Some(_) => sse::with_id(&entry.event, &id_for(fingerprint, scope, &after)),
        };
        if let Some(bytes) = for_stream(
            &mut floor,
            scope,
            entry.partition,
            entry.offset,
            &after,
            &shared,
            fingerprint,
        ) {
            batch.extend_from_slice(&bytes);
        }
    }
    floor
}

/// True when `a` is at or after `b` on every partition.
fn covers(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x >= y)
}

/// Decides what a stream with an optional floor receives for one event; `None`: nothing.
#[allow(clippy::too_many_arguments)]
fn for_stream(
    floor: &mut Option<Vec<i64>>,
    scope: Option<usize>,
    partition: usize,
    offset: i64,
    after: &[i64],
    event: &Bytes,
    fingerprint: u32,
) -> Option<Bytes> {
    let Some(f) = floor else {
        return Some(event.clone());
    };
    if offset < f[partition] {
        return None;
    }
    if covers(after, f) {
        *floor = None;
        return Some(event.clone());
    }
    for (mine, theirs) in f.iter_mut().zip(after) {
        *mine = (*mine).max(*theirs);
    }
    Some(sse::with_id(event, &id_for(fingerprint, scope, f)))
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

    /// Opens a stream of `topic` from `start`, optionally only records with key `key`.
    pub async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        key: Option<Vec<u8>>,
        start: Start,
    ) -> Result<Subscription, SubscribeError> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(SubscribeError::ShuttingDown);
            }
            let hub = self.attached(topic).await?;
            if let Start::Token(token) = &start {
                self.check_not_ahead(&hub, token).await?;
            }
            let (partitions, scoping) = {
                let state = hub.lock();
                (state.positions.len(), state.key_scoping)
            };
            let scope = key_scope(
                hub.promise.filter(|_| scoping),
                partitions,
                key.as_deref(),
                &start,
            );
            let from = self
                .partition_starts(&hub, &start, partitions, scope)
                .await?;
            let (tx, rx) = queue::channel(self.config.queue);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let opened = {
                let mut state = hub.lock();
                // A released entry raced with an idle release: the registry gets a new one.
                let snapshot = start == Start::Snapshot;
                let scope = scope.filter(|_| state.key_scoping);
                let spec = Spec {
                    id,
                    key: key.as_deref(),
                    scope,
                    snapshot,
                };
                (!state.released).then(|| self.open(&hub, &mut state, spec, from, tx))
            };
            let Some(opened) = opened else {
                tokio::task::yield_now().await;
                continue;
            };
            let registration = Registration {
                topic: hub.clone(),
                id,
                key,
            };
            let start_id = match opened {
                Opened::Ready(start_id) => Some(start_id),
                Opened::CatchUp {
                    from,
                    tx,
                    snapshot,
                    scope,
                } => {
                    let key = registration.key.clone();
                    let job = catchup::Job {
                        topic: hub.clone(),
                        id,
                        key,
                        from,
                        tx,
                        snapshot,
                        scope,
                    };
                    tokio::spawn(self.clone().catch_up(job));
                    None
                }
            };
            return Ok(Subscription {
                events: rx,
                start_id,
                topic: hub.name.clone(),
                _registration: registration,
            });
        }
    }

    /// Where each partition of a stream from `start` starts; `None` for a live stream. A
    /// start at a time asks Kafka for the offsets of that time.
    async fn partition_starts(
        &self,
        hub: &TopicHub,
        start: &Start,
        partitions: usize,
        scope: Option<usize>,
    ) -> Result<Option<Vec<PartitionStart>>, SubscribeError> {
        let from = match start {
            Start::Live => return Ok(None),
            Start::Earliest | Start::Snapshot => {
                start::per_partition(partitions, scope, |_| Some(PartitionStart::Earliest))
            }
            Start::Token(position) => start::per_partition(partitions, scope, |p| {
                position.offset(p as i32).map(PartitionStart::Offset)
            }),
            Start::Timestamp(ms) => {
                let (source, name, ms) = (self.source.clone(), hub.name.clone(), *ms);
                let offsets =
                    tokio::task::spawn_blocking(move || source.offsets_at(&name, ms, partitions))
                        .await
                        .map_err(|e| {
                            SubscribeError::Unavailable(format!("offset lookup failed: {e}"))
                        })??;
                start::per_partition(partitions, scope, |p| {
                    Some(PartitionStart::Offset(offsets[p]))
                })
            }
        };
        Ok(Some(from))
    }

    /// The topic's entry in the registry, attached to the consumer.
    ///
    /// A topic not yet in the registry gets its entry, and is attached, only under the
    /// assignment lock, and the request waits for its turn at the lock itself: a request that
    /// is gone (its client reset the stream or closed the connection) leaves nothing behind,
    /// neither an entry nor an attach queued for it. The attach runs in a task of its own,
    /// holding the lock, so it completes, or fails and removes the entry with its per-topic
    /// series, even when the request that started it is gone. So every entry outside the lock
    /// is attached.
    async fn attached(self: &Arc<Self>, topic: &str) -> Result<Arc<TopicHub>, SubscribeError> {
        let registered = self.topics.get(topic).map(|entry| entry.value().clone());
        if let Some(hub) = registered.filter(|hub| hub.attached.initialized()) {
            return Ok(hub);
        }
        let assignment = self.assignment.clone().lock_owned().await;
        let hub = self
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| Arc::new(self.new_topic(topic)))
            .clone();
        if hub.attached.initialized() {
            return Ok(hub);
        }
        let (this, topic) = (self.clone(), hub.clone());
        let attach = tokio::spawn(async move {
            let attached = this.attach(&topic).await;
            match &attached {
                Ok(()) => {
                    let _ = topic.attached.set(());
                }
                Err(_) => this.forget(&topic),
            }
            drop(assignment);
            attached
        });
        attach
            .await
            .map_err(|e| SubscribeError::Unavailable(format!("attach task failed: {e}")))??;
        Ok(hub)
    }

    /// Removes an entry that failed to attach from the registry, with its per-topic series: its
    /// name came from a request, and names that do not exist must not grow the registry or the
    /// metrics. Called with the assignment lock held.
    fn forget(&self, hub: &Arc<TopicHub>) {
        if let dashmap::mapref::entry::Entry::Occupied(entry) = self.topics.entry(hub.name.clone())
        {
            if Arc::ptr_eq(entry.get(), hub) {
                // Under the entry's lock: a request for the same name waits, then registers a
                // new entry and new series.
                self.metrics.remove_topic(&hub.name);
                entry.remove();
            }
        }
    }

    /// Refuses a resume id ahead of the log: a partition the topic does not have, or an offset
    /// past a partition's end. Only ids ahead of what this replica has dispatched ask Kafka
    /// (another replica may be ahead of this one, but never ahead of the log).
    async fn check_not_ahead(
        &self,
        hub: &TopicHub,
        token: &Position,
    ) -> Result<(), SubscribeError> {
        let beyond = {
            let state = hub.lock();
            let live = &state.positions;
            token
                .entries
                .iter()
                .any(|&(p, o)| live.get(p as usize).is_none_or(|&next| o > next))
        };
        if !beyond {
            return Ok(());
        }
        let (source, name) = (self.source.clone(), hub.name.clone());
        let ends = tokio::task::spawn_blocking(move || {
            let count = source.partition_count(&name)?;
            source.end_offsets(&name, count)
        })
        .await
        .map_err(|e| SubscribeError::Unavailable(format!("offset lookup failed: {e}")))??;
        for &(p, offset) in &token.entries {
            match ends.get(p as usize) {
                None => {
                    return Err(SubscribeError::AheadOfLog(format!(
                        "resume id names partition {p}, but the topic has {} partitions",
                        ends.len()
                    )))
                }
                Some(&end) if offset > end => {
                    return Err(SubscribeError::AheadOfLog(format!(
                        "resume id is ahead of the log: partition {p} ends at offset {end}, the id says {offset} (an id from another cluster, or from a topic recreated under the same name?)"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Registers a stream under the topic lock: live, resumed from the ring, or pending a
    /// catch-up from Kafka.
    fn open(
        &self,
        hub: &TopicHub,
        state: &mut TopicState,
        spec: Spec<'_>,
        from: Option<Vec<PartitionStart>>,
        tx: queue::Sender,
    ) -> Opened {
        let Spec {
            id,
            key,
            scope,
            snapshot,
        } = spec;
        state.streams += 1;
        state.idle_since = None;
        let Some(from) = from else {
            state.register(
                id,
                key,
                Sub {
                    tx,
                    floor: None,
                    scope,
                },
            );
            return Opened::Ready(id_for(hub.fingerprint, scope, &state.positions));
        };
        let from: Vec<LogStart> = from
            .iter()
            .zip(&state.positions)
            .map(|(start, &live)| start.in_log(live))
            .collect();
        // A resume is served from memory when every partition's start is known and in the ring.
        let ring = state.ring.as_ref();
        let in_memory = from
            .iter()
            .map(|start| start.offset())
            .collect::<Option<Vec<i64>>>()
            .filter(|at| !snapshot && ring.is_some_and(|ring| ring.covers(at)));
        let Some(at) = in_memory else {
            state.pending.insert(id);
            let source = if snapshot { "snapshot" } else { "kafka" };
            self.metrics.resumes.with_label_values(&[source]).inc();
            return Opened::CatchUp {
                from,
                tx,
                snapshot,
                scope,
            };
        };
        self.metrics.resumes.with_label_values(&["memory"]).inc();
        let start_id = id_for(hub.fingerprint, scope, &at);
        let mut batch = BytesMut::new();
        let floor = replay(
            hub.fingerprint,
            state.ring.as_ref(),
            key,
            scope,
            at,
            &mut batch,
        );
        if !batch.is_empty() {
            // The queue is new and empty: one slot takes the whole replay.
            let _ = tx.try_send(batch.freeze());
        }
        state.register(id, key, Sub { tx, floor, scope });
        Opened::Ready(start_id)
    }

    /// Moves a pending stream to live if `position` is at or after the live position; `prefix`
    /// (made under the lock, so nothing live can come before it) is queued first.
    fn hand_over(
        &self,
        job: &catchup::Job,
        position: &[i64],
        ring_ok: bool,
        prefix: impl FnOnce() -> Option<Bytes>,
    ) -> HandOver {
        let (id, tx) = (job.id, &job.tx);
        let mut state = job.topic.lock();
        if !state.pending.contains(&id) {
            return HandOver::Gone;
        }
        // Caught up with live, or close enough that the replay ring holds the rest: the reader
        // need not catch a moving end on every partition at the same instant.
        let from_ring = !covers(position, &state.positions);
        if from_ring && !(ring_ok && state.ring.as_ref().is_some_and(|r| r.covers(position))) {
            return HandOver::NotYet;
        }
        // A broken promise ends short-id streams (the reader sent the "every partition" id).
        if job.scope.is_some() && job.topic.broken.load(Ordering::Acquire) {
            return HandOver::Gone;
        }
        // Scoping may have ended while this stream caught up (partitions added).
        let scope = job.scope.filter(|_| state.key_scoping);
        let mut replayed = BytesMut::new();
        let floor = if from_ring {
            let ring = state.ring.as_ref();
            let key = job.key.as_deref();
            replay(
                job.topic.fingerprint,
                ring,
                key,
                scope,
                position.to_vec(),
                &mut replayed,
            )
        } else {
            Some(position.to_vec())
        };
        // The replay needs a slot in the stream's queue: try again at the next check.
        if !replayed.is_empty() && tx.capacity() == 0 {
            return HandOver::NotYet;
        }
        let mut batch = BytesMut::new();
        if let Some(prefix) = prefix() {
            batch.extend_from_slice(&prefix);
        }
        batch.extend_from_slice(&replayed);
        // The caller made room for one chunk; if the client took it back, the stream ends here
        // (cut off like any stream that falls behind) rather than hold the reader.
        if !batch.is_empty() && tx.try_send(batch.freeze()).is_err() {
            return HandOver::Gone;
        }
        state.pending.remove(&id);
        let via = if from_ring { "ring" } else { "live" };
        self.metrics
            .catchup_handovers
            .with_label_values(&[via])
            .inc();
        let sub = Sub {
            tx: tx.clone(),
            floor,
            scope,
        };
        state.register(id, job.key.as_deref(), sub);
        HandOver::Done
    }

    fn new_topic(&self, topic: &str) -> TopicHub {
        let broken = self.broken_promises.lock().contains(topic);
        let promise = self.config.key_partitioner.filter(|_| !broken);
        // Per-topic series show at zero from the topic's first stream.
        for family in [&self.metrics.gaps, &self.metrics.gap_offsets_skipped] {
            family.with_label_values(&[topic]);
        }
        TopicHub {
            name: topic.to_string(),
            fingerprint: position::fingerprint(topic),
            attached: tokio::sync::OnceCell::new(),
            state: Mutex::new(TopicState {
                key_scoping: promise.is_some(),
                ..TopicState::default()
            }),
            promise,
            broken: AtomicBool::new(broken),
            mismatches: self
                .metrics
                .key_partition_mismatches
                .with_label_values(&[topic]),
            latency: self.metrics.event_latency.with_label_values(&[topic]),
            records: self.metrics.records_consumed.with_label_values(&[topic]),
            cutoffs: self.metrics.slow_stream_cutoffs.with_label_values(&[topic]),
            oversize: self.metrics.records_oversize.with_label_values(&[topic]),
            keyless: self.metrics.snapshot_keyless.with_label_values(&[topic]),
        }
    }

    /// Encodes one record, or an `event: oversize` notice for a value over the limit (counted).
    fn encode(
        &self,
        hub: &TopicHub,
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

    /// True when `key` on partition `p` of a topic with `partitions` partitions breaks the
    /// topic's promise. Empty keys are placed at random by every partitioner: never checked.
    fn off_promise(hub: &TopicHub, key: &[u8], p: usize, partitions: usize) -> bool {
        hub.promise.is_some_and(|promise| {
            !key.is_empty()
                && !hub.broken.load(Ordering::Relaxed)
                && promise.partition(key, partitions) != p
        })
    }

    /// A record was found off the partition the promised partitioner gives its key: counted,
    /// logged once per topic, and the topic's key streams carry full ids for good.
    fn promise_broken(
        &self,
        hub: &TopicHub,
        state: &mut TopicState,
        partition: usize,
        seen_by: &str,
    ) {
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
        hub: &TopicHub,
        key: &[u8],
        p: usize,
        offset: i64,
        event: &Bytes,
    ) -> Option<Bytes> {
        if !state.key_scoping {
            return None;
        }
        let set = state.by_key.get(key)?;
        if !set.values().any(|sub| sub.scope.is_some()) {
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
            if Self::off_promise(&hub, k, p, state.positions.len()) {
                self.promise_broken(&hub, state, p, "live");
            }
        }
        let keyed = key.is_some_and(|k| state.by_key.contains_key(k));
        if state.all.is_empty() && !keyed && state.ring.is_none() {
            return;
        }
        let id = position::encode_dense(hub.fingerprint, &state.positions);
        let event = self.encode(&hub, &id, p, offset, key, value);
        if !state.all.is_empty() || keyed {
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
        let mut offer = |streams: &mut HashMap<u64, Sub>| {
            streams.retain(|_, sub| {
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
                    Ok(()) => true,
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
        offer(&mut state.all);
        if let Some(k) = key {
            if let Some(set) = state.by_key.get_mut(k) {
                offer(set);
                if set.is_empty() {
                    state.by_key.remove(k);
                }
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

    /// Ends every stream (their queues drain first) and refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.readers.close();
        for entry in self.topics.iter() {
            entry.value().lock().end_all(None);
        }
    }
}

/// What a new stream asks for.
struct Spec<'a> {
    id: u64,
    key: Option<&'a [u8]>,
    scope: Option<usize>,
    snapshot: bool,
}

enum Opened {
    Ready(String),
    CatchUp {
        from: Vec<LogStart>,
        tx: queue::Sender,
        snapshot: bool,
        scope: Option<usize>,
    },
}

enum HandOver {
    Done,
    NotYet,
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_scope_is_the_promised_partition_unless_resumed_from_a_full_id() {
        let promise = Some(KeyPartitioner::Crc32);
        let p = KeyPartitioner::Crc32.partition(b"k", 4);
        let key = Some(&b"k"[..]);
        assert_eq!(key_scope(promise, 4, key, &Start::Live), Some(p));
        assert_eq!(key_scope(promise, 4, key, &Start::Earliest), Some(p));
        assert_eq!(key_scope(None, 4, key, &Start::Live), None);
        assert_eq!(key_scope(promise, 4, None, &Start::Live), None);
        assert_eq!(key_scope(promise, 4, Some(b""), &Start::Live), None);
        let token = |entries: Vec<(i32, i64)>, every| Start::Token(Position { entries, every });
        let short = token(vec![(p as i32, 5)], false);
        assert_eq!(key_scope(promise, 4, key, &short), Some(p));
        let every = token(vec![(p as i32, 5)], true);
        assert_eq!(key_scope(promise, 4, key, &every), None);
        let other = token(vec![((p as i32 + 1) % 4, 5)], false);
        assert_eq!(key_scope(promise, 4, key, &other), None);
        let full = token((0..4).map(|q| (q, 5)).collect(), false);
        assert_eq!(key_scope(promise, 4, key, &full), None);
    }

    #[test]
    fn floor_skips_below_and_raises_ids_until_covered() {
        let fp = position::fingerprint("t");
        let event = sse::record_event(&position::encode_dense(fp, &[5, 3]), None, Some(b"v"));
        // The client has p0 up to 6 and p1 up to 2 (another replica's interleaving).
        let mut floor = Some(vec![6, 2]);
        assert_eq!(
            for_stream(&mut floor, None, 0, 4, &[5, 3], &event, fp),
            None,
            "p0@4 already delivered"
        );
        let raised = for_stream(&mut floor, None, 1, 2, &[5, 3], &event, fp).unwrap();
        let id = position::encode_dense(fp, &[6, 3]);
        assert_eq!(raised, sse::with_id(&event, &id));
        assert_eq!(floor, Some(vec![6, 3]));
        // Once the shared id covers the floor, the shared bytes go out and the floor is gone.
        let event2 = sse::record_event(&position::encode_dense(fp, &[7, 3]), None, Some(b"w"));
        assert_eq!(
            for_stream(&mut floor, None, 0, 6, &[7, 3], &event2, fp),
            Some(event2.clone())
        );
        assert_eq!(floor, None);
    }
}
