//! Topic lifecycle: attached on the first stream (partitions and end offsets read, then
//! assigned at exactly those offsets), watched for added partitions and deletion, released when
//! idle. Assignment changes are serialized so a release and a re-attach never cross.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use tracing::{info, warn};

use super::replay::Ring;
use super::topic::Topic;
use super::{Hub, SubscribeError};
use crate::source::SourceError;
use crate::sse;

impl Hub {
    /// Reads the topic's partitions and end offsets and adds them to the consumer. Called with
    /// the assignment lock held.
    pub(super) async fn attach(&self, hub: &Arc<Topic>) -> Result<(), SubscribeError> {
        let source = self.source.clone();
        let topic = hub.clone();
        let replay_bytes = self.config.replay_bytes;
        tokio::task::spawn_blocking(move || -> Result<(), SourceError> {
            let count = source.partition_count(&topic.name)?;
            let offsets = source.end_offsets(&topic.name, count)?;
            // Positions are in place before any record of the topic can be dispatched.
            {
                let mut state = topic.lock();
                state.positions = offsets.clone();
                state.ring = (replay_bytes > 0).then(|| {
                    let ring = Ring::new(replay_bytes, offsets.clone());
                    Arc::new(RwLock::new(ring.counting(topic.encoded.clone())))
                });
                // Idle from the start: if the request that attached it is gone before its
                // stream registers, the topic is released like any idle one.
                if state.streams == 0 {
                    state.idle_since = Some(std::time::Instant::now());
                }
            }
            source.assign(&topic.name, 0, &offsets)
        })
        .await
        .map_err(|e| SubscribeError::Unavailable(format!("attach task failed: {e}")))??;
        self.metrics.topics_attached.inc();
        info!(topic = %hub.name, "topic attached");
        Ok(())
    }

    /// Picks up partitions added to attached topics and ends the streams of deleted topics.
    /// Called periodically.
    pub async fn refresh_topics(&self) {
        let attached: Vec<Arc<Topic>> = self
            .topics
            .iter()
            .filter(|e| e.value().attached.get().is_some())
            .map(|e| e.value().clone())
            .collect();
        for hub in attached {
            let (source, name) = (self.source.clone(), hub.name.clone());
            match tokio::task::spawn_blocking(move || source.partition_count(&name)).await {
                Ok(Ok(count)) if count > hub.lock().positions.len() => self.grow(&hub, count).await,
                Ok(Ok(count)) => self.measure_lag(&hub, count).await,
                Ok(Err(SourceError::UnknownTopic(_))) => self.topic_deleted(&hub).await,
                // Kafka unreachable: look again next time.
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }

    /// Sets `ksg_consumer_lag{topic}`: the records between the partitions' high watermarks and
    /// the gateway's position (one ListOffsets request).
    async fn measure_lag(&self, hub: &Arc<Topic>, count: usize) {
        let (source, name) = (self.source.clone(), hub.name.clone());
        let Ok(Ok(ends)) =
            tokio::task::spawn_blocking(move || source.end_offsets(&name, count)).await
        else {
            return;
        };
        let lag: i64 = {
            let state = hub.lock();
            ends.iter()
                .zip(&state.positions)
                .map(|(end, at)| (end - at).max(0))
                .sum()
        };
        self.metrics
            .consumer_lag
            .with_label_values(&[&hub.name])
            .set(lag);
    }

    /// Adds partitions up to `count`: positions, ring and floors first, then the assignment,
    /// so no record of a new partition arrives before the hub knows the partition.
    async fn grow(&self, hub: &Arc<Topic>, count: usize) {
        let _assignment = self.assignment.lock().await;
        let (source, topic) = (self.source.clone(), hub.clone());
        let grown = tokio::task::spawn_blocking(move || -> Result<usize, SourceError> {
            let starts = source.start_offsets(&topic.name, count)?;
            let old = {
                let mut guard = topic.lock();
                let state = &mut *guard;
                let old = state.positions.len();
                if state.released || count <= old {
                    return Ok(0);
                }
                let new = &starts[old..];
                state.positions.extend_from_slice(new);
                // Keys move when the partition count changes: full ids from now on.
                state.widen_key_streams();
                if let Some(ring) = &state.ring {
                    ring.write().grow(new);
                }
                let subs = state.own_queue_subs_mut();
                for floor in subs.filter_map(|sub| sub.floor.as_mut()) {
                    floor.extend_from_slice(new);
                }
                old
            };
            source.assign(&topic.name, old, &starts[old..])?;
            Ok(count - old)
        })
        .await;
        match grown {
            Ok(Ok(0)) => {}
            Ok(Ok(added)) => {
                info!(topic = %hub.name, added, partitions = count, "partitions added to the topic are now read")
            }
            Ok(Err(e)) => {
                warn!(topic = %hub.name, "reading new partitions failed (will retry): {e}")
            }
            Err(e) => warn!(topic = %hub.name, "reading new partitions failed (will retry): {e}"),
        }
    }

    /// The topic is gone from Kafka: every stream gets `event: end` and ends; the topic is
    /// released, so new requests get `404` and a recreated topic is attached afresh.
    async fn topic_deleted(&self, hub: &Arc<Topic>) {
        let _assignment = self.assignment.lock().await;
        let (partitions, ring_bytes) = {
            let mut guard = hub.lock();
            let state = &mut *guard;
            if state.released {
                return;
            }
            state.released = true;
            let end = sse::event(Some(sse::EVENT_END), "", r#"{"reason":"topic-deleted"}"#);
            state.end_all(|_, _| end.clone());
            (
                state.positions.len(),
                state.ring.take().map_or(0, |r| r.read().bytes()),
            )
        };
        warn!(topic = %hub.name, "topic deleted from Kafka: its streams ended");
        self.metrics.replay_bytes.sub(ring_bytes as i64);
        self.topics.remove_if(&hub.name, |_, v| Arc::ptr_eq(v, hub));
        let (source, name) = (self.source.clone(), hub.name.clone());
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || source.unassign(&name, partitions)).await
        {
            warn!(topic = %hub.name, "unassigning a deleted topic failed: {e}");
        }
        self.metrics.topics_attached.dec();
        let _ = self.metrics.consumer_lag.remove_label_values(&[&hub.name]);
    }

    /// Releases topics that have had no stream for `idle`. Called periodically.
    pub async fn release_idle(&self, idle: Duration) {
        let candidates: Vec<Arc<Topic>> = self.topics.iter().map(|e| e.value().clone()).collect();
        for hub in candidates {
            if hub.attached.get().is_none() {
                continue;
            }
            let _assignment = self.assignment.lock().await;
            let (partitions, ring_bytes) = {
                let mut state = hub.lock();
                match state.idle_since {
                    Some(since)
                        if state.streams == 0 && !state.released && since.elapsed() >= idle =>
                    {
                        state.released = true;
                        (
                            state.positions.len(),
                            state.ring.take().map_or(0, |r| r.read().bytes()),
                        )
                    }
                    _ => continue,
                }
            };
            self.metrics.replay_bytes.sub(ring_bytes as i64);
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
            let _ = self.metrics.consumer_lag.remove_label_values(&[&hub.name]);
        }
    }
}
