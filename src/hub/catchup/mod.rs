//! Catch-up from Kafka: resumes older than the replay ring, `from=earliest`/time, snapshots.
//!
//! A bounded pool of reader consumers (`KSG_CATCHUP_READERS`), reused across requests: many
//! simultaneous resumes wait for a reader rather than each opening a consumer. A reader starts at
//! the stream's position (after an `event: gap` if part of it is gone from Kafka), queues every
//! matching record with an id computed from its own position, and hands the stream over to live
//! under the topic lock as soon as its position is at or after the live position; from there the
//! stream's floor removes any overlap, so the hand-over has no gap and no duplicate.
//!
//! In snapshot mode the reader keeps only the latest record of each key (a tombstone removes the
//! key) and sends the lot, without ids, at the hand-over, followed by `event: live` whose id is
//! the position; a map larger than its budget is sent early, so memory stays bounded.
//!
//! Layout: this module, the reader pool and the reading loop; `member`, one stream's part in
//! a reading (its start, its batches, its hand-over); `snapshot`, the latest value per key.

mod member;
mod snapshot;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::floor::id_for;
use super::queue;
use super::topic::Topic;
use super::Hub;
use crate::source::{Polled, ReadError, Reader, Record};
use crate::start::LogStart;
use member::Member;
use snapshot::Latest;

/// Records read between two hand-over checks (each check takes the topic lock).
const CHECK_EVERY: usize = 256;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a partial batch waits for more records before it is queued.
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// The reader pool, and the resumes waiting for a reader, by topic.
pub(super) struct Readers {
    permits: Semaphore,
    idle: Mutex<Vec<Reader>>,
    waiting: Mutex<HashMap<String, Vec<Job>>>,
}

impl Readers {
    pub(super) fn new(max: usize) -> Readers {
        Readers {
            permits: Semaphore::new(max),
            idle: Mutex::new(Vec::new()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Stops handing out readers: waiting catch-ups end their streams.
    pub(super) fn close(&self) {
        self.permits.close();
        self.waiting.lock().clear();
    }

    fn take(&self) -> Option<Reader> {
        self.idle.lock().pop()
    }

    fn give_back(&self, consumer: Reader) {
        self.idle.lock().push(consumer);
    }

    fn wait(&self, job: Job) {
        let mut waiting = self.waiting.lock();
        waiting.entry(job.topic.name.clone()).or_default().push(job);
    }

    /// Every resume of `topic` still waiting (none if another reader took them).
    fn take_waiting(&self, topic: &str) -> Vec<Job> {
        let mut waiting = self.waiting.lock();
        waiting
            .remove(topic)
            .unwrap_or_default()
            .into_iter()
            .filter(|j| !j.tx.is_closed())
            .collect()
    }
}

/// One stream's catch-up.
pub(super) struct Job {
    pub(super) topic: Arc<Topic>,
    pub(super) id: u64,
    pub(super) key: Option<Vec<u8>>,
    /// Where each partition starts (a partition added since starts at its log start).
    pub(super) from: Vec<LogStart>,
    pub(super) tx: queue::Sender,
    /// Latest value per key, then `event: live`, instead of every record.
    pub(super) snapshot: bool,
    /// The key's partition, when the stream's ids name only it.
    pub(super) scope: Option<usize>,
    /// Where the stream goes once live, on an HTTP/2 connection.
    pub(super) handoff: Option<super::group::Handoff>,
}

impl Hub {
    /// Runs a catch-up: waits for a reader, reads, hands over to live. Resumes of one topic
    /// that wait at the same time share one reader; a snapshot has a reader to itself.
    pub(super) async fn catch_up(self: Arc<Self>, job: Job) {
        let topic = job.topic.name.clone();
        let mut solo = None;
        if job.snapshot {
            solo = Some(job);
        } else {
            self.readers.wait(job);
        }
        let Ok(_permit) = self.readers.permits.acquire().await else {
            return;
        };
        let jobs = match solo {
            Some(job) => vec![job],
            None => self.readers.take_waiting(&topic),
        };
        if jobs.is_empty() || jobs.iter().all(|j| j.tx.is_closed()) {
            return;
        }
        if jobs.len() > 1 {
            self.metrics.catchup_shared.inc_by(jobs.len() as u64 - 1);
        }
        self.metrics.catchup_readers_active.inc();
        let hub = self.clone();
        let result = tokio::task::spawn_blocking(move || hub.read_until_live(jobs)).await;
        self.metrics.catchup_readers_active.dec();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.metrics
                    .kafka_errors
                    .with_label_values(&["catch_up"])
                    .inc();
                warn!(topic = %topic, "catch-up failed, ending its streams: {e}");
            }
            Err(e) => warn!(topic = %topic, "catch-up task failed: {e}"),
        }
    }

    fn read_until_live(&self, jobs: Vec<Job>) -> Result<(), ReadError> {
        let consumer = match self.readers.take() {
            Some(c) => c,
            None => {
                let reader = self.source.reader()?;
                self.metrics.catchup_readers.inc();
                reader
            }
        };
        let result = self.read_with(&consumer, jobs);
        // Unassigning drops prefetched records; the reader goes back clean, or not at all.
        if consumer.unassign().is_ok() {
            self.readers.give_back(consumer);
        } else {
            self.metrics.catchup_readers.dec();
        }
        result
    }

    fn read_with(&self, consumer: &Reader, jobs: Vec<Job>) -> Result<(), ReadError> {
        let topic = jobs[0].topic.clone();
        let count = jobs.iter().map(|j| j.from.len()).max().unwrap_or(0);
        let earliest = self.source.start_offsets(&topic.name, count)?;
        let mut members: Vec<Member> = jobs
            .into_iter()
            .filter_map(|job| {
                let at = self.start_position(&job, &earliest)?;
                let held = (
                    self.metrics.snapshot_entries.clone(),
                    self.metrics.snapshot_bytes.clone(),
                );
                let latest = job.snapshot.then(|| Latest::new(held));
                Some(Member {
                    job,
                    at,
                    batch: BytesMut::new(),
                    latest,
                })
            })
            .collect();
        // The reader starts where the furthest-behind stream starts.
        let mut read_at = earliest.clone();
        for (p, slot) in read_at.iter_mut().enumerate() {
            *slot = members.iter().map(|m| m.at[p]).min().unwrap_or(*slot);
        }
        consumer.assign(&topic.name, &read_at)?;
        let mut at_end = vec![false; read_at.len()];
        // Partitions whose end the reader has reached at least once.
        let mut reached_end = vec![false; read_at.len()];
        // Every keyed record read is checked against the partitioner promise, while it holds.
        let mut check_promise = topic.promise.is_some();
        let seen_by = if members.iter().any(|m| m.latest.is_some()) {
            "snapshot"
        } else {
            "catch-up"
        };
        let mut since_check = 0;
        let mut waited = false;
        let mut eof_since_check = false;
        while !members.is_empty() {
            // Hand-over checks (each takes the topic lock): every CHECK_EVERY records, and
            // whenever the reader reached the end of a partition or found nothing to read: the
            // ring may already hold the rest, so the reader need not catch every moving end.
            let check = since_check >= CHECK_EVERY
                || at_end.iter().all(|e| *e)
                || std::mem::take(&mut eof_since_check)
                || waited;
            let near_live = reached_end.iter().all(|e| *e);
            members.retain_mut(|m| self.advance(m, check, waited, near_live));
            if check {
                since_check = 0;
                self.follow_growth(consumer, &topic, &mut read_at, &mut at_end, &mut members)?;
                reached_end.resize(read_at.len(), false);
            }
            let wait = if members.iter().all(|m| m.batch.is_empty()) {
                POLL_TIMEOUT
            } else {
                BATCH_WAIT
            };
            waited = false;
            match consumer.poll(wait) {
                // Nothing more right now: partial batches go out.
                None => waited = true,
                Some(Polled::Record(message)) => {
                    let Some(p) = usize::try_from(message.partition())
                        .ok()
                        .filter(|p| *p < read_at.len())
                    else {
                        continue;
                    };
                    let offset = message.offset();
                    read_at[p] = read_at[p].max(offset + 1);
                    at_end[p] = false;
                    since_check += 1;
                    if check_promise {
                        check_promise =
                            self.check_promise(&topic, &message, p, read_at.len(), seen_by);
                    }
                    // After a broken promise, short-id streams take no more records: they end
                    // at their next check with an id that reads every partition.
                    let broken = topic.broken.load(Ordering::Acquire);
                    let members = members
                        .iter_mut()
                        .filter(|m| !(broken && m.job.scope.is_some()));
                    for m in members.filter(|m| offset >= m.at[p]) {
                        m.at[p] = offset + 1;
                        let key = m.job.key.as_deref();
                        if key.is_some() && message.key() != key {
                            continue;
                        }
                        match m.latest.as_mut() {
                            Some(l) => self.snapshot_record(l, &topic, p, &message),
                            None => {
                                let id = id_for(topic.fingerprint, m.job.scope, &m.at);
                                let event = self.encode(
                                    &topic,
                                    &id,
                                    p,
                                    offset,
                                    message.key(),
                                    message.payload(),
                                );
                                m.batch.extend_from_slice(&event);
                            }
                        }
                    }
                }
                Some(Polled::End(partition)) => {
                    let Some(p) = usize::try_from(partition)
                        .ok()
                        .filter(|p| *p < read_at.len())
                    else {
                        continue;
                    };
                    at_end[p] = true;
                    reached_end[p] = true;
                    eof_since_check = true;
                    // The fetch position also steps over transaction markers, which no record shows.
                    let position = consumer.position(&topic.name, partition);
                    debug!(topic = %topic.name, partition, ?position, read_at = read_at[p], "catch-up reader at a partition end");
                    if let Some(next) = position.as_ref().and_then(|fetch| fetch.offset()) {
                        read_at[p] = read_at[p].max(next);
                        for m in &mut members {
                            m.at[p] = m.at[p].max(next);
                        }
                    }
                }
                Some(Polled::Failed(e)) => {
                    debug!(topic = %topic.name, "catch-up read error: {e}");
                    members.retain(|m| !m.job.tx.is_closed());
                }
            }
        }
        Ok(())
    }

    /// Partitions added to the topic since this reader started are read from their log start.
    fn follow_growth(
        &self,
        consumer: &Reader,
        topic: &Topic,
        read_at: &mut Vec<i64>,
        at_end: &mut Vec<bool>,
        members: &mut [Member],
    ) -> Result<(), ReadError> {
        let count = topic.lock().positions.len();
        if count <= read_at.len() {
            return Ok(());
        }
        let starts = self.source.start_offsets(&topic.name, count)?;
        consumer.add(&topic.name, read_at.len(), &starts[read_at.len()..])?;
        read_at.extend_from_slice(&starts[read_at.len()..]);
        at_end.resize(count, false);
        for m in members {
            let known = m.at.len();
            m.at.extend_from_slice(&starts[known..]);
        }
        Ok(())
    }

    /// Checks one record against the topic's partitioner promise; a record off its promised
    /// partition breaks the promise for the topic. False: nothing more to check (the promise
    /// broke, or partitions were added and short ids ended anyway).
    fn check_promise(
        &self,
        topic: &Topic,
        message: &Record<'_>,
        p: usize,
        partitions: usize,
        seen_by: &str,
    ) -> bool {
        let Some(key) = message.key() else {
            return true;
        };
        if !topic.off_promise(key, p, partitions) {
            return !topic.broken.load(Ordering::Relaxed);
        }
        let mut state = topic.lock();
        if state.key_scoping && state.positions.len() == partitions {
            self.promise_broken(topic, &mut state, p, seen_by);
        }
        false
    }
}
