//! The Server-Sent Events wire format: pure functions from records to exact bytes.
//!
//! Every event is encoded once, here, and the resulting [`Bytes`] are shared by every stream
//! that receives it. Nothing in this module allocates per subscriber or touches I/O.
//!
//! Format decisions (also in the README):
//! - A record whose value is valid UTF-8 becomes a default (`message`) event with one `data: `
//!   line per line of the value; CR, LF and CRLF all end a line, exactly as the EventSource
//!   parser splits them, so the browser sees the value with every line break turned into LF.
//! - A record whose value is not valid UTF-8 is never written raw: it becomes an event of type
//!   `binary` whose data is the value in standard base64 (lossless).
//! - A tombstone (null value) becomes `event: delete` with the key as data; a key that is not
//!   valid UTF-8 becomes `event: delete-binary` with the key in standard base64.
//! - `data: ` always carries its space, so a value line that starts with a space keeps it.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

/// Event type of a tombstone (record with a null value).
pub const EVENT_DELETE: &str = "delete";
/// Event type of a tombstone whose key is not valid UTF-8 (data is base64).
pub const EVENT_DELETE_BINARY: &str = "delete-binary";
/// Event type of a record whose value is not valid UTF-8 (data is base64).
pub const EVENT_BINARY: &str = "binary";

/// Event type standing for a record whose value is over the size limit.
pub const EVENT_OVERSIZE: &str = "oversize";
/// Event type of the last event of a stream the gateway ends for good (the topic was deleted).
pub const EVENT_END: &str = "end";
/// Event type that ends a snapshot: what follows is live.
pub const EVENT_LIVE: &str = "live";
/// Event type telling a resumed stream that records were skipped (no longer in Kafka).
pub const EVENT_GAP: &str = "gap";

/// The comment sent when a stream has been quiet for a heartbeat interval.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// The first bytes of every stream: the reconnect delay, and an id-only block that sets the
/// client's `lastEventId` to the stream's start position without dispatching an event, so a
/// client that reconnects before any event arrives still resumes without loss.
/// A resumed stream's preamble has no id until its first event: the client's own id stands.
pub fn preamble(retry_ms: u64, start_id: Option<&str>) -> Bytes {
    let mut buf = BytesMut::with_capacity(32 + start_id.map_or(0, str::len));
    buf.put_slice(b"retry: ");
    buf.put_slice(retry_ms.to_string().as_bytes());
    if let Some(id) = start_id {
        debug_assert!(is_safe_field(id));
        buf.put_slice(b"\nid: ");
        buf.put_slice(id.as_bytes());
    }
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// A block with only an `id:`: it dispatches no event, but the client's `lastEventId` becomes
/// `id` (the last thing a stream sends when its client must resume from a new kind of id).
pub fn id_only(id: &str) -> Bytes {
    debug_assert!(is_safe_field(id));
    let mut buf = BytesMut::with_capacity(6 + id.len());
    buf.put_slice(b"id: ");
    buf.put_slice(id.as_bytes());
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// Encodes one Kafka record as an SSE event carrying `id` (a resume token).
///
/// `value == None` is a tombstone. `id` must be a field-safe token (no CR, LF or NUL), which
/// every resume token is by construction (base64url).
pub fn record_event(id: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Bytes {
    debug_assert!(is_safe_field(id));
    match value {
        Some(value) => match std::str::from_utf8(value) {
            Ok(text) => event(None, id, text),
            Err(_) => event(Some(EVENT_BINARY), id, &base64_std(value)),
        },
        None => {
            let key = key.unwrap_or_default();
            match std::str::from_utf8(key) {
                Ok(text) => event(Some(EVENT_DELETE), id, text),
                Err(_) => event(Some(EVENT_DELETE_BINARY), id, &base64_std(key)),
            }
        }
    }
}

/// Encodes an event with an optional type, an id and text data (split into `data:` lines).
pub fn event(event_type: Option<&str>, id: &str, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(data.len() + id.len() + 32);
    if let Some(event_type) = event_type {
        debug_assert!(is_safe_field(event_type));
        buf.put_slice(b"event: ");
        buf.put_slice(event_type.as_bytes());
        buf.put_u8(b'\n');
    }
    if !id.is_empty() {
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    for line in split_lines(data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// The same event with another id: the `id:` line of an event encoded by this module is
/// replaced, everything else is kept byte for byte. Used when a resumed stream needs an id that
/// also covers what the client received elsewhere.
pub fn with_id(event: &[u8], id: &str) -> Bytes {
    debug_assert!(is_safe_field(id));
    let mut out = BytesMut::with_capacity(event.len() + id.len());
    let mut rest = event;
    let mut replaced = false;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let (line, tail) = rest.split_at(end + 1);
        if !replaced && line.starts_with(b"id: ") {
            out.put_slice(b"id: ");
            out.put_slice(id.as_bytes());
            out.put_u8(b'\n');
            replaced = true;
        } else {
            out.put_slice(line);
        }
        rest = tail;
        if line == b"\n" {
            break;
        }
    }
    out.put_slice(rest);
    out.freeze()
}

/// How a stream's events carry records: the value alone (the default), or an envelope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// The value as `data` (see the module's rules).
    #[default]
    Plain,
    /// One JSON object per record as `data` ([`envelope_event`]).
    Envelope,
}

/// What a record's envelope says (`?format=envelope`).
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition and the offset.
    pub partition: usize,
    /// The record's offset.
    pub offset: i64,
    /// Milliseconds since the epoch, if the record has a timestamp.
    pub timestamp_ms: Option<i64>,
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// `None`: a tombstone.
    pub value: Option<&'a [u8]>,
    /// The record's headers as a JSON object ([`headers_json`]); `None`: none.
    pub headers: Option<&'a [u8]>,
}

/// Encodes a record as one JSON object in one `data:` line: `topic`, `partition`, `offset`,
/// `timestamp` (ms, or null), `key` and `value` (strings when valid UTF-8; otherwise null,
/// with `key_b64` / `value_b64` in standard base64; a tombstone's value is null) and `headers`
/// (an object, `{}` for none). A tombstone is `event: delete`; every other record is a default
/// event.
pub fn envelope_event(id: &str, r: &Envelope<'_>) -> Bytes {
    let held = r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len);
    let mut data = Vec::with_capacity(held + r.headers.map_or(2, <[u8]>::len) + 128);
    data.extend_from_slice(b"{\"topic\":");
    json_string(&mut data, r.topic);
    let timestamp = r.timestamp_ms.map_or("null".to_string(), |t| t.to_string());
    let place = format!(
        ",\"partition\":{},\"offset\":{},\"timestamp\":{timestamp}",
        r.partition, r.offset
    );
    data.extend_from_slice(place.as_bytes());
    json_bytes(&mut data, "key", r.key);
    json_bytes(&mut data, "value", r.value);
    data.extend_from_slice(b",\"headers\":");
    data.extend_from_slice(r.headers.unwrap_or(b"{}"));
    data.push(b'}');
    let data = String::from_utf8(data).expect("JSON is UTF-8");
    let event_type = r.value.is_none().then_some(EVENT_DELETE);
    event(event_type, id, &data)
}

/// A record's headers as one JSON object: a value that is valid UTF-8 as a string, another as
/// `{"b64": …}`, a null value as null. A name given more than once keeps its last value.
/// `None` when there are no headers.
pub fn headers_json<'h>(
    headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
) -> Option<Bytes> {
    let all: Vec<(&str, Option<&[u8]>)> = headers.into_iter().collect();
    if all.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    let mut first = true;
    for (i, (name, value)) in all.iter().enumerate() {
        if all[i + 1..].iter().any(|(later, _)| later == name) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json_string(&mut out, name);
        out.push(b':');
        match value.map(|v| (v, std::str::from_utf8(v))) {
            None => out.extend_from_slice(b"null"),
            Some((_, Ok(text))) => json_string(&mut out, text),
            Some((bytes, Err(_))) => {
                out.extend_from_slice(b"{\"b64\":\"");
                out.extend_from_slice(base64_std(bytes).as_bytes());
                out.extend_from_slice(b"\"}");
            }
        }
    }
    out.push(b'}');
    Some(Bytes::from(out))
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string serializes");
}

/// Appends `,"name":…` for bytes that may not be text: a string when valid UTF-8, otherwise
/// null and `,"name_b64":"…"`; null when absent.
fn json_bytes(out: &mut Vec<u8>, name: &str, bytes: Option<&[u8]>) {
    out.extend_from_slice(format!(",\"{name}\":").as_bytes());
    match bytes.map(|b| (b, std::str::from_utf8(b))) {
        None => out.extend_from_slice(b"null"),
        Some((_, Ok(text))) => json_string(out, text),
        Some((raw, Err(_))) => {
            out.extend_from_slice(format!("null,\"{name}_b64\":\"").as_bytes());
            out.extend_from_slice(base64_std(raw).as_bytes());
            out.push(b'"');
        }
    }
}

/// Reads back one block of this module's events (without its blank line): its type, its id and
/// its data (lines joined with LF), each `None` when absent. Text that is not UTF-8 reads as
/// nothing.
pub fn read_block(block: &[u8]) -> (Option<&str>, Option<&str>, Option<String>) {
    let Ok(text) = std::str::from_utf8(block) else {
        return (None, None, None);
    };
    let (mut kind, mut id, mut data): (_, _, Option<String>) = (None, None, None);
    for line in text.split('\n') {
        if let Some(value) = line.strip_prefix("event: ") {
            kind = Some(value);
        } else if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value);
        } else if let Some(value) = line.strip_prefix("data: ") {
            match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
    }
    (kind, id, data)
}

/// The part of `event` (a default event of this module) that is `value` itself, when the value
/// went out as one `data:` line unchanged (valid UTF-8 without line breaks): what a holder of
/// both keeps once. `None` otherwise.
pub fn value_within(event: &Bytes, value: &[u8]) -> Option<Bytes> {
    let at = memchr::memmem::find(event, b"data: ")? + 6;
    let slice = event.get(at..at + value.len())?;
    (slice == value && event.get(at + value.len()) == Some(&b'\n'))
        .then(|| event.slice(at..at + value.len()))
}

/// Encodes `event: oversize` for a record too large to send: where it is and how large.
pub fn oversize_event(id: &str, partition: usize, offset: i64, bytes: usize) -> Bytes {
    let data = format!(r#"{{"partition":{partition},"offset":{offset},"bytes":{bytes}}}"#);
    event(Some(EVENT_OVERSIZE), id, &data)
}

/// A gap: records between `from` and `to` of a partition are gone (retention or compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The partition.
    pub partition: i32,
    /// The offset the client asked for.
    pub from: i64,
    /// The earliest offset still available, where the stream continues.
    pub to: i64,
}

/// Encodes `event: gap` with a JSON body listing each partition's skipped range.
pub fn gap_event(id: &str, gaps: &[Gap]) -> Bytes {
    let items: Vec<String> = gaps
        .iter()
        .map(|g| {
            format!(
                r#"{{"partition":{},"from":{},"to":{},"skipped":{}}}"#,
                g.partition,
                g.from,
                g.to,
                g.to - g.from
            )
        })
        .collect();
    event(
        Some(EVENT_GAP),
        id,
        &format!(r#"{{"partitions":[{}]}}"#, items.join(",")),
    )
}

/// Splits text the way the EventSource parser ends lines: at CRLF, at a lone CR and at LF.
/// An empty text is one empty line (so the event still dispatches, with empty data).
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(current)
            }
            Some(at) => {
                let skip = if current[at..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[at + skip..]);
                Some(&current[..at])
            }
        }
    })
}

/// True when `s` may stand in an `id:` or `event:` field: no CR, LF or NUL.
pub fn is_safe_field(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn base64_std(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn value_becomes_message_event() {
        let b = record_event("AQI", Some(b"GOOG"), Some(b"{\"p\":1}"));
        assert_eq!(text(b), "id: AQI\ndata: {\"p\":1}\n\n");
    }

    #[test]
    fn every_line_ending_splits() {
        let b = record_event("x", None, Some(b"a\nb\r\nc\rd"));
        assert_eq!(text(b), "id: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
        let b = record_event("x", None, Some(b"a\r\r\nb\n"));
        assert_eq!(text(b), "id: x\ndata: a\ndata: \ndata: b\ndata: \n\n");
    }

    #[test]
    fn empty_value_is_one_empty_data_line() {
        assert_eq!(
            text(record_event("x", None, Some(b""))),
            "id: x\ndata: \n\n"
        );
    }

    #[test]
    fn leading_space_of_a_line_survives() {
        assert_eq!(
            text(record_event("x", None, Some(b" indented"))),
            "id: x\ndata:  indented\n\n"
        );
    }

    #[test]
    fn tombstone_is_delete_with_key() {
        let b = record_event("x", Some(b"GOOG"), None);
        assert_eq!(text(b), "event: delete\nid: x\ndata: GOOG\n\n");
        let b = record_event("x", None, None);
        assert_eq!(text(b), "event: delete\nid: x\ndata: \n\n");
    }

    #[test]
    fn non_utf8_is_base64_in_its_own_event_type() {
        let b = record_event("x", None, Some(&[0xff, 0x00, b'\n']));
        assert_eq!(text(b), "event: binary\nid: x\ndata: /wAK\n\n");
        let b = record_event("x", Some(&[0xc3, 0x28]), None);
        assert_eq!(text(b), "event: delete-binary\nid: x\ndata: wyg=\n\n");
    }

    #[test]
    fn nul_in_utf8_value_stays_in_data_only() {
        let b = record_event("x", None, Some(b"a\0b"));
        assert_eq!(b.as_ref(), b"id: x\ndata: a\0b\n\n");
    }

    #[test]
    fn id_only_block_has_no_data() {
        assert_eq!(text(id_only("AQ")), "id: AQ\n\n");
    }

    #[test]
    fn preamble_sets_retry_and_start_id() {
        assert_eq!(text(preamble(3000, Some("AQ"))), "retry: 3000\nid: AQ\n\n");
        assert_eq!(text(preamble(10, None)), "retry: 10\n\n");
    }

    #[test]
    fn with_id_replaces_only_the_id_line() {
        let e = record_event("old", Some(b"k"), Some(b"id: not this\nx"));
        assert_eq!(
            text(with_id(&e, "new")),
            "id: new\ndata: id: not this\ndata: x\n\n"
        );
        let e = record_event("old", Some(b"k"), None);
        assert_eq!(
            text(with_id(&e, "n2")),
            "event: delete\nid: n2\ndata: k\n\n"
        );
    }

    #[test]
    fn oversize_event_says_where_and_how_large() {
        assert_eq!(
            text(oversize_event("x", 2, 41, 5_000_000)),
            "event: oversize\nid: x\ndata: {\"partition\":2,\"offset\":41,\"bytes\":5000000}\n\n"
        );
    }

    #[test]
    fn gap_event_lists_partitions() {
        let g = [
            Gap {
                partition: 0,
                from: 3,
                to: 10,
            },
            Gap {
                partition: 2,
                from: 0,
                to: 1,
            },
        ];
        assert_eq!(
            text(gap_event("x", &g)),
            "event: gap\nid: x\ndata: {\"partitions\":[{\"partition\":0,\"from\":3,\"to\":10,\"skipped\":7},{\"partition\":2,\"from\":0,\"to\":1,\"skipped\":1}]}\n\n"
        );
    }

    /// The envelope's JSON, and the event's type.
    fn envelope_of(event: Bytes) -> (Option<String>, serde_json::Value) {
        let text = text(event);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::to_string)
        };
        assert_eq!(text.matches("data: ").count(), 1, "one data line: {text:?}");
        let data = field("data: ").unwrap();
        (field("event: "), serde_json::from_str(&data).unwrap())
    }

    #[test]
    fn an_envelope_is_one_json_line_with_the_records_place_key_value_and_headers() {
        let headers = headers_json([
            ("tenant", Some(&b"acme"[..])),
            ("raw", Some(&[0xff, 0x00][..])),
            ("none", None),
            ("tenant", Some(b"other")),
        ]);
        let r = Envelope {
            topic: "orders",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_123),
            key: Some(b"o-1"),
            value: Some(b"{\"a\":\"line1\\nline2\"}\r\nsecond"),
            headers: headers.as_deref(),
        };
        let (event_type, json) = envelope_of(envelope_event("ID", &r));
        assert_eq!(event_type, None);
        let expected = serde_json::json!({
            "topic": "orders", "partition": 2, "offset": 41, "timestamp": 1_700_000_000_123i64,
            "key": "o-1", "value": "{\"a\":\"line1\\nline2\"}\r\nsecond",
            "headers": {"raw": {"b64": "/wA="}, "none": null, "tenant": "other"},
        });
        assert_eq!(json, expected);
        // Bytes that are not text: null, and base64 beside; a tombstone: `event: delete`.
        let r = Envelope {
            key: Some(&[0xfe]),
            value: None,
            timestamp_ms: None,
            headers: None,
            ..r
        };
        let (event_type, json) = envelope_of(envelope_event("ID", &r));
        assert_eq!(event_type.as_deref(), Some(EVENT_DELETE));
        assert_eq!(json["key"], serde_json::Value::Null);
        assert_eq!(json["key_b64"], "/g==");
        assert_eq!(json["value"], serde_json::Value::Null);
        assert!(json.get("value_b64").is_none());
        assert_eq!(json["timestamp"], serde_json::Value::Null);
        assert_eq!(json["headers"], serde_json::json!({}));
        let r = Envelope {
            key: None,
            value: Some(&[0x80, b'a']),
            ..r
        };
        let (_, json) = envelope_of(envelope_event("ID", &r));
        assert_eq!(
            (json["key"].clone(), json["value_b64"].clone()),
            (serde_json::Value::Null, "gGE=".into())
        );
        assert_eq!(headers_json(std::iter::empty()), None);
    }

    #[test]
    fn a_one_line_value_is_found_within_its_event() {
        for value in [&b"{\"a\":1}"[..], b"", b" spaced ", b"id: x"] {
            let event = record_event("ID", Some(b"k"), Some(value));
            let within = value_within(&event, value).expect("one line");
            assert_eq!(&within[..], value);
            if !value.is_empty() {
                assert_eq!(
                    within.as_ptr(),
                    event[event.len() - value.len() - 2..].as_ptr()
                );
            }
        }
        for value in [&b"a\nb"[..], b"a\r\nb", b"a\rb", &[0xff, 0xfe][..]] {
            let event = record_event("ID", Some(b"k"), Some(value));
            assert_eq!(value_within(&event, value), None, "{value:?}");
        }
        let event = record_event("ID", Some(b"k"), Some(b"ab"));
        assert_eq!(
            value_within(&event, b"a"),
            None,
            "a prefix is not the value"
        );
    }

    #[test]
    fn a_block_reads_back_as_its_type_id_and_data() {
        let record = record_event("ID", Some(b"k"), Some(b"one\ntwo"));
        let block = &record[..record.len() - 2];
        assert_eq!(
            read_block(block),
            (None, Some("ID"), Some("one\ntwo".into()))
        );
        let live = event(Some(EVENT_LIVE), "X", "{}");
        assert_eq!(
            read_block(&live[..live.len() - 2]),
            (Some("live"), Some("X"), Some("{}".into()))
        );
        assert_eq!(read_block(b":"), (None, None, None));
    }

    #[test]
    fn unsafe_fields_are_detected() {
        assert!(is_safe_field("abc-_09"));
        assert!(!is_safe_field("a\nb"));
        assert!(!is_safe_field("a\rb"));
        assert!(!is_safe_field("a\0b"));
    }
}
