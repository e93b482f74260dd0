//! The hub: a registry from topic to its live channel, key filters, and fan-out.
//!
//! The poll thread calls [`Hub::dispatch`] for every record. Under the topic's lock it advances
//! the topic's position vector, encodes the event once (its id is the vector after the record)
//! and offers the same [`Bytes`] to every matching stream's bounded queue. A full queue ends that
//! stream (counted); the consumer and the other streams never wait. Locks are never held across
//! an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use prometheus::IntCounter;
use thiserror::Error;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::position;
use crate::source::{Source, SourceError};
use crate::sse;

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

/// The hub of one gateway.
pub struct Hub {
    topics: DashMap<String, Arc<TopicHub>>,
    source: Arc<Source>,
    metrics: Metrics,
    queue: usize,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Serializes assignment changes so a release and a re-attach of one topic never cross.
    assignment: tokio::sync::Mutex<()>,
}

/// One topic's live channel.
struct TopicHub {
    name: String,
    fingerprint: u32,
    attached: tokio::sync::OnceCell<()>,
    state: Mutex<TopicState>,
    records: IntCounter,
    cutoffs: IntCounter,
}

#[derive(Default)]
struct TopicState {
    released: bool,
    /// Next offset per partition: the position after the last record dispatched.
    positions: Vec<i64>,
    all: HashMap<u64, mpsc::Sender<Bytes>>,
    by_key: HashMap<Vec<u8>, HashMap<u64, mpsc::Sender<Bytes>>>,
    streams: usize,
    idle_since: Option<Instant>,
}

/// An open subscription: the stream's queue and its start position. Dropping it unregisters.
pub struct Subscription {
    /// Encoded events, in order.
    pub events: mpsc::Receiver<Bytes>,
    /// The resume token of the position the stream starts at.
    pub start_id: String,
    /// The topic, for metric labels.
    pub topic: String,
    guard: Registration,
}

struct Registration {
    topic: Arc<TopicHub>,
    id: u64,
    key: Option<Vec<u8>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.topic.lock();
        let removed = match &self.key {
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

impl Subscription {
    /// The key filter of this subscription.
    pub fn key(&self) -> Option<&[u8]> {
        self.guard.key.as_deref()
    }
}

impl TopicState {
    fn stream_gone(&mut self) {
        self.streams -= 1;
        if self.streams == 0 {
            self.idle_since = Some(Instant::now());
        }
    }
}

impl TopicHub {
    fn lock(&self) -> MutexGuard<'_, TopicState> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the gateway, so recover the guard rather than propagate.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Hub {
    /// A hub reading from `source`, with `queue` events of room per stream.
    pub fn new(source: Arc<Source>, metrics: Metrics, queue: usize) -> Hub {
        Hub {
            topics: DashMap::new(),
            source,
            metrics,
            queue,
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            assignment: tokio::sync::Mutex::new(()),
        }
    }

    /// Opens a live stream of `topic`, optionally only records with key `key`.
    pub async fn subscribe(
        &self,
        topic: &str,
        key: Option<Vec<u8>>,
    ) -> Result<Subscription, SubscribeError> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(SubscribeError::ShuttingDown);
            }
            let hub = self
                .topics
                .entry(topic.to_string())
                .or_insert_with(|| Arc::new(self.new_topic(topic)))
                .clone();
            if let Err(e) = hub.attached.get_or_try_init(|| self.attach(&hub)).await {
                self.topics.remove_if(topic, |_, v| Arc::ptr_eq(v, &hub));
                return Err(e);
            }
            let (tx, rx) = mpsc::channel(self.queue);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let registered = {
                let mut state = hub.lock();
                // A released entry raced with an idle release: the registry gets a new one.
                (!state.released).then(|| {
                    match &key {
                        None => state.all.insert(id, tx),
                        Some(k) => state.by_key.entry(k.clone()).or_default().insert(id, tx),
                    };
                    state.streams += 1;
                    state.idle_since = None;
                    position::encode_dense(hub.fingerprint, &state.positions)
                })
            };
            let Some(start_id) = registered else {
                tokio::task::yield_now().await;
                continue;
            };
            return Ok(Subscription {
                events: rx,
                start_id,
                topic: hub.name.clone(),
                guard: Registration {
                    topic: hub,
                    id,
                    key,
                },
            });
        }
    }

    fn new_topic(&self, topic: &str) -> TopicHub {
        TopicHub {
            name: topic.to_string(),
            fingerprint: position::fingerprint(topic),
            attached: tokio::sync::OnceCell::new(),
            state: Mutex::new(TopicState::default()),
            records: self.metrics.records_consumed.with_label_values(&[topic]),
            cutoffs: self.metrics.slow_stream_cutoffs.with_label_values(&[topic]),
        }
    }

    /// Reads the topic's partitions and end offsets and adds them to the consumer.
    async fn attach(&self, hub: &Arc<TopicHub>) -> Result<(), SubscribeError> {
        let _assignment = self.assignment.lock().await;
        let source = self.source.clone();
        let topic = hub.clone();
        tokio::task::spawn_blocking(move || -> Result<(), SourceError> {
            let count = source.partition_count(&topic.name)?;
            let offsets = source.end_offsets(&topic.name, count)?;
            // Positions are in place before any record of the topic can be dispatched.
            topic.lock().positions = offsets.clone();
            source.assign(&topic.name, &offsets)
        })
        .await
        .map_err(|e| SubscribeError::Unavailable(format!("attach task failed: {e}")))??;
        self.metrics.topics_attached.inc();
        info!(topic = %hub.name, "topic attached");
        Ok(())
    }

    /// Releases topics that have had no stream for `idle`. Called periodically.
    pub async fn release_idle(&self, idle: Duration) {
        let candidates: Vec<Arc<TopicHub>> =
            self.topics.iter().map(|e| e.value().clone()).collect();
        for hub in candidates {
            if hub.attached.get().is_none() {
                continue;
            }
            let _assignment = self.assignment.lock().await;
            let partitions = {
                let mut state = hub.lock();
                match state.idle_since {
                    Some(since)
                        if state.streams == 0 && !state.released && since.elapsed() >= idle =>
                    {
                        state.released = true;
                        state.positions.len()
                    }
                    _ => continue,
                }
            };
            self.topics
                .remove_if(&hub.name, |_, v| Arc::ptr_eq(v, &hub));
            let source = self.source.clone();
            let name = hub.name.clone();
            match tokio::task::spawn_blocking(move || source.unassign(&name, partitions)).await {
                Ok(Ok(())) => info!(topic = %hub.name, "idle topic released"),
                Ok(Err(e)) => warn!(topic = %hub.name, "releasing topic failed: {e}"),
                Err(e) => warn!(topic = %hub.name, "releasing topic failed: {e}"),
            }
            self.metrics.topics_attached.dec();
        }
    }

    /// Fans one record out to the matching streams. Called by the poll thread only.
    pub fn dispatch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let Some(hub) = self.topics.get(topic).map(|e| e.value().clone()) else {
            return;
        };
        hub.records.inc();
        let mut guard = hub.lock();
        let state = &mut *guard;
        let Some(next) = usize::try_from(partition)
            .ok()
            .and_then(|p| state.positions.get_mut(p))
        else {
            return;
        };
        if offset < *next {
            debug!(
                topic,
                partition, offset, "record before the position, skipped"
            );
            return;
        }
        *next = offset + 1;
        let keyed = key.and_then(|k| state.by_key.get_mut(k));
        if state.all.is_empty() && keyed.is_none() {
            return;
        }
        let id = position::encode_dense(hub.fingerprint, &state.positions);
        let event = sse::record_event(&id, key, value);
        let mut gone = 0;
        let mut offer = |streams: &mut HashMap<u64, mpsc::Sender<Bytes>>| {
            streams.retain(|_, tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    hub.cutoffs.inc();
                    warn!(topic, "stream cut off: its client fell behind (queue full)");
                    gone += 1;
                    false
                }
                Err(TrySendError::Closed(_)) => {
                    gone += 1;
                    false
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
    }

    /// Ends every stream (their queues drain first) and refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for entry in self.topics.iter() {
            let mut state = entry.value().lock();
            let count = state.all.len() + state.by_key.values().map(HashMap::len).sum::<usize>();
            state.all.clear();
            state.by_key.clear();
            for _ in 0..count {
                state.stream_gone();
            }
        }
    }
}
