//! Request handling: method, route, subscription, and the response with its status and reason.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tracing::debug;

use crate::auth::{Access, Authorizer, Failure};
use crate::filter::Filter;
use crate::http::body::ResponseBody;
use crate::http::cors::Cors;
use crate::http::json;
use crate::http::limits::{retry_after_secs, OpenRate, StreamSlots, FULL_RETRY_AFTER};
use crate::hub::{Hub, Seat, SubscribeError, Subscription};
use crate::metrics::Metrics;
use crate::routes::{ResolveError, Routes};
use crate::start::Start;
use crate::stream::clock::StreamClock;
use crate::stream::{SseStream, StreamSettings, TokenEnd};

/// A refused request's body is read (and dropped) up to this many bytes before the answer, so
/// the client's frames that follow its headers are processed before the stream closes.
const DRAIN_BYTES: usize = 16 * 1024;
/// ... and for at most this long.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// How long a JSON snapshot answer may take to read its snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// Largest request head accepted: target plus header fields, each field counted as HTTP/2
/// counts it (name + value + 32 bytes). The protocol layers allow up to [`HEAD_HARD_LIMIT`], so
/// that heads between the two get a `431` with a reason.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Heads over this are refused by the protocol layer itself (hyper's HTTP/1.1 read buffer,
/// h2's SETTINGS_MAX_HEADER_LIST_SIZE) with a bare `431`.
pub const HEAD_HARD_LIMIT: usize = 64 * 1024;

/// Everything a request needs, shared by all connections.
pub struct App {
    /// The registry and fan-out.
    pub hub: Arc<Hub>,
    /// Path routing.
    pub routes: Routes,
    /// The gateway's metrics.
    pub metrics: Metrics,
    /// Allowed browser origins.
    pub cors: Cors,
    /// Retry, lifetime and token-expiry notice of streams.
    pub streams: StreamSettings,
    /// The one clock of every stream's heartbeat (`KSG_HEARTBEAT_SECS`) and lifetime.
    pub clock: Arc<StreamClock>,
    /// Topics whose streams start with a snapshot when the request names no start.
    pub snapshot_topics: crate::routes::TopicFilter,
    /// Latched true once Kafka answered; until then stream requests get `503` at once.
    pub ready: Arc<AtomicBool>,
    /// The starter page served at `/` (demo mode).
    pub starter_page: Option<Bytes>,
    /// JWT authorization; `None`: public streams.
    pub auth: Option<Arc<Authorizer>>,
    /// Streams open in the whole gateway, against `KSG_MAX_STREAMS`.
    pub slots: Arc<StreamSlots>,
    /// Stream requests per second per connection after a burst (0: no limit).
    pub opens_per_sec: u32,
    /// The burst: `KSG_MAX_STREAMS_PER_CONNECTION`.
    pub opens_burst: u32,
    /// `key=` parameters one stream may name (`KSG_MAX_KEYS_PER_STREAM`).
    pub max_keys: usize,
    /// `header.<name>=` and `where=` parameters one stream may give
    /// (`KSG_MAX_FILTERS_PER_STREAM`).
    pub max_filters: usize,
    /// Topics one stream may read (`KSG_MAX_TOPICS_PER_STREAM`).
    pub max_topics: usize,
    /// The records one JSON snapshot answer may hold, bytes (`KSG_SNAPSHOT_BYTES`).
    pub snapshot_bytes: usize,
}

impl App {
    /// The stream-open budget of a new connection.
    pub fn open_rate(&self) -> OpenRate {
        OpenRate::new(self.opens_per_sec, self.opens_burst)
    }

    /// Answers one request. Never fails: every problem is a response with a reason.
    ///
    /// `HEAD` is answered as `GET` would be (same checks, same status and headers) without a
    /// body, and without opening a stream.
    /// `opens` is the stream-open budget of the request's connection, `seat` the request's place
    /// on it: a stream reads its connection's shared logs (HTTP/2 and HTTP/1.1 alike).
    /// `arrived` is when the request came off its connection: the time to the response head
    /// goes into `ksg_answer_seconds`.
    pub async fn handle<B>(
        &self,
        request: Request<B>,
        opens: &OpenRate,
        seat: &Seat,
        arrived: Instant,
    ) -> Response<ResponseBody>
    where
        B: Body + Unpin,
    {
        let (parts, mut body) = request.into_parts();
        let request = Request::from_parts(parts, ());
        let head = request.method() == Method::HEAD;
        let mut response = if head_bytes(&request) > MAX_HEAD_BYTES {
            self.refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "request header fields over 16 KiB",
            )
        } else {
            self.route(&request, head, opens, seat).await
        };
        if !matches!(response.body(), ResponseBody::Stream(_)) && !body.is_end_stream() {
            drain(&mut body).await;
        }
        if head {
            *response.body_mut() = ResponseBody::Empty;
        } else if let Some(refusal) = response.extensions().get::<Transient>().copied() {
            if accepts_event_stream(request.headers()) {
                response = refusal.as_stream();
            }
        }
        self.cors.apply(request.headers(), response.headers_mut());
        self.metrics.answer.observe(arrived.elapsed().as_secs_f64());
        response
    }

    async fn route(
        &self,
        request: &Request<()>,
        head: bool,
        opens: &OpenRate,
        seat: &Seat,
    ) -> Response<ResponseBody> {
        match *request.method() {
            Method::GET | Method::HEAD => {}
            Method::OPTIONS => return self.preflight(request),
            _ => {
                let mut r = self.refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "only GET is served",
                );
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, OPTIONS"),
                );
                return r;
            }
        }
        let path = request.uri().path();
        let mut grant = None;
        if path == "/" {
            if let Some(page) = &self.starter_page {
                return text_response(StatusCode::OK, "text/html; charset=utf-8", page.clone());
            }
        }
        // Limits and authorization come before any Kafka work; a routing error is told only to
        // a request its token allows, so a token never learns which topics exist beyond it.
        if let Err(wait) = opens.try_open() {
            let why = "too many stream requests on this connection (KSG_MAX_STREAM_OPENS_PER_SEC)";
            return self.too_many("rate_limited", why, wait);
        }
        let query = request.uri().query();
        let resolved = self.routes.resolve(path);
        // The filter a token's pattern adds, for each of the stream's topics.
        let mut granted: Vec<Option<Filter>> = Vec::new();
        if let Some(auth) = &self.auth {
            let checked = auth.check(request.headers(), query);
            let allowed = checked.and_then(|grant| {
                // Each topic's path must be allowed (a stream of several topics: each one's).
                let paths = match &resolved {
                    Ok(target) if target.topic_segment.is_some() => target
                        .topics
                        .iter()
                        .map(|t| topic_path(path, target.topic_segment, t))
                        .collect(),
                    _ => vec![path.to_string()],
                };
                let filters = paths
                    .iter()
                    .map(|path| match grant.allows_stream(path, query) {
                        Access::Allowed(filter) => Some(filter),
                        Access::Denied => None,
                    })
                    .collect::<Option<Vec<_>>>();
                filters
                    .map(|filters| (grant, filters))
                    .ok_or(Failure::Forbidden)
            });
            match allowed {
                // Where the stream has to end comes with the response, below.
                Ok((allowed, filters)) => {
                    grant = Some(allowed);
                    granted = filters;
                }
                Err(failure) => return self.refuse_auth(failure),
            }
        }
        let target = match resolved {
            Ok(target) => target,
            Err(ResolveError::NotFound(why)) => {
                return self.refuse(StatusCode::NOT_FOUND, "not_found", &why)
            }
            Err(ResolveError::BadRequest(why)) => {
                return self.refuse(StatusCode::BAD_REQUEST, "bad_request", &why)
            }
        };
        if target.topics.len() > self.max_topics {
            let why = format!(
                "{} topics asked; a stream takes at most {} (KSG_MAX_TOPICS_PER_STREAM)",
                target.topics.len(),
                self.max_topics
            );
            return self.refuse(StatusCode::BAD_REQUEST, "bad_topics", &why);
        }
        let keys = match crate::routes::stream_keys(&target, query, self.max_keys) {
            Ok(keys) => keys,
            Err(e) => return self.refuse(StatusCode::BAD_REQUEST, "bad_keys", &e.to_string()),
        };
        let format = match crate::routes::stream_format_for(&target, query) {
            Ok(format) => format,
            Err(why) => return self.refuse(StatusCode::BAD_REQUEST, "bad_format", &why),
        };
        let asked = match crate::routes::stream_filter(&target, query, self.max_filters) {
            Ok(filter) => filter,
            Err(e) => return self.refuse(StatusCode::BAD_REQUEST, "bad_filter", &e.to_string()),
        };
        // Each topic's filter: the route's and the request's, and what the token adds for it.
        let filters: Vec<Option<Filter>> = (0..target.topics.len())
            .map(|i| Filter::and(asked.as_ref(), granted.get(i).and_then(Option::as_ref)))
            .collect();
        let defaults = |topic: &str| {
            if self.snapshot_topics.allows(topic) {
                Start::Snapshot
            } else {
                Start::Live
            }
        };
        let starts =
            match crate::start::of_topics(request.headers(), query, &target.topics, defaults) {
                Ok(starts) => starts,
                Err(e) => {
                    return self.refuse(StatusCode::BAD_REQUEST, "bad_resume_id", &e.to_string())
                }
            };
        // One JSON document instead of a stream: a snapshot, or the live position.
        let json = crate::routes::wants_json(query) || accepts_json(request.headers());
        let every = |want: Start| starts.iter().all(|(start, _)| *start == want);
        let json = match json && !head {
            false => None,
            true if every(Start::Snapshot) => Some(true),
            true if every(Start::Live) => Some(false),
            true => {
                let why = "a JSON answer is for from=snapshot or from=latest";
                return self.refuse(StatusCode::BAD_REQUEST, "bad_format", why);
            }
        };
        if !self.ready.load(Ordering::Acquire) {
            let why = "Kafka has not been reached yet; retry shortly";
            return self.unavailable("kafka_unavailable", why);
        }
        let slot = match self.slots.take() {
            Some(slot) => slot,
            None => {
                let why =
                    "the gateway serves as many streams as it may (KSG_MAX_STREAMS); retry later";
                return self.too_many("too_many_streams", why, FULL_RETRY_AFTER);
            }
        };
        // A JSON document's records are envelopes.
        let format = match json {
            Some(_) => crate::sse::Format::Envelope,
            None => format,
        };
        let mut subscriptions = Vec::with_capacity(target.topics.len());
        let mut clients = Vec::with_capacity(target.topics.len());
        for ((topic, (start, client)), filter) in target.topics.iter().zip(starts).zip(filters) {
            // HEAD checks that the topic exists as GET does, without reading anything from
            // Kafka.
            let start = if head { Start::Live } else { start };
            let subscribed = self
                .hub
                .subscribe(topic, keys.clone(), format, filter, start, seat)
                .await;
            match subscribed {
                Ok(s) => subscriptions.push(s),
                Err(e) => {
                    let (status, reason, why) = refusal(&e);
                    if let SubscribeError::Unavailable(details) = &e {
                        // The client is told what it can act on; the details are for operators.
                        debug!(topic = %topic, "stream refused, Kafka unavailable: {details}");
                    }
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        return self.unavailable(reason, &why);
                    }
                    return self.refuse(status, reason, &why);
                }
            }
            clients.push(client);
        }
        let subscription = match subscriptions.len() {
            1 => subscriptions.pop().expect("one"),
            _ => Subscription::merged(subscriptions, clients, format == crate::sse::Format::Plain),
        };
        if grant
            .as_ref()
            .is_some_and(|g| g.expires <= crate::auth::now_secs())
        {
            // The token expired while Kafka was asked where the stream starts.
            return self.refuse_auth(Failure::Expired);
        }
        if let Some(snapshot) = json {
            return self.json_answer(subscription, snapshot).await;
        }
        if head {
            drop(subscription);
            let mut response = Response::new(ResponseBody::Empty);
            sse_headers(response.headers_mut());
            return response;
        }
        let route = self.metrics.route_series(&target.route);
        route.opened.inc();
        debug!(topic = %subscription.series.name, route = &*target.route, "stream opened");
        let token = grant.map(|grant| TokenEnd {
            exp: grant.expires,
            key: grant.key,
            expired: self.metrics.streams_token_expired.clone(),
            revoked: self.metrics.streams_key_revoked.clone(),
        });
        let stream = SseStream::new(
            subscription,
            self.streams,
            self.clock.clone(),
            route,
            slot,
            token,
        );
        let mut response = Response::new(ResponseBody::Stream(stream));
        sse_headers(response.headers_mut());
        response
    }

    /// The JSON document of a snapshot read (`snapshot`: the records up to its `event: live`)
    /// or of the live position (no records), from `subscription` (in the envelope format),
    /// which is then dropped. Waits at most [`SNAPSHOT_WAIT`] for the snapshot.
    async fn json_answer(
        &self,
        subscription: Subscription,
        snapshot: bool,
    ) -> Response<ResponseBody> {
        let mut parts = subscription.into_parts();
        let read = match (snapshot, parts.start_id.take()) {
            (false, Some(id)) => Ok((id, Vec::new())),
            _ => {
                let read = json::read_snapshot(&mut parts.events, self.snapshot_bytes);
                match tokio::time::timeout(SNAPSHOT_WAIT, read).await {
                    Ok(read) => read,
                    Err(_) => {
                        let why = "the snapshot was not read in time; retry later";
                        return self.unavailable("kafka_unavailable", why);
                    }
                }
            }
        };
        match read {
            Ok((id, records)) => {
                let body = Bytes::from(json::document(&id, &records));
                text_response(StatusCode::OK, "application/json", body)
            }
            Err(json::SnapshotError::TooLarge(bytes)) => {
                let why = format!("the snapshot's records are over KSG_SNAPSHOT_BYTES ({} bytes; {bytes} read): read it as a stream (?from=snapshot) instead", self.snapshot_bytes);
                self.refuse(StatusCode::PAYLOAD_TOO_LARGE, "snapshot_too_large", &why)
            }
            Err(json::SnapshotError::Ended) => self.unavailable(
                "shutting_down",
                "the snapshot ended before it was complete; retry later",
            ),
        }
    }

    /// A CORS preflight: allowed origins may send `Last-Event-ID` and `Cache-Control`.
    fn preflight(&self, request: &Request<()>) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::full(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        if self.cors.allow(request.headers()).is_some() {
            let h = response.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("last-event-id, cache-control, authorization"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        response
    }

    /// `401` or `403` with a `WWW-Authenticate` challenge, counted by reason.
    fn refuse_auth(&self, failure: Failure) -> Response<ResponseBody> {
        self.metrics
            .auth_refused
            .with_label_values(&[failure.reason()])
            .inc();
        let reason = match failure {
            Failure::Forbidden => "forbidden",
            _ => "unauthorized",
        };
        let mut response = self.refuse(failure.status(), reason, failure.description());
        if let Ok(challenge) = HeaderValue::from_str(&failure.challenge()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }

    /// `429` with `Retry-After`: a transient refusal.
    fn too_many(&self, reason: &'static str, why: &str, wait: Duration) -> Response<ResponseBody> {
        self.transient(StatusCode::TOO_MANY_REQUESTS, reason, why, wait)
    }

    /// `503` with `Retry-After` of the streams' reconnection time (`KSG_RETRY_MS`): a
    /// transient refusal (Kafka not reached yet or unavailable, the gateway shutting down).
    fn unavailable(&self, reason: &'static str, why: &str) -> Response<ResponseBody> {
        let wait = Duration::from_millis(self.streams.retry_ms);
        self.transient(StatusCode::SERVICE_UNAVAILABLE, reason, why, wait)
    }

    /// A refusal the client should retry after `wait`: `status` with `Retry-After`, or, for a
    /// client that asked for `text/event-stream` (see [`Transient`]), a stream that says so.
    fn transient(
        &self,
        status: StatusCode,
        reason: &'static str,
        why: &str,
        wait: Duration,
    ) -> Response<ResponseBody> {
        let mut response = self.refuse(status, reason, why);
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(wait)),
        );
        response.extensions_mut().insert(Transient { reason, wait });
        response
    }

    fn refuse(&self, status: StatusCode, reason: &str, why: &str) -> Response<ResponseBody> {
        self.metrics
            .streams_refused
            .with_label_values(&[reason])
            .inc();
        debug!(status = status.as_u16(), reason, "request refused: {why}");
        text_response(
            status,
            "text/plain; charset=utf-8",
            Bytes::from(format!("{why}\n")),
        )
    }
}

/// The status, metric reason and client-facing text for a failed subscription. The text says
/// what a client can act on, never the Kafka client's internals.
fn refusal(e: &SubscribeError) -> (StatusCode, &'static str, String) {
    match e {
        SubscribeError::UnknownTopic(_) => (StatusCode::NOT_FOUND, "not_found", e.to_string()),
        SubscribeError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            "Kafka is unavailable, retry later".to_string(),
        ),
        SubscribeError::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway is shutting down, reconnect".to_string(),
        ),
    }
}

/// The size of a request head as HTTP/2 measures a header list (RFC 9113, 6.5.2).
fn head_bytes<B>(request: &Request<B>) -> usize {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    target + fields
}

/// A transient refusal (rate limit, capacity, Kafka not reachable, shutting down). An
/// EventSource closes for good on any status but 200, so a client that asks for
/// `text/event-stream` gets `200` and a stream that tells it to come back: `retry:` with the
/// wait (plus up to a quarter more, so that refused clients do not all return at once), an
/// `event: unavailable` whose data is `{"reason":…,"retry_ms":…}`, and the end of the stream.
/// The browser reconnects after the wait with its `Last-Event-ID`, as after any end. Other
/// clients get the status and `Retry-After`.
#[derive(Debug, Clone, Copy)]
struct Transient {
    reason: &'static str,
    wait: Duration,
}

impl Transient {
    fn as_stream(self) -> Response<ResponseBody> {
        let wait = self.wait.as_millis() as u64;
        let retry_ms = wait + jitter(wait / 4);
        let body = format!(
            "retry: {retry_ms}\nevent: unavailable\ndata: {{\"reason\":\"{}\",\"retry_ms\":{retry_ms}}}\n\n",
            self.reason
        );
        let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
        sse_headers(response.headers_mut());
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(Duration::from_millis(retry_ms))),
        );
        response
    }
}

/// A number from 0 to `max`, different for each call (for spreading retries, not secrets).
fn jitter(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    if max == 0 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(max);
    hasher.finish() % (max + 1)
}

/// Whether the request's `Accept` names `text/event-stream` (an EventSource always sends it).
/// True when the request's `Accept` names `application/json` and not `text/event-stream` (an
/// EventSource always names the latter).
/// `path` with its topics' segment (`segment`, counted after the leading `/`) naming `topic`
/// alone: the path a token must allow for that topic of a stream of several.
fn topic_path(path: &str, segment: Option<usize>, topic: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    if let Some(part) = segment.and_then(|i| parts.get_mut(i + 1)) {
        *part = topic;
    }
    parts.join("/")
}

fn accepts_json(headers: &http::HeaderMap) -> bool {
    accepts(headers, "application/json") && !accepts_event_stream(headers)
}

fn accepts_event_stream(headers: &http::HeaderMap) -> bool {
    accepts(headers, "text/event-stream")
}

/// True when the request's `Accept` names `media` (parameters and quality aside).
fn accepts(headers: &http::HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .is_some_and(|named| named.trim().eq_ignore_ascii_case(media))
        })
}

/// The headers of a stream response.
fn sse_headers(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// Reads and drops a request body, at most [`DRAIN_BYTES`] for at most [`DRAIN_TIME`]. An
/// HTTP/2 client that sends frames after its request headers (h2spec does) then sees them
/// handled as the protocol says before its stream is closed by the answer.
async fn drain<B: Body + Unpin>(body: &mut B) {
    let mut read = 0;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while read < DRAIN_BYTES {
            match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, bytes::Buf::remaining);
                }
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_internals_stay_out_of_the_503_text() {
        let e = SubscribeError::Unavailable(
            "Kafka is unavailable: Subscription error: _CONFLICT".into(),
        );
        let (status, reason, text) = refusal(&e);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reason, "kafka_unavailable");
        assert_eq!(text, "Kafka is unavailable, retry later");
        let (status, _, text) = refusal(&SubscribeError::UnknownTopic("t".into()));
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::NOT_FOUND, "topic \"t\" does not exist")
        );
    }

    #[test]
    fn head_bytes_counts_target_and_fields_as_http2_does() {
        let request = Request::get("/t/k?from=earliest")
            .header("x-a", "bc")
            .body(())
            .unwrap();
        assert_eq!(
            head_bytes(&request),
            "/t/k?from=earliest".len() + 3 + 2 + 32
        );
    }
}
