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
    loop {
        match tokio::time::timeout(WAIT, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "still open after {WAIT:?}; read {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Sends `bytes` and expects the connection to be closed without an answer.
async fn partial_then_closed<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, bytes: &[u8]) {
    io.write_all(bytes).await.unwrap();
    io.flush().await.unwrap();
    let answer = read_to_close(&mut io).await;
    assert!(
        answer.is_empty(),
        "closed without an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
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
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = metrics(&gw).await;
        assert_eq!(metric(&text, "ksg_connections_open"), 0.0, "TLS {tls}");
        let timeouts = metric(
            &text,
            "ksg_connections_rejected_total{reason=\"handshake_timeout\"}",
        );
        assert_eq!(timeouts, 1.0, "TLS {tls}, {partial:?}");
        gw.shutdown().await;
    }
}
