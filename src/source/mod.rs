//! The Kafka source: ONE rdkafka consumer per gateway, partitions assigned explicitly, no group
//! commits. A task on the runtime reads it ([`Source::read_live`]) and hands every record to a
//! [`RecordSink`] (the hub, which this module knows nothing else of), a fetched batch at a
//! time; the blocking metadata, offset and assignment calls run on tokio's blocking pool. The
//! hub's catch-ups read with [`Reader`]s of their own (`reader`).

mod reader;

use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers, Message};
use rdkafka::util::AsyncRuntime;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
pub use reader::{FetchPosition, Polled, ReadError, Reader, Record};

/// How long one blocking Kafka request may take before the caller gets `503`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Records dispatched at most between two rounds of connection wake-ups.
const DISPATCH_BATCH: usize = 256;

/// A record of the live consumer, borrowed from it for the length of one call.
#[derive(Clone, Copy)]
pub struct LiveRecord<'a> {
    /// The record's topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<&'a [u8]>,
    /// `None`: a tombstone.
    pub value: Option<&'a [u8]>,
    /// Milliseconds since the epoch, when the record has a timestamp.
    pub timestamp_ms: Option<i64>,
    /// Its headers, when it has any.
    pub headers: Option<&'a BorrowedHeaders>,
}

impl<'a> LiveRecord<'a> {
    /// Its headers, as filters read them.
    pub fn header_source(&self) -> crate::filter::HeaderSource<'a> {
        match self.headers {
            Some(headers) => crate::filter::HeaderSource::Kafka(headers),
            None => crate::filter::HeaderSource::None,
        }
    }

    /// Its headers as a JSON object (`sse::headers_json`), when it has any.
    pub fn headers_json(&self) -> Option<bytes::Bytes> {
        crate::sse::headers_json(self.headers?.iter().map(|h| (h.key, h.value)))
    }
}

/// Where the live consumer's records go.
pub trait RecordSink: Send + Sync {
    /// One batch of the records already fetched, in the order polled (up to
    /// `DISPATCH_BATCH`). The sink does once per batch what it can (the hub locks a topic once
    /// for the records of it in a row, and wakes each connection once).
    fn batch(&self, records: &[LiveRecord<'_>]);
}

/// A Kafka problem, classified by who is at fault.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The topic does not exist: the client's fault (404).
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// Kafka did not answer or failed: upstream's fault (503).
    #[error("Kafka is unavailable: {0}")]
    Unavailable(#[from] KafkaError),
}

/// Routes librdkafka's errors and logs into metrics and tracing.
pub struct Context {
    metrics: Metrics,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                error!(facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Warning => warn!(facility = fac, "librdkafka: {log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Debug => debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A catch-up reader reaching the end of a partition is where it wants to be.
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            debug!("Kafka: end of partition: {reason}");
            return;
        }
        let code = error
            .rdkafka_error_code()
            .map_or("other".to_string(), |c| format!("{c:?}"));
        self.metrics.kafka_errors.with_label_values(&[&code]).inc();
        warn!(code = %code, "Kafka client error: {reason}");
    }
}

impl ConsumerContext for Context {}

/// rdkafka's runtime for the live consumer: tokio's, when there is one. A `StreamConsumer`
/// spawns a task that wakes its streams every half `max.poll.interval.ms`, for a consumer
/// group's liveness. The gateway assigns its partitions and joins no group, and its reader is
/// woken by the records themselves, so a source made outside a runtime (by a test of the hub,
/// whose records are dispatched by hand) goes without that task instead of panicking.
pub struct LiveRuntime;

impl AsyncRuntime for LiveRuntime {
    type Delay = tokio::time::Sleep;

    fn spawn<T>(task: T)
    where
        T: Future<Output = ()> + Send + 'static,
    {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(task);
        }
    }

    fn delay_for(duration: Duration) -> Self::Delay {
        tokio::time::sleep(duration)
    }
}

/// The gateway's one live Kafka consumer, and the factory of its catch-up readers.
pub struct Source {
    consumer: StreamConsumer<Context, LiveRuntime>,
    config: ClientConfig,
    metrics: Metrics,
}

impl Source {
    /// Creates the consumer; it connects lazily, so this succeeds while Kafka is down.
    pub fn new(
        brokers: &str,
        properties: &BTreeMap<String, String>,
        metrics: Metrics,
    ) -> Result<Source, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "kafka-sse-gateway")
            // assign() needs a group id; nothing is ever committed to it.
            .set("group.id", "kafka-sse-gateway")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            // A fetch is answered after at most 2 ms (or once 64 KiB wait): records that arrive
            // within those 2 ms reach the gateway as one batch, which wakes its threads and
            // connections once. With Kafka's defaults (answer at the first byte) every record
            // costs a fetch round trip and a wake-up of each thread on its way: at 2,000
            // records/s about 2.5x the CPU, for at most 2 ms less latency (docs/benchmarks.md).
            .set("fetch.wait.max.ms", "2")
            .set("fetch.min.bytes", "65536")
            .set("fetch.queue.backoff.ms", "10")
            .set("queued.max.messages.kbytes", "16384")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (name, value) in properties {
            config.set(name, value);
        }
        let consumer = config.create_with_context(Context {
            metrics: metrics.clone(),
        })?;
        Ok(Source {
            consumer,
            config,
            metrics,
        })
    }

    /// A new catch-up reader: the same settings, end-of-partition events on, a smaller
    /// prefetch queue, and out-of-range positions reset to the earliest offset.
    ///
    /// The prefetch (512 KiB of records per partition) is what a reader holds while its streams'
    /// clients are slow. librdkafka's overhead per queued record is larger than a small record,
    /// so 4 MiB of 100-byte records held about 16 MiB per reader; 512 KiB costs about 15% of
    /// one reader's speed (171,656 records to live in 1.25 s instead of 1.1 s).
    pub fn reader(&self) -> Result<Reader, KafkaError> {
        let mut config = self.config.clone();
        config
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("queued.max.messages.kbytes", "512");
        let consumer = config.create_with_context(Context {
            metrics: self.metrics.clone(),
        })?;
        Ok(Reader::new(consumer))
    }

    /// True when the cluster answers a metadata request (blocking).
    pub fn reachable(&self, timeout: Duration) -> bool {
        self.consumer.fetch_metadata(None, timeout).is_ok()
    }

    /// The number of partitions of `topic` (blocking).
    pub fn partition_count(&self, topic: &str) -> Result<usize, SourceError> {
        let metadata = self.consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(SourceError::UnknownTopic(topic.to_string()));
        };
        match t.error() {
            None if !t.partitions().is_empty() => Ok(t.partitions().len()),
            None => Err(SourceError::UnknownTopic(topic.to_string())),
            Some(e) => match RDKafkaErrorCode::from(e) {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                    Err(SourceError::UnknownTopic(topic.to_string()))
                }
                code => Err(SourceError::Unavailable(KafkaError::MetadataFetch(code))),
            },
        }
    }

    /// The end offset (next offset to be written) of partitions `0..count`, in one request.
    pub fn end_offsets(&self, topic: &str, count: usize) -> Result<Vec<i64>, SourceError> {
        all_known(self.list_offsets(topic, count, Offset::End)?)
    }

    /// The earliest offset still in the log of partitions `0..count`, in one request.
    pub fn start_offsets(&self, topic: &str, count: usize) -> Result<Vec<i64>, SourceError> {
        all_known(self.list_offsets(topic, count, Offset::Beginning)?)
    }

    /// The first offset whose timestamp is at or after `ms` in each partition; the end offset
    /// where no record is that recent.
    pub fn offsets_at(&self, topic: &str, ms: i64, count: usize) -> Result<Vec<i64>, SourceError> {
        let found = self.list_offsets(topic, count, Offset::Offset(ms))?;
        if found.iter().all(|o| *o >= 0) {
            return Ok(found);
        }
        let end = self.end_offsets(topic, count)?;
        Ok(found
            .iter()
            .zip(end)
            .map(|(&f, e)| if f >= 0 { f } else { e })
            .collect())
    }

    /// One ListOffsets request for partitions `0..count`: `Offset::End`, `Offset::Beginning`,
    /// or `Offset::Offset(timestamp)`. A partition with no answer is -1.
    fn list_offsets(
        &self,
        topic: &str,
        count: usize,
        query: Offset,
    ) -> Result<Vec<i64>, SourceError> {
        let mut request = TopicPartitionList::new();
        for p in 0..count as i32 {
            request.add_partition_offset(topic, p, query)?;
        }
        let answer = self.consumer.offsets_for_times(request, REQUEST_TIMEOUT)?;
        let mut offsets = vec![-1; count];
        for element in answer.elements() {
            element.error()?;
            let slot = offsets
                .get_mut(element.partition() as usize)
                .ok_or(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition))?;
            if let Offset::Offset(o) = element.offset() {
                *slot = o;
            }
        }
        Ok(offsets)
    }

    /// Adds partitions `first..first + next.len()` of `topic` to the assignment at the given
    /// offsets.
    pub fn assign(&self, topic: &str, first: usize, next: &[i64]) -> Result<(), SourceError> {
        self.consumer
            .incremental_assign(&partition_list(topic, first, next)?)?;
        self.metrics.partitions_assigned.add(next.len() as i64);
        Ok(())
    }

    /// Removes partitions `0..count` of `topic` from the assignment.
    pub fn unassign(&self, topic: &str, count: usize) -> Result<(), SourceError> {
        let mut list = TopicPartitionList::new();
        for p in 0..count as i32 {
            list.add_partition(topic, p);
        }
        self.consumer.incremental_unassign(&list)?;
        self.metrics.partitions_assigned.sub(count as i64);
        Ok(())
    }

    /// Reads the live consumer for good, handing every record to `sink`: what is already
    /// fetched (up to `DISPATCH_BATCH` records) as one batch. A task on the runtime, not a
    /// thread of its own: librdkafka wakes it when its queue has records (the queue's event
    /// callback, through `StreamConsumer`), and the worker that fans them out then runs the
    /// connections they wake. A thread in between was one more wake-up per fetch
    /// (docs/benchmarks.md).
    pub async fn read_live(self: Arc<Self>, sink: Arc<dyn RecordSink>) {
        let mut stream = self.consumer.stream();
        let mut polled = Vec::with_capacity(DISPATCH_BATCH);
        loop {
            // The first record waited for, then what is there already, all polled with this
            // task's waker: a poll that finds the queue empty leaves it to wake this task.
            let open = poll_fn(|cx| {
                while polled.len() < DISPATCH_BATCH {
                    match stream.poll_next_unpin(cx) {
                        Poll::Ready(Some(next)) => self.keep(&mut polled, next),
                        Poll::Ready(None) => return Poll::Ready(false),
                        Poll::Pending if polled.is_empty() => return Poll::Pending,
                        Poll::Pending => break,
                    }
                }
                Poll::Ready(true)
            })
            .await;
            if !polled.is_empty() {
                let records: Vec<LiveRecord<'_>> = polled.iter().map(live_record).collect();
                sink.batch(&records);
                drop(records);
                // The messages go back to librdkafka after the batch that borrowed them.
                polled.clear();
            }
            if !open {
                return;
            }
            // The connections woken run before the next batch.
            tokio::task::yield_now().await;
        }
    }

    /// Keeps a polled record for the batch; counts and logs consume errors.
    fn keep<'c>(
        &self,
        batch: &mut Vec<BorrowedMessage<'c>>,
        polled: KafkaResult<BorrowedMessage<'c>>,
    ) {
        match polled {
            Ok(message) => batch.push(message),
            // Reaching the end of a partition is not an error.
            Err(KafkaError::PartitionEOF(_)) => {}
            Err(e) => {
                let code = e
                    .rdkafka_error_code()
                    .map_or("other".to_string(), |c| format!("{c:?}"));
                self.metrics.kafka_errors.with_label_values(&[&code]).inc();
                warn!(code = %code, "Kafka consume error: {e}");
            }
        }
    }
}

/// A polled message as the hub reads it.
fn live_record<'m>(message: &'m BorrowedMessage<'_>) -> LiveRecord<'m> {
    LiveRecord {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        value: message.payload(),
        timestamp_ms: message.timestamp().to_millis(),
        headers: message.headers(),
    }
}

/// A message's headers as a JSON object (`sse::headers_json`), when it has any.
pub(crate) fn headers_json(message: &BorrowedMessage<'_>) -> Option<bytes::Bytes> {
    let headers = message.headers()?;
    crate::sse::headers_json(headers.iter().map(|h| (h.key, h.value)))
}

/// Partitions `first..first + offsets.len()` of `topic`, at `offsets`.
fn partition_list(
    topic: &str,
    first: usize,
    offsets: &[i64],
) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for (p, &offset) in (first..).zip(offsets) {
        list.add_partition_offset(topic, p as i32, Offset::Offset(offset))?;
    }
    Ok(list)
}

/// Fails when Kafka left a partition without an offset.
fn all_known(offsets: Vec<i64>) -> Result<Vec<i64>, SourceError> {
    if offsets.iter().any(|o| *o < 0) {
        return Err(KafkaError::OffsetFetch(RDKafkaErrorCode::InvalidArgument).into());
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use tokio::sync::mpsc;

    /// Hands each batch on as its records' (partition, offset).
    struct Batches(mpsc::UnboundedSender<Vec<(i32, i64)>>);

    impl RecordSink for Batches {
        fn batch(&self, records: &[LiveRecord<'_>]) {
            let _ = self
                .0
                .send(records.iter().map(|r| (r.partition, r.offset)).collect());
        }
    }

    async fn next_batch(batches: &mut mpsc::UnboundedReceiver<Vec<(i32, i64)>>) -> Vec<(i32, i64)> {
        tokio::time::timeout(Duration::from_secs(30), batches.recv())
            .await
            .expect("the live reader was not woken within 30 s")
            .expect("the live reader ended")
    }

    /// The contract the live reader rests on (rdkafka pinned to 0.39.0): a `StreamConsumer`'s
    /// stream, once it answered `Pending`, is woken by librdkafka's queue callback when a
    /// fetch brings records, however long it waited. Each record produced while the reader
    /// sleeps reaches the sink; a burst comes in batches of at most `DISPATCH_BATCH`, in
    /// order. The records name their partition (the mock cluster's partitioner is not what
    /// is tested); the producer keeps librdkafka's other defaults.
    #[tokio::test]
    async fn the_live_reader_sleeps_until_librdkafka_wakes_it_with_records() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("live", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let source = Arc::new(Source::new(&brokers, &BTreeMap::new(), Metrics::new(&[])).unwrap());
        source.assign("live", 0, &[0, 0]).unwrap();
        let (tx, mut batches) = mpsc::unbounded_channel();
        let reader = tokio::spawn(source.clone().read_live(Arc::new(Batches(tx))));
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let produce = |partition: i32, count: usize| {
            for _ in 0..count {
                producer
                    .send(
                        BaseRecord::to("live")
                            .partition(partition)
                            .key("k")
                            .payload("v"),
                    )
                    .unwrap();
            }
            producer.flush(Duration::from_secs(10)).unwrap();
        };

        for offset in 0..5 {
            // The reader hands its batch on, yields, and waits again (one thread: it runs
            // while this test yields; the mock cluster takes far longer to fetch).
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            produce(1, 1);
            assert_eq!(next_batch(&mut batches).await, vec![(1, offset)]);
        }

        produce(0, 3 * DISPATCH_BATCH);
        let mut got = Vec::new();
        while got.len() < 3 * DISPATCH_BATCH {
            let batch = next_batch(&mut batches).await;
            assert!(
                !batch.is_empty() && batch.len() <= DISPATCH_BATCH,
                "{}",
                batch.len()
            );
            got.extend(batch);
        }
        let expected: Vec<(i32, i64)> = (0..3 * DISPATCH_BATCH as i64).map(|o| (0, o)).collect();
        assert_eq!(got, expected);
        assert!(
            batches.try_recv().is_err(),
            "nothing more than was produced"
        );

        reader.abort();
        let _ = reader.await;
    }
}
