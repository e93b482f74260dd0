//! A catch-up reader: a Kafka consumer of its own, assigned a topic's partitions at given
//! offsets, polled record by record, with end-of-partition events. The hub's catch-ups use
//! readers only through this module.

use std::fmt;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::Offset;
use thiserror::Error;

use super::{partition_list, Context, SourceError};

/// A catch-up reader's Kafka error.
#[derive(Debug, Error)]
#[error(transparent)]
pub struct ReadError(#[from] KafkaError);

impl From<SourceError> for ReadError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Unavailable(e) => ReadError(e),
            SourceError::UnknownTopic(_) => ReadError(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )),
        }
    }
}

/// One catch-up reader (made by [`Source::reader`](super::Source::reader)).
pub struct Reader {
    consumer: BaseConsumer<Context>,
}

/// What one poll of a reader gave.
pub enum Polled<'a> {
    /// A record.
    Record(Record<'a>),
    /// The reader is at the end of this partition.
    End(i32),
    /// A read error; the reader carries on.
    Failed(ReadError),
}

/// A record a reader read, borrowed from the reader.
pub struct Record<'a>(BorrowedMessage<'a>);

impl Record<'_> {
    /// The record's partition.
    pub fn partition(&self) -> i32 {
        self.0.partition()
    }

    /// The record's offset.
    pub fn offset(&self) -> i64 {
        self.0.offset()
    }

    /// The record's key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.0.key()
    }

    /// The record's value; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.0.payload()
    }

    /// The record's timestamp, milliseconds since the epoch, if it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.0.timestamp().to_millis()
    }

    /// The record's headers, as filters read them.
    pub fn header_source(&self) -> crate::filter::HeaderSource<'_> {
        use rdkafka::Message as _;
        match self.0.headers() {
            Some(headers) => crate::filter::HeaderSource::Kafka(headers),
            None => crate::filter::HeaderSource::None,
        }
    }

    /// The record's headers as a JSON object, if it has any.
    pub fn headers_json(&self) -> Option<bytes::Bytes> {
        super::headers_json(&self.0)
    }
}

/// A reader's fetch position in one partition, as Kafka's client reports it.
pub struct FetchPosition(Offset);

impl FetchPosition {
    /// The next offset the reader fetches, when it is a plain offset.
    pub fn offset(&self) -> Option<i64> {
        match self.0 {
            Offset::Offset(next) => Some(next),
            _ => None,
        }
    }
}

impl fmt::Debug for FetchPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Reader {
    pub(super) fn new(consumer: BaseConsumer<Context>) -> Reader {
        Reader { consumer }
    }

    /// Reads partitions `0..offsets.len()` of `topic` from `offsets`, and nothing else.
    pub fn assign(&self, topic: &str, offsets: &[i64]) -> Result<(), ReadError> {
        self.consumer.assign(&partition_list(topic, 0, offsets)?)?;
        Ok(())
    }

    /// Also reads partitions `first..first + offsets.len()` of `topic`, from `offsets`.
    pub fn add(&self, topic: &str, first: usize, offsets: &[i64]) -> Result<(), ReadError> {
        self.consumer
            .incremental_assign(&partition_list(topic, first, offsets)?)?;
        Ok(())
    }

    /// Drops the assignment and the records already fetched for it.
    pub fn unassign(&self) -> Result<(), ReadError> {
        self.consumer.unassign()?;
        Ok(())
    }

    /// The next record, end of partition or error, waiting up to `timeout`; `None`: nothing.
    pub fn poll(&self, timeout: Duration) -> Option<Polled<'_>> {
        Some(match self.consumer.poll(timeout)? {
            Ok(message) => Polled::Record(Record(message)),
            Err(KafkaError::PartitionEOF(partition)) => Polled::End(partition),
            Err(e) => Polled::Failed(ReadError(e)),
        })
    }

    /// The fetch position in `partition` of `topic` (it also steps over transaction markers,
    /// which no record shows).
    pub fn position(&self, topic: &str, partition: i32) -> Option<FetchPosition> {
        let list = self.consumer.position().ok()?;
        let element = list.find_partition(topic, partition)?;
        Some(FetchPosition(element.offset()))
    }
}
