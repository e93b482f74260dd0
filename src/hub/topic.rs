//! One topic: its live channel, and the state its lock guards: the position of the last
//! record dispatched, the replay ring, and the registered streams (live by key or for every
//! record, connections' groups of streams for every record, and those still catching up).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use prometheus::IntCounter;
use tracing::warn;

use super::floor::id_for;
use super::group::{Group, Handoff, Owner};
use super::order::{Level, Ordered};
use super::queue;
use super::replay;
use crate::filter::Filter;
use crate::keyset::Keys;
use crate::metrics::{Metrics, TopicSeries};
use crate::partitioner::KeyPartitioner;
use crate::position;
use crate::sse;

/// At most one slow-stream cut-off summary per topic this often.
const CUTOFF_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One topic's live channel: its name, its state under one lock, and its per-topic series.
pub(super) struct Topic {
    pub(super) name: String,
    /// The series its streams count into (and its name again), shared by them.
    pub(super) series: Arc<TopicSeries>,
    pub(super) fingerprint: u32,
    pub(super) attached: tokio::sync::OnceCell<()>,
    pub(super) state: Mutex<TopicState>,
    /// The partitioner promised for this topic; `None` without a promise, or when an earlier
    /// entry of the topic in this process saw it broken (a promise that breaks now stays set:
    /// `broken` says so).
    pub(super) promise: Option<KeyPartitioner>,
    /// Set once a record broke the promise (readers check it without the lock).
    pub(super) broken: AtomicBool,
    pub(super) mismatches: IntCounter,
    pub(super) latency: prometheus::Histogram,
    pub(super) records: IntCounter,
    /// `ksg_records_encoded_total{topic}`.
    pub(super) encoded: IntCounter,
    pub(super) cutoffs: IntCounter,
    pub(super) oversize: IntCounter,
    pub(super) keyless: IntCounter,
    /// `ksg_filter_unmatchable_total{topic}`.
    pub(super) unmatchable: IntCounter,
}

/// A registered stream: its keys (`None`: every record), its queue, while resuming its floor,
/// and for a key stream whose ids name only its key's partition, that partition. It is here
/// only until its floor is covered: then it moves to its connection's group (`handoff`).
pub(super) struct Sub {
    pub(super) keys: Option<Keys>,
    pub(super) format: crate::sse::Format,
    pub(super) filter: Option<Filter>,
    pub(super) tx: queue::Sender,
    pub(super) floor: Option<Vec<i64>>,
    pub(super) scope: Option<usize>,
    pub(super) handoff: Handoff,
}

/// The connections' groups of one key. Most keys are read on one connection: that group is
/// kept in the topic's map itself, so the Kafka reader reaches it without looking through a
/// second map (a cache miss per keyed record on a busy topic of many keys); a key read on
/// several connections has its groups by id.
pub(super) enum KeyGroups {
    One(Arc<Group>),
    Many(HashMap<u64, Arc<Group>>),
}

impl KeyGroups {
    pub(super) fn get(&self, id: u64) -> Option<&Arc<Group>> {
        match self {
            KeyGroups::One(g) => (g.id == id).then_some(g),
            KeyGroups::Many(set) => set.get(&id),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<Group>> {
        let (one, many) = match self {
            KeyGroups::One(g) => (Some(g), None),
            KeyGroups::Many(set) => (None, Some(set.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        match self {
            KeyGroups::One(_) => 1,
            KeyGroups::Many(set) => set.len(),
        }
    }

    /// Adds `group` (replacing one of its id).
    fn insert(&mut self, group: Arc<Group>) {
        match self {
            KeyGroups::One(g) if g.id == group.id => *g = group,
            KeyGroups::One(g) => {
                let set = HashMap::from([(g.id, g.clone()), (group.id, group)]);
                *self = KeyGroups::Many(set);
            }
            KeyGroups::Many(set) => {
                set.insert(group.id, group);
            }
        }
    }

    /// Removes the group `id`; true when none is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            KeyGroups::One(g) => g.id == id,
            KeyGroups::Many(set) => {
                set.remove(&id);
                set.is_empty()
            }
        }
    }

    /// Keeps the groups `keep` says to; true when none is left.
    fn retain(&mut self, mut keep: impl FnMut(&Arc<Group>) -> bool) -> bool {
        match self {
            KeyGroups::One(g) => !keep(g),
            KeyGroups::Many(set) => {
                set.retain(|_, g| keep(g));
                set.is_empty()
            }
        }
    }
}

/// Streams of several keys with queues of their own (resumed ones, until the live position
/// covers their floor), and an index from each key to them: a record is offered to the streams
/// of its key, found through the index, never by looking at every such stream.
#[derive(Default)]
pub(super) struct SetSubs {
    pub(super) subs: HashMap<u64, Sub>,
    pub(super) index: HashMap<Vec<u8>, Vec<u64>>,
}

impl SetSubs {
    pub(super) fn insert(&mut self, id: u64, sub: Sub) {
        for key in sub.keys.iter().flat_map(Keys::iter) {
            self.index.entry(key.to_vec()).or_default().push(id);
        }
        self.subs.insert(id, sub);
    }

    /// Takes stream `id` out, with its entries in the index.
    pub(super) fn remove(&mut self, id: u64) -> Option<Sub> {
        let sub = self.subs.remove(&id)?;
        for key in sub.keys.iter().flat_map(Keys::iter) {
            if let Some(ids) = self.index.get_mut(key) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.index.remove(key);
                }
            }
        }
        Some(sub)
    }

    fn clear(&mut self) {
        self.subs.clear();
        self.index.clear();
    }
}

/// Which list of a topic's streams with queues of their own a stream is in.
#[derive(Clone, Copy)]
pub(super) enum Listed<'a> {
    /// Every record.
    All,
    /// One key.
    Key(&'a [u8]),
    /// Several keys.
    Set,
}

impl<'a> Listed<'a> {
    /// The list of a stream of `keys`.
    pub(super) fn of(keys: Option<&'a Keys>) -> Listed<'a> {
        match keys {
            None => Listed::All,
            Some(keys) => keys.single().map_or(Listed::Set, Listed::Key),
        }
    }
}

/// What a topic's lock guards: its position, its ring and its streams.
#[derive(Default)]
pub(super) struct TopicState {
    pub(super) released: bool,
    /// Key streams' ids name only their key's partition (a partitioner is promised, no record
    /// broke the promise and no partition was added).
    pub(super) key_scoping: bool,
    /// Next offset per partition: the position after the last record dispatched.
    pub(super) positions: Vec<i64>,
    pub(super) ring: Option<replay::Shared>,
    pub(super) all: HashMap<u64, Sub>,
    pub(super) by_key: HashMap<Vec<u8>, HashMap<u64, Sub>>,
    pub(super) sets: SetSubs,
    /// Connections' groups of live streams that take every record, by id.
    pub(super) groups: HashMap<u64, Arc<Group>>,
    /// Connections' groups of live streams that take every record passing a filter, by filter
    /// (each filter is tested once per record), then by id.
    pub(super) filtered: HashMap<Filter, HashMap<u64, Arc<Group>>>,
    /// Connections' groups of live streams of one key or several, by key (a group of several
    /// keys under each of them), then by id.
    pub(super) key_groups: HashMap<Vec<u8>, KeyGroups>,
    /// Streams catching up from Kafka, not yet receiving live records.
    pub(super) pending: HashSet<u64>,
    pub(super) streams: usize,
    pub(super) idle_since: Option<Instant>,
    /// Slow-stream cut-offs not yet logged, and when the last summary was logged.
    pub(super) cutoffs_unlogged: u64,
    pub(super) cutoffs_logged_at: Option<Instant>,
}

/// Maps and sets of a topic's streams larger than this keep their room.
const KEPT_ROOM: usize = 1024;

/// Gives back most of a map's room once it holds less than an eighth of it: after a burst of
/// resumes (every stream of a restarted replica catches up at once) the topic's lists of
/// pending and resuming streams are nearly empty again, and a map never shrinks by itself.
fn shrink_sparse<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > KEPT_ROOM && map.len() < map.capacity() / 8 {
        map.shrink_to(2 * map.len());
    }
}

impl TopicState {
    /// Gives back the room of the streams' lists that a burst left mostly empty (called where
    /// streams leave them).
    pub(super) fn tidy(&mut self) {
        if self.pending.capacity() > KEPT_ROOM && self.pending.len() < self.pending.capacity() / 8 {
            self.pending.shrink_to(2 * self.pending.len());
        }
        shrink_sparse(&mut self.all);
        shrink_sparse(&mut self.by_key);
        shrink_sparse(&mut self.sets.subs);
        shrink_sparse(&mut self.sets.index);
    }

    /// Every stream with a queue of its own.
    pub(super) fn own_queue_subs_mut(&mut self) -> impl Iterator<Item = &mut Sub> {
        self.all
            .values_mut()
            .chain(self.by_key.values_mut().flat_map(HashMap::values_mut))
            .chain(self.sets.subs.values_mut())
    }

    /// From now on every key stream of the topic carries full ids: those with short ids switch
    /// in place (partitions were added: keys move, but no record of a key was ever elsewhere).
    pub(super) fn widen_key_streams(&mut self) {
        self.key_scoping = false;
        for sub in self.by_key.values_mut().flat_map(|set| set.values_mut()) {
            sub.scope = None;
        }
        for group in self.key_groups.values().flat_map(KeyGroups::iter) {
            group.widen();
        }
    }

    /// True when `group` is registered with the topic (not closed or replaced).
    pub(super) fn holds_group(&self, group: &Arc<Group>) -> bool {
        self.registered(group.keys.as_ref(), group.filter.as_ref(), group.id)
            .is_some_and(|g| Arc::ptr_eq(g, group))
    }

    /// The group `id` of `keys` and `filter`, if it is registered.
    pub(super) fn registered(
        &self,
        keys: Option<&Keys>,
        filter: Option<&Filter>,
        id: u64,
    ) -> Option<&Arc<Group>> {
        match (keys, filter) {
            (None, None) => self.groups.get(&id),
            (None, Some(filter)) => self.filtered.get(filter)?.get(&id),
            (Some(keys), _) => self.key_groups.get(keys.first())?.get(id),
        }
    }

    /// Registers a connection's new group.
    pub(super) fn insert_group(&mut self, group: Arc<Group>) {
        let Some(keys) = &group.keys else {
            match &group.filter {
                None => self.groups.insert(group.id, group),
                Some(filter) => {
                    let set = self.filtered.entry(filter.clone()).or_default();
                    set.insert(group.id, group)
                }
            };
            return;
        };
        for key in keys.iter() {
            match self.key_groups.get_mut(key) {
                Some(set) => set.insert(group.clone()),
                None => {
                    self.key_groups
                        .insert(key.to_vec(), KeyGroups::One(group.clone()));
                }
            }
        }
    }

    /// Unregisters a group whose last stream went.
    pub(super) fn remove_group(&mut self, group: &Arc<Group>) {
        let Some(keys) = &group.keys else {
            match &group.filter {
                None => {
                    self.groups.remove(&group.id);
                }
                Some(filter) => {
                    let emptied = self.filtered.get_mut(filter).is_some_and(|set| {
                        set.remove(&group.id);
                        set.is_empty()
                    });
                    if emptied {
                        self.filtered.remove(filter);
                    }
                }
            }
            return;
        };
        for key in keys.iter() {
            let emptied = self
                .key_groups
                .get_mut(key)
                .is_some_and(|set| set.remove(group.id));
            if emptied {
                self.key_groups.remove(key);
            }
        }
    }

    /// Every group once (a group of several keys is listed under each of them).
    fn every_group(&self) -> impl Iterator<Item = &Arc<Group>> {
        let keyed = self.key_groups.iter().flat_map(|(key, set)| {
            set.iter()
                .filter(move |g| g.keys.as_ref().is_some_and(|k| k.first() == key.as_slice()))
        });
        let filtered = self.filtered.values().flat_map(HashMap::values);
        self.groups.values().chain(filtered).chain(keyed)
    }

    /// A record broke the partitioner promise: records of a key may be on partitions its
    /// short-id streams never read. Each such stream gets an id-only block whose id tells any
    /// replica to read every partition (those it never read from their earliest offset), then
    /// ends; its client resumes with that id and loses nothing.
    pub(super) fn end_short_streams(&mut self, fingerprint: u32) {
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
        // The groups of short-id streams end the same way: their streams have read everything
        // up to the live position when they read the last block.
        let positions = &self.positions;
        self.key_groups.retain(|_, set| {
            !set.retain(|group| {
                let Some(p) = group.view().scope else {
                    return true;
                };
                let id = position::encode_every(fingerprint, &[(p as i32, positions[p])]);
                ended += group.close(Some(&sse::id_only(&id)));
                false
            })
        });
        for _ in 0..ended {
            self.stream_gone();
        }
    }

    /// Ends every stream of the topic: each live stream gets `last(scope, floor)` after what
    /// is already queued for it, then its queue closes; catch-ups in progress stop at their next
    /// hand-over check.
    pub(super) fn end_all(&mut self, last: impl Fn(Option<usize>, Option<&[i64]>) -> Bytes) {
        let mut count = 0;
        for sub in self.own_queue_subs_mut() {
            let _ = sub.tx.try_send(last(sub.scope, sub.floor.as_deref()));
            count += 1;
        }
        let grouped: usize = self
            .every_group()
            .map(|g| g.close(Some(&last(g.view().scope, None))))
            .sum();
        count += self.pending.len() + grouped;
        self.groups.clear();
        self.filtered.clear();
        self.key_groups.clear();
        self.all.clear();
        self.by_key.clear();
        self.sets.clear();
        self.pending.clear();
        for _ in 0..count {
            self.stream_gone();
        }
    }

    /// Ends every stream at shutdown: a live stream's last block is an id-only block with the
    /// live position (beyond its own floor, in its own id form). So a key stream's client
    /// resumes from where the topic was, not from its key's last record, and the clients of
    /// one view resume from the same id: after a restart one catch-up cohort reads for all of
    /// them, and only what came after.
    pub(super) fn end_all_at_live(&mut self, fingerprint: u32) {
        let positions = self.positions.clone();
        let scoping = self.key_scoping;
        self.end_all(|scope, floor| {
            let mut at = positions.clone();
            for (slot, f) in at.iter_mut().zip(floor.unwrap_or_default()) {
                *slot = (*slot).max(*f);
            }
            sse::id_only(&id_for(fingerprint, scope.filter(|_| scoping), &at))
        });
    }

    /// Counts `cut` slow-stream cut-offs toward a summary logged at most every
    /// [`CUTOFF_LOG_EVERY`] per topic, so a crowd of stalled clients cannot flood the log.
    pub(super) fn log_cutoffs(&mut self, topic: &str, cut: u64) {
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

    /// One stream fewer; the topic is idle from when its last stream goes.
    pub(super) fn stream_gone(&mut self) {
        self.streams -= 1;
        if self.streams == 0 {
            self.idle_since = Some(Instant::now());
        }
    }

    /// Registers a live stream with a queue of its own: among the streams of every record, of
    /// its key, or of several keys.
    pub(super) fn register(&mut self, id: u64, sub: Sub) {
        match Listed::of(sub.keys.as_ref()) {
            Listed::All => {
                self.all.insert(id, sub);
            }
            Listed::Key(k) => {
                let k = k.to_vec();
                self.by_key.entry(k).or_default().insert(id, sub);
            }
            Listed::Set => self.sets.insert(id, sub),
        }
    }

    /// Takes stream `id` out of `list`, if it is there.
    pub(super) fn unregister(&mut self, id: u64, list: Listed<'_>) -> Option<Sub> {
        match list {
            Listed::All => self.all.remove(&id),
            Listed::Key(k) => {
                let set = self.by_key.get_mut(k)?;
                let sub = set.remove(&id);
                if set.is_empty() {
                    self.by_key.remove(k);
                }
                sub
            }
            Listed::Set => self.sets.remove(id),
        }
    }
}

impl Topic {
    /// A topic's entry, with its per-topic series: `promise` is the partitioner promised for it,
    /// `broken` whether a record already broke that promise in this process.
    pub(super) fn new(
        topic: &str,
        promise: Option<KeyPartitioner>,
        broken: bool,
        metrics: &Metrics,
    ) -> Topic {
        // Per-topic series show at zero from the topic's first stream.
        for family in [&metrics.gaps, &metrics.gap_offsets_skipped] {
            family.with_label_values(&[topic]);
        }
        Topic {
            name: topic.to_string(),
            series: metrics.topic_series(topic),
            fingerprint: position::fingerprint(topic),
            attached: tokio::sync::OnceCell::new(),
            state: Mutex::new(TopicState {
                key_scoping: promise.is_some(),
                ..TopicState::default()
            }),
            promise,
            broken: AtomicBool::new(broken),
            mismatches: metrics.key_partition_mismatches.with_label_values(&[topic]),
            latency: metrics.event_latency.with_label_values(&[topic]),
            records: metrics.records_consumed.with_label_values(&[topic]),
            encoded: metrics.records_encoded.with_label_values(&[topic]),
            cutoffs: metrics.slow_stream_cutoffs.with_label_values(&[topic]),
            oversize: metrics.records_oversize.with_label_values(&[topic]),
            keyless: metrics.snapshot_keyless.with_label_values(&[topic]),
            unmatchable: metrics.filter_unmatchable.with_label_values(&[topic]),
        }
    }

    /// The topic's state, locked (never held across an `.await`).
    pub(super) fn lock(&self) -> Ordered<MutexGuard<'_, TopicState>> {
        Ordered::new(Level::Topic, self.state.lock())
    }

    /// True when `key` on partition `p` of a topic with `partitions` partitions breaks the
    /// topic's promise. Empty keys are placed at random by every partitioner: never checked.
    pub(super) fn off_promise(&self, key: &[u8], p: usize, partitions: usize) -> bool {
        self.promise.is_some_and(|promise| {
            !key.is_empty()
                && !self.broken.load(Ordering::Relaxed)
                && promise.partition(key, partitions) != p
        })
    }
}

impl Owner for Topic {
    fn leave(&self, group: &Arc<Group>, leave_log: &mut dyn FnMut() -> bool) -> bool {
        let mut state = self.lock();
        let empty = leave_log();
        if state.holds_group(group) {
            state.stream_gone();
            if empty {
                state.remove_group(group);
            }
        }
        empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_a_burst_of_resumes_filled_give_their_room_back() {
        let mut state = TopicState::default();
        // A restarted replica: every stream is pending a catch-up at once.
        state.pending.extend(0..50_000u64);
        let burst = state.pending.capacity();
        // They are handed over; a few are still catching up.
        for id in 100..50_000 {
            state.pending.remove(&id);
            state.tidy();
        }
        assert_eq!(state.pending.len(), 100);
        assert!(
            state.pending.capacity() <= KEPT_ROOM.max(burst / 16),
            "{} of {burst} kept",
            state.pending.capacity()
        );
        assert!((0..100).all(|id| state.pending.contains(&id)));
        // A list that stays small keeps its room: no reallocation per stream. (A removal may
        // itself lower a map's capacity, by the slot it leaves marked: only `tidy` is checked.)
        let mut small = TopicState::default();
        small.pending.extend(0..500u64);
        for id in 0..490 {
            small.pending.remove(&id);
            let room = small.pending.capacity();
            small.tidy();
            assert_eq!(small.pending.capacity(), room);
        }
    }
}
