//! `ksg-bench`: load and measurement for the gateway and its peer, nginx + nchan.
//!
//! ```text
//! ksg-bench run --name W2 --server gateway --url https://127.0.0.1:8443/bench \
//!     --ca cert.pem --connections 4 --streams 256 \
//!     --publish kafka://127.0.0.1:9092/bench --rate 100 --size 100 \
//!     --warmup 3 --seconds 20 --pids 1234
//! ksg-bench report results.jsonl        # a Markdown table of the runs
//! ksg-bench floor                       # this machine's CPU per wake-up and loopback write
//! ```
//!
//! `run` opens `connections` HTTP/2 connections (TLS with ALPN h2 for `https://`, prior
//! knowledge for `http://`) with a browser's windows (Chrome: 6 MiB per stream, 15 MiB per
//! connection), and `streams` SSE streams on each. It publishes `rate` records per second of
//! `size` bytes, each carrying its publish time and a sequence number per key, either to Kafka
//! (`kafka://brokers/topic`) or to an HTTP publisher such as nchan's (`http://host:port/path`),
//! and reads every stream: events counted, produce→receive latency in an HdrHistogram, every
//! stream's sequence checked for loss and duplicates. The server's CPU time and RSS (every pid
//! given, summed) are read from /proc around the measured window, and so are its threads' CPU
//! time and context switches (`wakeups_per_sec`, and `threads`: each thread name's share, the
//! busiest first); with `--wake-us` (this machine's price of a wake-up, from `ksg-bench floor`)
//! also what those context switches cost per delivered event (`wake_cpu_us_per_event`). One
//! JSON object is printed.
//!
//! `{key}` in `--url` and `--publish` is replaced by the stream's key (`k0`, `k1`, …) when
//! `--keys N` is given: stream `i` reads key `k{i % N}`, the publisher cycles through the keys.
//! A keyed record's value names its key's number (`"k":17`), so a stream of several keys (all
//! keys, `--extra`) checks each key's sequence on its own.
//!
//! `--watch W` (with `--keys N`) makes each stream a watchlist: stream `i` names W of the N keys
//! in its query (`?key=k3&key=k17&…`, a choice fixed by `i`, every key in about as many
//! streams), and checks each key's sequence on its own.
//!
//! `--filters F` (with `--keys F`) makes each stream a filtered stream of every key: stream `i`
//! asks `?where=/k={i % F}`, the records whose value names key `i % F`, tested by the gateway
//! on each record's JSON value (F distinct filters), and checks that key's sequence.
//!
//! `--extra URL --extra-streams N` adds one more connection of N streams reading `URL` (for
//! example all-keys streams beside key streams). `--metrics URL` (the gateway's admin
//! `/metrics`) samples the summed `ksg_consumer_lag` once a second through the window: its start,
//! end, peak and growth per second (least squares), and `held`: whether the publisher queued at
//! least 99% of `--rate`, and both the lag and its records not yet acknowledged by the broker
//! (librdkafka's delivery reports; `acked_per_sec`) grew by less than 1% of it per second;
//! `routed`: held, and the streams received at least 99% of the deliveries the records owed them
//! (`delivered_pct`, where the run's shape says how many). `--after SECS`
//! closes every connection when the window ends and reads the server's RSS SECS later (memory
//! given back after a load). The records published in the window give `cpu_us_per_record`.
//! Every run counts the heartbeats (comment-only blocks) read in the window and the longest any
//! stream went without receiving anything (`max_silence_ms`); `--probe URL,...` asks each URL
//! once a second in the window, from a thread and a runtime of its own (so the load
//! generator's own backlog stays out of it), and reports the slowest answer and the failures.
//!
//! Workloads: `--idle true` publishes nothing and reports RSS per open stream; `--stall F` adds
//! a fraction F of streams that never read (HTTP/2's default 64 KiB windows, on connections of
//! their own); `--churn R` drops R streams per second and resumes each with `Last-Event-ID`.
//!
//! `--restart URL --new-pid P` (W9, a rolling restart): after the window the old process (the
//! one `--pids`) gets SIGTERM. Every stream it ends resumes as a browser's EventSource does:
//! after its `retry:` time plus up to 200 ms of jitter, with `Last-Event-ID`, on one new
//! connection per old connection (a browser shares one per origin) to URL, sent once the
//! server's SETTINGS arrived; a `429` is retried after its `Retry-After`, a `503` after the
//! retry time, a lost connection on a new one. Reported: the time from SIGTERM until every
//! stream was answered again, each resume's request→response time (p50, p99, max), with
//! `--new-metrics URL` the new process's own answer times (its `ksg_answer_seconds`: the 99th
//! percentile's bucket and the share within 0.5 s), the refusals, the new process's peak RSS,
//! and its CPU and RSS over a window once every stream is back, beside the old process's in the
//! first window. Loss and duplicates are counted across the restart.
//! `--outage SECS`: the new process waits stopped (SIGSTOP, e.g. a shell that stops itself and
//! then `exec`s the gateway) and is continued SECS after the SIGTERM; the times are then counted
//! from its continuation.

mod floor;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage: ksg-bench run --url URL [options]     one run; prints one JSON object
       ksg-bench report results.jsonl        a Markdown table of runs
       ksg-bench floor [SECONDS]             this machine's CPU per wake-up and per small
                                             loopback write to a sleeping reader [1 s each]

run options (defaults in brackets):
  --name N           workload label [run]          --server S     server label [gateway]
  --url URL          https://host:port/path or http:// (h2c); {key} is each stream's key
  --ca FILE          PEM root(s) to trust for https
  --connections C    HTTP/2 connections [1]        --streams S    streams per connection [1], <= 256
  --publish P        kafka://brokers/topic or http://host:port/path ({key} allowed)
  --rate R           records per second [100]      --size B       value bytes [100]
  --keys K           keys k0..k{K-1}, stream i reads k{i % K} [0: no keys]
  --watch W          with --keys: stream i reads W of the keys, named as ?key=… [0: no]
  --filters F        with --keys F: stream i reads ?where=/k={i % F} on an all-keys URL [0: no]
  --warmup SECS      before measuring [3]          --seconds SECS measured window [20]
  --pids P1,P2       server processes whose CPU and RSS are read from /proc
  --idle true        publish nothing (RSS per open stream)
  --stall F          add a fraction F of streams that never read [0]
  --stalled N        add N streams that never read (instead of a fraction; --connections may be 0)
  --stall-window W   the stalled connections' HTTP/2 stream window [65535]; 0: nothing ever sent
  --churn R          drop and resume R streams per second with Last-Event-ID [0]
  --extra URL        one more connection, reading URL ...
  --extra-streams N  ... with N streams [0]
  --metrics URL      http://host:port/metrics: ksg_consumer_lag once a second in the window
                     (start, end, peak, growth per second), and whether the broker and the
                     consumer held the rate (and the streams got their records: routed)
  --after SECS       close every connection after the window, read RSS SECS later [0: no]
  --probe URL,...    http:// URLs (e.g. /healthz, /metrics) asked once a second in the window,
                     from a thread of their own: the slowest answer and the failures
  --mix URL          every second connection reads URL instead of --url
  --restart URL      a rolling restart after the window: SIGTERM to the --pids process; every
                     stream that ends resumes on URL as EventSource does (see below) ...
  --new-pid P        ... whose process P is then measured for another window
  --new-metrics URL  ... whose admin /metrics is URL: its ksg_answer_seconds, the time it took
                     to answer, read once every stream is back
  --outage SECS      ... and which is stopped (SIGSTOP) until SECS after the SIGTERM, then
                     continued (SIGCONT): an outage between the two [0]
  --http1 true       every stream on an HTTP/1.1 connection of its own (as EventSource over
                     HTTP/1.1 does), C x S of them; not with --churn, --stall, --extra, --restart
  --wake-us US       this machine's CPU-µs per wake-up (ksg-bench floor): the run reports what
                     the server's context switches cost per event at that price
  --perf FILE        `perf record -g` of the --pids processes over the window (with --restart:
                     of the new process, from the SIGTERM (or SIGCONT) until every stream is
                     back) into FILE; the run's figures then include perf's own cost
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return;
    }
    let result = match args.first().map(String::as_str) {
        Some("run") => Options::parse(&args[1..]).and_then(|o| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(o))
        }),
        Some("report") if args.len() == 2 => report(&args[1]),
        Some("floor") if args.len() <= 2 => args
            .get(1)
            .map_or(Ok(1.0), |s| s.parse::<f64>())
            .map_err(|e| format!("floor: SECONDS: {e}").into())
            .and_then(|secs| {
                if !(0.01..=60.0).contains(&secs) {
                    return Err("floor: SECONDS must be between 0.01 and 60".into());
                }
                floor::measure(secs).map(|f| println!("{}", f.json()))
            }),
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("ksg-bench: {e}");
        std::process::exit(1);
    }
}

/// What one run does.
#[derive(Debug, Clone)]
struct Options {
    name: String,
    server: String,
    url: String,
    ca: Option<String>,
    connections: usize,
    streams: usize,
    publish: Option<String>,
    rate: f64,
    size: usize,
    keys: usize,
    watch: usize,
    filters: usize,
    warmup: f64,
    seconds: f64,
    pids: Vec<u32>,
    idle: bool,
    stall: f64,
    stalled: Option<usize>,
    stall_window: u32,
    churn: f64,
    extra: Option<String>,
    extra_streams: usize,
    metrics: Option<String>,
    after: f64,
    probe: Vec<String>,
    mix: Option<String>,
    restart: Option<String>,
    new_pid: Option<u32>,
    new_metrics: Option<String>,
    outage: f64,
    http1: bool,
    perf: Option<String>,
    /// This machine's CPU-µs per wake-up (`ksg-bench floor`), to price the server's.
    wake_us: Option<f64>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, BoxError> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --option, got {flag}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_string(), value.clone());
        }
        let mut take = |k: &str| map.remove(k);
        fn num<T: std::str::FromStr>(v: Option<String>, k: &str, d: T) -> Result<T, BoxError> {
            match v {
                None => Ok(d),
                Some(s) => s
                    .parse()
                    .map_err(|_| format!("--{k}: bad value {s}").into()),
            }
        }
        let o = Options {
            name: take("name").unwrap_or_else(|| "run".into()),
            server: take("server").unwrap_or_else(|| "gateway".into()),
            url: take("url").ok_or("--url is required")?,
            ca: take("ca"),
            connections: num(take("connections"), "connections", 1)?,
            streams: num(take("streams"), "streams", 1)?,
            publish: take("publish"),
            rate: num(take("rate"), "rate", 100.0)?,
            size: num(take("size"), "size", 100)?,
            keys: num(take("keys"), "keys", 0)?,
            watch: num(take("watch"), "watch", 0)?,
            filters: num(take("filters"), "filters", 0)?,
            warmup: num(take("warmup"), "warmup", 3.0)?,
            seconds: num(take("seconds"), "seconds", 20.0)?,
            pids: match take("pids") {
                None => Vec::new(),
                Some(s) => s
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.trim().parse().map_err(|_| format!("--pids: bad pid {p}")))
                    .collect::<Result<_, _>>()?,
            },
            idle: num(take("idle"), "idle", false)?,
            stall: num(take("stall"), "stall", 0.0)?,
            stalled: take("stalled")
                .map(|v| v.parse().map_err(|_| format!("--stalled: bad value {v}")))
                .transpose()?,
            stall_window: num(take("stall-window"), "stall-window", 65_535)?,
            churn: num(take("churn"), "churn", 0.0)?,
            extra: take("extra"),
            extra_streams: num(take("extra-streams"), "extra-streams", 0)?,
            metrics: take("metrics"),
            after: num(take("after"), "after", 0.0)?,
            probe: take("probe")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            mix: take("mix"),
            restart: take("restart"),
            new_pid: take("new-pid")
                .map(|v| v.parse().map_err(|_| format!("--new-pid: bad value {v}")))
                .transpose()?,
            new_metrics: take("new-metrics"),
            outage: num(take("outage"), "outage", 0.0)?,
            http1: num(take("http1"), "http1", false)?,
            perf: take("perf"),
            wake_us: take("wake-us")
                .map(|v| match v.parse::<f64>() {
                    Ok(us) if us.is_finite() && us > 0.0 => Ok(us),
                    _ => Err(format!("--wake-us: bad value {v}")),
                })
                .transpose()?,
        };
        if let Some(k) = map.keys().next() {
            return Err(format!("unknown option --{k}").into());
        }
        if o.streams == 0 || o.streams > 256 {
            return Err("--streams must be 1..=256 (per connection)".into());
        }
        if o.extra_streams > 256 || (o.extra_streams > 0) != o.extra.is_some() {
            return Err("--extra URL and --extra-streams 1..=256 go together".into());
        }
        if o.restart.is_some() != o.new_pid.is_some() || (o.restart.is_some() && o.pids.len() != 1)
        {
            return Err(
                "--restart URL needs --new-pid and exactly one --pids (the old process)".into(),
            );
        }
        if o.http1
            && (o.churn > 0.0
                || o.stall > 0.0
                || o.stalled.is_some()
                || o.extra.is_some()
                || o.restart.is_some()
                || o.mix.is_some())
        {
            return Err("--http1 true goes with plain streams only (no --churn, --stall, --stalled, --extra, --restart, --mix)".into());
        }
        if o.watch > o.keys || (o.watch > 0 && o.url.contains("{key}")) {
            return Err("--watch W needs --keys N >= W and a --url without {key}".into());
        }
        if o.filters > 0 && (o.filters != o.keys || o.watch > 0 || o.url.contains("{key}")) {
            return Err("--filters F needs --keys F, no --watch and a --url without {key}".into());
        }
        if !o.idle && o.publish.is_none() {
            return Err("--publish is required unless --idle true".into());
        }
        Ok(o)
    }

    fn key(&self, i: usize) -> Option<String> {
        (self.keys > 0 && self.watch == 0 && self.filters == 0)
            .then(|| format!("k{}", i % self.keys))
    }

    /// The keys stream `i` watches (`--watch`): W distinct keys, drawn by a generator seeded
    /// with `i` (a partial shuffle of the N keys), so each key is in about streams × W / N.
    fn watched(&self, i: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.keys).collect();
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for j in 0..self.watch {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pick = j + (x % (self.keys - j) as u64) as usize;
            order.swap(j, pick);
        }
        order.truncate(self.watch);
        order
    }

    /// The path of stream `i` for the path `path` of the URL it reads.
    fn stream_path(&self, i: usize, path: String) -> String {
        if self.watch > 0 {
            let query: Vec<String> = self
                .watched(i)
                .iter()
                .map(|k| format!("key=k{k}"))
                .collect();
            let join = if path.contains('?') { '&' } else { '?' };
            return format!("{path}{join}{}", query.join("&"));
        }
        if self.filters > 0 {
            let join = if path.contains('?') { '&' } else { '?' };
            return format!("{path}{join}where=/k={}", i % self.filters);
        }
        match self.key(i) {
            Some(k) => path.replace("{key}", &k),
            None => path,
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What every reader adds to.
struct Shared {
    measuring: AtomicBool,
    events: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    resumes: AtomicU64,
    resets: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    /// Records handed to the publisher's sink, and of those, the ones the broker (or the HTTP
    /// publisher) acknowledged.
    published: AtomicU64,
    acked: Arc<AtomicU64>,
    /// Heartbeats (comment-only blocks) read in the window, and the longest a stream went
    /// without receiving anything, ending in the window (µs).
    heartbeats: AtomicU64,
    silence_us: AtomicU64,
    /// The tasks that drive the HTTP/2 connections: aborted to close them (`--after`).
    drivers: Mutex<Vec<tokio::task::AbortHandle>>,
    /// One latency histogram per connection (its streams are read by one task), merged at
    /// the end.
    latencies: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>>,
    stop: AtomicBool,
    /// A rolling restart is under way: ended streams resume on the new server.
    restarting: AtomicBool,
    /// Streams answered 200 by the new server, and the refusals on the way.
    moved: AtomicU64,
    refused_429: AtomicU64,
    refused_503: AtomicU64,
    /// Request → response time of each resume on the new server (µs).
    answer: Mutex<Option<Histogram<u64>>>,
}

impl Shared {
    /// A new histogram for one connection's streams: 1 µs .. 100 s, 3 significant digits.
    fn histogram(&self) -> Arc<Mutex<Histogram<u64>>> {
        let h = Histogram::new_with_bounds(1, 100_000_000, 3).expect("bounds");
        let h = Arc::new(Mutex::new(h));
        if let Ok(mut all) = self.latencies.lock() {
            all.push(h.clone());
        }
        h
    }

    fn new() -> Shared {
        Shared {
            measuring: AtomicBool::new(false),
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            published: AtomicU64::new(0),
            acked: Arc::new(AtomicU64::new(0)),
            heartbeats: AtomicU64::new(0),
            silence_us: AtomicU64::new(0),
            drivers: Mutex::new(Vec::new()),
            latencies: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            restarting: AtomicBool::new(false),
            moved: AtomicU64::new(0),
            refused_429: AtomicU64::new(0),
            refused_503: AtomicU64::new(0),
            answer: Mutex::new(Histogram::new_with_bounds(1, 100_000_000, 3).ok()),
        }
    }
}

/// Where subscribers connect.
struct Target {
    tls: Option<Tls>,
    authority: String,
}

/// The TLS connectors of a target: offering `h2`, and offering `http/1.1` (`--http1`).
struct Tls {
    h2: tokio_rustls::TlsConnector,
    h1: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Target {
    fn new(url: &str, ca: Option<&str>) -> Result<Target, BoxError> {
        let (scheme, rest) = url.split_once("://").ok_or("--url needs a scheme")?;
        let authority = rest.split('/').next().unwrap_or_default().to_string();
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h);
        let tls = match scheme {
            "https" => {
                let mut roots = rustls::RootCertStore::empty();
                let ca = ca.ok_or("--ca is required for https")?;
                for cert in CertificateDer::pem_file_iter(ca)? {
                    roots.add(cert?)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"h2".to_vec()];
                let mut h1 = config.clone();
                h1.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = ServerName::try_from(host.to_string())?;
                Some(Tls {
                    h2: tokio_rustls::TlsConnector::from(Arc::new(config)),
                    h1: tokio_rustls::TlsConnector::from(Arc::new(h1)),
                    name,
                })
            }
            "http" => None,
            other => return Err(format!("unsupported scheme {other}").into()),
        };
        Ok(Target { tls, authority })
    }

    /// `GET path` on an HTTP/1.1 connection of its own: the connection, once the response's
    /// head (`200`) is read, the body bytes read with it, and whether the body is chunked (or
    /// ends with the connection).
    async fn get_h1(
        &self,
        path: &str,
        last_id: Option<&str>,
    ) -> Result<(Box<dyn IoBox>, BytesMut, bool), BoxError> {
        let tcp = TcpStream::connect(&self.authority).await?;
        tcp.set_nodelay(true)?;
        let mut io: Box<dyn IoBox> = match &self.tls {
            Some(tls) => {
                let io = tls.h1.connect(tls.name.clone(), tcp).await?;
                if io.get_ref().1.alpn_protocol() != Some(b"http/1.1") {
                    return Err("the server did not choose http/1.1 by ALPN".into());
                }
                Box::new(io)
            }
            None => Box::new(tcp),
        };
        let resume = last_id.map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n{resume}\r\n",
            self.authority
        );
        io.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if buf.len() > 64 * 1024 || io.read_buf(&mut buf).await? == 0 {
                return Err(format!("{path}: no response head").into());
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            let status = head.lines().next().unwrap_or_default().to_string();
            return Err(format!("{path} answered {status}").into());
        }
        let chunked = head.contains("transfer-encoding: chunked");
        let _ = buf.split_to(end + 4);
        Ok((io, buf, chunked))
    }

    async fn connect(
        &self,
        windows: Windows,
        shared: &Shared,
    ) -> Result<h2::client::SendRequest<Bytes>, BoxError> {
        let tcp = TcpStream::connect(&self.authority).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn IoBox> = match &self.tls {
            Some(Tls { h2, name, .. }) => {
                let tls = h2.connect(name.clone(), tcp).await?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the server did not choose h2 by ALPN".into());
                }
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let mut builder = h2::client::Builder::new();
        match windows {
            Windows::Browser => {
                builder
                    .initial_window_size(6 << 20)
                    .initial_connection_window_size(15 << 20);
            }
            Windows::Stalled(window) => {
                builder.initial_window_size(window);
            }
        }
        let (send, connection) = builder.handshake::<_, Bytes>(io).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        if let Ok(mut drivers) = shared.drivers.lock() {
            drivers.push(driver.abort_handle());
        }
        Ok(send)
    }
}

/// A connection's HTTP/2 windows: a browser's, or a stalled client's stream window.
#[derive(Clone, Copy)]
enum Windows {
    Browser,
    Stalled(u32),
}

trait IoBox: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoBox for T {}

/// One subscriber stream.
struct Sub {
    path: String,
    stalled: bool,
    shared: Arc<Shared>,
    latency: Arc<Mutex<Histogram<u64>>>,
    authority: String,
    /// Mean seconds between this stream's drops (churn), if any.
    churn_every: Option<f64>,
    seed: u64,
    /// Where the stream resumes in a rolling restart (`--restart`).
    moving: Option<Arc<Moving>>,
}

/// Where one connection's streams go in a rolling restart: one new connection to the new
/// server, opened by the first stream that needs it and shared by the others, as a browser
/// shares one connection per origin.
struct Moving {
    target: Arc<Target>,
    conn: tokio::sync::Mutex<Option<h2::client::SendRequest<Bytes>>>,
}

impl Moving {
    async fn connection(
        &self,
        shared: &Shared,
    ) -> Result<h2::client::SendRequest<Bytes>, BoxError> {
        let mut slot = self.conn.lock().await;
        if let Some(h2) = slot.as_ref() {
            return Ok(h2.clone());
        }
        let h2 = self.target.connect(Windows::Browser, shared).await?;
        *slot = Some(h2.clone());
        Ok(h2)
    }

    /// The connection failed: the next stream that needs one opens a new one.
    async fn forget(&self) {
        *self.conn.lock().await = None;
    }
}

/// Sequence state of one stream: the last `s` seen of each key (`k`, 0 for unkeyed records),
/// to find loss and duplicates.
#[derive(Default)]
struct Seq {
    last: HashMap<u64, u64>,
    last_id: Option<String>,
    /// The server's `retry:` (ms), the wait before a browser reconnects.
    retry_ms: Option<u64>,
}

impl Sub {
    async fn request(
        &self,
        h2: &h2::client::SendRequest<Bytes>,
        last_id: Option<&str>,
    ) -> Result<http::Response<h2::RecvStream>, BoxError> {
        let mut request = http::Request::get(format!("https://{}{}", self.authority, self.path))
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            request = request.header("last-event-id", id);
        }
        let mut h2 = h2.clone().ready().await?;
        let (response, _) = h2.send_request(request.body(())?, true)?;
        Ok(tokio::time::timeout(Duration::from_secs(60), response).await??)
    }

    async fn open(
        &self,
        h2: &h2::client::SendRequest<Bytes>,
        last_id: Option<&str>,
    ) -> Result<h2::RecvStream, BoxError> {
        let response = self.request(h2, last_id).await?;
        if response.status() != 200 {
            return Err(format!("{} answered {}", self.path, response.status()).into());
        }
        Ok(response.into_body())
    }

    /// Reads the stream until the run stops; drops and resumes it when churning.
    /// A rolling restart ended the stream: resumes it on the new server as EventSource does
    /// (see the module's documentation). `None`: the run ended, or the stream was refused for
    /// good.
    async fn move_over(
        &self,
        moving: &Moving,
        seq: &Seq,
    ) -> Option<(h2::client::SendRequest<Bytes>, h2::RecvStream)> {
        let mut rng = (self.seed ^ now_us()) | 1;
        let mut jitter = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            Duration::from_millis(rng % 201)
        };
        let retry = Duration::from_millis(seq.retry_ms.unwrap_or(3000));
        let mut wait = retry + jitter();
        let shared = &self.shared;
        loop {
            tokio::time::sleep(wait).await;
            if shared.stop.load(Ordering::Relaxed) {
                return None;
            }
            wait = retry + jitter();
            let Ok(h2) = moving.connection(shared).await else {
                continue;
            };
            let asked = Instant::now();
            let response = match self.request(&h2, seq.last_id.as_deref()).await {
                Ok(response) => response,
                Err(_) => {
                    moving.forget().await;
                    wait = jitter();
                    continue;
                }
            };
            match response.status().as_u16() {
                200 => {
                    let took = asked.elapsed().as_micros() as u64;
                    if let Ok(mut h) = shared.answer.lock() {
                        if let Some(h) = h.as_mut() {
                            let _ = h.record(took.max(1));
                        }
                    }
                    shared.moved.fetch_add(1, Ordering::Relaxed);
                    return Some((h2, response.into_body()));
                }
                429 => {
                    shared.refused_429.fetch_add(1, Ordering::Relaxed);
                    let after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    if let Some(secs) = after {
                        wait = Duration::from_secs(secs) + jitter();
                    }
                }
                503 => {
                    shared.refused_503.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    // EventSource closes for good on any other answer.
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
    }

    async fn read(self, mut h2: h2::client::SendRequest<Bytes>, first: h2::RecvStream) {
        let mut body = first;
        let mut seq = Seq::default();
        let mut buf = BytesMut::new();
        let mut rng = self.seed | 1;
        let mut heard = Instant::now();
        loop {
            let drop_at = self.churn_every.map(|mean| {
                // Exponential gaps: drops spread evenly over time.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let u = (rng >> 11) as f64 / (1u64 << 53) as f64;
                tokio::time::Instant::now() + Duration::from_secs_f64(-mean * (1.0 - u).ln())
            });
            let dropped = loop {
                if self.shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                // No timer per event: an idle stream is simply dropped when the run ends.
                let next = tokio::select! {
                    d = body.data() => d,
                    _ = sleep_opt(drop_at) => break true,
                };
                match next {
                    Some(Ok(data)) => {
                        if self.stalled {
                            continue;
                        }
                        if self.shared.measuring.load(Ordering::Relaxed) {
                            let silence = heard.elapsed().as_micros() as u64;
                            self.shared.silence_us.fetch_max(silence, Ordering::Relaxed);
                        }
                        heard = Instant::now();
                        let _ = body.flow_control().release_capacity(data.len());
                        buf.extend_from_slice(&data);
                        self.blocks(&mut buf, &mut seq);
                    }
                    Some(Err(_)) | None => break false,
                }
            };
            if !dropped {
                // The server ended or reset the stream; a browser would reconnect.
                self.shared.resets.fetch_add(1, Ordering::Relaxed);
                if self.stalled {
                    return;
                }
            }
            drop(body);
            buf.clear();
            let moving = self
                .moving
                .as_ref()
                .filter(|_| !dropped && self.shared.restarting.load(Ordering::Relaxed));
            if let Some(moving) = moving {
                match self.move_over(moving, &seq).await {
                    Some((conn, b)) => {
                        h2 = conn;
                        body = b;
                        continue;
                    }
                    None => return,
                }
            }
            match self.open(&h2, seq.last_id.as_deref()).await {
                Ok(b) => {
                    self.shared.resumes.fetch_add(1, Ordering::Relaxed);
                    body = b;
                }
                Err(_) => {
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Reads the stream on its HTTP/1.1 connection (`raw`: what came with the response's head)
    /// until the run stops; a stream the server ends is resumed on a new connection with its
    /// last id, as EventSource does.
    async fn read_h1(
        self,
        target: Arc<Target>,
        mut io: Box<dyn IoBox>,
        mut raw: BytesMut,
        mut chunked: bool,
    ) {
        let mut seq = Seq::default();
        let mut buf = BytesMut::new();
        let mut heard = Instant::now();
        loop {
            // De-chunks what is read: a chunk's size line, its data, CRLF; size 0 ends.
            let ended = loop {
                if self.shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut took = false;
                if !chunked && !raw.is_empty() {
                    buf.extend_from_slice(&raw.split());
                    took = true;
                }
                while let Some(line) = raw
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .filter(|_| chunked)
                {
                    let size = std::str::from_utf8(&raw[..line])
                        .ok()
                        .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
                    let Some(size) = size else {
                        self.shared.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    if raw.len() < line + 2 + size + 2 {
                        break;
                    }
                    let _ = raw.split_to(line + 2);
                    buf.extend_from_slice(&raw.split_to(size));
                    let _ = raw.split_to(2);
                    took = true;
                    if size == 0 {
                        break;
                    }
                }
                if took {
                    if self.shared.measuring.load(Ordering::Relaxed) {
                        let silence = heard.elapsed().as_micros() as u64;
                        self.shared.silence_us.fetch_max(silence, Ordering::Relaxed);
                    }
                    heard = Instant::now();
                    self.blocks(&mut buf, &mut seq);
                }
                match io.read_buf(&mut raw).await {
                    Ok(0) | Err(_) => break true,
                    Ok(_) => {}
                }
            };
            if ended {
                self.shared.resets.fetch_add(1, Ordering::Relaxed);
            }
            buf.clear();
            raw.clear();
            match target.get_h1(&self.path, seq.last_id.as_deref()).await {
                Ok((next, rest, is_chunked)) => {
                    self.shared.resumes.fetch_add(1, Ordering::Relaxed);
                    io = next;
                    raw = rest;
                    chunked = is_chunked;
                }
                Err(_) => {
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    fn blocks(&self, buf: &mut BytesMut, seq: &mut Seq) {
        while let Some(end) = block_end(buf) {
            let block = buf.split_to(end + 2);
            let mut t = None;
            let mut s = None;
            let mut k = None;
            if &block[..end] == b":" && self.shared.measuring.load(Ordering::Relaxed) {
                self.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            for line in block[..end].split(|b| *b == b'\n') {
                if let Some(id) = line.strip_prefix(b"id: ") {
                    seq.last_id = Some(String::from_utf8_lossy(id).into_owned());
                } else if let Some(ms) = line.strip_prefix(b"retry: ") {
                    seq.retry_ms = std::str::from_utf8(ms).ok().and_then(|v| v.parse().ok());
                } else if let Some(data) = line.strip_prefix(b"data: ") {
                    t = field(data, b"\"t\":");
                    s = field(data, b"\"s\":");
                    k = field(data, b"\"k\":");
                }
            }
            let (Some(t), Some(s)) = (t, s) else { continue };
            let shared = &self.shared;
            let last = seq.last.get(&k.unwrap_or(0)).copied();
            match last {
                Some(last) if s <= last => {
                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(last) if s > last + 1 => {
                    shared.lost.fetch_add(s - last - 1, Ordering::Relaxed);
                }
                _ => {}
            }
            seq.last.insert(k.unwrap_or(0), s);
            if shared.measuring.load(Ordering::Relaxed) {
                shared.events.fetch_add(1, Ordering::Relaxed);
                shared
                    .bytes
                    .fetch_add(block.len() as u64, Ordering::Relaxed);
                let latency = now_us().saturating_sub(t).max(1);
                if let Ok(mut h) = self.latency.lock() {
                    let _ = h.record(latency);
                }
            }
        }
    }
}

/// Where the first blank line ("\n\n") in `buf` starts.
fn block_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find(|&at| buf.get(at + 1) == Some(&b'\n'))
}

/// The unsigned number after `name` in `data`.
fn field(data: &[u8], name: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(data, name)? + name.len();
    let digits = data[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&data[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// CPU seconds (user + system) and RSS KiB of the given processes, from /proc.
fn proc_usage(pids: &[u32]) -> (f64, u64) {
    let ticks = 100.0; // USER_HZ on Linux
    let mut cpu = 0.0;
    let mut rss = 0;
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                cpu += (ut + st) / ticks;
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            rss += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (cpu, rss)
}

/// `perf record -g` of some processes, from [`Profile::start`] to [`Profile::stop`].
struct Profile(std::process::Child);

impl Profile {
    fn start(file: &str, pids: &[u32]) -> Result<Profile, BoxError> {
        let pids = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let child = std::process::Command::new("perf")
            .args(["record", "-F", "999", "-g", "-p", &pids, "-o", file])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("--perf: cannot run perf: {e}"))?;
        Ok(Profile(child))
    }

    /// Ends the recording as Ctrl-C does, so that perf writes its file out.
    fn stop(mut self) -> Result<(), BoxError> {
        let pid = self.0.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status();
        let status = self.0.wait()?;
        // perf ends with 0, or with SIGINT's code when the signal came before its handler.
        if !status.success() && status.code().is_some() {
            return Err(format!("--perf: perf record ended with {status}").into());
        }
        Ok(())
    }
}

/// One thread of a measured process at one moment: its name, CPU seconds (user + system) and
/// context switches (voluntary: it waited and was woken; involuntary: it was preempted).
struct ThreadSample {
    name: String,
    cpu: f64,
    switches: u64,
}

/// Every thread of the given processes, by (pid, tid), from /proc/PID/task.
fn thread_usage(pids: &[u32]) -> BTreeMap<(u32, u32), ThreadSample> {
    let mut threads = BTreeMap::new();
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let dir = task.path();
            let (Ok(stat), Ok(status)) = (
                std::fs::read_to_string(dir.join("stat")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue; // the thread ended meanwhile
            };
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let name = head.split_once('(').map_or("?", |(_, n)| n).to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let count = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let switches = count("voluntary_ctxt_switches:") + count("nonvoluntary_ctxt_switches:");
            let cpu = (tick(11) + tick(12)) / 100.0; // USER_HZ
            threads.insert(
                (pid, tid),
                ThreadSample {
                    name,
                    cpu,
                    switches,
                },
            );
        }
    }
    threads
}

/// What the threads of one name (tokio's workers, librdkafka's broker threads, nginx's
/// workers) did in a window: their CPU time and context switches per second.
#[derive(Debug, PartialEq)]
struct ThreadShare {
    name: String,
    threads: usize,
    cpu_ms_per_sec: f64,
    switches_per_sec: f64,
}

impl ThreadShare {
    /// The shares between two samples `seconds` apart, the busiest first. A thread born in the
    /// window counts from zero; one that ended in it is missing (its time is still in the
    /// process's `cpu_seconds`).
    fn between(
        start: &BTreeMap<(u32, u32), ThreadSample>,
        end: &BTreeMap<(u32, u32), ThreadSample>,
        seconds: f64,
    ) -> Vec<ThreadShare> {
        let mut by_name: BTreeMap<&str, ThreadShare> = BTreeMap::new();
        for (id, now) in end {
            let (cpu0, switches0) = start.get(id).map_or((0.0, 0), |s| (s.cpu, s.switches));
            let share = by_name.entry(&now.name).or_insert_with(|| ThreadShare {
                name: now.name.clone(),
                threads: 0,
                cpu_ms_per_sec: 0.0,
                switches_per_sec: 0.0,
            });
            share.threads += 1;
            share.cpu_ms_per_sec += (now.cpu - cpu0).max(0.0) * 1000.0 / seconds;
            share.switches_per_sec += now.switches.saturating_sub(switches0) as f64 / seconds;
        }
        let mut shares: Vec<ThreadShare> = by_name.into_values().collect();
        shares.sort_by(|a, b| {
            b.cpu_ms_per_sec
                .total_cmp(&a.cpu_ms_per_sec)
                .then(b.switches_per_sec.total_cmp(&a.switches_per_sec))
        });
        shares
    }

    /// `name ×N: CPU ms/s, switches/s` for the names that did anything (half a millisecond of
    /// CPU a second, or ten context switches), busiest first.
    fn describe(shares: &[ThreadShare]) -> String {
        shares
            .iter()
            .filter(|s| s.cpu_ms_per_sec >= 0.5 || s.switches_per_sec >= 10.0)
            .map(|s| {
                format!(
                    "{} ×{}: {:.0} ms/s, {:.0}/s",
                    s.name, s.threads, s.cpu_ms_per_sec, s.switches_per_sec
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A record's value: publish time, sequence number per key, the key's number if keyed,
/// padding up to `size` bytes.
fn payload(t: u64, s: u64, k: Option<usize>, size: usize) -> String {
    let mut v = match k {
        Some(k) => format!("{{\"t\":{t},\"s\":{s},\"k\":{k},\"p\":\""),
        None => format!("{{\"t\":{t},\"s\":{s},\"p\":\""),
    };
    while v.len() + 2 < size {
        v.push('x');
    }
    v.push_str("\"}");
    v
}

/// Publishes `rate` records per second until stopped; returns how many it published.
async fn publish(o: Options, shared: Arc<Shared>) -> Result<u64, BoxError> {
    let target = o.publish.clone().unwrap_or_default();
    let keys: Vec<Option<String>> = if o.keys == 0 {
        vec![None]
    } else {
        (0..o.keys).map(|k| Some(format!("k{k}"))).collect()
    };
    let mut seqs = vec![0u64; keys.len()];
    let mut sink = Sink::new(&target, shared.acked.clone())?;
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * o.rate) as u64;
        while sent < due {
            let k = (sent % keys.len() as u64) as usize;
            let value = payload(now_us(), seqs[k], keys[k].as_ref().map(|_| k), o.size);
            seqs[k] += 1;
            sink.send(keys[k].as_deref(), value).await?;
            sent += 1;
            shared.published.fetch_add(1, Ordering::Relaxed);
        }
    }
    sink.flush();
    Ok(sent)
}

/// Where records go: Kafka, or an HTTP publisher (one keep-alive HTTP/1.1 connection).
enum Sink {
    Kafka(ThreadedProducer<Acks>, String),
    Http {
        addr: String,
        path: String,
        conn: Option<TcpStream>,
        acked: Arc<AtomicU64>,
    },
}

/// Counts the records the broker acknowledged (librdkafka's delivery reports): what the
/// producer sustained, as opposed to what it queued.
struct Acks(Arc<AtomicU64>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Sink {
    fn new(target: &str, acked: Arc<AtomicU64>) -> Result<Sink, BoxError> {
        if let Some(rest) = target.strip_prefix("kafka://") {
            let (brokers, topic) = rest.split_once('/').ok_or("kafka://brokers/topic")?;
            // linger.ms=0: the benchmark measures the gateway, not the producer's batching
            // (librdkafka's default waits 5 ms to fill batches; a user's producer adds that).
            let producer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "0")
                .create_with_context(Acks(acked))?;
            Ok(Sink::Kafka(producer, topic.to_string()))
        } else if let Some(rest) = target.strip_prefix("http://") {
            let (addr, path) = rest.split_once('/').ok_or("http://host:port/path")?;
            Ok(Sink::Http {
                addr: addr.to_string(),
                path: format!("/{path}"),
                conn: None,
                acked,
            })
        } else {
            Err(format!("--publish: unsupported {target}").into())
        }
    }

    async fn send(&mut self, key: Option<&str>, value: String) -> Result<(), BoxError> {
        match self {
            Sink::Kafka(producer, topic) => {
                let mut record = BaseRecord::<str, str>::to(topic).payload(&value);
                if let Some(k) = key {
                    record = record.key(k);
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => return Ok(()),
                        Err((e, back)) => {
                            if !matches!(
                                e.rdkafka_error_code(),
                                Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                            ) {
                                return Err(e.into());
                            }
                            record = back;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }
            Sink::Http {
                addr,
                path,
                conn,
                acked,
            } => {
                let path = path.replace("{key}", key.unwrap_or(""));
                if conn.is_none() {
                    let c = TcpStream::connect(&*addr).await?;
                    c.set_nodelay(true)?;
                    *conn = Some(c);
                }
                let c = conn.as_mut().expect("connected");
                let request = format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{value}",
                    value.len()
                );
                c.write_all(request.as_bytes()).await?;
                read_http_response(c).await?;
                acked.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn flush(&mut self) {
        if let Sink::Kafka(p, _) = self {
            let _ = p.flush(Duration::from_secs(5));
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body; errors on a status ≥ 300.
async fn read_http_response(c: &mut TcpStream) -> Result<(), BoxError> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).await? == 0 {
            return Err("publisher closed the connection".into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    c.read_exact(&mut body).await?;
    if !(200..300).contains(&status) {
        return Err(format!("publisher answered {status}").into());
    }
    Ok(())
}

async fn run(o: Options) -> Result<(), BoxError> {
    let shared = Arc::new(Shared::new());
    let target = Arc::new(Target::new(&o.url, o.ca.as_deref())?);
    let new_target = match &o.restart {
        Some(url) => Some(Arc::new(Target::new(url, o.ca.as_deref())?)),
        None => None,
    };
    let before = proc_usage(&o.pids);
    let total = o.connections * o.streams;
    let stalled = o
        .stalled
        .unwrap_or_else(|| (total as f64 * o.stall).round() as usize);
    let opening = Instant::now();
    // Connections open in parallel, their streams one after another.
    let mut openers = Vec::new();
    let stalled_conns = stalled.div_ceil(o.streams);
    let extra_conns = usize::from(o.extra.is_some());
    for c in 0..o.connections + stalled_conns + extra_conns {
        let (target, shared, o) = (target.clone(), shared.clone(), o.clone());
        let moving = new_target.as_ref().map(|target| {
            Arc::new(Moving {
                target: target.clone(),
                conn: tokio::sync::Mutex::new(None),
            })
        });
        let is_extra = c == o.connections + stalled_conns;
        let is_stalled = c >= o.connections && !is_extra;
        openers.push(tokio::spawn(async move {
            let windows = if is_stalled {
                Windows::Stalled(o.stall_window)
            } else {
                Windows::Browser
            };
            let h2 = match o.http1 {
                true => None,
                false => Some(target.connect(windows, &shared).await?),
            };
            let n = if is_extra {
                o.extra_streams
            } else if is_stalled {
                (stalled - (c - o.connections) * o.streams).min(o.streams)
            } else {
                o.streams
            };
            let url = match (&o.extra, &o.mix, is_extra) {
                (Some(extra), _, true) => extra.as_str(),
                (_, Some(mix), false) if !is_stalled && c % 2 == 1 => mix.as_str(),
                _ => o.url.as_str(),
            };
            // One task reads all the connection's streams, as a browser tab's network thread
            // would; it starts once they are open (browser-sized windows hold what comes first).
            let latency = shared.histogram();
            let readers = futures_util::stream::FuturesUnordered::new();
            for s in 0..n {
                let i = c * o.streams + s;
                let path_of = |url: &str| {
                    let path = url
                        .split_once("://")
                        .and_then(|(_, r)| r.find('/').map(|at| r[at..].to_string()))
                        .unwrap_or_else(|| "/".into());
                    o.stream_path(i, path)
                };
                let sub = Sub {
                    path: path_of(url),
                    stalled: is_stalled,
                    shared: shared.clone(),
                    latency: latency.clone(),
                    authority: target.authority.clone(),
                    churn_every: (o.churn > 0.0 && !is_stalled).then(|| total as f64 / o.churn),
                    seed: (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    moving: moving.clone().filter(|_| !is_stalled),
                };
                let Some(h2) = &h2 else {
                    // HTTP/1.1: a connection per stream, read by a task of its own.
                    let (io, rest, chunked) = target.get_h1(&sub.path, None).await?;
                    shared.opened.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(sub.read_h1(target.clone(), io, rest, chunked));
                    continue;
                };
                let body = sub.open(h2, None).await?;
                shared.opened.fetch_add(1, Ordering::Relaxed);
                readers.push(sub.read(h2.clone(), body));
            }
            tokio::spawn(async move {
                use futures_util::StreamExt;
                readers.collect::<Vec<()>>().await;
            });
            Ok::<_, BoxError>(h2)
        }));
    }
    let mut connections = Vec::new();
    for opener in openers {
        connections.extend(opener.await??);
    }
    let opened_in = opening.elapsed().as_secs_f64();
    eprintln!(
        "ksg-bench {}: {} streams open on {} connections in {opened_in:.1}s",
        o.name,
        shared.opened.load(Ordering::Relaxed),
        if o.http1 {
            shared.opened.load(Ordering::Relaxed) as usize
        } else {
            connections.len()
        }
    );
    let publisher = if o.idle {
        None
    } else {
        let (o, shared) = (o.clone(), shared.clone());
        Some(tokio::spawn(publish(o, shared)))
    };
    tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
    let start = proc_usage(&o.pids);
    let threads0 = thread_usage(&o.pids);
    // With a restart, the profile is of the new process as the streams come back.
    let profile = match (&o.perf, o.new_pid) {
        (Some(file), None) => Some(Profile::start(file, &o.pids)?),
        _ => None,
    };
    let resumes0 = shared.resumes.load(Ordering::Relaxed);
    let published0 = shared.published.load(Ordering::Relaxed);
    let acked0 = shared.acked.load(Ordering::Relaxed);
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    let probe_stop = Arc::new(AtomicBool::new(false));
    // The pace once a second through the window, and the probe: each asks from a thread and a
    // runtime of its own, as a kubelet or a Prometheus would from another process, so that its
    // times are the server's, not the load generator's backlog of events on the runtime that
    // reads the streams.
    let pacer = o.metrics.clone().map(|url| {
        let (shared, stop) = (shared.clone(), probe_stop.clone());
        OwnThread::spawn(sample_pace(url, shared, stop))
    });
    let prober = (!o.probe.is_empty()).then(|| {
        let (urls, stop) = (o.probe.clone(), probe_stop.clone());
        OwnThread::spawn(async move { Ok(probe(urls, stop).await) })
    });
    tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    probe_stop.store(true, Ordering::Relaxed);
    let probed = match prober {
        Some(p) => Some(p.join("probe").await?),
        None => None,
    };
    let pace = match pacer {
        Some(p) => Some(p.join("pace sampler").await?),
        None => None,
    };
    let window = t0.elapsed().as_secs_f64();
    let end = proc_usage(&o.pids);
    if let Some(profile) = profile {
        profile.stop()?;
    }
    let threads = ThreadShare::between(&threads0, &thread_usage(&o.pids), window);
    let records = shared.published.load(Ordering::Relaxed) - published0;
    let acked = shared.acked.load(Ordering::Relaxed) - acked0;
    let resumes = shared.resumes.load(Ordering::Relaxed) - resumes0;
    let events = shared.events.load(Ordering::Relaxed);
    let h = merged(&shared)?;
    let open = (total + stalled + o.extra_streams) as f64;
    let restarted = match o.new_pid {
        Some(new_pid) => {
            let moving = (total + o.extra_streams) as u64;
            Some(restart(&o, &shared, new_pid, moving).await?)
        }
        None => None,
    };
    shared.stop.store(true, Ordering::Relaxed);
    let published = match publisher {
        Some(p) => p.await??,
        None => 0,
    };
    // Read before the connections close (their streams then end, and fail to reopen).
    let resets = shared.resets.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    // Memory given back: every connection closed, the server's RSS `after` seconds later.
    let after = if o.after > 0.0 {
        for driver in shared.drivers.lock().map_err(|_| "drivers")?.drain(..) {
            driver.abort();
        }
        drop(std::mem::take(&mut connections));
        tokio::time::sleep(Duration::from_secs_f64(o.after)).await;
        Some(proc_usage(&o.pids).1)
    } else {
        None
    };
    let cpu = end.0 - start.0;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut fields = vec![
        ("name", Value::S(o.name.clone())),
        ("server", Value::S(o.server.clone())),
        ("connections", Value::N(o.connections as f64)),
        ("streams", Value::N(open)),
        ("stalled_streams", Value::N(stalled as f64)),
        ("keys", Value::N(o.keys as f64)),
        ("watch", Value::N(o.watch as f64)),
        ("filters", Value::N(o.filters as f64)),
        ("rate", Value::N(if o.idle { 0.0 } else { o.rate })),
        ("size", Value::N(o.size as f64)),
        ("seconds", Value::N(window)),
        ("published", Value::N(published as f64)),
        ("events", Value::N(events as f64)),
        ("events_per_sec", Value::N(events as f64 / window)),
        ("cpu_seconds", Value::N(cpu)),
        ("cpu_us_per_event", Value::N(us_per(cpu, events))),
        ("cpu_percent", Value::N(cpu * 100.0 / window)),
        ("rss_kib_before", Value::N(before.1 as f64)),
        ("rss_kib_start", Value::N(start.1 as f64)),
        ("rss_kib_end", Value::N(end.1 as f64)),
        ("rss_kib_growth", Value::N(end.1 as f64 - before.1 as f64)),
        (
            "rss_kib_per_stream",
            Value::N(end.1.saturating_sub(before.1) as f64 / open),
        ),
        ("p50_ms", Value::N(ms(0.5))),
        ("p99_ms", Value::N(ms(0.99))),
        ("p999_ms", Value::N(ms(0.999))),
        ("max_ms", Value::N(h.max() as f64 / 1000.0)),
        ("lost", Value::N(shared.lost.load(Ordering::Relaxed) as f64)),
        (
            "duplicates",
            Value::N(shared.duplicates.load(Ordering::Relaxed) as f64),
        ),
        ("resumes", Value::N(resumes as f64)),
        ("resumes_per_sec", Value::N(resumes as f64 / window)),
        ("server_resets", Value::N(resets as f64)),
        ("failed", Value::N(failed as f64)),
        ("open_seconds", Value::N(opened_in)),
        ("records_per_sec", Value::N(records as f64 / window)),
        ("cpu_us_per_record", Value::N(us_per(cpu, records))),
    ];
    // Only what was measured: a missing field is an empty cell in the report, not a zero.
    if !threads.is_empty() {
        let wakeups: f64 = threads.iter().map(|t| t.switches_per_sec).sum();
        fields.push(("wakeups_per_sec", Value::N(wakeups.round())));
        if let Some(price) = o.wake_us.filter(|_| events > 0) {
            // What the context switches alone cost at this machine's price, per event.
            fields.push((
                "wake_cpu_us_per_event",
                Value::N(wakeups * price / (events as f64 / window)),
            ));
        }
        fields.push(("threads", Value::S(ThreadShare::describe(&threads))));
    }
    if !o.idle {
        fields.push(("acked_per_sec", Value::N(acked as f64 / window)));
    }
    let delivered_pct = fanout(&o, total)
        .filter(|f| *f > 0.0 && records > 0)
        .map(|f| events as f64 * 100.0 / (records as f64 * f));
    if let Some(pct) = delivered_pct {
        fields.push(("delivered_pct", Value::N(pct)));
    }
    if let Some(pace) = pace {
        fields.extend(pace.fields(o.rate, records as f64 / window, delivered_pct));
    }
    fields.push((
        "heartbeats",
        Value::N(shared.heartbeats.load(Ordering::Relaxed) as f64),
    ));
    fields.push((
        "max_silence_ms",
        Value::N(shared.silence_us.load(Ordering::Relaxed) as f64 / 1000.0),
    ));
    if let Some((slowest, failures)) = probed {
        fields.push(("probe_max_ms", Value::N(slowest as f64 / 1000.0)));
        fields.push(("probe_failures", Value::N(failures as f64)));
    }
    if let Some(rss) = after {
        fields.push(("after_seconds", Value::N(o.after)));
        fields.push(("rss_kib_after", Value::N(rss as f64)));
    }
    fields.extend(restarted.into_iter().flatten());
    println!("{}", json_line(&fields));
    drop(connections);
    Ok(())
}

/// CPU microseconds per item (0 when there were none).
fn us_per(cpu_seconds: f64, items: u64) -> f64 {
    if items > 0 {
        cpu_seconds * 1e6 / items as f64
    } else {
        0.0
    }
}

/// Every connection's latency histogram merged.
fn merged(shared: &Shared) -> Result<Histogram<u64>, BoxError> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3)?;
    for one in shared.latencies.lock().map_err(|_| "histograms")?.iter() {
        h.add(&*one.lock().map_err(|_| "histogram")?)?;
    }
    Ok(h)
}

/// The rolling restart (`--restart`): SIGTERM to the old process, every stream resumed on the
/// new one, then a window measuring it. `streams`: the streams that must come back.
async fn restart(
    o: &Options,
    shared: &Arc<Shared>,
    new_pid: u32,
    streams: u64,
) -> Result<Vec<(&'static str, Value)>, BoxError> {
    const LIMIT: Duration = Duration::from_secs(300);
    shared.restarting.store(true, Ordering::Relaxed);
    let old = o.pids[0].to_string();
    if !std::process::Command::new("kill")
        .args(["-TERM", &old])
        .status()?
        .success()
    {
        return Err(format!("kill -TERM {old} failed").into());
    }
    let mut signalled = Instant::now();
    if o.outage > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(o.outage)).await;
        let new = new_pid.to_string();
        if !std::process::Command::new("kill")
            .args(["-CONT", &new])
            .status()?
            .success()
        {
            return Err(format!("kill -CONT {new} failed").into());
        }
        signalled = Instant::now();
    }
    let profile = match &o.perf {
        Some(file) => Some(Profile::start(file, &[new_pid])?),
        None => None,
    };
    // Who was busy while the streams came back: the new server, and this client.
    let me = std::process::id();
    let (busy0, client0) = (proc_usage(&[new_pid]).0, proc_usage(&[me]).0);
    let mut peak = 0;
    let sample_until = |until: Instant, all_back: bool| {
        let shared = shared.clone();
        async move {
            let mut peak = 0;
            while Instant::now() < until
                && !(all_back && shared.moved.load(Ordering::Relaxed) >= streams)
            {
                peak = peak.max(proc_usage(&[new_pid]).1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        }
    };
    peak = peak.max(sample_until(signalled + LIMIT, true).await);
    let moved = shared.moved.load(Ordering::Relaxed);
    let back_in = signalled.elapsed().as_secs_f64();
    if let Some(profile) = profile {
        profile.stop()?;
    }
    let (busy, client) = (
        proc_usage(&[new_pid]).0 - busy0,
        proc_usage(&[me]).0 - client0,
    );
    eprintln!(
        "ksg-bench {}: {moved} of {streams} streams back in {back_in:.1}s",
        o.name
    );
    // Catch-up over, then a window on the new process alone.
    let settled = Instant::now() + Duration::from_secs_f64(o.warmup.max(5.0));
    peak = peak.max(sample_until(settled, false).await);
    for one in shared.latencies.lock().map_err(|_| "histograms")?.iter() {
        one.lock().map_err(|_| "histogram")?.reset();
    }
    let (cpu0, _) = proc_usage(&[new_pid]);
    let events0 = shared.events.load(Ordering::Relaxed);
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    peak = peak.max(sample_until(t0 + Duration::from_secs_f64(o.seconds), false).await);
    shared.measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = proc_usage(&[new_pid]);
    let events = shared.events.load(Ordering::Relaxed) - events0;
    let cpu = cpu1 - cpu0;
    let h = merged(shared)?;
    let answers = shared
        .answer
        .lock()
        .map_err(|_| "answers")?
        .clone()
        .ok_or("answers")?;
    let ms = |v: u64| v as f64 / 1000.0;
    let mut measured = vec![
        ("restart_streams_back", Value::N(moved as f64)),
        ("outage_seconds", Value::N(o.outage)),
        ("restart_seconds", Value::N(back_in)),
        (
            "restart_answer_p50_ms",
            Value::N(ms(answers.value_at_quantile(0.5))),
        ),
        (
            "restart_answer_p99_ms",
            Value::N(ms(answers.value_at_quantile(0.99))),
        ),
        ("restart_answer_max_ms", Value::N(ms(answers.max()))),
        ("restart_server_cpu_seconds", Value::N(busy)),
        ("restart_client_cpu_seconds", Value::N(client)),
        (
            "restart_refused_429",
            Value::N(shared.refused_429.load(Ordering::Relaxed) as f64),
        ),
        (
            "restart_refused_503",
            Value::N(shared.refused_503.load(Ordering::Relaxed) as f64),
        ),
        ("new_peak_rss_kib", Value::N(peak as f64)),
        ("new_rss_kib", Value::N(rss as f64)),
        ("new_cpu_percent", Value::N(cpu * 100.0 / window)),
        ("new_events_per_sec", Value::N(events as f64 / window)),
        ("new_cpu_us_per_event", Value::N(us_per(cpu, events))),
        ("new_p99_ms", Value::N(ms(h.value_at_quantile(0.99)))),
    ];
    if let Some(url) = &o.new_metrics {
        let answered = Answered::read(url).await?;
        measured.push((
            "restart_server_answer_p99_le_ms",
            Value::N(answered.quantile_bound(0.99) * 1000.0),
        ));
        measured.push((
            "restart_server_answered_500ms_pct",
            Value::N(
                answered
                    .share_within(0.5)
                    .ok_or("--new-metrics: no answers, or no 0.5 s bucket")?
                    * 100.0,
            ),
        ));
    }
    Ok(measured)
}

/// The gateway's `ksg_answer_seconds` histogram, read from its admin `/metrics`: how long its
/// requests waited for their response heads, as the server saw it (the client's own delays
/// left out).
struct Answered {
    /// `(le, cumulative count)`, in the order of the exposition (ascending, `+Inf` last).
    buckets: Vec<(f64, f64)>,
    count: f64,
}

impl Answered {
    async fn read(url: &str) -> Result<Answered, BoxError> {
        Answered::parse(&http_get(url).await?).ok_or_else(|| {
            format!("--new-metrics: no ksg_answer_seconds histogram at {url}").into()
        })
    }

    fn parse(text: &str) -> Option<Answered> {
        let mut buckets = Vec::new();
        let mut count = None;
        for line in text.lines() {
            let Some((name, Ok(value))) = line
                .rsplit_once(' ')
                .map(|(name, value)| (name, value.parse::<f64>()))
            else {
                continue;
            };
            if let Some(le) = name
                .strip_prefix("ksg_answer_seconds_bucket{le=\"")
                .and_then(|rest| rest.strip_suffix("\"}"))
            {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                buckets.push((le, value));
            } else if name == "ksg_answer_seconds_count" {
                count = Some(value);
            }
        }
        if buckets.is_empty() {
            return None;
        }
        Some(Answered {
            buckets,
            count: count?,
        })
    }

    /// The upper bound of the bucket that holds quantile `q` (seconds).
    fn quantile_bound(&self, q: f64) -> f64 {
        let wanted = q * self.count;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= wanted)
            .map_or(f64::INFINITY, |(le, _)| *le)
    }

    /// The share of the answers within `le` seconds, which must be a bucket's bound; `None`
    /// without such a bucket or without answers.
    fn share_within(&self, le: f64) -> Option<f64> {
        let (_, within) = self
            .buckets
            .iter()
            .find(|(bound, _)| (*bound - le).abs() < 1e-9)?;
        (self.count > 0.0).then(|| within / self.count)
    }
}

/// The pace through a window, once a second: the consumer's summed `ksg_consumer_lag`, and
/// the records the publisher queued that the broker had not acknowledged yet.
struct Pace(Vec<Sample>);

struct Sample {
    /// Seconds into the window.
    t: f64,
    lag: i64,
    unacked: i64,
}

/// The least-squares slope of `points` (per second); `None` with fewer than three.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (cov, var) = points.iter().fold((0.0, 0.0), |(cov, var), (t, v)| {
        (cov + (t - mt) * (v - mv), var + (t - mt) * (t - mt))
    });
    (var > 0.0).then(|| cov / var)
}

impl Pace {
    fn growth(&self, of: impl Fn(&Sample) -> i64) -> Option<f64> {
        let points: Vec<(f64, f64)> = self.0.iter().map(|s| (s.t, of(s) as f64)).collect();
        slope(&points)
    }

    /// The window's fields: the lag at its start and end, its peak and its growth per second,
    /// the growth of what the broker had not acknowledged; whether the rate was held (the
    /// publisher queued at least 99% of `rate`, and both grew by less than 1% of it per second:
    /// the broker and the gateway's consumer each kept at least 99% of the pace); and whether
    /// it was routed too (held, and the streams received at least 99% of what they were owed).
    fn fields(
        &self,
        rate: f64,
        published_per_sec: f64,
        delivered_pct: Option<f64>,
    ) -> Vec<(&'static str, Value)> {
        let mut fields = Vec::new();
        if let (Some(first), Some(last)) = (self.0.first(), self.0.last()) {
            fields.push(("lag_start", Value::N(first.lag as f64)));
            fields.push(("lag_end", Value::N(last.lag as f64)));
        }
        let max = self.0.iter().map(|s| s.lag).max().unwrap_or(0);
        fields.push(("lag_max", Value::N(max as f64)));
        let (Some(lag), Some(unacked)) = (self.growth(|s| s.lag), self.growth(|s| s.unacked))
        else {
            return fields;
        };
        fields.push(("lag_growth_per_sec", Value::N(lag)));
        fields.push(("unacked_growth_per_sec", Value::N(unacked)));
        let held = published_per_sec >= 0.99 * rate && lag < 0.01 * rate && unacked < 0.01 * rate;
        fields.push(("held", Value::S(held.to_string())));
        if let Some(pct) = delivered_pct {
            fields.push(("routed", Value::S((held && pct >= 99.0).to_string())));
        }
        fields
    }
}

/// The deliveries each published record owes the `streams` reading streams (stalled ones
/// aside): one per stream of an all-keys URL, and for a `{key}` URL the streams of the record's
/// key (stream `i` reads key `i % keys`, and the publisher cycles through the keys); `None`
/// where the run's shape does not say (idle, a mix of URLs, a restart, churn).
fn fanout(o: &Options, streams: usize) -> Option<f64> {
    if o.idle || o.mix.is_some() || o.restart.is_some() || o.churn > 0.0 {
        return None;
    }
    let per = |url: &str, n: usize| {
        if o.watch > 0 && url == o.url {
            n as f64 * o.watch as f64 / o.keys as f64
        } else if o.filters > 0 && url == o.url {
            n as f64 / o.filters as f64
        } else if url.contains("{key}") && o.keys > 0 {
            n as f64 / o.keys as f64
        } else {
            n as f64
        }
    };
    let extra = o.extra.as_deref().map_or(0.0, |u| per(u, o.extra_streams));
    Some(per(&o.url, streams) + extra)
}

/// Samples the pace (the consumer's lag at `url`, the publisher's unacknowledged records) once
/// a second until `stop`, and once more then.
async fn sample_pace(
    url: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<Pace, BoxError> {
    let t0 = Instant::now();
    let mut next = tokio::time::Instant::now();
    let mut samples = Vec::new();
    loop {
        let last = stop.load(Ordering::Relaxed);
        let acked = shared.acked.load(Ordering::Relaxed);
        let published = shared.published.load(Ordering::Relaxed);
        samples.push(Sample {
            t: t0.elapsed().as_secs_f64(),
            lag: consumer_lag(&url).await?,
            unacked: published.saturating_sub(acked) as i64,
        });
        if last {
            return Ok(Pace(samples));
        }
        next += Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < next {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The sum of the `ksg_consumer_lag` series at `url` (an admin `/metrics`). A missing family
/// is an error, not a zero.
async fn consumer_lag(url: &str) -> Result<i64, BoxError> {
    let text = http_get(url).await?;
    let mut sum = None;
    for line in text.lines().filter(|l| l.starts_with("ksg_consumer_lag{")) {
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("--metrics: bad line {line}"))?;
        sum = Some(sum.unwrap_or(0) + value as i64);
    }
    sum.ok_or_else(|| format!("--metrics: no ksg_consumer_lag series at {url}").into())
}

/// The whole answer (head and body) to `GET url` over plain HTTP/1.1, within 5 s; an error
/// unless it is a 200.
async fn http_get(url: &str) -> Result<String, BoxError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: http:// only"))?;
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let get = async {
        let mut c = TcpStream::connect(addr).await?;
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        c.write_all(request.as_bytes()).await?;
        let mut text = String::new();
        c.read_to_string(&mut text).await?;
        Ok::<_, BoxError>(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), get).await??;
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("{url} did not answer 200").into());
    }
    Ok(text)
}

/// A task run on a thread and a current-thread runtime of its own.
struct OwnThread<T>(std::thread::JoinHandle<Result<T, BoxError>>);

impl<T: Send + 'static> OwnThread<T> {
    fn spawn(
        task: impl std::future::Future<Output = Result<T, BoxError>> + Send + 'static,
    ) -> Self {
        OwnThread(std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(task)
        }))
    }

    /// Its result, waited for off the caller's runtime; `name` says whose thread panicked.
    async fn join(self, name: &str) -> Result<T, BoxError> {
        let joined = tokio::task::spawn_blocking(move || self.0.join()).await?;
        joined.map_err(|_| format!("the {name}'s thread panicked"))?
    }
}

/// Asks each of `urls` once a second until `stop`: the slowest answer (µs) and the number of
/// answers that failed or were not a 200 within 5 s.
async fn probe(urls: Vec<String>, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut slowest, mut failures) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        for url in &urls {
            let started = Instant::now();
            if http_get(url).await.is_err() {
                failures += 1;
            }
            slowest = slowest.max(started.elapsed().as_micros() as u64);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (slowest, failures)
}

enum Value {
    S(String),
    N(f64),
}

/// One flat JSON object, its fields in order: whole numbers as integers, others to 3 decimals.
fn json_line(fields: &[(&str, Value)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::S(s) => serde_json::Value::from(s.as_str()),
                Value::N(n) if n.fract() == 0.0 && n.abs() < 1e15 => (*n as i64).into(),
                Value::N(n) => ((n * 1000.0).round() / 1000.0).into(),
            };
            (k.to_string(), value)
        })
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// Reads the flat JSON objects `run` printed (one per line) and prints a Markdown table.
fn report(path: &str) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(path)?;
    table(
        &text,
        &[
            ("name", "workload"),
            ("server", "server"),
            ("streams", "streams"),
            ("rate", "records/s"),
            ("events_per_sec", "events/s"),
            ("cpu_us_per_event", "CPU-µs/event"),
            ("cpu_percent", "CPU %"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("p999_ms", "p99.9 ms"),
            ("max_ms", "max ms"),
            ("rss_kib_end", "RSS KiB"),
            ("rss_kib_per_stream", "KiB/stream"),
            ("rss_kib_growth", "RSS growth KiB"),
            ("cpu_us_per_record", "CPU-µs/record"),
            ("rss_kib_after", "RSS after KiB"),
            ("resumes_per_sec", "resumes/s"),
            ("server_resets", "ended by server"),
            ("lost", "lost"),
            ("duplicates", "dup"),
        ],
        |_| true,
    );
    // Ingest (W8): what the broker took and how the consumer kept up.
    table_of_runs_with(
        &text,
        "lag_growth_per_sec",
        &[
            ("name", "ingest"),
            ("streams", "streams"),
            ("rate", "records/s"),
            ("acked_per_sec", "acknowledged/s"),
            ("cpu_us_per_record", "CPU-µs/record"),
            ("events_per_sec", "events/s"),
            ("lag_start", "lag start"),
            ("lag_max", "lag peak"),
            ("lag_end", "lag end"),
            ("lag_growth_per_sec", "lag growth/s"),
            ("unacked_growth_per_sec", "unacknowledged growth/s"),
            ("held", "held"),
            ("delivered_pct", "delivered %"),
            ("routed", "routed"),
            ("seconds", "seconds"),
            ("resumes_per_sec", "resumes/s"),
            ("p99_ms", "p99 ms"),
        ],
    );
    // Where the server's CPU went: its threads, by name.
    table_of_runs_with(
        &text,
        "threads",
        &[
            ("name", "workload"),
            ("server", "server"),
            ("streams", "streams"),
            ("rate", "records/s"),
            ("cpu_percent", "CPU %"),
            ("wakeups_per_sec", "context switches/s"),
            ("cpu_us_per_event", "CPU-µs/event"),
            ("wake_cpu_us_per_event", "of which wake-ups"),
            ("threads", "threads: CPU ms/s, context switches/s"),
        ],
    );
    // Rolling restarts (W9): the old process in the window above, the new one here.
    table_of_runs_with(
        &text,
        "restart_seconds",
        &[
            ("name", "restart"),
            ("streams", "streams"),
            ("rate", "records/s"),
            ("outage_seconds", "outage s"),
            ("restart_seconds", "all back in s"),
            ("restart_answer_p50_ms", "answer p50 ms"),
            ("restart_answer_p99_ms", "answer p99 ms"),
            ("restart_answer_max_ms", "answer max ms"),
            (
                "restart_server_answer_p99_le_ms",
                "server's answer p99 ≤ ms",
            ),
            (
                "restart_server_answered_500ms_pct",
                "server answered ≤ 0.5 s %",
            ),
            ("restart_server_cpu_seconds", "server CPU-s until back"),
            ("restart_client_cpu_seconds", "client CPU-s until back"),
            ("restart_refused_429", "429"),
            ("restart_refused_503", "503"),
            ("cpu_percent", "old CPU %"),
            ("new_cpu_percent", "new CPU %"),
            ("rss_kib_end", "old RSS KiB"),
            ("new_rss_kib", "new RSS KiB"),
            ("new_peak_rss_kib", "new peak RSS KiB"),
            ("new_p99_ms", "new p99 ms"),
            ("lost", "lost"),
            ("duplicates", "dup"),
        ],
    );
    Ok(())
}

/// After a blank line, a Markdown table of the runs that have `field`, if any has.
fn table_of_runs_with(text: &str, field: &str, columns: &[(&str, &str)]) {
    let marker = format!("\"{field}\":");
    let has = |line: &str| line.contains(&marker);
    if text.lines().any(has) {
        println!();
        table(text, columns, has);
    }
}

/// A Markdown table of the runs (`{` lines of `text`) that `pick` accepts.
fn table(text: &str, columns: &[(&str, &str)], pick: impl Fn(&str) -> bool) {
    println!(
        "| {} |",
        columns.iter().map(|c| c.1).collect::<Vec<_>>().join(" | ")
    );
    println!("|{}", "---|".repeat(columns.len()));
    for line in text.lines().filter(|l| l.starts_with('{') && pick(l)) {
        let run: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let cells: Vec<String> = columns.iter().map(|(k, _)| cell(&run, k)).collect();
        println!("| {} |", cells.join(" | "));
    }
}

/// The field `key` of a run, formatted for a table (empty when the run has none).
fn cell(run: &serde_json::Value, key: &str) -> String {
    match &run[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(n) if n.fract() == 0.0 => format!("{}", n as i64),
            Some(n) if n.abs() >= 100.0 => format!("{n:.0}"),
            Some(n) if n.abs() >= 10.0 => format!("{n:.1}"),
            Some(n) => format!("{n:.2}"),
            None => n.to_string(),
        },
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_its_size_and_carries_time_and_sequence() {
        let v = payload(1_234, 56, None, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(field(v.as_bytes(), b"\"t\":"), Some(1_234));
        assert_eq!(field(v.as_bytes(), b"\"s\":"), Some(56));
        assert_eq!(field(v.as_bytes(), b"\"k\":"), None);
        let v = payload(1_234, 56, Some(17), 100);
        assert_eq!(v.len(), 100);
        assert_eq!(field(v.as_bytes(), b"\"k\":"), Some(17));
    }

    #[test]
    fn a_rate_is_held_when_the_broker_and_the_consumer_keep_its_pace() {
        let pace = |lag: fn(usize) -> i64, unacked: fn(usize) -> i64| {
            Pace(
                (0..10)
                    .map(|t| Sample {
                        t: t as f64,
                        lag: lag(t),
                        unacked: unacked(t),
                    })
                    .collect(),
            )
        };
        let verdict = |pace: &Pace, name: &str, pct: Option<f64>| {
            pace.fields(10_000.0, 10_000.0, pct)
                .into_iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| matches!(v, Value::S(s) if s == "true"))
        };
        // Both go up and down by a fetch's (or a produce batch's) worth: no growth, held.
        let steady = pace(|t| [5, 400][t % 2], |t| [0, 300][t % 2]);
        assert!(steady.growth(|s| s.lag).unwrap().abs() < 50.0);
        assert_eq!(verdict(&steady, "held", None), Some(true));
        assert_eq!(verdict(&steady, "routed", None), None);
        // Held, and the streams got 99.5% or 60% of what they were owed.
        assert_eq!(verdict(&steady, "routed", Some(99.5)), Some(true));
        assert_eq!(verdict(&steady, "routed", Some(60.0)), Some(false));
        // The consumer falls behind by 200 records a second (2% of the rate): not held.
        let behind = pace(|t| 200 * t as i64, |_| 0);
        assert!((behind.growth(|s| s.lag).unwrap() - 200.0).abs() < 1e-9);
        assert_eq!(verdict(&behind, "held", None), Some(false));
        // The broker falls behind the publisher the same way: not held either.
        let unacked = pace(|_| 0, |t| 200 * t as i64);
        assert_eq!(verdict(&unacked, "held", None), Some(false));
        // The publisher could not queue the rate at all: not held.
        assert!(steady
            .fields(10_000.0, 9_500.0, None)
            .iter()
            .any(|(k, v)| *k == "held" && matches!(v, Value::S(s) if s == "false")));
        // Too few samples to tell: no verdict at all.
        let short = Pace(pace(|_| 1, |_| 1).0.into_iter().take(2).collect());
        assert_eq!(verdict(&short, "held", None), None);
    }

    #[test]
    fn a_wake_up_price_is_a_positive_number_or_refused() {
        let parse = |args: &str| {
            let args: Vec<String> = format!("--url https://h/t --idle true {args}")
                .split_whitespace()
                .map(String::from)
                .collect();
            Options::parse(&args).map(|o| o.wake_us)
        };
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("--wake-us 14.5").unwrap(), Some(14.5));
        for bad in ["0", "-3", "NaN", "inf", "fast"] {
            let err = parse(&format!("--wake-us {bad}")).unwrap_err().to_string();
            assert!(err.contains("--wake-us"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_deliveries_a_record_owes_follow_the_runs_shape() {
        let parse = |args: &str| {
            let args = format!("--publish kafka://b/t {args}");
            let args: Vec<String> = args.split_whitespace().map(String::from).collect();
            Options::parse(&args).expect("options")
        };
        // W8: 100 key streams of 100 keys, and 10 all-keys streams: 11 per record.
        let w8 = parse("--url https://h/t/{key} --keys 100 --streams 100 --extra https://h/t --extra-streams 10");
        assert_eq!(fanout(&w8, 100), Some(11.0));
        // W3: 4,096 streams of 4,096 keys: one each. W2: every stream.
        let w3 = parse("--url https://h/t/{key} --keys 4096 --connections 16 --streams 256");
        assert_eq!(fanout(&w3, 4096), Some(1.0));
        assert_eq!(
            fanout(&parse("--url https://h/t --streams 256"), 256),
            Some(256.0)
        );
        // W6: 1,024 watchlists of 300 keys out of 5,000.
        let w6 = parse("--url https://h/t --keys 5000 --watch 300 --connections 4 --streams 256");
        assert!((fanout(&w6, 1024).unwrap() - 1024.0 * 300.0 / 5000.0).abs() < 1e-9);
        // Shapes that do not say.
        assert_eq!(fanout(&parse("--url https://h/t --idle true"), 1), None);
        assert_eq!(fanout(&parse("--url https://h/t --churn 10"), 1), None);
    }

    #[test]
    fn filtered_streams_ask_one_of_f_filters_on_the_all_keys_url() {
        let args = "--url https://h/t --keys 100 --filters 100 --publish kafka://b/t --streams 256";
        let args: Vec<String> = args.split(' ').map(String::from).collect();
        let o = Options::parse(&args).unwrap();
        assert_eq!(o.stream_path(0, "/t".into()), "/t?where=/k=0");
        assert_eq!(
            o.stream_path(257, "/t?format=plain".into()),
            "/t?format=plain&where=/k=57"
        );
        assert_eq!(fanout(&o, 10_240), Some(102.4));
        for bad in [
            "--url https://h/t --keys 10 --filters 100 --publish kafka://b/t",
            "--url https://h/t/{key} --keys 10 --filters 10 --publish kafka://b/t",
        ] {
            let args: Vec<String> = bad.split(' ').map(String::from).collect();
            assert!(Options::parse(&args).is_err(), "{bad}");
        }
    }

    #[test]
    fn watchlists_name_distinct_keys_spread_over_every_key() {
        let parse = |s: &str| {
            let args: Vec<String> = s.split(' ').map(String::from).collect();
            Options::parse(&args).unwrap()
        };
        let o = parse("--url https://h/t --keys 5000 --watch 300 --publish kafka://b/t");
        let mut streams_of = vec![0usize; 5000];
        for i in 0..1024 {
            let keys = o.watched(i);
            assert_eq!(keys, o.watched(i), "fixed by the stream's number");
            let distinct: std::collections::HashSet<_> = keys.iter().collect();
            assert_eq!(distinct.len(), 300);
            for k in keys {
                streams_of[k] += 1;
            }
        }
        assert_ne!(o.watched(0), o.watched(1));
        // About 61 streams per key: none far off.
        let (min, max) = (
            streams_of.iter().min().unwrap(),
            streams_of.iter().max().unwrap(),
        );
        assert!(*min >= 30 && *max <= 100, "{min}..{max}");
        let path = o.stream_path(7, "/t".into());
        assert!(path.starts_with("/t?key=k") && path.matches("key=").count() == 300);
        assert_eq!(o.stream_path(7, "/t?x=1".into()).matches('?').count(), 1);
        let bad = [
            "--url https://h/t/{key} --keys 10 --watch 3",
            "--url https://h/t --keys 2 --watch 3",
        ];
        for args in bad {
            let args: Vec<String> = format!("{args} --publish kafka://b/t")
                .split(' ')
                .map(String::from)
                .collect();
            assert!(Options::parse(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn the_servers_answer_times_are_read_from_its_histogram() {
        let text = "# TYPE ksg_answer_seconds histogram\n\
            ksg_answer_seconds_bucket{le=\"0.1\"} 90\n\
            \n\
            ksg_answer_seconds_bucket{le=\"0.5\"} 98\n\
            ksg_answer_seconds_bucket{le=\"1\"} 100\n\
            ksg_answer_seconds_bucket{le=\"+Inf\"} 100\n\
            ksg_answer_seconds_sum 12.5\n\
            ksg_answer_seconds_count 100\n\
            ksg_consumer_lag{topic=\"t\"} 0\n";
        let answered = Answered::parse(text).expect("a histogram");
        assert_eq!(answered.share_within(0.5), Some(0.98));
        assert_eq!(answered.quantile_bound(0.9), 0.1);
        assert_eq!(answered.quantile_bound(0.99), 1.0);
        assert_eq!(answered.share_within(0.25), None);
        // A gateway without the histogram is an error, not a zero.
        assert!(Answered::parse("ksg_consumer_lag{topic=\"t\"} 0\n").is_none());
    }

    #[test]
    fn report_cells_read_the_json_run_prints() {
        let line = json_line(&[
            ("name", Value::S("W\"2".into())),
            ("p99_ms", Value::N(3.2504)),
            ("events", Value::N(7.0)),
        ]);
        assert_eq!(line, r#"{"name":"W\"2","p99_ms":3.25,"events":7}"#);
        let run = serde_json::from_str(&line).unwrap();
        assert_eq!(cell(&run, "name"), "W\"2");
        assert_eq!(cell(&run, "p99_ms"), "3.25");
        assert_eq!(cell(&run, "missing"), "");
    }

    fn sample(name: &str, cpu: f64, switches: u64) -> ThreadSample {
        ThreadSample {
            name: name.into(),
            cpu,
            switches,
        }
    }

    #[test]
    fn thread_shares_sum_by_name_count_new_threads_and_sort_busiest_first() {
        let start = BTreeMap::from([
            ((1, 1), sample("worker", 1.0, 100)),
            ((1, 2), sample("worker", 2.0, 200)),
            ((1, 3), sample("broker", 0.5, 1_000)),
            ((1, 4), sample("gone", 9.0, 9)),
        ]);
        let end = BTreeMap::from([
            ((1, 1), sample("worker", 1.5, 300)),
            ((1, 2), sample("worker", 2.25, 400)),
            ((1, 3), sample("broker", 1.5, 3_000)),
            // Born in the window: counted from zero.
            ((1, 5), sample("reader", 0.25, 50)),
            ((1, 6), sample("quiet", 0.0, 18)),
        ]);
        let shares = ThreadShare::between(&start, &end, 2.0);
        let row = |name: &str, threads, cpu_ms_per_sec, switches_per_sec| ThreadShare {
            name: name.into(),
            threads,
            cpu_ms_per_sec,
            switches_per_sec,
        };
        assert_eq!(
            shares,
            vec![
                row("broker", 1, 500.0, 1_000.0),
                row("worker", 2, 375.0, 200.0),
                row("reader", 1, 125.0, 25.0),
                row("quiet", 1, 0.0, 9.0),
            ]
        );
        // The quiet thread is left out of the description.
        assert_eq!(
            ThreadShare::describe(&shares),
            "broker ×1: 500 ms/s, 1000/s; worker ×2: 375 ms/s, 200/s; reader ×1: 125 ms/s, 25/s"
        );
    }

    #[test]
    fn thread_usage_names_the_threads_of_a_live_process() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ksg-probe".into())
            .spawn(move || {
                // The thread's name is set before this runs.
                started.send(()).unwrap();
                wait.recv()
            })
            .unwrap();
        running.recv().unwrap();
        let me = std::process::id();
        let threads = thread_usage(&[me]);
        release.send(()).unwrap();
        thread.join().unwrap().unwrap();
        assert!(threads.keys().all(|(pid, _)| *pid == me));
        assert!(
            threads.values().any(|t| t.name == "ksg-probe"),
            "{:?}",
            threads.values().map(|t| &t.name).collect::<Vec<_>>()
        );
        assert!(thread_usage(&[u32::MAX]).is_empty());
    }
}
