//! The opening of a connection must arrive within the handshake timeout: a client that
//! connects and then says nothing, or only part of the HTTP/2 preface, is closed instead of
//! holding a connection slot until it goes away.
//!
//! The deadline lasts until the whole 24-byte HTTP/2 preface has arrived, or until the bytes
//! read differ from it (HTTP/1.1: from then on hyper's request-head deadline, set to the same
//! timeout, covers the rest of the head).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An I/O stream whose opening (the HTTP/2 preface, or the first byte of anything else) must
/// arrive before a deadline.
pub struct FirstBytes<I> {
    io: I,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Preface bytes matched so far.
    matched: usize,
    timed_out: Arc<AtomicBool>,
}

impl<I> FirstBytes<I> {
    /// Wraps `io`; its opening must arrive within `limit`. The flag turns true if it did not.
    pub fn new(io: I, limit: Duration) -> (Self, Arc<AtomicBool>) {
        let timed_out = Arc::new(AtomicBool::new(false));
        let io = FirstBytes {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            matched: 0,
            timed_out: timed_out.clone(),
        };
        (io, timed_out)
    }

    /// Looks at newly read bytes: the deadline ends once the preface is complete or the bytes
    /// are not a preface at all.
    fn saw(&mut self, bytes: &[u8]) {
        let want = &H2_PREFACE[self.matched..];
        let n = bytes.len().min(want.len());
        if bytes[..n] != want[..n] {
            self.deadline = None;
            return;
        }
        self.matched += n;
        if self.matched == H2_PREFACE.len() {
            self.deadline = None;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else {
            return result;
        };
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let this = &mut *self;
                this.saw(&buf.filled()[before..]);
                result
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                self.timed_out.store(true, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete preface or request before the handshake timeout",
                )))
            }
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytes<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(chunks: &[&[u8]]) -> bool {
        let (mut io, _) = FirstBytes::new((), Duration::from_secs(1));
        for chunk in chunks {
            io.saw(chunk);
        }
        io.deadline.is_some()
    }

    #[tokio::test]
    async fn the_deadline_lasts_until_the_preface_is_complete_or_refuted() {
        assert!(fed(&[b"P"]), "one preface byte");
        assert!(
            fed(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM"]),
            "part of the preface"
        );
        assert!(!fed(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"]));
        assert!(!fed(&[H2_PREFACE, b"more"]));
        assert!(!fed(&[b"G"]), "HTTP/1.1: hyper's head deadline takes over");
        assert!(!fed(&[b"PRI", b"X"]), "not a preface after all");
        assert!(!fed(&[b"POST / HTTP/1.1\r\n"]));
    }
}
