//! The way in: the client's bytes on their way to `h2`, read frame by frame; SETTINGS,
//! RST_STREAM and new streams noted, WINDOW_UPDATEs applied here (see the module's text).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::*;
use super::windows::{granted, initial_change};
use super::{Entry, Splice, State};

impl State {
    /// Whether a HEADERS frame on stream `id` opens a stream the wire would hold.
    fn opens(&self, id: u32) -> bool {
        id > self.last_opened
            && id % 2 == 1
            && self.unanswered < self.max_unanswered
            && self.goaway_last.is_none_or(|last| id <= last)
    }

    /// Whether the way in holds back the HEADERS of a new stream: [`AHEAD`] streams wait in
    /// `h2` for the connection's task to accept them.
    fn holds_back(&mut self) -> bool {
        if self.unanswered < AHEAD {
            return false;
        }
        !std::mem::take(&mut self.let_one_through)
    }

    /// A stream the wire held unanswered was answered (or is gone): a new stream held back
    /// for it may go on to `h2`.
    pub(super) fn answered_one(&mut self) {
        self.unanswered -= 1;
        if self.unanswered < AHEAD {
            if let Some(task) = self.held_back.take() {
                task.wake();
            }
        }
    }

    /// The client opened the stream `id` (its HEADERS are on their way to `h2`).
    pub(super) fn opened(&mut self, id: u32) {
        if !self.opens(id) {
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

    /// SETTINGS_INITIAL_WINDOW_SIZE changed: every open stream's window moves by the change.
    /// False (and nothing changed) when that would take a window past 2³¹−1.
    pub(super) fn initial_window_now(&mut self, value: i64) -> bool {
        let largest = self.streams.iter().map(|(_, e)| e.window).max();
        let Some(change) = initial_change(self.initial_window, value, largest) else {
            return false;
        };
        if change == 0 {
            return true;
        }
        self.initial_window = value;
        let mut due = Vec::new();
        for (_, entry) in self.streams.iter_mut() {
            let was = entry.window;
            entry.window += change;
            if was <= 0 && entry.window > 0 {
                due.extend(entry.token());
            }
        }
        if !due.is_empty() {
            self.ready.mark(due);
            self.woke = true;
        }
        true
    }

    /// A control frame from the client, whole: what to do with it.
    pub(super) fn control(&mut self, head: &Head, payload: &[u8]) -> Verdict {
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
                    let Some(window) = granted(self.connection_window, increment) else {
                        return Verdict::Overflow(0);
                    };
                    self.connection_window = window;
                    self.starved_since = None;
                    self.start_round();
                    return Verdict::Apply;
                }
                let Some(key) = self.ids.get(head.id) else {
                    return Verdict::Pass;
                };
                let entry = &mut self.streams[key];
                if entry.reset {
                    return Verdict::Pass;
                }
                let Some(window) = granted(entry.window, increment) else {
                    return Verdict::Overflow(head.id);
                };
                let was = std::mem::replace(&mut entry.window, window);
                let token = entry.token();
                if was <= 0 {
                    self.mark(token);
                }
                Verdict::Apply
            }
            _ => Verdict::Pass,
        }
    }
}

pub(super) enum Verdict {
    /// `h2` reads it as it came.
    Pass,
    /// Applied here; `h2` does not see it.
    Apply,
    /// A flow-control error: `h2` reads the frame as it came, then two increments of 2³¹−1
    /// for the window of this stream (0: the connection's), which it must refuse.
    Overflow(u32),
}

/// The client's bytes on their way to `h2` (see the module's text).
#[derive(Default)]
pub(super) struct Inbound {
    /// Read, not yet handed on, from `start`.
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    /// Bytes of the preface still to hand on, once the first read set it.
    pub(super) preface: Option<usize>,
    /// Bytes of the current frame still to hand on as they are.
    pub(super) pass: usize,
    /// The last filter stopped at a new stream's HEADERS held back (see [`AHEAD`]).
    pub(super) holding: bool,
}

impl Inbound {
    /// Hands on what is read and decided, as much as `out` takes.
    pub(super) fn filter(&mut self, state: &mut State, out: &mut ReadBuf<'_>) {
        self.holding = false;
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
                HEADERS if state.opens(head.id) && state.holds_back() => {
                    self.holding = true;
                    break;
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
    pub(super) fn make_room(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_BYTES);
    }
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
            let mut state = this.wire.state.lock();
            this.inbound.filter(&mut state, out);
            if out.filled().len() > before || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.inbound.holding {
                // Nothing more is read until the task accepts a stream `h2` holds.
                state.held_back = Some(cx.waker().clone());
                return Poll::Pending;
            }
            drop(state);
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
