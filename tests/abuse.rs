//! Abuse regression suite: each test runs one attack on a gateway in this process and asserts
//! the defence seen on the wire (the GOAWAY and its code, a refused stream, a closed
//! connection), that the process's resident memory stays flat, and that a well-behaved client
//! on another connection still receives events afterwards.
//!
//! Here:
//! - HTTP/2 rapid reset: streams opened and reset at once, by the thousand;
//! - CONTINUATION flood: a header block that never ends, in empty or full frames;
//! - HPACK bomb: a small header block that decodes to a huge header list;
//! - PING flood from a client that never reads the acknowledgements;
//! - slowloris on TLS: a ClientHello dripped one byte at a time;
//! - requests for topics that do not exist, one by one and by the ten thousand, reset a moment
//!   after they were accepted.
//!
//! Elsewhere:
//! - the 257th concurrent stream of a connection: `tests/limits.rs`;
//! - connections over the limit, and per client address: `tests/limits.rs`, `tests/clients.rs`;
//! - streams whose client grants no flow-control window (zero-window streams): `tests/stall.rs`;
//! - a connection that never speaks (silent TCP): `tests/limits.rs`;
//! - a partial preface: `tests/hostile.rs`;
//! - idle connections (no stream, PINGs answered): `tests/hostile.rs`;
//! - request heads over 16 KiB sent as plain literals: `tests/hostile.rs`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_sse_gateway::Handle;
use support::h2raw::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Growth of this process's resident memory that fails a test. The gateway runs in this
/// process; the tests of this file run one at a time ([`one_at_a_time`]), so each bound is its
/// own attack's (the largest growth seen was 9 MiB, requests for missing topics). The floods
/// below would cost several times as much if the gateway took them in.
const RSS_BOUND: u64 = 24 << 20;

/// Held for the whole of each test of this file: they run one after another, so the memory one
/// measures is its own attack's, not the sum of those running beside it.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// This process's resident memory (VmRSS), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// The resident memory before an attack.
struct Memory(u64);

impl Memory {
    fn before() -> Memory {
        Memory(rss())
    }

    /// Asserts that resident memory grew by less than [`RSS_BOUND`] since [`Memory::before`].
    fn assert_flat(&self, attack: &str) {
        let grown = rss().saturating_sub(self.0);
        eprintln!("{attack}: RSS grew by {} KiB", grown >> 10);
        assert!(
            grown < RSS_BOUND,
            "{attack}: RSS grew by {} MiB",
            grown >> 20
        );
    }
}

/// An HTTP/2 connection as a well-behaved client opens one (TLS when the gateway has it).
async fn connect(gw: &Handle) -> H2 {
    match gw.cert_der {
        Some(_) => h2_connect(gw).await,
        None => h2_handshake(TcpStream::connect(gw.addr).await.unwrap()).await,
    }
}

/// A raw HTTP/2 connection over cleartext TCP (the gateway runs with `KSG_TLS=off`).
async fn raw_h2c(gw: &Handle) -> RawH2<TcpStream> {
    RawH2::handshake(TcpStream::connect(gw.addr).await.unwrap()).await
}

/// A well-behaved client: one SSE stream on its own connection.
struct Bystander {
    _h2: H2,
    sse: SseReader,
}

impl Bystander {
    /// Opens the stream and reads its preamble, so it is subscribed.
    async fn join(gw: &Handle, topic: &str) -> Bystander {
        let h2 = connect(gw).await;
        let (head, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
        assert_eq!(head.status, 200);
        sse.next_block().await.expect("the preamble");
        Bystander { _h2: h2, sse }
    }

    /// After the attack: this stream, and one on a new connection, both receive a record
    /// produced now; the attacker's connection is no longer counted.
    async fn still_served(self, gw: &Handle, cluster: &Cluster, topic: &str) {
        let late = Bystander::join(gw, topic).await;
        cluster
            .producer()
            .produce(topic, None, Some("after the attack"))
            .await;
        let mut clients = [self, late];
        for client in &mut clients {
            let event = client.sse.next_event().await.expect("an event");
            assert_eq!(event.text(), "after the attack");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let open = metric(&metrics(gw).await, "ksg_connections_open");
            if open == 2.0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} connections open, the two bystanders' expected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads frames until the server closes the connection (within [`WAIT`]); returns them.
async fn frames_until_closed<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> Vec<Frame> {
    let mut frames = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(frame) = read_frame(io).await {
            frames.push(frame);
        }
    })
    .await
    .expect("the connection closed in time");
    frames
}

/// The GOAWAY among `frames`; fails the test when there is none.
fn goaway_in(frames: &[Frame]) -> GoAway {
    let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
    frames
        .iter()
        .find_map(Frame::goaway)
        .unwrap_or_else(|| panic!("a GOAWAY before the close; frames {kinds:?}"))
}

/// A rapid-reset attack: how streams are opened and reset.
struct ResetAttack {
    /// Streams opened (and reset) at most.
    streams: u32,
    /// Stream `n` is reset when stream `n + lag` is opened: 0 resets each stream at once; more
    /// lets the server accept a stream, and start work for it, before its reset arrives.
    lag: u32,
    /// Streams opened per write.
    batch: u32,
    /// Pause after each write.
    pause: Duration,
}

/// What a rapid-reset attack achieved.
struct ResetOutcome {
    /// Streams written before the gateway closed the connection (or all of them).
    opened: u32,
    /// The gateway's GOAWAY, when it closed the connection.
    goaway: Option<GoAway>,
}

impl ResetAttack {
    /// Opens streams for `path(n)` and resets them, over one cleartext connection, until all
    /// are written or the gateway closes the connection; then closes it, if the gateway did
    /// not, and waits for the end.
    async fn run(&self, gw: &Handle, path: impl Fn(u32) -> String) -> ResetOutcome {
        let (mut rd, mut wr) = raw_h2c(gw).await.into_inner().into_split();
        let reader = tokio::spawn(async move { frames_until_closed(&mut rd).await });
        let cancel = CANCEL.to_be_bytes();
        let flags = FLAG_END_HEADERS | FLAG_END_STREAM;
        let mut opened = 0;
        while opened < self.streams + self.lag && !reader.is_finished() {
            let mut batch = Vec::new();
            for n in opened..opened + self.batch {
                if n < self.streams {
                    batch.extend(frame(HEADERS, flags, 1 + 2 * n, &request_block(&path(n))));
                }
                if let Some(old) = n.checked_sub(self.lag).filter(|&old| old < self.streams) {
                    batch.extend(frame(RST_STREAM, 0, 1 + 2 * old, &cancel));
                }
            }
            match tokio::time::timeout(WAIT, wr.write_all(&batch)).await {
                Ok(Ok(())) => opened += self.batch,
                Ok(Err(_)) => break,
                Err(_) => panic!("the gateway stopped reading after {opened} streams"),
            }
            tokio::time::sleep(self.pause).await;
        }
        drop(wr);
        let frames = reader.await.unwrap();
        ResetOutcome {
            opened: opened.min(self.streams),
            goaway: frames.iter().find_map(Frame::goaway),
        }
    }
}

// CVE-2023-44487: a client opens streams and resets each at once, so the server starts work for
// requests it never answers, without ever reaching the concurrent-stream limit. h2 counts
// streams reset before the gateway accepted them (50 per connection, src/http/server.rs) and
// closes the connection with GOAWAY(ENHANCE_YOUR_CALM) past that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_closed_with_goaway_enhance_your_calm() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::new();
    let topic = unique_topic("rapid-reset");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_TLS", "off")]).await;
    let bystander = Bystander::join(&gw, &topic).await;
    let memory = Memory::before();

    let attack = ResetAttack {
        streams: 10_000,
        lag: 0,
        batch: 500,
        pause: Duration::ZERO,
    };
    let outcome = attack.run(&gw, |_| format!("/{topic}")).await;
    let goaway = outcome.goaway.expect("a GOAWAY before the close");
    assert_eq!(
        (goaway.code, goaway.debug.as_slice()),
        (ENHANCE_YOUR_CALM, &b"too_many_resets"[..]),
        "{goaway:?}"
    );
    // The gateway gave up long before the attacker did.
    let processed = goaway.last_stream.div_ceil(2);
    eprintln!(
        "rapid reset: GOAWAY after {processed} streams, {} written",
        outcome.opened
    );
    assert!(
        processed < attack.streams / 10,
        "GOAWAY only after {processed} streams: {goaway:?}"
    );
    memory.assert_flat("rapid reset");
    bystander.still_served(&gw, &cluster, &topic).await;
    gw.shutdown().await;
}

/// Lines of `/metrics` that name a topic starting with `prefix`.
fn series_of(text: &str, prefix: &str) -> usize {
    let label = format!("topic=\"{prefix}");
    text.lines().filter(|l| l.contains(&label)).count()
}

// Requests for topics that do not exist, by the thousand and with names that never repeat:
// each must leave nothing behind (no registry entry, no per-topic metric series), and one
// whose client reset its stream must not go on to cost a Kafka lookup. The resets come a
// moment after the requests (200 streams behind), so the gateway has accepted each stream and
// started on it, and h2's count of streams reset before they were accepted does not stop the
// attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_missing_topics_leave_nothing_behind() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::new();
    let topic = unique_topic("missing-topics");
    cluster.create_topic(&topic, 1).await;
    // The per-connection limit on stream requests would answer most of these with 429 before
    // any lookup; off, so that the registry's own defence is what is tested.
    let gw = gateway(
        &cluster,
        &[("KSG_TLS", "off"), ("KSG_MAX_STREAM_OPENS_PER_SEC", "0")],
    )
    .await;
    let bystander = Bystander::join(&gw, &topic).await;
    let missing = unique_topic("nowhere");
    let memory = Memory::before();

    // Answered one by one: 404, and nothing kept.
    let h2 = connect(&gw).await;
    for n in 0..100 {
        let (head, _) = get(&h2, &format!("/{missing}-asked-{n}"), &[]).await;
        assert_eq!(head.status, 404);
    }
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"not_found\"}"),
        100.0
    );
    assert_eq!(
        series_of(&text, &missing),
        0,
        "per-topic series of missing topics"
    );

    // Asked and reset.
    let attack = ResetAttack {
        streams: 40_000,
        lag: 200,
        batch: 10,
        pause: Duration::from_millis(1),
    };
    let outcome = attack.run(&gw, |n| format!("/{missing}-reset-{n}")).await;
    eprintln!(
        "missing topics: {} streams written, GOAWAY {:?}",
        outcome.opened, outcome.goaway
    );
    if let Some(goaway) = outcome.goaway {
        assert_eq!(goaway.code, ENHANCE_YOUR_CALM, "{goaway:?}");
    }
    memory.assert_flat("missing topics");
    // A new topic is attached at once: no backlog of lookups for requests long gone.
    let fresh = unique_topic("fresh");
    cluster.create_topic(&fresh, 1).await;
    let (head, mut sse) = get(&h2, &format!("/{fresh}"), &[]).await;
    assert_eq!(head.status, 200);
    sse.next_block().await.expect("the preamble");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = series_of(&metrics(&gw).await, &missing);
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} per-topic series of missing topics"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((h2, sse));
    bystander.still_served(&gw, &cluster, &topic).await;
    gw.shutdown().await;
}

/// Bytes of CONTINUATION frames the flooder writes at most.
const CONTINUATION_FLOOD: usize = 256 << 20;
/// What may get through before the gateway's close is noticed: what it read before closing, and
/// what the kernel buffered on both sides (socket buffers grow to tens of MiB on loopback).
const CONTINUATION_THROUGH: usize = 64 << 20;

// CVE-2024-27316 and its family: HEADERS without END_HEADERS followed by CONTINUATION frames
// that never end, which a server buffering the whole header block holds in memory (or, with
// empty frames, spends its time on). h2 allows max(64 KiB / 16 KiB × 1.25, 5) CONTINUATION
// frames for the gateway's 64 KiB header-list limit, then says GOAWAY(ENHANCE_YOUR_CALM) and
// closes, whatever the frames' sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_closed_with_goaway_enhance_your_calm() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::new();
    let topic = unique_topic("continuation");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_TLS", "off")]).await;
    let bystander = Bystander::join(&gw, &topic).await;
    let memory = Memory::before();

    // A header field of 16 000 bytes fills a frame (the default maximum frame size, 16 KiB).
    let mut full = vec![0x00]; // literal without indexing, new name
    push_string(&mut full, b"x-flood");
    push_string(&mut full, &[b'a'; 16_000]);
    for (shape, payload) in [("empty", Vec::new()), ("16 KiB", full)] {
        let mut raw = raw_h2c(&gw).await;
        let block = request_block(&format!("/{topic}"));
        raw.send_frame(HEADERS, FLAG_END_STREAM, 1, &block).await;
        let per_write = (256 << 10) / (9 + payload.len());
        let batch = frame(CONTINUATION, 0, 1, &payload).repeat(per_write);
        let mut written = 0;
        let closed = loop {
            if written >= CONTINUATION_FLOOD {
                break false;
            }
            match tokio::time::timeout(WAIT, raw.send_raw(&batch)).await {
                Ok(Ok(())) => written += batch.len(),
                Ok(Err(_)) => break true,
                Err(_) => panic!("{shape}: the gateway stopped reading but did not close"),
            }
        };
        eprintln!("CONTINUATION flood ({shape}): {written} bytes written before the close");
        assert!(closed, "{shape}: {written} bytes of CONTINUATION accepted");
        assert!(
            written < CONTINUATION_THROUGH,
            "{shape}: {written} bytes written before the close"
        );
        let frames = frames_until_closed(&mut raw.into_inner()).await;
        let goaway = goaway_in(&frames);
        assert_eq!(
            (goaway.code, goaway.debug.as_slice()),
            (ENHANCE_YOUR_CALM, &b"too_many_continuations"[..]),
            "{shape}: {goaway:?}"
        );
        // Stream 1 never became a request.
        assert_eq!(goaway.last_stream, 0, "{shape}: {goaway:?}");
    }
    memory.assert_flat("CONTINUATION flood");
    bystander.still_served(&gw, &cluster, &topic).await;
    gw.shutdown().await;
}

/// The value of the header an HPACK bomb puts in the dynamic table: with its name and HPACK's
/// 32 bytes of overhead the entry fills most of the default 4 KiB table.
const BOMB_VALUE: usize = 4_000;
/// What one reference to that entry adds to the decoded header list.
const BOMB_ENTRY: usize = "x-bomb".len() + BOMB_VALUE + 32;
/// Connections that each send the largest bomb, all at once.
const BOMB_CONNECTIONS: usize = 8;

/// A request whose header block inserts one ~4 KiB header into the dynamic table and then
/// refers to it `refs` times, one byte each: 4 KiB of decoded header list per byte on the wire.
fn bomb(path: &str, refs: usize) -> Vec<u8> {
    let mut block = request_block(path);
    block.push(0x40); // literal with incremental indexing, new name
    push_string(&mut block, b"x-bomb");
    push_string(&mut block, &[b'a'; BOMB_VALUE]);
    // Indexed field 62: the newest dynamic entry, the one just inserted.
    block.extend(std::iter::repeat_n(0xbe, refs));
    block
}

// HPACK bomb: a header block of a few KiB that decodes to megabytes by referring to one large
// dynamic-table entry again and again. Three sizes, three answers: over 16 KiB decoded, the
// gateway's 431 with a reason; over the 64 KiB header-list limit, h2's bare 431 and the
// connection lives on; over four times that, h2 stops decoding and closes the connection with
// GOAWAY(ENHANCE_YOUR_CALM), so a 16 KiB frame never becomes the 48 MiB it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bombs_are_refused_and_the_largest_close_the_connection() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::new();
    let topic = unique_topic("hpack");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_TLS", "off")]).await;
    let bystander = Bystander::join(&gw, &topic).await;
    let memory = Memory::before();
    let path = format!("/{topic}");
    let flags = FLAG_END_HEADERS | FLAG_END_STREAM;

    // 5 entries, ~20 KiB decoded: the gateway's own 431, with its reason, counted.
    let mut raw = raw_h2c(&gw).await;
    raw.send_frame(HEADERS, flags, 1, &bomb(&path, 4)).await;
    tokio::time::timeout(WAIT, async {
        while !raw.streams.get(&1).is_some_and(|s| s.ended) {
            raw.read_frame().await;
        }
    })
    .await
    .expect("an answer in time");
    assert_eq!(raw.streams[&1].status, Some(431));
    assert_eq!(raw.streams[&1].data, b"request header fields over 16 KiB\n");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "ksg_streams_refused_total{reason=\"headers_too_large\"}"
        ),
        1.0
    );
    drop(raw);

    // 31 entries, ~122 KiB decoded: over the protocol layer's limit, h2 answers a bare 431
    // itself; the connection still serves.
    let mut raw = raw_h2c(&gw).await;
    raw.send_frame(HEADERS, flags, 1, &bomb(&path, 30)).await;
    raw.get(3, &path).await;
    tokio::time::timeout(WAIT, async {
        while !raw.streams.get(&1).is_some_and(|s| s.ended)
            || !raw
                .streams
                .get(&3)
                .is_some_and(|s| s.data.ends_with(b"\n\n"))
        {
            raw.read_frame().await;
        }
    })
    .await
    .expect("both answered in time");
    assert_eq!(raw.streams[&1].status, Some(431));
    assert!(raw.streams[&1].data.is_empty());
    assert_eq!(
        raw.streams[&3].status,
        Some(200),
        "the next request is served"
    );
    drop(raw);

    // A full frame of references, ~48 MiB decoded each, on several connections at once.
    let refs = 16_384 - bomb(&path, 0).len();
    let block = bomb(&path, refs);
    assert!(block.len() <= 16_384 && refs * BOMB_ENTRY > 40 << 20);
    let mut bombers = Vec::new();
    for _ in 0..BOMB_CONNECTIONS {
        let mut raw = raw_h2c(&gw).await;
        raw.send_frame(HEADERS, flags, 1, &block).await;
        bombers.push(raw);
    }
    for raw in bombers {
        let frames = frames_until_closed(&mut raw.into_inner()).await;
        let goaway = goaway_in(&frames);
        assert_eq!(
            (goaway.code, goaway.debug.as_slice()),
            (ENHANCE_YOUR_CALM, &b"header_list_way_too_large"[..]),
            "{goaway:?}"
        );
        assert!(frames.iter().all(|f| f.kind != HEADERS), "no response");
    }
    memory.assert_flat("HPACK bomb");
    bystander.still_served(&gw, &cluster, &topic).await;
    gw.shutdown().await;
}

/// Bytes of PING frames the flooder writes at most.
const PING_FLOOD: usize = 256 << 20;
/// What may get through once the gateway stops reading: what it answered before, and what the
/// kernel buffered on both sides.
const PING_THROUGH: usize = 64 << 20;
/// PINGs per write.
const PING_BATCH: usize = (1 << 20) / 17;
/// No write completed for this long: the gateway stopped reading.
const STOPPED_READING: Duration = Duration::from_secs(2);

// PING flood: every PING obliges an ACK; a client that sends them without ever reading would
// make a server that queues its ACKs hold them all. h2 keeps one ACK pending and reads no
// further frame until it could write it, so the flooder's writes stop once the socket buffers
// are full; the connection, which has no stream, is then closed as idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_that_never_reads_is_held_back_and_closed() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::new();
    let topic = unique_topic("ping-flood");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(
        &cluster,
        &[("KSG_TLS", "off"), ("KSG_IDLE_TIMEOUT_SECS", "1")],
    )
    .await;
    let bystander = Bystander::join(&gw, &topic).await;
    let memory = Memory::before();

    let (rd, mut wr) = raw_h2c(&gw).await.into_inner().into_split();
    let batch: Vec<u8> = (0..PING_BATCH as u64)
        .flat_map(|n| frame(PING, 0, 0, &n.to_be_bytes()))
        .collect();
    let written = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Whole frames only: a write is never cut short, it finishes once the gateway reads again.
    let writer = tokio::spawn({
        let (written, stop) = (written.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) && written.load(Ordering::Relaxed) < PING_FLOOD {
                wr.write_all(&batch).await?;
                written.fetch_add(batch.len(), Ordering::Relaxed);
            }
            // The write half stays open: the gateway, not the client, ends the connection.
            Ok::<_, std::io::Error>(wr)
        }
    });
    let mut before = 0;
    let held_back = loop {
        tokio::time::sleep(STOPPED_READING).await;
        let now = written.load(Ordering::Relaxed);
        if writer.is_finished() {
            break false;
        }
        if now == before {
            break true;
        }
        before = now;
    };
    stop.store(true, Ordering::Relaxed);
    eprintln!("PING flood: {before} bytes written before the gateway stopped reading");
    assert!(held_back, "{before} bytes of PINGs taken without a read");
    assert!(
        before < PING_THROUGH,
        "{before} bytes of PINGs taken before the gateway stopped reading"
    );
    memory.assert_flat("PING flood");

    // Read now: the ACKs the gateway owes, its GOAWAY (idle), then the close, which the
    // gateway makes at the end of its goodbye grace even though its PING goes unanswered.
    let mut rd = BufReader::with_capacity(1 << 20, rd);
    let mut acks = 0;
    let mut goaway = None;
    tokio::time::timeout(WAIT, async {
        while let Some(frame) = read_frame(&mut rd).await {
            match frame.kind {
                PING if frame.flags & FLAG_ACK != 0 => acks += 1,
                GOAWAY if goaway.is_none() => goaway = frame.goaway(),
                _ => {}
            }
        }
    })
    .await
    .expect("the connection closed in time");
    eprintln!("PING flood: {acks} ACKs read after the flood");
    let goaway = goaway.expect("a GOAWAY before the close");
    assert_eq!(goaway.code, NO_ERROR, "{goaway:?}");
    let _ = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the writer ends");
    // Counted once the gateway's connection task has ended, which may be after the client
    // saw the close.
    wait_metric(&gw, "ksg_connections_closed_total{reason=\"idle\"}", 1.0).await;
    memory.assert_flat("PING flood, after");
    bystander.still_served(&gw, &cluster, &topic).await;
    gw.shutdown().await;
}

/// Connections dripping a ClientHello at once.
const DRIPPERS: usize = 20;
/// The pace of the drip.
const DRIP: Duration = Duration::from_millis(200);

/// The bytes of a real ClientHello (ALPN `h2`) for `gw`.
fn client_hello(gw: &Handle) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(tls_client_config(gw, b"h2"), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

/// Drips `hello` one byte per [`DRIP`], watching for the close between bytes; returns how many
/// bytes were sent when the server closed the connection, `None` if it never did.
async fn drip(gw: &Handle, hello: Vec<u8>) -> Option<usize> {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    // At most WAIT's worth of bytes, and never the whole ClientHello.
    let bytes = (hello.len() - 1).min((WAIT.as_millis() / DRIP.as_millis()) as usize);
    for (sent, byte) in hello[..bytes].iter().enumerate() {
        if tcp.write_all(&[*byte]).await.is_err() {
            return Some(sent);
        }
        let mut answer = [0u8; 1];
        match tokio::time::timeout(DRIP, tcp.read(&mut answer)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return Some(sent + 1),
            Ok(Ok(_)) => panic!("an answer to {} bytes of a ClientHello", sent + 1),
        }
    }
    None
}

// Slowloris: a ClientHello dripped one byte per 200 ms would hold a connection for a minute if
// each byte restarted the clock. The TLS handshake has one deadline,
// KSG_HANDSHAKE_TIMEOUT_SECS, however the bytes trickle in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_client_hello_is_closed_at_the_handshake_timeout() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::new();
    let topic = unique_topic("slowloris");
    cluster.create_topic(&topic, 1).await;
    let gw = Arc::new(gateway(&cluster, &[("KSG_HANDSHAKE_TIMEOUT_SECS", "1")]).await);
    let bystander = Bystander::join(&gw, &topic).await;
    let memory = Memory::before();

    let hello = client_hello(&gw);
    let drippers: Vec<_> = (0..DRIPPERS)
        .map(|_| {
            tokio::spawn({
                let (gw, hello) = (gw.clone(), hello.clone());
                async move { drip(&gw, hello).await }
            })
        })
        .collect();
    for dripper in drippers {
        let sent = dripper.await.unwrap();
        let sent = sent.expect("closed while the ClientHello was still dripping");
        assert!(sent < hello.len(), "{sent} of {} bytes", hello.len());
    }
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "ksg_connections_rejected_total{reason=\"handshake_timeout\"}"
        ),
        DRIPPERS as f64
    );
    memory.assert_flat("slowloris");
    bystander.still_served(&gw, &cluster, &topic).await;
    Arc::into_inner(gw).expect("one handle").shutdown().await;
}

/// Reads frames until `done` says so, within [`WAIT`].
async fn read_until(
    raw: &mut RawH2<TcpStream>,
    what: &str,
    done: impl Fn(&RawH2<TcpStream>) -> bool,
) {
    tokio::time::timeout(WAIT, async {
        while !done(raw) {
            raw.read_frame().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} in time"));
}

// Flow-control errors (RFC 9113, 6.9.1 and 6.9.2). The gateway keeps the client's windows and
// `h2` answers the errors: a WINDOW_UPDATE that takes a stream's window past 2³¹−1 resets that
// stream with FLOW_CONTROL_ERROR and the connection goes on; a SETTINGS frame whose new initial
// window would take an open stream's window past 2³¹−1 ends the connection with
// GOAWAY(FLOW_CONTROL_ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_pushed_past_the_maximum_are_flow_control_errors() {
    let _serial = one_at_a_time().await;
    const FLOW_CONTROL_ERROR: u32 = 3;
    let cluster = Cluster::new();
    let topic = unique_topic("overflow");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_TLS", "off")]).await;
    let path = format!("/{topic}");
    let max = (1u32 << 31) - 1;
    // RawH2's SETTINGS_INITIAL_WINDOW_SIZE.
    let initial = 16u32 << 20;
    let answered =
        |id: u32| move |raw: &RawH2<TcpStream>| raw.streams.get(&id).is_some_and(|s| s.ok);

    // A stream's window: that stream is reset, the others and the connection go on.
    let mut raw = raw_h2c(&gw).await;
    raw.get(1, &path).await;
    raw.get(3, &path).await;
    read_until(&mut raw, "two responses", |raw| {
        answered(1)(raw) && answered(3)(raw)
    })
    .await;
    raw.send_frame(WINDOW_UPDATE, 0, 1, &(max - initial).to_be_bytes())
        .await;
    // Past it, whatever the gateway has sent on the stream so far (less than 1 MiB).
    raw.send_frame(WINDOW_UPDATE, 0, 1, &(1u32 << 20).to_be_bytes())
        .await;
    read_until(&mut raw, "the reset", |raw| raw.streams[&1].reset.is_some()).await;
    assert_eq!(raw.streams[&1].reset, Some(FLOW_CONTROL_ERROR));
    raw.get(5, &path).await;
    read_until(&mut raw, "a new response", answered(5)).await;
    assert_eq!(raw.streams[&3].reset, None);

    // The initial window: the connection ends.
    let mut raw = raw_h2c(&gw).await;
    raw.get(1, &path).await;
    read_until(&mut raw, "a response", answered(1)).await;
    raw.send_frame(WINDOW_UPDATE, 0, 1, &(max - initial).to_be_bytes())
        .await;
    let mut setting = 4u16.to_be_bytes().to_vec();
    setting.extend_from_slice(&(initial + (1 << 20)).to_be_bytes());
    raw.send_frame(SETTINGS, 0, 0, &setting).await;
    let goaway = tokio::time::timeout(WAIT, async {
        loop {
            let frame = raw.read_frame().await;
            if let Some(goaway) = frame.goaway() {
                return goaway;
            }
        }
    })
    .await
    .expect("GOAWAY in time");
    assert_eq!(goaway.code, FLOW_CONTROL_ERROR, "{goaway:?}");
    gw.shutdown().await;
}
