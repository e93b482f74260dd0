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

/// Whether `path` (the request path, without its query) is matched by one of `patterns`
/// (whatever filters the patterns carry).
pub fn allows(patterns: &[String], subject: Option<&str>, path: &str) -> bool {
    grant(patterns, subject, path).is_some()
}

/// What `patterns` allow of `path`: `None`, nothing; `Some(None)`, the path with no filter (a
/// pattern without filters matches it); `Some(Some(query))`, the path with the filters of the
/// first pattern that matches it (its query, `{sub}` replaced by the subject, percent-encoded).
pub fn grant(patterns: &[String], subject: Option<&str>, path: &str) -> Option<Option<String>> {
    let segments = decoded_segments(path)?;
    grant_of(patterns, subject, &segments)
}

/// [`grant`] for `path/segment` (`segment` percent-encoded as in a path, never empty): the key
/// stream below a path of every key.
pub fn grant_below(
    patterns: &[String],
    subject: Option<&str>,
    path: &str,
    segment: &str,
) -> Option<Option<String>> {
    let (mut segments, below) = (decoded_segments(path)?, decode(segment)?);
    if below.is_empty() {
        return None;
    }
    segments.push(below);
    grant_of(patterns, subject, &segments)
}

fn grant_of(
    patterns: &[String],
    subject: Option<&str>,
    path: &[Vec<u8>],
) -> Option<Option<String>> {
    let mut filtered = None;
    for pattern in patterns {
        let (path_part, query) = match pattern.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pattern.as_str(), None),
        };
        if !matches(path_part, subject, path) {
            continue;
        }
        match query {
            None => return Some(None),
            Some(query) => {
                if filtered.is_none() {
                    filtered = bind_subject(query, subject);
                }
            }
        }
    }
    filtered.map(Some)
}

/// A pattern's query with `{sub}` replaced by the subject (percent-encoded, as the query is
/// decoded after); `None` when it has `{sub}` and the token no subject.
fn bind_subject(query: &str, subject: Option<&str>) -> Option<String> {
    if !query.contains(SUBJECT) {
        return Some(query.to_string());
    }
    let subject = subject.filter(|s| !s.is_empty())?;
    let encoded =
        percent_encoding::utf8_percent_encode(subject, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    Some(query.replace(SUBJECT, &encoded))
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
        assert!(grant_below(&pats, None, "/stock-prices", "GOOG").is_some());
        assert!(grant_below(&pats, None, "/stock-prices", "%47OOG").is_some());
        assert!(grant_below(&pats, None, "/stock-prices", "a%2Fb").is_some());
        // A slash in a query value is part of the key, as `%2F` is in a path.
        assert!(grant_below(&pats, None, "/stock-prices", "a/b").is_some());
        assert!(grant_below(&pats, None, "/stock-prices", "AAPL").is_none());
        assert!(grant_below(&pats, None, "/stock-prices", "").is_none());
        assert!(grant_below(&pats, None, "/stock-prices", "%4").is_none());
        assert!(grant_below(&pats, None, "/stock-prices/GOOG", "x").is_none());
        assert!(grant_below(&pats, Some("al"), "/orders", "al").is_some());
        assert!(grant_below(&pats, Some("al"), "/orders", "bo").is_none());
        let every = p(&["/stock-prices/*"]);
        assert!(grant_below(&every, None, "/stock-prices", "ANY").is_some());
        assert!(grant_below(&every, None, "/orders", "ANY").is_none());
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
