//! Opening a stream: the topic's entry (attached on its first stream), where each partition
//! starts, which partition a key stream's ids name, and the registration: live, replayed from
//! the ring, or pending a catch-up from Kafka that [`Hub::hand_over`] later moves to live.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;

use super::floor::{covers, id_for};
use super::group::{Cursor, Handoff, Owner, Seat, View};
use super::replay::{Origin, Replay};
use super::topic::{Listed, Sub, Topic, TopicState};
use super::{catchup, queue, Hub, SubscribeError};
use crate::filter::Filter;
use crate::keyset::Keys;
use crate::metrics::TopicSeries;
use crate::partitioner::KeyPartitioner;
use crate::position::Position;
use crate::source::SourceError;
use crate::sse;
use crate::sse::Format;
use crate::start::{self, LogStart, PartitionStart, Start};

/// Where a stream's events come from.
pub enum Events {
    /// Its place in its connection's group for its view of the topic (a live stream).
    Group(Cursor),
    /// Its own queue (the ring's replay, what a catch-up reader read), then, once the queue
    /// ends, the place in its connection's group that the hub left in the slot; an empty slot,
    /// or a queue cut off (a replay the ring outran), ends the stream. Boxed: a stream reads
    /// its own queue only until it is live, and the open streams keep the room of a cursor.
    Then(Box<Own>),
    /// The streams of several topics, read as one (see [`super::merge`]).
    Topics(Box<super::merge::Merge>),
}

/// A stream's own queue and the slot of its cursor once live (see [`Events::Then`]), and its
/// registration with the topic until then: once in its group the stream is the group's, and
/// nothing of its time before stays with it.
pub struct Own {
    queue: queue::Receiver,
    slot: Arc<Mutex<Option<Cursor>>>,
    _registration: Option<Registration>,
}

impl Events {
    /// The stream's own `queue`, then the cursor the hub leaves in `slot`; `registration`
    /// holds its place in the topic until then (`None`: fed by a test).
    pub(super) fn then(
        queue: queue::Receiver,
        slot: Arc<Mutex<Option<Cursor>>>,
        registration: Option<Registration>,
    ) -> Events {
        Events::Then(Box::new(Own {
            queue,
            slot,
            _registration: registration,
        }))
    }

    /// The next event; `None` once the stream's events are over.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match self {
            Events::Group(cursor) => cursor.poll_recv(),
            Events::Topics(merge) => merge.poll_recv(cx),
            Events::Then(own) => match own.queue.poll_recv(cx) {
                Poll::Ready(None) => {
                    let next = own.slot.lock().take();
                    match next.filter(|_| !own.queue.cut_off()) {
                        Some(cursor) => {
                            *self = Events::Group(cursor);
                            self.poll_recv(cx)
                        }
                        None => Poll::Ready(None),
                    }
                }
                other => other,
            },
        }
    }

    /// The next event if there is one now (for a group's cursor: if there was one at its last
    /// read), taken along with the one just received. A queue's end is left to
    /// [`Events::poll_recv`], so what one call returns comes from one place.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        match self {
            Events::Then(own) => own.queue.try_recv(),
            Events::Group(cursor) => cursor.try_more(),
            Events::Topics(merge) => merge.try_recv(),
        }
    }
}

/// The `reason` of the gap a resume id ahead of the log opens with.
const GAP_AHEAD: &str = "the resume id is ahead of the log: the topic was recreated, or the id comes from another cluster; the partitions concerned start from their earliest offsets";

/// An open subscription: the stream's events and its start position. Dropping it unregisters.
pub struct Subscription {
    /// Encoded events, in order.
    pub events: Events,
    /// The id the preamble carries: the start position, or `None` for a stream catching up
    /// from Kafka (its first event brings an id; until then the client's own id stands).
    pub start_id: Option<String>,
    /// The topic's name and series, shared by its streams.
    pub series: Arc<TopicSeries>,
    /// An event the stream sends right after its preamble: the `event: gap` of a resume id
    /// the log cannot honour (see [`Hub::rebase_if_ahead`]).
    pub prelude: Option<Bytes>,
}

impl Subscription {
    /// A live subscription registered with no hub, fed by the returned sender through a queue
    /// of `bound` items: for tests of what consumes one.
    #[cfg(test)]
    pub(crate) fn detached(topic: &str, bound: usize) -> (queue::Sender, Subscription) {
        let series = crate::metrics::Metrics::new(&[]).topic_series(topic);
        let (tx, events) = queue::channel(bound, usize::MAX);
        let subscription = Subscription {
            // An empty slot: the stream ends with its queue.
            events: Events::then(events, Arc::new(Mutex::new(None)), None),
            start_id: Some(String::from("test-start")),
            series,
            prelude: None,
        };
        (tx, subscription)
    }

    /// The subscriptions of several topics (sorted by name) read as one stream: `clients`,
    /// the client's id of each topic (if it resumed), `plain`: in the plain format (see
    /// [`super::merge`]).
    pub fn merged(
        subscriptions: Vec<Subscription>,
        clients: Vec<Option<String>>,
        plain: bool,
    ) -> Subscription {
        let series = subscriptions[0].series.clone();
        let mut preludes = Vec::new();
        let mut parts = Vec::new();
        for (sub, client) in subscriptions.into_iter().zip(clients) {
            preludes.push(sub.prelude);
            parts.push((sub.series, sub.events, sub.start_id.or(client)));
        }
        let mut merge = super::merge::Merge::new(parts, plain);
        let mut prelude = bytes::BytesMut::new();
        for (i, gap) in preludes.into_iter().enumerate() {
            if let Some(block) = gap.and_then(|gap| merge.prelude(i, &gap)) {
                prelude.extend_from_slice(&block);
            }
        }
        Subscription {
            start_id: merge.id(),
            events: Events::Topics(Box::new(merge)),
            series,
            prelude: (!prelude.is_empty()).then(|| prelude.freeze()),
        }
    }

    /// Its parts: what a stream body keeps for its life (the events, the topic's name and
    /// series) apart from what only its preamble needs (the start id, the prelude), so an open
    /// stream holds no room for the latter.
    pub fn into_parts(self) -> Parts {
        Parts {
            events: self.events,
            series: self.series,
            start_id: self.start_id,
            prelude: self.prelude,
        }
    }
}

/// A [`Subscription`] taken apart (see [`Subscription::into_parts`]).
pub struct Parts {
    /// Encoded events, in order.
    pub events: Events,
    /// The topic's name and series (see [`Subscription::series`]).
    pub series: Arc<TopicSeries>,
    /// The id the preamble carries (see [`Subscription::start_id`]).
    pub start_id: Option<String>,
    /// The event right after the preamble (see [`Subscription::prelude`]).
    pub prelude: Option<Bytes>,
}

/// A stream's place in its topic while it reads its own queue (see [`Own`]): dropping it
/// unregisters the stream. A stream that joined its group at once has none; its cursor
/// unregisters it.
pub(super) struct Registration {
    topic: Arc<Topic>,
    id: u64,
    keys: Option<Keys>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.topic.lock();
        let removed = state.pending.remove(&self.id)
            || state
                .unregister(self.id, Listed::of(self.keys.as_ref()))
                .is_some();
        if removed {
            state.stream_gone();
            state.tidy();
        }
    }
}

/// What a new stream asks for.
struct Spec<'a> {
    id: u64,
    keys: Option<&'a Keys>,
    format: Format,
    filter: Option<&'a Filter>,
    scope: Option<usize>,
    snapshot: bool,
}

/// What [`Hub::open`] made of a new stream: live in its connection's group, ready (live or
/// replayed from the ring), or a catch-up from Kafka to start.
enum Opened {
    Joined(String, Cursor),
    Ready(String),
    CatchUp {
        from: Vec<LogStart>,
        tx: queue::Sender,
        snapshot: bool,
        scope: Option<usize>,
        handoff: Handoff,
    },
}

/// How a catch-up's hand-over to live went.
pub(super) enum HandOver {
    Done,
    NotYet,
    Gone,
}

/// The partition whose offset alone a key stream's ids carry, or `None` for full ids: a
/// stream of the one key `keys` holds (a stream of several keys carries full ids) on a topic
/// of `partitions` partitions whose partitioner promise (`promise`, while it holds) places the
/// key there. A resumed stream stays short only when
/// resumed from a short id of its key's own partition; a full id, another partition's, or one
/// marked "every partition" is read with full-id meaning (partitions it does not name start at
/// their earliest offset).
fn key_scope(
    promise: Option<KeyPartitioner>,
    partitions: usize,
    keys: Option<&Keys>,
    start: &Start,
) -> Option<usize> {
    let p = match (keys.and_then(Keys::single), promise) {
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

impl Hub {
    /// Opens a stream of `topic` from `start`, optionally only records of `keys` that pass
    /// `filter`, at `seat` on its connection. It reads its connection's group for its view of
    /// the topic once live: at once when it starts live, after its replay or catch-up otherwise.
    #[allow(clippy::too_many_arguments)]
    pub async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        keys: Option<Keys>,
        format: Format,
        filter: Option<Filter>,
        mut start: Start,
        seat: &Seat,
    ) -> Result<Subscription, SubscribeError> {
        let filter = filter.map(|f| self.filters.intern(f));
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(SubscribeError::ShuttingDown);
            }
            let hub = self.attached(topic).await?;
            let mut prelude = None;
            if let Start::Token(token) = &start {
                if let Some((rebased, gap)) = self.rebase_if_ahead(&hub, token).await? {
                    self.metrics.gaps.with_label_values(&[&hub.name]).inc();
                    prelude = Some(gap);
                    start = Start::Token(rebased);
                }
            }
            let (partitions, scoping) = {
                let state = hub.lock();
                (state.positions.len(), state.key_scoping)
            };
            // Envelopes carry full ids: one encoding of a record per format.
            let scope = key_scope(
                hub.promise.filter(|_| scoping),
                partitions,
                keys.as_ref(),
                &start,
            )
            .filter(|_| format == Format::Plain);
            let from = self
                .partition_starts(&hub, &start, partitions, scope)
                .await?;
            let (tx, rx) = queue::channel(self.config.queue, self.config.queue_bytes);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let handoff = Handoff::new(seat);
            let slot = handoff.slot.clone();
            let opened = {
                let mut state = hub.lock();
                // A released entry raced with an idle release: the registry gets a new one.
                // Scoping that ended since the starts were worked out (a record broke the
                // promise, partitions were added) starts over too: the other partitions were
                // set to start live, and may hold the key's records from before.
                let snapshot = start == Start::Snapshot;
                let unscoped = scope.is_some() && !state.key_scoping;
                let spec = Spec {
                    id,
                    keys: keys.as_ref(),
                    format,
                    filter: filter.as_ref(),
                    scope,
                    snapshot,
                };
                (!state.released && !unscoped)
                    .then(|| self.open(&hub, &mut state, spec, from, tx, handoff))
            };
            let Some(opened) = opened else {
                tokio::task::yield_now().await;
                continue;
            };
            let registration = Registration {
                topic: hub.clone(),
                id,
                keys,
            };
            let (events, start_id) = match opened {
                Opened::Joined(start_id, cursor) => (Events::Group(cursor), Some(start_id)),
                Opened::Ready(start_id) => {
                    let rx = rx.counted(&self.metrics.streams_own_queue);
                    (Events::then(rx, slot, Some(registration)), Some(start_id))
                }
                Opened::CatchUp {
                    from,
                    tx,
                    snapshot,
                    scope,
                    handoff,
                } => {
                    let keys = registration.keys.clone();
                    let job = catchup::Job {
                        topic: hub.clone(),
                        id,
                        keys,
                        format,
                        filter: filter.clone(),
                        from,
                        tx,
                        snapshot,
                        scope,
                        handoff,
                    };
                    self.catch_up(job);
                    let rx = rx.counted(&self.metrics.streams_own_queue);
                    (Events::then(rx, slot, Some(registration)), None)
                }
            };
            return Ok(Subscription {
                events,
                start_id,
                series: hub.series.clone(),
                prelude,
            });
        }
    }

    /// Where each partition of a stream from `start` starts; `None` for a live stream. A
    /// start at a time asks Kafka for the offsets of that time.
    async fn partition_starts(
        &self,
        hub: &Topic,
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
    async fn attached(self: &Arc<Self>, topic: &str) -> Result<Arc<Topic>, SubscribeError> {
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
    fn forget(&self, hub: &Arc<Topic>) {
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

    /// A resume id the log cannot honour: it names a partition the topic does not have, or an
    /// offset past a partition's end (the topic was deleted and created again under the same
    /// name, the id comes from another cluster, or the demo's in-memory cluster started over).
    /// The client can do nothing about such an id, so it is not refused: the stream starts
    /// with `event: gap` (no id; `reason` and each partition concerned: the id's offset as
    /// `from`, the earliest offset the log has as `to`, `null` for a partition that is gone)
    /// and reads those partitions from their earliest offsets. An id naming a partition that is
    /// gone concerns every partition it names. An id of a recreated topic whose every offset
    /// falls inside the new log cannot be told from a current one (ids carry a fingerprint of
    /// the topic's name, not of its incarnation). Returns the position to read
    /// from and the event, or `None` for an id the log honours. Only ids ahead of what this
    /// replica has dispatched ask Kafka (another replica may be ahead of this one, but never
    /// ahead of the log).
    async fn rebase_if_ahead(
        &self,
        hub: &Topic,
        token: &Position,
    ) -> Result<Option<(Position, Bytes)>, SubscribeError> {
        let beyond = {
            let state = hub.lock();
            let live = &state.positions;
            token
                .entries
                .iter()
                .any(|&(p, o)| live.get(p as usize).is_none_or(|&next| o > next))
        };
        if !beyond {
            return Ok(None);
        }
        let (source, name) = (self.source.clone(), hub.name.clone());
        let (starts, ends) = tokio::task::spawn_blocking(move || {
            let count = source.partition_count(&name)?;
            Ok::<_, SourceError>((
                source.start_offsets(&name, count)?,
                source.end_offsets(&name, count)?,
            ))
        })
        .await
        .map_err(|e| SubscribeError::Unavailable(format!("offset lookup failed: {e}")))??;
        let mut rebased = token.clone();
        let mut concerned = Vec::new();
        // A partition the topic does not have: partitions are never taken away, so this is
        // another incarnation of the topic (or another cluster's), and none of the id's offsets
        // can be trusted. An offset past the end of a partition that exists may be a log
        // truncated under that partition alone (an unclean leader election): only that one.
        let other_topic = token.entries.iter().any(|&(p, _)| p as usize >= ends.len());
        rebased.entries.retain_mut(|(p, offset)| {
            let at = *p as usize;
            match (starts.get(at), ends.get(at)) {
                (Some(_), Some(&end)) if *offset <= end && !other_topic => true,
                (Some(&earliest), Some(_)) => {
                    concerned.push(format!(
                        r#"{{"partition":{p},"from":{offset},"to":{earliest}}}"#
                    ));
                    *offset = earliest;
                    true
                }
                _ => {
                    concerned.push(format!(r#"{{"partition":{p},"from":{offset},"to":null}}"#));
                    false
                }
            }
        });
        if concerned.is_empty() {
            return Ok(None);
        }
        let data = format!(
            r#"{{"reason":"{GAP_AHEAD}","partitions":[{}]}}"#,
            concerned.join(",")
        );
        Ok(Some((rebased, sse::event(Some(sse::EVENT_GAP), "", &data))))
    }

    /// Places a live stream in its connection's group for `view` of the topic (made and
    /// registered with the topic if there is none), under the topic lock; returns its cursor,
    /// which reads from the next record dispatched. The caller counts the stream.
    pub(super) fn join_group(
        &self,
        hub: &Arc<Topic>,
        state: &mut TopicState,
        seat: &Seat,
        view: View<'_>,
    ) -> Cursor {
        state.idle_since = None;
        let (group, new) = {
            let state = &*state;
            let registered = |g| state.registered(view.keys, view.filter, g).is_some();
            let counters = || (hub.series.events.clone(), hub.series.bytes.clone());
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let owner: Arc<dyn Owner> = hub.clone();
            seat.fanout
                .group_for(&owner, view, registered, id, self.config.queue, counters)
        };
        if new {
            state.insert_group(group.clone());
        }
        group.join(seat.token)
    }

    /// Registers a stream that goes live with `sub`'s queue holding what comes before (a
    /// replay, a catch-up): in its connection's group when it has one and no floor (the queue
    /// then ends after what it holds, and the stream reads the group), otherwise under its keys
    /// with its queue (a floor moves it to the group once covered, see [`Hub::dispatch`]).
    pub(super) fn go_live(&self, hub: &Arc<Topic>, state: &mut TopicState, id: u64, sub: Sub) {
        if sub.floor.is_none() {
            self.hand_to_group(hub, state, &sub);
        } else {
            state.register(id, sub);
        }
    }

    /// Places `sub`'s stream in its connection's group (under the topic lock): its cursor goes
    /// to the stream's slot, which the stream reads once its queue has ended. The caller drops
    /// `sub` (its queue's sender) after the lock when the stream may be gone already, since a
    /// cursor's drop takes the lock.
    pub(super) fn hand_to_group(&self, hub: &Arc<Topic>, state: &mut TopicState, sub: &Sub) {
        let view = View {
            keys: sub.keys.as_ref(),
            scope: sub.scope,
            format: sub.format,
            filter: sub.filter.as_ref(),
        };
        let cursor = self.join_group(hub, state, &sub.handoff.seat, view);
        *sub.handoff.slot.lock() = Some(cursor);
    }

    /// Registers a stream under the topic lock: live, resumed from the ring, or pending a
    /// catch-up from Kafka.
    fn open(
        &self,
        hub: &Arc<Topic>,
        state: &mut TopicState,
        spec: Spec<'_>,
        from: Option<Vec<PartitionStart>>,
        tx: queue::Sender,
        handoff: Handoff,
    ) -> Opened {
        let Spec {
            id,
            keys,
            format,
            filter,
            scope,
            snapshot,
        } = spec;
        state.streams += 1;
        state.idle_since = None;
        let Some(from) = from else {
            let start_id = id_for(hub.fingerprint, scope, &state.positions);
            let view = View {
                keys,
                scope,
                format,
                filter,
            };
            let cursor = self.join_group(hub, state, &handoff.seat, view);
            return Opened::Joined(start_id, cursor);
        };
        let from: Vec<LogStart> = from
            .iter()
            .zip(&state.positions)
            .map(|(start, &live)| start.in_log(live))
            .collect();
        // A resume is served from memory when every partition's start is known and in the ring.
        let shared = state.ring.clone();
        let held = shared.as_ref().map(|ring| ring.read());
        let in_memory = from
            .iter()
            .map(|start| start.offset())
            .collect::<Option<Vec<i64>>>()
            .filter(|at| !snapshot && held.as_ref().is_some_and(|ring| ring.covers(at)));
        let (Some(at), Some(ring), Some(guard)) = (in_memory, &shared, &held) else {
            state.pending.insert(id);
            let source = if snapshot { "snapshot" } else { "kafka" };
            self.metrics.resumes.with_label_values(&[source]).inc();
            return Opened::CatchUp {
                from,
                tx,
                snapshot,
                scope,
                handoff,
            };
        };
        self.metrics.resumes.with_label_values(&["memory"]).inc();
        let start_id = id_for(hub.fingerprint, scope, &at);
        let origin = Origin {
            keys,
            format,
            filter,
            topic: &hub.name,
            scope,
            fingerprint: hub.fingerprint,
            position: at,
        };
        let (replay, floor) = Replay::start(ring, guard, origin, &hub.cutoffs);
        drop(held);
        // Live positions that cover the floor make it moot: every later event is after it.
        let floor = floor.filter(|f| !covers(&state.positions, f));
        // The queue is new and empty: one slot takes the whole replay, read in the ring.
        let _ = tx.try_send_replay(replay);
        let sub = Sub {
            keys: keys.cloned(),
            format,
            filter: filter.cloned(),
            tx,
            floor,
            scope,
            handoff,
        };
        self.go_live(hub, state, id, sub);
        Opened::Ready(start_id)
    }

    /// Moves a pending stream to live if `position` is at or after the live position; `prefix`
    /// (made under the lock, so nothing live can come before it) is queued first.
    pub(super) fn hand_over(
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
        let shared = state.ring.clone().filter(|_| from_ring);
        let held = shared.as_ref().map(|ring| ring.read());
        if from_ring && !(ring_ok && held.as_ref().is_some_and(|r| r.covers(position))) {
            return HandOver::NotYet;
        }
        // A broken promise ends short-id streams (the reader sent the "every partition" id).
        if job.scope.is_some() && job.topic.broken.load(Ordering::Acquire) {
            return HandOver::Gone;
        }
        // Scoping may have ended while this stream caught up (partitions added).
        let scope = job.scope.filter(|_| state.key_scoping);
        let (replay, floor) = match (&shared, &held) {
            (Some(shared), Some(held)) => {
                let origin = Origin {
                    keys: job.keys.as_ref(),
                    format: job.format,
                    filter: job.filter.as_ref(),
                    topic: &job.topic.name,
                    scope,
                    fingerprint: job.topic.fingerprint,
                    position: position.to_vec(),
                };
                let (replay, floor) = Replay::start(shared, held, origin, &job.topic.cutoffs);
                (Some(replay), floor)
            }
            _ => (None, Some(position.to_vec())),
        };
        drop(held);
        // Live positions that cover the floor make it moot: every later event is after it.
        let floor = floor.filter(|f| !covers(&state.positions, f));
        // The replay needs a slot in the stream's queue: try again at the next check.
        if replay.as_ref().is_some_and(|r| !r.is_empty()) && tx.capacity() == 0 {
            return HandOver::NotYet;
        }
        let replay = match replay {
            Some(replay) => replay.after(prefix()),
            None => Replay::nothing_but(prefix()),
        };
        // The caller made room for one slot; if the client took it back, the stream ends here
        // (cut off like any stream that falls behind) rather than hold the reader.
        if !tx.try_send_replay(replay) {
            return HandOver::Gone;
        }
        state.pending.remove(&id);
        state.tidy();
        let via = if from_ring { "ring" } else { "live" };
        self.metrics
            .catchup_handovers
            .with_label_values(&[via])
            .inc();
        let sub = Sub {
            keys: job.keys.clone(),
            format: job.format,
            filter: job.filter.clone(),
            tx: tx.clone(),
            floor,
            scope,
            handoff: job.handoff.clone(),
        };
        self.go_live(&job.topic, &mut state, id, sub);
        HandOver::Done
    }

    fn new_topic(&self, topic: &str) -> Topic {
        let broken = self.broken_promises.lock().contains(topic);
        let promise = self.config.key_partitioner.filter(|_| !broken);
        Topic::new(topic, promise, broken, &self.metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_scope_is_the_promised_partition_unless_resumed_from_a_full_id() {
        let promise = Some(KeyPartitioner::Crc32);
        let p = KeyPartitioner::Crc32.partition(b"k", 4);
        let k = Keys::one(b"k".to_vec());
        let key = Some(&k);
        assert_eq!(key_scope(promise, 4, key, &Start::Live), Some(p));
        assert_eq!(key_scope(promise, 4, key, &Start::Earliest), Some(p));
        assert_eq!(key_scope(None, 4, key, &Start::Live), None);
        assert_eq!(key_scope(promise, 4, None, &Start::Live), None);
        let empty = Keys::one(Vec::new());
        assert_eq!(key_scope(promise, 4, Some(&empty), &Start::Live), None);
        let two = Keys::new(vec![b"k".to_vec(), b"l".to_vec()]).unwrap();
        assert_eq!(key_scope(promise, 4, Some(&two), &Start::Live), None);
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
}
