//! kafka-sse-gateway: Apache Kafka topics served as Server-Sent Events over HTTP/2.
//!
//! `GET /{topic}` streams every record of a topic, `GET /{topic}/{key}` the records with one key;
//! every event's id is a resume token. [`start()`] runs a whole gateway in-process on the
//! configured addresses (port 0 works) and returns a [`Handle`] with the real addresses.
//!
//! # Layout
//! - [`config`]: `KSG_*` environment variables, parsed and validated once.
//! - [`tls`]: rustls server configuration, PEM files or a self-signed certificate.
//! - [`http`]: HTTP/2 (the `h2` crate, driven per connection) and HTTP/1.1 (hyper), request
//!   handling, CORS, limits.
//! - [`auth`]: JWT authorization: tokens, path patterns, expiry of streams.
//! - [`routes`]: path templates to topic and key filter.
//! - [`sse`]: the SSE wire format, pure.
//! - [`position`]: the resume-token codec, pure.
//! - [`partitioner`]: key partitioners an operator may promise (murmur2, crc32), pure.
//! - [`mod@start`]: where a stream starts: `Last-Event-ID`, `lastEventId`, `from=`.
//! - [`hub`]: topic registry, key filters, encode-once fan-out to bounded queues.
//! - [`stream`]: one SSE response body with heartbeats.
//! - [`source`]: the one Kafka consumer and the task that reads it, and the catch-up readers.
//! - [`embedded`]: the in-process mock Kafka cluster.
//! - [`demo`]: demo ticker and starter page.
//! - [`metrics`]: the Prometheus registry.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod embedded;
pub mod filter;
pub mod http;
pub mod hub;
pub mod keyset;
pub mod metrics;
pub mod partitioner;
pub mod position;
pub mod routes;
pub mod source;
pub mod sse;
pub mod start;
pub mod stream;
pub mod tls;
pub mod wake;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::config::Config;
use crate::demo::Demo;
use crate::http::server::Server;
use crate::http::service::App;
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;
use crate::source::Source;
use crate::stream::StreamSettings;

/// Why the gateway could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The JWT keys could not be loaded.
    #[error("KSG_AUTH_JWT_KEYS: {0}")]
    Auth(#[from] auth::LoadError),
    /// The Kafka client could not be created (bad `KSG_KAFKA_*` property, for example).
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The embedded demo cluster failed.
    #[error("demo cluster: {0}")]
    Demo(String),
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// A running gateway. [`Handle::shutdown`] stops it gracefully; dropping it without calling
/// `shutdown` stops the Kafka reader and the demo but leaves tasks to the runtime.
pub struct Handle {
    /// Address of the SSE listener.
    pub addr: SocketAddr,
    /// Address of the admin listener.
    pub admin_addr: SocketAddr,
    /// DER of the TLS certificate served, when TLS is on.
    pub cert_der: Option<Vec<u8>>,
    /// The gateway's metrics.
    pub metrics: Metrics,
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    drain_delay: Duration,
    shutdown: watch::Sender<bool>,
    server: Arc<Server>,
    hub: Arc<Hub>,
    grace: Duration,
    /// The task reading the live consumer ([`Source::read_live`]).
    live: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    demo: Option<Demo>,
}

/// Starts a gateway: binds both listeners, starts the Kafka consumer and serves.
pub async fn start(mut config: Config) -> Result<Handle, StartError> {
    let metrics = Metrics::new(&config.routes.labels());
    let tls = config.tls.as_ref().map(tls::load).transpose()?;
    if let Some(tls) = &tls {
        if tls.self_signed {
            warn!("TLS: no KSG_TLS_CERT/KSG_TLS_KEY given, serving a self-signed certificate for localhost");
        }
    }
    let auth = authorizer(&config)?;
    max_streams_for_memory(&mut config);
    metrics.streams_max.set(config.max_streams as i64);
    let (demo, brokers) = kafka_cluster(&config).await?;
    let source = Arc::new(Source::new(
        &brokers,
        &config.kafka_properties,
        metrics.clone(),
    )?);
    let hub = Arc::new(Hub::new(
        source.clone(),
        metrics.clone(),
        hub_config(&config),
    ));
    let (listener, addr) = bind(config.listen).await?;
    let (admin_listener, admin_addr) = bind(config.admin_listen).await?;

    let live = tokio::spawn(source.clone().read_live(hub.clone()));

    let (shutdown, signal) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let starter_page = demo
        .as_ref()
        .map(|_| Bytes::from_static(demo::STARTER_PAGE.as_bytes()));
    let app = Arc::new(app(
        &config,
        hub.clone(),
        &metrics,
        ready.clone(),
        starter_page,
        auth.clone(),
    ));
    let server = Arc::new(Server::new(
        &config,
        tls.as_ref().map(|t| t.config.clone()),
        app,
        metrics.clone(),
    ));
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        ready: ready.clone(),
        draining: draining.clone(),
        token: config.admin_token.clone(),
    });
    let mut tasks = vec![
        tokio::spawn(server.clone().run(listener, signal.clone())),
        admin_thread(admin, admin_listener, admin_addr, signal.clone())?,
        tokio::spawn(watch_readiness(
            source,
            ready.clone(),
            draining.clone(),
            metrics.clone(),
        )),
        tokio::spawn(refresh_topics(
            hub.clone(),
            config.metadata_refresh,
            signal.clone(),
        )),
        tokio::spawn(release_idle_topics(
            hub.clone(),
            config.topic_idle,
            signal.clone(),
        )),
    ];
    if let Some(auth) = auth {
        let every = auth::KEYS_CHECK_EVERY;
        tasks.push(tokio::spawn(auth.watch_keys(
            every,
            metrics.clone(),
            signal,
        )));
    }
    if demo.is_some() {
        // The embedded cluster answers within milliseconds: be ready before the first visitor.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !ready.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(%addr, %admin_addr, "serving SSE on {scheme}://{addr}, admin on http://{admin_addr}");
    Ok(Handle {
        addr,
        admin_addr,
        cert_der: tls.map(|t| t.cert_der),
        metrics,
        ready,
        draining,
        drain_delay: config.drain_delay,
        shutdown,
        server,
        hub,
        grace: config.shutdown_grace,
        live,
        tasks,
        demo,
    })
}

/// The JWT authorizer, when `KSG_AUTH=jwt`; `KSG_AUTH=none` outside the demo is logged.
fn authorizer(config: &Config) -> Result<Option<Arc<auth::Authorizer>>, StartError> {
    match &config.auth {
        Some(settings) => {
            let auth = Arc::new(auth::Authorizer::new(settings.clone())?);
            info!(keys = auth.key_count(), "streams need a JWT (KSG_AUTH=jwt)");
            Ok(Some(auth))
        }
        None if config.is_demo() => Ok(None),
        None => {
            warn!(
                "KSG_AUTH=none: every client that reaches the gateway may read every served topic"
            );
            Ok(None)
        }
    }
}

/// The brokers to read: `KSG_KAFKA_BROKERS`, or the embedded demo cluster started here.
async fn kafka_cluster(config: &Config) -> Result<(Option<Demo>, String), StartError> {
    match &config.kafka_brokers {
        Some(brokers) => Ok((None, brokers.clone())),
        None => {
            let ticks = config.demo_ticks_per_sec;
            let demo = tokio::task::spawn_blocking(move || Demo::start(ticks))
                .await
                .map_err(|e| StartError::Demo(e.to_string()))?
                .map_err(StartError::Demo)?;
            let brokers = demo.bootstrap_servers().to_string();
            Ok((Some(demo), brokers))
        }
    }
}

/// What every request needs, built from the configuration and the parts [`start`] made: the
/// hub, the metrics, the readiness latch (streams get `503` until Kafka answered), the starter
/// page served at `/` (demo mode) and the JWT authorizer.
pub fn app(
    config: &Config,
    hub: Arc<Hub>,
    metrics: &Metrics,
    ready: Arc<AtomicBool>,
    starter_page: Option<Bytes>,
    auth: Option<Arc<auth::Authorizer>>,
) -> App {
    App {
        hub,
        routes: config.routes.clone(),
        metrics: metrics.clone(),
        cors: config.cors.clone(),
        streams: StreamSettings {
            retry_ms: config.retry_ms,
            max_lifetime: config.stream_max_lifetime,
            expiry_notice: config
                .auth
                .as_ref()
                .map_or(Duration::ZERO, |a| a.expiry_notice),
        },
        clock: stream::clock::StreamClock::start(config.heartbeat),
        snapshot_topics: config.snapshot_topics.clone(),
        ready,
        starter_page,
        auth,
        slots: http::limits::StreamSlots::new(config.max_streams),
        opens_per_sec: config.max_stream_opens_per_sec,
        opens_burst: config.max_streams_per_connection,
        max_keys: config.max_keys_per_stream,
        max_filters: config.max_filters_per_stream,
        max_topics: config.max_topics_per_stream,
        snapshot_bytes: config.snapshot_bytes,
    }
}

/// With no `KSG_MAX_STREAMS` given and a cgroup memory limit (a container's), the default is
/// lowered to what the limit holds, so that streams are refused with `429` before the kernel
/// kills the process. Says what it chose.
fn max_streams_for_memory(config: &mut Config) {
    if config.max_streams_given {
        return;
    }
    let Some(limit) = config::cgroup_memory_limit() else {
        info!(
            max_streams = config.max_streams,
            "KSG_MAX_STREAMS not set and no cgroup memory limit: the default"
        );
        return;
    };
    let fits = config::streams_for_memory(limit);
    if fits < config.max_streams {
        config.max_streams = fits;
    }
    info!(
        max_streams = config.max_streams,
        memory_limit = limit,
        "KSG_MAX_STREAMS not set: {} from the cgroup memory limit ({} KiB per stream over a {} MiB base), or the default if lower",
        config.max_streams,
        config::MEMORY_PER_STREAM >> 10,
        config::BASE_MEMORY >> 20
    );
}

/// The hub's settings from the configuration.
pub fn hub_config(config: &Config) -> HubConfig {
    HubConfig {
        queue: config.stream_queue,
        queue_bytes: config.stream_queue_bytes,
        replay_bytes: config.replay_bytes,
        catchup_readers: config.catchup_readers,
        catchup_reader_idle: config.catchup_reader_idle,
        snapshot_bytes: config.snapshot_bytes,
        max_event_bytes: config.max_event_bytes,
        key_partitioner: config.key_partitioner,
    }
}

/// A listener on `addr`, and the address it got (port 0: one the system chose).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Bind(addr, e))?;
    Ok((listener, bound))
}

/// Serves the admin listener on a thread of its own, with a runtime of its own: probes and
/// scrapes are answered while the runtime's workers are busy (a fan-out to a million streams
/// keeps the one worker for a while), so a liveness probe's timeout does not see a busy gateway
/// as a dead one. The task returned ends when the thread does (at the shutdown signal).
fn admin_thread(
    admin: Arc<Admin>,
    listener: TcpListener,
    addr: SocketAddr,
    signal: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let listener = listener.into_std().map_err(|e| StartError::Bind(addr, e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ksg-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => admin.run(listener, signal).await,
                    Err(e) => warn!("admin listener lost: {e}"),
                }
            });
            let _ = done.send(());
        })
        .map_err(StartError::Thread)?;
    Ok(tokio::spawn(async move {
        let _ = ended.await;
    }))
}

/// Resolves once the shutdown signal is true (or its sender is gone).
pub(crate) async fn stopped(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}

/// Latches readiness once Kafka answers a metadata request.
async fn watch_readiness(
    source: Arc<Source>,
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    metrics: Metrics,
) {
    loop {
        let probe = source.clone();
        if let Ok(true) =
            tokio::task::spawn_blocking(move || probe.reachable(Duration::from_secs(2))).await
        {
            ready.store(true, Ordering::Release);
            if !draining.load(Ordering::Acquire) {
                metrics.ready.set(1);
            }
            info!("Kafka reached: ready");
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Periodically picks up new partitions and deleted topics.
async fn refresh_topics(hub: Arc<Hub>, period: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => hub.refresh_topics().await,
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Periodically releases topics that have had no stream for `idle`.
async fn release_idle_topics(hub: Arc<Hub>, idle: Duration, mut shutdown: watch::Receiver<bool>) {
    let period = idle.clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => hub.release_idle(idle).await,
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

impl Handle {
    /// True once Kafka has answered (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Stops accepting, sends GOAWAY, ends every stream and waits for connections to close,
    /// at most the grace period. Returns true when every connection ended in time.
    /// Drains, then shuts down (what SIGTERM does): `/readyz` answers 503 (and `ksg_ready` is
    /// 0) while streams go on for `KSG_DRAIN_DELAY_SECS`, so load balancers stop routing here;
    /// then [`Handle::shutdown`].
    pub async fn drain_and_shutdown(self) -> bool {
        self.draining.store(true, Ordering::Release);
        self.metrics.ready.set(0);
        info!(
            delay = ?self.drain_delay,
            "draining: /readyz answers 503, streams go on until the drain delay is over"
        );
        tokio::time::sleep(self.drain_delay).await;
        self.shutdown().await
    }

    /// Stops at once: no new connections, GOAWAY, every stream ends after its queued events,
    /// connections get `KSG_SHUTDOWN_GRACE_SECS` to close. True when all closed in time.
    pub async fn shutdown(mut self) -> bool {
        info!("shutting down: no new connections, ending streams");
        self.stop();
        let drained = self.server.drained(self.grace).await;
        if !drained {
            warn!("grace period over with connections still open; closing them");
        }
        // The same steps as a drop, waited for.
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        let _ = (&mut self.live).await;
        // The Kafka clients (consumer, catch-up readers) close before the embedded cluster
        // goes away, so they never log errors about a cluster that vanished under them.
        let demo = self.demo.take();
        drop(self);
        if let Some(demo) = demo {
            let _ = tokio::task::spawn_blocking(move || drop(demo)).await;
        }
        drained
    }

    /// What both a shutdown and a drop do first: the listeners and connections are told to
    /// stop, every stream ends, and the Kafka reader stops.
    fn stop(&self) {
        let _ = self.shutdown.send(true);
        self.hub.close();
        self.live.abort();
    }
}

impl Drop for Handle {
    /// Stops without waiting: the steps of [`Handle::shutdown`], with its tasks aborted (a
    /// shutdown has taken them already).
    fn drop(&mut self) {
        self.stop();
        for task in &self.tasks {
            task.abort();
        }
    }
}
