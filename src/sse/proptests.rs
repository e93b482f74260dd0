//! Property tests of the wire format: what a browser makes of the bytes, for any record.
//!
//! [`Browser`] reads a stream by the WHATWG "interpret an event stream" rules, written from the
//! specification and sharing nothing with the encoder: every record must reach it as exactly one
//! event carrying the data and id the README promises.

use base64::Engine;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// One dispatched event: its type, its data and the `lastEventId` it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dispatched {
    kind: String,
    data: String,
    last_event_id: String,
}

/// An EventSource's view of a stream, fed bytes in one piece.
#[derive(Debug, Default)]
struct Browser {
    events: Vec<Dispatched>,
    /// The last event ID string (what a reconnect sends as `Last-Event-ID`).
    last_event_id: String,
    /// The reconnection time set by `retry:`, if any.
    reconnection_ms: Option<u64>,
    data: String,
    event_type: String,
    id_buffer: String,
}

impl Browser {
    /// Interprets a whole stream: UTF-8 decode (a leading BOM dropped, bad sequences replaced),
    /// lines ended by CRLF, a lone CR or a lone LF; a last line without its end is pending data
    /// and is discarded when the stream ends.
    fn read(stream: &[u8]) -> Browser {
        let text = String::from_utf8_lossy(stream);
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut browser = Browser::default();
        let mut line = String::new();
        let mut after_cr = false;
        for c in text.chars() {
            match c {
                '\n' if after_cr => after_cr = false,
                '\r' | '\n' => {
                    after_cr = c == '\r';
                    browser.line(&std::mem::take(&mut line));
                }
                _ => {
                    after_cr = false;
                    line.push(c);
                }
            }
        }
        browser
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.find(':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line, ""),
        };
        match field {
            "event" => self.event_type = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.id_buffer = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.reconnection_ms = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        self.last_event_id = self.id_buffer.clone();
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let kind = match std::mem::take(&mut self.event_type) {
            kind if kind.is_empty() => "message".to_string(),
            kind => kind,
        };
        self.events.push(Dispatched {
            kind,
            data,
            last_event_id: self.last_event_id.clone(),
        });
    }
}

/// The event the README's "Event format" table promises for a record.
fn promised(id: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Dispatched {
    let (bytes, text_kind, binary_kind) = match value {
        Some(value) => (value, "message", EVENT_BINARY),
        None => (key.unwrap_or_default(), EVENT_DELETE, EVENT_DELETE_BINARY),
    };
    let (kind, data) = match std::str::from_utf8(bytes) {
        Ok(text) => (text_kind, text.replace("\r\n", "\n").replace('\r', "\n")),
        Err(_) => (
            binary_kind,
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ),
    };
    Dispatched {
        kind: kind.to_string(),
        data,
        last_event_id: id.to_string(),
    }
}

/// Bytes biased towards what SSE cares about: line ends, colons, spaces, NUL, and the pieces of
/// multi-byte UTF-8 (lead and continuation bytes) that make or break validity.
fn sse_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"\r\n: \0".to_vec()),
        1 => 0x80u8..0xc0,
        1 => 0xc2u8..0xf5,
        3 => b' '..=b'~',
        1 => any::<u8>(),
    ]
}

/// Valid UTF-8 built from line breaks of every kind, field-like text, a BOM, non-ASCII
/// characters and any `char`.
fn text_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "\r",
            "\n",
            "\r\n",
            "\n\r",
            " ",
            "  ",
            ":",
            "\0",
            "data: x",
            "id: 1",
            "event: e",
            "retry: 5",
            "\u{feff}",
            "é",
            "\u{2028}",
            "\u{1f600}",
        ])
        .prop_map(str::to_string),
        any::<char>().prop_map(String::from),
        "[a-z ]{1,8}",
    ]
}

/// A record value or key: biased bytes (often invalid UTF-8), text, or any bytes at all.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(sse_byte(), 0..48),
        vec(text_piece(), 0..12).prop_map(|pieces| pieces.concat().into_bytes()),
        vec(any::<u8>(), 0..48),
    ]
}

/// An event id: a real resume token, or any field-safe text (leading spaces and colons too).
fn event_id() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u32>(), vec(0..=i64::MAX, 0..8))
            .prop_map(|(fp, offsets)| crate::position::encode_dense(fp, &offsets)),
        "[^\r\n\u{0}]{1,24}",
    ]
}

/// A record: key, value (`None`: tombstone).
fn record() -> impl Strategy<Value = (Option<Vec<u8>>, Option<Vec<u8>>)> {
    (
        prop::option::weighted(0.8, payload()),
        prop::option::weighted(0.75, payload()),
    )
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn every_record_is_exactly_one_event_for_a_browser(
        (key, value) in record(),
        id in event_id(),
    ) {
        let encoded = record_event(&id, key.as_deref(), value.as_deref());
        let browser = Browser::read(&encoded);
        let want = promised(&id, key.as_deref(), value.as_deref());
        prop_assert_eq!(&browser.events, &vec![want], "{:?}", encoded);
        prop_assert_eq!(browser.last_event_id, id);
    }

    #[test]
    fn a_new_id_changes_nothing_but_the_id(
        (key, value) in record(),
        old in event_id(),
        new in event_id(),
    ) {
        let encoded = with_id(&record_event(&old, key.as_deref(), value.as_deref()), &new);
        let want = promised(&new, key.as_deref(), value.as_deref());
        prop_assert_eq!(Browser::read(&encoded).events, vec![want], "{:?}", encoded);
    }

    #[test]
    fn preamble_id_only_and_heartbeat_dispatch_nothing(
        retry_ms in prop_oneof![0..=86_400_000u64, any::<u64>()],
        start_id in prop::option::of(event_id()),
        id in event_id(),
    ) {
        let browser = Browser::read(&preamble(retry_ms, start_id.as_deref()));
        prop_assert!(browser.events.is_empty());
        prop_assert_eq!(browser.reconnection_ms, Some(retry_ms));
        prop_assert_eq!(browser.last_event_id, start_id.unwrap_or_default());

        let browser = Browser::read(&id_only(&id));
        prop_assert!(browser.events.is_empty());
        prop_assert_eq!(browser.last_event_id, id);

        let browser = Browser::read(HEARTBEAT);
        prop_assert!(browser.events.is_empty());
        prop_assert_eq!(browser.last_event_id, "");
        prop_assert_eq!(browser.reconnection_ms, None);
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    /// A whole stream: the preamble, then records with heartbeats between them. No state of
    /// one event (type, data, id) leaks into the next.
    #[test]
    fn a_stream_is_one_event_per_record_in_order(
        retry_ms in 0..=86_400_000u64,
        start_id in prop::option::of(event_id()),
        records in vec((record(), event_id(), any::<bool>()), 0..8),
    ) {
        let mut stream = preamble(retry_ms, start_id.as_deref()).to_vec();
        let mut want = Vec::new();
        for ((key, value), id, heartbeat_first) in &records {
            if *heartbeat_first {
                stream.extend_from_slice(HEARTBEAT);
            }
            stream.extend_from_slice(&record_event(id, key.as_deref(), value.as_deref()));
            want.push(promised(id, key.as_deref(), value.as_deref()));
        }
        let browser = Browser::read(&stream);
        prop_assert_eq!(browser.events, want);
        prop_assert_eq!(browser.reconnection_ms, Some(retry_ms));
        let last_id = match records.last() {
            Some((_, id, _)) => id.clone(),
            None => start_id.unwrap_or_default(),
        };
        prop_assert_eq!(browser.last_event_id, last_id);
    }
}

/// The interpreter itself follows the rules where the encoder never goes: CR line ends, fields
/// without a colon or space, ids with NUL, unterminated last events, a BOM.
#[test]
fn browser_follows_the_specification() {
    let b = Browser::read(b"\xef\xbb\xbfdata:a\r\rdata\r\nid: x\0y\nevent:e\ndata:  b\n\ndata: c");
    let want = vec![
        Dispatched {
            kind: "message".into(),
            data: "a".into(),
            last_event_id: String::new(),
        },
        Dispatched {
            kind: "e".into(),
            data: "\n b".into(),
            last_event_id: String::new(),
        },
    ];
    assert_eq!(b.events, want);
    let b = Browser::read(b"retry: 12x\nid\n: comment\nevent: gone\n\nretry:7\r\n");
    assert_eq!((b.events.len(), b.reconnection_ms), (0, Some(7)));
    assert_eq!(b.last_event_id, "");
    let b = Browser::read(b"id: 1\ndata\n\nid: 2\ndata: x\n");
    assert_eq!(b.events.len(), 1);
    assert_eq!(
        (b.events[0].data.as_str(), b.last_event_id.as_str()),
        ("", "1")
    );
}
