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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use prometheus::IntGauge;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::floor::id_for;
use super::queue::{self, TrySendError};
use super::subscribe::HandOver;
use super::topic::Topic;
use super::Hub;
use crate::position;
use crate::source::Context;
use crate::sse::{self, Gap};
use crate::start::LogStart;

/// How long a reader waits for a stream's client to make room before ending the stream.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Records read between two hand-over checks (each check takes the topic lock).
const CHECK_EVERY: usize = 256;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a partial batch waits for more records before it is queued.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// Catch-up events are queued in chunks of about this many bytes.
const BATCH_BYTES: usize = 16 * 1024;
/// Bookkeeping per snapshot entry counted against the snapshot budget.
const SNAPSHOT_ENTRY_OVERHEAD: usize = 64;

/// The reader pool, and the resumes waiting for a reader, by topic.
pub(super) struct Readers {
    permits: Semaphore,
    idle: Mutex<Vec<BaseConsumer<Context>>>,
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

    fn take(&self) -> Option<BaseConsumer<Context>> {
        self.idle.lock().pop()
    }

    fn give_back(&self, consumer: BaseConsumer<Context>) {
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
}

/// The latest record of each key, for a snapshot. Within a partition the later offset wins; a
/// key found on several partitions keeps the record with the latest timestamp.
#[derive(Default)]
struct Latest {
    /// Key → (partition, offset, timestamp ms, event).
    entries: HashMap<Vec<u8>, (usize, i64, i64, Bytes)>,
    bytes: usize,
    sent: usize,
    /// Gauges of what all snapshots in progress hold (entries, bytes).
    held: Option<(IntGauge, IntGauge)>,
}

impl Latest {
    fn new(held: (IntGauge, IntGauge)) -> Latest {
        Latest {
            entries: HashMap::new(),
            bytes: 0,
            sent: 0,
            held: Some(held),
        }
    }

    /// Reports the change since `before` (entries, bytes) to the gauges.
    fn report(&self, before: (usize, usize)) {
        if let Some((entries, bytes)) = &self.held {
            entries.add(self.entries.len() as i64 - before.0 as i64);
            bytes.add(self.bytes as i64 - before.1 as i64);
        }
    }
}

impl Drop for Latest {
    fn drop(&mut self) {
        if let Some((entries, bytes)) = &self.held {
            entries.sub(self.entries.len() as i64);
            bytes.sub(self.bytes as i64);
        }
    }
}

impl Latest {
    /// Keeps `event` as the latest of `key`; `None` (a tombstone) forgets the key. A record
    /// older (by timestamp) than the one held from another partition is ignored.
    fn record(&mut self, partition: usize, offset: i64, ts: i64, key: &[u8], event: Option<Bytes>) {
        if let Some((p, _, held_ts, _)) = self.entries.get(key) {
            if *p != partition && ts < *held_ts {
                return;
            }
        }
        let before = (self.entries.len(), self.bytes);
        let removed = match event {
            Some(event) => {
                self.bytes += event.len() + key.len() + SNAPSHOT_ENTRY_OVERHEAD;
                self.entries
                    .insert(key.to_vec(), (partition, offset, ts, event))
            }
            None => self.entries.remove(key),
        };
        if let Some((_, _, _, old)) = removed {
            self.bytes -= old.len() + key.len() + SNAPSHOT_ENTRY_OVERHEAD;
        }
        self.report(before);
    }

    /// Every held event, in partition then offset order, as one chunk; empties the map.
    fn drain(&mut self) -> BytesMut {
        let before = (self.entries.len(), self.bytes);
        let mut all: Vec<(usize, i64, i64, Bytes)> = self.entries.drain().map(|(_, v)| v).collect();
        all.sort_unstable_by_key(|(p, o, _, _)| (*p, *o));
        let mut out = BytesMut::with_capacity(self.bytes);
        for (_, _, _, event) in &all {
            out.extend_from_slice(event);
        }
        self.sent += all.len();
        self.bytes = 0;
        self.report(before);
        out
    }
}

/// One stream being caught up by a (possibly shared) reader.
struct Member {
    job: Job,
    /// The stream's own position: what its client has, or will have once `batch` is sent.
    at: Vec<i64>,
    batch: BytesMut,
    latest: Option<Latest>,
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

    fn read_until_live(&self, jobs: Vec<Job>) -> Result<(), KafkaError> {
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

    /// Resolves a stream's start against the log start (`earliest`), announcing any gap.
    fn start_position(&self, job: &Job, earliest: &[i64]) -> Option<Vec<i64>> {
        let topic = &job.topic;
        let mut from = job.from.clone();
        from.resize(earliest.len(), LogStart::Earliest);
        let mut gaps = Vec::new();
        let mut at = Vec::with_capacity(from.len());
        for (p, (start, &first)) in from.into_iter().zip(earliest).enumerate() {
            at.push(match start {
                LogStart::Earliest => first,
                LogStart::Offset(offset) if offset < first => {
                    gaps.push(Gap {
                        partition: p as i32,
                        from: offset,
                        to: first,
                    });
                    first
                }
                LogStart::Offset(offset) => offset,
            });
        }
        if !gaps.is_empty() {
            let skipped: i64 = gaps.iter().map(|g| g.to - g.from).sum();
            self.metrics.gaps.with_label_values(&[&topic.name]).inc();
            self.metrics
                .gap_offsets_skipped
                .with_label_values(&[&topic.name])
                .inc_by(skipped as u64);
            warn!(topic = %topic.name, skipped, "resume position is older than the log start: sending a gap event");
            let event = sse::gap_event(&id_for(topic.fingerprint, job.scope, &at), &gaps);
            if !send(&job.tx, event) {
                return None;
            }
        }
        Some(at)
    }

    fn read_with(
        &self,
        consumer: &BaseConsumer<Context>,
        jobs: Vec<Job>,
    ) -> Result<(), KafkaError> {
        let topic = jobs[0].topic.clone();
        let count = jobs.iter().map(|j| j.from.len()).max().unwrap_or(0);
        let earliest = self
            .source
            .start_offsets(&topic.name, count)
            .map_err(into_kafka)?;
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
        let mut assignment = TopicPartitionList::new();
        for (p, &offset) in read_at.iter().enumerate() {
            assignment.add_partition_offset(&topic.name, p as i32, Offset::Offset(offset))?;
        }
        consumer.assign(&assignment)?;
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
                Some(Ok(message)) => {
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
                Some(Err(KafkaError::PartitionEOF(partition))) => {
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
                    let position = consumer.position().ok().and_then(|list| {
                        list.find_partition(&topic.name, partition)
                            .map(|e| e.offset())
                    });
                    debug!(topic = %topic.name, partition, ?position, read_at = read_at[p], "catch-up reader at a partition end");
                    if let Some(Offset::Offset(next)) = position {
                        read_at[p] = read_at[p].max(next);
                        for m in &mut members {
                            m.at[p] = m.at[p].max(next);
                        }
                    }
                }
                Some(Err(e)) => {
                    debug!(topic = %topic.name, "catch-up read error: {e}");
                    members.retain(|m| !m.job.tx.is_closed());
                }
            }
        }
        Ok(())
    }

    /// Sends what a member has read when due, and hands it over to live when it has caught up.
    /// False: the member is done (live now, gone, or cut off).
    /// `near_live`: the reader has reached the end of every partition at least once, so what
    /// lies between it and live is recent.
    fn advance(&self, m: &mut Member, check: bool, waited: bool, near_live: bool) -> bool {
        let topic = &*m.job.topic;
        if (check || waited || m.batch.len() >= BATCH_BYTES)
            && !flush(&m.job.tx, &mut m.batch, topic)
        {
            return false;
        }
        if let Some(p) = m.job.scope.filter(|_| topic.broken.load(Ordering::Acquire)) {
            // The promise broke: what was read so far goes out, then an id that tells any
            // replica to read every partition; the stream ends and its client resumes with it.
            let every = position::encode_every(topic.fingerprint, &[(p as i32, m.at[p])]);
            if flush(&m.job.tx, &mut m.batch, topic) {
                send(&m.job.tx, sse::id_only(&every));
            }
            return false;
        }
        if let Some(l) = m
            .latest
            .as_mut()
            .filter(|l| l.bytes > self.config.snapshot_bytes)
        {
            // Over budget: send what the snapshot holds now; later values follow as records.
            debug!(topic = %topic.name, "snapshot over KSG_SNAPSHOT_BYTES, sending it early");
            if !send(&m.job.tx, l.drain().freeze()) {
                return false;
            }
        }
        if !check {
            return true;
        }
        // A snapshot's last chunk needs a free slot; wait for it no longer than for any send.
        if m.latest.is_some() && !room(&m.job.tx) {
            topic.cutoffs.inc();
            return false;
        }
        let (at, scope) = (&m.at, m.job.scope);
        let handed = match m.latest.as_mut() {
            // A resume may take the rest from the ring at once; a snapshot only once the reader
            // is near live, or its clients would get the ring's whole history as updates.
            None => self.hand_over(&m.job, at, true, || None),
            Some(l) => self.hand_over(&m.job, at, near_live, || {
                let mut prefix = l.drain();
                let marker = format!(r#"{{"snapshot_events":{}}}"#, l.sent);
                let id = id_for(topic.fingerprint, scope, at);
                prefix.extend_from_slice(&sse::event(Some(sse::EVENT_LIVE), &id, &marker));
                Some(prefix.freeze())
            }),
        };
        matches!(handed, HandOver::NotYet)
    }

    /// Partitions added to the topic since this reader started are read from their log start.
    fn follow_growth(
        &self,
        consumer: &BaseConsumer<Context>,
        topic: &Topic,
        read_at: &mut Vec<i64>,
        at_end: &mut Vec<bool>,
        members: &mut [Member],
    ) -> Result<(), KafkaError> {
        let count = topic.lock().positions.len();
        if count <= read_at.len() {
            return Ok(());
        }
        let starts = self
            .source
            .start_offsets(&topic.name, count)
            .map_err(into_kafka)?;
        let mut added = TopicPartitionList::new();
        for (p, &offset) in starts.iter().enumerate().skip(read_at.len()) {
            added.add_partition_offset(&topic.name, p as i32, Offset::Offset(offset))?;
        }
        consumer.incremental_assign(&added)?;
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
        message: &BorrowedMessage<'_>,
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

    /// Records without a key have no latest value to keep: a snapshot leaves them out.
    fn snapshot_record(
        &self,
        latest: &mut Latest,
        topic: &Topic,
        partition: usize,
        message: &BorrowedMessage<'_>,
    ) {
        let Some(key) = message.key() else {
            topic.keyless.inc();
            return;
        };
        let event = message.payload().map(|value| {
            self.encode(
                topic,
                "",
                partition,
                message.offset(),
                Some(key),
                Some(value),
            )
        });
        let ts = message.timestamp().to_millis().unwrap_or(0);
        latest.record(partition, message.offset(), ts, key, event);
    }
}

/// Queues what `batch` holds; false (and counted as a cut-off) when the stream cannot take it.
fn flush(tx: &queue::Sender, batch: &mut BytesMut, topic: &Topic) -> bool {
    if batch.is_empty() || send(tx, batch.split().freeze()) {
        return true;
    }
    topic.cutoffs.inc();
    false
}

/// Waits up to [`STALL_LIMIT`] for a free slot in the stream's queue. False: gone or stalled.
fn room(tx: &queue::Sender) -> bool {
    let deadline = Instant::now() + STALL_LIMIT;
    while tx.capacity() == 0 {
        if tx.is_closed() || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    !tx.is_closed()
}

/// Queues `event` for the stream, waiting up to [`STALL_LIMIT`] for room. False: the stream is
/// gone or its client stopped reading (the stream ends; the client resumes from its last id).
fn send(tx: &queue::Sender, mut event: Bytes) -> bool {
    let deadline = Instant::now() + STALL_LIMIT;
    loop {
        match tx.try_send(event) {
            Ok(()) => return true,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    return false;
                }
                event = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn into_kafka(e: crate::source::SourceError) -> KafkaError {
    match e {
        crate::source::SourceError::Unavailable(e) => e,
        crate::source::SourceError::UnknownTopic(_) => {
            KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_keeps_one_value_per_key_and_drops_deleted_keys() {
        let mut l = Latest::default();
        let e = |v: &[u8]| Some(sse::record_event("", None, Some(v)));
        l.record(0, 1, 0, b"a", e(b"a1"));
        l.record(1, 1, 0, b"b", e(b"b1"));
        l.record(0, 2, 0, b"a", e(b"a2"));
        l.record(1, 2, 0, b"c", e(b"c1"));
        l.record(1, 3, 0, b"c", None);
        let text = String::from_utf8(l.drain().to_vec()).unwrap();
        assert_eq!(text, "data: a2\n\ndata: b1\n\n");
        assert_eq!((l.bytes, l.sent, l.entries.len()), (0, 2, 0));
    }

    #[test]
    fn a_key_on_several_partitions_keeps_its_latest_by_timestamp() {
        let mut l = Latest::default();
        let e = |v: &[u8]| Some(sse::record_event("", None, Some(v)));
        l.record(0, 5, 200, b"k", e(b"new"));
        l.record(1, 9, 100, b"k", e(b"older, other partition"));
        l.record(1, 10, 150, b"k", None);
        assert_eq!(
            String::from_utf8(l.drain().to_vec()).unwrap(),
            "data: new\n\n"
        );
        l.record(2, 1, 300, b"k", e(b"a"));
        l.record(2, 2, 100, b"k", e(b"same partition, later offset"));
        assert_eq!(
            String::from_utf8(l.drain().to_vec()).unwrap(),
            "data: same partition, later offset\n\n"
        );
    }
}
