//! Shared test helpers: the Kafka cluster under test (the in-process mock, or a real broker
//! named by `KSG_TEST_KAFKA`), an in-process gateway on port 0, HTTP/2 and HTTP/1.1 clients over
//! real TLS, and an SSE reader that returns exact events.

#![allow(dead_code)]

pub mod h2raw;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_sse_gateway::config::Config;
use kafka_sse_gateway::embedded::EmbeddedKafka;
use kafka_sse_gateway::Handle;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bounded wait for anything a test expects to happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// The Kafka cluster a test runs against.
pub enum Cluster {
    /// librdkafka's in-process mock cluster, one per test.
    Mock(EmbeddedKafka),
    /// A real broker shared by the suite (`KSG_TEST_KAFKA=host:port`).
    Real(String),
}

impl Cluster {
    /// The mock cluster, or the real broker when `KSG_TEST_KAFKA` is set.
    pub fn new() -> Cluster {
        match std::env::var("KSG_TEST_KAFKA") {
            Ok(brokers) if !brokers.is_empty() => Cluster::Real(brokers),
            _ => Cluster::Mock(EmbeddedKafka::start(1).expect("mock cluster starts")),
        }
    }

    /// True for a real broker.
    pub fn is_real(&self) -> bool {
        matches!(self, Cluster::Real(_))
    }

    /// `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        match self {
            Cluster::Mock(m) => m.bootstrap_servers().to_string(),
            Cluster::Real(b) => b.clone(),
        }
    }

    /// Creates a topic and waits until its metadata is visible.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        match self {
            Cluster::Mock(m) => m
                .create_topic(name, partitions)
                .expect("mock topic created"),
            Cluster::Real(brokers) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .expect("admin client");
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                let results = admin
                    .create_topics([&topic], &AdminOptions::new())
                    .await
                    .expect("create_topics");
                for r in results {
                    r.expect("topic created");
                }
            }
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("metadata client");
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            for _ in 0..100 {
                if let Ok(md) = consumer.fetch_metadata(Some(&name), Duration::from_secs(2)) {
                    let ready = md.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    });
                    if ready {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("topic {name} never became visible");
        })
        .await
        .unwrap();
    }

    /// A producer as users run one: librdkafka's defaults, so keys are placed by its default
    /// partitioner, `consistent_random` (CRC-32 of the key), not by the Java client's murmur2.
    /// One setting differs, and why: idempotence, because the tests count every record exactly
    /// and a producer retry without it (the broker-outage tests cause some) may write a record
    /// twice, which would read as a duplicate sent by the gateway.
    pub fn producer(&self) -> Producer_ {
        self.producer_with(&[])
    }

    /// A producer with librdkafka's defaults (see [`Cluster::producer`]) and `settings` on top,
    /// e.g. `("partitioner", "murmur2_random")` for the Java client's placement.
    pub fn producer_with(&self, settings: &[(&str, &str)]) -> Producer_ {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("enable.idempotence", "true");
        for (k, v) in settings {
            config.set(*k, *v);
        }
        let producer: BaseProducer = config.create().expect("producer");
        Producer_(Arc::new(producer))
    }
}

/// The real broker of `KSG_TEST_KAFKA`, for tests marked `#[ignore = "needs a real broker"]`;
/// run without one (`cargo test -- --include-ignored`), such a test fails rather than pass.
pub fn real_cluster() -> Cluster {
    let cluster = Cluster::new();
    assert!(
        cluster.is_real(),
        "this test needs a real broker: set KSG_TEST_KAFKA=host:port (scripts/test.sh does)"
    );
    cluster
}

/// A producer with helpers that wait for delivery.
#[derive(Clone)]
pub struct Producer_(pub Arc<BaseProducer>);

impl Producer_ {
    /// Queues one record (`partition` None: by key); call [`Producer_::flush`] to deliver.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let mut record = record;
        loop {
            match self.0.send(record) {
                Ok(()) => return,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    self.0.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
    }

    /// Waits until every queued record is delivered.
    pub async fn flush(&self) {
        let p = self.0.clone();
        tokio::task::spawn_blocking(move || {
            p.flush(Duration::from_secs(30)).expect("records delivered")
        })
        .await
        .unwrap();
    }

    /// Sends one record and waits for its delivery.
    pub async fn produce(&self, topic: &str, key: Option<&str>, value: Option<&str>) {
        self.send(
            topic,
            None,
            key.map(str::as_bytes),
            value.map(str::as_bytes),
        );
        self.flush().await;
    }
}

/// Deletes the records of `partition` before `offset` (advances the log start).
pub async fn delete_records(cluster: &Cluster, topic: &str, partition: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .unwrap();
    let result = admin
        .delete_records(&list, &AdminOptions::new())
        .await
        .expect("delete_records");
    for element in result.elements() {
        element.error().expect("records deleted");
    }
}

/// The (low, high) watermarks of a partition.
pub async fn watermarks(cluster: &Cluster, topic: &str, partition: i32) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("consumer");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(5))
            .expect("watermarks")
    })
    .await
    .unwrap()
}

/// Queues `key{k}:{seq}` for every seq in `seqs` and every k below `keys` (by key partitioner).
pub fn produce_keyed(p: &Producer_, topic: &str, keys: usize, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        for k in 0..keys {
            let key = format!("key{k}");
            p.send(
                topic,
                None,
                Some(key.as_bytes()),
                Some(format!("{key}:{seq}").as_bytes()),
            );
        }
    }
}

/// Reads for `period`, expecting only heartbeats (no event, no end); returns how many came.
pub async fn only_heartbeats_for(sse: &mut SseReader, period: Duration) -> usize {
    let until = tokio::time::Instant::now() + period;
    let mut heartbeats = 0;
    while tokio::time::Instant::now() < until {
        let left = until - tokio::time::Instant::now();
        match sse
            .next_block_within(left.min(Duration::from_secs(5)))
            .await
        {
            Ok(Some(block)) if block.data.is_empty() => heartbeats += 1,
            Ok(Some(block)) => panic!("an event while Kafka is down: {block:?}"),
            Ok(None) => panic!("the stream ended while Kafka was down"),
            Err(()) => {}
        }
    }
    heartbeats
}

/// Reads for `period`, expecting no event (heartbeats and id-only blocks are fine; the stream
/// may end): after everything produced was read, an event would be a duplicate or a record the
/// stream should not have.
pub async fn no_event_for(sse: &mut SseReader, period: Duration) {
    let until = tokio::time::Instant::now() + period;
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        match sse.next_block_within(left).await {
            Ok(Some(block)) => assert!(block.data.is_empty(), "an extra event: {block:?}"),
            Ok(None) | Err(()) => break,
        }
    }
}

/// Checks a stream of `key:seq` payloads: per key, sequence numbers continue exactly.
#[derive(Default)]
pub struct Continuity {
    next: std::collections::HashMap<String, u64>,
    /// Events checked.
    pub count: usize,
}

impl Continuity {
    /// Checks one event; panics on a gap or a duplicate.
    pub fn check(&mut self, event: &Block) {
        let text = event.text();
        let (key, seq) = text
            .split_once(':')
            .unwrap_or_else(|| panic!("not key:seq: {text:?}"));
        let seq: u64 = seq.parse().unwrap();
        let expected = self.next.entry(key.to_string()).or_insert(0);
        assert_eq!(
            seq, *expected,
            "key {key}: expected seq {expected}, got {seq} (gap or duplicate)"
        );
        *expected += 1;
        self.count += 1;
    }

    /// A checker that expects every key of `keys` to continue at `seq`.
    pub fn starting_at(keys: impl IntoIterator<Item = String>, seq: u64) -> Continuity {
        Continuity {
            next: keys.into_iter().map(|k| (k, seq)).collect(),
            count: 0,
        }
    }

    /// The next expected sequence number of every key.
    pub fn next_of(&self, key: &str) -> u64 {
        self.next.get(key).copied().unwrap_or(0)
    }
}

/// Reads `n` events of `sse`, each checked by `continuity` (no gap, no duplicate per key).
pub async fn read_checked(sse: &mut SseReader, n: usize, continuity: &mut Continuity) {
    for event in sse.events(n).await {
        continuity.check(&event);
    }
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts a gateway on 127.0.0.1 port 0 for `cluster`, serving every topic, with extra vars.
pub async fn gateway(cluster: &Cluster, extra: &[(&str, &str)]) -> Handle {
    if std::env::var_os("KSG_TEST_LOG").is_some() {
        // The gateway's own log, into the test's output (shown for failing tests).
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_test_writer()
            .try_init();
    }
    let mut vars = vec![
        ("KSG_KAFKA_BROKERS".to_string(), cluster.bootstrap()),
        ("KSG_TOPICS".to_string(), "*".to_string()),
        ("KSG_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("KSG_ADMIN_LISTEN".to_string(), "127.0.0.1:0".to_string()),
    ];
    if !extra.iter().any(|(k, _)| *k == "KSG_AUTH") {
        // Public streams unless a test is about authorization.
        vars.push(("KSG_AUTH".to_string(), "none".to_string()));
    }
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_vars(vars).expect("test config is valid");
    let handle = kafka_sse_gateway::start(config)
        .await
        .expect("gateway starts");
    wait_ready(&handle).await;
    handle
}

/// Waits (bounded) until the gateway has reached Kafka, as a load balancer would via /readyz.
pub async fn wait_ready(handle: &Handle) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !handle.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway never became ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects TCP + TLS (trusting only the gateway's certificate) with the given ALPN protocol.
pub async fn tls_connect(
    handle: &Handle,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(handle.addr).await.expect("connect");
    tls_over(handle, tcp, alpn).await
}

/// A TLS client configuration that trusts only the gateway's certificate and offers `alpn`.
pub fn tls_client_config(handle: &Handle, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let cert = handle.cert_der.clone().expect("TLS is on");
    roots
        .add(CertificateDer::from(cert))
        .expect("certificate is valid");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// TLS (trusting only the gateway's certificate) with the given ALPN protocol over `tcp`, a
/// connection to the gateway on which something may already have been sent.
pub async fn tls_over(
    handle: &Handle,
    tcp: TcpStream,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(handle, alpn));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "ALPN negotiated"
    );
    tls
}

/// An HTTP/2 connection to the gateway.
pub type H2 = h2::client::SendRequest<Bytes>;

/// Opens an HTTP/2 connection over TLS.
pub async fn h2_connect(handle: &Handle) -> H2 {
    let tls = tls_connect(handle, b"h2").await;
    h2_handshake(tls).await
}

/// Opens an HTTP/2 connection over TLS with HTTP/2's default 64 KiB windows, so a stream
/// the test stops reading stalls quickly.
pub async fn h2_connect_small_windows(handle: &Handle) -> H2 {
    let tls = tls_connect(handle, b"h2").await;
    let (send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Runs the HTTP/2 handshake on any stream (TLS or cleartext prior knowledge).
pub async fn h2_handshake<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: T) -> H2 {
    // Windows like a browser's (Chrome: 6 MiB per stream, 15 MiB per connection). With h2's
    // 64 KiB defaults, many streams on one connection get data in fragments as small as the
    // window updates, and h2 treats a flood of small frames as abuse.
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(6 << 20)
        .initial_connection_window_size(15 << 20)
        .handshake(io)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Sends `GET path` with extra headers; returns the response head and an SSE reader.
pub async fn get(
    h2: &H2,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, SseReader) {
    let mut request = http::Request::get(format!("https://localhost{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut h2 = h2.clone().ready().await.expect("connection ready");
    let (response, _) = h2
        .send_request(request.body(()).unwrap(), true)
        .expect("request sent");
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    (
        parts,
        SseReader {
            body: Some(body),
            h1: None,
            buf: BytesMut::new(),
            last_id: None,
            status,
        },
    )
}

/// `GET path` that must open a stream: a `503` (Kafka slow to answer the topic's first
/// metadata, as on a loaded machine) is retried a few times, as EventSource would; any other
/// status fails the test with the response's reason.
pub async fn get_stream(h2: &H2, path: &str, headers: &[(&str, &str)]) -> SseReader {
    for _ in 0..5 {
        let (head, mut sse) = get(h2, path, headers).await;
        match head.status.as_u16() {
            200 => return sse,
            503 => {
                let why = body_text(&mut sse).await;
                eprintln!("GET {path}: 503 ({}), retrying", why.trim());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            status => panic!("GET {path}: {status} {}", body_text(&mut sse).await),
        }
    }
    panic!("GET {path}: still 503 after 5 tries");
}

/// One block of an SSE stream (an event, a comment or a field-only block).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Block {
    /// `event:` field.
    pub event: Option<String>,
    /// `id:` field.
    pub id: Option<String>,
    /// `data:` lines.
    pub data: Vec<String>,
    /// `retry:` field.
    pub retry: Option<String>,
    /// Comment lines (without the colon).
    pub comments: Vec<String>,
}

impl Block {
    /// The data as the browser joins it.
    pub fn text(&self) -> String {
        self.data.join("\n")
    }
}

/// Reads an SSE body block by block, with bounded waits.
pub struct SseReader {
    body: Option<h2::RecvStream>,
    /// An HTTP/1.1 response's chunked body instead (then `body` is `None`).
    h1: Option<H1Body>,
    buf: BytesMut,
    /// The last `id:` seen, as the browser's `lastEventId` would be.
    pub last_id: Option<String>,
    /// The response's status, for failure messages.
    pub status: u16,
}

impl SseReader {
    /// The next block, `None` when the stream ended. Panics after [`WAIT`].
    pub async fn next_block(&mut self) -> Option<Block> {
        self.next_block_within(WAIT)
            .await
            .expect("an SSE block in time")
    }

    /// The next block within `limit`: `Err` on timeout, `Ok(None)` when the stream ended.
    pub async fn next_block_within(&mut self, limit: Duration) -> Result<Option<Block>, ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let raw = self.buf.split_to(end + 2);
                let block = parse_block(&raw[..end]);
                if let Some(id) = &block.id {
                    self.last_id = Some(id.clone());
                }
                return Ok(Some(block));
            }
            if let Some(h1) = self.h1.as_mut() {
                match tokio::time::timeout_at(deadline, h1.data()).await {
                    Err(_) => return Err(()),
                    Ok(None) => {
                        self.h1 = None;
                        return Ok(None);
                    }
                    Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                }
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            match tokio::time::timeout_at(deadline, body.data()).await {
                Err(_) => return Err(()),
                Ok(None) => {
                    self.body = None;
                    return Ok(None);
                }
                Ok(Some(Err(e))) => panic!("stream failed: {e}"),
                Ok(Some(Ok(bytes))) => {
                    let _ = body.flow_control().release_capacity(bytes.len());
                    self.buf.extend_from_slice(&bytes);
                }
            }
        }
    }

    /// The next block that carries data (skips the preamble and heartbeats), within [`WAIT`]
    /// in all: heartbeats do not extend the wait.
    pub async fn next_event(&mut self) -> Option<Block> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = self
                .next_block_within(left)
                .await
                .expect("an SSE event in time")?;
            if !block.data.is_empty() {
                return Some(block);
            }
        }
    }

    /// `n` data events, within [`WAIT`] of the last one; panics, naming what came, if the
    /// stream ends early or goes quiet.
    pub async fn events(&mut self, n: usize) -> Vec<Block> {
        let mut out: Vec<Block> = Vec::with_capacity(n);
        let mut deadline = tokio::time::Instant::now() + WAIT;
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let got: Vec<String> = out.iter().map(Block::text).collect();
            match self.next_block_within(left).await {
                Ok(Some(block)) if block.data.is_empty() => {}
                Ok(Some(block)) => {
                    out.push(block);
                    deadline = tokio::time::Instant::now() + WAIT;
                }
                Ok(None) => panic!(
                    "stream (HTTP {}) ended after {} of {n} events: {got:?}; unparsed: {:?}",
                    self.status,
                    got.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
                Err(()) => panic!(
                    "no event for {WAIT:?} after {} of {n} events: {got:?} (last id {:?})",
                    got.len(),
                    self.last_id
                ),
            }
        }
        out
    }

    /// The raw response body, for reading it other than as SSE (`None` once it ended).
    pub fn body_mut(&mut self) -> &mut Option<h2::RecvStream> {
        &mut self.body
    }
}

/// An HTTP/1.1 response body in chunked transfer coding, over TLS, de-chunked as it comes.
struct H1Body {
    io: tokio_rustls::client::TlsStream<TcpStream>,
    /// Bytes read and not yet de-chunked.
    raw: BytesMut,
}

impl H1Body {
    /// The next chunk's data; `None` at the last chunk or when the peer closes.
    async fn data(&mut self) -> Option<Bytes> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(line) = find(&self.raw, b"\r\n") {
                let size = std::str::from_utf8(&self.raw[..line])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                    .unwrap_or_else(|| panic!("bad chunk size line {:?}", &self.raw[..line]));
                if size == 0 {
                    return None;
                }
                if self.raw.len() >= line + 2 + size + 2 {
                    let _ = self.raw.split_to(line + 2);
                    let data = self.raw.split_to(size).freeze();
                    assert_eq!(&self.raw[..2], b"\r\n", "chunk not ended by CRLF");
                    let _ = self.raw.split_to(2);
                    return Some(data);
                }
            }
            let mut chunk = [0u8; 16384];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.raw.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// `GET path` over HTTP/1.1 on a new TLS connection, with `headers`: an SSE stream that must
/// open (`200`, chunked).
pub async fn h1_stream(handle: &Handle, path: &str, headers: &[(&str, &str)]) -> SseReader {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut io = tls_connect(handle, b"http/1.1").await;
    let mut request =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await.unwrap();
    let mut raw = BytesMut::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!("GET {path}: closed before the head: {raw:?}"),
            Ok(Ok(n)) => raw.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("GET {path}: no head in time"),
        }
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "GET {path}: {head}");
    assert!(
        head.contains("transfer-encoding: chunked"),
        "GET {path}: {head}"
    );
    let _ = raw.split_to(end + 4);
    SseReader {
        body: None,
        h1: Some(H1Body { io, raw }),
        buf: BytesMut::new(),
        last_id: None,
        status: 200,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one block's lines (the gateway ends lines with LF only).
pub fn parse_block(raw: &[u8]) -> Block {
    let text = std::str::from_utf8(raw).expect("SSE is UTF-8");
    let mut block = Block::default();
    for line in text.split('\n') {
        if let Some(comment) = line.strip_prefix(':') {
            block.comments.push(comment.to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "event" => block.event = Some(value),
            "id" => block.id = Some(value),
            "data" => block.data.push(value),
            "retry" => block.retry = Some(value),
            other => panic!("unexpected field {other:?} in {text:?}"),
        }
    }
    block
}

/// Reads a whole (finite) response body as text.
pub async fn body_text(reader: &mut SseReader) -> String {
    let body = reader.body_mut().as_mut().expect("a body");
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(out).unwrap()
}

/// Reads `/metrics` from the admin listener over HTTP, as Prometheus scrapes it.
pub async fn metrics(handle: &Handle) -> String {
    let (status, body) = admin_get(handle, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// `GET path` on the admin listener (HTTP/1.1, `Connection: close`): status and body.
pub async fn admin_get(handle: &Handle, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(handle.admin_addr)
        .await
        .expect("admin listener");
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    let raw = http1_exchange(&mut tcp, &request, b"\0never\0").await;
    let text = String::from_utf8(raw).expect("admin responses are UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// The value of one metric series in Prometheus text. A missing series fails the test: a
/// renamed or unregistered metric must never read as 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
}

/// Waits, with a deadline ([`WAIT`]), until the series `series` on `/metrics` reads `want`;
/// fails the test with what it read last otherwise.
pub async fn wait_metric(gw: &Handle, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = metric(&metrics(gw).await, series);
        if seen == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {seen}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where each record of `topic` is: value → (partition, offset), read back from Kafka by a
/// plain consumer up to each partition's high watermark, so tests know the placement whatever
/// partitioner the producer used.
pub async fn placement(
    cluster: &Cluster,
    topic: &str,
) -> std::collections::HashMap<String, (i32, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", unique_topic("placement"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::message::Message;
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .expect("metadata");
        let partitions = md.topics()[0].partitions().len() as i32;
        let mut list = rdkafka::TopicPartitionList::new();
        let mut left = std::collections::HashMap::new();
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .expect("watermarks");
            if high > low {
                list.add_partition_offset(&topic, p, rdkafka::Offset::Offset(low))
                    .unwrap();
                left.insert(p, high);
            }
        }
        consumer.assign(&list).expect("assign");
        let mut out = std::collections::HashMap::new();
        let deadline = std::time::Instant::now() + WAIT;
        while !left.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "reading {topic} back: {left:?} left"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
                    out.insert(value.into_owned(), (m.partition(), m.offset()));
                    if left
                        .get(&m.partition())
                        .is_some_and(|h| m.offset() + 1 >= *h)
                    {
                        left.remove(&m.partition());
                    }
                }
                Some(Err(e)) => panic!("reading back: {e}"),
                None => {}
            }
        }
        out
    })
    .await
    .unwrap()
}

/// Sends a raw HTTP/1.1 request on any stream and reads until `until` appears in the response
/// (or the peer closes); returns everything read.
pub async fn http1_exchange<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    request: &str,
    until: &[u8],
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while find(&out, until).is_none() {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "no {:?} in time; got {:?}",
                String::from_utf8_lossy(until),
                String::from_utf8_lossy(&out)
            ),
        }
    }
    out
}

/// A CreateTime base for records a test sets timestamps on: one hour ago, in whole seconds, the
/// same for the whole test process. Recent on purpose: a real broker's time retention (7 days
/// by default) deletes records whose timestamps are older, at its next retention check.
pub fn recent_base_ts() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        (now - 3600) * 1000
    })
}

/// `ms` since the epoch as RFC 3339 in UTC (`2023-11-14T22:13:28Z`; whole seconds only).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The answer an EventSource gets for a transient refusal: `200`, `text/event-stream`, a
/// `retry:` of a wait within `wait_ms` plus up to a quarter more, one `event: unavailable`
/// naming `reason` with the same `retry_ms`, and the end of the stream. Returns the `retry:`
/// value.
pub async fn assert_unavailable_stream(
    head: &http::response::Parts,
    body: &mut SseReader,
    reason: &str,
    wait_ms: std::ops::RangeInclusive<u64>,
) -> u64 {
    assert_eq!(
        head.status, 200,
        "an EventSource is never refused with another status"
    );
    assert_eq!(
        head.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    let text = body_text(body).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "retry, event, data and the blank line: {text:?}"
    );
    let retry: u64 = lines[0]
        .strip_prefix("retry: ")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("retry first: {text:?}"));
    let (least, most) = (*wait_ms.start(), *wait_ms.end());
    assert!(
        (least..=most + most / 4).contains(&retry),
        "retry {retry} for a wait of {wait_ms:?} ms"
    );
    assert_eq!(lines[1], "event: unavailable");
    let data: serde_json::Value =
        serde_json::from_str(lines[2].strip_prefix("data: ").expect("data")).expect("JSON");
    assert_eq!(
        data,
        serde_json::json!({"reason": reason, "retry_ms": retry})
    );
    assert_eq!(lines[3], "");
    assert!(text.ends_with("\n\n"));
    retry
}
