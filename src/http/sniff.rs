//! Telling HTTP/2 with prior knowledge (h2c, or TLS without ALPN) from HTTP/1.1 by the first
//! bytes, under the opening deadline, and handing them back to whichever protocol serves the
//! connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes are the whole HTTP/2 preface (`true`) or cannot be (`false`), within
/// `limit`. `Err` with `TimedOut` when the opening did not arrive in time.
pub async fn sniff<I: AsyncRead + Unpin>(
    mut io: I,
    limit: Duration,
) -> io::Result<(Prefixed<I>, bool)> {
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let read = async {
        let mut chunk = [0u8; 24];
        loop {
            let want = H2_PREFACE.len() - seen.len();
            let n = io.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            seen.extend_from_slice(&chunk[..n]);
            if !H2_PREFACE.starts_with(&seen) {
                return Ok(false);
            }
            if seen.len() == H2_PREFACE.len() {
                return Ok(true);
            }
        }
    };
    let h2 = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok((
        Prefixed {
            prefix: Bytes::from(seen),
            io,
        },
        h2,
    ))
}

/// An I/O stream that first gives back bytes already read from it.
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
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
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn tells_h2_from_http1_and_gives_the_bytes_back() {
        for (sent, h2) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest"[..], true),
            (b"GET / HTTP/1.1\r\n\r\n", false),
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            drop(client);
            let (mut io, is_h2) = sniff(server, Duration::from_secs(1)).await.unwrap();
            assert_eq!(is_h2, h2);
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, sent);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_preface_times_out() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HT").await.unwrap();
        let e = sniff(server, Duration::from_secs(10)).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }
}
