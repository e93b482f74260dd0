//! Configuration from `KSG_*` environment variables, parsed and validated once at start.
//!
//! [`Config::from_vars`] takes any list of `(name, value)` pairs so tests never touch the process
//! environment. All problems are collected and reported together; each names the variable and
//! the bad value. Unknown `KSG_*` names are errors too, so a typo never goes unnoticed.
//! `KSG_KAFKA_<NAME>` (other than `KSG_KAFKA_BROKERS`) passes through to librdkafka as the
//! property `<name>` lower-cased with `_` turned into `.`. The README holds the same table.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{AuthSettings, KeySource};
use crate::http::cors::Cors;
use crate::partitioner::KeyPartitioner;
use crate::routes::{RouteError, Routes, TopicFilter};

/// `KSG_LISTEN`: address of the SSE listener.
pub const LISTEN: &str = "KSG_LISTEN";
/// `KSG_ADMIN_LISTEN`: address of the admin listener (metrics, health).
pub const ADMIN_LISTEN: &str = "KSG_ADMIN_LISTEN";
/// `KSG_KAFKA_BROKERS`: bootstrap servers; unset starts the embedded demo cluster.
pub const KAFKA_BROKERS: &str = "KSG_KAFKA_BROKERS";
/// `KSG_TOPICS`: comma-separated topic names or glob patterns served at `/{topic}`.
pub const TOPICS: &str = "KSG_TOPICS";
/// `KSG_ROUTES`: comma-separated custom path templates.
pub const ROUTES: &str = "KSG_ROUTES";
/// `KSG_TLS`: `on` or `off`.
pub const TLS: &str = "KSG_TLS";
/// `KSG_TLS_CERT`: PEM certificate chain.
pub const TLS_CERT: &str = "KSG_TLS_CERT";
/// `KSG_TLS_KEY`: PEM private key.
pub const TLS_KEY: &str = "KSG_TLS_KEY";
/// `KSG_MAX_STREAMS_PER_CONNECTION`: HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
pub const MAX_STREAMS_PER_CONNECTION: &str = "KSG_MAX_STREAMS_PER_CONNECTION";
/// `KSG_MAX_CONNECTIONS`: connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: &str = "KSG_MAX_CONNECTIONS";
/// `KSG_MAX_CONNECTIONS_PER_IP`: connections one client address may hold at once (0: no limit).
pub const MAX_CONNECTIONS_PER_IP: &str = "KSG_MAX_CONNECTIONS_PER_IP";
/// `KSG_ADMIN_TOKEN`: when set, `/metrics` requires `Authorization: Bearer <token>`.
pub const ADMIN_TOKEN: &str = "KSG_ADMIN_TOKEN";
/// `KSG_HEARTBEAT_SECS`: a comment is sent after this long without an event.
pub const HEARTBEAT_SECS: &str = "KSG_HEARTBEAT_SECS";
/// `KSG_RETRY_MS`: the `retry:` field, the client's reconnect delay.
pub const RETRY_MS: &str = "KSG_RETRY_MS";
/// `KSG_SHUTDOWN_GRACE_SECS`: how long shutdown waits for connections to finish.
pub const SHUTDOWN_GRACE_SECS: &str = "KSG_SHUTDOWN_GRACE_SECS";
/// `KSG_STREAM_QUEUE`: events queued per stream before the stream is cut off as slow.
pub const STREAM_QUEUE: &str = "KSG_STREAM_QUEUE";
/// `KSG_STREAM_QUEUE_BYTES`: bytes of its own (catch-up and snapshot chunks) a stream may hold
/// queued before the reader waits for its client.
pub const STREAM_QUEUE_BYTES: &str = "KSG_STREAM_QUEUE_BYTES";
/// `KSG_REPLAY_BYTES`: replay ring budget per topic (0 turns replay from memory off).
pub const REPLAY_BYTES: &str = "KSG_REPLAY_BYTES";
/// `KSG_CATCHUP_READERS`: Kafka consumers reading for resumes at most (more resumes wait).
pub const CATCHUP_READERS: &str = "KSG_CATCHUP_READERS";
/// `KSG_WORKER_THREADS`: threads serving connections (0: the cores available, less one, at
/// least one).
pub const WORKER_THREADS: &str = "KSG_WORKER_THREADS";
/// `KSG_CATCHUP_READER_IDLE_SECS`: a catch-up reader left unused this long is closed.
pub const CATCHUP_READER_IDLE_SECS: &str = "KSG_CATCHUP_READER_IDLE_SECS";
/// `KSG_SNAPSHOT_BYTES`: what one snapshot may hold before it is sent early.
pub const SNAPSHOT_BYTES: &str = "KSG_SNAPSHOT_BYTES";
/// `KSG_SNAPSHOT_TOPICS`: topics (names or globs) whose streams start with a snapshot by default.
pub const SNAPSHOT_TOPICS: &str = "KSG_SNAPSHOT_TOPICS";
/// `KSG_STREAM_MAX_SECS`: streams end after about this long (0: never); clients resume.
pub const STREAM_MAX_SECS: &str = "KSG_STREAM_MAX_SECS";
/// `KSG_METADATA_REFRESH_SECS`: how often attached topics are checked for new partitions and
/// deletion.
pub const METADATA_REFRESH_SECS: &str = "KSG_METADATA_REFRESH_SECS";
/// `KSG_MAX_KEYS_PER_STREAM`: `key=` parameters one stream may name.
pub const MAX_KEYS_PER_STREAM: &str = "KSG_MAX_KEYS_PER_STREAM";
/// `KSG_MAX_FILTERS_PER_STREAM`: `header.<name>=` and `where=` parameters one stream may give.
pub const MAX_FILTERS_PER_STREAM: &str = "KSG_MAX_FILTERS_PER_STREAM";
/// `KSG_MAX_TOPICS_PER_STREAM`: topics one stream may read (`/{topicA},{topicB}`).
pub const MAX_TOPICS_PER_STREAM: &str = "KSG_MAX_TOPICS_PER_STREAM";
/// `KSG_MAX_EVENT_BYTES`: largest record value sent as an event.
pub const MAX_EVENT_BYTES: &str = "KSG_MAX_EVENT_BYTES";
/// `KSG_KEY_PARTITIONER`: `none` (key streams read every partition and carry full ids), or a
/// promise that every producer places keys with `murmur2` or `crc32` (short key-stream ids).
pub const KEY_PARTITIONER: &str = "KSG_KEY_PARTITIONER";
/// `KSG_HANDSHAKE_TIMEOUT_SECS`: TLS and HTTP handshake deadline.
pub const HANDSHAKE_TIMEOUT_SECS: &str = "KSG_HANDSHAKE_TIMEOUT_SECS";
/// `KSG_IDLE_TIMEOUT_SECS`: a connection with no open stream is closed after this long (0: never).
pub const IDLE_TIMEOUT_SECS: &str = "KSG_IDLE_TIMEOUT_SECS";
/// `KSG_DRAIN_DELAY_SECS`: on SIGTERM, `/readyz` answers 503 and streams go on for this long
/// (load balancers stop routing here) before GOAWAY and the end of every stream.
pub const DRAIN_DELAY_SECS: &str = "KSG_DRAIN_DELAY_SECS";
/// `KSG_STREAM_STALL_SECS`: an HTTP/2 stream whose client grants it no flow-control window of its
/// own for this long while data waits is reset (`RST_STREAM(CANCEL)`) and its memory released; a
/// connection whose window stays at zero this long while streams wait is closed (GOAWAY).
pub const STREAM_STALL_SECS: &str = "KSG_STREAM_STALL_SECS";
/// `KSG_TOPIC_IDLE_SECS`: a topic without streams is released after this long.
pub const TOPIC_IDLE_SECS: &str = "KSG_TOPIC_IDLE_SECS";
/// `KSG_DEMO_TICKS_PER_SEC`: price ticks per symbol per second in demo mode.
pub const DEMO_TICKS_PER_SEC: &str = "KSG_DEMO_TICKS_PER_SEC";
/// `KSG_CORS_ORIGINS`: origins allowed to open streams from a browser (`*` for any).
pub const CORS_ORIGINS: &str = "KSG_CORS_ORIGINS";
/// `KSG_LOG`: log filter, e.g. `info` or `info,kafka_sse_gateway=debug`.
pub const LOG: &str = "KSG_LOG";
/// `KSG_LOG_FORMAT`: `text` (human-readable lines) or `json` (one JSON object a line, with the
/// structured fields, for log pipelines).
pub const LOG_FORMAT: &str = "KSG_LOG_FORMAT";

/// `KSG_AUTH`: `jwt` (streams need a token) or `none` (public streams). Required with
/// `KSG_KAFKA_BROKERS`; the demo defaults to `none`.
pub const AUTH: &str = "KSG_AUTH";
/// `KSG_AUTH_JWT_SECRET`: HS256 shared secret (at least 32 bytes).
pub const AUTH_JWT_SECRET: &str = "KSG_AUTH_JWT_SECRET";
/// `KSG_AUTH_JWT_KEYS`: a file of PEM public keys (RSA, EC, Ed25519) or a JWKS document,
/// reloaded when it changes.
pub const AUTH_JWT_KEYS: &str = "KSG_AUTH_JWT_KEYS";
/// `KSG_AUTH_JWT_ISSUER`: accepted `iss` values, comma-separated.
pub const AUTH_JWT_ISSUER: &str = "KSG_AUTH_JWT_ISSUER";
/// `KSG_AUTH_JWT_AUDIENCE`: accepted `aud` values, comma-separated.
pub const AUTH_JWT_AUDIENCE: &str = "KSG_AUTH_JWT_AUDIENCE";
/// `KSG_AUTH_COOKIE`: name of a cookie that may carry the token (browsers).
pub const AUTH_COOKIE: &str = "KSG_AUTH_COOKIE";
/// `KSG_AUTH_QUERY_TOKEN`: `on` accepts `?access_token=` (URLs end up in logs).
pub const AUTH_QUERY_TOKEN: &str = "KSG_AUTH_QUERY_TOKEN";
/// `KSG_AUTH_LEEWAY_SECS`: clock skew allowed for `nbf`.
pub const AUTH_LEEWAY_SECS: &str = "KSG_AUTH_LEEWAY_SECS";
/// `KSG_AUTH_EXPIRY_NOTICE_SECS`: a stream sends `event: expiring` this long before its token's
/// `exp` (0: no notice).
pub const AUTH_EXPIRY_NOTICE_SECS: &str = "KSG_AUTH_EXPIRY_NOTICE_SECS";
/// `KSG_MAX_STREAMS`: streams open in the whole gateway at most; more get `429`.
pub const MAX_STREAMS: &str = "KSG_MAX_STREAMS";
/// `KSG_MAX_STREAM_OPENS_PER_SEC`: stream requests one connection may make per second, after a
/// burst of `KSG_MAX_STREAMS_PER_CONNECTION` (0: no limit); more get `429`.
pub const MAX_STREAM_OPENS_PER_SEC: &str = "KSG_MAX_STREAM_OPENS_PER_SEC";
/// `KSG_PROXY_PROTOCOL`: `on` requires a PROXY protocol (v1 or v2) header on every connection
/// and takes the client address from it.
pub const PROXY_PROTOCOL: &str = "KSG_PROXY_PROTOCOL";
/// `KSG_PROXY_PROTOCOL_FROM`: the proxies' networks (comma-separated `addr/prefix`); a
/// connection from elsewhere is refused.
pub const PROXY_PROTOCOL_FROM: &str = "KSG_PROXY_PROTOCOL_FROM";

const KAFKA_PREFIX: &str = "KSG_KAFKA_";

/// Every variable with its default, for the README and for validation of names.
pub const VARIABLES: &[(&str, &str)] = &[
    (LISTEN, "0.0.0.0:8443"),
    (ADMIN_LISTEN, "0.0.0.0:8081"),
    (KAFKA_BROKERS, "(unset: embedded demo cluster)"),
    (
        TOPICS,
        "(required with KSG_KAFKA_BROKERS unless KSG_ROUTES is set)",
    ),
    (ROUTES, "(none)"),
    (TLS, "on"),
    (TLS_CERT, "(unset: self-signed for localhost)"),
    (TLS_KEY, "(unset: self-signed for localhost)"),
    (MAX_STREAMS_PER_CONNECTION, "256"),
    (MAX_CONNECTIONS, "10000"),
    (MAX_CONNECTIONS_PER_IP, "0"),
    (ADMIN_TOKEN, "(none: /metrics is open)"),
    (AUTH, "(required with KSG_KAFKA_BROKERS; demo: none)"),
    (AUTH_JWT_SECRET, "(none)"),
    (AUTH_JWT_KEYS, "(none)"),
    (AUTH_JWT_ISSUER, "(none: not checked)"),
    (AUTH_JWT_AUDIENCE, "(none: not checked)"),
    (AUTH_COOKIE, "(none)"),
    (AUTH_QUERY_TOKEN, "off"),
    (AUTH_LEEWAY_SECS, "30"),
    (AUTH_EXPIRY_NOTICE_SECS, "30"),
    (MAX_STREAMS, "250000"),
    (MAX_STREAM_OPENS_PER_SEC, "20"),
    (PROXY_PROTOCOL, "off"),
    (PROXY_PROTOCOL_FROM, "(any peer)"),
    (HEARTBEAT_SECS, "15"),
    (RETRY_MS, "3000"),
    (SHUTDOWN_GRACE_SECS, "10"),
    (STREAM_QUEUE, "1024"),
    (STREAM_QUEUE_BYTES, "65536"),
    (REPLAY_BYTES, "4194304"),
    (CATCHUP_READERS, "4"),
    (WORKER_THREADS, "0"),
    (CATCHUP_READER_IDLE_SECS, "10"),
    (SNAPSHOT_BYTES, "67108864"),
    (SNAPSHOT_TOPICS, "(none)"),
    (STREAM_MAX_SECS, "0"),
    (METADATA_REFRESH_SECS, "10"),
    (MAX_EVENT_BYTES, "4194304"),
    (MAX_KEYS_PER_STREAM, "1000"),
    (MAX_FILTERS_PER_STREAM, "16"),
    (MAX_TOPICS_PER_STREAM, "16"),
    (KEY_PARTITIONER, "none"),
    (HANDSHAKE_TIMEOUT_SECS, "10"),
    (IDLE_TIMEOUT_SECS, "60"),
    (STREAM_STALL_SECS, "30"),
    (DRAIN_DELAY_SECS, "5"),
    (TOPIC_IDLE_SECS, "30"),
    (DEMO_TICKS_PER_SEC, "2"),
    (CORS_ORIGINS, "(none: no CORS headers)"),
    (LOG, "info"),
    (LOG_FORMAT, "text"),
];

/// The default of `name` as [`VARIABLES`] lists it.
fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, default)| *default)
        .unwrap_or_else(|| panic!("{name} is not in VARIABLES"))
}

/// The validated configuration of one gateway.
#[derive(Debug, Clone)]
pub struct Config {
    /// SSE listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Kafka bootstrap servers; `None` runs the embedded demo cluster.
    pub kafka_brokers: Option<String>,
    /// Extra librdkafka properties from `KSG_KAFKA_<NAME>`.
    pub kafka_properties: BTreeMap<String, String>,
    /// Path routing: default routes for allowed topics plus custom templates.
    pub routes: Routes,
    /// TLS settings; `None` serves cleartext HTTP/1.1 and h2c.
    pub tls: Option<TlsFiles>,
    /// HTTP/2 concurrent streams per connection.
    pub max_streams_per_connection: u32,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one client address may hold at once (`None`: no limit).
    pub max_connections_per_ip: Option<usize>,
    /// Bearer token `/metrics` requires, if any.
    pub admin_token: Option<String>,
    /// JWT authorization of streams; `None`: `KSG_AUTH=none`, public streams.
    pub auth: Option<AuthSettings>,
    /// Streams open in the whole gateway at most.
    pub max_streams: usize,
    /// Whether `KSG_MAX_STREAMS` was given; if not, the gateway lowers the default to what
    /// its cgroup's memory limit holds ([`streams_for_memory`]).
    pub max_streams_given: bool,
    /// Stream requests per second one connection may make after its burst (0: no limit).
    pub max_stream_opens_per_sec: u32,
    /// Whether every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Networks the PROXY header is accepted from (empty: any peer).
    pub proxy_from: Vec<crate::http::proxy::Network>,
    /// Quiet time before a heartbeat comment.
    pub heartbeat: Duration,
    /// The `retry:` value sent first on every stream.
    pub retry_ms: u64,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Events queued per stream before it is cut off as slow.
    pub stream_queue: usize,
    /// Bytes of its own a stream may hold queued (catch-up and snapshot chunks).
    pub stream_queue_bytes: usize,
    /// Replay ring budget per topic, bytes.
    pub replay_bytes: usize,
    /// Catch-up readers at most.
    pub catchup_readers: usize,
    /// Threads serving connections as set; 0: automatic ([`Config::workers`]).
    pub worker_threads: usize,
    /// A catch-up reader left unused this long is closed.
    pub catchup_reader_idle: Duration,
    /// Bytes one snapshot may hold before it is sent early.
    pub snapshot_bytes: usize,
    /// Topics whose streams start with a snapshot when the request names no start.
    pub snapshot_topics: TopicFilter,
    /// Streams end after about this long; `None`: never.
    pub stream_max_lifetime: Option<Duration>,
    /// How often attached topics are checked for new partitions and deletion.
    pub metadata_refresh: Duration,
    /// Largest record value sent as an event.
    pub max_event_bytes: usize,
    /// Keys one stream may name with `key=` parameters.
    pub max_keys_per_stream: usize,
    /// Filters one stream may give with `header.<name>=` and `where=` parameters.
    pub max_filters_per_stream: usize,
    /// Topics one stream may read.
    pub max_topics_per_stream: usize,
    /// The partitioner the operator promises producers use (`None`: no promise, full ids).
    pub key_partitioner: Option<KeyPartitioner>,
    /// TLS and HTTP handshake deadline.
    pub handshake_timeout: Duration,
    /// A connection with no open stream (or request) is closed after this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// An HTTP/2 stream that cannot send for this long is reset.
    pub stream_stall: Duration,
    /// How long the gateway keeps serving, not ready, after SIGTERM.
    pub drain_delay: Duration,
    /// Delay before a topic without streams is released.
    pub topic_idle: Duration,
    /// Demo ticks per symbol per second.
    pub demo_ticks_per_sec: u32,
    /// Allowed browser origins.
    pub cors: Cors,
    /// Log filter directives.
    pub log: String,
    /// Logs as JSON lines instead of text.
    pub log_json: bool,
}

/// Certificate and key files; both `None` means a generated self-signed certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM certificate chain path.
    pub cert: Option<PathBuf>,
    /// PEM private key path.
    pub key: Option<PathBuf>,
}

/// One configuration problem, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variable at fault.
    pub variable: String,
    /// What is wrong with it.
    pub message: String,
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.variable, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects values and problems while a configuration is read.
struct Reader {
    vars: BTreeMap<String, String>,
    problems: Vec<ConfigProblem>,
}

impl Reader {
    fn problem(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            variable: variable.to_string(),
            message: message.into(),
        });
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Parses `name` with `parse`, falling back to `default`; a bad value is a problem that
    /// names the variable and quotes the value.
    fn parse<T>(&mut self, name: &str, default: T, parse: impl Fn(&str) -> Result<T, String>) -> T {
        let Some(value) = self.raw(name).map(str::to_string) else {
            return default;
        };
        match parse(value.trim()) {
            Ok(v) => v,
            Err(why) => {
                self.problem(name, format!("invalid value {value:?}: {why}"));
                default
            }
        }
    }

    /// A setting whose default is the value [`VARIABLES`] lists, parsed as any value is.
    fn listed<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
        let default = parse(default_of(name))
            .unwrap_or_else(|e| panic!("{name}: the default in VARIABLES does not parse: {e}"));
        self.parse(name, default, parse)
    }

    /// A whole number between `min` and `max`; unset, the default in [`VARIABLES`] (written
    /// there once, for the parser, the README and its test).
    fn number<T: std::str::FromStr + PartialOrd + Copy + fmt::Display>(
        &mut self,
        name: &str,
        min: T,
        max: T,
    ) -> T {
        let default = default_of(name)
            .parse()
            .unwrap_or_else(|_| panic!("{name}: the default in VARIABLES is not a number"));
        self.parse(name, default, |s| {
            let v: T = s.parse().map_err(|_| "not a whole number".to_string())?;
            if v < min || v > max {
                return Err(format!("must be between {min} and {max}"));
            }
            Ok(v)
        })
    }
}

/// Memory a gateway needs before its first stream: the runtime, the Kafka client, TLS, the
/// replay rings' first bytes. W1 (docs/benchmarks.md) starts at about 12 MB.
pub const BASE_MEMORY: u64 = 64 << 20;
/// Memory reserved per stream when `KSG_MAX_STREAMS` comes from a memory limit: three times
/// what W1 measures for an idle stream (about 1.3 KiB of RSS, heartbeats and HTTP/2 state
/// included), for the queues and windows of busy streams.
pub const MEMORY_PER_STREAM: u64 = 4 << 10;

/// The streams `limit` bytes of memory hold: [`BASE_MEMORY`] first, then
/// [`MEMORY_PER_STREAM`] each; at least 1,000 (a limit that small is a mistake the logs show).
pub fn streams_for_memory(limit: u64) -> usize {
    let streams = limit.saturating_sub(BASE_MEMORY) / MEMORY_PER_STREAM;
    usize::try_from(streams).unwrap_or(usize::MAX).max(1_000)
}

/// The memory limit of the process's cgroup, when it has one: cgroup v2's `memory.max`, else
/// v1's `memory.limit_in_bytes` (v1 writes a huge number for "no limit").
pub fn cgroup_memory_limit() -> Option<u64> {
    memory_limit_under(std::path::Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_memory_limit`] with the cgroup file system mounted at `root`.
fn memory_limit_under(root: &std::path::Path) -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(root.join(path)).ok();
    let limit = match read("memory.max") {
        // cgroup v2: a number, or "max" for no limit.
        Some(v2) => v2.trim().parse::<u64>().ok()?,
        None => read("memory/memory.limit_in_bytes")?
            .trim()
            .parse::<u64>()
            .ok()?,
    };
    (limit < 1 << 60).then_some(limit)
}

impl Config {
    /// The runtime's threads serving connections: `KSG_WORKER_THREADS`, or else the cores
    /// available to the process (a CPU quota counts) less one, at least one. The core left is
    /// librdkafka's (its broker threads fetch there): a runtime with fewer workers wakes fewer
    /// of them per batch of records (docs/benchmarks.md).
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |cores| cores.get().saturating_sub(1).max(1)),
            n => n,
        }
    }

    /// Reads the process environment (only `KSG_*` names are looked at).
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with("KSG_")
                .then(|| (k, v.to_string_lossy().into_owned()))
        }))
    }

    /// Builds and validates a configuration from `(name, value)` pairs.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            // KSG_TEST_* belong to the test suite (a broker to test against, for example).
            .filter(|(k, _)| k.starts_with("KSG_") && !k.starts_with("KSG_TEST_"))
            .collect();
        let mut r = Reader {
            vars,
            problems: Vec::new(),
        };

        let mut kafka_properties = BTreeMap::new();
        // Which variable set each property: two spellings of one property (the case differs)
        // would otherwise let one silently win.
        let mut set_by: BTreeMap<String, String> = BTreeMap::new();
        let names: Vec<String> = r.vars.keys().cloned().collect();
        for name in names {
            if VARIABLES.iter().any(|(known, _)| *known == name) {
                continue;
            }
            match name.strip_prefix(KAFKA_PREFIX) {
                Some(rest) if !rest.is_empty() => {
                    let property = rest.to_ascii_lowercase().replace('_', ".");
                    if property == "bootstrap.servers" {
                        r.problem(&name, format!("set the brokers with {KAFKA_BROKERS}"));
                    } else if let Some(first) = set_by.get(&property) {
                        let why = format!("{first} already sets librdkafka's {property}");
                        r.problem(&name, why);
                    } else {
                        set_by.insert(property.clone(), name.clone());
                        kafka_properties.insert(property, r.vars[&name].clone());
                    }
                }
                _ => r.problem(&name, "unknown variable (see the README's table)"),
            }
        }

        let addr = |s: &str| {
            s.parse::<SocketAddr>()
                .map_err(|_| "not a host:port address".to_string())
        };
        let listen = r.listed(LISTEN, addr);
        let admin_listen = r.listed(ADMIN_LISTEN, addr);
        let kafka_brokers = r
            .raw(KAFKA_BROKERS)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());

        let tls_on = r.listed(TLS, |s| match s {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err("must be on or off".into()),
        });
        let cert = r.raw(TLS_CERT).map(PathBuf::from);
        let key = r.raw(TLS_KEY).map(PathBuf::from);
        if cert.is_some() != key.is_some() {
            let missing = if cert.is_some() { TLS_KEY } else { TLS_CERT };
            r.problem(
                missing,
                format!("must be set together with {TLS_CERT}/{TLS_KEY}"),
            );
        }
        if !tls_on && (cert.is_some() || key.is_some()) {
            r.problem(TLS, format!("is off but {TLS_CERT}/{TLS_KEY} are set"));
        }
        let tls = tls_on.then_some(TlsFiles { cert, key });

        let max_streams_per_connection = r.number(MAX_STREAMS_PER_CONNECTION, 1u32, 65_535);
        let max_connections = r.number(MAX_CONNECTIONS, 1usize, 1_000_000);
        let max_connections_per_ip =
            Some(r.number(MAX_CONNECTIONS_PER_IP, 0usize, 1_000_000)).filter(|n| *n > 0);
        let admin_token = r.raw(ADMIN_TOKEN).map(str::to_string);
        if admin_token
            .as_deref()
            .is_some_and(|t| t.len() < 16 || t.contains(char::is_whitespace))
        {
            r.problem(
                ADMIN_TOKEN,
                "must be at least 16 characters, without spaces (the value is not shown)",
            );
        }
        let auth = read_auth(&mut r, kafka_brokers.is_some());
        let max_streams_given = r.raw(MAX_STREAMS).is_some();
        let max_streams = r.number(MAX_STREAMS, 1usize, 100_000_000);
        let max_stream_opens_per_sec = r.number(MAX_STREAM_OPENS_PER_SEC, 0u32, 1_000_000);
        let proxy_protocol = r.listed(PROXY_PROTOCOL, on_off);
        let proxy_from = r.parse(PROXY_PROTOCOL_FROM, Vec::new(), |s| {
            s.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(crate::http::proxy::Network::parse)
                .collect()
        });
        if !proxy_from.is_empty() && !proxy_protocol {
            r.problem(
                PROXY_PROTOCOL_FROM,
                format!("is set but {PROXY_PROTOCOL} is not on"),
            );
        }
        let heartbeat = Duration::from_secs(r.number(HEARTBEAT_SECS, 1u64, 3600));
        let retry_ms = r.number(RETRY_MS, 0u64, 86_400_000);
        let shutdown_grace = Duration::from_secs(r.number(SHUTDOWN_GRACE_SECS, 0u64, 3600));
        let stream_queue = r.number(STREAM_QUEUE, 1usize, 1_000_000);
        let stream_queue_bytes = r.number(STREAM_QUEUE_BYTES, 16usize << 10, 1 << 30);
        let replay_bytes = r.number(REPLAY_BYTES, 0usize, 1 << 34);
        let catchup_readers = r.number(CATCHUP_READERS, 1usize, 256);
        let worker_threads = r.number(WORKER_THREADS, 0usize, 1024);
        let catchup_reader_idle =
            Duration::from_secs(r.number(CATCHUP_READER_IDLE_SECS, 0u64, 86_400));
        let metadata_refresh = Duration::from_secs(r.number(METADATA_REFRESH_SECS, 1u64, 3600));
        let max_event_bytes = r.number(MAX_EVENT_BYTES, 1usize, 1 << 30);
        let max_keys_per_stream = r.number(MAX_KEYS_PER_STREAM, 1usize, 100_000);
        let max_filters_per_stream = r.number(MAX_FILTERS_PER_STREAM, 0usize, 1024);
        let max_topics_per_stream = r.number(MAX_TOPICS_PER_STREAM, 1usize, 256);
        let key_partitioner = r.listed(KEY_PARTITIONER, |s| match s {
            "none" => Ok(None),
            "murmur2" => Ok(Some(KeyPartitioner::Murmur2)),
            "crc32" => Ok(Some(KeyPartitioner::Crc32)),
            _ => Err("must be none, murmur2 or crc32".into()),
        });
        let stream_max_secs = r.number(STREAM_MAX_SECS, 0u64, 30 * 86_400);
        let stream_max_lifetime =
            (stream_max_secs > 0).then(|| Duration::from_secs(stream_max_secs));
        let snapshot_bytes = r.number(SNAPSHOT_BYTES, 1024usize, 1 << 36);
        let snapshot_topics = r.parse(SNAPSHOT_TOPICS, TopicFilter::none(), |s| {
            TopicFilter::parse(s).map_err(|e| e.to_string())
        });
        let handshake_timeout = Duration::from_secs(r.number(HANDSHAKE_TIMEOUT_SECS, 1u64, 300));
        let topic_idle = Duration::from_secs(r.number(TOPIC_IDLE_SECS, 0u64, 86_400));
        let stream_stall = Duration::from_secs(r.number(STREAM_STALL_SECS, 1u64, 3600));
        let drain_delay = Duration::from_secs(r.number(DRAIN_DELAY_SECS, 0u64, 3600));
        let idle_timeout = match r.number(IDLE_TIMEOUT_SECS, 0u64, 86_400) {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let demo_ticks_per_sec = r.number(DEMO_TICKS_PER_SEC, 1u32, 1000);
        let log = r.raw(LOG).unwrap_or(default_of(LOG)).trim().to_string();
        if !is_log_filter(&log) {
            r.problem(
                LOG,
                format!("invalid value {log:?}: not a level or target=level list"),
            );
        }

        let log_json = r.listed(LOG_FORMAT, |s| match s {
            "text" => Ok(false),
            "json" => Ok(true),
            _ => Err("must be text or json".into()),
        });
        let cors = r.parse(CORS_ORIGINS, Cors::default(), Cors::parse);
        let topics = match r.raw(TOPICS).map(str::to_string) {
            Some(s) => TopicFilter::parse(&s).unwrap_or_else(|e| {
                r.problem(TOPICS, format!("invalid value {s:?}: {e}"));
                TopicFilter::none()
            }),
            None if kafka_brokers.is_none() => {
                TopicFilter::parse(crate::demo::TOPIC).expect("the demo topic is a valid name")
            }
            None => {
                if r.raw(ROUTES).is_none() {
                    r.problem(
                        TOPICS,
                        "required with KSG_KAFKA_BROKERS (list topics or patterns; `*` exposes every topic)",
                    );
                }
                TopicFilter::none()
            }
        };
        let routes = match r.raw(ROUTES).map(str::to_string) {
            Some(s) => Routes::parse(&s, topics).unwrap_or_else(|e: RouteError| {
                r.problem(ROUTES, format!("invalid value {s:?}: {e}"));
                Routes::new(TopicFilter::none())
            }),
            None => Routes::new(topics),
        };

        if r.problems.is_empty() {
            Ok(Config {
                listen,
                admin_listen,
                kafka_brokers,
                kafka_properties,
                routes,
                tls,
                max_streams_per_connection,
                max_connections,
                max_connections_per_ip,
                admin_token,
                auth,
                max_streams,
                max_streams_given,
                max_stream_opens_per_sec,
                proxy_protocol,
                proxy_from,
                heartbeat,
                retry_ms,
                shutdown_grace,
                stream_queue,
                stream_queue_bytes,
                replay_bytes,
                catchup_readers,
                worker_threads,
                catchup_reader_idle,
                snapshot_bytes,
                snapshot_topics,
                stream_max_lifetime,
                metadata_refresh,
                max_event_bytes,
                max_keys_per_stream,
                max_filters_per_stream,
                max_topics_per_stream,
                key_partitioner,
                handshake_timeout,
                idle_timeout,
                stream_stall,
                drain_delay,
                topic_idle,
                demo_ticks_per_sec,
                cors,
                log,
                log_json,
            })
        } else {
            Err(ConfigError(r.problems))
        }
    }

    /// True when no Kafka cluster is configured and the embedded demo runs.
    pub fn is_demo(&self) -> bool {
        self.kafka_brokers.is_none()
    }
}

/// A `KSG_LOG` value: comma-separated `level` or `target=level` items.
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("must be on or off".into()),
    }
}

/// The `KSG_AUTH*` variables. With a real cluster `KSG_AUTH` must be given: public streams are
/// never the silent default.
fn read_auth(r: &mut Reader, real_cluster: bool) -> Option<AuthSettings> {
    let names = [
        AUTH_JWT_SECRET,
        AUTH_JWT_KEYS,
        AUTH_JWT_ISSUER,
        AUTH_JWT_AUDIENCE,
        AUTH_COOKIE,
        AUTH_QUERY_TOKEN,
        AUTH_LEEWAY_SECS,
        AUTH_EXPIRY_NOTICE_SECS,
    ];
    let jwt = match r.raw(AUTH).map(str::trim) {
        Some("jwt") => true,
        Some("none") => false,
        Some(other) => {
            let other = other.to_string();
            r.problem(
                AUTH,
                format!("invalid value {other:?}: must be jwt or none"),
            );
            return None;
        }
        None if real_cluster => {
            r.problem(
                AUTH,
                "required with KSG_KAFKA_BROKERS: jwt (streams need a token) or none (public streams)",
            );
            return None;
        }
        None => false,
    };
    if !jwt {
        for name in names {
            if r.raw(name).is_some() {
                r.problem(name, format!("is set but {AUTH} is not jwt"));
            }
        }
        return None;
    }
    let secret = r.raw(AUTH_JWT_SECRET).map(str::to_string);
    let file = r.raw(AUTH_JWT_KEYS).map(|s| PathBuf::from(s.trim()));
    let keys = match (secret, file) {
        (Some(secret), None) => {
            if secret.len() < 32 {
                r.problem(
                    AUTH_JWT_SECRET,
                    "must be at least 32 bytes (HS256 needs a 256-bit secret; the value is not shown)",
                );
            }
            KeySource::Secret(secret.into_bytes())
        }
        (None, Some(path)) => KeySource::File(path),
        (Some(_), Some(_)) => {
            r.problem(
                AUTH_JWT_SECRET,
                format!("set only one of {AUTH_JWT_SECRET} and {AUTH_JWT_KEYS}"),
            );
            return None;
        }
        (None, None) => {
            r.problem(
                AUTH,
                format!("jwt needs {AUTH_JWT_SECRET} or {AUTH_JWT_KEYS}"),
            );
            return None;
        }
    };
    let list = |r: &Reader, name: &str| {
        r.raw(name).map(|s| {
            s.split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
        })
    };
    let issuer = list(r, AUTH_JWT_ISSUER);
    let audience = list(r, AUTH_JWT_AUDIENCE);
    for (name, values) in [(AUTH_JWT_ISSUER, &issuer), (AUTH_JWT_AUDIENCE, &audience)] {
        if values.as_ref().is_some_and(Vec::is_empty) {
            r.problem(name, "is empty");
        }
    }
    let cookie = r.raw(AUTH_COOKIE).map(|s| s.trim().to_string());
    if cookie.as_deref().is_some_and(|c| {
        c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }) {
        r.problem(
            AUTH_COOKIE,
            "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        );
    }
    let query_token = r.listed(AUTH_QUERY_TOKEN, on_off);
    let leeway = Duration::from_secs(r.number(AUTH_LEEWAY_SECS, 0u64, 600));
    let expiry_notice = Duration::from_secs(r.number(AUTH_EXPIRY_NOTICE_SECS, 0u64, 3600));
    Some(AuthSettings {
        keys,
        issuer,
        audience,
        cookie,
        query_token,
        leeway,
        expiry_notice,
    })
}

/// The protocol layers whose `debug` lines are per frame or per record: a filter that asks for
/// `debug` (or `trace`) everywhere keeps them at `info` unless it names them.
const CHATTY_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "rustls",
    "librdkafka",
    "rdkafka",
];

/// The filter `KSG_LOG` asks for, with [`CHATTY_TARGETS`] held at `info` when its default level
/// is `debug` or `trace` and it does not name them itself.
pub fn log_filter(filter: &str) -> String {
    let items: Vec<&str> = filter.split(',').map(str::trim).collect();
    let verbose = items
        .iter()
        .any(|item| !item.contains('=') && matches!(*item, "debug" | "trace"));
    let mut out = filter.trim().to_string();
    if verbose {
        for target in CHATTY_TARGETS {
            let named = items.iter().any(|item| {
                item.split_once('=')
                    .is_some_and(|(t, _)| t.trim() == *target)
            });
            if !named {
                out.push_str(&format!(",{target}=info"));
            }
        }
    }
    out
}

fn is_log_filter(filter: &str) -> bool {
    let level = |s: &str| {
        matches!(
            s.trim(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        )
    };
    filter.split(',').all(|item| match item.split_once('=') {
        Some((target, lvl)) => !target.trim().is_empty() && level(lvl),
        None => level(item),
    }) && filter
        .parse::<tracing_subscriber::filter::Targets>()
        .is_ok()
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_everywhere_keeps_the_protocol_layers_at_info_unless_named() {
        assert_eq!(
            log_filter("debug"),
            "debug,h2=info,hyper=info,hyper_util=info,rustls=info,librdkafka=info,rdkafka=info"
        );
        let named = log_filter("debug,h2=debug");
        assert!(named.starts_with("debug,h2=debug,hyper=info"), "{named}");
        assert!(!named.contains("h2=info"), "{named}");
        assert_eq!(
            log_filter("info,kafka_sse_gateway=debug"),
            "info,kafka_sse_gateway=debug"
        );
        assert_eq!(log_filter("warn"), "warn");
        for filter in ["debug", "trace,h2=trace", "info"] {
            assert!(is_log_filter(&log_filter(filter)), "{filter}");
        }
    }

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn problem_vars(e: ConfigError) -> Vec<String> {
        e.0.into_iter().map(|p| p.variable).collect()
    }

    #[test]
    fn admin_token_and_per_ip_limit() {
        let e = cfg(&[(ADMIN_TOKEN, "short")]).unwrap_err();
        assert_eq!(problem_vars(e), vec![ADMIN_TOKEN]);
        let c = cfg(&[
            (ADMIN_TOKEN, "0123456789abcdef"),
            (MAX_CONNECTIONS_PER_IP, "8"),
        ])
        .unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("0123456789abcdef"));
        assert_eq!(c.max_connections_per_ip, Some(8));
        assert_eq!(cfg(&[]).unwrap().max_connections_per_ip, None);
    }

    #[test]
    fn readme_table_lists_every_variable_with_its_default() {
        let readme = include_str!("../README.md");
        for (name, default) in VARIABLES {
            let shown = if default.starts_with('(') {
                default.to_string()
            } else {
                format!("`{default}`")
            };
            let row = format!("| `{name}` | {shown} |");
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }

    #[test]
    fn worker_threads_leave_a_core_to_the_kafka_client_unless_set() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let automatic = cfg(&[]).unwrap();
        assert_eq!(automatic.worker_threads, 0);
        assert_eq!(automatic.workers(), cores.saturating_sub(1).max(1));
        assert_eq!(cfg(&[(WORKER_THREADS, "3")]).unwrap().workers(), 3);
        let e = cfg(&[(WORKER_THREADS, "2000")]).unwrap_err();
        assert_eq!(problem_vars(e), [WORKER_THREADS]);
    }

    #[test]
    fn defaults_are_the_demo() {
        let c = cfg(&[]).unwrap();
        assert!(c.is_demo());
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.max_streams_per_connection, 256);
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(cfg(&[(IDLE_TIMEOUT_SECS, "0")]).unwrap().idle_timeout, None);
        let e = cfg(&[(IDLE_TIMEOUT_SECS, "-1")]).unwrap_err();
        assert_eq!(problem_vars(e), vec![IDLE_TIMEOUT_SECS]);
        assert!(c.tls.is_some());
        assert!(c.routes.resolve("/stock-prices/GOOG").is_ok());
    }

    #[test]
    fn errors_name_variable_and_value() {
        let e = cfg(&[(HEARTBEAT_SECS, "soon"), (LISTEN, "nowhere")]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("KSG_HEARTBEAT_SECS: invalid value \"soon\""),
            "{text}"
        );
        assert!(
            text.contains("KSG_LISTEN: invalid value \"nowhere\""),
            "{text}"
        );
        let e = cfg(&[(MAX_STREAMS_PER_CONNECTION, "0")]).unwrap_err();
        assert!(e.to_string().contains("between 1 and 65535"));
    }

    #[test]
    fn auth_settings_are_checked_together() {
        let real = [(KAFKA_BROKERS, "k:9092"), (TOPICS, "*")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = real.to_vec();
            v.extend_from_slice(extra);
            cfg(&v)
        };
        let secret = (AUTH_JWT_SECRET, "0123456789abcdef0123456789abcdef");
        let c = with(&[(AUTH, "jwt"), secret, (AUTH_COOKIE, "ksg_token")]).unwrap();
        let a = c.auth.unwrap();
        assert!(matches!(a.keys, KeySource::Secret(ref s) if s.len() == 32));
        assert_eq!(a.cookie.as_deref(), Some("ksg_token"));
        assert!(!a.query_token);
        assert_eq!(a.leeway, Duration::from_secs(30));
        assert_eq!(a.expiry_notice, Duration::from_secs(30));
        let c = with(&[
            (AUTH, "jwt"),
            (AUTH_JWT_KEYS, "/etc/ksg/jwks.json"),
            (AUTH_JWT_ISSUER, "https://a, https://b"),
            (AUTH_JWT_AUDIENCE, "ksg"),
            (AUTH_QUERY_TOKEN, "on"),
            (AUTH_EXPIRY_NOTICE_SECS, "0"),
        ])
        .unwrap();
        let a = c.auth.unwrap();
        assert_eq!(a.keys, KeySource::File("/etc/ksg/jwks.json".into()));
        assert_eq!(a.issuer.unwrap(), vec!["https://a", "https://b"]);
        assert_eq!(a.audience.unwrap(), vec!["ksg"]);
        assert!(a.query_token);
        assert!(a.expiry_notice.is_zero());
        assert!(with(&[(AUTH, "none")]).unwrap().auth.is_none());
        assert!(cfg(&[]).unwrap().auth.is_none(), "the demo is open");

        let vars = |r: Result<Config, ConfigError>| problem_vars(r.unwrap_err());
        assert_eq!(vars(with(&[(AUTH, "jwt")])), vec![AUTH]);
        assert_eq!(vars(with(&[(AUTH, "yes")])), vec![AUTH]);
        assert_eq!(
            vars(with(&[(AUTH, "jwt"), (AUTH_JWT_SECRET, "short")])),
            vec![AUTH_JWT_SECRET]
        );
        assert_eq!(
            vars(with(&[(AUTH, "jwt"), secret, (AUTH_JWT_KEYS, "/k")])),
            vec![AUTH_JWT_SECRET]
        );
        assert_eq!(vars(with(&[(AUTH, "none"), secret])), vec![AUTH_JWT_SECRET]);
        assert_eq!(
            vars(with(&[(AUTH, "jwt"), secret, (AUTH_COOKIE, "a b")])),
            vec![AUTH_COOKIE]
        );
        assert_eq!(
            vars(with(&[(AUTH, "jwt"), secret, (AUTH_QUERY_TOKEN, "yes")])),
            vec![AUTH_QUERY_TOKEN]
        );
        // The secret itself never appears in an error.
        let e = with(&[(AUTH, "jwt"), (AUTH_JWT_SECRET, "hunter2")]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn stream_limits_and_proxy_protocol() {
        let c = cfg(&[]).unwrap();
        assert_eq!((c.max_streams, c.max_stream_opens_per_sec), (250_000, 20));
        assert!(!c.max_streams_given);
        assert!(!c.proxy_protocol);
        let c = cfg(&[
            (MAX_STREAMS, "10"),
            (MAX_STREAM_OPENS_PER_SEC, "0"),
            (PROXY_PROTOCOL, "on"),
        ])
        .unwrap();
        assert_eq!((c.max_streams, c.max_stream_opens_per_sec), (10, 0));
        assert!(c.max_streams_given);
        assert!(c.proxy_protocol);
        let e = cfg(&[(MAX_STREAMS, "0"), (PROXY_PROTOCOL, "v2")]).unwrap_err();
        assert_eq!(problem_vars(e), vec![MAX_STREAMS, PROXY_PROTOCOL]);
        let c = cfg(&[
            (PROXY_PROTOCOL, "on"),
            (PROXY_PROTOCOL_FROM, "10.0.0.0/8, 2001:db8::/32"),
        ])
        .unwrap();
        assert_eq!(c.proxy_from.len(), 2);
        let e = cfg(&[(PROXY_PROTOCOL, "on"), (PROXY_PROTOCOL_FROM, "10.0.0.0/40")]).unwrap_err();
        assert_eq!(problem_vars(e), vec![PROXY_PROTOCOL_FROM]);
        let e = cfg(&[(PROXY_PROTOCOL_FROM, "10.0.0.0/8")]).unwrap_err();
        assert_eq!(problem_vars(e), vec![PROXY_PROTOCOL_FROM]);
    }

    #[test]
    fn real_cluster_requires_topics() {
        let e = cfg(&[(KAFKA_BROKERS, "k:9092")]).unwrap_err();
        assert_eq!(problem_vars(e), vec![AUTH, TOPICS]);
        let public = (AUTH, "none");
        assert!(cfg(&[(KAFKA_BROKERS, "k:9092"), (TOPICS, "a,b*"), public]).is_ok());
        assert!(cfg(&[(KAFKA_BROKERS, "k:9092"), (ROUTES, "/q/{key}=a"), public]).is_ok());
    }

    #[test]
    fn kafka_passthrough_and_unknown_names() {
        let c = cfg(&[
            ("KSG_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KSG_KAFKA_CLIENT_ID", "x"),
        ])
        .unwrap();
        assert_eq!(c.kafka_properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka_properties["client.id"], "x");
        let e = cfg(&[("KSG_HEARTBEAT", "5"), ("KSG_KAFKA_", "x")]).unwrap_err();
        assert_eq!(problem_vars(e), vec!["KSG_HEARTBEAT", "KSG_KAFKA_"]);
        // One property spelled twice, and the brokers outside KSG_KAFKA_BROKERS: refused.
        let e = cfg(&[
            ("KSG_KAFKA_CLIENT_ID", "x"),
            ("KSG_KAFKA_client_id", "y"),
            ("KSG_KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_vars(e),
            vec!["KSG_KAFKA_BOOTSTRAP_SERVERS", "KSG_KAFKA_client_id"]
        );
    }

    #[test]
    fn tls_rules() {
        assert!(cfg(&[(TLS, "off")]).unwrap().tls.is_none());
        assert_eq!(problem_vars(cfg(&[(TLS, "maybe")]).unwrap_err()), vec![TLS]);
        assert_eq!(
            problem_vars(cfg(&[(TLS_CERT, "c.pem")]).unwrap_err()),
            vec![TLS_KEY]
        );
        let e = cfg(&[(TLS, "off"), (TLS_CERT, "c"), (TLS_KEY, "k")]).unwrap_err();
        assert_eq!(problem_vars(e), vec![TLS]);
    }

    #[test]
    fn bad_topics_routes_and_log_are_reported_together() {
        let e = cfg(&[(TOPICS, "bad topic"), (ROUTES, "/x/{key}"), (LOG, "loud!")]).unwrap_err();
        assert_eq!(problem_vars(e), vec![LOG, TOPICS, ROUTES]);
    }

    #[test]
    fn the_cgroup_memory_limit_is_read_from_v2_then_v1_and_no_limit_is_none() {
        let root = std::env::temp_dir().join(format!("ksg-cgroup-{}", std::process::id()));
        let v1 = root.join("memory");
        std::fs::create_dir_all(&v1).unwrap();
        assert_eq!(memory_limit_under(&root), None, "no file: no limit");
        // cgroup v1: a huge number means no limit.
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(memory_limit_under(&root), None);
        std::fs::write(v1.join("memory.limit_in_bytes"), "536870912\n").unwrap();
        assert_eq!(memory_limit_under(&root), Some(512 << 20));
        // cgroup v2 wins when present.
        std::fs::write(root.join("memory.max"), "max\n").unwrap();
        assert_eq!(memory_limit_under(&root), None);
        std::fs::write(root.join("memory.max"), "1073741824\n").unwrap();
        assert_eq!(memory_limit_under(&root), Some(1 << 30));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_memory_limit_gives_the_streams_it_holds() {
        // The Kubernetes base's 1 GiB limit: 245,760 streams of 4 KiB over 64 MiB.
        assert_eq!(streams_for_memory(1 << 30), 245_760);
        assert_eq!(streams_for_memory(4 << 30), 1_032_192);
        // A limit below the base still lets some streams in.
        assert_eq!(streams_for_memory(32 << 20), 1_000);
        assert_eq!(streams_for_memory(0), 1_000);
    }
}
