//! A snapshot's latest value per key, bounded in bytes and reported to the snapshot gauges.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use prometheus::IntGauge;

use crate::hub::topic::Topic;
use crate::hub::Hub;
use crate::source::Record;

/// Bookkeeping per snapshot entry counted against the snapshot budget.
const SNAPSHOT_ENTRY_OVERHEAD: usize = 64;

/// The latest record of each key, for a snapshot. Within a partition the later offset wins; a
/// key found on several partitions keeps the record with the latest timestamp.
#[derive(Default)]
pub(super) struct Latest {
    /// Key → (partition, offset, timestamp ms, event).
    entries: HashMap<Vec<u8>, (usize, i64, i64, Bytes)>,
    /// Bytes held, counted against `KSG_SNAPSHOT_BYTES`.
    pub(super) bytes: usize,
    /// Events sent so far.
    pub(super) sent: usize,
    /// Gauges of what all snapshots in progress hold (entries, bytes).
    held: Option<(IntGauge, IntGauge)>,
}

impl Latest {
    /// An empty map reporting what it holds to the gauges `held` (entries, bytes).
    pub(super) fn new(held: (IntGauge, IntGauge)) -> Latest {
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
    pub(super) fn drain(&mut self) -> BytesMut {
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

impl Hub {
    /// Records without a key have no latest value to keep: a snapshot leaves them out. A
    /// record that does not pass the stream's filter (`passes` false) forgets its key, as a
    /// tombstone does: the snapshot holds a key only while its latest record passes.
    pub(super) fn snapshot_record(
        &self,
        latest: &mut Latest,
        topic: &Topic,
        partition: usize,
        message: &Record<'_>,
        format: crate::sse::Format,
        passes: bool,
    ) {
        let Some(key) = message.key() else {
            topic.keyless.inc();
            return;
        };
        let event = message
            .payload()
            .filter(|_| passes)
            .map(|_| self.encode_read(topic, format, "", partition, message));
        let ts = message.timestamp_ms().unwrap_or(0);
        latest.record(partition, message.offset(), ts, key, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse;

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
