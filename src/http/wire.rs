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

//!
//! Layout: this module, the shared state; `frame`, constants and frame headers; `inbound`, the
//! client's frames on their way to `h2` (WINDOW_UPDATE and SETTINGS applied); `outbound`,
//! `h2`'s frames followed, the streams' DATA placed and the connection's window shared out in
//! rounds; `windows`, the window arithmetic as pure functions, which both use.

mod frame;
mod inbound;
mod outbound;
mod windows;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use parking_lot::{Mutex, MutexGuard};
use slab::Slab;
use tokio::io::AsyncWrite;

use crate::wake::Ready;
use frame::*;
pub use frame::{LARGEST_READ, WRITE_BYTES};
use inbound::Inbound;
pub use outbound::StreamOut;

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
    ids: Ids,
    last_opened: u32,
    /// Streams not answered yet that may be held (more are left to `h2`, which refuses them).
    max_unanswered: usize,
    /// The last stream `h2`'s GOAWAY said it takes (it ignores later ones, with no frame), and
    /// the start of a GOAWAY's payload being read from `h2`'s output.
    goaway_last: Option<u32>,
    goaway_bytes: Option<Vec<u8>>,
    unanswered: usize,
    /// The connection's task, while the way in holds back a new stream's HEADERS because
    /// [`AHEAD`] streams wait in `h2` to be accepted: woken when one is.
    held_back: Option<Waker>,
    /// `h2` had no stream to hand out while the way in held one back (the count was off):
    /// the next new stream goes through all the same.
    let_one_through: bool,
    /// Streams waiting for the connection's window, in turn order.
    waiting: Vec<usize>,
    /// The connection's window ran out with streams wanting it: until they are all served,
    /// it is shared out in rounds (see [`State::start_round`]).
    rationed: bool,
    /// Since when streams have waited for a connection window at zero (a connection stall).
    starved_since: Option<tokio::time::Instant>,
    /// Streams that found `h2` inside a frame (it wrote part of one): due again once the
    /// frame is whole, not before (polling them in between would spin while `h2` waits for
    /// the socket).
    after_frame: Vec<usize>,
    ready: Arc<Ready>,
    /// A stream was marked due while `h2` wrote or read: wake the connection's task.
    woke: bool,
    /// `h2` wrote the response HEADERS of a stream now due to write its first DATA: `h2`'s
    /// flush leaves them to the connection's task, which writes them with that DATA (one
    /// write, one TLS record, one wake-up of the client, where there were two). Cleared by a
    /// write.
    headers_wait: bool,
}

/// The connection's streams by HTTP/2 id: their keys in the slab, sorted by id (ids only grow,
/// so a new one goes at the end). Eight bytes a stream, where a hash map took about 34.
#[derive(Default)]
struct Ids(Vec<(u32, u32)>);

impl Ids {
    /// The key of stream `id`.
    fn get(&self, id: u32) -> Option<usize> {
        let at = self.0.binary_search_by_key(&id, |&(id, _)| id).ok()?;
        Some(self.0[at].1 as usize)
    }

    /// Stream `id` has entry `key` (at most one entry per id; a connection's keys are below
    /// its few hundred streams).
    fn insert(&mut self, id: u32, key: usize) {
        let key = key as u32;
        match self.0.binary_search_by_key(&id, |&(id, _)| id) {
            Ok(at) => self.0[at].1 = key,
            Err(at) => self.0.insert(at, (id, key)),
        }
    }

    /// Stream `id` has no entry any more.
    fn remove(&mut self, id: u32) {
        if let Ok(at) = self.0.binary_search_by_key(&id, |&(id, _)| id) {
            self.0.remove(at);
        }
    }
}

struct Entry {
    id: u32,
    window: i64,
    /// The stream's token on its connection, once it is answered (a `u32`, like the entry's
    /// key: every open stream has an entry).
    token: Option<u32>,
    headers_out: bool,
    reset: bool,
    waits_connection: bool,
    /// What the stream may still write of the connection's window in this round, while the
    /// window is rationed.
    allowance: i64,
}

impl Entry {
    /// The stream's token on its connection, once it is answered.
    fn token(&self) -> Option<usize> {
        self.token.map(|token| token as usize)
    }
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
                ids: Ids::default(),
                last_opened: 0,
                max_unanswered: max_streams as usize + 16,
                goaway_last: None,
                goaway_bytes: None,
                unanswered: 0,
                held_back: None,
                let_one_through: false,
                waiting: Vec::new(),
                rationed: false,
                starved_since: None,
                after_frame: Vec::new(),
                ready,
                woke: false,
                headers_wait: false,
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
        let key = match state.ids.get(id) {
            Some(key) => {
                state.answered_one();
                state.streams[key].token = Some(token as u32);
                u32::try_from(key).ok()
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

    /// `h2` had no stream to hand out: if the way in was holding a new stream back for it,
    /// that one goes through (the count of streams in `h2` was off), and true is returned:
    /// the caller polls `h2` again.
    pub fn nothing_to_accept(&self) -> bool {
        let mut state = self.state.lock();
        if state.held_back.take().is_none() {
            return false;
        }
        state.let_one_through = true;
        true
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
        Self::write_out(&mut state, &mut io, cx)
    }

    /// Before the streams write: writes what is waiting only if they have no room left.
    /// Otherwise it goes out with what they write now, in the same write (`h2`'s HEADERS with
    /// a new stream's first DATA, say).
    pub fn poll_make_room(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.wire.state.lock();
        if state.room() {
            return Poll::Ready(Ok(()));
        }
        let mut io = self.io.lock();
        Self::write_out(&mut state, &mut io, cx)
    }

    fn write_out(state: &mut State, io: &mut I, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = state.write_to(io, cx);
        if let Poll::Ready(Ok(())) = done {
            state.budget = WRITE_BYTES;
        }
        done
    }
}

/// The output room a connection keeps after a write of `wrote` bytes: about that write's
/// size (the next power of two, as the buffer grew to it), at least [`KEPT_ROOM_MIN`]. So a
/// connection holds about what its recent writes need: one that wrote a burst and now writes
/// an event or a heartbeat at a time keeps a few KiB, not its largest write's room, and one
/// that writes every record for many streams keeps its size and does not grow it again each
/// time.
fn kept_room(wrote: usize) -> usize {
    wrote.next_power_of_two().max(KEPT_ROOM_MIN)
}

/// The least output room a connection keeps between writes.
const KEPT_ROOM_MIN: usize = 4 << 10;

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
        let wrote = self.out.len();
        self.out.clear();
        self.written = 0;
        self.headers_wait = false;
        let keep = kept_room(wrote);
        if wrote > 0 && self.out.capacity() > 2 * keep {
            // The room of a burst (a catch-up, a resume's first frames, h2's HEADERS for many
            // streams) is not kept once the writes are small again.
            self.out.shrink_to(keep);
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
}

/// The connection's I/O as `h2` sees it (see the module's text).
pub struct Splice<I> {
    io: Arc<Mutex<I>>,
    wire: Arc<Wire>,
    inbound: Inbound,
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

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
        feed(wire, &mut filter, bytes, step)
    }

    /// Runs more of the client's bytes through `filter`, as [`inbound`] does.
    pub(super) fn feed(wire: &Wire, filter: &mut Inbound, bytes: &[u8], step: usize) -> Vec<u8> {
        let mut seen = Vec::new();
        // No bytes: what the filter holds is looked at again.
        let chunks: Vec<&[u8]> = match bytes.is_empty() {
            true => vec![bytes],
            false => bytes.chunks(step).collect(),
        };
        for chunk in chunks {
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

    /// Writes `bytes` through the connection's output, whole, and returns the room it keeps.
    fn write_through(state: &mut State, bytes: usize) -> usize {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        state.out.resize(bytes, 0);
        let mut sink = Vec::new();
        assert!(state.write_to(&mut sink, &mut cx).is_ready());
        assert_eq!(sink.len(), bytes);
        state.out.capacity()
    }

    #[test]
    fn a_burst_leaves_no_room_behind_once_the_writes_are_small_again() {
        let (wire, _, _) = wire();
        let mut state = wire.state.lock();
        // Every record for many streams: the room grows once and stays.
        let steady = write_through(&mut state, 40_000);
        assert!(steady >= 40_000);
        for _ in 0..3 {
            assert_eq!(write_through(&mut state, 40_000), steady);
            assert_eq!(write_through(&mut state, 30_000), steady);
        }
        // A catch-up's burst, then an event at a time: a few KiB are kept, not the burst's.
        assert!(write_through(&mut state, 300_000) >= 300_000);
        assert!(write_through(&mut state, 200) <= 2 * KEPT_ROOM_MIN);
        // A write with nothing to write (the task polled with nothing due) changes nothing.
        let before = write_through(&mut state, 40_000);
        assert_eq!(write_through(&mut state, 0), before);
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
            let key = state.ids.get(1).unwrap();
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
        assert_eq!(state.streams[state.ids.get(1).unwrap()].window, MAX_WINDOW);
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
    fn a_stream_that_finds_h2_inside_a_frame_is_due_once_the_frame_is_whole_and_not_before() {
        let (wire, ready, woken) = wire();
        let client = opening(&[], &[1, 3]);
        inbound(&wire, &client, client.len());
        let out = wire.attach(1, 7);
        wire.attach(3, 9);
        h2_writes_headers(&wire, 1);
        due(&ready);
        let before = woken.get();
        // h2 has written half of stream 3's HEADERS (it waits for the socket, say).
        let headers = frame(HEADERS, END_HEADERS, 3, &[0x88]);
        wire.lock().h2_wrote(&headers[..5]);
        let mut data = Bytes::from_static(b"event");
        assert_eq!(out.send(&mut wire.lock(), &mut data), Sent::Later);
        assert!(due(&ready).is_empty(), "not due while the frame is open");
        assert_eq!(woken.get(), before, "no wake-up to spin on");
        wire.lock().h2_wrote(&headers[5..]);
        let mut now_due = due(&ready);
        now_due.sort();
        assert_eq!(now_due, vec![7, 9], "stream 1 again, and 3 for its HEADERS");
        assert_eq!(woken.get(), before + 1);
        assert_eq!(out.send(&mut wire.lock(), &mut data), Sent::All);
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

    /// What the client can read now, without waiting.
    fn readable(client: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut got = Vec::new();
        loop {
            let mut space = [0u8; 256];
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut *client).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    got.extend_from_slice(buf.filled())
                }
                _ => return got,
            }
        }
    }

    #[tokio::test]
    async fn a_new_streams_headers_go_out_with_its_first_data_in_one_write() {
        let (wire, ready, _) = wire();
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut splice, link) = wire.splice(server);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        client.write_all(&opening(&[], &[1])).await.unwrap();
        assert_eq!(read_all(&mut splice, &mut cx), opening(&[], &[1]));
        let mut out = wire.attach(1, 7);
        // `h2` writes the response HEADERS and flushes: they wait for the stream's DATA.
        let headers = frame(HEADERS, END_HEADERS, 1, &[0x88]);
        let wrote = Pin::new(&mut splice).poll_write(&mut cx, &headers);
        assert!(matches!(wrote, Poll::Ready(Ok(n)) if n == headers.len()));
        assert!(Pin::new(&mut splice).poll_flush(&mut cx).is_ready());
        assert_eq!(due(&ready), vec![7], "the stream is due for its DATA");
        assert!(readable(&mut client).is_empty(), "held for the DATA");
        // The connection's task: nothing is written before the streams while they have room;
        // the stream writes; then one write takes both.
        assert!(link.poll_make_room(&mut cx).is_ready());
        assert!(readable(&mut client).is_empty());
        let mut data = Bytes::from_static(b"data: x\n\n");
        assert_eq!(out.send(&mut wire.lock(), &mut data), Sent::All);
        assert!(link.poll_write_out(&mut cx).is_ready());
        let both = [headers, frame(DATA, 0, 1, b"data: x\n\n")].concat();
        assert_eq!(readable(&mut client), both);
        // After that write, `h2`'s flushes write at once again (a PING's answer, say).
        let pong = frame(0x6, 0x1, 0, &[0; 8]);
        assert!(Pin::new(&mut splice).poll_write(&mut cx, &pong).is_ready());
        assert!(Pin::new(&mut splice).poll_flush(&mut cx).is_ready());
        assert_eq!(readable(&mut client), pong);
        out.release(&mut wire.lock());
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
        assert!(due(&ready).is_empty(), "due again only after the block");
        wire.state
            .lock()
            .h2_wrote(&frame(CONTINUATION, END_HEADERS, 3, b"cd"));
        let mut now_due = due(&ready);
        now_due.sort();
        assert_eq!(now_due, vec![0, 1]);
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
        let mut filter = Inbound::default();
        feed(&wire, &mut filter, &client, 100);
        assert_eq!(wire.held(), AHEAD, "the others wait on the way in");
        // Were the count of streams in `h2` off, each new one would go through in turn: the
        // wire still holds no more than its bound, and leaves the rest to `h2`.
        for _ in 0..100 {
            wire.state.lock().held_back = Some(Waker::noop().clone());
            assert!(wire.nothing_to_accept());
            feed(&wire, &mut filter, &[], 100);
        }
        assert_eq!(wire.held(), 8 + 16);
    }

    /// Polls `splice` (as `h2` reads) until it is pending: what it handed on.
    fn read_all<I: AsyncRead + AsyncWrite + Unpin>(
        splice: &mut Splice<I>,
        cx: &mut Context<'_>,
    ) -> Vec<u8> {
        let mut passed = Vec::new();
        loop {
            let mut space = [0u8; 64];
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut *splice).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => panic!("the client went away"),
                Poll::Ready(Ok(())) => passed.extend_from_slice(buf.filled()),
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => return passed,
            }
        }
    }

    #[tokio::test]
    async fn new_streams_wait_on_the_way_in_until_h2_hands_out_those_it_holds() {
        let (wire, _, _) = wire();
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut splice, _link) = wire.splice(server);
        let (task, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        // A page's 21 EventSources reconnect at once, then the client pings.
        let ids: Vec<u32> = (1..=41).step_by(2).collect();
        let ping = frame(0x6, 0, 0, &[0; 8]);
        client
            .write_all(&[opening(&[], &ids), ping.clone()].concat())
            .await
            .unwrap();
        assert_eq!(read_all(&mut splice, &mut cx), opening(&[], &ids[..AHEAD]));
        assert_eq!(task.get(), 0);
        // The task accepts one: it is woken, and `h2` reads one more stream.
        let _first = wire.attach(ids[0], 0);
        assert_eq!(task.get(), 1, "woken once a stream is accepted");
        let next = frame(HEADERS, END_HEADERS, ids[AHEAD], b"h");
        assert_eq!(read_all(&mut splice, &mut cx), next);
        // `h2` answers one itself (a reset): one more.
        wire.state.lock().ended(ids[1]);
        assert_eq!(task.get(), 2);
        let next = frame(HEADERS, END_HEADERS, ids[AHEAD + 1], b"h");
        assert_eq!(read_all(&mut splice, &mut cx), next);
        // `h2` finds nothing to hand out while one is held back: it goes through.
        assert!(wire.nothing_to_accept());
        let next = frame(HEADERS, END_HEADERS, ids[AHEAD + 2], b"h");
        assert_eq!(read_all(&mut splice, &mut cx), next);
        // The rest, and the PING after them, once the task accepts.
        for &id in &ids[2..] {
            wire.attach(id, 0);
        }
        let rest: Vec<u8> = ids[AHEAD + 3..]
            .iter()
            .flat_map(|&id| frame(HEADERS, END_HEADERS, id, b"h"))
            .chain(ping)
            .collect();
        assert_eq!(read_all(&mut splice, &mut cx), rest);
        assert!(!wire.nothing_to_accept(), "nothing held back");
    }
}
