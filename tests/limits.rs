//! Limits seen on the wire: HTTP/2 concurrent streams per connection, the connection limit.

mod support;

use support::h2raw::RawH2;
use support::*;

const REFUSED_STREAM: u32 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_257_on_one_connection_is_refused_and_256_receive_events() {
    let cluster = Cluster::new();
    let topic = unique_topic("streams");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(&cluster, &[]).await;
    let mut raw = RawH2::handshake(tls_connect(&gw, b"h2").await).await;
    assert_eq!(
        raw.max_concurrent_streams,
        Some(256),
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );

    let ids: Vec<u32> = (0..257).map(|i| 1 + 2 * i).collect();
    for &id in &ids {
        raw.get(id, &format!("/{topic}")).await;
    }
    let last = *ids.last().unwrap();
    // Read until the 257th is refused and the first 256 have their preamble.
    let preambles_in = |raw: &RawH2<_>| {
        ids[..256]
            .iter()
            .filter(|id| {
                raw.streams
                    .get(id)
                    .is_some_and(|s| s.ok && s.data.ends_with(b"\n\n"))
            })
            .count()
    };
    tokio::time::timeout(WAIT, async {
        while raw.streams.get(&last).and_then(|s| s.reset).is_none() || preambles_in(&raw) < 256 {
            raw.read_frame().await;
        }
    })
    .await
    .expect("all 256 opened and the 257th answered in time");
    assert_eq!(raw.streams[&last].reset, Some(REFUSED_STREAM));
    assert!(!raw.streams[&last].ok, "the refused stream got no response");

    // One record reaches every one of the 256 streams.
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("to all 256"))
        .await;
    let with_event = |raw: &RawH2<_>| {
        ids[..256]
            .iter()
            .filter(|id| {
                raw.streams[id]
                    .data
                    .windows(17)
                    .any(|w| w == b"data: to all 256\n")
            })
            .count()
    };
    tokio::time::timeout(WAIT, async {
        while with_event(&raw) < 256 {
            raw.read_frame().await;
        }
    })
    .await
    .expect("every stream received the event in time");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "ksg_streams_opened_total{route=\"/{topic}\"}"),
        256.0
    );
    assert_eq!(metric(&text, "ksg_streams_open{route=\"/{topic}\"}"), 256.0);
    let by_topic = format!("ksg_topic_streams_open{{topic=\"{topic}\"}}");
    assert_eq!(metric(&text, &by_topic), 256.0);
    // Closed streams leave it.
    drop(raw);
    wait_metric(&gw, &by_topic, 0.0).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_and_counted() {
    let cluster = Cluster::new();
    let topic = unique_topic("conns");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(
        &cluster,
        &[("KSG_MAX_CONNECTIONS", "2"), ("KSG_TLS", "off")],
    )
    .await;
    let first = h2_handshake(tokio::net::TcpStream::connect(gw.addr).await.unwrap()).await;
    let second = h2_handshake(tokio::net::TcpStream::connect(gw.addr).await.unwrap()).await;
    let (a, _sa) = get(&first, &format!("/{topic}"), &[]).await;
    let (b, _sb) = get(&second, &format!("/{topic}"), &[]).await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));

    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let answer = http1_exchange(
        &mut third,
        &format!("GET /{topic} HTTP/1.1\r\nHost: x\r\n\r\n"),
        b"\n\n",
    )
    .await;
    assert!(
        answer.is_empty(),
        "the third connection is closed without a response"
    );
    wait_metric(&gw, "ksg_connections_rejected_total{reason=\"limit\"}", 1.0).await;
    wait_metric(&gw, "ksg_connections_open", 2.0).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_is_closed_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let cluster = Cluster::new();
    for tls in ["on", "off"] {
        let gw = gateway(
            &cluster,
            &[("KSG_TLS", tls), ("KSG_HANDSHAKE_TIMEOUT_SECS", "1")],
        )
        .await;
        let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(WAIT, silent.read(&mut byte))
            .await
            .expect("closed in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "TLS {tls}: closed, not answered: {read:?}"
        );
        wait_metric(&gw, "ksg_connections_open", 0.0).await;
        let timeouts = "ksg_connections_rejected_total{reason=\"handshake_timeout\"}";
        wait_metric(&gw, timeouts, 1.0).await;
        gw.shutdown().await;
    }
}
