//! The streams a catch-up reader serves, in cohorts: streams of one view (every record, or one
//! key) at one position get the same events with the same ids, so a cohort encodes each event
//! once and queues one shared chunk for all its streams. Also: where a stream starts (after a
//! gap event if Kafka no longer has its position), and its hand-over to live.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};

use super::snapshot::Latest;
use super::Job;
use crate::filter::{Filter, Subject, Tested, Verdict};
use crate::hub::floor::id_for;
use crate::hub::queue::{self, TrySendError};
use crate::hub::subscribe::HandOver;
use crate::hub::topic::Topic;
use crate::hub::Hub;
use crate::keyset::Keys;
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
    /// A snapshot's latest value per key (a snapshot is a cohort of its own).
    pub(super) latest: Option<Latest>,
}

/// Streams of one view at one position, served together: one encoding and one queued chunk
/// for all of them.
pub(super) struct Cohort {
    /// The streams' common position: what their clients have, or will have once `batch` is sent.
    pub(super) at: Vec<i64>,
    /// The view: some keys, or every record, in a format.
    pub(super) keys: Option<Keys>,
    pub(super) format: crate::sse::Format,
    pub(super) filter: Option<Filter>,
    /// The key's partition, when the streams' ids name only it.
    pub(super) scope: Option<usize>,
    /// Events encoded and not queued yet.
    pub(super) batch: BytesMut,
    pub(super) members: Vec<Member>,
}

impl Cohort {
    pub(super) fn new(member: Member, at: Vec<i64>) -> Cohort {
        Cohort {
            at,
            keys: member.job.keys.clone(),
            format: member.job.format,
            filter: member.job.filter.clone(),
            scope: member.job.scope,
            batch: BytesMut::new(),
            members: vec![member],
        }
    }

    /// A snapshot: its own cohort, never merged.
    pub(super) fn snapshot(&mut self) -> Option<&mut Latest> {
        self.members.first_mut().and_then(|m| m.latest.as_mut())
    }

    /// True when the record of `record_key` belongs to this cohort's view (its keys), and
    /// what its filter makes of `record` (`None`: no filter).
    /// Each distinct filter is tested once per record: `tested` holds what the record made of
    /// those tested so far.
    pub(super) fn wants(
        &self,
        record_key: Option<&[u8]>,
        record: &Subject<'_>,
        tested: &mut Tested,
    ) -> (bool, Option<Verdict>) {
        if !self
            .keys
            .as_ref()
            .is_none_or(|keys| keys.contains(record_key))
        {
            return (false, None);
        }
        let verdict = self.filter.as_ref().map(|f| tested.verdict(f, record));
        (true, verdict)
    }
}

/// A cohort's view and position: keys, format, filter, scope, position.
type View = (
    Option<Keys>,
    crate::sse::Format,
    Option<Filter>,
    Option<usize>,
    Vec<i64>,
);

/// Merges cohorts of the same view now at the same position (none with events waiting: call it
/// right after every cohort was flushed). Streams that started apart share from here on.
pub(super) fn merge(cohorts: &mut Vec<Cohort>) {
    if cohorts.len() < 2 {
        return;
    }
    let mut index: HashMap<View, usize> = HashMap::new();
    let mut kept: Vec<Cohort> = Vec::with_capacity(cohorts.len());
    for mut c in cohorts.drain(..) {
        let mergeable = c.batch.is_empty() && c.members.iter().all(|m| m.latest.is_none());
        if !mergeable {
            kept.push(c);
            continue;
        }
        let view = (
            c.keys.clone(),
            c.format,
            c.filter.clone(),
            c.scope,
            c.at.clone(),
        );
        match index.get(&view) {
            Some(&i) => kept[i].members.append(&mut c.members),
            None => {
                index.insert(view, kept.len());
                kept.push(c);
            }
        }
    }
    *cohorts = kept;
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

    /// Sends what a cohort has read when due, and hands its streams over to live when they have
    /// caught up. False: the cohort is done (every stream live now, gone, or cut off).
    /// `near_live`: the reader has reached the end of every partition at least once, so what
    /// lies between it and live is recent.
    pub(super) fn advance(
        &self,
        topic: &Topic,
        c: &mut Cohort,
        check: bool,
        waited: bool,
        near_live: bool,
    ) -> bool {
        if check || waited || c.batch.len() >= BATCH_BYTES {
            self.flush(c, topic);
        }
        if c.members.is_empty() {
            return false;
        }
        if let Some(p) = c.scope.filter(|_| topic.broken.load(Ordering::Acquire)) {
            // The promise broke: what was read so far went out; now an id that tells any
            // replica to read every partition. The streams end and their clients resume with it.
            let every = sse::id_only(&position::encode_every(
                topic.fingerprint,
                &[(p as i32, c.at[p])],
            ));
            for m in &c.members {
                send(&m.job.tx, every.clone());
            }
            return false;
        }
        let budget = self.config.snapshot_bytes;
        if let Some(l) = c.snapshot().filter(|l| l.bytes > budget) {
            // Over budget: send what the snapshot holds now; later values follow as records.
            debug!(topic = %topic.name, "snapshot over KSG_SNAPSHOT_BYTES, sending it early");
            let early = l.drain().freeze();
            if !send(&c.members[0].job.tx, early) {
                return false;
            }
        }
        if !check {
            return true;
        }
        let (at, scope) = (&c.at, c.scope);
        c.members.retain_mut(|m| {
            let handed = match m.latest.as_mut() {
                // A resume may take the rest from the ring at once; a snapshot only once the
                // reader is near live, or its clients would get the ring's whole history as
                // updates. A snapshot's last chunk needs a free slot; it waits for one no
                // longer than for any send.
                None => self.hand_over(&m.job, at, true, || None),
                Some(_) if !room(&m.job.tx) => {
                    topic.cutoffs.inc();
                    return false;
                }
                Some(l) => self.hand_over(&m.job, at, near_live, || {
                    let mut prefix = l.drain();
                    let marker = format!(r#"{{"snapshot_events":{}}}"#, l.sent);
                    let id = id_for(topic.fingerprint, scope, at);
                    prefix.extend_from_slice(&sse::event(Some(sse::EVENT_LIVE), &id, &marker));
                    Some(prefix.freeze())
                }),
            };
            matches!(handed, HandOver::NotYet)
        });
        !c.members.is_empty()
    }

    /// Queues what the cohort's batch holds for every stream of the cohort: one chunk, shared.
    /// The chunk is a copy of exactly its size, and the batch keeps its buffer for the next
    /// one: the buffer grows by doubling, so queueing it would hold up to twice the bytes for as
    /// long as the chunk waits for a slow client. A stream that cannot take the chunk within
    /// [`STALL_LIMIT`] (one wait for all of the cohort's slow streams) is cut off; a stream
    /// whose client left is dropped.
    fn flush(&self, c: &mut Cohort, topic: &Topic) {
        if c.batch.is_empty() {
            return;
        }
        let chunk = Bytes::copy_from_slice(&c.batch);
        c.batch.clear();
        self.metrics.catchup_bytes.inc_by(chunk.len() as u64);
        let mut sent = Vec::with_capacity(c.members.len());
        let mut full = offer(std::mem::take(&mut c.members), &chunk, &mut sent);
        let deadline = Instant::now() + STALL_LIMIT;
        while !full.is_empty() {
            if Instant::now() >= deadline {
                topic.cutoffs.inc_by(full.len() as u64);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            full = offer(full, &chunk, &mut sent);
        }
        c.members = sent;
    }
}

/// Queues `chunk` for each of `members`: those that took it go to `sent`, those whose client
/// left are dropped, and those with a full queue are returned.
fn offer(members: Vec<Member>, chunk: &Bytes, sent: &mut Vec<Member>) -> Vec<Member> {
    let mut full = Vec::new();
    for m in members {
        match m.job.tx.try_send_owned(chunk.clone()) {
            Ok(()) => sent.push(m),
            Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => full.push(m),
        }
    }
    full
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
