//! An HTTP/1.1 connection's place in the hub's fan-out. Its one stream at a time reads the same
//! shared logs an HTTP/2 connection's streams read (`hub::group`), with the connection's
//! [`Fanout`] as its seat: the Kafka reader appends each event once per connection and
//! wakes the connection's task at most once per batch of records, and the stream reads the log
//! at its own place, as every stream does.
//!
//! hyper polls the response body in the connection's task, so the body is where the connection
//! marks its waiting streams due before it reads ([`Pumped`]), as an HTTP/2 connection's task
//! does before it polls its streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use crate::http::activity::Open;
use crate::hub::{Fanout, Seat};
use crate::wake::{Deferred, Ready};

/// The fan-out plumbing of one HTTP/1.1 connection.
pub struct Connection {
    deferred: Arc<Deferred>,
    ready: Arc<Ready>,
    fanout: Arc<Fanout>,
}

impl Connection {
    /// A connection with no stream yet.
    pub fn new() -> Arc<Connection> {
        let deferred = Arc::new(Deferred::default());
        let ready = Ready::new(deferred.waker());
        let fanout = Fanout::new(ready.clone());
        Arc::new(Connection {
            deferred,
            ready,
            fanout,
        })
    }

    /// The seat of the connection's stream. HTTP/1.1 answers one request at a time, so every
    /// request has the same token.
    pub fn seat(&self) -> Seat {
        self.fanout.seat(0)
    }

    /// `body`, polled as this connection's stream, keeping its request `open` until it is
    /// dropped.
    pub fn pump<B>(self: &Arc<Self>, body: B, open: Open) -> Pumped<B> {
        Pumped {
            body,
            connection: self.clone(),
            due: Vec::new(),
            _open: open,
        }
    }
}

/// A response body on an HTTP/1.1 connection: before each poll, the connection's task is the
/// one its logs wake, and their waiting streams are marked due. Its request is open (for the
/// connection's idle timeout) until it is dropped.
pub struct Pumped<B> {
    body: B,
    connection: Arc<Connection>,
    /// The due list taken at each poll (one stream, so only emptied; kept for its buffer).
    due: Vec<usize>,
    _open: Open,
}

impl<B: Body + Unpin> Body for Pumped<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let connection = &this.connection;
        // Registered first: an event appended from here on wakes this poll's task.
        connection.deferred.register(cx.waker());
        connection.fanout.mark_readers_due();
        connection.ready.take_into(&mut this.due);
        this.due.clear();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        connection.fanout.count_sent();
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
