//! The contract with `h2` (pinned exactly in Cargo.toml): what the gateway's wire
//! (`src/http/wire.rs`) relies on in how `h2` writes and ends streams. Each test runs a real
//! `h2::server` connection through a [`Wire`] over an in-memory pipe, with a raw HTTP/2 client
//! on the other end, under paused time, and checks one assumption by name, so that an `h2`
//! release that breaks it fails here.
//!
//! The last part runs whole connections through `h2conn::serve`, as the listener does, with
//! the gateway's app behind them, and checks the connection's timers under paused time: the
//! keep-alive PING and its deadline, the idle timeout, a stream's stall (its own window at
//! zero) and the connection's (the connection's window at zero).

mod support;

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::SendStream;
use http::{Response, StatusCode};
use kafka_sse_gateway::config::Config;
use kafka_sse_gateway::http::h2conn::{self, Ended};
use kafka_sse_gateway::http::service::HEAD_HARD_LIMIT;
use kafka_sse_gateway::http::wire::{StreamOut, Wire, LARGEST_READ};
use kafka_sse_gateway::hub::Hub;
use kafka_sse_gateway::metrics::Metrics;
use kafka_sse_gateway::source::Source;
use kafka_sse_gateway::wake::Ready;
use support::h2raw::{self, RawH2};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `h2` built by the gateway's own builder, with `max_streams` streams and a 16 KiB header
/// list.
fn builder(max_streams: u32) -> h2::server::Builder {
    h2conn::Settings {
        max_streams,
        max_header_list: 16 << 10,
        ..timers()
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

/// A client opens 256 streams at once (a page's EventSources reconnecting after a restart).
/// The wire hands their HEADERS to `h2` only 16 ahead of the task accepting them, and relies
/// on `h2` handing out a stream for every complete request it read before it reports nothing
/// to accept: were that to change, the task (which, unlike the gateway's, does not let a held
/// stream through when `h2` has none) would wait here for good.
#[tokio::test(start_paused = true)]
async fn h2_hands_out_every_stream_of_a_burst_that_the_wire_paces() {
    let (mut client, mut server) = connected(1 << 20, 256).await;
    let ids: Vec<u32> = (1..=511).step_by(2).collect();
    for &id in &ids {
        client.get(id, "/").await;
    }
    let mut accepted = Vec::new();
    for _ in &ids {
        let next = tokio::time::timeout(Duration::from_secs(5), server.requests.recv()).await;
        accepted.push(next.expect("a stream of the burst not handed out").unwrap());
    }
    let order: Vec<u32> = accepted.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(order, ids, "every stream, in order");
    assert_eq!(server.wire.held(), 256);
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

// ---------------------------------------------------------------------------------------------
// The connection's timers, through `h2conn::serve`.

/// The timers these tests use: PING every 30 s, answered within 20 s; streams and connections
/// stall after 30 s; goodbyes take at most 10 s; no idle timeout unless a test sets one.
fn timers() -> h2conn::Settings {
    h2conn::Settings {
        max_streams: 8,
        // As the gateway sets it (the header-block limits below depend on it).
        max_header_list: HEAD_HARD_LIMIT as u32,
        send_buffer: 64 << 10,
        max_pending_resets: 50,
        max_local_resets: 1024,
        ping_interval: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(20),
        idle_timeout: None,
        close_grace: Duration::from_secs(10),
        stall: Duration::from_secs(30),
    }
}

/// A connection served by `h2conn::serve`, as the listener serves one.
struct Served {
    client: RawH2<DuplexStream>,
    ended: JoinHandle<Ended>,
    metrics: Metrics,
    /// When the client's handshake was done.
    opened: Instant,
    _shutdown: watch::Sender<bool>,
}

/// Serves one connection with `settings`. The app behind it is the gateway's, built from its
/// own configuration; it answers `/` with a starter page of `page` bytes, a plain response
/// that needs no Kafka (the brokers named are never reached). The client's streams get
/// windows of `stream_window` bytes; the connection's window stays at 65,535.
async fn served(settings: h2conn::Settings, stream_window: u32, page: usize) -> Served {
    let config = Config::from_vars([
        ("KSG_KAFKA_BROKERS", "127.0.0.1:9"),
        ("KSG_AUTH", "none"),
        ("KSG_TOPICS", "*"),
    ])
    .unwrap();
    let metrics = Metrics::new(&config.routes.labels());
    let source = Source::new("127.0.0.1:9", &config.kafka_properties, metrics.clone()).unwrap();
    let hub = Arc::new(Hub::new(
        Arc::new(source),
        metrics.clone(),
        kafka_sse_gateway::hub_config(&config),
    ));
    let app = Arc::new(kafka_sse_gateway::app(
        &config,
        hub,
        &metrics,
        Default::default(),
        Some(Bytes::from(vec![b'x'; page])),
        None,
    ));
    let (client, server) = tokio::io::duplex(1 << 20);
    let (shutdown, signal) = watch::channel(false);
    let serving = metrics.clone();
    let ended = tokio::spawn(async move {
        let (io, plumbing) = h2conn::plumb(server, &settings);
        let connection = settings.builder().handshake::<_, Bytes>(io).await.unwrap();
        h2conn::serve(connection, plumbing, app, serving, settings, signal).await
    });
    let client = RawH2::handshake_with(client, stream_window, 0).await;
    Served {
        client,
        ended,
        metrics,
        opened: Instant::now(),
        _shutdown: shutdown,
    }
}

/// Reads frames until one of `kind` on `stream`, acknowledging PINGs when `pong` says so (a
/// frame of `kind` PING is returned, not acknowledged). Panics if the connection closes or
/// nothing comes within 10 minutes of paused time.
async fn next(client: &mut RawH2<DuplexStream>, kind: u8, stream: u32, pong: bool) -> h2raw::Frame {
    tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            let frame = client.try_read_frame().await.unwrap_or_else(|| {
                panic!("the connection closed before a frame of type {kind} on stream {stream}")
            });
            // (ACK shares its bit with END_STREAM: it only means ACK on PING and SETTINGS.)
            let ack = matches!(frame.kind, h2raw::PING | h2raw::SETTINGS)
                && frame.flags & h2raw::FLAG_ACK != 0;
            if frame.kind == kind && frame.stream == stream && !ack {
                return frame;
            }
            if frame.kind == h2raw::PING && frame.flags & h2raw::FLAG_ACK == 0 && pong {
                client
                    .send_frame(h2raw::PING, h2raw::FLAG_ACK, 0, &frame.payload)
                    .await;
            }
            assert!(
                frame.kind != h2raw::GOAWAY || kind == h2raw::GOAWAY,
                "GOAWAY ({:?}) while waiting for a frame of type {kind} on stream {stream}",
                frame.goaway()
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no frame of type {kind} on stream {stream} in 10 minutes"))
}

/// Reads, answering PINGs, for `span` of paused time; returns the types of frames seen.
async fn read_for(client: &mut RawH2<DuplexStream>, span: Duration) -> Vec<u8> {
    let mut kinds = Vec::new();
    let _ = tokio::time::timeout(span, async {
        while let Some(frame) = client.try_read_frame().await {
            if frame.kind == h2raw::PING && frame.flags & h2raw::FLAG_ACK == 0 {
                client
                    .send_frame(h2raw::PING, h2raw::FLAG_ACK, 0, &frame.payload)
                    .await;
            }
            kinds.push(frame.kind);
        }
    })
    .await;
    kinds
}

/// `at` is `after` past `since`, to within the 100 ms a paused clock may add for the tasks'
/// turns.
fn about(at: Instant, since: Instant, after: Duration) -> bool {
    let took = at - since;
    took >= after && took < after + Duration::from_millis(100)
}

#[tokio::test(start_paused = true)]
async fn a_ping_goes_out_every_interval_and_one_unanswered_ends_the_connection_at_its_deadline() {
    let mut s = served(timers(), 1 << 20, 0).await;
    // Answered PINGs keep it: one every 30 s.
    let mut last = s.opened;
    for _ in 0..3 {
        let ping = next(&mut s.client, h2raw::PING, 0, true).await;
        assert!(about(Instant::now(), last, Duration::from_secs(30)));
        last = Instant::now();
        s.client
            .send_frame(h2raw::PING, h2raw::FLAG_ACK, 0, &ping.payload)
            .await;
    }
    assert!(!s.ended.is_finished());
    // The fourth goes unanswered: the connection ends 20 s later.
    next(&mut s.client, h2raw::PING, 0, false).await;
    let sent = Instant::now();
    assert_eq!(s.ended.await.unwrap(), Ended::PingTimeout);
    assert!(about(Instant::now(), sent, Duration::from_secs(20)));
}

#[tokio::test(start_paused = true)]
async fn a_connection_with_no_open_stream_for_the_idle_time_says_goodbye_and_an_open_stream_keeps_it(
) {
    // Streams never stall here: only the idle timer is at work.
    let settings = h2conn::Settings {
        idle_timeout: Some(Duration::from_secs(60)),
        stall: Duration::from_secs(3600),
        ..timers()
    };
    let mut s = served(settings, 0, 1_000).await;
    // A stream that waits for window is open: 150 s go by, well past the idle time, with no
    // GOAWAY.
    s.client.get(1, "/").await;
    next(&mut s.client, h2raw::HEADERS, 1, true).await;
    let kinds = read_for(&mut s.client, Duration::from_secs(150)).await;
    assert!(
        !kinds.contains(&h2raw::GOAWAY),
        "closed with a stream open: {kinds:?}"
    );
    // The client grants the window; the stream ends.
    s.client
        .send_frame(h2raw::WINDOW_UPDATE, 0, 1, &(1u32 << 20).to_be_bytes())
        .await;
    loop {
        let data = next(&mut s.client, h2raw::DATA, 1, true).await;
        if data.flags & h2raw::FLAG_END_STREAM != 0 {
            break;
        }
    }
    let ended = Instant::now();
    // Idle from then on: GOAWAY(NO_ERROR) after the idle time.
    let goaway = next(&mut s.client, h2raw::GOAWAY, 0, true).await;
    assert_eq!(goaway.goaway().unwrap().code, h2raw::NO_ERROR);
    assert!(about(Instant::now(), ended, Duration::from_secs(60)));
    // It ends within the goodbye's grace, whatever the client does.
    let ended = tokio::time::timeout(Duration::from_secs(11), s.ended).await;
    assert_eq!(ended.expect("ended").unwrap(), Ended::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_own_window_stays_at_zero_for_the_stall_time_is_reset_and_only_it() {
    let mut s = served(timers(), 0, 1_000).await;
    s.client.get(1, "/").await;
    next(&mut s.client, h2raw::HEADERS, 1, true).await;
    // Grants of 100 bytes every 20 s: the stream progresses, and is never reset although it
    // waits far longer than 30 s in all.
    for _ in 0..5 {
        let kinds = read_for(&mut s.client, Duration::from_secs(20)).await;
        assert!(
            !kinds.contains(&h2raw::RST_STREAM),
            "reset while granted: {kinds:?}"
        );
        s.client
            .send_frame(h2raw::WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes())
            .await;
        let data = next(&mut s.client, h2raw::DATA, 1, true).await;
        assert_eq!(data.payload.len(), 100);
    }
    // No more grants: reset (CANCEL) 30 s after the last data.
    let granted = Instant::now();
    let reset = next(&mut s.client, h2raw::RST_STREAM, 1, true).await;
    assert!(about(Instant::now(), granted, Duration::from_secs(30)));
    assert_eq!(
        u32::from_be_bytes(reset.payload[..4].try_into().unwrap()),
        h2raw::CANCEL
    );
    assert_eq!(s.metrics.stalled_stream_resets.get(), 1);
    // The connection stays: another stream is answered on it.
    s.client.get(3, "/").await;
    next(&mut s.client, h2raw::HEADERS, 3, true).await;
    assert!(!s.ended.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_connection_window_held_at_zero_for_the_stall_time_closes_the_connection_once() {
    // Streams have windows of 1 MiB; the connection's stays at 65,535 and is never granted.
    let mut s = served(timers(), 1 << 20, 200_000).await;
    s.client.get(1, "/").await;
    s.client.get(3, "/").await;
    let got = |client: &RawH2<DuplexStream>| -> usize {
        client.streams.values().map(|seen| seen.data.len()).sum()
    };
    while got(&s.client) < 65_535 {
        let frame = tokio::time::timeout(Duration::from_secs(5), s.client.try_read_frame())
            .await
            .expect("the connection's window is written at once")
            .expect("open");
        assert_ne!(frame.kind, h2raw::GOAWAY);
    }
    assert_eq!(got(&s.client), 65_535, "exactly the connection's window");
    let spent = Instant::now();
    // GOAWAY once, 30 s later: no stream is reset for the connection's stall.
    let goaway = next(&mut s.client, h2raw::GOAWAY, 0, true).await;
    assert!(about(Instant::now(), spent, Duration::from_secs(30)));
    assert_eq!(goaway.goaway().unwrap().code, h2raw::NO_ERROR);
    let kinds = read_for(&mut s.client, Duration::from_secs(20)).await;
    assert!(
        !kinds.contains(&h2raw::RST_STREAM),
        "a stream was reset: {kinds:?}"
    );
    assert_eq!(s.ended.await.unwrap(), Ended::Stalled);
    assert_eq!(s.metrics.stalled_stream_resets.get(), 0);
}

/// Sends `block` on `stream` as a HEADERS frame and CONTINUATION frames, `frames` in all.
async fn split_block(client: &mut RawH2<DuplexStream>, stream: u32, block: &[u8], frames: usize) {
    let size = block.len().div_ceil(frames);
    let chunks: Vec<&[u8]> = block.chunks(size).collect();
    assert_eq!(chunks.len(), frames);
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == frames;
        let end_headers = if last { h2raw::FLAG_END_HEADERS } else { 0 };
        let (kind, flags) = if i == 0 {
            (h2raw::HEADERS, h2raw::FLAG_END_STREAM | end_headers)
        } else {
            (h2raw::CONTINUATION, end_headers)
        };
        client.send_frame(kind, flags, stream, chunk).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_header_block_in_more_than_seven_frames_is_refused_as_a_flood() {
    // h2's CONTINUATION-flood guard (README, Limits): with the gateway's header-list limit and
    // frame size, at most 5 CONTINUATION frames without END_HEADERS, so a block may come in
    // up to 7 frames (HEADERS, then 6 CONTINUATION).
    let mut s = served(timers(), 1 << 20, 10).await;
    let block = h2raw::request_block(&format!("/?{}", "a".repeat(600)));
    split_block(&mut s.client, 1, &block, 7).await;
    let answer = next(&mut s.client, h2raw::HEADERS, 1, true).await;
    assert_eq!(h2raw::status_of(&answer.payload), Some(200));
    split_block(&mut s.client, 3, &block, 8).await;
    let goaway = next(&mut s.client, h2raw::GOAWAY, 0, true).await;
    assert_eq!(goaway.goaway().unwrap().code, h2raw::ENHANCE_YOUR_CALM);
}
