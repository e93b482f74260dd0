//! Filters a stream applies to its topic's records: `header.<name>=<value>` (the record's header
//! `<name>` has that value) and `where=<JSON pointer><op><literal>` (a field of the record's JSON
//! value compares so with the literal). Parsing and matching; pure.
//!
//! A filter is a set of tests, all of which a record must pass. Header tests of one name given
//! in one request are one test ("any of these values"); tests from elsewhere (a route's, a
//! token's) are added beside, never merged, so they can only narrow what a stream reads. A set
//! is kept sorted and without repeats, so two requests naming the same tests in another order
//! read the same view of the topic (one log per connection, one test per record).
//!
//! Matching:
//! - A header test looks at the record's last header of that name (as the envelope shows it);
//!   a record without it, or with a null value, does not match.
//! - A `where` test parses the value as JSON once per record (never a value over
//!   `KSG_MAX_EVENT_BYTES`), takes the field at the pointer (RFC 6901), and compares: `=` and
//!   `!=` by JSON equality (numbers by value: `1` equals `1.0`), `<`, `<=`, `>`, `>=` between two
//!   numbers or two strings (by Unicode code points); other pairs do not match. A value that
//!   is not JSON, a tombstone, or one without the field does not match: the first two and a
//!   missing field are *unmatchable* (counted).
//!
//! The pointer ends at the first `=`, `!`, `<` or `>`: a field whose name holds one of these
//! cannot be named. The literal is JSON when it parses as JSON (`100`, `true`, `"100"`,
//! `{"a":1}`), else a bare string (`shipped`).

use std::cell::OnceCell;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rdkafka::message::{BorrowedHeaders, Headers as _};
use serde_json::Value;

/// The longest JSON pointer a `where` test may name, in bytes.
pub const MAX_POINTER_BYTES: usize = 256;

/// How much of a bad parameter an error shows.
const SHOWN: usize = 64;

/// A set of tests, all of which a record must pass; cheap to clone (one reference count).
#[derive(Clone)]
pub struct Filter(Arc<Set>);

struct Set {
    /// The tests, header tests first, sorted by `canonical`.
    tests: Box<[Test]>,
    /// One text naming the tests in order: what two filters are compared and hashed by.
    canonical: String,
}

#[derive(Clone, Debug)]
enum Test {
    /// The record's last header `name` has one of `values` (sorted, without repeats).
    Header { name: String, values: Vec<Vec<u8>> },
    /// The field at `pointer` of the record's JSON value compares by `op` with `literal`.
    Where {
        pointer: String,
        op: Op,
        literal: Value,
    },
}

/// A `where` test's comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

impl Test {
    /// The test as one JSON array: unambiguous, and the order tests are kept in.
    fn canonical(&self) -> String {
        match self {
            Test::Header { name, values } => {
                let hex: Vec<String> = values.iter().map(|v| hex(v)).collect();
                serde_json::json!(["h", name, hex]).to_string()
            }
            Test::Where {
                pointer,
                op,
                literal,
            } => serde_json::json!(["w", pointer, op.text(), literal]).to_string(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.canonical == other.0.canonical
    }
}

impl Eq for Filter {}

impl std::hash::Hash for Filter {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.canonical.hash(state);
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.canonical)
    }
}

/// Keeps one copy of each distinct filter in use, so equal filters are one (their
/// [`Filter::id`] is the same) and a record is tested once per distinct filter, whichever
/// streams hold it. Entries of filters no longer in use are swept as the map grows.
#[derive(Default)]
pub struct Interner {
    held: parking_lot::Mutex<(
        std::collections::HashMap<String, std::sync::Weak<Set>>,
        usize,
    )>,
}

impl Interner {
    /// The copy of `filter` in use, or `filter`, now the one.
    pub fn intern(&self, filter: Filter) -> Filter {
        let mut guard = self.held.lock();
        let (held, sweep_at) = &mut *guard;
        if let Some(known) = held
            .get(&filter.0.canonical)
            .and_then(std::sync::Weak::upgrade)
        {
            return Filter(known);
        }
        if held.len() >= (*sweep_at).max(64) {
            held.retain(|_, f| f.strong_count() > 0);
            *sweep_at = 2 * held.len();
        }
        held.insert(filter.0.canonical.clone(), Arc::downgrade(&filter.0));
        filter
    }
}

/// Why a request's filters cannot be served (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// More filters than `KSG_MAX_FILTERS_PER_STREAM`.
    #[error("{asked} filters (header.* and where= parameters) asked; a stream takes at most {max} (KSG_MAX_FILTERS_PER_STREAM)")]
    TooMany {
        /// How many the request gave.
        asked: usize,
        /// The limit.
        max: usize,
    },
    /// A parameter that does not parse: which one, and what is wrong where.
    #[error("{param}: {why}")]
    Bad {
        /// The parameter as given (shortened).
        param: String,
        /// What is wrong, and where.
        why: String,
    },
}

fn bad(name: &str, raw: &str, why: impl Into<String>) -> FilterError {
    let shown: String = raw.chars().take(SHOWN).collect();
    let cut = if shown.len() < raw.len() { "…" } else { "" };
    FilterError::Bad {
        param: format!("{name}={shown}{cut}"),
        why: why.into(),
    }
}

/// A query's pairs that are filters: `header.<name>` and `where`, raw (not yet decoded).
fn filter_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == "where" || name.starts_with("header.")).then_some((name, value))
        })
}

/// True when a query names any filter.
pub fn any_in(query: Option<&str>) -> bool {
    filter_pairs(query).next().is_some()
}

impl Filter {
    /// The filter of a query's `header.<name>=<value>` and `where=<expression>` parameters
    /// (percent-decoded; a `+` is a plus), at most `max` of them; `None` when it names none.
    pub fn from_query(query: Option<&str>, max: usize) -> Result<Option<Filter>, FilterError> {
        let asked = filter_pairs(query).count();
        if asked > max {
            return Err(FilterError::TooMany { asked, max });
        }
        let mut headers: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        let mut tests = Vec::new();
        for (name, raw) in filter_pairs(query) {
            let value = decode(raw).map_err(|why| bad(name, raw, why))?;
            if name == "where" {
                let text = String::from_utf8(value)
                    .map_err(|_| bad(name, raw, "the expression is not UTF-8"))?;
                tests.push(parse_where(&text).map_err(|why| bad(name, raw, why))?);
                continue;
            }
            let header = decode(&name["header.".len()..])
                .ok()
                .and_then(|n| String::from_utf8(n).ok())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    bad(
                        name,
                        raw,
                        "the header's name (after header.) is empty, badly escaped or not UTF-8",
                    )
                })?;
            match headers.iter_mut().find(|(n, _)| *n == header) {
                Some((_, values)) => values.push(value),
                None => headers.push((header, vec![value])),
            }
        }
        for (name, mut values) in headers {
            values.sort_unstable();
            values.dedup();
            tests.push(Test::Header { name, values });
        }
        Ok(Filter::of(tests))
    }

    /// The filter of `tests`; `None` when there are none.
    fn of(tests: Vec<Test>) -> Option<Filter> {
        let mut named: Vec<(String, Test)> =
            tests.into_iter().map(|t| (t.canonical(), t)).collect();
        if named.is_empty() {
            return None;
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.dedup_by(|a, b| a.0 == b.0);
        let canonical = named
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let tests = named.into_iter().map(|(_, t)| t).collect();
        Some(Filter(Arc::new(Set { tests, canonical })))
    }

    /// Both filters' tests: what passes both (`None` stands for no filter).
    pub fn and(a: Option<&Filter>, b: Option<&Filter>) -> Option<Filter> {
        match (a, b) {
            (None, None) => None,
            (Some(f), None) | (None, Some(f)) => Some(f.clone()),
            (Some(a), Some(b)) => {
                let tests = a.0.tests.iter().chain(b.0.tests.iter()).cloned().collect();
                Filter::of(tests)
            }
        }
    }

    /// Who it is: the same for its clones (a memo of what a record made of it is kept by it).
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// How many tests it has.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.tests.len()
    }

    /// How `record` fares.
    pub fn test(&self, record: &Subject<'_>) -> Verdict {
        for test in self.0.tests.iter() {
            let verdict = match test {
                Test::Header { name, values } => match record.header(name) {
                    Some(Some(value)) if values.iter().any(|v| v[..] == value[..]) => {
                        Verdict::Match
                    }
                    _ => Verdict::NoMatch,
                },
                Test::Where {
                    pointer,
                    op,
                    literal,
                } => match record.json().and_then(|v| v.pointer(pointer)) {
                    Some(field) => {
                        if compare(field, *op, literal) {
                            Verdict::Match
                        } else {
                            Verdict::NoMatch
                        }
                    }
                    // A tombstone has no value to test: it is not counted.
                    None if record.value.is_none() => Verdict::NoMatch,
                    None => Verdict::Unmatchable,
                },
            };
            if verdict != Verdict::Match {
                return verdict;
            }
        }
        Verdict::Match
    }
}

/// How a record fares against a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It passes every test.
    Match,
    /// A test fails.
    NoMatch,
    /// A `where` test cannot be applied: the value is not JSON (or is over the size parsed), or
    /// has no field at the pointer. It does not match.
    Unmatchable,
}

impl Verdict {
    /// True for [`Verdict::Match`].
    pub fn passes(self) -> bool {
        self == Verdict::Match
    }
}

/// Where a record's headers are read from.
#[derive(Clone, Copy)]
pub enum HeaderSource<'a> {
    /// It has none.
    None,
    /// Kafka's, as the client read them.
    Kafka(&'a BorrowedHeaders),
    /// Kept as a JSON object (`sse::headers_json`), as the ring keeps them.
    Json(&'a [u8]),
}

/// What one record made of the filters tested on it so far: each distinct filter (by
/// [`Filter::id`]; equal filters are one once interned) is tested once per record, whatever
/// the number of streams, logs or catch-up cohorts that hold it.
#[derive(Default)]
pub struct Tested(Vec<(usize, Verdict)>);

impl Tested {
    /// How `record` fares against `filter`: tested at the first call for this filter.
    pub fn verdict(&mut self, filter: &Filter, record: &Subject<'_>) -> Verdict {
        let id = filter.id();
        if let Some(&(_, known)) = self.0.iter().find(|(f, _)| *f == id) {
            return known;
        }
        let verdict = filter.test(record);
        self.0.push((id, verdict));
        verdict
    }

    /// The filters that could not test the record (`ksg_filter_unmatchable_total`).
    pub fn unmatchable(&self) -> u64 {
        self.0
            .iter()
            .filter(|(_, v)| *v == Verdict::Unmatchable)
            .count() as u64
    }
}

/// A record as filters see it: its headers and value, the value parsed at most once.
pub struct Subject<'a> {
    headers: HeaderSource<'a>,
    value: Option<&'a [u8]>,
    /// Values over this many bytes are never parsed.
    max_value: usize,
    parsed: OnceCell<Option<Value>>,
    kept_headers: OnceCell<Option<serde_json::Map<String, Value>>>,
}

impl<'a> Subject<'a> {
    /// A record of `headers` and `value` (`None`: a tombstone); a value over `max_value` bytes
    /// is never parsed.
    pub fn new(headers: HeaderSource<'a>, value: Option<&'a [u8]>, max_value: usize) -> Self {
        Subject {
            headers,
            value,
            max_value,
            parsed: OnceCell::new(),
            kept_headers: OnceCell::new(),
        }
    }

    /// A record whose value is over the size values are parsed at (kept only as its size):
    /// header tests apply, `where` tests cannot.
    pub fn over_limit(headers: HeaderSource<'a>) -> Self {
        let subject = Subject::new(headers, Some(&[]), 0);
        let _ = subject.parsed.set(None);
        subject
    }

    /// The value of the record's last header `name`: `None` without one, `Some(None)` for a
    /// null value.
    fn header(&self, name: &str) -> Option<Option<std::borrow::Cow<'a, [u8]>>> {
        match self.headers {
            HeaderSource::None => None,
            HeaderSource::Kafka(headers) => headers
                .iter()
                .filter(|h| h.key == name)
                .last()
                .map(|h| h.value.map(std::borrow::Cow::Borrowed)),
            HeaderSource::Json(json) => {
                let kept = self
                    .kept_headers
                    .get_or_init(|| serde_json::from_slice(json).ok());
                match kept.as_ref()?.get(name)? {
                    Value::String(s) => Some(Some(s.as_bytes().to_vec().into())),
                    Value::Object(b64) => {
                        use base64::Engine as _;
                        let text = b64.get("b64")?.as_str()?;
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(text)
                            .ok()?;
                        Some(Some(bytes.into()))
                    }
                    _ => Some(None),
                }
            }
        }
    }

    /// The value as JSON, parsed at the first call; `None` when it is not JSON, too large or a
    /// tombstone.
    fn json(&self) -> Option<&Value> {
        self.parsed
            .get_or_init(|| {
                let value = self.value.filter(|v| v.len() <= self.max_value)?;
                serde_json::from_slice(value).ok()
            })
            .as_ref()
    }
}

/// Whether `field` compares by `op` with `literal`.
fn compare(field: &Value, op: Op, literal: &Value) -> bool {
    match op {
        Op::Eq => json_eq(field, literal),
        Op::Ne => !json_eq(field, literal),
        _ => {
            let order = match (field, literal) {
                (Value::Number(a), Value::Number(b)) => number_cmp(a, b),
                (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                _ => None,
            };
            order.is_some_and(|o| match op {
                Op::Lt => o == Ordering::Less,
                Op::Le => o != Ordering::Greater,
                Op::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
    }
}

/// JSON equality, numbers by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Numbers by value: integers exactly, others as doubles.
fn number_cmp(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    // One is past i64 and the other negative, or one is not an integer.
    match (a.as_i64(), b.as_u64(), a.as_u64(), b.as_i64()) {
        (Some(_), Some(_), None, None) => Some(Ordering::Less),
        (None, None, Some(_), Some(_)) => Some(Ordering::Greater),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// Percent-decodes a parameter's value; a `%` must start an escape of two hex digits.
fn decode(raw: &str) -> Result<Vec<u8>, String> {
    let bytes = raw.as_bytes();
    for (i, _) in raw.match_indices('%') {
        if !bytes
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            return Err(format!(
                "invalid percent-encoding at byte {i} (a % must be followed by two hex digits)"
            ));
        }
    }
    Ok(percent_decode_str(raw).collect())
}

/// Parses `<pointer><op><literal>` (decoded).
fn parse_where(text: &str) -> Result<Test, String> {
    let at = text.find(['=', '!', '<', '>']).ok_or(
        "no operator: write <JSON pointer><op><value>, op one of = != < <= > >= (e.g. /status=shipped)",
    )?;
    let pointer = &text[..at];
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "the JSON pointer {:?} must start with / (e.g. /status)",
            shorten(pointer)
        ));
    }
    if pointer.len() > MAX_POINTER_BYTES {
        return Err(format!(
            "the JSON pointer is {} bytes; at most {MAX_POINTER_BYTES}",
            pointer.len()
        ));
    }
    let bytes = pointer.as_bytes();
    for (i, _) in pointer.match_indices('~') {
        if !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!(
                "bad escape in the JSON pointer at byte {i}: ~ must be followed by 0 (for ~) or 1 (for /)"
            ));
        }
    }
    let rest = &text[at..];
    let (op, literal) = [
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("=", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ]
    .into_iter()
    .find_map(|(sign, op)| rest.strip_prefix(sign).map(|lit| (op, lit)))
    .ok_or_else(|| {
        format!("bad operator at byte {at}: one of = != < <= > >= (no regular expressions)")
    })?;
    let at = text.len() - literal.len();
    if literal.starts_with(['=', '<', '>', '!']) {
        return Err(format!(
            "bad operator at byte {}: one of = != < <= > >= (== is written =)",
            at - op.text().len()
        ));
    }
    if literal.is_empty() {
        return Err(format!(
            "no value after the operator at byte {at} (an empty string is written \"\")"
        ));
    }
    let literal = match serde_json::from_str::<Value>(literal) {
        Ok(value) => value,
        Err(e) if literal.starts_with(['"', '{', '[']) => {
            return Err(format!("the value at byte {at} is not valid JSON: {e}"));
        }
        Err(_) => Value::String(literal.to_string()),
    };
    Ok(Test::Where {
        pointer: pointer.to_string(),
        op,
        literal,
    })
}

fn shorten(text: &str) -> String {
    text.chars().take(SHOWN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(query: &str) -> Filter {
        Filter::from_query(Some(query), 16).unwrap().unwrap()
    }

    fn test_value(f: &Filter, value: &str) -> Verdict {
        f.test(&Subject::new(
            HeaderSource::None,
            Some(value.as_bytes()),
            1 << 20,
        ))
    }

    #[test]
    fn where_tests_compare_a_field_with_a_literal() {
        let shipped = filter("where=/status=shipped");
        assert_eq!(
            test_value(&shipped, r#"{"status":"shipped"}"#),
            Verdict::Match
        );
        assert_eq!(
            test_value(&shipped, r#"{"status":"open"}"#),
            Verdict::NoMatch
        );
        assert_eq!(
            test_value(&shipped, r#"{"state":"shipped"}"#),
            Verdict::Unmatchable
        );
        assert_eq!(test_value(&shipped, "shipped"), Verdict::Unmatchable);
        let big = filter("where=/total>100&where=/status!=open");
        assert_eq!(
            test_value(&big, r#"{"total":100.5,"status":"x"}"#),
            Verdict::Match
        );
        assert_eq!(
            test_value(&big, r#"{"total":100,"status":"x"}"#),
            Verdict::NoMatch
        );
        assert_eq!(
            test_value(&big, r#"{"total":"200","status":"x"}"#),
            Verdict::NoMatch
        );
        assert_eq!(
            test_value(&big, r#"{"total":200,"status":"open"}"#),
            Verdict::NoMatch
        );
        let gold = filter("where=/customer/tier=%22gold%22");
        assert_eq!(
            test_value(&gold, r#"{"customer":{"tier":"gold"}}"#),
            Verdict::Match
        );
        // Numbers by value; a string literal of digits is quoted.
        let one = filter("where=/n=1");
        assert_eq!(test_value(&one, r#"{"n":1.0}"#), Verdict::Match);
        assert_eq!(test_value(&one, r#"{"n":"1"}"#), Verdict::NoMatch);
        let text_one = filter("where=/n=%221%22");
        assert_eq!(test_value(&text_one, r#"{"n":"1"}"#), Verdict::Match);
        let le = filter("where=/n<=-1");
        assert_eq!(test_value(&le, r#"{"n":-1}"#), Verdict::Match);
        assert_eq!(
            test_value(&le, r#"{"n":18446744073709551615}"#),
            Verdict::NoMatch
        );
        let strings = filter("where=/name>=m");
        assert_eq!(test_value(&strings, r#"{"name":"n"}"#), Verdict::Match);
        assert_eq!(test_value(&strings, r#"{"name":"a"}"#), Verdict::NoMatch);
        // Escapes in the pointer, arrays by index, the whole value.
        let escaped = filter("where=/a~1b/0/c~0d=true");
        assert_eq!(
            test_value(&escaped, r#"{"a/b":[{"c~d":true}]}"#),
            Verdict::Match
        );
        let whole = filter("where==42");
        assert_eq!(test_value(&whole, "42"), Verdict::Match);
        // A tombstone does not match and is not counted.
        let none = Subject::new(HeaderSource::None, None, 1 << 20);
        assert_eq!(shipped.test(&none), Verdict::NoMatch);
        // A value over the parse limit is never parsed.
        let over = Subject::new(HeaderSource::None, Some(br#"{"status":"shipped"}"#), 8);
        assert_eq!(shipped.test(&over), Verdict::Unmatchable);
    }

    #[test]
    fn header_tests_read_the_last_header_of_the_name() {
        let tenant = filter("header.tenant=a&header.tenant=b&header.kind=x");
        let kept = |json: &str| {
            tenant.test(&Subject::new(
                HeaderSource::Json(json.as_bytes()),
                Some(b"v"),
                1 << 20,
            ))
        };
        assert_eq!(kept(r#"{"tenant":"b","kind":"x"}"#), Verdict::Match);
        assert_eq!(kept(r#"{"tenant":"c","kind":"x"}"#), Verdict::NoMatch);
        assert_eq!(kept(r#"{"tenant":"a"}"#), Verdict::NoMatch);
        assert_eq!(kept(r#"{"tenant":null,"kind":"x"}"#), Verdict::NoMatch);
        let raw = filter("header.raw=%FF%00");
        let b64 = Subject::new(HeaderSource::Json(br#"{"raw":{"b64":"/wA="}}"#), None, 0);
        assert_eq!(raw.test(&b64), Verdict::Match);
        let none = Subject::new(HeaderSource::None, Some(b"v"), 1 << 20);
        assert_eq!(raw.test(&none), Verdict::NoMatch);
    }

    #[test]
    fn the_same_tests_in_another_order_are_the_same_filter_and_others_only_narrow() {
        let a = filter("where=/a=1&header.t=x&header.t=y");
        let b = filter("header.t=y&where=/a=1&header.t=x&header.t=x");
        assert_eq!(a, b);
        assert_ne!(a, filter("where=/a=1&header.t=x"));
        // A route's test and a request's of the same name are both applied.
        let route = filter("header.t=x");
        let asked = filter("header.t=y");
        let both = Filter::and(Some(&route), Some(&asked)).unwrap();
        assert_eq!(both.len(), 2);
        let kept =
            |json: &str| both.test(&Subject::new(HeaderSource::Json(json.as_bytes()), None, 0));
        assert_eq!(kept(r#"{"t":"x"}"#), Verdict::NoMatch);
        assert_eq!(kept(r#"{"t":"y"}"#), Verdict::NoMatch);
        assert_eq!(Filter::and(Some(&route), Some(&route)), Some(route.clone()));
        assert_eq!(Filter::and(None, None), None);
    }

    #[test]
    fn equal_filters_are_one_once_interned_and_unused_ones_are_swept() {
        let interner = Interner::default();
        let a = interner.intern(filter("where=/a=1&header.t=x"));
        let b = interner.intern(filter("header.t=x&where=/a=1"));
        assert_eq!(a.id(), b.id());
        drop((a, b));
        for i in 0..1000 {
            let _ = interner.intern(filter(&format!("where=/n={i}")));
        }
        assert!(interner.held.lock().0.len() < 200, "swept as it grows");
    }

    #[test]
    fn bad_parameters_say_what_is_wrong_and_where() {
        let err = |query: &str| match Filter::from_query(Some(query), 3) {
            Err(FilterError::Bad { why, .. }) => why,
            other => panic!("{query}: {other:?}"),
        };
        assert!(err("where=/status").contains("no operator"));
        assert!(err("where=status=x").contains("must start with /"));
        assert!(err("where=/a~2=x").contains("byte 2"));
        assert!(err("where=/a==x").contains("== is written ="));
        assert!(err("where=/a=").contains("no value"));
        assert!(err("where=/a=%22x").contains("not valid JSON"));
        assert!(err("where=/a=%zz").contains("percent-encoding"));
        assert!(err("where=/a=%FF").contains("UTF-8"));
        assert!(err("header.=x").contains("name"));
        let long = format!("where=/{}=1", "a".repeat(MAX_POINTER_BYTES));
        assert!(err(&long).contains("at most 256"));
        assert_eq!(
            Filter::from_query(Some("where=/a=1&where=/b=1&header.x=1&header.x=2"), 3),
            Err(FilterError::TooMany { asked: 4, max: 3 })
        );
        assert_eq!(Filter::from_query(Some("key=a&format=plain"), 3), Ok(None));
        assert_eq!(Filter::from_query(None, 3), Ok(None));
        // Other parameters that look alike are not filters.
        assert_eq!(
            Filter::from_query(Some("wheres=1&headers.x=1&Where=/a=1"), 3),
            Ok(None)
        );
    }
}
