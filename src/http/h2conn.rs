//! HTTP/2 connections served with the `h2` crate directly (hyper's own HTTP/2 layer) for the
//! protocol, and the responses' DATA frames written by the gateway itself
//! ([`crate::http::wire`]), within the windows the client granted. A stream whose client grants
//! no flow-control window for `KSG_STREAM_STALL_SECS` while data waits is reset with
//! `RST_STREAM(CANCEL)` and its memory released, whatever the client does next. A stream holds
//! at most one body frame that its window did not take.
//!
//! One task per connection does everything: it accepts streams, answers them and writes their
//! events (each stream is an answer polled by this task when it is due, see
//! [`crate::http::answers`], so a record fanned out to many streams of a connection costs one
//! task wake-up and one write), sends keep-alive PINGs, closes the connection when it has had
//! no open stream for the idle timeout, and says GOAWAY on shutdown.
//!
//! Between two of the connection's writes its streams write at most about
//! [`crate::http::wire::WRITE_BYTES`]; the streams over it stay due, and are polled after the
//! next write.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
use crate::http::answers::{Answering, Answers};
use crate::http::body::ResponseBody;
use crate::http::service::App;
use crate::http::wire::{self, Link, Sent, Splice, StreamOut, Wire};
use crate::hub::Fanout;
use crate::metrics::Metrics;
use crate::wake::{Deferred, Ready};

/// HTTP/2 settings, explicit.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_streams: u32,
    /// Largest header block the protocol layer accepts.
    pub max_header_list: u32,
    /// Bytes `h2` may buffer per stream (a bound only: `h2` sends no body data, the gateway
    /// writes the DATA frames itself, see `http::wire`).
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
    /// A stream whose client grants no window of its own for this long while data waits is
    /// reset; a connection whose window stays at zero this long while streams wait is closed.
    pub stall: Duration,
}

impl Settings {
    /// The `h2` server builder for these settings.
    pub fn builder(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(self.max_streams)
            // The wire reads the client's control frames up to this size itself.
            .max_frame_size(wire::LARGEST_READ as u32)
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
    /// Its streams waited for a connection window the client kept at zero for the stall time.
    Stalled,
}

/// What a connection's task writes with, made before the handshake: `h2` is handed the
/// [`Splice`] that [`plumb`] returns with it.
pub struct Plumbing<I> {
    deferred: Arc<Deferred>,
    ready: Arc<Ready>,
    wire: Arc<Wire>,
    link: Link<I>,
}

/// The I/O to hand `h2` for `io`, and the rest of the connection's plumbing.
pub fn plumb<I>(io: I, settings: &Settings) -> (Splice<I>, Plumbing<I>) {
    let deferred = Arc::new(Deferred::default());
    let ready = Ready::new(deferred.waker());
    let wire = Wire::new(ready.clone(), settings.max_streams);
    let (splice, link) = wire.splice(io);
    let plumbing = Plumbing {
        deferred,
        ready,
        wire,
        link,
    };
    (splice, plumbing)
}

/// Serves one HTTP/2 connection whose handshake is done.
pub async fn serve<I>(
    mut connection: Connection<Splice<I>, Bytes>,
    plumbing: Plumbing<I>,
    app: Arc<App>,
    metrics: Metrics,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Plumbing {
        deferred,
        ready,
        wire,
        link,
    } = plumbing;
    let activity = Activity::new();
    let mut open = activity.watch();
    let mut pinger = connection.ping_pong();
    let mut next_ping = Instant::now() + settings.ping_interval;
    let mut pong_by: Option<Instant> = None;
    let mut goodbye: Option<(Ended, Instant)> = None;
    let mut idle_since = Some(Instant::now());
    let mut streams = Answers::new(ready.clone());
    let opens = Arc::new(app.open_rate());
    // The connection's live streams of a topic share one log; the Kafka reader wakes this task
    // once for all of them, and the task marks those that wait due.
    let fanout = Fanout::new(ready);
    let stall = Stall {
        after: settings.stall,
        resets: metrics.stalled_stream_resets.clone(),
    };
    // Runs while the connection's window is at zero with streams waiting for it.
    let mut starved: Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)> = None;
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
                // A new stream held back for one `h2` would hand out, and it has none: the
                // held one goes on, and `h2` is polled again to read it.
                if accepted.is_pending() && wire.nothing_to_accept() {
                    cx.waker().wake_by_ref();
                }
                accepted
            }) => match accepted {
                Some(Ok((request, respond))) => streams.insert_with(|token| {
                    let out = wire.attach(respond.stream_id().as_u32(), token);
                    // What a stream keeps while it sends is small: the request and what handling
                    // it needs live in a boxed future, freed once the response is ready.
                    let app = app.clone();
                    let opens = opens.clone();
                    let seat = fanout.seat(token);
                    let arrived = std::time::Instant::now();
                    let handling: Handling = Box::pin(async move {
                        app.handle(request.map(RequestBody), &opens, &seat, arrived).await
                    });
                    answer(handling, respond, activity.open(), out)
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
            // every stream's events of a batch at once. The streams write into the
            // connection's buffer and the task writes it out; a write the socket did not take
            // yet goes first the next time. Ready only when a write fails: the other branches
            // end the loop's turns.
            written = poll_fn(|cx| {
                deferred.register(cx.waker());
                if let Poll::Ready(Err(e)) = link.poll_make_room(cx) {
                    return Poll::Ready(Stop::Failed(e));
                }
                fanout.mark_readers_due();
                // The output is locked once for all the streams polled; what is left of the
                // connection's window then goes to the streams waiting for it.
                let mut state = wire.lock();
                let mut lent = Lent {
                    wire: &mut state,
                    stall: &stall,
                };
                let left = streams.poll_due(&mut lent, |lent| lent.wire.room());
                state.start_round();
                let since = state.starved_since();
                drop(state);
                fanout.count_sent();
                // A connection stall: the window stayed at zero with streams waiting (once:
                // a connection saying goodbye has no stall left to find).
                match since.filter(|_| goodbye.is_none()) {
                    Some(since) => {
                        let timer = match &mut starved {
                            Some((at, timer)) if *at == since => timer,
                            _ => {
                                let sleep = Box::pin(tokio::time::sleep_until(since + settings.stall));
                                &mut starved.insert((since, sleep)).1
                            }
                        };
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Stop::Starved);
                        }
                    }
                    None => starved = None,
                }
                match link.poll_write_out(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Stop::Failed(e)),
                    Poll::Ready(Ok(())) => {
                        // Written: the streams left over the budget go next.
                        if left {
                            cx.waker().wake_by_ref();
                        }
                        Poll::Pending
                    }
                    // The socket's wake-up brings the task back.
                    Poll::Pending => Poll::Pending,
                }
            }), if !streams.is_empty() => match written {
                Stop::Failed(e) => {
                    debug!("HTTP/2 connection ended: {e}");
                    break;
                }
                // Closed once, as a whole: its streams end and their clients resume.
                Stop::Starved => {
                    debug!("closing an HTTP/2 connection: its client kept the connection window at zero for {:?}", settings.stall);
                    starved = None;
                    connection.graceful_shutdown();
                    goodbye = Some((Ended::Stalled, Instant::now() + settings.close_grace));
                }
            },
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

/// Why the connection's writing stopped.
enum Stop {
    /// A write failed.
    Failed(std::io::Error),
    /// The client kept the connection window at zero for the stall time.
    Starved,
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
fn answer(handling: Handling, respond: SendResponse<Bytes>, open: Open, out: StreamOut) -> Answer {
    Answer {
        phase: Phase::Handling(handling, respond),
        out,
        _open: open,
    }
}

/// One stream's answer. Written out by hand rather than as an `async fn`: every open stream
/// keeps one, and the compiler's state machine for the same steps was over five times larger
/// (792 bytes against about 150).
struct Answer {
    phase: Phase,
    /// Where the body's DATA frames go.
    out: StreamOut,
    _open: Open,
}

// The body is held inline (see `ResponseBody::Stream`); an answer is in the phase that sends
// it for nearly all of its life.
#[allow(clippy::large_enum_variant)]
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
    /// Kept for the end of the stream (END_STREAM, or a reset), which `h2` sends.
    send: Ending,
    body: ResponseBody,
    /// Taken from the body, not written yet (empty: take the next frame).
    data: Bytes,
    /// Running while the client grants no window and data waits.
    stalled: Option<Pin<Box<Sleep>>>,
}

/// A stream reset when its client grants no window for `after` while data waits, counted in
/// `resets`: the same for every stream of a connection, so kept once.
struct Stall {
    after: Duration,
    resets: IntCounter,
}

/// What a connection lends its streams while it polls them: its output, locked once for all
/// of them, and its stall rule.
struct Lent<'a> {
    wire: &'a mut wire::State,
    stall: &'a Stall,
}

impl Answering<Lent<'_>> for Answer {
    fn poll_answer(&mut self, cx: &mut Context<'_>, lent: &mut Lent<'_>) -> Poll<()> {
        let polled = self.poll_steps(cx, lent);
        if polled.is_ready() {
            self.out.release(lent.wire);
        }
        polled
    }
}

impl Answer {
    fn poll_steps(&mut self, cx: &mut Context<'_>, lent: &mut Lent<'_>) -> Poll<()> {
        let this = self;
        if let Phase::Handling(handling, respond) = &mut this.phase {
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
            this.phase = match respond.send_response(Response::from_parts(parts, ()), end) {
                Ok(send) if !end => Phase::Sending(Sending {
                    send: Ending(send),
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
        match sending.pump(cx, lent.wire, &this.out, lent.stall) {
            Poll::Ready(()) => {
                this.phase = Phase::Done;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The end of a stream whose body the wire writes. `h2` may only end it (a zero-length DATA
/// frame with END_STREAM, which takes no window: `h2` sends it even when its own window, frozen
/// at the client's initial one, is 0) or reset it; never send a payload, which would take window
/// the wire does not count. `tests/h2_contract.rs` checks both.
struct Ending(SendStream<Bytes>);

impl Ending {
    fn end(&mut self) {
        let _ = self.0.send_data(Bytes::new(), true);
    }

    fn reset(&mut self, reason: Reason) {
        self.0.send_reset(reason);
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
    /// Writes the body, never more than the client's window allows; resets the stream when the
    /// client grants no window for `stall` while data waits. Ready when the stream is over: the
    /// body ended, or the stream was reset.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        wire: &mut wire::State,
        out: &StreamOut,
        stall: &Stall,
    ) -> Poll<()> {
        loop {
            if !wire.room() {
                // The connection's write budget is spent: due again after its write.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.data.is_empty() {
                // No more is taken from the body than the windows let it send now.
                self.body.limit_frame(out.room(wire));
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            self.data = data;
                        }
                        continue;
                    }
                    Poll::Ready(_) => {
                        // The body ended: `h2` writes END_STREAM after the frames written
                        // (it takes no window).
                        self.send.end();
                        return Poll::Ready(());
                    }
                    // A reset marks the stream due: it ends here.
                    Poll::Pending if out.is_reset(wire) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let waiting = self.data.len();
            match out.send(wire, &mut self.data) {
                Sent::All => {
                    // The frame's buffer goes now, not at the next frame: an idle stream holds
                    // none (an emptied `Bytes` still holds its storage).
                    self.data = Bytes::new();
                    self.stalled = None;
                    continue;
                }
                Sent::Later => return Poll::Pending,
                // Waiting for its turn at the connection's window: a stall of the connection,
                // if any, is the connection's (see `serve`), not this stream's.
                Sent::Connection => {
                    self.stalled = None;
                    return Poll::Pending;
                }
                Sent::Reset => {
                    debug!("stream reset");
                    return Poll::Ready(());
                }
                Sent::Window => {
                    if self.data.len() < waiting {
                        // The client granted some: the wait starts again.
                        self.stalled = None;
                    }
                }
            }
            // A stream keeps no timer while it is not waiting for window.
            let timer = self
                .stalled
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall.after)));
            if timer.as_mut().poll(cx).is_ready() {
                stall.resets.inc();
                debug!(
                    "stream reset: its client granted no window for {:?}",
                    stall.after
                );
                self.send.reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
    }
}
