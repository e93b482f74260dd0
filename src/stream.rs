//! One SSE response body: the preamble, then events from the stream's bounded queue, with a
//! heartbeat comment whenever the stream has been quiet for the heartbeat interval (kept by the
//! gateway's one [`clock::StreamClock`], not a timer per stream).
//!
//! The body ends when its queue closes: the hub cut the stream off as slow, or the gateway is
//! shutting down. Queued events are written first, so the client's last id is exact.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;

use crate::auth::expiry::{Due, Expiry};
use crate::http::limits::Slot;
use crate::hub::{Events, Subscription};
use crate::metrics::{RouteSeries, TopicSeries};
use crate::sse;

pub mod clock;

use clock::{Appointments, StreamClock};

/// Events already queued are written together, up to this many bytes per frame: one HTTP/2 DATA
/// frame (16 KiB is the default maximum frame size) instead of a flood of tiny ones, which some
/// clients treat as abuse and answer with GOAWAY.
const MAX_BATCH_BYTES: usize = 16 * 1024;

/// The series a stream counts into: its topic's and its route's, shared by every stream of
/// them (two pointers per stream). The open gauges are decremented when the body is dropped.
pub struct StreamMetrics {
    /// Its topic's: events and bytes written, streams open; and the topic's name.
    pub topic: Arc<TopicSeries>,
    /// Its route's: streams open, time to the first event, duration; heartbeats and lifetime
    /// ends.
    pub route: Arc<RouteSeries>,
}

/// Settings shared by every stream of a gateway.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// The `retry:` value.
    pub retry_ms: u64,
    /// Streams end after about this long (clients resume elsewhere); `None`: never.
    pub max_lifetime: Option<Duration>,
    /// How long before its token's expiry a stream says so (zero: it does not).
    pub expiry_notice: Duration,
}

/// The end of a stream at its token's expiry, and the counter of such ends.
struct TokenClock {
    expiry: Expiry,
    expired: IntCounter,
    revoked: IntCounter,
}

/// What a stream opened with a token ends with: the token's `exp` (seconds since the epoch),
/// the key that verified it (ends the stream if it leaves the key set), and the counters of
/// ends by expiry and by revocation.
pub struct TokenEnd {
    /// `exp`.
    pub exp: u64,
    /// The verifying key.
    pub key: Arc<crate::auth::keys::KeyLife>,
    /// `ksg_streams_token_expired_total`.
    pub expired: IntCounter,
    /// `ksg_streams_key_revoked_total`.
    pub revoked: IntCounter,
}

/// The body of one SSE response.
pub struct SseStream {
    /// What goes out before anything else: the preamble (while `opening`), then an event the
    /// last frame had no room for.
    next: Option<Bytes>,
    /// `next` holds the preamble.
    opening: bool,
    /// The largest frame of several events the next poll may make (see [`SseStream::limit_frame`]).
    limit: u32,
    /// The stream's events.
    events: Events,
    /// The heartbeat and the end of the stream's lifetime.
    appointments: Appointments,
    metrics: StreamMetrics,
    opened: std::time::Instant,
    first_sent: bool,
    /// Why the stream ended, for its closing log line.
    ended: Ended,
    /// The stream's token expires (JWT authorization).
    token: Option<Box<TokenClock>>,
    /// The last frame has been written; the stream ends at the next poll.
    closing: bool,
    /// The stream's place under `KSG_MAX_STREAMS`.
    _slot: Slot,
}

/// Why a stream ended.
#[derive(Clone, Copy)]
enum Ended {
    ClientLeft,
    Lifetime,
    TokenExpired,
    KeyRevoked,
    ByGateway,
}

impl Ended {
    fn reason(self) -> &'static str {
        match self {
            Ended::ClientLeft => "the client went away",
            Ended::Lifetime => "its lifetime (KSG_STREAM_MAX_SECS) was over",
            Ended::TokenExpired => "its access token expired",
            Ended::KeyRevoked => "its token's signing key was revoked",
            Ended::ByGateway => "the gateway ended it",
        }
    }
}

impl SseStream {
    /// A stream over `subscription` that starts with `retry:` and the start id, counted in its
    /// topic's series and `route`'s; its heartbeats and lifetime are kept by `clock`. `token`:
    /// the `exp` of the stream's access token (the stream ends there) and the counter of such
    /// ends.
    pub fn new(
        subscription: Subscription,
        settings: StreamSettings,
        clock: Arc<StreamClock>,
        route: Arc<RouteSeries>,
        slot: Slot,
        token: Option<TokenEnd>,
    ) -> Self {
        let parts = subscription.into_parts();
        let metrics = StreamMetrics {
            topic: parts.series,
            route,
        };
        metrics.route.open.inc();
        metrics.topic.open.inc();
        let lifetime = settings.max_lifetime.map(jittered);
        let start_id = parts.start_id;
        let mut preamble = sse::preamble(settings.retry_ms, start_id.as_deref());
        if let Some(prelude) = parts.prelude {
            preamble = Bytes::from([&preamble[..], &prelude[..]].concat());
        }
        SseStream {
            next: Some(preamble),
            opening: true,
            limit: MAX_BATCH_BYTES as u32,
            events: parts.events,
            appointments: Appointments::new(clock, lifetime),
            metrics,
            opened: std::time::Instant::now(),
            first_sent: false,
            ended: Ended::ClientLeft,
            token: token.map(|token| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Box::new(TokenClock {
                    expiry: Expiry::new(token.exp, now, settings.expiry_notice)
                        .watching(token.key.watch()),
                    expired: token.expired,
                    revoked: token.revoked,
                })
            }),
            closing: false,
            _slot: slot,
        }
    }

    /// Counts `events` events of `bytes` bytes written, and the time to the first one.
    fn sent(&mut self, events: u64, bytes: usize) {
        if events == 0 {
            return;
        }
        match &self.events {
            // Counted by the group as its streams read, into the same series, once per poll
            // of the connection.
            // Counted by the merge, per topic.
            Events::Group(_) | Events::Topics(_) => {}
            Events::Then(..) => {
                self.metrics.topic.events.inc_by(events);
                self.metrics.topic.bytes.inc_by(bytes as u64);
            }
        }
        if !self.first_sent {
            self.first_sent = true;
            let waited = self.opened.elapsed().as_secs_f64();
            self.metrics.route.first_event.observe(waited);
        }
    }
}

/// The SSE blocks (events, comments, id-only blocks) in `bytes`: each ends with a blank line
/// (data lines never hold a bare LF, so "\n\n" only ends blocks).
pub(crate) fn blocks(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes)
        .filter(|&at| bytes.get(at + 1) == Some(&b'\n'))
        .count() as u64
}

/// Up to 10% less than `max`, different for each stream, so streams opened together do not all
/// end (and reconnect) together.
fn jittered(max: Duration) -> Duration {
    static STREAMS: AtomicU64 = AtomicU64::new(0);
    let n = STREAMS
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    max.mul_f64(1.0 - (n >> 11) as f64 / (1u64 << 53) as f64 * 0.1)
}

impl SseStream {
    /// Appends events already waiting to `first`, up to the frame limit (at most
    /// [`MAX_BATCH_BYTES`], see [`SseStream::limit_frame`]); an event that would pass it goes
    /// first in the next frame. A lone event is passed on as the shared bytes, without a copy;
    /// a batch is copied into a buffer of exactly its size. Returns the frame and the number
    /// of items it holds.
    fn batch(&mut self, first: Bytes) -> (Bytes, u64) {
        let limit = self.limit as usize;
        if first.len() >= limit {
            return (first, 1);
        }
        let Some(second) = self.events.try_recv() else {
            return (first, 1);
        };
        let mut len = first.len() + second.len();
        if len > limit {
            self.next = Some(second);
            return (first, 1);
        }
        let mut parts = vec![first, second];
        while len < limit {
            match self.events.try_recv() {
                Some(event) if len + event.len() <= limit => {
                    len += event.len();
                    parts.push(event);
                }
                Some(event) => {
                    self.next = Some(event);
                    break;
                }
                None => break,
            }
        }
        let mut buf = BytesMut::with_capacity(len);
        for part in &parts {
            buf.extend_from_slice(part);
        }
        (buf.freeze(), parts.len() as u64)
    }

    /// The next frame of several events holds at most `bytes` (at least one event goes, however
    /// large): what the client's windows let the connection write now. A frame larger than
    /// that would wait, a copy of the stream's own, for the client to read the others' data;
    /// unread, its events wait where they are shared. Until the next call, and for HTTP/1.1
    /// (which never calls it), [`MAX_BATCH_BYTES`].
    pub fn limit_frame(&mut self, bytes: usize) {
        self.limit = bytes.min(MAX_BATCH_BYTES) as u32;
    }
}

impl SseStream {
    /// Ends the stream at the end of its lifetime. Queued events are not lost: the client
    /// resumes from the last id it received.
    fn lifetime_over(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.metrics.route.expired.inc();
        self.ended = Ended::Lifetime;
        Poll::Ready(None)
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.metrics.route.open.dec();
        self.metrics.topic.open.dec();
        let lasted = self.opened.elapsed().as_secs_f64();
        self.metrics.route.duration.observe(lasted);
        let (topic, reason) = (&self.metrics.topic.name, self.ended.reason());
        tracing::debug!(topic = %topic, lasted, reason, "stream closed");
    }
}

impl Body for SseStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(first) = this.next.take() {
            // Whatever is already queued (a replay) goes out in the same frame as the preamble.
            let own = match std::mem::replace(&mut this.opening, false) {
                true => (blocks(&first), first.len()),
                false => (0, 0),
            };
            let (frame, _) = this.batch(first);
            let events = blocks(&frame) - own.0;
            this.sent(events, frame.len() - own.1);
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if this.closing {
            return Poll::Ready(None);
        }
        if let Some(token) = this.token.as_mut() {
            match token.expiry.poll(cx) {
                Poll::Ready(Due::Notice(notice)) => {
                    return Poll::Ready(Some(Ok(Frame::data(notice))));
                }
                Poll::Ready(Due::Expired(last)) => {
                    // Events still queued are not lost: the client resumes from its last id
                    // with a fresh token.
                    token.expired.inc();
                    this.ended = Ended::TokenExpired;
                    this.closing = true;
                    return Poll::Ready(Some(Ok(Frame::data(last))));
                }
                Poll::Ready(Due::Revoked(last)) => {
                    token.revoked.inc();
                    this.ended = Ended::KeyRevoked;
                    this.closing = true;
                    return Poll::Ready(Some(Ok(Frame::data(last))));
                }
                Poll::Pending => {}
            }
        }
        if this.appointments.over() {
            return this.lifetime_over();
        }
        match this.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                let (frame, items) = this.batch(event);
                let events = match &this.events {
                    // An item of a group's log is one event.
                    Events::Group(_) => items,
                    // A queue item may hold several (catch-up chunks).
                    Events::Then(..) | Events::Topics(_) => blocks(&frame),
                };
                this.sent(events, frame.len());
                this.appointments.wrote();
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            Poll::Ready(None) => {
                // The hub closed the queue: cut off as slow, shutdown, topic deleted, or a
                // broken partitioner promise.
                this.ended = Ended::ByGateway;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        match this.appointments.poll(cx.waker()) {
            clock::Due::Heartbeat => {
                this.metrics.route.heartbeats.inc();
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(sse::HEARTBEAT)))))
            }
            clock::Due::End => this.lifetime_over(),
            clock::Due::Nothing => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::blocks;

    use std::future::poll_fn;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body::Body;
    use tokio::time::Instant;

    use super::clock::StreamClock;
    use super::{SseStream, StreamSettings};
    use crate::http::limits::StreamSlots;
    use crate::hub::queue;
    use crate::hub::Subscription;
    use crate::metrics::{Metrics, RouteSeries};
    use crate::sse;

    fn route() -> Arc<RouteSeries> {
        Metrics::new(&[]).route_series(&Arc::from("/{topic}"))
    }

    /// A stream fed by the returned sender, with a heartbeat every `heartbeat` and the given
    /// lifetime, on a ticking clock.
    fn stream(heartbeat: Duration, lifetime: Option<Duration>) -> (queue::Sender, SseStream) {
        let (tx, subscription) = Subscription::detached("t", 16);
        let settings = StreamSettings {
            retry_ms: 1000,
            max_lifetime: lifetime,
            expiry_notice: Duration::ZERO,
        };
        let slot = StreamSlots::new(1).take().unwrap();
        let clock = StreamClock::start(heartbeat);
        let stream = SseStream::new(subscription, settings, clock, route(), slot, None);
        (tx, stream)
    }

    /// The next frame the stream writes (`None`: it ended), and when; a stream that writes
    /// nothing for ten (paused) minutes fails the test.
    async fn next(stream: &mut SseStream) -> (Option<Bytes>, Instant) {
        let poll = poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_frame(cx));
        let frame = tokio::time::timeout(Duration::from_secs(600), poll)
            .await
            .expect("the stream wrote nothing for ten minutes");
        let data = frame.map(|f| f.unwrap().into_data().unwrap());
        (data, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_takes_no_more_events_than_the_windows_let_it_send() {
        let (tx, mut stream) = stream(Duration::from_secs(15), None);
        let event = |n: u8| Bytes::from(format!("data: {n}{}\n\n", "x".repeat(90)));
        for n in 0..6 {
            tx.try_send(event(n)).unwrap();
        }
        // No window at all: the preamble alone, then one event at a time, each the shared
        // bytes (no copy); the rest stays queued.
        stream.limit_frame(0);
        let (preamble, _) = next(&mut stream).await;
        assert!(preamble.unwrap().starts_with(b"retry: 1000\n"));
        assert_eq!(tx.capacity(), 16 - 6, "nothing taken with the preamble");
        let (frame, _) = next(&mut stream).await;
        assert_eq!(frame.unwrap(), event(0));
        assert_eq!(tx.capacity(), 16 - 5, "one taken");
        // Room for two and a half events: two in one frame, the third waits for the next one
        // (the shared bytes, not copied into the frame).
        stream.limit_frame(250);
        let (frame, _) = next(&mut stream).await;
        assert_eq!(frame.unwrap(), [event(1), event(2)].concat());
        stream.limit_frame(0);
        let (frame, _) = next(&mut stream).await;
        assert_eq!(frame.unwrap(), event(3));
        // Room enough: the rest at once.
        stream.limit_frame(64 << 10);
        let (frame, _) = next(&mut stream).await;
        assert_eq!(frame.unwrap(), [event(4), event(5)].concat());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_follow_quiet_and_events_move_them() {
        let h = Duration::from_secs(16);
        let (tx, mut stream) = stream(h, None);
        let opened = Instant::now();
        let (preamble, _) = next(&mut stream).await;
        assert!(preamble.unwrap().starts_with(b"retry: 1000\n"));
        // Quiet from the start: a heartbeat after 7/8 to 8/8 of the interval.
        let (beat, at) = next(&mut stream).await;
        assert_eq!(beat.as_deref(), Some(sse::HEARTBEAT));
        let quiet = at - opened;
        assert!(quiet >= h * 7 / 8 && quiet <= h, "{quiet:?}");
        // An event 5 s later moves the next heartbeat to 5 s + 7/8..8/8 of the interval.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.try_send(Bytes::from_static(b"data: x\n\n")).unwrap();
            tx
        });
        let (event, sent) = next(&mut stream).await;
        assert_eq!(event.as_deref(), Some(&b"data: x\n\n"[..]));
        assert_eq!(sent - at, Duration::from_secs(5));
        let (beat, at) = next(&mut stream).await;
        assert_eq!(beat.as_deref(), Some(sse::HEARTBEAT));
        let quiet = at - sent;
        assert!(quiet >= h * 7 / 8 && quiet <= h, "{quiet:?}");
        assert_eq!(stream.metrics.route.heartbeats.get(), 2);
        assert_eq!(stream.metrics.topic.events.get(), 1);
        drop(sender.await.unwrap());
        // Every sender gone: the stream ends.
        assert_eq!(next(&mut stream).await.0, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_writes_no_heartbeat_and_ends_at_its_lifetime() {
        let h = Duration::from_secs(8);
        let lifetime = Duration::from_secs(60);
        let (tx, mut stream) = stream(h, Some(lifetime));
        let opened = Instant::now();
        next(&mut stream).await;
        let feeder = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.try_send(Bytes::from_static(b"data: x\n\n")).is_err() {
                    return;
                }
            }
        });
        let mut events = 0;
        let ended = loop {
            match next(&mut stream).await {
                (Some(frame), _) => {
                    assert_ne!(
                        &frame[..],
                        sse::HEARTBEAT,
                        "events keep the stream from quiet"
                    );
                    events += 1;
                }
                (None, at) => break at,
            }
        };
        // Up to 10% less than the lifetime (jitter), and at most one round more.
        let lasted = ended - opened;
        assert!(
            lasted >= lifetime * 9 / 10 && lasted <= lifetime + h / 8,
            "{lasted:?}"
        );
        assert!(events >= 50, "{events}");
        assert_eq!(stream.metrics.route.expired.get(), 1);
        assert_eq!(stream.metrics.route.heartbeats.get(), 0);
        drop(stream);
        feeder.await.unwrap();
    }

    #[test]
    fn blocks_counts_blank_lines_that_end_blocks() {
        assert_eq!(blocks(b""), 0);
        assert_eq!(blocks(b"id: 1\ndata: a\n\n"), 1);
        assert_eq!(
            blocks(b"retry: 1000\n\n: hb\n\nid: 2\ndata: x\ndata: y\n\n"),
            3
        );
        assert_eq!(blocks(b"data: no end\n"), 0);
    }
}
