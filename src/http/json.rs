//! The JSON answer of a snapshot read (`?from=snapshot` with `Accept: application/json` or
//! `format=json`): `{"id": "<resume id>", "records": [<envelopes>]}`, the latest record of every
//! matching key and the position they were read at, from which a stream then continues with no
//! gap and no duplicate. With `from=latest` the records are none and the id is the live
//! position. The records come from a snapshot subscription in the envelope format: its events
//! up to `event: live`, whose id is the answer's.

use std::future::poll_fn;

use bytes::BytesMut;

use crate::hub::Events;
use crate::sse;

/// Why a snapshot read gave no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Its records are over the bound (`KSG_SNAPSHOT_BYTES`), this many bytes at least.
    TooLarge(usize),
    /// The subscription ended before its snapshot was complete (the gateway is shutting down,
    /// or the topic went away).
    Ended,
}

/// The answer's body: the resume id and the records, each an envelope (a record over
/// `KSG_MAX_EVENT_BYTES` as `{"oversize": {"partition", "offset", "bytes"}}`).
pub fn document(id: &str, records: &[u8]) -> String {
    let records = String::from_utf8_lossy(records);
    format!("{{\"id\":\"{id}\",\"records\":[{records}]}}")
}

/// Reads a snapshot subscription's `events` up to `event: live`: the records, comma-separated
/// JSON (at most `max` bytes of them), and the live event's id.
pub async fn read_snapshot(
    events: &mut Events,
    max: usize,
) -> Result<(String, Vec<u8>), SnapshotError> {
    let mut records = Vec::new();
    let mut pending = BytesMut::new();
    loop {
        let chunk = poll_fn(|cx| events.poll_recv(cx))
            .await
            .ok_or(SnapshotError::Ended)?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = memchr::memmem::find(&pending, b"\n\n") {
            let block = pending.split_to(end + 2);
            match sse::read_block(&block[..end]) {
                (Some(sse::EVENT_LIVE), Some(id), _) => return Ok((id.to_string(), records)),
                (kind, _, Some(data)) => {
                    let oversize = kind == Some(sse::EVENT_OVERSIZE);
                    let extra = if oversize { 13 } else { 0 };
                    if records.len() + data.len() + extra + 1 > max {
                        return Err(SnapshotError::TooLarge(records.len() + data.len()));
                    }
                    if !records.is_empty() {
                        records.push(b',');
                    }
                    if oversize {
                        records.extend_from_slice(b"{\"oversize\":");
                        records.extend_from_slice(data.as_bytes());
                        records.push(b'}');
                    } else {
                        records.extend_from_slice(data.as_bytes());
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Subscription;
    use bytes::Bytes;

    fn envelope(offset: i64, key: &str) -> Bytes {
        let record = sse::Envelope {
            topic: "t",
            partition: 0,
            offset,
            timestamp_ms: Some(5),
            key: Some(key.as_bytes()),
            value: Some(b"v"),
            headers: None,
        };
        sse::envelope_event("", &record)
    }

    #[tokio::test]
    async fn a_snapshots_records_and_the_id_of_its_live_event_make_the_document() {
        let (tx, mut subscription) = Subscription::detached("t", 16);
        // Two records in one chunk, an oversize notice split over two, then the live event.
        let mut chunk = envelope(0, "a").to_vec();
        chunk.extend_from_slice(&envelope(1, "b"));
        tx.try_send_owned(Bytes::from(chunk)).unwrap();
        let notice = sse::oversize_event("", 0, 2, 9000);
        tx.try_send(notice.slice(..7)).unwrap();
        tx.try_send(notice.slice(7..)).unwrap();
        tx.try_send(sse::event(Some(sse::EVENT_LIVE), "ID1", "{}"))
            .unwrap();
        let (id, records) = read_snapshot(&mut subscription.events, 1 << 20)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&document(&id, &records)).unwrap();
        assert_eq!(json["id"], "ID1");
        let records = json["records"].as_array().unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(
            (records[0]["key"].clone(), records[1]["offset"].clone()),
            ("a".into(), 1.into())
        );
        assert_eq!(records[2]["oversize"]["bytes"], 9000);
    }

    #[tokio::test]
    async fn a_snapshot_over_the_bound_or_ended_early_has_no_document() {
        let (tx, mut subscription) = Subscription::detached("t", 16);
        for offset in 0..4 {
            tx.try_send(envelope(offset, "k")).unwrap();
        }
        let one = envelope(0, "k").len();
        let got = read_snapshot(&mut subscription.events, 3 * one).await;
        assert!(matches!(got, Err(SnapshotError::TooLarge(_))), "{got:?}");
        let (tx, mut subscription) = Subscription::detached("t", 16);
        tx.try_send(envelope(0, "k")).unwrap();
        drop(tx);
        let got = read_snapshot(&mut subscription.events, 1 << 20).await;
        assert_eq!(got, Err(SnapshotError::Ended));
    }
}
