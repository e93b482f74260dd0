//! The way out: `h2`'s frames followed header by header (a stream's DATA goes only between
//! two of them, never before its response HEADERS; RST_STREAM and GOAWAY end streams here
//! too), and each stream's DATA frames placed within its windows ([`StreamOut`]).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::*;
use super::windows::{room, round, Room};
use super::{Sent, Splice, State};

impl State {
    /// Shares what the connection's window holds among the streams waiting for it, in turn
    /// order: each gets an equal share (see [`round`]; those the window does not reach stay
    /// first in line) and is marked due. So every stream that has a window of its own
    /// progresses whenever the client grants the connection some, and none is passed over
    /// twice in a row. Called when the client grants the connection window, and after each
    /// poll of the connection's due streams (a round may leave window over: the next round
    /// shares it). With no stream waiting, the window is no longer rationed.
    pub fn start_round(&mut self) {
        if self.connection_window <= 0 {
            return;
        }
        if self.waiting.is_empty() {
            self.rationed = false;
            return;
        }
        let (share, reached) = round(self.connection_window, self.waiting.len());
        let rest = self.waiting.split_off(reached);
        for key in std::mem::replace(&mut self.waiting, rest) {
            if let Some(entry) = self.streams.get_mut(key) {
                entry.waits_connection = false;
                entry.allowance = share;
                let token = entry.token();
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

    /// `h2` wrote `bytes`: they follow what is waiting, and its frames are followed.
    pub(super) fn h2_wrote(&mut self, mut bytes: &[u8]) {
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
                    if let Some(key) = self.ids.get(head.id) {
                        self.streams[key].window -= head.len as i64;
                    }
                }
                _ => {}
            }
        }
        if self.at_frame_boundary() && !self.after_frame.is_empty() {
            let due = std::mem::take(&mut self.after_frame);
            self.ready.mark(due);
            self.woke = true;
        }
        self.wake_if_marked();
    }

    /// `h2` wrote the response HEADERS of stream `id`; `end`: they end the stream.
    pub(super) fn headers_out(&mut self, id: u32, end: bool) {
        let Some(key) = self.ids.get(id) else {
            return;
        };
        let entry = &mut self.streams[key];
        entry.headers_out = true;
        match entry.token() {
            Some(token) => {
                self.mark(Some(token));
                self.headers_wait = true;
            }
            // A response `h2` gave itself (its bare 431 for a header list over its limit): the
            // stream is over, and no answer will come for it.
            None if end => self.forget_unanswered(key),
            None => {}
        }
    }

    /// Drops the entry `key` of a stream never answered.
    pub(super) fn forget_unanswered(&mut self, key: usize) {
        let entry = self.streams.remove(key);
        self.ids.remove(entry.id);
        self.answered_one();
    }

    /// `h2` said GOAWAY, taking no stream after `last`: it ignores later ones without a
    /// frame (RFC 9113, 6.8), so the wire holds none of them, and lets go of those it held
    /// that `h2` has not answered.
    pub(super) fn goaway(&mut self, last: u32) {
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
    pub(super) fn ended(&mut self, id: u32) {
        let Some(key) = self.ids.get(id) else {
            return;
        };
        let entry = &mut self.streams[key];
        entry.reset = true;
        match entry.token() {
            Some(token) => self.mark(Some(token)),
            // Not answered: nothing will come for it.
            None => self.forget_unanswered(key),
        }
    }
}

/// One stream's side of the wire: its DATA frames go out through it. The answer that holds it
/// releases it with [`StreamOut::release`] when the stream is over (the rest is released with
/// the connection).
pub struct StreamOut {
    /// The stream's entry; none when it was reset before it was answered, or released.
    /// (A `u32`: a connection has at most a few hundred entries, and every open stream keeps
    /// one of these.)
    pub(super) key: Option<u32>,
}

impl StreamOut {
    /// The entry's key in the connection's slab.
    fn key(&self) -> Option<usize> {
        self.key.map(|key| key as usize)
    }

    /// Writes as much of `data` as the client's windows allow, in frames no larger than it
    /// takes, and takes what was written off `data`.
    pub fn send(&self, state: &mut State, data: &mut Bytes) -> Sent {
        let key = match self.writable(state) {
            Ok(key) => key,
            Err(sent) => return sent,
        };
        let entry = &mut state.streams[key];
        let mut wrote = 0;
        let sent = loop {
            if data.is_empty() {
                break Sent::All;
            }
            let allowance = state.rationed.then_some(entry.allowance);
            let n = match room(
                data.len(),
                entry.window,
                state.connection_window,
                allowance,
                state.max_frame,
            ) {
                Room::Bytes(n) => n,
                Room::Stream => {
                    // Its turn at the connection's window ends with its own window: it waits
                    // in line again once the client grants it more.
                    entry.allowance = 0;
                    break Sent::Window;
                }
                Room::Connection => {
                    state.budget = state.budget.saturating_sub(wrote);
                    Self::wait_for_connection(state, key);
                    return Sent::Connection;
                }
            };
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

    /// How many bytes the stream could write now, within its windows (0: none). A stream
    /// asks before it takes from its body, and takes no more than that (at least one event):
    /// what it cannot send stays where it is shared (its connection's log, the ring), rather
    /// than wait in a frame of the stream's own while the client reads the others' data.
    pub fn room(&self, state: &State) -> usize {
        let Some(entry) = self.key().and_then(|key| state.streams.get(key)) else {
            return 0;
        };
        let allowance = state.rationed.then_some(entry.allowance);
        let window = (entry.window, state.connection_window);
        match room(usize::MAX, window.0, window.1, allowance, usize::MAX) {
            Room::Bytes(n) => n,
            Room::Stream | Room::Connection => 0,
        }
    }

    /// The stream's entry when it may write a frame now: answered, not reset, and the output
    /// is between two frames.
    fn writable(&self, state: &mut State) -> Result<usize, Sent> {
        let key = self.key().ok_or(Sent::Reset)?;
        let boundary = state.at_frame_boundary();
        let entry = &mut state.streams[key];
        if entry.reset {
            return Err(Sent::Reset);
        }
        if !entry.headers_out {
            return Err(Sent::Later);
        }
        if !boundary {
            // Inside one of h2's frames (it wrote part of it): due again once the rest is
            // written (`h2_wrote`).
            state.after_frame.extend(entry.token());
            return Err(Sent::Later);
        }
        Ok(key)
    }

    /// The connection's window, or stream `key`'s share of it, is spent: the stream waits for
    /// its turn.
    fn wait_for_connection(state: &mut State, key: usize) {
        let entry = &mut state.streams[key];
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
    }

    /// True once the stream was reset, by the client or by `h2`.
    pub fn is_reset(&self, state: &State) -> bool {
        match self.key() {
            Some(key) => state.streams[key].reset,
            None => true,
        }
    }

    /// The stream is over: its entry goes.
    pub fn release(&mut self, state: &mut State) {
        if let Some(key) = self.key.take() {
            let entry = state.streams.remove(key as usize);
            state.ids.remove(entry.id);
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
        if state.headers_wait {
            // A stream's HEADERS wait for its first DATA: the connection's task is woken (the
            // stream is due) and writes both.
            return Poll::Ready(Ok(()));
        }
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
