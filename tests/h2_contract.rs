//! The contract with `h2` (pinned exactly in Cargo.toml): what the gateway's wire
//! (`src/http/wire.rs`) relies on in how `h2` writes and ends streams. Each test runs a real
//! `h2::server` connection through a [`Wire`] over an in-memory pipe, with a raw HTTP/2 client
//! on the other end, under paused time, and checks one assumption by name, so that an `h2`
//! release that breaks it fails here.

mod support;

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::SendStream;
use http::{Response, StatusCode};
use kafka_sse_gateway::http::h2conn;
use kafka_sse_gateway::http::wire::{StreamOut, Wire, LARGEST_READ};
use kafka_sse_gateway::wake::Ready;
use support::h2raw::{self, RawH2};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// `h2` built by the gateway's own builder, with `max_streams` streams and a 16 KiB header
/// list.
fn builder(max_streams: u32) -> h2::server::Builder {
    h2conn::Settings {
        max_streams,
        max_header_list: 16 << 10,
        send_buffer: 64 << 10,
        max_pending_resets: 50,
        max_local_resets: 1024,
        ping_interval: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(20),
        idle_timeout: None,
        close_grace: Duration::from_secs(10),
        stall: Duration::from_secs(30),
    }
    .builder()
}

/// A server connection through a wire: the requests `h2` hands out arrive on the channel; the
/// connection is driven (read, written through the wire) until `stop` says so.
struct Server {
    wire: Arc<Wire>,
    requests: mpsc::UnboundedReceiver<(u32, SendResponse<Bytes>, StreamOut)>,
    shutdown: mpsc::UnboundedSender<()>,
}

fn serve(io: DuplexStream, max_streams: u32) -> Server {
    let ready = Ready::new(Waker::noop().clone());
    let wire = Wire::new(ready, max_streams);
    let (splice, link) = wire.splice(io);
    let (to_test, requests) = mpsc::unbounded_channel();
    let (shutdown, mut stop) = mpsc::unbounded_channel::<()>();
    let attach = wire.clone();
    tokio::spawn(async move {
        let Ok(mut connection) = builder(max_streams).handshake::<_, Bytes>(splice).await else {
            return;
        };
        loop {
            let step = poll_fn(|cx| {
                if let Poll::Ready(Some(())) = stop.poll_recv(cx) {
                    connection.graceful_shutdown();
                }
                let accepted = connection.poll_accept(cx);
                let _ = link.poll_write_out(cx);
                match accepted {
                    Poll::Ready(Some(Ok((_, respond)))) => Poll::Ready(Some(respond)),
                    Poll::Ready(_) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let Some(respond) = step else { break };
            let id = respond.stream_id().as_u32();
            // Answered as the gateway answers: the wire holds the stream as `token` id.
            let _ = to_test.send((id, respond, attach.attach(id, id as usize)));
        }
        // What h2 wrote last (its GOAWAY) goes out too.
        let _ = poll_fn(|cx| link.poll_write_out(cx)).await;
    });
    Server {
        wire,
        requests,
        shutdown,
    }
}

async fn connected(stream_window: u32, max_streams: u32) -> (RawH2<DuplexStream>, Server) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let server = serve(server, max_streams);
    let client = RawH2::handshake_with(client, stream_window, 0).await;
    (client, server)
}

/// Reads frames until one of `kind` on `stream` comes (PINGs answered).
async fn until(client: &mut RawH2<DuplexStream>, kind: u8, stream: u32) -> h2raw::Frame {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let frame = client.read_frame().await;
            if frame.kind == kind && frame.stream == stream {
                return frame;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no frame of type {kind} on stream {stream}"))
}

/// A connection with stream 1 open and answered (its HEADERS read by the client).
async fn one_answered(max_streams: u32) -> (RawH2<DuplexStream>, Server, SendStream<Bytes>) {
    let (mut client, mut server) = connected(1 << 20, max_streams).await;
    client.get(1, "/").await;
    let (_, mut respond, _out) = server.requests.recv().await.unwrap();
    let send = respond.send_response(ok(), false).unwrap();
    until(&mut client, h2raw::HEADERS, 1).await;
    (client, server, send)
}

fn ok() -> Response<()> {
    Response::builder().status(StatusCode::OK).body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn h2_ends_a_stream_with_an_empty_data_frame_even_with_no_window() {
    // SETTINGS_INITIAL_WINDOW_SIZE=0: h2's own window for the stream is 0, and stays so.
    let (mut client, mut server) = connected(0, 8).await;
    client.get(1, "/").await;
    let (id, mut respond, _out) = server.requests.recv().await.unwrap();
    assert_eq!(id, 1);
    let mut send = respond.send_response(ok(), false).unwrap();
    until(&mut client, h2raw::HEADERS, 1).await;
    send.send_data(Bytes::new(), true).unwrap();
    let end = until(&mut client, h2raw::DATA, 1).await;
    assert!(end.payload.is_empty());
    assert_eq!(end.flags & h2raw::FLAG_END_STREAM, h2raw::FLAG_END_STREAM);
}

#[tokio::test(start_paused = true)]
async fn h2_refuses_frames_larger_than_the_wire_reads() {
    let (mut client, _server) = connected(1 << 20, 8).await;
    // A SETTINGS frame of exactly LARGEST_READ bytes (six per setting) is read and acknowledged.
    let fits = vec![0u8; LARGEST_READ - LARGEST_READ % 6];
    let unknown: Vec<u8> = fits
        .chunks(6)
        .flat_map(|_| [0xf0, 0x00, 0, 0, 0, 0])
        .collect();
    client.send_frame(h2raw::SETTINGS, 0, 0, &unknown).await;
    let ack = until(&mut client, h2raw::SETTINGS, 0).await;
    assert_eq!(ack.flags & h2raw::FLAG_ACK, h2raw::FLAG_ACK);
    // One over: h2, not the wire, must refuse it (FRAME_SIZE_ERROR).
    let over = vec![0u8; LARGEST_READ + 6 - LARGEST_READ % 6];
    client.send_frame(h2raw::SETTINGS, 0, 0, &over).await;
    let goaway = until(&mut client, h2raw::GOAWAY, 0).await;
    assert_eq!(goaway.goaway().unwrap().code, 6, "FRAME_SIZE_ERROR");
}

#[tokio::test(start_paused = true)]
async fn h2_sends_its_own_431_as_a_frame_and_the_wire_lets_the_stream_go() {
    let (mut client, server) = connected(1 << 20, 8).await;
    // A header list over h2's limit (16 KiB as built here): h2 answers 431 itself.
    let big = format!("/?{}", "a".repeat(20 << 10));
    let block = h2raw::request_block(&big);
    let mut sent = 0;
    let first = block.len().min(LARGEST_READ);
    client
        .send_frame(h2raw::HEADERS, h2raw::FLAG_END_STREAM, 1, &block[..first])
        .await;
    sent += first;
    while sent < block.len() {
        let n = (block.len() - sent).min(LARGEST_READ);
        let last = sent + n == block.len();
        let flags = if last { h2raw::FLAG_END_HEADERS } else { 0 };
        client
            .send_frame(h2raw::CONTINUATION, flags, 1, &block[sent..sent + n])
            .await;
        sent += n;
    }
    let answer = until(&mut client, h2raw::HEADERS, 1).await;
    assert_eq!(h2raw::status_of(&answer.payload), Some(431));
    settle().await;
    assert_eq!(
        server.wire.held(),
        0,
        "no entry left for a stream h2 answered itself"
    );
}

#[tokio::test(start_paused = true)]
async fn h2_refuses_streams_past_its_limit_as_a_frame_and_the_wire_lets_them_go() {
    let (mut client, server, _send) = one_answered(1).await;
    // A second stream past SETTINGS_MAX_CONCURRENT_STREAMS=1.
    client.get(3, "/").await;
    let refused = until(&mut client, h2raw::RST_STREAM, 3).await;
    assert_eq!(
        u32::from_be_bytes(refused.payload[..4].try_into().unwrap()),
        7,
        "REFUSED_STREAM"
    );
    settle().await;
    assert_eq!(server.wire.held(), 1, "only the answered stream is held");
}

#[tokio::test(start_paused = true)]
async fn a_client_reset_during_the_response_headers_ends_the_stream_on_the_wire() {
    let (mut client, mut server) = connected(1 << 20, 8).await;
    client.get(1, "/").await;
    let (_, mut respond, out) = server.requests.recv().await.unwrap();
    client
        .send_frame(h2raw::RST_STREAM, 0, 1, &8u32.to_be_bytes())
        .await;
    settle().await;
    // The answer finds the stream reset, however far it got.
    let _ = respond.send_response(ok(), false);
    settle().await;
    assert!(
        out.is_reset(&server.wire.lock()),
        "the wire knows the stream is over"
    );
}

#[tokio::test(start_paused = true)]
async fn goaway_with_streams_in_flight_is_a_frame_and_later_streams_are_not_held() {
    let (mut client, server, mut send) = one_answered(8).await;
    // h2's graceful shutdown: GOAWAY (every stream id) and a PING; once the PING is
    // answered, a second GOAWAY names the last stream it took.
    server.shutdown.send(()).unwrap();
    let first = until(&mut client, h2raw::GOAWAY, 0).await;
    assert_eq!(first.goaway().unwrap().code, 0, "NO_ERROR");
    let ping = until(&mut client, h2raw::PING, 0).await;
    client
        .send_frame(h2raw::PING, h2raw::FLAG_ACK, 0, &ping.payload)
        .await;
    let last = until(&mut client, h2raw::GOAWAY, 0).await;
    assert_eq!(last.goaway().unwrap().last_stream, 1);
    // A stream opened after it: h2 ignores it (RFC 9113, 6.8), and the wire must not hold it.
    client.get(3, "/").await;
    settle().await;
    assert_eq!(server.wire.held(), 1, "only the stream in flight");
    // The stream in flight ends normally.
    send.send_data(Bytes::new(), true).unwrap();
    let end = until(&mut client, h2raw::DATA, 1).await;
    assert_eq!(end.flags & h2raw::FLAG_END_STREAM, h2raw::FLAG_END_STREAM);
}

/// Lets the connection's task run what is pending (time is paused: this only yields).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
