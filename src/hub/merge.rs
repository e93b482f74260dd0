//! A stream of several topics (`/{topicA},{topicB}`): one stream of each topic, each a view on
//! its topic's one path like any stream (its connection's group once live, its own queue while
//! it catches up), read in turn, with each event's id made into one id of every topic's
//! position.
//!
//! The id of a stream of several topics is each topic's id (the topics sorted by name), joined
//! by `.` (ids never hold one); a topic that has sent nothing yet has an empty part, which means
//! "start as the request says" when the client resumes with it. An event's `id:` line is
//! replaced by that id, and in the plain format a record's event gets its topic as its type
//! (`event: stock-prices`); other events keep their types, and those whose data is a JSON
//! object (`gap`, `oversize`, `end`) gain a `"topic"` field. Each topic's `event: live` (the end
//! of its snapshot) is held until every topic's has come: then one `event: live` follows, with
//! the events of all the snapshots counted.
//!
//! What a topic's stream shares (its group's log, the ring, a catch-up reader's chunks) stays
//! shared: the stream composes each event as it writes it (its id is its own), and holds
//! nothing more.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};

use super::subscribe::Events;
use crate::metrics::TopicSeries;
use crate::sse;

/// Parts of an id of several topics are joined by this (never in one topic's id).
pub const ID_SEPARATOR: char = '.';

/// One topic's part of the stream.
struct Part {
    /// `event: <topic>\n`, the type a record of the topic gets in the plain format.
    typed: Bytes,
    topic: Arc<TopicSeries>,
    events: Events,
    /// The topic's id after the last event sent from it (or the client's own, or none yet).
    id: Option<String>,
    /// Its snapshot's `event: live` came (held until every topic's has).
    live: bool,
}

/// The streams of several topics read as one (see the module's documentation).
pub struct Merge {
    parts: Vec<Part>,
    /// The plain format: records get their topic as their type.
    plain: bool,
    /// The part to look at first, in turn.
    next: usize,
    /// Topics whose `event: live` is held, and the snapshot events they counted.
    held_live: usize,
    snapshot_events: u64,
}

impl Merge {
    /// The streams `parts` (topic series, events, the client's id of the topic if any), in
    /// the order of the topics' names; `plain`: records get their topic as their type.
    pub fn new(parts: Vec<(Arc<TopicSeries>, Events, Option<String>)>, plain: bool) -> Merge {
        let parts = parts
            .into_iter()
            .map(|(topic, events, id)| Part {
                typed: Bytes::from(format!("event: {}\n", topic.name)),
                topic,
                events,
                id,
                live: false,
            })
            .collect::<Vec<Part>>();
        // The stream counts itself open in its first topic's series, the others here.
        for part in parts.iter().skip(1) {
            part.topic.open.inc();
        }
        Merge {
            parts,
            plain,
            next: 0,
            held_live: 0,
            snapshot_events: 0,
        }
    }

    /// The id of every topic's position now; `None` while no topic has one.
    pub fn id(&self) -> Option<String> {
        compose(self.parts.iter().map(|p| p.id.as_deref()))
    }

    /// Block(s) `bytes` of topic `i` that come before its events (a `gap`), composed.
    pub fn prelude(&mut self, i: usize, bytes: &[u8]) -> Option<Bytes> {
        self.compose(i, bytes)
    }

    /// The next block (or several, from one chunk of a topic's own queue), `None` once a
    /// topic's stream is over (the client resumes every topic from its last id).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let n = self.parts.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            match self.parts[i].events.poll_recv(cx) {
                Poll::Ready(Some(bytes)) => {
                    self.next = (i + 1) % n;
                    match self.compose(i, &bytes) {
                        Some(block) => return Poll::Ready(Some(block)),
                        // A held `live`: look again (this part may have more).
                        None => return self.poll_recv(cx),
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// The next block if there is one now.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let n = self.parts.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            while let Some(bytes) = self.parts[i].events.try_recv() {
                if let Some(block) = self.compose(i, &bytes) {
                    return Some(block);
                }
            }
        }
        None
    }

    /// The blocks of `bytes` from part `i`, composed (see the module's documentation); `None`
    /// when nothing of them goes out now (a held `live`).
    fn compose(&mut self, i: usize, bytes: &[u8]) -> Option<Bytes> {
        // What a topic's own queue gives is counted here (a group counts what its streams
        // read): the stream counts nothing of a stream of several topics.
        if matches!(self.parts[i].events, Events::Then(..)) {
            let series = &self.parts[i].topic;
            series.events.inc_by(crate::stream::blocks(bytes));
            series.bytes.inc_by(bytes.len() as u64);
        }
        let mut out = BytesMut::with_capacity(bytes.len() + 64);
        let mut start = 0;
        while start < bytes.len() {
            let end = memchr::memmem::find(&bytes[start..], b"\n\n")
                .map_or(bytes.len(), |at| start + at + 2);
            self.compose_block(i, &bytes[start..end], &mut out);
            start = end;
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    /// Appends block `block` of part `i`, composed, to `out`.
    fn compose_block(&mut self, i: usize, block: &[u8], out: &mut BytesMut) {
        let body = block.strip_suffix(b"\n\n").unwrap_or(block);
        let lines = || body.split(|b| *b == b'\n');
        let kind = lines().find_map(|l| l.strip_prefix(b"event: "));
        let id = lines().find_map(|l| l.strip_prefix(b"id: "));
        if let Some(id) = id {
            // The part's id is kept in the same buffer from event to event.
            let held = self.parts[i].id.get_or_insert_with(String::new);
            held.clear();
            held.push_str(&String::from_utf8_lossy(id));
        }
        if kind == Some(sse::EVENT_LIVE.as_bytes()) {
            self.held(i, body);
            if self.held_live < self.parts.len() {
                return;
            }
            let data = format!(r#"{{"snapshot_events":{}}}"#, self.snapshot_events);
            let id = self.id().unwrap_or_default();
            out.put_slice(&sse::event(Some(sse::EVENT_LIVE), &id, &data));
            return;
        }
        match kind {
            Some(kind) => {
                out.put_slice(b"event: ");
                out.put_slice(kind);
                out.put_u8(b'\n');
            }
            None if self.plain && lines().any(|l| l.starts_with(b"data:")) => {
                out.put_slice(&self.parts[i].typed)
            }
            None => {}
        }
        let json_data = matches!(
            kind,
            Some(b"gap" | b"oversize" | b"end") // their data is one JSON object
        );
        let other =
            |l: &&[u8]| !l.is_empty() && !l.starts_with(b"event: ") && !l.starts_with(b"id: ");
        for line in lines().filter(other) {
            match line.strip_prefix(b"data: {") {
                Some(rest) if json_data => {
                    out.put_slice(b"data: {\"topic\":");
                    let name =
                        serde_json::to_string(&*self.parts[i].topic.name).unwrap_or_default();
                    out.put_slice(name.as_bytes());
                    if rest != b"}" {
                        out.put_u8(b',');
                    }
                    out.put_slice(rest);
                }
                _ => out.put_slice(line),
            }
            out.put_u8(b'\n');
        }
        if id.is_some() {
            // Every topic's id, written in place.
            out.put_slice(b"id: ");
            for (n, part) in self.parts.iter().enumerate() {
                if n > 0 {
                    out.put_u8(ID_SEPARATOR as u8);
                }
                out.put_slice(part.id.as_deref().unwrap_or("").as_bytes());
            }
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
    }

    /// Part `i`'s snapshot ended (`body`: its `live` event's lines).
    fn held(&mut self, i: usize, body: &[u8]) {
        let part = &mut self.parts[i];
        if !part.live {
            part.live = true;
            self.held_live += 1;
        }
        let counted = body.split(|b| *b == b'\n').find_map(|l| {
            let text = std::str::from_utf8(l.strip_prefix(b"data: ")?).ok()?;
            let json: serde_json::Value = serde_json::from_str(text).ok()?;
            json["snapshot_events"].as_u64()
        });
        self.snapshot_events += counted.unwrap_or(0);
    }
}

impl Drop for Merge {
    fn drop(&mut self) {
        for part in self.parts.iter().skip(1) {
            part.topic.open.dec();
        }
    }
}

/// The id of several topics of `ids` (each `None`: none yet), `None` when none has one.
pub fn compose<'a>(ids: impl Iterator<Item = Option<&'a str>> + Clone) -> Option<String> {
    if ids.clone().all(|id| id.is_none()) {
        return None;
    }
    let parts: Vec<&str> = ids.map(|id| id.unwrap_or("")).collect();
    Some(parts.join(&ID_SEPARATOR.to_string()))
}

/// The parts of an id of `topics` topics: one (possibly empty) per topic, or `None` when it
/// has another number of parts.
pub fn split(id: &str, topics: usize) -> Option<Vec<&str>> {
    let parts: Vec<&str> = id.split(ID_SEPARATOR).collect();
    (parts.len() == topics).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::queue;
    use crate::hub::subscribe::Events;
    use crate::metrics::Metrics;
    use parking_lot::Mutex;

    fn part(
        name: &str,
        id: Option<&str>,
    ) -> (queue::Sender, (Arc<TopicSeries>, Events, Option<String>)) {
        let (tx, rx) = queue::channel(16, usize::MAX);
        let series = Metrics::new(&[]).topic_series(name);
        let events = Events::then(rx, Arc::new(Mutex::new(None)), None);
        (tx, (series, events, id.map(String::from)))
    }

    fn text(b: Option<Bytes>) -> String {
        String::from_utf8(b.expect("a block").to_vec()).unwrap()
    }

    #[test]
    fn events_get_their_topic_and_one_id_of_every_topic() {
        let (a_tx, a) = part("a", None);
        let (b_tx, b) = part("b", Some("B0"));
        let mut merge = Merge::new(vec![a, b], true);
        assert_eq!(merge.id().as_deref(), Some(".B0"));
        let _ = a_tx.try_send(sse::record_event("A1", Some(b"k"), Some(b"one")));
        assert_eq!(text(merge.try_recv()), "event: a\ndata: one\nid: A1.B0\n\n");
        // A chunk of several blocks from a catch-up: each is composed.
        let mut chunk = BytesMut::new();
        chunk.put_slice(&sse::record_event("B1", Some(b"k"), None));
        chunk.put_slice(&sse::event(
            Some("gap"),
            "",
            r#"{"reason":"r","partitions":[]}"#,
        ));
        chunk.put_slice(&sse::record_event("B2", Some(b"k"), Some(b"two")));
        let _ = b_tx.try_send(chunk.freeze());
        let got = text(merge.try_recv());
        assert_eq!(
            got,
            "event: delete\ndata: k\nid: A1.B1\n\n\
             event: gap\ndata: {\"topic\":\"b\",\"reason\":\"r\",\"partitions\":[]}\n\n\
             event: b\ndata: two\nid: A1.B2\n\n"
        );
        // An id-only block (a drain's last) moves the topic's part.
        let _ = a_tx.try_send(sse::id_only("A9"));
        assert_eq!(text(merge.try_recv()), "id: A9.B2\n\n");
        assert_eq!(split("A9.B2", 2), Some(vec!["A9", "B2"]));
        assert_eq!(split("A9", 2), None);
        assert_eq!(split(".B2", 2), Some(vec!["", "B2"]));
    }

    #[test]
    fn one_live_follows_every_topics_snapshot() {
        let (a_tx, a) = part("a", None);
        let (b_tx, b) = part("b", None);
        let mut merge = Merge::new(vec![a, b], false);
        let live = |id: &str, n: u64| {
            sse::event(Some("live"), id, &format!(r#"{{"snapshot_events":{n}}}"#))
        };
        let _ = a_tx.try_send(live("A5", 2));
        assert_eq!(merge.try_recv(), None, "held until b's");
        let _ = b_tx.try_send(sse::record_event("", Some(b"k"), Some(b"{}")));
        assert_eq!(
            text(merge.try_recv()),
            "data: {}\n\n",
            "a snapshot's events have no id"
        );
        let _ = b_tx.try_send(live("B3", 1));
        assert_eq!(
            text(merge.try_recv()),
            "event: live\nid: A5.B3\ndata: {\"snapshot_events\":3}\n\n"
        );
    }
}
