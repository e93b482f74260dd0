//! The accept loop and per-connection serving: connection limit, TLS handshake under a
//! deadline, the protocol from ALPN or the first bytes (HTTP/2: [`h2conn`]; HTTP/1.1: hyper),
//! graceful shutdown (GOAWAY) on the shutdown signal.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::config::Config;
use crate::http::activity::Activity;
use crate::http::deadline::FirstBytes;
use crate::http::h1;
use crate::http::h2conn;
use crate::http::proxy;
use crate::http::service::App;
use crate::http::sniff::sniff;
use crate::metrics::Metrics;
use bytes::Bytes;

/// `h2`'s send buffer per stream, a bound only: bodies do not go through `h2` (`http::wire`).
const H2_SEND_BUFFER: usize = 64 * 1024;
/// Largest request header block the protocol layers accept; the service refuses heads over
/// [`MAX_HEAD_BYTES`](crate::http::service::MAX_HEAD_BYTES) with a reason.
const MAX_HEADER_LIST: usize = crate::http::service::HEAD_HARD_LIMIT;
/// Streams a client may reset before their requests were handled, per connection.
const MAX_PENDING_RESETS: usize = 50;
/// Stream errors the server may reset per connection before it closes it (reset floods).
const MAX_LOCAL_RESETS: usize = 1024;
/// HTTP/2 keep-alive ping interval and the deadline for its acknowledgement.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection closed for idleness may take to say goodbye (HTTP/2: GOAWAY, a PING
/// round trip, the last GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What a connection may speak, from TLS ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// No ALPN (cleartext, or a TLS client that offered none): HTTP/1.1 or HTTP/2 with prior
    /// knowledge, told apart by the preface.
    Detect,
    /// ALPN `h2`: HTTP/2 only; anything else is a bad preface (RFC 9113, 3.3).
    Http2,
    /// ALPN `http/1.1`: HTTP/1.1 only.
    Http1,
}

/// The SSE listener's shared parts.
pub struct Server {
    h1_only: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    metrics: Metrics,
    connections: Arc<Semaphore>,
    max_connections: usize,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
    h2: h2conn::Settings,
    per_ip: PerIp,
    proxy_protocol: bool,
    proxy_from: Vec<proxy::Network>,
}

/// Connections held by each client address, against `KSG_MAX_CONNECTIONS_PER_IP`.
#[derive(Clone)]
struct PerIp {
    limit: Option<usize>,
    held: Arc<parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One connection counted for its address until dropped.
struct Held {
    ip: std::net::IpAddr,
    per_ip: PerIp,
}

/// The client an address stands for: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
/// /64 — one subscriber's network, whose addresses a client can change at will.
fn client_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                std::net::IpAddr::V6(network.into())
            }
        },
        v4 => v4,
    }
}

impl PerIp {
    /// Counts a connection from `ip`, or `None` when the address is at its limit.
    fn admit(&self, ip: std::net::IpAddr) -> Option<Option<Held>> {
        let Some(limit) = self.limit else {
            return Some(None);
        };
        let ip = client_of(ip);
        let mut held = self.held.lock();
        let n = held.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Some(Held {
            ip,
            per_ip: self.clone(),
        }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.per_ip.held.lock();
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

impl Server {
    /// A server for `app` with the limits and HTTP/2 settings of `config`.
    pub fn new(
        config: &Config,
        tls: Option<Arc<rustls::ServerConfig>>,
        app: Arc<App>,
        metrics: Metrics,
    ) -> Server {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.handshake_timeout)
            .max_buf_size(MAX_HEADER_LIST)
            .keep_alive(true);
        Server {
            h1_only: builder.http1_only(),
            tls: tls.map(TlsAcceptor::from),
            app,
            metrics,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            max_connections: config.max_connections,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            per_ip: PerIp {
                limit: config.max_connections_per_ip,
                held: Arc::default(),
            },
            proxy_protocol: config.proxy_protocol,
            proxy_from: config.proxy_from.clone(),
            h2: h2conn::Settings {
                max_streams: config.max_streams_per_connection,
                max_header_list: MAX_HEADER_LIST as u32,
                send_buffer: H2_SEND_BUFFER,
                max_pending_resets: MAX_PENDING_RESETS,
                max_local_resets: MAX_LOCAL_RESETS,
                ping_interval: H2_PING_INTERVAL,
                ping_timeout: H2_PING_TIMEOUT,
                idle_timeout: config.idle_timeout,
                close_grace: CLOSE_GRACE,
                stall: config.stream_stall,
            },
        }
    }

    /// Accepts connections until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = crate::stopped(&mut shutdown) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; never panic.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Behind a PROXY protocol balancer the client's address is known only after the
            // header is read, in the connection's own task.
            let per_ip = if self.proxy_protocol {
                None
            } else {
                match self.admit_ip(peer.ip()) {
                    Some(held) => held,
                    None => continue,
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.metrics
                    .connections_rejected
                    .with_label_values(&["limit"])
                    .inc();
                debug!("connection refused: KSG_MAX_CONNECTIONS reached");
                continue;
            };
            self.metrics.connections_accepted.inc();
            let server = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tcp = tcp;
                let mut per_ip = per_ip;
                if server.proxy_protocol {
                    let trusted = server.proxy_from.is_empty()
                        || server.proxy_from.iter().any(|n| n.contains(peer.ip()));
                    let header = if trusted {
                        proxy::read_header(&mut tcp, server.handshake_timeout).await
                    } else {
                        Err(proxy::ProxyError::Untrusted)
                    };
                    match header {
                        Ok(client) => {
                            let ip = client.map_or(peer.ip(), |a| a.ip());
                            match server.admit_ip(ip) {
                                Some(held) => per_ip = held,
                                None => return,
                            }
                        }
                        Err(e) => {
                            server
                                .metrics
                                .connections_rejected
                                .with_label_values(&["proxy_protocol"])
                                .inc();
                            debug!("connection refused: {e}");
                            return;
                        }
                    }
                }
                server.connection(tcp, permit, shutdown).await;
                drop(per_ip);
            });
        }
    }

    /// Counts a connection from `ip` against `KSG_MAX_CONNECTIONS_PER_IP`; `None` (counted,
    /// logged) when the address is at its limit.
    fn admit_ip(&self, ip: std::net::IpAddr) -> Option<Option<Held>> {
        let held = self.per_ip.admit(ip);
        if held.is_none() {
            self.metrics
                .connections_rejected
                .with_label_values(&["per_ip_limit"])
                .inc();
            debug!("connection refused: KSG_MAX_CONNECTIONS_PER_IP reached");
        }
        held
    }

    /// Waits until every connection has ended, or `grace` has passed. Returns true if all ended.
    pub async fn drained(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.connections.acquire_many(all))
            .await
            .is_ok()
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        _permit: OwnedSemaphorePermit,
        shutdown: watch::Receiver<bool>,
    ) {
        let _ = tcp.set_nodelay(true);
        self.metrics.connections_open.inc();
        match &self.tls {
            None => self.serve(tcp, Protocol::Detect, shutdown).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let protocol = match tls.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Protocol::Http2,
                            Some(b"http/1.1") => Protocol::Http1,
                            _ => Protocol::Detect,
                        };
                        self.serve(tls, protocol, shutdown).await
                    }
                    Ok(Err(e)) => {
                        self.metrics
                            .connections_rejected
                            .with_label_values(&["tls_error"])
                            .inc();
                        debug!("TLS handshake failed: {e}");
                    }
                    Err(_) => {
                        self.metrics
                            .connections_rejected
                            .with_label_values(&["handshake_timeout"])
                            .inc();
                        debug!("TLS handshake timed out");
                    }
                }
            }
        }
        self.metrics.connections_open.dec();
    }

    /// Serves a connection in the protocol ALPN chose, or the one its first bytes show.
    async fn serve<I>(&self, io: I, protocol: Protocol, shutdown: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match protocol {
            Protocol::Http2 => self.serve_h2(io, shutdown).await,
            Protocol::Http1 => self.serve_hyper(io, shutdown).await,
            Protocol::Detect => match sniff(io, self.handshake_timeout).await {
                Ok((io, true)) => self.serve_h2(io, shutdown).await,
                Ok((io, false)) => self.serve_hyper(io, shutdown).await,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        self.metrics
                            .connections_rejected
                            .with_label_values(&["handshake_timeout"])
                            .inc();
                    }
                    debug!("connection closed before its first request: {e}");
                }
            },
        }
    }

    /// HTTP/2, driven with `h2` directly: the preface and SETTINGS exchange under the opening
    /// deadline, then [`h2conn::serve`].
    async fn serve_h2<I>(&self, io: I, shutdown: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (io, plumbing) = h2conn::plumb(io, &self.h2);
        let handshake = self.h2.builder().handshake::<_, Bytes>(io);
        let connection = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                debug!("HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => {
                self.metrics
                    .connections_rejected
                    .with_label_values(&["handshake_timeout"])
                    .inc();
                debug!("HTTP/2 preface not received in time");
                return;
            }
        };
        let app = self.app.clone();
        let ended = h2conn::serve(
            connection,
            plumbing,
            app,
            self.metrics.clone(),
            self.h2,
            shutdown,
        )
        .await;
        let reason = match ended {
            h2conn::Ended::Idle => "idle",
            h2conn::Ended::PingTimeout => "ping_timeout",
            h2conn::Ended::Stalled => "stalled",
            h2conn::Ended::Closed | h2conn::Ended::Shutdown => return,
        };
        self.metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
    }

    /// HTTP/1.1, with hyper.
    async fn serve_hyper<I>(&self, io: I, mut shutdown: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let opens = Arc::new(app.open_rate());
        let activity = Activity::new();
        let requests = activity.clone();
        // Its stream reads the shared logs, as HTTP/2 streams do.
        let fanout = h1::Connection::new();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let app = app.clone();
            let opens = opens.clone();
            let open = requests.open();
            let fanout = fanout.clone();
            let arrived = std::time::Instant::now();
            async move {
                let response = app.handle(request, &opens, &fanout.seat(), arrived).await;
                Ok::<_, Infallible>(response.map(|body| fanout.pump(body, open)))
            }
        });
        let (io, opening_timed_out) = FirstBytes::new(io, self.handshake_timeout);
        let connection = self.h1_only.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut open = activity.watch();
        let result = loop {
            let idle = *open.borrow_and_update() == 0;
            let idle_for = async {
                match self.idle_timeout {
                    Some(limit) if idle => tokio::time::sleep(limit).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = crate::stopped(&mut shutdown) => {
                    connection.as_mut().graceful_shutdown();
                    break connection.as_mut().await;
                }
                changed = open.changed() => {
                    if changed.is_err() {
                        break connection.as_mut().await;
                    }
                }
                _ = idle_for => {
                    self.metrics.connections_closed.with_label_values(&["idle"]).inc();
                    debug!("closing an idle connection");
                    // HTTP/2: GOAWAY, then the close once the client has seen it.
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await {
                        Ok(result) => break result,
                        Err(_) => break Ok(()),
                    }
                }
            }
        };
        if opening_timed_out.load(Ordering::Relaxed) {
            self.metrics
                .connections_rejected
                .with_label_values(&["handshake_timeout"])
                .inc();
        } else if let Err(e) = &result {
            // hyper's HTTP/1.1 request-head deadline: before the first request it is the
            // handshake timeout; between requests of a keep-alive connection, idleness.
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
            {
                let (family, reason) = if activity.served() {
                    (&self.metrics.connections_closed, "idle")
                } else {
                    (&self.metrics.connections_rejected, "handshake_timeout")
                };
                family.with_label_values(&[reason]).inc();
            }
        }
        if let Err(e) = result {
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse_too_large)
            {
                // hyper answered 431 itself: a head over its read buffer.
                self.metrics
                    .streams_refused
                    .with_label_values(&["headers_too_large"])
                    .inc();
            }
            // A client hanging up is not an error worth more than debug.
            debug!("connection ended: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_of;

    #[test]
    fn clients_are_ipv4_addresses_or_ipv6_networks() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(client_of(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(client_of(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(
            client_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_of(ip("2001:db8:1:2::1")),
            client_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_of(ip("2001:db8:1:2::1")),
            client_of(ip("2001:db8:1:3::1"))
        );
    }
}
