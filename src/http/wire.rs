//! The bytes of one HTTP/2 connection, shared by `h2` and the streams' own DATA frames.
//!
//! `h2` runs the connection's protocol: the preface and SETTINGS, the requests' HEADERS and
//! their HPACK, stream states and limits, PING, GOAWAY, RST_STREAM, the responses' HEADERS and
//! each stream's closing END_STREAM. Response bodies do not go through it: a stream writes its
//! DATA frames straight into the connection's output buffer ([`StreamOut::send`]), within the
//! flow-control windows its client granted, which are kept here. An event then costs a 9-byte
//! frame header and one copy into the buffer that the connection's next write hands to TLS,
//! where handing it to `h2` took five calls into `h2`, each under its lock, and two moves of a
//! queued frame.
//!
//! To keep the windows, the I/O handed to `h2` ([`Splice`]) reads the client's frames on their
//! way in:
//! - SETTINGS (the initial window and the largest frame) and RST_STREAM are read and passed on;
//! - WINDOW_UPDATE frames are applied here and not passed on: `h2` sends no data of its own
//!   (only zero-length DATA frames that end streams, which take no window), so its own windows
//!   never move. Those that are protocol errors are passed on for `h2` to answer as RFC 9113
//!   says: a malformed frame or an increment of 0 as it came; one that overflows a window as it
//!   came, followed by two increments of 2³¹−1 for the same window, which overflow `h2`'s
//!   untouched window (at most 2³¹−1) in the same way, so `h2` ends the stream or the connection
//!   with FLOW_CONTROL_ERROR. A SETTINGS frame whose new initial window would take a stream's
//!   window past 2³¹−1 is followed by two such increments for the connection: the connection
//!   error RFC 9113 asks for. Frames on streams this module does not hold (idle or closed ones)
//!   go to `h2` as they came.
//!
//! On the way out, the frames `h2` writes are followed header by header: a stream's DATA frame
//! goes only between two of them (never inside a frame or a header block), and never before its
//! stream's response HEADERS. RST_STREAM frames `h2` sends end the stream here too.
//!
//! Everything here runs on the connection's task: the locks are never contended.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use parking_lot::{Mutex, MutexGuard};
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wake::Ready;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

const PREFACE_LEN: usize = 24;
const HEAD_LEN: usize = 9;
/// RFC 9113's default SETTINGS_INITIAL_WINDOW_SIZE and connection window.
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// The smallest SETTINGS_MAX_FRAME_SIZE, and the default.
const MIN_FRAME: usize = 16_384;
const MAX_FRAME: usize = (1 << 24) - 1;
/// Control frames larger than this are passed to `h2` unread: it refuses frames larger than
/// its own SETTINGS_MAX_FRAME_SIZE, which `h2conn::Settings::builder` sets to this value.
pub const LARGEST_READ: usize = MIN_FRAME;
/// Bytes read from the client at a time (what clients send an SSE gateway is small).
const READ_BYTES: usize = 4096;
/// Bytes `h2` may add to an output buffer already this full only once some of it is written.
const OUT_LIMIT: usize = 4 << 20;

/// The smallest share of the connection's window a stream waiting for it is given in a round
/// (a smaller window goes whole to the first in line, the next round to the next ones).
const MIN_SHARE: i64 = 512;

/// The bytes a connection's streams may write between two of the connection's writes.
/// Streams due when it is spent wait for the next write (see `http::answers`).
pub const WRITE_BYTES: usize = 64 << 10;

/// One connection's output and flow control.
pub struct Wire {
    state: Mutex<State>,
}

/// A connection's output and the client's windows, locked: the connection's task locks it
/// once to poll all its due streams.
pub struct State {
    /// What is left of [`WRITE_BYTES`] until the next write.
    budget: usize,
    /// Bytes for the connection, from `written` on not written yet.
    out: Vec<u8>,
    written: usize,
    /// Where `h2`'s output stands: the part of a frame header seen, the bytes of a frame still
    /// to come, and the stream whose header block is open (and whether the block ends it).
    head: [u8; HEAD_LEN],
    head_len: usize,
    frame_left: usize,
    block: Option<(u32, bool)>,
    /// The client's windows and its largest frame.
    connection_window: i64,
    initial_window: i64,
    max_frame: usize,
    /// The streams the client opened and the gateway has not finished with.
    streams: Slab<Entry>,
    ids: HashMap<u32, usize>,
    last_opened: u32,
    /// Streams not answered yet that may be held (more are left to `h2`, which refuses them).
    max_unanswered: usize,
    /// The last stream `h2`'s GOAWAY said it takes (it ignores later ones, with no frame), and
    /// the start of a GOAWAY's payload being read from `h2`'s output.
    goaway_last: Option<u32>,
    goaway_bytes: Option<Vec<u8>>,
    unanswered: usize,
    /// Streams waiting for the connection's window, in turn order.
    waiting: Vec<usize>,
    /// The connection's window ran out with streams wanting it: until they are all served,
    /// it is shared out in rounds (see [`State::start_round`]).
    rationed: bool,
    /// Since when streams have waited for a connection window at zero (a connection stall).
    starved_since: Option<tokio::time::Instant>,
    ready: Arc<Ready>,
    /// A stream was marked due while `h2` wrote or read: wake the connection's task.
    woke: bool,
}

struct Entry {
    id: u32,
    window: i64,
    /// The stream's token on its connection, once it is answered.
    token: Option<usize>,
    headers_out: bool,
    reset: bool,
    waits_connection: bool,
    /// What the stream may still write of the connection's window in this round, while the
    /// window is rationed.
    allowance: i64,
}

/// What [`StreamOut::send`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// All of the data is written.
    All,
    /// Part or none of it: the stream's own window is spent. The stream is due again when the
    /// client grants more.
    Window,
    /// Part or none of it: the stream waits for its turn at the connection's window, which
    /// the streams that want it share in rounds. It is due again at its turn.
    Connection,
    /// None of it: the response's HEADERS are not written yet. The stream is due again once
    /// they are.
    Later,
    /// The stream is over (reset by the client or by `h2`): nothing more goes out.
    Reset,
}

impl Wire {
    /// The wire of a connection whose due streams `ready` lists, holding at most
    /// `max_streams` unanswered streams of its own (the rest is `h2`'s to refuse).
    pub fn new(ready: Arc<Ready>, max_streams: u32) -> Arc<Wire> {
        Arc::new(Wire {
            state: Mutex::new(State {
                budget: WRITE_BYTES,
                out: Vec::new(),
                written: 0,
                head: [0; HEAD_LEN],
                head_len: 0,
                frame_left: 0,
                block: None,
                connection_window: DEFAULT_WINDOW,
                initial_window: DEFAULT_WINDOW,
                max_frame: MIN_FRAME,
                streams: Slab::new(),
                ids: HashMap::new(),
                last_opened: 0,
                max_unanswered: max_streams as usize + 16,
                goaway_last: None,
                goaway_bytes: None,
                unanswered: 0,
                waiting: Vec::new(),
                rationed: false,
                starved_since: None,
                ready,
                woke: false,
            }),
        })
    }

    /// Wraps `io` for `h2`. The returned [`Link`] writes what the streams wrote.
    pub fn splice<I>(self: &Arc<Self>, io: I) -> (Splice<I>, Link<I>) {
        let io = Arc::new(Mutex::new(io));
        let splice = Splice {
            io: io.clone(),
            wire: self.clone(),
            inbound: Inbound::default(),
        };
        let link = Link {
            io,
            wire: self.clone(),
        };
        (splice, link)
    }

    /// The stream `id` that `h2` handed out, answered as `token`.
    pub fn attach(self: &Arc<Self>, id: u32, token: usize) -> StreamOut {
        let mut state = self.state.lock();
        let key = match state.ids.get(&id).copied() {
            Some(key) => {
                state.unanswered -= 1;
                state.streams[key].token = Some(token);
                Some(key)
            }
            // Reset before it was answered: nothing goes out.
            None => None,
        };
        StreamOut { key }
    }

    /// The output and windows, for the streams to write.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Streams the wire holds an entry for (open, or not released yet): for tests, including
    /// the contract tests with `h2` (`tests/h2_contract.rs`).
    pub fn held(&self) -> usize {
        self.state.lock().streams.len()
    }
}

/// What a connection's task writes with: the streams' frames and `h2`'s, in order.
pub struct Link<I> {
    io: Arc<Mutex<I>>,
    wire: Arc<Wire>,
}

impl<I: AsyncWrite + Unpin> Link<I> {
    /// Writes what is waiting and flushes it. Ready once all of it is written, and then the
    /// streams may write [`WRITE_BYTES`] more.
    pub fn poll_write_out(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.wire.state.lock();
        let mut io = self.io.lock();
        let done = state.write_to(&mut *io, cx);
        if let Poll::Ready(Ok(())) = done {
            state.budget = WRITE_BYTES;
        }
        done
    }
}

impl State {
    /// True while the streams may write before the connection's next write.
    pub fn room(&self) -> bool {
        self.budget > 0
    }

    /// Writes the waiting bytes to `io`, then flushes it.
    fn write_to<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > 4 * WRITE_BYTES {
            // A burst (a catch-up, many heartbeats at once) is over: its room is not kept.
            self.out.shrink_to(WRITE_BYTES);
        }
        Pin::new(&mut *io).poll_flush(cx)
    }

    fn at_frame_boundary(&self) -> bool {
        self.head_len == 0 && self.frame_left == 0 && self.block.is_none()
    }

    fn mark(&mut self, token: Option<usize>) {
        if let Some(token) = token {
            self.ready.mark([token]);
            self.woke = true;
        }
    }

    fn wake_if_marked(&mut self) {
        if std::mem::take(&mut self.woke) {
            self.ready.wake_connection();
        }
    }

    /// `h2` wrote `bytes`: they follow what is waiting, and its frames are followed.
    fn h2_wrote(&mut self, mut bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        while !bytes.is_empty() {
            if self.frame_left > 0 {
                let n = self.frame_left.min(bytes.len());
                if let Some(mut read) = self.goaway_bytes.take() {
                    read.extend(bytes[..n].iter().take(4 - read.len()));
                    match <[u8; 4]>::try_from(read.as_slice()) {
                        Ok(last) => self.goaway(u32::from_be_bytes(last) & 0x7fff_ffff),
                        Err(_) => self.goaway_bytes = Some(read),
                    }
                }
                self.frame_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEAD_LEN - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
            self.head_len += n;
            bytes = &bytes[n..];
            if self.head_len < HEAD_LEN {
                break;
            }
            self.head_len = 0;
            let head = Head::parse(&self.head);
            self.frame_left = head.len;
            match head.kind {
                HEADERS => {
                    let end = head.flags & END_STREAM != 0;
                    if head.flags & END_HEADERS != 0 {
                        self.headers_out(head.id, end);
                    } else {
                        self.block = Some((head.id, end));
                    }
                }
                CONTINUATION if head.flags & END_HEADERS != 0 => {
                    if let Some((id, end)) = self.block.take() {
                        self.headers_out(id, end);
                    }
                }
                RST_STREAM => self.ended(head.id),
                GOAWAY => self.goaway_bytes = Some(Vec::with_capacity(4)),
                // `h2` sends no payload of its own (`h2conn::Ending` only ends or resets a
                // stream): its zero-length END_STREAM takes no window. Were it ever to send
                // one, the windows are charged for it, so the client's are never exceeded.
                DATA if head.len > 0 => {
                    debug_assert!(
                        false,
                        "h2 sent {} bytes of DATA on stream {}",
                        head.len, head.id
                    );
                    self.connection_window -= head.len as i64;
                    if let Some(&key) = self.ids.get(&head.id) {
                        self.streams[key].window -= head.len as i64;
                    }
                }
                _ => {}
            }
        }
        self.wake_if_marked();
    }

    /// `h2` wrote the response HEADERS of stream `id`; `end`: they end the stream.
    fn headers_out(&mut self, id: u32, end: bool) {
        let Some(&key) = self.ids.get(&id) else {
            return;
        };
        let entry = &mut self.streams[key];
        entry.headers_out = true;
        match entry.token {
            Some(token) => self.mark(Some(token)),
            // A response `h2` gave itself (its bare 431 for a header list over its limit): the
            // stream is over, and no answer will come for it.
            None if end => self.forget_unanswered(key),
            None => {}
        }
    }

    /// Drops the entry `key` of a stream never answered.
    fn forget_unanswered(&mut self, key: usize) {
        let entry = self.streams.remove(key);
        self.ids.remove(&entry.id);
        self.unanswered -= 1;
    }

    /// `h2` said GOAWAY, taking no stream after `last`: it ignores later ones without a
    /// frame (RFC 9113, 6.8), so the wire holds none of them, and lets go of those it held
    /// that `h2` has not answered.
    fn goaway(&mut self, last: u32) {
        let last = self.goaway_last.map_or(last, |l| l.min(last));
        self.goaway_last = Some(last);
        let ignored: Vec<usize> = self
            .streams
            .iter()
            .filter(|(_, e)| e.id > last && e.token.is_none())
            .map(|(key, _)| key)
            .collect();
        for key in ignored {
            self.forget_unanswered(key);
        }
    }

    /// The stream `id` was reset, by either side.
    fn ended(&mut self, id: u32) {
        let Some(&key) = self.ids.get(&id) else {
            return;
        };
        let entry = &mut self.streams[key];
        entry.reset = true;
        match entry.token {
            Some(token) => self.mark(Some(token)),
            // Not answered: nothing will come for it.
            None => self.forget_unanswered(key),
        }
    }

    /// The client opened the stream `id` (its HEADERS are on their way to `h2`).
    fn opened(&mut self, id: u32) {
        if id <= self.last_opened
            || id % 2 == 0
            || self.unanswered >= self.max_unanswered
            || self.goaway_last.is_some_and(|last| id > last)
        {
            return;
        }
        self.last_opened = id;
        let key = self.streams.insert(Entry {
            id,
            window: self.initial_window,
            token: None,
            headers_out: false,
            reset: false,
            waits_connection: false,
            allowance: 0,
        });
        self.ids.insert(id, key);
        self.unanswered += 1;
    }

    /// A control frame from the client, whole: what to do with it.
    fn control(&mut self, head: &Head, payload: &[u8]) -> Verdict {
        match head.kind {
            SETTINGS => {
                if head.flags & ACK == 0 && head.id == 0 && payload.len() % 6 == 0 {
                    for setting in payload.chunks_exact(6) {
                        let value =
                            u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        match u16::from_be_bytes([setting[0], setting[1]]) {
                            // h2 refuses a value over 2³¹−1 and ends the connection; one
                            // that takes a stream's window over it is refused here.
                            0x4 if i64::from(value) <= MAX_WINDOW
                                && !self.initial_window_now(i64::from(value)) =>
                            {
                                return Verdict::Overflow(0);
                            }
                            0x5 if (MIN_FRAME..=MAX_FRAME).contains(&(value as usize)) => {
                                self.max_frame = value as usize;
                            }
                            _ => {}
                        }
                    }
                }
                Verdict::Pass
            }
            RST_STREAM => {
                if payload.len() == 4 {
                    self.ended(head.id);
                }
                Verdict::Pass
            }
            WINDOW_UPDATE => {
                if payload.len() != 4 {
                    return Verdict::Pass;
                }
                let increment = i64::from(
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff,
                );
                if increment == 0 {
                    return Verdict::Pass;
                }
                if head.id == 0 {
                    if self.connection_window + increment > MAX_WINDOW {
                        return Verdict::Overflow(0);
                    }
                    self.connection_window += increment;
                    self.starved_since = None;
                    self.start_round();
                    return Verdict::Apply;
                }
                let Some(&key) = self.ids.get(&head.id) else {
                    return Verdict::Pass;
                };
                let entry = &mut self.streams[key];
                if entry.reset {
                    return Verdict::Pass;
                }
                if entry.window + increment > MAX_WINDOW {
                    return Verdict::Overflow(head.id);
                }
                let was = entry.window;
                entry.window += increment;
                let token = entry.token;
                if was <= 0 {
                    self.mark(token);
                }
                Verdict::Apply
            }
            _ => Verdict::Pass,
        }
    }

    /// Shares what the connection's window holds among the streams waiting for it, in turn
    /// order: each gets an equal share (at least [`MIN_SHARE`], or the whole window if it is
    /// smaller; those the window does not reach stay first in line) and is marked due. So
    /// every stream that has a window of its own progresses whenever the client grants the
    /// connection some, and none is passed over twice in a row. Called when the client grants
    /// the connection window, and after each poll of the connection's due streams (a round
    /// may leave window over: the next round shares it). With no stream waiting, the window
    /// is no longer rationed.
    pub fn start_round(&mut self) {
        if self.connection_window <= 0 {
            return;
        }
        if self.waiting.is_empty() {
            self.rationed = false;
            return;
        }
        let share = (self.connection_window / self.waiting.len() as i64)
            .max(MIN_SHARE.min(self.connection_window));
        let reached = (self.connection_window / share).max(1) as usize;
        let rest = self.waiting.split_off(reached.min(self.waiting.len()));
        for key in std::mem::replace(&mut self.waiting, rest) {
            if let Some(entry) = self.streams.get_mut(key) {
                entry.waits_connection = false;
                entry.allowance = share;
                let token = entry.token;
                self.mark(token);
            }
        }
        self.wake_if_marked();
    }

    /// Since when the connection's window has been at zero with streams waiting for it (the
    /// connection stalls as a whole: its task closes it after the stall time).
    pub fn starved_since(&self) -> Option<tokio::time::Instant> {
        self.starved_since
    }

    /// SETTINGS_INITIAL_WINDOW_SIZE changed: every open stream's window moves by the change.
    /// False (and nothing changed) when that would take a window past 2³¹−1.
    fn initial_window_now(&mut self, value: i64) -> bool {
        let change = value - self.initial_window;
        if change == 0 {
            return true;
        }
        if change > 0
            && self
                .streams
                .iter()
                .any(|(_, e)| e.window + change > MAX_WINDOW)
        {
            return false;
        }
        self.initial_window = value;
        let mut due = Vec::new();
        for (_, entry) in self.streams.iter_mut() {
            let was = entry.window;
            entry.window += change;
            if was <= 0 && entry.window > 0 {
                due.extend(entry.token);
            }
        }
        if !due.is_empty() {
            self.ready.mark(due);
            self.woke = true;
        }
        true
    }
}

/// A client frame's header.
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    id: u32,
}

impl Head {
    fn parse(bytes: &[u8]) -> Head {
        Head {
            len: (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }
}

enum Verdict {
    /// `h2` reads it as it came.
    Pass,
    /// Applied here; `h2` does not see it.
    Apply,
    /// A flow-control error: `h2` reads the frame as it came, then two increments of 2³¹−1
    /// for the window of this stream (0: the connection's), which it must refuse.
    Overflow(u32),
}

/// One stream's side of the wire: its DATA frames go out through it. The answer that holds it
/// releases it with [`StreamOut::release`] when the stream is over (the rest is released with
/// the connection).
pub struct StreamOut {
    /// The stream's entry; none when it was reset before it was answered, or released.
    key: Option<usize>,
}

impl StreamOut {
    /// Writes as much of `data` as the client's windows allow, in frames no larger than it
    /// takes, and takes what was written off `data`.
    pub fn send(&self, state: &mut State, data: &mut Bytes) -> Sent {
        let Some(key) = self.key else {
            return Sent::Reset;
        };
        let boundary = state.at_frame_boundary();
        let entry = &mut state.streams[key];
        if entry.reset {
            return Sent::Reset;
        }
        if !entry.headers_out {
            return Sent::Later;
        }
        if !boundary {
            // Inside one of h2's frames (it wrote part of it): after the rest.
            state.ready.mark(entry.token);
            state.ready.wake_connection();
            return Sent::Later;
        }
        let mut wrote = 0;
        let sent = loop {
            if data.is_empty() {
                break Sent::All;
            }
            if entry.window <= 0 {
                // Its turn at the connection's window ends with its own window: it waits in
                // line again once the client grants it more.
                entry.allowance = 0;
                break Sent::Window;
            }
            let turn = if state.rationed {
                entry.allowance
            } else {
                i64::MAX
            };
            let window = entry.window.min(state.connection_window).min(turn);
            if window <= 0 {
                // The connection's window, or this stream's share of it, is spent: it waits
                // for its turn.
                if !entry.waits_connection {
                    entry.waits_connection = true;
                    state.waiting.push(key);
                }
                if state.connection_window <= 0 {
                    state.rationed = true;
                    state
                        .starved_since
                        .get_or_insert_with(tokio::time::Instant::now);
                }
                break Sent::Connection;
            }
            let n = data.len().min(window as usize).min(state.max_frame);
            let id = entry.id.to_be_bytes();
            state.out.extend_from_slice(&[
                (n >> 16) as u8,
                (n >> 8) as u8,
                n as u8,
                DATA,
                0,
                id[0],
                id[1],
                id[2],
                id[3],
            ]);
            state.out.extend_from_slice(&data[..n]);
            data.advance(n);
            entry.window -= n as i64;
            entry.allowance -= n as i64;
            state.connection_window -= n as i64;
            wrote += n + HEAD_LEN;
        };
        state.budget = state.budget.saturating_sub(wrote);
        sent
    }

    /// True once the stream was reset, by the client or by `h2`.
    pub fn is_reset(&self, state: &State) -> bool {
        match self.key {
            Some(key) => state.streams[key].reset,
            None => true,
        }
    }

    /// The stream is over: its entry goes.
    pub fn release(&mut self, state: &mut State) {
        if let Some(key) = self.key.take() {
            let entry = state.streams.remove(key);
            state.ids.remove(&entry.id);
        }
    }
}

/// The client's bytes on their way to `h2` (see the module's text).
#[derive(Default)]
struct Inbound {
    /// Read, not yet handed on, from `start`.
    buf: Vec<u8>,
    start: usize,
    /// Bytes of the preface still to hand on, once the first read set it.
    preface: Option<usize>,
    /// Bytes of the current frame still to hand on as they are.
    pass: usize,
}

impl Inbound {
    /// Hands on what is read and decided, as much as `out` takes.
    fn filter(&mut self, state: &mut State, out: &mut ReadBuf<'_>) {
        let preface = self.preface.get_or_insert(PREFACE_LEN);
        loop {
            let avail = &self.buf[self.start..];
            if avail.is_empty() || out.remaining() == 0 {
                break;
            }
            let through = if *preface > 0 {
                &mut *preface
            } else {
                &mut self.pass
            };
            if *through > 0 {
                let n = (*through).min(avail.len()).min(out.remaining());
                out.put_slice(&avail[..n]);
                *through -= n;
                self.start += n;
                continue;
            }
            if avail.len() < HEAD_LEN {
                break;
            }
            let head = Head::parse(avail);
            let whole = HEAD_LEN + head.len;
            match head.kind {
                SETTINGS | RST_STREAM | WINDOW_UPDATE if head.len <= LARGEST_READ => {
                    if avail.len() < whole {
                        break;
                    }
                    match state.control(&head, &avail[HEAD_LEN..whole]) {
                        Verdict::Pass => self.pass = whole,
                        Verdict::Apply => self.start += whole,
                        Verdict::Overflow(id) => {
                            let mut update = [
                                0,
                                0,
                                4,
                                WINDOW_UPDATE,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0x7f,
                                0xff,
                                0xff,
                                0xff,
                            ];
                            update[5..9].copy_from_slice(&id.to_be_bytes());
                            let end = self.start + whole;
                            self.buf.splice(end..end, update.into_iter().chain(update));
                            self.pass = whole + 2 * update.len();
                        }
                    }
                }
                HEADERS => {
                    state.opened(head.id);
                    self.pass = whole;
                }
                _ => self.pass = whole,
            }
        }
        state.wake_if_marked();
    }

    /// Room for one more read, keeping what is not handed on (a control frame read whole
    /// grows the buffer over a few reads).
    fn make_room(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_BYTES);
    }
}

/// The connection's I/O as `h2` sees it (see the module's text).
pub struct Splice<I> {
    io: Arc<Mutex<I>>,
    wire: Arc<Wire>,
    inbound: Inbound,
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Splice<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let before = out.filled().len();
            this.inbound.filter(&mut this.wire.state.lock(), out);
            if out.filled().len() > before || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.inbound.make_room();
            let buf = &mut this.inbound.buf;
            let len = buf.len();
            buf.resize(buf.capacity(), 0);
            let mut read = ReadBuf::new(&mut buf[len..]);
            let polled = Pin::new(&mut *this.io.lock()).poll_read(cx, &mut read);
            let got = read.filled().len();
            buf.truncate(len + got);
            match polled {
                Poll::Ready(Ok(())) if got == 0 => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Splice<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.wire.state.lock();
        if state.out.len() - state.written >= OUT_LIMIT {
            let mut io = self.io.lock();
            if let Poll::Ready(Err(e)) = state.write_to(&mut *io, cx) {
                return Poll::Ready(Err(e));
            }
            if state.out.len() - state.written >= OUT_LIMIT {
                return Poll::Pending;
            }
        }
        state.h2_wrote(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.wire.state.lock();
        let mut io = self.io.lock();
        state.write_to(&mut *io, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.wire.state.lock();
        let mut io = self.io.lock();
        ready!(state.write_to(&mut *io, cx))?;
        Pin::new(&mut *io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::{counting_waker, WakeCount};

    pub(super) fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub(super) fn window_update(id: u32, increment: u32) -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, id, &increment.to_be_bytes())
    }

    pub(super) fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (id, value) in pairs {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &payload)
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A client's first bytes: the preface, a SETTINGS frame with `pairs` (when there are
    /// some), and a request's HEADERS on each stream of `ids`.
    pub(super) fn opening(pairs: &[(u16, u32)], ids: &[u32]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        if !pairs.is_empty() {
            bytes.extend(settings(pairs));
        }
        for &id in ids {
            bytes.extend(frame(HEADERS, END_HEADERS, id, b"h"));
        }
        bytes
    }

    pub(super) fn wire() -> (Arc<Wire>, Arc<Ready>, Arc<WakeCount>) {
        let (count, waker) = counting_waker();
        let ready = Ready::new(waker);
        (Wire::new(ready.clone(), 8), ready, count)
    }

    pub(super) fn due(ready: &Ready) -> Vec<usize> {
        let mut due = Vec::new();
        ready.take_into(&mut due);
        due
    }

    /// Runs the client's bytes through the inbound filter, `step` bytes at a time, and returns
    /// what `h2` reads.
    pub(super) fn inbound(wire: &Wire, bytes: &[u8], step: usize) -> Vec<u8> {
        let mut filter = Inbound::default();
        if !bytes.starts_with(PREFACE) {
            // Later bytes of a connection whose preface went by.
            filter.preface = Some(0);
        }
        let mut seen = Vec::new();
        for chunk in bytes.chunks(step) {
            filter.make_room();
            filter.buf.extend_from_slice(chunk);
            loop {
                let mut space = [0u8; 7];
                let mut out = ReadBuf::new(&mut space);
                filter.filter(&mut wire.state.lock(), &mut out);
                if out.filled().is_empty() {
                    break;
                }
                seen.extend_from_slice(out.filled());
            }
        }
        seen
    }

    #[test]
    fn window_updates_are_kept_here_and_the_rest_reaches_h2_as_it_came() {
        let opening = opening(&[(0x4, 100), (0x5, 20_000)], &[1]);
        let kept = [window_update(0, 1_000), window_update(1, 50)].concat();
        let errors = [
            window_update(1, 0),
            frame(WINDOW_UPDATE, 0, 1, &[0, 0, 1]),
            window_update(3, 10),
        ]
        .concat();
        let ping = frame(0x6, 0, 0, &[7; 8]);
        let client = [opening.clone(), kept, errors.clone(), ping.clone()].concat();
        for step in [1, 5, 9, client.len()] {
            let (wire, _, _) = wire();
            let seen = inbound(&wire, &client, step);
            assert_eq!(
                seen,
                [opening.clone(), errors.clone(), ping.clone()].concat()
            );
            let state = wire.state.lock();
            assert_eq!(state.connection_window, DEFAULT_WINDOW + 1_000);
            assert_eq!(state.max_frame, 20_000);
            let key = state.ids[&1];
            assert_eq!(state.streams[key].window, 150);
        }
    }

    #[test]
    fn an_overflowing_window_update_reaches_h2_as_one_it_must_refuse() {
        let (wire, _, _) = wire();
        let room = (MAX_WINDOW - DEFAULT_WINDOW) as u32;
        let client = [
            opening(&[], &[1]),
            window_update(0, room),
            window_update(0, 1),
            window_update(1, room),
            window_update(1, 2),
        ]
        .concat();
        let seen = inbound(&wire, &client, 4);
        let max = 0x7fff_ffff;
        let expected = [
            opening(&[], &[1]),
            window_update(0, 1),
            window_update(0, max),
            window_update(0, max),
            window_update(1, 2),
            window_update(1, max),
            window_update(1, max),
        ]
        .concat();
        assert_eq!(seen, expected);
        assert_eq!(wire.state.lock().connection_window, MAX_WINDOW);
    }

    #[test]
    fn settings_that_overflow_a_stream_window_reach_h2_with_a_connection_error() {
        let (wire, _, _) = wire();
        let opening = opening(&[], &[1]);
        let fill = window_update(1, (MAX_WINDOW - DEFAULT_WINDOW) as u32);
        let raise = settings(&[(0x4, DEFAULT_WINDOW as u32 + 1)]);
        let seen = inbound(&wire, &[opening.clone(), fill, raise.clone()].concat(), 7);
        let max = window_update(0, 0x7fff_ffff);
        assert_eq!(seen, [opening, raise, max.clone(), max].concat());
        let state = wire.state.lock();
        assert_eq!(state.initial_window, DEFAULT_WINDOW, "not applied");
        assert_eq!(state.streams[state.ids[&1]].window, MAX_WINDOW);
    }

    /// h2's bytes as it writes them: the response HEADERS of stream `id`, in two writes.
    pub(super) fn h2_writes_headers(wire: &Wire, id: u32) {
        let headers = frame(HEADERS, END_HEADERS, id, &[0x88]);
        let mut state = wire.state.lock();
        state.h2_wrote(&headers[..4]);
        assert!(!state.at_frame_boundary());
        state.h2_wrote(&headers[4..]);
        assert!(state.at_frame_boundary());
    }

    #[test]
    fn data_goes_out_after_its_headers_in_frames_the_windows_allow() {
        let (wire, ready, woken) = wire();
        let client = opening(&[(0x4, 10)], &[1]);
        inbound(&wire, &client, client.len());
        let mut out = wire.attach(1, 7);
        let mut data = Bytes::from_static(b"0123456789abcdef");
        assert_eq!(
            out.send(&mut wire.lock(), &mut data),
            Sent::Later,
            "no HEADERS yet"
        );
        assert!(wire.state.lock().out.is_empty());
        h2_writes_headers(&wire, 1);
        assert_eq!(due(&ready), vec![7], "due once its HEADERS are out");
        assert_eq!(woken.get(), 1);
        assert_eq!(out.send(&mut wire.lock(), &mut data), Sent::Window);
        assert_eq!(&data[..], b"abcdef", "ten bytes of window");
        let written = wire.state.lock().out.clone();
        let headers_len = HEAD_LEN + 1;
        assert_eq!(
            &written[headers_len..],
            &frame(DATA, 0, 1, b"0123456789")[..]
        );
        // The client grants four more: due, and four bytes go.
        inbound(&wire, &window_update(1, 4), 13);
        assert_eq!(due(&ready), vec![7]);
        assert_eq!(out.send(&mut wire.lock(), &mut data), Sent::Window);
        assert_eq!(&data[..], b"ef");
        // A larger initial window grants the rest.
        inbound(&wire, &settings(&[(0x4, 100)]), 15);
        assert_eq!(due(&ready), vec![7]);
        assert_eq!(out.send(&mut wire.lock(), &mut data), Sent::All);
        assert!(data.is_empty());
        out.release(&mut wire.lock());
        assert_eq!(wire.held(), 0, "an answered stream is gone with its answer");
    }

    #[test]
    fn a_window_made_negative_by_settings_needs_more_than_it_lost() {
        let (wire, ready, _) = wire();
        let client = opening(&[(0x4, 3)], &[1]);
        inbound(&wire, &client, 64);
        let out = wire.attach(1, 0);
        h2_writes_headers(&wire, 1);
        let mut data = Bytes::from_static(b"abcdef");
        assert_eq!(out.send(&mut wire.lock(), &mut data), Sent::Window);
        assert_eq!(&data[..], b"def");
        inbound(&wire, &settings(&[(0x4, 2)]), 64);
        inbound(&wire, &window_update(1, 1), 64);
        due(&ready);
        assert_eq!(
            out.send(&mut wire.lock(), &mut data),
            Sent::Window,
            "window 0"
        );
        inbound(&wire, &window_update(1, 1), 64);
        assert_eq!(out.send(&mut wire.lock(), &mut data), Sent::Window);
        assert_eq!(&data[..], b"ef", "one byte of window");
    }

    #[test]
    fn the_connection_window_wakes_the_streams_that_wait_for_it() {
        let (wire, ready, _) = wire();
        let client = opening(&[(0x4, 1 << 20)], &[1, 3]);
        inbound(&wire, &client, client.len());
        let (a, b) = (wire.attach(1, 10), wire.attach(3, 11));
        h2_writes_headers(&wire, 1);
        h2_writes_headers(&wire, 3);
        due(&ready);
        let mut big = Bytes::from(vec![b'x'; 70_000]);
        assert_eq!(a.send(&mut wire.lock(), &mut big), Sent::Connection);
        assert_eq!(big.len(), 70_000 - 65_535);
        let frames = wire.state.lock().out.len() - 2 * (HEAD_LEN + 1);
        assert_eq!(
            frames,
            65_535 + 4 * HEAD_LEN,
            "frames of at most 16,384 bytes"
        );
        let mut small = Bytes::from_static(b"y");
        assert_eq!(b.send(&mut wire.lock(), &mut small), Sent::Connection);
        assert_eq!(
            b.send(&mut wire.lock(), &mut small),
            Sent::Connection,
            "listed once"
        );
        inbound(&wire, &window_update(0, 100_000), 64);
        assert_eq!(due(&ready), vec![10, 11]);
    }

    #[test]
    fn a_scarce_connection_window_is_shared_in_turns() {
        let (wire, ready, _) = wire();
        let client = opening(&[(0x4, 1 << 20)], &[1, 3, 5]);
        inbound(&wire, &client, client.len());
        let outs = [wire.attach(1, 10), wire.attach(3, 11), wire.attach(5, 12)];
        for id in [1, 3, 5] {
            h2_writes_headers(&wire, id);
        }
        due(&ready);
        let mut data: Vec<Bytes> = (0..3).map(|_| Bytes::from(vec![b'x'; 100_000])).collect();
        // The first takes the connection's whole first window; all three then wait in turn.
        for (out, data) in outs.iter().zip(&mut data) {
            assert_eq!(out.send(&mut wire.lock(), data), Sent::Connection);
        }
        assert_eq!(data[0].len(), 100_000 - 65_535);
        let sent =
            |data: &[Bytes]| -> Vec<usize> { data.iter().map(|d| 100_000 - d.len()).collect() };
        // A grant of 3,000 goes to all three, 1,000 each, in turn order.
        inbound(&wire, &window_update(0, 3_000), 64);
        assert_eq!(due(&ready), vec![10, 11, 12]);
        for (out, data) in outs.iter().zip(&mut data) {
            assert_eq!(out.send(&mut wire.lock(), data), Sent::Connection);
        }
        assert_eq!(sent(&data), vec![65_535 + 1_000, 1_000, 1_000]);
        // 600: a share is at least 512 bytes, so the first in line gets 512; the 88 left over
        // go to the next in line once the round is over; the third is first the next time.
        inbound(&wire, &window_update(0, 600), 64);
        assert_eq!(due(&ready), vec![10]);
        assert_eq!(
            outs[0].send(&mut wire.lock(), &mut data[0]),
            Sent::Connection
        );
        wire.lock().start_round();
        assert_eq!(due(&ready), vec![11]);
        assert_eq!(
            outs[1].send(&mut wire.lock(), &mut data[1]),
            Sent::Connection
        );
        wire.lock().start_round();
        assert_eq!(due(&ready), Vec::<usize>::new(), "the window is spent");
        assert_eq!(sent(&data), vec![65_535 + 1_512, 1_088, 1_000]);
        inbound(&wire, &window_update(0, 512), 64);
        assert_eq!(due(&ready), vec![12], "the one passed over goes first");
        assert!(
            wire.lock().starved_since().is_none(),
            "a grant ends a connection stall"
        );
        assert_eq!(
            outs[2].send(&mut wire.lock(), &mut data[2]),
            Sent::Connection
        );
        assert_eq!(sent(&data), vec![65_535 + 1_512, 1_088, 1_512]);
        assert!(
            wire.lock().starved_since().is_some(),
            "the connection's window is at zero again"
        );
        inbound(&wire, &window_update(0, 1 << 20), 64);
        assert!(wire.lock().starved_since().is_none());
    }

    #[test]
    fn resets_end_streams_and_free_unanswered_ones() {
        let (wire, ready, _) = wire();
        let mut client = opening(&[], &[1, 3, 5]);
        client.extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
        client.extend(frame(RST_STREAM, 0, 5, &8u32.to_be_bytes()));
        let out = wire.attach(3, 2);
        assert_eq!(
            out.send(&mut wire.lock(), &mut Bytes::from_static(b"a")),
            Sent::Reset,
            "never opened"
        );
        let seen = inbound(&wire, &client, 10);
        assert_eq!(seen, client, "resets reach h2");
        assert_eq!(wire.held(), 1, "the unanswered streams reset are gone");
        let mut three = wire.attach(3, 2);
        h2_writes_headers(&wire, 3);
        due(&ready);
        // h2 resets stream 3 (its own RST_STREAM on the way out).
        wire.state
            .lock()
            .h2_wrote(&frame(RST_STREAM, 0, 3, &2u32.to_be_bytes()));
        assert_eq!(due(&ready), vec![2]);
        assert!(three.is_reset(&wire.lock()));
        assert_eq!(
            three.send(&mut wire.lock(), &mut Bytes::from_static(b"a")),
            Sent::Reset
        );
        assert!(out.is_reset(&wire.lock()));
        three.release(&mut wire.lock());
        assert_eq!(wire.held(), 0);
    }

    #[test]
    fn data_never_goes_inside_a_header_block() {
        let (wire, ready, _) = wire();
        let client = opening(&[], &[1, 3]);
        inbound(&wire, &client, 64);
        let one = wire.attach(1, 0);
        let _three = wire.attach(3, 1);
        h2_writes_headers(&wire, 1);
        due(&ready);
        // Stream 3's header block in two frames, the second one not yet written.
        wire.state.lock().h2_wrote(&frame(HEADERS, 0, 3, b"ab"));
        assert_eq!(
            one.send(&mut wire.lock(), &mut Bytes::from_static(b"x")),
            Sent::Later
        );
        assert_eq!(due(&ready), vec![0], "due again");
        wire.state
            .lock()
            .h2_wrote(&frame(CONTINUATION, END_HEADERS, 3, b"cd"));
        assert_eq!(due(&ready), vec![1]);
        assert_eq!(
            one.send(&mut wire.lock(), &mut Bytes::from_static(b"x")),
            Sent::All
        );
    }

    #[test]
    fn a_stream_h2_answers_itself_is_forgotten() {
        let (wire, _, _) = wire();
        inbound(&wire, &opening(&[], &[1, 3, 5]), 64);
        assert_eq!(wire.held(), 3);
        // h2's own 431 on stream 1 (HEADERS with END_STREAM), and on stream 3 in a header
        // block of two frames.
        let mut state = wire.state.lock();
        state.h2_wrote(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x8d]));
        state.h2_wrote(&frame(HEADERS, END_STREAM, 3, &[0x8d]));
        state.h2_wrote(&frame(CONTINUATION, END_HEADERS, 3, &[]));
        drop(state);
        assert_eq!(wire.held(), 1, "only stream 5 is left");
        // Answered streams are released by their answers, not by their HEADERS.
        let _five = wire.attach(5, 0);
        wire.state
            .lock()
            .h2_wrote(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &[0x88]));
        assert_eq!(wire.held(), 1);
        assert_eq!(wire.state.lock().unanswered, 0);
    }

    #[test]
    fn unanswered_streams_held_are_bounded() {
        let (wire, _, _) = wire();
        let ids: Vec<u32> = (1..200).step_by(2).collect();
        let client = opening(&[], &ids);
        inbound(&wire, &client, 100);
        assert_eq!(wire.held(), 8 + 16);
    }
}
