//! Property tests of the `ksg.subscribe` matcher: a pattern allows exactly the paths its
//! segments name, however either side is percent-encoded; `*` is one segment, `{sub}` the
//! subject; nothing panics.

use proptest::collection::vec;
use proptest::prelude::*;

use super::allows;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A segment's bytes as a client may write them: each byte escaped (upper or lower hex) or, when
/// it is safe in a path segment, as itself.
fn encoded(bytes: &[u8], escape: &[bool]) -> String {
    let mut out = String::new();
    for (i, &b) in bytes.iter().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if plain && !escape.get(i).copied().unwrap_or(false) {
            out.push(b as char);
        } else if escape.get(i + 1).copied().unwrap_or(false) {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn segment() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..12)
}

fn path_of(segments: &[Vec<u8>], escape: &[bool]) -> String {
    segments
        .iter()
        .map(|s| format!("/{}", encoded(s, escape)))
        .collect()
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn a_literal_pattern_allows_exactly_its_own_path(
        segments in vec(segment(), 1..5),
        other in vec(segment(), 1..5),
        escape_a in vec(any::<bool>(), 16),
        escape_b in vec(any::<bool>(), 16),
    ) {
        let pattern = path_of(&segments, &escape_a);
        prop_assert!(allows(std::slice::from_ref(&pattern), None, &path_of(&segments, &escape_b)));
        let same = other == segments;
        prop_assert_eq!(allows(&[pattern], None, &path_of(&other, &escape_b)), same);
    }

    #[test]
    fn a_star_is_any_one_segment_and_only_one(
        prefix in vec(segment(), 0..3),
        any_segment in segment(),
        extra in segment(),
        escape in vec(any::<bool>(), 16),
    ) {
        let pattern = format!("{}/*", path_of(&prefix, &escape));
        let mut path = prefix.clone();
        path.push(any_segment);
        prop_assert!(allows(std::slice::from_ref(&pattern), None, &path_of(&path, &escape)));
        // One segment more, or one less, is another stream.
        let mut longer = path.clone();
        longer.push(extra);
        prop_assert!(!allows(std::slice::from_ref(&pattern), None, &path_of(&longer, &escape)));
        prop_assert!(!allows(&[pattern], None, &path_of(&prefix, &escape)));
    }

    #[test]
    fn sub_binds_to_the_subject_and_nothing_else(
        subject in "[^/]{1,16}",
        other in "[^/]{1,16}",
        escape in vec(any::<bool>(), 64),
    ) {
        let pattern = vec!["/orders/{sub}".to_string()];
        let path = |key: &str| format!("/orders/{}", encoded(key.as_bytes(), &escape));
        prop_assert!(allows(&pattern, Some(&subject), &path(&subject)));
        prop_assert_eq!(allows(&pattern, Some(&subject), &path(&other)), other == subject);
        prop_assert!(!allows(&pattern, None, &path(&subject)));
    }

    #[test]
    fn arbitrary_patterns_and_paths_never_panic(
        patterns in vec(".{0,40}", 0..4),
        subject in proptest::option::of(".{0,12}"),
        path in ".{0,60}",
    ) {
        let _ = allows(&patterns, subject.as_deref(), &path);
    }
}
