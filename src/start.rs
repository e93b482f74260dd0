//! Where a stream starts, from the request: the `Last-Event-ID` header, else a `lastEventId`
//! query parameter (polyfills, first connections), else `from=` (`latest`, the default;
//! `earliest`; an RFC 3339 time; or epoch milliseconds). Everything is checked here, before any
//! Kafka work, so a bad request costs nothing but its `400`.
//!
//! A [`Start`] becomes one [`PartitionStart`] per partition ([`per_partition`]); the hub
//! resolves those to offsets where it knows them: [`PartitionStart::Live`] against the live
//! positions when the stream opens, [`LogStart::Earliest`] against the log start when a
//! catch-up reader starts.

use std::borrow::Cow;

use http::HeaderMap;
use percent_encoding::percent_decode_str;
use thiserror::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::position::{self, Position, TokenError};

/// Where a new stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Records produced from now on.
    Live,
    /// Every record still in Kafka.
    Earliest,
    /// Records with a timestamp at or after this many milliseconds since the epoch (never
    /// negative: Kafka reads negative times as special offsets).
    Timestamp(i64),
    /// Right after a resume token's position.
    Token(Position),
    /// The latest value of every key, then `event: live`, then live records.
    Snapshot,
}

/// Where one partition of a new stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionStart {
    /// At the partition's live position when the stream opens (the partitions a key stream
    /// whose ids name only its key's partition does not read).
    Live,
    /// At the earliest offset still in the log.
    Earliest,
    /// At this offset.
    Offset(i64),
}

/// Where one partition of a stream starts in the log, once the live position is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStart {
    /// At the earliest offset still in the log (known once a catch-up reader asks Kafka).
    Earliest,
    /// At this offset.
    Offset(i64),
}

impl PartitionStart {
    /// This start in the log of a partition whose live position is `live`.
    pub fn in_log(self, live: i64) -> LogStart {
        match self {
            PartitionStart::Live => LogStart::Offset(live),
            PartitionStart::Earliest => LogStart::Earliest,
            PartitionStart::Offset(offset) => LogStart::Offset(offset),
        }
    }
}

impl LogStart {
    /// The offset, when it is known without asking Kafka.
    pub fn offset(self) -> Option<i64> {
        match self {
            LogStart::Earliest => None,
            LogStart::Offset(offset) => Some(offset),
        }
    }
}

/// The start of each of `partitions` partitions for a stream that names `named(p)` for
/// partition `p`. With `scope` (the key's partition, for a key stream whose ids name only it)
/// only that partition starts where named, or live where nothing is named, and every other one
/// starts live; without, a partition where nothing is named starts at its earliest offset.
pub fn per_partition(
    partitions: usize,
    scope: Option<usize>,
    named: impl Fn(usize) -> Option<PartitionStart>,
) -> Vec<PartitionStart> {
    let unnamed = if scope.is_some() {
        PartitionStart::Live
    } else {
        PartitionStart::Earliest
    };
    (0..partitions)
        .map(|p| match scope {
            Some(s) if s != p => PartitionStart::Live,
            _ => named(p).unwrap_or(unnamed),
        })
        .collect()
}

/// Why the start of a stream cannot be understood (HTTP 400).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartError {
    /// The resume id is not one of ours, or not for this topic.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// `from=` has a value we do not understand.
    #[error(
        "from={0:?} is not latest, earliest, snapshot, an RFC 3339 time or epoch milliseconds"
    )]
    From(String),
    /// The `Last-Event-ID` header is not text.
    #[error("Last-Event-ID is not valid text")]
    HeaderNotText,
    /// A stream of several topics was given an id of another number of topics.
    #[error("the resume id is not one of a stream of these {0} topics")]
    NotTheseTopics(usize),
}

/// Reads the start of a stream of `topic` from the request's headers and query.
/// `default` is the start when the request names none (`Live`, or `Snapshot` for topics in
/// `KSG_SNAPSHOT_TOPICS`).
pub fn from_request(
    headers: &HeaderMap,
    query: Option<&str>,
    topic: &str,
    default: Start,
) -> Result<Start, StartError> {
    match resume_id(headers, query)? {
        Some(id) => Ok(Start::Token(position::decode(&id, topic)?)),
        None => from_query(query, default),
    }
}

/// The starts of a stream of several `topics` (sorted), and the client's id of each: a resume
/// id of several topics ([`crate::hub::merge`]) gives each topic its part; an empty part, or no
/// id, starts the topic as the query says.
#[allow(clippy::type_complexity)]
pub fn of_topics(
    headers: &HeaderMap,
    query: Option<&str>,
    topics: &[String],
    default: impl Fn(&str) -> Start,
) -> Result<Vec<(Start, Option<String>)>, StartError> {
    let id = resume_id(headers, query)?;
    let parts = match &id {
        Some(id) => crate::hub::merge::split(id, topics.len())
            .ok_or(StartError::NotTheseTopics(topics.len()))?,
        None => vec![""; topics.len()],
    };
    topics
        .iter()
        .zip(parts)
        .map(|(topic, part)| match part {
            "" => Ok((from_query(query, default(topic))?, None)),
            part => Ok((
                Start::Token(position::decode(part, topic)?),
                Some(part.to_string()),
            )),
        })
        .collect()
}

/// The client's resume id: `Last-Event-ID`, else the `lastEventId` parameter; `None` for none
/// (or an empty one).
fn resume_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<String>, StartError> {
    if let Some(value) = headers.get("last-event-id") {
        let id = value
            .to_str()
            .map_err(|_| StartError::HeaderNotText)?
            .trim();
        if !id.is_empty() {
            return Ok(Some(id.to_string()));
        }
    }
    Ok(param(query, "lastEventId").filter(|id| !id.is_empty()))
}

/// The value of the query's first parameter `name`, percent-decoded.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

/// The start `from=` asks for, `default` without one.
fn from_query(query: Option<&str>, default: Start) -> Result<Start, StartError> {
    match param(query, "from").as_deref() {
        None | Some("") => Ok(default),
        Some("latest") => Ok(Start::Live),
        Some("earliest") => Ok(Start::Earliest),
        Some("snapshot") => Ok(Start::Snapshot),
        Some(value) if value.bytes().all(|b| b.is_ascii_digit()) => value
            .parse()
            .map(Start::Timestamp)
            .map_err(|_| StartError::From(value.into())),
        // Kafka reads a negative time as a request for the latest (-1) or earliest (-2) offset,
        // or another special one: a time before 1970 asks for every record, as 1970 itself does.
        Some(value) => rfc3339_ms(value)
            .map(|ms| Start::Timestamp(ms.max(0)))
            .ok_or_else(|| StartError::From(value.into())),
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into milliseconds since the epoch.
///
/// The date and time are separated by `T`, `t` or a space, and a leap second (`:60`) reads as
/// the second before it, at any time of day, its fraction kept: the `time` crate alone takes
/// any byte as the separator, and a leap second only at a month's end, as its last nanosecond.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    if !matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let leap = s.get(17..19) == Some("60");
    let text = if leap {
        Cow::Owned(format!("{}59{}", &s[..17], &s[19..]))
    } else {
        Cow::Borrowed(s)
    };
    let time = OffsetDateTime::parse(&text, &Rfc3339).ok()?;
    Some(time.unix_timestamp() * 1000 + i64::from(time.millisecond()))
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("last-event-id", id.parse().unwrap());
        h
    }

    fn start(h: &HeaderMap, query: Option<&str>) -> Result<Start, StartError> {
        from_request(h, query, "t", Start::Live)
    }

    #[test]
    fn header_wins_over_query() {
        let a = position::encode_dense(position::fingerprint("t"), &[5]);
        let b = position::encode_dense(position::fingerprint("t"), &[9]);
        let query = format!("lastEventId={b}&from=earliest");
        let expected = Start::Token(position::decode(&a, "t").unwrap());
        assert_eq!(start(&headers(&a), Some(&query)).unwrap(), expected);
        let query = format!("from=earliest&lastEventId={b}");
        let expected = Start::Token(position::decode(&b, "t").unwrap());
        assert_eq!(start(&HeaderMap::new(), Some(&query)).unwrap(), expected);
        assert_eq!(start(&headers(" "), None).unwrap(), Start::Live);
    }

    #[test]
    fn bad_tokens_and_from_values_are_refused() {
        assert!(matches!(
            start(&headers("garbage!"), None),
            Err(StartError::Token(_))
        ));
        let other = position::encode_dense(position::fingerprint("other"), &[1]);
        assert_eq!(
            start(&headers(&other), None),
            Err(StartError::Token(TokenError::WrongTopic))
        );
        assert!(matches!(
            start(&HeaderMap::new(), Some("from=yesterday")),
            Err(StartError::From(_))
        ));
        let huge = Some("from=99999999999999999999");
        assert!(matches!(
            start(&HeaderMap::new(), huge),
            Err(StartError::From(_))
        ));
    }

    #[test]
    fn from_values() {
        let q = |s: &str| start(&HeaderMap::new(), Some(s)).unwrap();
        assert_eq!(q("from=latest"), Start::Live);
        assert_eq!(q("x=1"), Start::Live);
        assert_eq!(q("from=earliest"), Start::Earliest);
        assert_eq!(q("from=snapshot"), Start::Snapshot);
        assert_eq!(q("from=1700000000000"), Start::Timestamp(1_700_000_000_000));
        assert_eq!(
            q("from=2023-11-14T22:13:20Z"),
            Start::Timestamp(1_700_000_000_000)
        );
        let with_offset = q("from=2023-11-14T23%3A13%3A20.5%2B01%3A00");
        assert_eq!(with_offset, Start::Timestamp(1_700_000_000_500));
        assert_eq!(q("from=1969-12-31T23:59:59.999Z"), Start::Timestamp(0));
        assert_eq!(q("from=1900-01-01T00:00:00Z"), Start::Timestamp(0));
        let snapshot_default = from_request(&HeaderMap::new(), None, "t", Start::Snapshot);
        assert_eq!(snapshot_default.unwrap(), Start::Snapshot);
        assert_eq!(
            from_request(&HeaderMap::new(), Some("from=latest"), "t", Start::Snapshot).unwrap(),
            Start::Live
        );
    }

    #[test]
    fn partitions_start_where_named_else_earliest_or_live() {
        use PartitionStart::{Earliest, Live, Offset};
        let named = |p: usize| (p == 1).then_some(Offset(7));
        assert_eq!(
            per_partition(3, None, named),
            vec![Earliest, Offset(7), Earliest]
        );
        assert_eq!(
            per_partition(3, Some(1), named),
            vec![Live, Offset(7), Live]
        );
        assert_eq!(per_partition(3, Some(0), named), vec![Live, Live, Live]);
        assert_eq!(per_partition(0, None, named), vec![]);
    }

    #[test]
    fn live_resolves_to_the_live_position_and_earliest_waits_for_kafka() {
        assert_eq!(PartitionStart::Live.in_log(9), LogStart::Offset(9));
        assert_eq!(PartitionStart::Offset(3).in_log(9), LogStart::Offset(3));
        assert_eq!(PartitionStart::Earliest.in_log(9), LogStart::Earliest);
        assert_eq!(LogStart::Earliest.offset(), None);
        assert_eq!(LogStart::Offset(0).offset(), Some(0));
    }

    #[test]
    fn rfc3339_edges() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2000-02-29T12:00:00.123456z"),
            Some(951_825_600_123)
        );
        assert_eq!(rfc3339_ms("1969-12-31T23:59:59-00:00"), Some(-1000));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-01-01T24:00:00Z",
            "2023-01-01T00:00:00",
            "2023-01-01T00:00:00+1:00",
            "2023-01-01T00:00:00.Z",
            "20230101T000000Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_leap_seconds_separators_and_long_fractions() {
        // A leap second reads as the second before it, at any time of day, fraction kept.
        assert_eq!(
            rfc3339_ms("2023-01-01T12:30:60.5Z"),
            Some(1_672_576_259_500)
        );
        assert_eq!(rfc3339_ms("2016-12-31T23:59:60Z"), Some(1_483_228_799_000));
        assert_eq!(
            rfc3339_ms("2016-12-31 23:59:60.999+01:00"),
            Some(1_483_225_199_999)
        );
        // Milliseconds are the fraction's first three digits, however many follow; before
        // 1970 too (the milliseconds before the epoch are counted down from the second).
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00.1239999999999Z"), Some(123));
        assert_eq!(rfc3339_ms("1969-12-31T23:59:59.9995Z"), Some(-1));
        assert_eq!(
            rfc3339_ms("0000-03-01T00:00:00Z"),
            Some(-62_162_035_200_000)
        );
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00+23:59"), Some(-86_340_000));
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00-23:59"), Some(86_340_000));
        for bad in [
            "2023-01-01x00:00:00Z",
            "2023-01-01_00:00:00Z",
            "2023-01-01\u{e9}00:00:00Z",
            "2023-01-01T00:00:61Z",
            "2023-01-01T00:60:00Z",
            "2023-01-01T00:00:00+24:00",
            "2023-01-01T00:00:00+05:60",
            "2023-01-01T00:00:00+0530",
            "2023-01-01T00:00:00Z ",
            "2023-01-01T00:00:00+05:30x",
            "2023-00-01T00:00:00Z",
            "2023-01-00T00:00:00Z",
            "-2023-01-01T00:00:00Z",
            "+2023-01-01T00:00:00Z",
            "2023-1-01T00:00:00Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
    }
}
