//! HTTP/2 connections served with the `h2` crate directly (hyper's own HTTP/2 layer), so the
//! gateway owns each stream's send side: a stream whose client grants no flow-control window
//! for `KSG_STREAM_STALL_SECS` is reset with `RST_STREAM(CANCEL)` and its memory released, whatever
//! the client does next. Data is only handed to `h2` within the window the client granted, so
//! `h2` never buffers more than one frame's worth per stream and an ended stream's
//! `END_STREAM` never waits behind unflushed data.
//!
//! One task per connection does everything: it accepts streams, answers them and writes their
//! events (each stream is a future polled by this task when it is due, see
//! [`crate::http::answers`], so a record fanned out to many streams of a connection costs one
//! task wake-up, and `h2`'s connection lock is never contended), sends keep-alive PINGs, closes
//! the connection when it has had no open stream for the idle timeout, and says GOAWAY on
//! shutdown.
//!
//! Between two of the connection's writes its streams hand `h2` at most [`FRAMES_PER_WRITE`]
//! frames; the streams over the budget stay due, and are polled after the next write. `h2`
//! holds the frames of a connection that are not written yet in a table that keeps its largest
//! size for the connection's life: when every stream of a full connection has something at once
//! (a record for all of them, their heartbeats falling due together), the budget keeps that
//! table at a quarter of the streams instead of all of them.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::server::{Connection, SendResponse};
use h2::{Ping, Reason, RecvStream, SendStream};
use http::Response;
use http_body::{Body, Frame};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::http::activity::{Activity, Open};
use crate::http::answers::Answers;
use crate::http::body::ResponseBody;
use crate::http::service::App;
use crate::hub::Fanout;
use crate::metrics::Metrics;
use crate::wake::{Deferred, Ready};

/// Frames a connection's streams may hand to `h2` between two of the connection's writes.
pub const FRAMES_PER_WRITE: usize = 64;

/// What is left of a connection's [`FRAMES_PER_WRITE`] until its next write. Only the
/// connection's task touches it (atomic because the task moves between threads).
struct Budget(AtomicUsize);

impl Budget {
    fn full() -> Budget {
        Budget(AtomicUsize::new(FRAMES_PER_WRITE))
    }

    /// The connection has written what it could: a full budget again.
    fn refill(&self) {
        self.0.store(FRAMES_PER_WRITE, Ordering::Relaxed);
    }

    /// True when the budget is spent, and then the caller is woken to be polled again once
    /// the connection has written (the yield makes the set of streams hand control back to the
    /// connection's task).
    fn spent(&self, cx: &Context<'_>) -> bool {
        let spent = self.0.load(Ordering::Relaxed) == 0;
        if spent {
            cx.waker().wake_by_ref();
        }
        spent
    }

    /// True while some of the budget is left: more streams may be polled before the next write.
    fn left(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    fn spend(&self) {
        let left = self.0.load(Ordering::Relaxed);
        self.0.store(left.saturating_sub(1), Ordering::Relaxed);
    }
}

/// HTTP/2 settings, explicit.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_streams: u32,
    /// Largest header block the protocol layer accepts.
    pub max_header_list: u32,
    /// Bytes `h2` may buffer per stream (the gateway stays within the window anyway).
    pub send_buffer: usize,
    /// Streams a client may reset before their requests were handled.
    pub max_pending_resets: usize,
    /// Stream errors the server may reset before it closes the connection.
    pub max_local_resets: usize,
    /// Keep-alive PING interval, and the deadline for its acknowledgement.
    pub ping_interval: Duration,
    /// See `ping_interval`.
    pub ping_timeout: Duration,
    /// Close after this long with no open stream (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How long an idle or shut-down connection may take to say goodbye.
    pub close_grace: Duration,
    /// A stream whose client grants no window for this long while data waits is reset.
    pub stall: Duration,
}

impl Settings {
    /// The `h2` server builder for these settings.
    pub fn builder(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(self.max_streams)
            .max_header_list_size(self.max_header_list)
            .max_send_buffer_size(self.send_buffer)
            .max_pending_accept_reset_streams(self.max_pending_resets)
            .max_local_error_reset_streams(Some(self.max_local_resets));
        builder
    }
}

/// Why a connection ended, for the caller's metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client or the protocol closed it.
    Closed,
    /// No open stream for the idle timeout.
    Idle,
    /// A PING went unanswered.
    PingTimeout,
    /// The gateway is shutting down.
    Shutdown,
}

/// Serves one HTTP/2 connection whose handshake is done.
pub async fn serve<I>(
    mut connection: Connection<I, Bytes>,
    app: Arc<App>,
    metrics: Metrics,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let mut open = activity.watch();
    let mut pinger = connection.ping_pong();
    let mut next_ping = Instant::now() + settings.ping_interval;
    let mut pong_by: Option<Instant> = None;
    let mut goodbye: Option<(Ended, Instant)> = None;
    let mut idle_since = Some(Instant::now());
    let deferred = Arc::new(Deferred::default());
    let ready = Ready::new(deferred.waker());
    let mut streams = Answers::new(ready.clone());
    let opens = Arc::new(app.open_rate());
    // The connection's live streams of a topic share one log; the poll thread wakes this task
    // once for all of them, and the task marks those that wait due.
    let fanout = Fanout::new(ready);
    let budget = Arc::new(Budget::full());
    loop {
        if *open.borrow_and_update() > 0 {
            idle_since = None;
        } else if idle_since.is_none() {
            idle_since = Some(Instant::now());
        }
        let idle_until = match (settings.idle_timeout, idle_since, &goodbye) {
            (Some(limit), Some(since), None) => Some(since + limit),
            _ => None,
        };
        let grace_until = goodbye.as_ref().map(|(_, until)| *until);
        tokio::select! {
            // Polling the connection writes what its streams handed over.
            accepted = poll_fn(|cx| {
                let accepted = connection.poll_accept(cx);
                budget.refill();
                accepted
            }) => match accepted {
                Some(Ok((mut request, respond))) => streams.insert_with(|token| {
                    request.extensions_mut().insert(fanout.seat(token));
                    // What a stream keeps while it sends is small: the request and what handling
                    // it needs live in a boxed future, freed once the response is ready.
                    let app = app.clone();
                    let opens = opens.clone();
                    let handling: Handling = Box::pin(async move {
                        app.handle(request.map(RequestBody), &opens).await
                    });
                    let resets = metrics.stalled_stream_resets.clone();
                    answer(
                        handling,
                        respond,
                        resets,
                        settings.stall,
                        activity.open(),
                        budget.clone(),
                    )
                }),
                // A connection error (h2 has said GOAWAY, or the peer went away): done.
                Some(Err(e)) => {
                    debug!("HTTP/2 connection ended: {e}");
                    break;
                }
                None => break,
            },
            // Streams make progress here; one that finishes is simply gone. Their wake-ups
            // during a fan-out are held to its end (crate::wake), so the connection writes
            // every stream's events of a batch at once. Never ready: the other branches end
            // the loop's turns.
            () = poll_fn(|cx| {
                deferred.register(cx.waker());
                fanout.mark_readers_due();
                streams.poll_due(|| budget.left());
                fanout.count_sent();
                Poll::<()>::Pending
            }), if !streams.is_empty() => {}
            _ = crate::stopped(&mut shutdown), if goodbye.is_none() => {
                connection.graceful_shutdown();
                goodbye = Some((Ended::Shutdown, Instant::now() + settings.close_grace));
            }
            changed = open.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = sleep_opt(idle_until) => {
                debug!("closing an idle HTTP/2 connection");
                connection.graceful_shutdown();
                goodbye = Some((Ended::Idle, Instant::now() + settings.close_grace));
            }
            _ = tokio::time::sleep_until(next_ping), if pinger.is_some() && pong_by.is_none() => {
                if let Some(pinger) = pinger.as_mut() {
                    if pinger.send_ping(Ping::opaque()).is_ok() {
                        pong_by = Some(Instant::now() + settings.ping_timeout);
                    } else {
                        next_ping = Instant::now() + settings.ping_interval;
                    }
                }
            }
            pong = poll_fn(|cx| match pinger.as_mut() {
                Some(p) => p.poll_pong(cx),
                None => Poll::Pending,
            }), if pong_by.is_some() => {
                let _ = pong;
                pong_by = None;
                next_ping = Instant::now() + settings.ping_interval;
            }
            _ = sleep_opt(pong_by) => {
                debug!("closing an HTTP/2 connection: PING unanswered");
                return Ended::PingTimeout;
            }
            _ = sleep_opt(grace_until) => break,
        }
    }
    goodbye.map_or(Ended::Closed, |(why, _)| why)
}

/// Sleeps until `until`, or forever when there is none.
async fn sleep_opt(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// A request being handled: the app's response to come.
type Handling = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>;

/// Answers one stream: the app's response, then its body within the client's window. `open`
/// counts the stream as open on its connection until the answer ends.
///
/// A request whose client resets its stream before the response is ready is dropped at once,
/// with whatever handling had started: a reset frees the stream's place under
/// `SETTINGS_MAX_CONCURRENT_STREAMS`, so work that outlived it would be bounded by nothing
/// (rapid reset).
fn answer(
    handling: Handling,
    respond: SendResponse<Bytes>,
    resets: IntCounter,
    stall: Duration,
    open: Open,
    budget: Arc<Budget>,
) -> Answer {
    Answer {
        phase: Phase::Handling(handling, respond),
        resets,
        stall,
        budget,
        _open: open,
    }
}

/// One stream's answer. Written out by hand rather than as an `async fn`: every open stream
/// keeps one, and the compiler's state machine for the same steps was over five times larger
/// (792 bytes against about 150).
struct Answer {
    phase: Phase,
    resets: IntCounter,
    stall: Duration,
    /// The connection's frame budget.
    budget: Arc<Budget>,
    _open: Open,
}

enum Phase {
    /// The app is preparing the response.
    Handling(Handling, SendResponse<Bytes>),
    /// The body is being sent.
    Sending(Sending),
    /// Over: the stream ended, was reset, or its response could not be sent.
    Done,
}

/// The send side of a stream whose response went out.
struct Sending {
    send: SendStream<Bytes>,
    body: ResponseBody,
    /// Taken from the body, not yet handed to `h2` (empty: take the next frame).
    data: Bytes,
    /// Running while the client grants no window and data waits.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Future for Answer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Phase::Handling(handling, respond) = &mut this.phase {
            // The response's HEADERS count too.
            if this.budget.spent(cx) {
                return Poll::Pending;
            }
            let response = match handling.as_mut().poll(cx) {
                Poll::Ready(response) => response,
                Poll::Pending => {
                    return match respond.poll_reset(cx) {
                        Poll::Ready(reason) => {
                            debug!("request dropped: its stream was reset ({reason:?})");
                            this.phase = Phase::Done;
                            Poll::Ready(())
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            };
            let (parts, body) = response.into_parts();
            let end = body.is_end_stream();
            this.budget.spend();
            this.phase = match respond.send_response(Response::from_parts(parts, ()), end) {
                Ok(send) if !end => Phase::Sending(Sending {
                    send,
                    body,
                    data: Bytes::new(),
                    stalled: None,
                }),
                Ok(_) => Phase::Done,
                Err(e) => {
                    debug!("response not sent: {e}");
                    Phase::Done
                }
            };
        }
        let Phase::Sending(sending) = &mut this.phase else {
            return Poll::Ready(());
        };
        match sending.pump(cx, &this.resets, this.stall, &this.budget) {
            Poll::Ready(()) => {
                this.phase = Phase::Done;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A request body read from `h2`, its window given back as it is read.
struct RequestBody(RecvStream);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match self.0.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = self.0.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

impl Sending {
    /// Sends the body, never more than the client's window allows; resets the stream when the
    /// client grants no window for `stall` while data waits. Ready when the stream is over: the
    /// body ended, or the client reset the stream.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        resets: &IntCounter,
        stall: Duration,
        budget: &Budget,
    ) -> Poll<()> {
        loop {
            if budget.spent(cx) {
                return Poll::Pending;
            }
            if self.data.is_empty() {
                // The body first: a stream with data to send learns of a reset from `send_data`.
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            self.data = data;
                        }
                        continue;
                    }
                    Poll::Ready(_) => {
                        // The body ended: END_STREAM needs no window, and nothing is buffered
                        // before it.
                        let _ = self.send.send_data(Bytes::new(), true);
                        budget.spend();
                        return Poll::Ready(());
                    }
                    Poll::Pending => {
                        return self.send.poll_reset(cx).map(|reason| {
                            debug!("stream reset by the client: {reason:?}");
                        });
                    }
                }
            }
            // Reserving capacity wakes whatever waits on the stream: first swap the waker that
            // `poll_reset` left for one that does nothing, or the stream would wake itself and
            // its connection would write after every stream or two instead of once per batch.
            if self
                .send
                .poll_reset(&mut Context::from_waker(Waker::noop()))
                .is_ready()
            {
                return Poll::Ready(());
            }
            self.send.reserve_capacity(self.data.len());
            // Capacity already assigned is used at once (poll_capacity only reports changes).
            let ready = self.send.capacity();
            if ready > 0 {
                if !self.send_part(ready, budget) {
                    return Poll::Ready(());
                }
                continue;
            }
            if self.send.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(granted))) => {
                    if !self.send_part(granted, budget) {
                        return Poll::Ready(());
                    }
                    continue;
                }
                // The stream was reset or closed.
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            // A stream keeps no timer while it is not waiting for window.
            let timer = self
                .stalled
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
            if timer.as_mut().poll(cx).is_ready() {
                resets.inc();
                debug!("stream reset: its client granted no window for {stall:?}");
                self.send.send_reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
    }

    /// Hands up to `window` bytes of the waiting data to `h2` (the client granted them, so a
    /// stall timer starts again). False when the stream is gone.
    fn send_part(&mut self, window: usize, budget: &Budget) -> bool {
        self.stalled = None;
        if window == 0 {
            return true;
        }
        budget.spend();
        // The whole of it when it fits: an empty remainder would still hold the event's buffer.
        let part = if window >= self.data.len() {
            std::mem::take(&mut self.data)
        } else {
            self.data.split_to(window)
        };
        self.send.send_data(part, false).is_ok()
    }
}
