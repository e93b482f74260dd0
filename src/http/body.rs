//! The response body type: a fixed text or an SSE stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::stream::SseStream;

/// Every response body the gateway sends.
#[allow(clippy::large_enum_variant)] // see `Stream`
pub enum ResponseBody {
    /// A complete body (error reasons, pages, metrics); `None` once sent.
    Full(Option<Bytes>),
    /// A never-ending SSE stream. Held inline, not boxed: an HTTP/2 connection keeps its
    /// streams' answers side by side (`http::answers`), so a fan-out reads the stream states it
    /// polls one after the other in memory instead of chasing a pointer (a cache miss) per
    /// stream and event.
    Stream(SseStream),
    /// No body at all, length unknown (the answer to `HEAD`: no `content-length: 0` is implied).
    Empty,
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// The next frame of an SSE stream holds at most `bytes` (see [`SseStream::limit_frame`]).
    pub fn limit_frame(&mut self, bytes: usize) {
        if let ResponseBody::Stream(stream) = self {
            stream.limit_frame(bytes);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(stream) => Pin::new(stream).poll_frame(cx),
            ResponseBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResponseBody::Full(None) | ResponseBody::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Stream(_) | ResponseBody::Empty => SizeHint::default(),
        }
    }
}
