//! Catch-up from Kafka: resumes older than the replay ring, `from=earliest`/time, snapshots.
//!
//! A bounded pool of reader consumers (`KSG_CATCHUP_READERS`), reused across requests: many
//! simultaneous resumes wait for a reader rather than each opening a consumer, and a resume that
//! starts where a running reader has not read yet joins it. A reader starts at the earliest of
//! its streams' positions (after an `event: gap` if part of one is gone from Kafka). Streams of
//! one view at one position form a cohort (`member`): every matching record is encoded once for
//! the cohort, with the id of its position, and one chunk is queued to all of them. It hands a
//! stream over to live
//! under the topic lock as soon as its position is at or after the live position; from there the
//! stream's floor removes any overlap, so the hand-over has no gap and no duplicate.
//!
//! In snapshot mode the reader keeps only the latest record of each key (a tombstone removes the
//! key) and sends the lot, without ids, at the hand-over, followed by `event: live` whose id is
//! the position; a map larger than its budget is sent early, so memory stays bounded.
//!
//! Layout: this module, the reader pool and the reading loop; `member`, the cohorts of streams
//! in a reading (their start, their batches, their hand-over); `snapshot`, the latest value per key.

mod member;
mod snapshot;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::floor::id_for;
use super::queue;
use super::topic::Topic;
use super::Hub;
use crate::source::{Polled, ReadError, Reader, Record};
use crate::start::LogStart;
use member::{Cohort, Member};
use snapshot::Latest;

/// Records read between two hand-over checks (each check takes the topic lock).
const CHECK_EVERY: usize = 256;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a partial batch waits for more records before it is queued.
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// The reader pool, and the resumes waiting for a reader, by topic.
pub(super) struct Readers {
    permits: Semaphore,
    /// Readers not in use, each with when it was last given back (the last one given back is
    /// taken first, so the others age and close).
    idle: Mutex<Vec<(Reader, tokio::time::Instant)>>,
    /// The resumes waiting for a reader, by topic.
    waiting: Mutex<HashMap<String, Waiting>>,
}

/// A topic's resumes waiting for a reader, and whether a task is on its way to take them: one
/// such task per topic, not one per resume (a restart's storm of resumes would otherwise hold a
/// task each until a reader frees up).
#[derive(Default)]
struct Waiting {
    jobs: Vec<Job>,
    runner: bool,
}

impl Readers {
    pub(super) fn new(max: usize) -> Readers {
        Readers {
            permits: Semaphore::new(max),
            idle: Mutex::new(Vec::new()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// The idle readers left unused for `idle` or longer, taken out of the pool (to close).
    fn stale(&self, idle: Duration) -> Vec<Reader> {
        let now = tokio::time::Instant::now();
        let mut pool = self.idle.lock();
        let (stale, kept) = std::mem::take(&mut *pool)
            .into_iter()
            .partition(|(_, since)| now.duration_since(*since) >= idle);
        *pool = kept;
        stale.into_iter().map(|(reader, _)| reader).collect()
    }

    /// Stops handing out readers: waiting catch-ups end their streams.
    pub(super) fn close(&self) {
        self.permits.close();
        self.waiting.lock().clear();
    }

    fn take(&self) -> Option<Reader> {
        self.idle.lock().pop().map(|(reader, _)| reader)
    }

    fn give_back(&self, consumer: Reader) {
        self.idle
            .lock()
            .push((consumer, tokio::time::Instant::now()));
    }

    /// Queues a resume for a reader of its topic. True when no task is on its way to take the
    /// topic's waiting resumes: the caller starts one ([`Hub::catch_up`]).
    fn wait(&self, job: Job) -> bool {
        let mut waiting = self.waiting.lock();
        let entry = waiting.entry(job.topic.name.clone()).or_default();
        entry.jobs.push(job);
        !std::mem::replace(&mut entry.runner, true)
    }

    /// The resumes of `topic` still waiting that `pick` accepts (the others go on waiting, as
    /// does the task on its way to them, if any).
    fn take_waiting_if(&self, topic: &str, pick: impl Fn(&Job) -> bool) -> Vec<Job> {
        let mut waiting = self.waiting.lock();
        let Some(entry) = waiting.get_mut(topic) else {
            return Vec::new();
        };
        entry.jobs.retain(|j| !j.tx.is_closed());
        let (taken, left): (Vec<Job>, Vec<Job>) =
            std::mem::take(&mut entry.jobs).into_iter().partition(pick);
        entry.jobs = left;
        if entry.jobs.is_empty() && !entry.runner {
            waiting.remove(topic);
        }
        taken
    }

    /// Every resume of `topic` still waiting (none if another reader took them), for the task
    /// on its way to them: resumes queued from now on start another.
    fn take_waiting(&self, topic: &str) -> Vec<Job> {
        let mut waiting = self.waiting.lock();
        waiting
            .remove(topic)
            .unwrap_or_default()
            .jobs
            .into_iter()
            .filter(|j| !j.tx.is_closed())
            .collect()
    }
}

/// One stream's catch-up.
pub(super) struct Job {
    pub(super) topic: Arc<Topic>,
    pub(super) id: u64,
    /// The stream's keys (`None`: every record).
    pub(super) keys: Option<crate::keyset::Keys>,
    /// The format of its events.
    pub(super) format: crate::sse::Format,
    /// The tests its records pass, if any.
    pub(super) filter: Option<crate::filter::Filter>,
    /// Where each partition starts (a partition added since starts at its log start).
    pub(super) from: Vec<LogStart>,
    pub(super) tx: queue::Sender,
    /// Latest value per key, then `event: live`, instead of every record.
    pub(super) snapshot: bool,
    /// The key's partition, when the stream's ids name only it.
    pub(super) scope: Option<usize>,
    /// Where the stream goes once live: its connection's group.
    pub(super) handoff: super::group::Handoff,
}

impl Hub {
    /// Starts a catch-up: a task waits for a reader, reads, hands over to live. Resumes of one
    /// topic that wait at the same time share one reader and one task; a snapshot has a reader
    /// and a task to itself.
    pub(super) fn catch_up(self: &Arc<Self>, job: Job) {
        if job.snapshot {
            tokio::spawn(self.clone().run_catch_up(job.topic.name.clone(), Some(job)));
            return;
        }
        let topic = job.topic.name.clone();
        if self.readers.wait(job) {
            tokio::spawn(self.clone().run_catch_up(topic, None));
        }
    }

    /// Waits for a reader, then reads for `solo` (a snapshot) or for every resume of `topic`
    /// waiting by then.
    async fn run_catch_up(self: Arc<Self>, topic: String, solo: Option<Job>) {
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
        let idle = self.config.catchup_reader_idle;
        tokio::spawn(Hub::close_idle_readers(Arc::downgrade(&self), idle));
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

    /// Closes the readers still unused `KSG_CATCHUP_READER_IDLE_SECS` from now: a burst of
    /// resumes (a restart) opens up to `KSG_CATCHUP_READERS` consumers, and each holds its
    /// threads, broker connections and buffers for as long as it is kept. Closing one may
    /// wait for librdkafka, so it is done off the runtime's threads.
    /// The task holds no strong reference on the hub: a gateway that stops meanwhile is not
    /// kept.
    async fn close_idle_readers(hub: std::sync::Weak<Hub>, idle: Duration) {
        tokio::time::sleep(idle).await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let stale = hub.readers.stale(idle);
        if stale.is_empty() {
            return;
        }
        hub.metrics.catchup_readers.sub(stale.len() as i64);
        debug!(readers = stale.len(), "closing idle catch-up readers");
        drop(hub);
        let _ = tokio::task::spawn_blocking(move || drop(stale)).await;
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
        let mut cohorts: Vec<Cohort> = jobs
            .into_iter()
            .filter_map(|job| self.cohort(job, &earliest))
            .collect();
        member::merge(&mut cohorts);
        // The reader starts where the furthest-behind stream starts.
        let mut read_at = earliest.clone();
        for (p, slot) in read_at.iter_mut().enumerate() {
            *slot = cohorts.iter().map(|c| c.at[p]).min().unwrap_or(*slot);
        }
        consumer.assign(&topic.name, &read_at)?;
        let mut at_end = vec![false; read_at.len()];
        // Partitions whose end the reader has reached at least once.
        let mut reached_end = vec![false; read_at.len()];
        // Every keyed record read is checked against the partitioner promise, while it holds.
        let mut check_promise = topic.promise.is_some();
        let seen_by = if cohorts.iter_mut().any(|c| c.snapshot().is_some()) {
            "snapshot"
        } else {
            "catch-up"
        };
        let mut since_check = 0;
        let mut waited = false;
        let mut eof_since_check = false;
        while !cohorts.is_empty() {
            // Hand-over checks (each takes the topic lock): every CHECK_EVERY records, and
            // whenever the reader reached the end of a partition or found nothing to read: the
            // ring may already hold the rest, so the reader need not catch every moving end.
            let check = since_check >= CHECK_EVERY
                || at_end.iter().all(|e| *e)
                || std::mem::take(&mut eof_since_check)
                || waited;
            let near_live = reached_end.iter().all(|e| *e);
            cohorts.retain_mut(|c| self.advance(&topic, c, check, waited, near_live));
            if check {
                since_check = 0;
                self.follow_growth(consumer, &topic, &mut read_at, &mut at_end, &mut cohorts)?;
                reached_end.resize(read_at.len(), false);
                // Every batch was just queued: resumes waiting for a reader join this one if
                // they start where it has not read yet, and streams now at one position share.
                if seen_by == "catch-up" {
                    self.join(&topic, &read_at, &mut cohorts);
                }
                member::merge(&mut cohorts);
            }
            let wait = if cohorts.iter().all(|c| c.batch.is_empty()) {
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
                    self.deal(&topic, &mut cohorts, p, &message);
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
                        for c in &mut cohorts {
                            c.at[p] = c.at[p].max(next);
                        }
                    }
                }
                Some(Polled::Failed(e)) => {
                    debug!(topic = %topic.name, "catch-up read error: {e}");
                    for c in &mut cohorts {
                        c.members.retain(|m| !m.job.tx.is_closed());
                    }
                    cohorts.retain(|c| !c.members.is_empty());
                }
            }
        }
        Ok(())
    }

    /// A stream's cohort of one, at its start (after a gap event if part of it is gone).
    fn cohort(&self, job: Job, earliest: &[i64]) -> Option<Cohort> {
        let at = self.start_position(&job, earliest)?;
        let latest = job.snapshot.then(|| {
            Latest::new((
                self.metrics.snapshot_entries.clone(),
                self.metrics.snapshot_bytes.clone(),
            ))
        });
        Some(Cohort::new(Member { job, latest }, at))
    }

    /// Resumes of `topic` waiting for a reader that start at or after `read_at` on every
    /// partition join this reader: it has not read past them, so nothing is read twice.
    fn join(&self, topic: &Arc<Topic>, read_at: &[i64], cohorts: &mut Vec<Cohort>) {
        let ahead = |job: &Job| {
            job.from.len() <= read_at.len()
                && read_at
                    .iter()
                    .enumerate()
                    .all(|(p, &r)| matches!(job.from.get(p), Some(LogStart::Offset(o)) if *o >= r))
        };
        let joined = self.readers.take_waiting_if(&topic.name, ahead);
        if joined.is_empty() {
            return;
        }
        self.metrics.catchup_shared.inc_by(joined.len() as u64);
        cohorts.extend(
            joined
                .into_iter()
                .filter_map(|job| self.cohort(job, read_at)),
        );
    }

    /// Gives a record to every cohort that has not had it: encoded once for all the cohorts
    /// that want it at the same position and with the same ids, appended to their batches.
    fn deal(&self, topic: &Topic, cohorts: &mut [Cohort], p: usize, message: &Record<'_>) {
        let offset = message.offset();
        // After a broken promise, short-id streams take no more records: they end at their
        // next check with an id that reads every partition.
        let broken = topic.broken.load(Ordering::Acquire);
        // The last event encoded, and the cohort whose position and ids it carries.
        let mut encoded: Option<(usize, Bytes)> = None;
        // The record as filters see it: its value parsed once for every cohort's filter.
        let subject = crate::filter::Subject::new(
            message.header_source(),
            message.payload(),
            self.config.max_event_bytes,
        );
        let mut tested = crate::filter::Tested::default();
        for i in 0..cohorts.len() {
            let c = &mut cohorts[i];
            if (broken && c.scope.is_some()) || offset < c.at[p] {
                continue;
            }
            c.at[p] = offset + 1;
            let (wanted, verdict) = c.wants(message.key(), &subject, &mut tested);
            if !wanted {
                continue;
            }
            let passes = verdict.is_none_or(crate::filter::Verdict::passes);
            let format = c.format;
            if let Some(l) = c.snapshot() {
                // A snapshot keeps a key's latest record only if it passes: one that does not
                // forgets the key, as a tombstone does.
                self.snapshot_record(l, topic, p, message, format, passes);
                continue;
            }
            if !passes {
                continue;
            }
            let same = encoded
                .as_ref()
                .filter(|(j, _)| {
                    let (a, b) = (&cohorts[*j], &cohorts[i]);
                    a.scope == b.scope && a.format == b.format && a.at == b.at
                })
                .map(|(_, event)| event.clone());
            let c = &mut cohorts[i];
            let event = same.unwrap_or_else(|| {
                let id = id_for(topic.fingerprint, c.scope, &c.at);
                let event = self.encode_read(topic, c.format, &id, p, message);
                encoded = Some((i, event.clone()));
                event
            });
            c.batch.extend_from_slice(&event);
        }
        topic.unmatchable.inc_by(tested.unmatchable());
    }

    /// Partitions added to the topic since this reader started are read from their log start.
    fn follow_growth(
        &self,
        consumer: &Reader,
        topic: &Topic,
        read_at: &mut Vec<i64>,
        at_end: &mut Vec<bool>,
        cohorts: &mut [Cohort],
    ) -> Result<(), ReadError> {
        let count = topic.lock().positions.len();
        if count <= read_at.len() {
            return Ok(());
        }
        let starts = self.source.start_offsets(&topic.name, count)?;
        consumer.add(&topic.name, read_at.len(), &starts[read_at.len()..])?;
        read_at.extend_from_slice(&starts[read_at.len()..]);
        at_end.resize(count, false);
        for c in cohorts {
            let known = c.at.len();
            c.at.extend_from_slice(&starts[known..]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::group::{Fanout, Handoff};
    use crate::metrics::Metrics;
    use crate::wake::Ready;

    /// A resume of `topic` (its queue's receiver too: a job whose receiver is gone is dropped).
    fn job(topic: &Arc<Topic>, id: u64) -> (Job, queue::Receiver) {
        let (tx, rx) = queue::channel(8, usize::MAX);
        let fanout = Fanout::new(Ready::new(futures_util::task::noop_waker()));
        let job = Job {
            topic: topic.clone(),
            id,
            keys: None,
            format: crate::sse::Format::Plain,
            filter: None,
            from: vec![LogStart::Offset(0)],
            tx,
            snapshot: false,
            scope: None,
            handoff: Handoff::new(&fanout.seat(0)),
        };
        (job, rx)
    }

    #[test]
    fn one_task_per_topic_takes_the_resumes_that_wait() {
        let metrics = Metrics::new(&[]);
        let (a, b) = (
            Arc::new(Topic::new("a", None, false, &metrics)),
            Arc::new(Topic::new("b", None, false, &metrics)),
        );
        let readers = Readers::new(2);
        let mut receivers = Vec::new();
        let mut wait = |topic: &Arc<Topic>, id| {
            let (job, rx) = job(topic, id);
            receivers.push(rx);
            readers.wait(job)
        };
        // The first resume of a topic starts a task; the next ones wait for it.
        assert!(wait(&a, 1));
        assert!(!wait(&a, 2));
        assert!(wait(&b, 3), "another topic, another task");
        // A running reader takes the resumes ahead of it: the task on its way stays on it.
        let ids = |jobs: Vec<Job>| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(readers.take_waiting_if("a", |j| j.id == 2)), [2]);
        assert!(!wait(&a, 4));
        assert_eq!(ids(readers.take_waiting_if("a", |_| true)), [1, 4]);
        assert!(
            !wait(&a, 5),
            "the task is still on its way: it takes this one"
        );
        // The task takes what waits; a resume after that starts another.
        assert_eq!(ids(readers.take_waiting("a")), [5]);
        assert!(readers.take_waiting("a").is_empty());
        assert!(wait(&a, 6));
        assert_eq!(ids(readers.take_waiting("b")), [3]);
        // Without a task on its way, a reader that takes every resume leaves nothing behind.
        assert_eq!(ids(readers.take_waiting("a")), [6]);
        assert!(wait(&a, 7));
        drop(readers.take_waiting("a"));
        assert!(readers.waiting.lock().is_empty());
    }
}
