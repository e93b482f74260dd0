//! Property tests of reading a stream's start from a request.

use http::HeaderValue;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Milliseconds since the epoch of a UTC-offset civil time, counted from the calendar's rules
/// (leap years every 4 years, not every 100, yet every 400); `None` for a day the month lacks.
fn civil_ms(
    date: (i64, usize, i64),
    time: (i64, i64, i64, i64),
    offset_minutes: i64,
) -> Option<i64> {
    let (year, month, day) = date;
    let (hour, minute, second, millis) = time;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let lengths = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > lengths[month - 1] {
        return None;
    }
    let leap_years_before =
        |y: i64| (y - 1).div_euclid(4) - (y - 1).div_euclid(100) + (y - 1).div_euclid(400);
    let days = 365 * (year - 1970) + leap_years_before(year) - leap_years_before(1970)
        + lengths[..month - 1].iter().sum::<i64>()
        + day
        - 1;
    let minutes = (days * 24 + hour) * 60 + minute - offset_minutes;
    Some((minutes * 60 + second) * 1000 + millis)
}

/// A time as RFC 3339 writes it, with its parts.
#[derive(Debug, Clone)]
struct Written {
    text: String,
    date: (i64, usize, i64),
    time: (i64, i64, i64, i64),
    offset_minutes: i64,
}

fn written_time() -> impl Strategy<Value = Written> {
    (
        (0..=9999i64, 1..=12usize, 1..=31i64),
        (0..24i64, 0..60i64, 0..60i64),
        prop::option::of("[0-9]{1,9}"),
        prop::sample::select(vec!['T', 't', ' ']),
        prop_oneof![
            prop::sample::select(vec!["Z", "z"]).prop_map(|z| (z.to_string(), 0)),
            (any::<bool>(), 0..24i64, 0..60i64).prop_map(|(plus, h, m)| {
                let sign = if plus { '+' } else { '-' };
                let minutes = if plus { h * 60 + m } else { -(h * 60 + m) };
                (format!("{sign}{h:02}:{m:02}"), minutes)
            }),
        ],
    )
        .prop_map(
            |((y, mo, d), (h, mi, s), fraction, t, (zone, offset_minutes))| {
                let millis = fraction
                    .as_deref()
                    .map_or(0, |f| format!("{f:0<3}")[..3].parse().unwrap());
                let fraction = fraction.map_or(String::new(), |f| format!(".{f}"));
                Written {
                    text: format!("{y:04}-{mo:02}-{d:02}{t}{h:02}:{mi:02}:{s:02}{fraction}{zone}"),
                    date: (y, mo, d),
                    time: (h, mi, s, millis),
                    offset_minutes,
                }
            },
        )
}

proptest! {
    #![proptest_config(config(5_000))]

    /// A written time is the milliseconds it names, and a stream asked to start there starts
    /// there, or at 1970 for an earlier time: Kafka reads negative times as special offsets.
    #[test]
    fn rfc3339_times_are_the_milliseconds_they_name(w in written_time()) {
        let want = civil_ms(w.date, w.time, w.offset_minutes);
        prop_assert_eq!(rfc3339_ms(&w.text), want, "{}", w.text);
        let query = format!("from={}", w.text.replace('+', "%2B").replace(':', "%3A"));
        let start = from_request(&HeaderMap::new(), Some(&query), "t", Start::Live);
        match want {
            Some(ms) => prop_assert_eq!(start, Ok(Start::Timestamp(ms.max(0)))),
            None => prop_assert_eq!(start, Err(StartError::From(w.text))),
        }
    }

    /// Any `Last-Event-ID` bytes and any query give a start or a reason, never a panic; a
    /// header that is a token for the topic always wins.
    #[test]
    fn any_request_gives_a_start_or_a_reason(
        header in prop::option::of(prop_oneof![
            vec(any::<u8>(), 0..40),
            "[A-Za-z0-9_ -]{0,40}".prop_map(String::into_bytes),
        ]),
        query in prop::option::of(prop_oneof![
            any::<String>(),
            "((lastEventId|from)=[A-Za-z0-9_%:+.-]{0,24}&?){0,3}",
        ]),
        offsets in vec(0..=i64::MAX, 0..4),
        real_token in any::<bool>(),
    ) {
        let mut headers = HeaderMap::new();
        let token = position::encode_dense(position::fingerprint("t"), &offsets);
        let header = if real_token { Some(token.clone().into_bytes()) } else { header };
        if let Some(value) = header.and_then(|h| HeaderValue::from_bytes(&h).ok()) {
            headers.insert("last-event-id", value);
        }
        let start = from_request(&headers, query.as_deref(), "t", Start::Live);
        if real_token {
            let want = Start::Token(position::decode(&token, "t").unwrap());
            prop_assert_eq!(start, Ok(want));
        } else {
            match start {
                Ok(Start::Timestamp(ms)) => prop_assert!(ms >= 0),
                Ok(_) => {}
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
