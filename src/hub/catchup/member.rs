//! One stream's part in a catch-up: where it starts (after a gap event if Kafka no longer has
//! its position), the batches it is sent, and its hand-over to live.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};

use super::snapshot::Latest;
use super::Job;
use crate::hub::floor::id_for;
use crate::hub::queue::{self, TrySendError};
use crate::hub::subscribe::HandOver;
use crate::hub::topic::Topic;
use crate::hub::Hub;
use crate::position;
use crate::sse::{self, Gap};
use crate::start::LogStart;

/// How long a reader waits for a stream's client to make room before ending the stream.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Catch-up events are queued in chunks of about this many bytes.
const BATCH_BYTES: usize = 16 * 1024;

/// One stream being caught up by a (possibly shared) reader.
pub(super) struct Member {
    pub(super) job: Job,
    /// The stream's own position: what its client has, or will have once `batch` is sent.
    pub(super) at: Vec<i64>,
    pub(super) batch: BytesMut,
    pub(super) latest: Option<Latest>,
}

impl Hub {
    /// Resolves a stream's start against the log start (`earliest`), announcing any gap.
    pub(super) fn start_position(&self, job: &Job, earliest: &[i64]) -> Option<Vec<i64>> {
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

    /// Sends what a member has read when due, and hands it over to live when it has caught up.
    /// False: the member is done (live now, gone, or cut off).
    /// `near_live`: the reader has reached the end of every partition at least once, so what
    /// lies between it and live is recent.
    pub(super) fn advance(
        &self,
        m: &mut Member,
        check: bool,
        waited: bool,
        near_live: bool,
    ) -> bool {
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
}

/// Queues what `batch` holds; false (and counted as a cut-off) when the stream cannot take it.
/// The queued chunk is a copy of exactly its size, and `batch` keeps its buffer for the next
/// one: the buffer itself grows by doubling, so queueing it would hold up to twice the bytes
/// for as long as the chunk waits for a slow client.
fn flush(tx: &queue::Sender, batch: &mut BytesMut, topic: &Topic) -> bool {
    if batch.is_empty() {
        return true;
    }
    let chunk = Bytes::copy_from_slice(batch);
    batch.clear();
    if send(tx, chunk) {
        return true;
    }
    topic.cutoffs.inc();
    false
}

/// Waits up to [`STALL_LIMIT`] for a free slot in the stream's queue. False: gone or stalled.
fn room(tx: &queue::Sender) -> bool {
    let deadline = Instant::now() + STALL_LIMIT;
    while !tx.has_room_for_owned(0) {
        if tx.is_closed() || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    !tx.is_closed()
}

/// Queues `event` (the stream's own bytes, bounded by `KSG_STREAM_QUEUE_BYTES`) for the stream,
/// waiting up to [`STALL_LIMIT`] for room. False: the stream is gone or its client stopped
/// reading (the stream ends; the client resumes from its last id).
fn send(tx: &queue::Sender, mut event: Bytes) -> bool {
    let deadline = Instant::now() + STALL_LIMIT;
    loop {
        match tx.try_send_owned(event) {
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
