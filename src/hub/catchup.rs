//! Catch-up from Kafka for resumes older than the replay ring.
//!
//! A bounded pool of reader consumers (`KSG_CATCHUP_READERS`), reused across requests: many
//! simultaneous resumes wait for a reader rather than each opening a consumer. A reader starts at
//! the stream's position (after an `event: gap` if part of it is gone from Kafka), sends every
//! matching record with an id computed from its own position, and hands the stream over to live
//! under the topic lock as soon as its position is at or after the live position; from there the
//! stream's floor removes any overlap, so the hand-over has no gap and no duplicate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

use super::{HandOver, Hub, TopicHub, EARLIEST};
use crate::position;
use crate::source::Context;
use crate::sse::{self, Gap};

/// How long a reader waits for a stream's client to make room before ending the stream.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Records read between two hand-over checks (each check takes the topic lock).
const CHECK_EVERY: usize = 256;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a partial batch waits for more records before it is queued.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// Catch-up events are queued in chunks of about this many bytes.
const BATCH_BYTES: usize = 16 * 1024;

/// The reader pool.
pub(super) struct Readers {
    permits: Semaphore,
    idle: Mutex<Vec<BaseConsumer<Context>>>,
}

impl Readers {
    pub(super) fn new(max: usize) -> Readers {
        Readers {
            permits: Semaphore::new(max),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Stops handing out readers: waiting catch-ups end their streams.
    pub(super) fn close(&self) {
        self.permits.close();
    }

    fn take(&self) -> Option<BaseConsumer<Context>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, consumer: BaseConsumer<Context>) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(consumer);
    }
}

impl Hub {
    /// Runs one stream's catch-up: waits for a reader, reads, hands over to live.
    pub(super) async fn catch_up(
        self: Arc<Self>,
        topic: Arc<TopicHub>,
        id: u64,
        key: Option<Vec<u8>>,
        from: Vec<i64>,
        tx: mpsc::Sender<Bytes>,
    ) {
        let Ok(_permit) = self.readers.permits.acquire().await else {
            return;
        };
        if tx.is_closed() {
            return;
        }
        self.metrics.catchup_readers_active.inc();
        let hub = self.clone();
        let name = topic.name.clone();
        let result = tokio::task::spawn_blocking(move || {
            hub.read_until_live(&topic, id, key.as_deref(), from, &tx)
        })
        .await;
        self.metrics.catchup_readers_active.dec();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.metrics
                    .kafka_errors
                    .with_label_values(&["catch_up"])
                    .inc();
                warn!(topic = %name, "catch-up failed, ending the stream: {e}");
            }
            Err(e) => warn!(topic = %name, "catch-up task failed: {e}"),
        }
    }

    fn read_until_live(
        &self,
        topic: &TopicHub,
        id: u64,
        key: Option<&[u8]>,
        from: Vec<i64>,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<(), KafkaError> {
        let consumer = match self.readers.take() {
            Some(c) => c,
            None => {
                let reader = self.source.reader()?;
                self.metrics.catchup_readers.inc();
                reader
            }
        };
        let result = self.read_with(&consumer, topic, id, key, from, tx);
        // Unassigning drops prefetched records; the reader goes back clean, or not at all.
        if consumer.unassign().is_ok() {
            self.readers.give_back(consumer);
        } else {
            self.metrics.catchup_readers.dec();
        }
        result
    }

    fn read_with(
        &self,
        consumer: &BaseConsumer<Context>,
        topic: &TopicHub,
        id: u64,
        key: Option<&[u8]>,
        from: Vec<i64>,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<(), KafkaError> {
        let fp = topic.fingerprint;
        let earliest = self
            .source
            .start_offsets(&topic.name, from.len())
            .map_err(into_kafka)?;
        let mut at = from;
        let mut gaps = Vec::new();
        for (p, (pos, first)) in at.iter_mut().zip(&earliest).enumerate() {
            if *pos == EARLIEST {
                *pos = *first;
            } else if *pos < *first {
                gaps.push(Gap {
                    partition: p as i32,
                    from: *pos,
                    to: *first,
                });
                *pos = *first;
            }
        }
        if !gaps.is_empty() {
            let skipped: i64 = gaps.iter().map(|g| g.to - g.from).sum();
            self.metrics.gaps.with_label_values(&[&topic.name]).inc();
            self.metrics
                .gap_offsets_skipped
                .with_label_values(&[&topic.name])
                .inc_by(skipped as u64);
            warn!(topic = %topic.name, skipped, "resume position is older than the log start: sending a gap event");
            if !send(tx, sse::gap_event(&position::encode_dense(fp, &at), &gaps)) {
                return Ok(());
            }
        }
        let mut assignment = TopicPartitionList::new();
        for (p, &offset) in at.iter().enumerate() {
            assignment.add_partition_offset(&topic.name, p as i32, Offset::Offset(offset))?;
        }
        consumer.assign(&assignment)?;
        let mut at_end = vec![false; at.len()];
        let mut since_check = 0;
        // Events read back to back are queued together, like the live path's frames: fewer,
        // larger writes instead of one tiny frame per record.
        let mut batch = BytesMut::new();
        loop {
            let check = since_check >= CHECK_EVERY || at_end.iter().all(|e| *e);
            if (check || batch.len() >= BATCH_BYTES) && !flush(tx, &mut batch, topic) {
                return Ok(());
            }
            if check {
                since_check = 0;
                match self.hand_over(topic, id, key, tx, &at) {
                    HandOver::Done => return Ok(()),
                    HandOver::Gone => return Ok(()),
                    HandOver::NotYet => {}
                }
            }
            let wait = if batch.is_empty() {
                POLL_TIMEOUT
            } else {
                BATCH_WAIT
            };
            match consumer.poll(wait) {
                None => {
                    if !flush(tx, &mut batch, topic) {
                        return Ok(());
                    }
                }
                Some(Ok(message)) => {
                    let Some(p) = usize::try_from(message.partition())
                        .ok()
                        .filter(|p| *p < at.len())
                    else {
                        continue;
                    };
                    if message.offset() < at[p] {
                        continue;
                    }
                    at[p] = message.offset() + 1;
                    at_end[p] = false;
                    since_check += 1;
                    if key.is_some() && message.key() != key {
                        continue;
                    }
                    let event = sse::record_event(
                        &position::encode_dense(fp, &at),
                        message.key(),
                        message.payload(),
                    );
                    if !send(tx, event) {
                        topic.cutoffs.inc();
                        return Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    let Some(p) = usize::try_from(partition).ok().filter(|p| *p < at.len()) else {
                        continue;
                    };
                    at_end[p] = true;
                    // The fetch position also steps over transaction markers, which no record shows.
                    if let Ok(Offset::Offset(next)) = consumer.position().and_then(|list| {
                        list.find_partition(&topic.name, partition)
                            .map(|e| e.offset())
                            .ok_or(KafkaError::NoMessageReceived)
                    }) {
                        at[p] = at[p].max(next);
                    }
                }
                Some(Err(e)) => {
                    debug!(topic = %topic.name, "catch-up read error: {e}");
                    if tx.is_closed() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Queues what `batch` holds; false (and counted as a cut-off) when the stream cannot take it.
fn flush(tx: &mpsc::Sender<Bytes>, batch: &mut BytesMut, topic: &TopicHub) -> bool {
    if batch.is_empty() || send(tx, batch.split().freeze()) {
        return true;
    }
    topic.cutoffs.inc();
    false
}

/// Queues `event` for the stream, waiting up to [`STALL_LIMIT`] for room. False: the stream is
/// gone or its client stopped reading (the stream ends; the client resumes from its last id).
fn send(tx: &mpsc::Sender<Bytes>, mut event: Bytes) -> bool {
    let deadline = Instant::now() + STALL_LIMIT;
    loop {
        match tx.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
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
