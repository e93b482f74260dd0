//! Property tests of path resolution and percent-decoding.

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

fn routes(custom: &str) -> Routes {
    Routes::parse(custom, TopicFilter::parse("*").unwrap()).unwrap()
}

const CUSTOM: &str = "/feeds/{topic}/by-key/{key},/q/{key}=fixed";

/// Percent-decoding by RFC 3986, written apart from the gateway's: `%` and two hex digits is
/// one byte, any other `%` makes the segment malformed (`None`).
fn percent_decoded(segment: &str) -> Option<Vec<u8>> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut bytes = segment.bytes();
    let mut out = Vec::new();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let high = hex(bytes.next()?)?;
            let low = hex(bytes.next()?)?;
            out.push(high << 4 | low);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// Kafka's topic rule, restated: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn kafka_topic(bytes: &[u8]) -> Option<String> {
    let legal = (1..=249).contains(&bytes.len())
        && bytes != b"."
        && bytes != b".."
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
    legal.then(|| String::from_utf8(bytes.to_vec()).unwrap())
}

/// A byte as a client may put it in a path segment: escaped (either case of hex digits) or,
/// when RFC 3986 allows it in a segment, as itself.
fn put_byte(out: &mut String, b: u8, literal: bool, upper: bool) {
    let pchar = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
    if pchar && literal {
        out.push(b as char);
    } else if upper {
        out.push_str(&format!("%{b:02X}"));
    } else {
        out.push_str(&format!("%{b:02x}"));
    }
}

/// Bytes with how to write each: (byte, literal if allowed, upper-case hex).
fn spelled_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<(u8, bool, bool)>> {
    let byte = prop_oneof![
        any::<u8>(),
        b' '..=b'~',
        prop::sample::select(b"%/?#.".to_vec())
    ];
    vec((byte, any::<bool>(), any::<bool>()), len)
}

fn spell(bytes: &[(u8, bool, bool)]) -> (Vec<u8>, String) {
    let mut path = String::new();
    for &(b, literal, upper) in bytes {
        put_byte(&mut path, b, literal, upper);
    }
    (bytes.iter().map(|s| s.0).collect(), path)
}

fn topic_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9._-]{1,40}",
        1 => "[A-Za-z0-9._-]{200,249}",
    ]
    .prop_filter("not . or ..", |t| t != "." && t != "..")
}

/// A path segment over the characters that matter to percent-decoding.
fn segment() -> impl Strategy<Value = String> {
    let c = prop::sample::select(vec![
        '%', '%', '0', '7', 'a', 'F', 'f', 'g', 'z', '.', '-', '_', ' ', '+', 'é',
    ]);
    vec(c, 0..12).prop_map(|c| c.into_iter().collect())
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn a_percent_encoded_key_resolves_to_exactly_its_topic_and_key(
        topic in topic_name(),
        topic_spelling in vec((any::<bool>(), any::<bool>()), 249),
        key in spelled_bytes(1..48),
    ) {
        let mut topic_path = String::new();
        for (b, (literal, upper)) in topic.bytes().zip(topic_spelling) {
            put_byte(&mut topic_path, b, literal, upper);
        }
        let (key, key_path) = spell(&key);
        let want = |topic: &str, key: Option<&[u8]>, route: &str| Target {
            topic: topic.to_string(),
            topics: vec![topic.to_string()],
            topic_segment: match route {
                "/q/{key}" => None,
                r if r.starts_with("/feeds") => Some(1),
                _ => Some(0),
            },
            key: key.map(<[u8]>::to_vec),
            route: route.into(),
            fixed: Default::default(),
        };

        let default = routes("");
        prop_assert_eq!(
            default.resolve(&format!("/{topic_path}/{key_path}")),
            Ok(want(&topic, Some(&key), "/{topic}/{key}"))
        );
        prop_assert_eq!(
            default.resolve(&format!("/{topic_path}")),
            Ok(want(&topic, None, "/{topic}"))
        );
        let custom = routes(CUSTOM);
        prop_assert_eq!(
            custom.resolve(&format!("/feeds/{topic_path}/by-key/{key_path}")),
            Ok(want(&topic, Some(&key), "/feeds/{topic}/by-key/{key}"))
        );
        prop_assert_eq!(
            custom.resolve(&format!("/q/{key_path}")),
            Ok(want("fixed", Some(&key), "/q/{key}"))
        );
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    /// Every segment decodes exactly as RFC 3986 says, or is a 400 when it is malformed (an
    /// invalid `%` escape, a topic Kafka would refuse, an empty key).
    #[test]
    fn segments_decode_exactly_or_are_bad_requests(seg in segment()) {
        let bad = |r: Result<Target, ResolveError>| matches!(r, Err(ResolveError::BadRequest(_)));
        let default = routes("");
        let custom = routes(CUSTOM);

        let key = percent_decoded(&seg).filter(|k| !k.is_empty());
        for path in [format!("/t/{seg}"), format!("/q/{seg}"), format!("/feeds/t/by-key/{seg}")] {
            let resolved = if path.starts_with("/t/") {
                default.resolve(&path)
            } else {
                custom.resolve(&path)
            };
            match &key {
                Some(key) => prop_assert_eq!(resolved.map(|t| t.key), Ok(Some(key.clone()))),
                None => prop_assert!(bad(resolved), "{}", path),
            }
        }

        let topic = percent_decoded(&seg).and_then(|t| kafka_topic(&t));
        let by_template = custom.resolve(&format!("/feeds/{seg}/by-key/k"));
        match &topic {
            Some(topic) => prop_assert_eq!(&by_template.map(|t| t.topic), &Ok(topic.clone())),
            None => prop_assert!(bad(by_template), "{}", seg),
        }
        let by_default = default.resolve(&format!("/{seg}"));
        match &topic {
            Some(topic) => prop_assert_eq!(by_default.map(|t| t.topic), Ok(topic.clone())),
            None if seg.is_empty() => {
                prop_assert!(matches!(by_default, Err(ResolveError::NotFound(_))))
            }
            None => prop_assert!(bad(by_default), "{}", seg),
        }
    }

    /// Whatever the templates (those that parse) and the path, resolving returns a served
    /// topic through one of the routes, or a reason.
    #[test]
    fn any_path_resolves_to_a_served_topic_or_fails_with_a_reason(
        templates in vec(template(), 0..4),
        topics in prop_oneof![Just("*".to_string()), "[a-c*?]{1,4}(,[a-c*?]{1,4})?"],
        path in prop_oneof![
            any::<String>(),
            vec(prop_oneof![segment(), "[a-c]{1,3}", Just("feeds".to_string())], 0..6)
                .prop_map(|s| s.join("/")),
        ],
    ) {
        let filter = TopicFilter::parse(&topics).unwrap();
        let Ok(r) = Routes::parse(&templates.join(","), filter.clone()) else {
            return Ok(());
        };
        for path in [path.clone(), format!("/{path}")] {
            match r.resolve(&path) {
                Ok(target) => {
                    prop_assert!(is_topic_name(&target.topic), "{}", path);
                    prop_assert!(target.key.as_ref().is_none_or(|k| !k.is_empty()));
                    prop_assert!(r.labels().contains(&target.route));
                    let fixed = templates.iter().any(|t| t.ends_with(&format!("={}", target.topic)));
                    prop_assert!(fixed || filter.allows(&target.topic), "{}", path);
                }
                Err(ResolveError::BadRequest(why) | ResolveError::NotFound(why)) => {
                    prop_assert!(!why.is_empty());
                    if !path.starts_with('/') {
                        prop_assert_eq!(why, "path must start with /");
                    }
                }
            }
        }
    }

    #[test]
    fn globs_match_like_a_reference_matcher(
        pattern in "[ab*?]{0,8}",
        text in "[ab]{0,12}",
    ) {
        prop_assert_eq!(
            glob_match(pattern.as_bytes(), text.as_bytes()),
            glob_reference(pattern.as_bytes(), text.as_bytes())
        );
    }
}

/// Glob matching by its definition: `*` is any run of bytes, `?` any one byte.
fn glob_reference(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_reference(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob_reference(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob_reference(rest, &text[1..]),
    }
}

/// A `KSG_ROUTES` item, well-formed or not.
fn template() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("{topic}".to_string()),
        Just("{key}".to_string()),
        Just("{x}".to_string()),
        Just(String::new()),
        "[a-c]{1,3}",
        "feeds",
    ];
    (
        vec(segment, 0..4),
        prop::option::of(prop_oneof!["[a-c]{1,3}", Just(" x y".to_string())]),
    )
        .prop_map(|(segments, topic)| {
            let path = format!("/{}", segments.join("/"));
            match topic {
                Some(topic) => format!("{path}={topic}"),
                None => path,
            }
        })
}
