//! The path patterns of a token's `ksg.subscribe` claim, matched against a request path: pure.
//!
//! A pattern is a path of `/`-separated segments, compared with the request path segment by
//! segment after percent-decoding both:
//! - `*` matches any one non-empty segment (`/stock-prices/*`: every key of a topic; it never
//!   matches the all-keys stream `/stock-prices`, nor two segments);
//! - `{sub}` stands for the token's subject, alone or inside a segment (`/orders/{sub}`,
//!   `/users/u-{sub}`); a token without `sub` matches no such pattern;
//! - anything else is literal.
//!
//! A pattern that is not a path (no leading `/`, or an invalid percent-encoding) matches nothing.

use percent_encoding::percent_decode_str;

/// The placeholder for the token's subject.
const SUBJECT: &str = "{sub}";

/// Whether `path` (the request path, without its query) is matched by one of `patterns`.
pub fn allows(patterns: &[String], subject: Option<&str>, path: &str) -> bool {
    let Some(segments) = decoded_segments(path) else {
        return false;
    };
    patterns
        .iter()
        .any(|pattern| matches(pattern, subject, &segments))
}

/// Whether `path/segment` (`segment` percent-encoded as in a path, never empty) is matched by
/// one of `patterns`: the key stream below a path of every key.
pub fn allows_below(patterns: &[String], subject: Option<&str>, path: &str, segment: &str) -> bool {
    let (Some(mut segments), Some(below)) = (decoded_segments(path), decode(segment)) else {
        return false;
    };
    if below.is_empty() {
        return false;
    }
    segments.push(below);
    patterns
        .iter()
        .any(|pattern| matches(pattern, subject, &segments))
}

/// Whether one pattern matches the decoded segments of a path.
fn matches(pattern: &str, subject: Option<&str>, path: &[Vec<u8>]) -> bool {
    let Some(rest) = pattern.strip_prefix('/') else {
        return false;
    };
    let want: Vec<&str> = rest.split('/').collect();
    want.len() == path.len()
        && want
            .iter()
            .zip(path)
            .all(|(want, got)| segment_matches(want, subject, got))
}

fn segment_matches(want: &str, subject: Option<&str>, got: &[u8]) -> bool {
    if want == "*" {
        return !got.is_empty();
    }
    let mut expected = Vec::with_capacity(got.len());
    let mut parts = want.split(SUBJECT);
    let first = parts.next().unwrap_or_default();
    let Some(first) = decode(first) else {
        return false;
    };
    expected.extend_from_slice(&first);
    for part in parts {
        let Some(subject) = subject.filter(|s| !s.is_empty()) else {
            return false;
        };
        let Some(part) = decode(part) else {
            return false;
        };
        expected.extend_from_slice(subject.as_bytes());
        expected.extend_from_slice(&part);
    }
    !expected.is_empty() && expected == got
}

/// A path's segments, percent-decoded; `None` for a path that is not one (no leading `/`,
/// an invalid escape).
fn decoded_segments(path: &str) -> Option<Vec<Vec<u8>>> {
    path.strip_prefix('/')?.split('/').map(decode).collect()
}

/// Percent-decodes one segment; a `%` not followed by two hex digits is not a valid segment.
fn decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    for (i, _) in raw.match_indices('%') {
        if !bytes
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            return None;
        }
    }
    Some(percent_decode_str(raw).collect())
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_star_is_exactly_one_segment() {
        let pats = p(&["/stock-prices/*"]);
        assert!(allows(&pats, None, "/stock-prices/GOOG"));
        assert!(allows(&pats, None, "/stock-prices/a%2Fb"));
        assert!(!allows(&pats, None, "/stock-prices"));
        assert!(!allows(&pats, None, "/stock-prices/"));
        assert!(!allows(&pats, None, "/stock-prices/GOOG/x"));
        assert!(!allows(&pats, None, "/orders/GOOG"));
        assert!(allows(&p(&["/*"]), None, "/orders"));
        assert!(!allows(&p(&["/*"]), None, "/orders/1"));
    }

    #[test]
    fn the_all_keys_stream_needs_its_own_pattern() {
        let pats = p(&["/stock-prices"]);
        assert!(allows(&pats, None, "/stock-prices"));
        assert!(!allows(&pats, None, "/stock-prices/GOOG"));
        assert!(!allows(&pats, None, "/stock-prices2"));
    }

    #[test]
    fn a_key_below_a_path_is_matched_as_its_key_stream_path() {
        let pats = p(&["/stock-prices/GOOG", "/stock-prices/a%2Fb", "/orders/{sub}"]);
        assert!(allows_below(&pats, None, "/stock-prices", "GOOG"));
        assert!(allows_below(&pats, None, "/stock-prices", "%47OOG"));
        assert!(allows_below(&pats, None, "/stock-prices", "a%2Fb"));
        // A slash in a query value is part of the key, as `%2F` is in a path.
        assert!(allows_below(&pats, None, "/stock-prices", "a/b"));
        assert!(!allows_below(&pats, None, "/stock-prices", "AAPL"));
        assert!(!allows_below(&pats, None, "/stock-prices", ""));
        assert!(!allows_below(&pats, None, "/stock-prices", "%4"));
        assert!(!allows_below(&pats, None, "/stock-prices/GOOG", "x"));
        assert!(allows_below(&pats, Some("al"), "/orders", "al"));
        assert!(!allows_below(&pats, Some("al"), "/orders", "bo"));
        let every = p(&["/stock-prices/*"]);
        assert!(allows_below(&every, None, "/stock-prices", "ANY"));
        assert!(!allows_below(&every, None, "/orders", "ANY"));
    }

    #[test]
    fn subject_binds_to_the_token_subject() {
        let pats = p(&["/orders/{sub}", "/users/u-{sub}-x"]);
        assert!(allows(&pats, Some("alice"), "/orders/alice"));
        assert!(!allows(&pats, Some("alice"), "/orders/bob"));
        assert!(!allows(&pats, None, "/orders/alice"));
        assert!(!allows(&pats, Some(""), "/orders/"));
        assert!(allows(&pats, Some("alice"), "/users/u-alice-x"));
        // A subject with a slash is one key, sent percent-encoded.
        assert!(allows(&pats, Some("a/b"), "/orders/a%2Fb"));
        assert!(!allows(&pats, Some("a/b"), "/orders/a/b"));
    }

    #[test]
    fn both_sides_are_compared_decoded() {
        assert!(allows(
            &p(&["/stock-prices/GOOG"]),
            None,
            "/stock-prices/%47OOG"
        ));
        assert!(allows(&p(&["/t/a%20b"]), None, "/t/a b"));
        assert!(allows(&p(&["/t/%FF"]), None, "/t/%ff"));
        assert!(!allows(&p(&["/t/GOOG"]), None, "/t/goog"));
    }

    #[test]
    fn malformed_patterns_and_paths_match_nothing() {
        assert!(!allows(&p(&["stock-prices/*"]), None, "/stock-prices/x"));
        assert!(!allows(&p(&["/t/%zz"]), None, "/t/%zz"));
        assert!(!allows(&p(&["/t/*"]), None, "/t/%z"));
        assert!(!allows(&p(&["/t/*"]), None, "t/x"));
        assert!(!allows(&p(&[""]), None, "/"));
        assert!(!allows(&p(&["/"]), None, "/"));
        assert!(!allows(&[], None, "/t"));
    }
}
