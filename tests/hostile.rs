//! Hostile and careless clients: partial prefaces, idle connections, oversized heads, HEAD,
//! protocol confusion after ALPN. Each test names the defect it guards against.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads until the peer closes (EOF or error) within [`WAIT`]; returns what was read.
async fn read_to_close<T: AsyncRead + Unpin>(io: &mut T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "still open after {WAIT:?}; read {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Sends `bytes` and expects the connection to be closed without a response (an HTTP/2
/// server may send its own SETTINGS first, and a GOAWAY, but nothing else).
async fn partial_then_closed<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, bytes: &[u8]) {
    io.write_all(bytes).await.unwrap();
    io.flush().await.unwrap();
    let answer = read_to_close(&mut io).await;
    let mut rest = &answer[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        assert!(
            matches!(rest[3], 4 | 7),
            "only SETTINGS or GOAWAY: {answer:?}"
        );
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(rest.is_empty(), "closed without a response: {answer:?}");
}

// Issue 9, defect 3: one byte of the HTTP/2 preface used to end the first-bytes deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_preface_is_closed_at_the_handshake_timeout_and_counted() {
    let cluster = Cluster::new();
    for (tls, partial) in [
        ("off", &b"P"[..]),
        ("off", b"PRI * HTTP/2.0\r\n"),
        ("on", b"P"),
    ] {
        let gw = gateway(
            &cluster,
            &[("KSG_TLS", tls), ("KSG_HANDSHAKE_TIMEOUT_SECS", "1")],
        )
        .await;
        if tls == "on" {
            partial_then_closed(tls_connect(&gw, b"h2").await, partial).await;
        } else {
            let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            partial_then_closed(tcp, partial).await;
        }
        wait_metric(&gw, "ksg_connections_open", 0.0).await;
        let timeouts = "ksg_connections_rejected_total{reason=\"handshake_timeout\"}";
        wait_metric(&gw, timeouts, 1.0).await;
        gw.shutdown().await;
    }
}

// Issue 9, defect 8 (h2spec 3.5/2): once ALPN chose `h2`, the connection speaks HTTP/2 only;
// an HTTP/1.1 request on it is a bad preface, not a request to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_connections_do_not_serve_http1() {
    let cluster = Cluster::new();
    let topic = unique_topic("alpn");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[]).await;
    let mut tls = tls_connect(&gw, b"h2").await;
    let request = format!("GET /{topic} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut tls).await;
    assert!(
        !answer.starts_with(b"HTTP/1"),
        "an HTTP/1.1 answer on an h2 connection: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // ALPN http/1.1 still serves HTTP/1.1.
    let mut tls = tls_connect(&gw, b"http/1.1").await;
    let answer = http1_exchange(&mut tls, &request, b"\n\n").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    gw.shutdown().await;
}

/// Sends one request with `method` over HTTP/2; returns the status, the content type and the
/// whole body.
async fn h2_request(h2: &H2, method: &str, path: &str) -> (u16, Option<String>, Vec<u8>) {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let mut h2 = h2.clone().ready().await.expect("connection ready");
    let (response, _) = h2.send_request(request, true).expect("request sent");
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("response in time")
        .expect("response, not a reset");
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.data()).await.expect("body") {
        data.extend_from_slice(&chunk.expect("no reset"));
    }
    let content_type = parts
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (parts.status.as_u16(), content_type, data)
}

// Issue 9, defect 7: HEAD over HTTP/2 got the 405's reason as a body, a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_like_get_without_a_body_on_both_protocols() {
    let cluster = Cluster::new();
    let topic = unique_topic("head");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let sse = Some("text/event-stream".to_string());
    assert_eq!(
        h2_request(&h2, "HEAD", &format!("/{topic}")).await,
        (200, sse.clone(), vec![])
    );
    assert_eq!(
        h2_request(&h2, "HEAD", &format!("/{topic}/GOOG")).await,
        (200, sse.clone(), vec![])
    );
    let missing = unique_topic("missing");
    let text = Some("text/plain; charset=utf-8".to_string());
    assert_eq!(
        h2_request(&h2, "HEAD", &format!("/{missing}")).await,
        (404, text.clone(), vec![])
    );
    // Other methods still get their reason.
    assert_eq!(
        h2_request(&h2, "DELETE", &format!("/{topic}")).await,
        (405, text, b"only GET is served\n".to_vec())
    );
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "ksg_streams_opened_total{route=\"/{topic}\"}"),
        0.0
    );

    // HTTP/1.1: the HEAD answer has no body, so the next response follows the head at once.
    let mut tls = tls_connect(&gw, b"http/1.1").await;
    let two = format!(
        "HEAD /{topic} HTTP/1.1\r\nHost: localhost\r\n\r\nHEAD /{missing} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    );
    let answer = http1_exchange(&mut tls, &two, b"HTTP/1.1 404").await;
    let answer = String::from_utf8_lossy(&answer);
    let (first, second) = answer.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        first.contains("content-type: text/event-stream"),
        "{answer}"
    );
    assert!(second.starts_with("HTTP/1.1 404"), "{answer}");
    gw.shutdown().await;
}

// Issue 9, defect 4: an HTTP/2 connection that answered PINGs but opened no stream stayed open
// for ever. It is closed with GOAWAY after KSG_IDLE_TIMEOUT_SECS; one with a stream is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_streams_are_closed_after_the_idle_timeout() {
    use support::h2raw::RawH2;
    let cluster = Cluster::new();
    let topic = unique_topic("idle");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(
        &cluster,
        &[
            ("KSG_TLS", "off"),
            ("KSG_IDLE_TIMEOUT_SECS", "1"),
            ("KSG_HEARTBEAT_SECS", "1"),
            ("KSG_HANDSHAKE_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    // A stream keeps its connection: it sees heartbeats well past the idle timeout.
    let busy = h2_handshake(tokio::net::TcpStream::connect(gw.addr).await.unwrap()).await;
    let (head, mut sse) = get(&busy, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);

    // HTTP/2 without a stream: GOAWAY, then the close.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut raw = RawH2::handshake(tcp).await;
    let kinds = tokio::time::timeout(WAIT, raw.read_until_closed())
        .await
        .expect("closed in time");
    assert!(kinds.contains(&7), "GOAWAY before the close: {kinds:?}");

    // HTTP/1.1 idle between requests.
    let mut h1 = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("HEAD /{topic} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let answer = http1_exchange(&mut h1, &request, b"\r\n\r\n").await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert!(read_to_close(&mut h1).await.is_empty());

    assert!(only_heartbeats_for(&mut sse, Duration::from_millis(2500)).await >= 1);
    // Counted once the gateway's connection tasks have ended, which may be after the clients
    // saw the closes.
    wait_metric(&gw, "ksg_connections_closed_total{reason=\"idle\"}", 2.0).await;
    wait_metric(&gw, "ksg_connections_open", 1.0).await;
    gw.shutdown().await;
}

// Issue 9, defect 6: HTTP/1.1 accepted heads of ~420 KB while HTTP/2 refused 16 KiB with a bare
// 431. Both refuse a head over 16 KiB with a 431 and a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_16_kib_get_431_with_a_reason_on_both_protocols() {
    let cluster = Cluster::new();
    let topic = unique_topic("heads");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_TLS", "off")]).await;
    let big = "a".repeat(20_000);
    let reason = "request header fields over 16 KiB\n";

    let h2 = h2_handshake(tokio::net::TcpStream::connect(gw.addr).await.unwrap()).await;
    let (head, mut body) = get(&h2, &format!("/{topic}"), &[("x-big", &big)]).await;
    assert_eq!(head.status, 431);
    assert_eq!(body_text(&mut body).await, reason);
    // Just under the limit is served.
    let fits = "a".repeat(15_000);
    let (head, _sse) = get(&h2, &format!("/{topic}"), &[("x-fits", &fits)]).await;
    assert_eq!(head.status, 200);

    let mut h1 = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("GET /{topic} HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    let answer = http1_exchange(&mut h1, &request, reason.as_bytes()).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.ends_with(reason), "{answer}");

    // Far over: hyper's own bare 431 (or a reset while the client still writes), counted.
    let mut h1 = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let huge = "a".repeat(100_000);
    let request = format!("GET /{topic} HTTP/1.1\r\nHost: localhost\r\nX-Huge: {huge}\r\n\r\n");
    let _ = h1.write_all(request.as_bytes()).await;
    let answer = read_to_close(&mut h1).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    wait_metric(
        &gw,
        "ksg_streams_refused_total{reason=\"headers_too_large\"}",
        3.0,
    )
    .await;
    gw.shutdown().await;
}
