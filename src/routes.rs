//! Path routing: which request path serves which topic and key filter.
//!
//! Default routes `/{topic}` and `/{topic}/{key}` serve the topics allowed by `KSG_TOPICS`
//! (names or glob patterns with `*` and `?`). `KSG_ROUTES` adds templates, tried first, such as
//! `/quotes/{key}=stock-prices` (a fixed topic, allowed through that route only) or
//! `/feeds/{topic}` (topic from the path, still checked against `KSG_TOPICS`). Segments are
//! percent-decoded, so a key may hold any bytes (`%2F` for a slash). A path of every key may
//! name several keys in its query instead (`/stock-prices?key=GOOG&key=AAPL`, see
//! [`stream_keys`]).

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use thiserror::Error;

use crate::filter::{Filter, FilterError};
use crate::keyset::Keys;
use crate::sse::Format;

/// Longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// A configuration error in `KSG_TOPICS` or `KSG_ROUTES`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RouteError {
    /// A pattern or topic name with characters Kafka does not allow.
    #[error("{0:?} is not a valid topic name or pattern")]
    BadTopic(String),
    /// A template that cannot work.
    #[error("template {0:?}: {1}")]
    BadTemplate(String, String),
}

/// Why a request path does not resolve; the HTTP status follows from the variant.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResolveError {
    /// No route matches, or the topic is not served: 404.
    #[error("{0}")]
    NotFound(String),
    /// The path is malformed: 400.
    #[error("{0}")]
    BadRequest(String),
}

/// The topics served by the default routes.
#[derive(Debug, Clone, Default)]
pub struct TopicFilter {
    patterns: Vec<String>,
}

impl TopicFilter {
    /// A filter that allows nothing.
    pub fn none() -> Self {
        TopicFilter::default()
    }

    /// Parses a comma-separated list of names and glob patterns.
    pub fn parse(list: &str) -> Result<Self, RouteError> {
        let mut patterns = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let legal = item.len() <= MAX_TOPIC_LEN
                && item
                    .bytes()
                    .all(|b| is_topic_byte(b) || b == b'*' || b == b'?');
            if !legal {
                return Err(RouteError::BadTopic(item.to_string()));
            }
            patterns.push(item.to_string());
        }
        Ok(TopicFilter { patterns })
    }

    /// True when `topic` matches one of the patterns.
    pub fn allows(&self, topic: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| glob_match(p.as_bytes(), topic.as_bytes()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Topic,
    Key,
}

#[derive(Debug, Clone)]
struct Template {
    label: Arc<str>,
    segments: Vec<Segment>,
    topic: Option<String>,
    fixed: Fixed,
}

/// What a route fixes for every stream it serves (`KSG_ROUTES`: `/tech=stock-prices?key=GOOG`,
/// `/watch=stock-prices?format=envelope`). A request may narrow it, never widen or change it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fixed {
    /// Only these keys: a request may name some of them with `key=`, not others.
    pub keys: Option<Keys>,
    /// This format: a request may not ask for another.
    pub format: Option<Format>,
    /// These filters: a request's own are added to them, never in their place.
    pub filter: Option<Filter>,
}

/// What a path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Kafka topic (the first of `topics`).
    pub topic: String,
    /// Every topic of the stream, sorted, without repeats: one, or several named in one
    /// segment (`/{topicA},{topicB}`).
    pub topics: Vec<String>,
    /// The path's segment that names the topics (`None`: the route fixes its topic).
    pub topic_segment: Option<usize>,
    /// Only records with exactly this key, when set.
    pub key: Option<Vec<u8>>,
    /// The route's template, a bounded metric label.
    pub route: Arc<str>,
    /// What the route fixes.
    pub fixed: Fixed,
}

/// Why the keys a request asks for cannot be served (400).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeysError {
    /// More distinct keys than `KSG_MAX_KEYS_PER_STREAM`.
    #[error("{asked} keys asked; a stream takes at most {max} (KSG_MAX_KEYS_PER_STREAM)")]
    TooMany {
        /// How many the request named.
        asked: usize,
        /// The limit.
        max: usize,
    },
    /// `key=` on a path that already names its key.
    #[error("this path names its key: key= parameters are for a path of every key")]
    OnKeyPath,
    /// A key the route does not serve (it fixes its keys).
    #[error("this route serves only its own keys: key= may name some of them, not others")]
    NotInRoute,
    /// An empty key, or an escape that is not `%` and two hex digits.
    #[error("key= parameter: {0}")]
    Bad(String),
}

/// The raw values of a query's `key` parameters (a pair without `=` is an empty key).
pub fn query_key_values(query: Option<&str>) -> impl Iterator<Item = &str> {
    query_values(query, "key")
}

/// The raw values of a query's parameters named exactly `wanted` (a pair without `=` has an
/// empty value), in order.
fn query_values<'q>(query: Option<&'q str>, wanted: &'q str) -> impl Iterator<Item = &'q str> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(move |pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == wanted).then_some(value)
        })
}

/// The keys a stream of `target` takes: its path's key, or the `key=` parameters of `query`,
/// percent-decoded like a path's key (a `+` is a plus), at most `max` distinct ones (the
/// parameters themselves are bounded by the request head's size); `None`: every record.
pub fn stream_keys(
    target: &Target,
    query: Option<&str>,
    max: usize,
) -> Result<Option<Keys>, KeysError> {
    if query_key_values(query).next().is_none() {
        let fixed = target.fixed.keys.clone();
        return Ok(fixed.or_else(|| target.key.clone().map(Keys::one)));
    }
    if target.key.is_some() {
        return Err(KeysError::OnKeyPath);
    }
    let keys = query_key_values(query)
        .map(|raw| decode_key(raw).map_err(|e| KeysError::Bad(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = Keys::new(keys);
    let outside = |fixed: &Keys| {
        keys.iter()
            .flat_map(Keys::iter)
            .any(|k| !fixed.contains(Some(k)))
    };
    match keys.as_ref().map_or(0, Keys::len) {
        asked if asked > max => Err(KeysError::TooMany { asked, max }),
        _ if target.fixed.keys.as_ref().is_some_and(outside) => Err(KeysError::NotInRoute),
        _ => Ok(keys),
    }
}

/// The filter of a stream of `target`: the route's fixed filters and the query's own
/// (`header.<name>=`, `where=`, at most `max` of the latter), all of which a record must pass.
pub fn stream_filter(
    target: &Target,
    query: Option<&str>,
    max: usize,
) -> Result<Option<Filter>, FilterError> {
    let asked = Filter::from_query(query, max)?;
    Ok(Filter::and(target.fixed.filter.as_ref(), asked.as_ref()))
}

/// The format of a stream of `target` ([`stream_format`]), or the one its route fixes: a
/// request may name that one (or `json`, for a route of envelopes), no other.
pub fn stream_format_for(target: &Target, query: Option<&str>) -> Result<Format, String> {
    let asked = stream_format(query)?;
    let named = query_values(query, "format").next().is_some();
    match target.fixed.format {
        None => Ok(asked),
        Some(fixed) if !named || asked == fixed => Ok(fixed),
        Some(fixed) => {
            let name = if fixed == Format::Plain {
                "plain"
            } else {
                "envelope"
            };
            Err(format!("this route serves format={name} only"))
        }
    }
}

/// True when a request asks for one JSON document (`format=json`) rather than a stream.
pub fn wants_json(query: Option<&str>) -> bool {
    query_values(query, "format").any(|value| value == "json")
}

/// The format a request asks for with `format=`: `plain` (the default) or `envelope` (also
/// what `json`, one document rather than a stream, is made of).
pub fn stream_format(query: Option<&str>) -> Result<Format, String> {
    let mut format = None;
    for value in query_values(query, "format") {
        let named = match value {
            "plain" => Format::Plain,
            "envelope" | "json" => Format::Envelope,
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(format!("format={shown:?} is not plain, envelope or json"));
            }
        };
        if format.is_some_and(|f| f != named) {
            return Err("format= is given twice, with different values".into());
        }
        format = Some(named);
    }
    Ok(format.unwrap_or_default())
}

/// All routes of a gateway.
#[derive(Debug, Clone)]
pub struct Routes {
    filter: TopicFilter,
    custom: Vec<Template>,
    all_label: Arc<str>,
    key_label: Arc<str>,
}

impl Routes {
    /// Only the default routes, for the topics `filter` allows.
    pub fn new(filter: TopicFilter) -> Self {
        Routes {
            filter,
            custom: Vec::new(),
            all_label: "/{topic}".into(),
            key_label: "/{topic}/{key}".into(),
        }
    }

    /// Default routes plus the comma-separated templates of `KSG_ROUTES`.
    pub fn parse(list: &str, filter: TopicFilter) -> Result<Self, RouteError> {
        let mut routes = Routes::new(filter);
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            routes.custom.push(parse_template(item)?);
        }
        Ok(routes)
    }

    /// The route labels that metrics are pre-registered with.
    pub fn labels(&self) -> Vec<Arc<str>> {
        let mut labels = vec![self.all_label.clone(), self.key_label.clone()];
        labels.extend(self.custom.iter().map(|t| t.label.clone()));
        labels
    }

    /// Resolves a request path (without its query) to a topic and key filter.
    pub fn resolve(&self, path: &str) -> Result<Target, ResolveError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(ResolveError::BadRequest("path must start with /".into()));
        };
        let raw: Vec<&str> = rest.split('/').collect();
        for template in &self.custom {
            if let Some(target) = template.matches(&raw, &self.filter)? {
                return Ok(target);
            }
        }
        let (topic, key, route) = match raw.as_slice() {
            [topic] if !topic.is_empty() => (*topic, None, &self.all_label),
            [topic, key] if !topic.is_empty() => (*topic, Some(*key), &self.key_label),
            _ => return Err(ResolveError::NotFound(format!("no route for {path}"))),
        };
        let topics = decode_topics(topic, &self.filter)?;
        let key = key.map(decode_key).transpose()?;
        Ok(Target {
            topic: topics[0].clone(),
            topics,
            topic_segment: Some(0),
            key,
            route: route.clone(),
            fixed: Fixed::default(),
        })
    }
}

impl Template {
    fn matches(&self, raw: &[&str], filter: &TopicFilter) -> Result<Option<Target>, ResolveError> {
        if raw.len() != self.segments.len() {
            return Ok(None);
        }
        // The literals first: a path this template does not match is left to the next one,
        // whatever its other segments hold.
        for (segment, raw) in self.segments.iter().zip(raw) {
            if let Segment::Literal(lit) = segment {
                if percent_decode_str(raw).decode_utf8().ok().as_deref() != Some(lit.as_str()) {
                    return Ok(None);
                }
            }
        }
        let (mut topics, mut key, mut topic_segment) = (None, None, None);
        for (i, (segment, raw)) in self.segments.iter().zip(raw).enumerate() {
            match segment {
                Segment::Literal(_) => {}
                Segment::Topic => {
                    topics = Some(decode_topics(raw, filter)?);
                    topic_segment = Some(i);
                }
                Segment::Key => key = Some(decode_key(raw)?),
            }
        }
        let topics = topics
            .or_else(|| self.topic.clone().map(|t| vec![t]))
            .expect("a template names a topic or has {topic}");
        Ok(Some(Target {
            topic: topics[0].clone(),
            topics,
            topic_segment,
            key,
            route: self.label.clone(),
            fixed: self.fixed.clone(),
        }))
    }
}

fn parse_template(whole: &str) -> Result<Template, RouteError> {
    let bad = |why: &str| RouteError::BadTemplate(whole.to_string(), why.to_string());
    let (item, fixed) = match whole.split_once('?') {
        Some((item, query)) => (item.trim(), parse_fixed(query).map_err(|why| bad(&why))?),
        None => (whole, Fixed::default()),
    };
    let (path, topic) = match item.rsplit_once('=') {
        Some((path, topic)) => (path.trim(), Some(topic.trim().to_string())),
        None => (item, None),
    };
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("must start with /"))?;
    let segments: Vec<Segment> = rest
        .split('/')
        .map(|s| match s {
            "{topic}" => Ok(Segment::Topic),
            "{key}" => Ok(Segment::Key),
            "" => Err(bad("empty segment")),
            s if s.contains(['{', '}']) => Err(bad("only {topic} and {key} are placeholders")),
            s => Ok(Segment::Literal(s.to_string())),
        })
        .collect::<Result<_, _>>()?;
    let count = |want| segments.iter().filter(|s| **s == want).count();
    if count(Segment::Key) > 1 || count(Segment::Topic) > 1 {
        return Err(bad("a placeholder appears twice"));
    }
    if count(Segment::Key) > 0 && fixed.keys.is_some() {
        return Err(bad("a template with {key} cannot fix keys"));
    }
    match (&topic, count(Segment::Topic)) {
        (Some(t), 0) if is_topic_name(t) => {}
        (Some(_), 0) => return Err(bad("the topic after = is not a valid topic name")),
        (Some(_), _) => return Err(bad("has both {topic} and =topic")),
        (None, 0) => return Err(bad("needs {topic} or =topic")),
        (None, _) => {}
    }
    Ok(Template {
        label: path.into(),
        segments,
        topic,
        fixed,
    })
}

/// What a template's query fixes: `key=` (any number, decoded like a path's key), `format=`
/// (`plain` or `envelope`) and filters (`header.<name>=`, `where=`, as in a request).
fn parse_fixed(query: &str) -> Result<Fixed, String> {
    let mut keys = Vec::new();
    let mut format = None;
    let mut filters = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if crate::filter::any_in(Some(pair)) {
            filters.push(pair);
            continue;
        }
        match pair.split_once('=') {
            Some(("key", raw)) => {
                keys.push(decode_key(raw).map_err(|_| "a fixed key is empty or badly escaped")?);
            }
            Some(("format", "plain")) if format.is_none() => format = Some(Format::Plain),
            Some(("format", "envelope")) if format.is_none() => format = Some(Format::Envelope),
            Some(("format", _)) => return Err("format= is fixed once, as plain or envelope".into()),
            _ => return Err("only key=, format=, header.<name>= and where= can be fixed".into()),
        }
    }
    let filter = Filter::from_query(Some(&filters.join("&")), usize::MAX)
        .map_err(|e| format!("a fixed filter: {e}"))?;
    Ok(Fixed {
        keys: Keys::new(keys),
        format,
        filter,
    })
}

/// A `%` must start an escape of two hex digits: `%zz` or a trailing `%4` is malformed, not a
/// literal.
fn check_escapes(raw: &str) -> Result<(), ResolveError> {
    let bytes = raw.as_bytes();
    for (i, _) in raw.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(ResolveError::BadRequest(format!(
                "{raw:?} has an invalid percent-encoding (a % must be followed by two hex digits)"
            )));
        }
    }
    Ok(())
}

/// The topics of a path's topic segment: one, or several joined by commas (Kafka's topic names
/// have none), each served here; sorted, without repeats.
fn decode_topics(raw: &str, filter: &TopicFilter) -> Result<Vec<String>, ResolveError> {
    let mut topics = raw
        .split(',')
        .map(decode_topic)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(topic) = topics.iter().find(|t| !filter.allows(t)) {
        return Err(ResolveError::NotFound(format!(
            "topic {topic:?} is not served here"
        )));
    }
    topics.sort_unstable();
    topics.dedup();
    Ok(topics)
}

fn decode_topic(raw: &str) -> Result<String, ResolveError> {
    check_escapes(raw)?;
    let topic = percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .filter(|t| is_topic_name(t));
    topic
        .map(|t| t.into_owned())
        .ok_or_else(|| ResolveError::BadRequest(format!("{raw:?} is not a valid topic name")))
}

fn decode_key(raw: &str) -> Result<Vec<u8>, ResolveError> {
    if raw.is_empty() {
        return Err(ResolveError::BadRequest("empty key".into()));
    }
    check_escapes(raw)?;
    Ok(percent_decode_str(raw).collect())
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
}

/// Kafka's rule: 1 to 249 of `[A-Za-z0-9._-]`, and not `.` or `..`.
pub fn is_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TOPIC_LEN
        && t != "."
        && t != ".."
        && t.bytes().all(is_topic_byte)
}

/// Glob match with `*` (any run) and `?` (one byte), iterative with one backtrack point.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(topics: &str, custom: &str) -> Routes {
        Routes::parse(custom, TopicFilter::parse(topics).unwrap()).unwrap()
    }

    #[test]
    fn default_routes() {
        let r = routes("stock-prices,orders.*", "");
        let t = r.resolve("/stock-prices/GOOG").unwrap();
        assert_eq!(
            (t.topic.as_str(), t.key.as_deref(), &*t.route),
            ("stock-prices", Some(&b"GOOG"[..]), "/{topic}/{key}")
        );
        let t = r.resolve("/orders.eu").unwrap();
        assert_eq!(
            (t.topic.as_str(), t.key, &*t.route),
            ("orders.eu", None, "/{topic}")
        );
        assert!(matches!(
            r.resolve("/secret"),
            Err(ResolveError::NotFound(_))
        ));
        assert!(matches!(r.resolve("/"), Err(ResolveError::NotFound(_))));
        assert!(matches!(
            r.resolve("/a/b/c"),
            Err(ResolveError::NotFound(_))
        ));
    }

    #[test]
    fn key_parameters_name_the_keys_of_a_path_of_every_key() {
        let r = routes("*", "/q/{key}=t,/watch=t");
        let keys = |path: &str, query: &str| {
            let query = Some(query).filter(|q| !q.is_empty());
            stream_keys(&r.resolve(path).unwrap(), query, 3)
                .map(|k| k.map(|k| k.iter().map(<[u8]>::to_vec).collect::<Vec<_>>()))
        };
        let list = |l: &[&[u8]]| Ok(Some(l.iter().map(|k| k.to_vec()).collect()));
        assert_eq!(keys("/t", ""), Ok(None));
        assert_eq!(keys("/t", "from=earliest&keys=x"), Ok(None));
        assert_eq!(keys("/t/GOOG", ""), list(&[b"GOOG"]));
        assert_eq!(keys("/q/GOOG", "from=earliest"), list(&[b"GOOG"]));
        // Sorted, without repeats, decoded like a path's key (a `+` is a plus).
        assert_eq!(
            keys("/t", "key=b&from=earliest&key=a%2Fc&key=b&key=x+y"),
            list(&[b"a/c", b"b", b"x+y"])
        );
        assert_eq!(keys("/watch", "key=%FF%00"), list(&[&[0xff, 0]]));
        assert_eq!(
            keys("/t", "key=a&key=b&key=c&key=d"),
            Err(KeysError::TooMany { asked: 4, max: 3 })
        );
        assert_eq!(
            keys("/t", "key=a&key=b&key=c&key=a&key=c").map(|k| k.map(|k| k.len())),
            Ok(Some(3)),
            "the limit counts distinct keys"
        );
        assert_eq!(keys("/t/GOOG", "key=AAPL"), Err(KeysError::OnKeyPath));
        assert_eq!(keys("/q/GOOG", "key=AAPL"), Err(KeysError::OnKeyPath));
        for bad in ["key=", "key", "key=a&key=", "key=%4", "key=%zz"] {
            assert!(matches!(keys("/t", bad), Err(KeysError::Bad(_))), "{bad}");
        }
        let too_many = stream_keys(&r.resolve("/t").unwrap(), Some("key=a&key=b"), 1);
        let why = too_many.unwrap_err().to_string();
        assert!(
            why.contains("at most 1") && why.contains("KSG_MAX_KEYS_PER_STREAM"),
            "{why}"
        );
    }

    #[test]
    fn a_route_may_fix_keys_and_a_format_that_a_request_narrows_but_never_widens() {
        let r = routes(
            "*",
            "/tech=t?key=GOOG&key=AAPL,/watch=t?format=envelope,/both/{topic}?key=a%2Fb&format=plain",
        );
        let keys = |t: &Target, q: &str| {
            stream_keys(t, Some(q).filter(|q| !q.is_empty()), 10)
                .map(|k| k.map(|k| k.iter().map(<[u8]>::to_vec).collect::<Vec<_>>()))
        };
        let tech = r.resolve("/tech").unwrap();
        let list = |l: &[&[u8]]| Ok(Some(l.iter().map(|k| k.to_vec()).collect()));
        assert_eq!(keys(&tech, ""), list(&[b"AAPL", b"GOOG"]));
        assert_eq!(keys(&tech, "key=GOOG"), list(&[b"GOOG"]));
        assert_eq!(keys(&tech, "key=GOOG&key=MSFT"), Err(KeysError::NotInRoute));
        assert_eq!(stream_format_for(&tech, None), Ok(Format::Plain));
        assert_eq!(
            stream_format_for(&tech, Some("format=envelope")),
            Ok(Format::Envelope)
        );
        let watch = r.resolve("/watch").unwrap();
        assert_eq!(keys(&watch, ""), Ok(None));
        assert_eq!(stream_format_for(&watch, None), Ok(Format::Envelope));
        assert_eq!(
            stream_format_for(&watch, Some("format=envelope")),
            Ok(Format::Envelope)
        );
        assert_eq!(
            stream_format_for(&watch, Some("format=json")),
            Ok(Format::Envelope)
        );
        assert!(stream_format_for(&watch, Some("format=plain")).is_err());
        let both = r.resolve("/both/t").unwrap();
        assert_eq!(keys(&both, ""), list(&[b"a/b"]));
        assert!(stream_format_for(&both, Some("format=envelope")).is_err());
        assert!(stream_format_for(&both, Some("format=json")).is_err());
        assert_eq!(
            keys(&r.resolve("/t").unwrap(), ""),
            Ok(None),
            "default routes fix nothing"
        );
        let filter = || TopicFilter::parse("*").unwrap();
        for bad in [
            "/x/{key}=t?key=a",
            "/x=t?where=/a",
            "/x=t?where=a=1",
            "/x=t?header.=1",
            "/x=t?from=earliest",
            "/x=t?format=json",
            "/x=t?key=",
            "/x=t?key=%zz",
            "/x=t?format=plain&format=envelope",
        ] {
            assert!(Routes::parse(bad, filter()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_route_fixes_filters_that_a_request_adds_to_and_never_removes() {
        let r = Routes::parse(
            "/shipped/{key}=orders?where=/status=shipped,/mine=orders?header.tenant=a",
            TopicFilter::parse("*").unwrap(),
        )
        .unwrap();
        let shipped = r.resolve("/shipped/o1").unwrap();
        let fixed = Filter::from_query(Some("where=/status=shipped"), 16).unwrap();
        assert_eq!(stream_filter(&shipped, None, 16), Ok(fixed.clone()));
        let both = stream_filter(&shipped, Some("where=/total>100"), 16).unwrap();
        let asked = Filter::from_query(Some("where=/status=shipped&where=/total>100"), 16);
        assert_eq!(both, asked.unwrap());
        // The same name again is one more test, not another value of the route's.
        let mine = r.resolve("/mine").unwrap();
        let wider = stream_filter(&mine, Some("header.tenant=b"), 16)
            .unwrap()
            .unwrap();
        assert_eq!(wider.len(), 2);
        assert!(stream_filter(&mine, Some("where=/a"), 16).is_err());
        assert_eq!(
            stream_filter(&mine, Some("where=/a=1&where=/b=2"), 1),
            Err(FilterError::TooMany { asked: 2, max: 1 })
        );
        assert_eq!(stream_filter(&r.resolve("/t").unwrap(), None, 16), Ok(None));
    }

    #[test]
    fn a_segment_of_several_topics_names_them_sorted_once_each_if_each_is_served() {
        let r = routes(
            "prices,news,orders-*",
            "/feed/{topic}/by/{key},/fixed/{key}=prices",
        );
        let t = r.resolve("/prices,news,prices/GOOG").unwrap();
        assert_eq!(t.topics, ["news", "prices"]);
        assert_eq!((t.topic.as_str(), t.topic_segment), ("news", Some(0)));
        assert_eq!(t.key.as_deref(), Some(&b"GOOG"[..]));
        let t = r.resolve("/feed/orders-eu,news/by/k").unwrap();
        assert_eq!((t.topics.len(), t.topic_segment), (2, Some(1)));
        // A fixed topic's key may hold a comma.
        let t = r.resolve("/fixed/a,b").unwrap();
        assert_eq!(
            (t.topics, t.key),
            (vec!["prices".to_string()], Some(b"a,b".to_vec()))
        );
        assert!(matches!(
            r.resolve("/prices,secret"),
            Err(ResolveError::NotFound(_))
        ));
        for bad in ["/prices,", "/,prices", "/prices,,news", "/prices,a%2Cb"] {
            assert!(
                matches!(r.resolve(bad), Err(ResolveError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn format_is_plain_unless_envelope_is_asked_for() {
        assert_eq!(stream_format(None), Ok(Format::Plain));
        assert_eq!(stream_format(Some("from=earliest")), Ok(Format::Plain));
        assert_eq!(stream_format(Some("format=plain")), Ok(Format::Plain));
        assert_eq!(
            stream_format(Some("key=a&format=envelope")),
            Ok(Format::Envelope)
        );
        assert_eq!(
            stream_format(Some("format=envelope&format=envelope")),
            Ok(Format::Envelope)
        );
        assert_eq!(stream_format(Some("format=json")), Ok(Format::Envelope));
        assert!(wants_json(Some("from=snapshot&format=json")));
        assert!(!wants_json(Some("format=envelope")));
        for bad in [
            "format=xml",
            "format=",
            "format",
            "format=Envelope",
            "format=plain&format=envelope",
            "format=plain&format=plain&format=envelope",
        ] {
            assert!(stream_format(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_percent_decoded_bytes() {
        let r = routes("t", "");
        assert_eq!(r.resolve("/t/a%2Fb%20c").unwrap().key.unwrap(), b"a/b c");
        assert_eq!(r.resolve("/t/%FF%00").unwrap().key.unwrap(), vec![0xff, 0]);
        assert!(matches!(r.resolve("/t/"), Err(ResolveError::BadRequest(_))));
    }

    #[test]
    fn invalid_percent_encoding_is_400_not_a_literal() {
        let r = routes("*", "/q/{key}=t");
        for path in [
            "/t/%zz",
            "/t/%4",
            "/t/a%",
            "/t/%%41",
            "/q/%g0",
            "/t%2",
            "/t/ok%2Fthen%x1",
        ] {
            assert!(
                matches!(r.resolve(path), Err(ResolveError::BadRequest(_))),
                "{path}"
            );
        }
        assert_eq!(r.resolve("/t/%2f%41").unwrap().key.unwrap(), b"/A");
    }

    #[test]
    fn bad_topic_names_are_400() {
        let r = routes("*", "");
        assert!(matches!(
            r.resolve("/bad%20topic"),
            Err(ResolveError::BadRequest(_))
        ));
        assert!(matches!(r.resolve("/.."), Err(ResolveError::BadRequest(_))));
        assert!(matches!(
            r.resolve(&format!("/{}", "a".repeat(250))),
            Err(ResolveError::BadRequest(_))
        ));
        assert!(r.resolve(&format!("/{}", "a".repeat(249))).is_ok());
    }

    #[test]
    fn custom_templates() {
        let r = routes("feeds-*", "/quotes/{key}=stock-prices,/v1/{topic}/k/{key}");
        let t = r.resolve("/quotes/GOOG").unwrap();
        assert_eq!(
            (t.topic.as_str(), &*t.route),
            ("stock-prices", "/quotes/{key}")
        );
        let t = r.resolve("/v1/feeds-a/k/x").unwrap();
        assert_eq!(
            (t.topic.as_str(), t.key.unwrap()),
            ("feeds-a", b"x".to_vec())
        );
        assert!(matches!(
            r.resolve("/v1/other/k/x"),
            Err(ResolveError::NotFound(_))
        ));
        // The fixed topic is reachable only through its route.
        assert!(matches!(
            r.resolve("/stock-prices"),
            Err(ResolveError::NotFound(_))
        ));
        assert_eq!(r.labels().len(), 4);
        // A template whose literals do not match passes the path on, even when a segment it
        // would read as a topic is no topic name.
        let r = routes("*", "/{topic}/live,/{key}/quote=stock-prices");
        let t = r.resolve("/GOOG%20A/quote").unwrap();
        assert_eq!(
            (t.topic.as_str(), t.key.unwrap()),
            ("stock-prices", b"GOOG A".to_vec())
        );
        assert!(matches!(
            r.resolve("/GOOG%20A/live"),
            Err(ResolveError::BadRequest(_))
        ));
    }

    #[test]
    fn bad_templates() {
        let f = TopicFilter::none;
        for bad in [
            "quotes=t",
            "/q/{key}",
            "/{topic}=t",
            "/q/{key}/{key}=t",
            "/q/{x}=t",
            "/q//a=t",
            "/q=bad topic",
        ] {
            assert!(Routes::parse(bad, f()).is_err(), "{bad}");
        }
        assert!(TopicFilter::parse("a b").is_err());
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "anything", true),
            ("a*", "abc", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.*.x", "a.b.x", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }
}
