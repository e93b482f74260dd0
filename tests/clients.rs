//! Per-client fairness and the admin listener's protection: connections per client address
//! (`KSG_MAX_CONNECTIONS_PER_IP`), the client address from a PROXY protocol header
//! (`KSG_PROXY_PROTOCOL`), and a bearer token for `/metrics` (`KSG_ADMIN_TOKEN`).

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let cluster = Cluster::new();
    let topic = unique_topic("perip");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_MAX_CONNECTIONS_PER_IP", "2")]).await;
    let first = h2_connect(&gw).await;
    let second = h2_connect(&gw).await;
    // The third from 127.0.0.1 is closed at accept: the TLS handshake never completes.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 1];
    use tokio::io::AsyncReadExt;
    let mut tcp = tcp;
    let read = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "closed at once: {read:?}");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "ksg_connections_rejected_total{reason=\"per_ip_limit\"}"
        ),
        1.0
    );
    // Both admitted connections serve streams.
    for h2 in [&first, &second] {
        let (head, mut sse) = get(h2, &format!("/{topic}"), &[]).await;
        assert_eq!(head.status, 200);
        sse.next_block().await.unwrap();
    }
    // One closes: its slot is free again.
    drop(second);
    let mut admitted = false;
    for _ in 0..100 {
        if metric(&metrics(&gw).await, "ksg_connections_open") == 1.0 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "the closed connection was counted out");
    let third = h2_connect(&gw).await;
    let (head, _) = get(&third, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);
    gw.shutdown().await;
}

/// `GET path` on the admin listener with an optional `Authorization` header.
async fn admin(gw: &kafka_sse_gateway::Handle, path: &str, auth: Option<&str>) -> String {
    let mut tcp = tokio::net::TcpStream::connect(gw.admin_addr).await.unwrap();
    let auth = auth.map_or(String::new(), |a| format!("authorization: {a}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n");
    String::from_utf8(http1_exchange(&mut tcp, &request, b"\0never\0").await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_token_when_one_is_set() {
    let cluster = Cluster::new();
    let token = "s3cret-token-0123456789";
    let gw = gateway(&cluster, &[("KSG_ADMIN_TOKEN", token)]).await;
    for auth in [None, Some("Bearer wrong-token-0123456789"), Some(token)] {
        let answer = admin(&gw, "/metrics", auth).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{answer}"
        );
    }
    let answer = admin(&gw, "/metrics", Some(&format!("Bearer {token}"))).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("ksg_admin_unauthorized_total 3"),
        "{answer}"
    );
    // Probes stay open.
    assert!(admin(&gw, "/healthz", None)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(admin(&gw, "/readyz", None)
        .await
        .starts_with("HTTP/1.1 200"));
    gw.shutdown().await;
}

/// Probes and scrapes are answered while the runtime that runs the streams is busy: the admin
/// listener has a thread of its own. Here the runtime's only thread is held, waiting for the
/// answer, so the answer cannot come from it.
#[tokio::test(flavor = "current_thread")]
async fn the_admin_listener_answers_while_the_runtime_is_held() {
    use std::io::{Read, Write};
    let cluster = Cluster::new();
    let gw = gateway(&cluster, &[]).await;
    let addr = gw.admin_addr;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let asked = (|| -> std::io::Result<String> {
            let mut tcp = std::net::TcpStream::connect(addr)?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
            let mut answer = String::new();
            tcp.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        let _ = tx.send(asked);
    });
    let answer = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no answer while the runtime was held")
        .expect("the admin answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    gw.shutdown().await;
}

/// A TCP connection to the gateway that starts with `header`.
async fn behind_proxy(gw: &kafka_sse_gateway::Handle, header: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    tcp
}

/// Whether the gateway closes `tcp` without a word (read gives EOF or a reset).
async fn closed_at_once(mut tcp: tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A ClientHello's first bytes, as a client that sends no PROXY header would.
    let _ = tcp.write_all(b"\x16\x03\x01\x00\x05hello").await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_client_address_comes_from_the_proxy_protocol_header() {
    let cluster = Cluster::new();
    let topic = unique_topic("ppp");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(
        &cluster,
        &[
            ("KSG_PROXY_PROTOCOL", "on"),
            ("KSG_MAX_CONNECTIONS_PER_IP", "1"),
        ],
    )
    .await;
    // v1 for one client, then TLS and HTTP/2 as usual.
    let tcp = behind_proxy(&gw, b"PROXY TCP4 203.0.113.7 10.0.0.1 50000 8443\r\n").await;
    let first = h2_handshake(tls_over(&gw, tcp, b"h2").await).await;
    let (head, mut sse) = get(&first, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);
    sse.next_block().await.unwrap();

    // The same client again (v2 this time) is over its limit, though the TCP peer differs from
    // nothing: every connection comes from 127.0.0.1, the proxy.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1, 0xc3, 0x51, 0x20, 0xfb]);
    assert!(closed_at_once(behind_proxy(&gw, &v2).await).await);

    // Another client through the same proxy is served.
    let tcp = behind_proxy(&gw, b"PROXY TCP4 198.51.100.1 10.0.0.1 50001 8443\r\n").await;
    let second = h2_handshake(tls_over(&gw, tcp, b"h2").await).await;
    let (head, _) = get(&second, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);

    // No header, or a forged-looking one: closed and counted.
    assert!(closed_at_once(tokio::net::TcpStream::connect(gw.addr).await.unwrap()).await);
    assert!(closed_at_once(behind_proxy(&gw, b"PROXY TCP4 nonsense\r\n").await).await);

    let text = metrics(&gw).await;
    let rejected = |r: &str| {
        metric(
            &text,
            &format!("ksg_connections_rejected_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(rejected("per_ip_limit"), 1.0);
    assert_eq!(rejected("proxy_protocol"), 2.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_is_believed_only_from_the_proxies_networks() {
    let cluster = Cluster::new();
    let topic = unique_topic("ppp-from");
    cluster.create_topic(&topic, 1).await;
    let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 50000 8443\r\n";
    // The test connects from 127.0.0.1: outside 10.0.0.0/8, it is not the proxy.
    let gw = gateway(
        &cluster,
        &[
            ("KSG_PROXY_PROTOCOL", "on"),
            ("KSG_PROXY_PROTOCOL_FROM", "10.0.0.0/8"),
        ],
    )
    .await;
    assert!(closed_at_once(behind_proxy(&gw, header).await).await);
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "ksg_connections_rejected_total{reason=\"proxy_protocol\"}"
        ),
        1.0
    );
    gw.shutdown().await;
    // From a listed network, it is.
    let gw = gateway(
        &cluster,
        &[
            ("KSG_PROXY_PROTOCOL", "on"),
            ("KSG_PROXY_PROTOCOL_FROM", "10.0.0.0/8, 127.0.0.1"),
        ],
    )
    .await;
    let tcp = behind_proxy(&gw, header).await;
    let h2 = h2_handshake(tls_over(&gw, tcp, b"h2").await).await;
    let (head, _) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);
    gw.shutdown().await;
}
