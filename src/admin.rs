//! The admin listener (plain HTTP/1.1): `/metrics`, `/healthz` (alive), `/readyz` (Kafka reached).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::http::body::ResponseBody;
use crate::metrics::Metrics;

/// State the admin endpoints report.
pub struct Admin {
    /// The gateway's metrics.
    pub metrics: Metrics,
    /// Latched true once Kafka answered a metadata request.
    pub ready: Arc<AtomicBool>,
    /// True from SIGTERM on: `/readyz` answers 503 while streams go on (drain).
    pub draining: Arc<AtomicBool>,
    /// Bearer token `/metrics` requires (`KSG_ADMIN_TOKEN`); probes stay open.
    pub token: Option<String>,
}

/// True when `header` is `Bearer <token>`, compared in constant time.
fn bearer_matches(header: Option<&HeaderValue>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    let want = token.as_bytes();
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

impl Admin {
    fn answer<B>(&self, request: &Request<B>) -> Response<ResponseBody> {
        let (status, content_type, body) = match request.uri().path() {
            "/metrics"
                if self.token.as_deref().is_some_and(|token| {
                    !bearer_matches(request.headers().get(AUTHORIZATION), token)
                }) =>
            {
                self.metrics.admin_unauthorized.inc();
                let mut response = Response::new(ResponseBody::full(Bytes::from_static(
                    b"/metrics needs Authorization: Bearer <KSG_ADMIN_TOKEN>\n",
                )));
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"metrics\""),
                );
                return response;
            }
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            "/readyz" if self.draining.load(Ordering::Acquire) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "draining: shutting down\n".into(),
            ),
            "/readyz" if self.ready.load(Ordering::Acquire) => {
                (StatusCode::OK, "text/plain", "ready\n".into())
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "Kafka not reached yet\n".into(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "try /metrics, /healthz or /readyz\n".into(),
            ),
        };
        let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    /// Serves until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        warn!("admin accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::stopped(&mut shutdown) => return,
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = admin.answer(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await
                {
                    debug!("admin connection ended: {e}");
                }
            });
        }
    }
}
