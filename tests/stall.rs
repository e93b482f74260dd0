//! Flow control. A client that never opens its flow-control window cannot hold streams or
//! memory: each of its streams is reset (`RST_STREAM(CANCEL)`) after `KSG_STREAM_STALL_SECS`
//! with data waiting, its subscription released, and the connection, left with no stream, closes
//! when idle. Other clients of the same topic are not held up. A client with small windows gets
//! every byte, in order, as its window updates come.

mod support;

use std::time::Duration;

use support::h2raw::{self, RawH2};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_a_client_with_a_zero_window_are_reset_and_released() {
    let cluster = Cluster::new();
    let topic = unique_topic("stall");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(
        &cluster,
        &[
            ("KSG_STREAM_STALL_SECS", "1"),
            ("KSG_IDLE_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    // SETTINGS_INITIAL_WINDOW_SIZE=0: not one byte of DATA may be sent on its streams.
    let tls = tls_connect(&gw, b"h2").await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .expect("h2 handshake");
    let stalled_connection = tokio::spawn(connection);
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let request = http::Request::get(format!("https://localhost/{topic}"))
            .body(())
            .unwrap();
        let mut sender = client.clone().ready().await.unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        stalled.push(response.into_body());
    }
    // A healthy client on the same topic.
    let h2 = h2_connect(&gw).await;
    let (_, mut healthy) = get(&h2, &format!("/{topic}"), &[]).await;
    healthy.next_block().await.unwrap();
    let p = cluster.producer();
    for n in 0..100 {
        p.send(&topic, None, None, Some(format!("v{n}").as_bytes()));
    }
    p.flush().await;
    let texts: Vec<String> = healthy.events(100).await.iter().map(Block::text).collect();
    assert_eq!(texts, (0..100).map(|n| format!("v{n}")).collect::<Vec<_>>());

    // Every stalled stream is reset with CANCEL, having received nothing.
    for mut body in stalled {
        match tokio::time::timeout(WAIT, body.data())
            .await
            .expect("reset in time")
        {
            Some(Err(e)) => assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e}"),
            other => panic!("expected a reset, got {other:?}"),
        }
    }
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "ksg_stalled_stream_resets_total"), 50.0);
    // Their subscriptions are gone: only the healthy stream is open.
    assert_eq!(
        metric(&text, "ksg_streams_open{route=\"/{topic}\"}"),
        1.0,
        "{text}"
    );
    // The stalled connection, with no stream left, is closed as idle (GOAWAY).
    let closed = tokio::time::timeout(Duration::from_secs(10), stalled_connection)
        .await
        .expect("the stalled connection closes");
    assert!(closed.is_ok());
    // The client may see the close before the gateway's connection task has counted it.
    wait_metric(&gw, "ksg_connections_closed_total{reason=\"idle\"}", 1.0).await;
    wait_metric(&gw, "ksg_connections_open", 1.0).await;
    // The healthy stream goes on.
    p.produce(&topic, None, Some("after")).await;
    assert_eq!(healthy.next_event().await.unwrap().text(), "after");
    gw.shutdown().await;
}

/// Windows far smaller than the events (1,000 bytes per stream; the connection's 64 KiB
/// default shared by two streams that get about 130 KiB each): the gateway splits events at the
/// window and goes on as the client's WINDOW_UPDATE frames come, for each stream and for the
/// connection, and every event arrives whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_windows_get_every_event_whole_and_in_order() {
    let cluster = Cluster::new();
    let topic = unique_topic("window");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[]).await;
    let tls = tls_connect(&gw, b"h2").await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1000)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let (_, mut a) = get(&client, &format!("/{topic}"), &[]).await;
    let (_, mut b) = get(&client, &format!("/{topic}"), &[]).await;
    a.next_block().await.unwrap();
    b.next_block().await.unwrap();
    let value = |n: usize| format!("{n:04}-{}", "x".repeat(300));
    let p = cluster.producer();
    for n in 0..400 {
        p.send(&topic, None, None, Some(value(n).as_bytes()));
    }
    p.flush().await;
    for reader in [&mut a, &mut b] {
        let texts: Vec<String> = reader.events(400).await.iter().map(Block::text).collect();
        assert_eq!(texts, (0..400).map(value).collect::<Vec<_>>());
    }
}

/// A client whose connection window is far smaller than what its streams are offered: 24
/// streams with 1 MiB windows each, on a connection the client grants 2,000 bytes every 50 ms
/// (40 KB/s, against about 65 KB/s offered). The streams share the connection's window: every
/// one of them gets data in every second, none is reset as stalled, and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_share_a_scarce_connection_window_and_none_is_reset() {
    const STREAMS: u32 = 24;
    let (cluster, topic, gw, mut raw) = scarce_connection_window("share", "2", STREAMS).await;
    // 20 records a second of about 100 bytes: 24 × 20 events of about 140 bytes a second.
    let p = cluster.producer();
    let producing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for n in 0..200u32 {
            tick.tick().await;
            p.send(&topic, None, None, Some(hundred_bytes(n).as_bytes()));
        }
        p.flush().await;
    });
    // 8 seconds of 50-ms grants; the bytes each stream got in each second.
    let mut per_second: Vec<Vec<usize>> = Vec::new();
    let mut grant = tokio::time::interval(Duration::from_millis(50));
    let started = tokio::time::Instant::now();
    let mut last: Vec<usize> = vec![0; STREAMS as usize];
    for tick in 1..=160u32 {
        grant.tick().await;
        let increment = 2000u32.to_be_bytes();
        raw.send_frame(h2raw::WINDOW_UPDATE, 0, 0, &increment).await;
        // Read what came until the next grant is due.
        let next = started + Duration::from_millis(50 * u64::from(tick));
        while let Ok(Some(frame)) = tokio::time::timeout_at(next, raw.try_read_frame()).await {
            if frame.kind == h2raw::PING && frame.flags & h2raw::FLAG_ACK == 0 {
                raw.send_frame(h2raw::PING, h2raw::FLAG_ACK, 0, &frame.payload)
                    .await;
            }
            assert_ne!(frame.kind, h2raw::GOAWAY, "the connection was closed");
        }
        if tick % 20 == 0 {
            let now: Vec<usize> = (0..STREAMS)
                .map(|n| raw.streams.get(&(1 + 2 * n)).map_or(0, |s| s.data.len()))
                .collect();
            per_second.push(now.iter().zip(&last).map(|(a, b)| a - b).collect());
            last = now;
        }
    }
    producing.await.unwrap();
    for (n, seen) in &raw.streams {
        assert_eq!(seen.reset, None, "stream {n} was reset");
    }
    // After the first second (the initial 64 KiB window), every stream progresses in every
    // second, and the shares are even.
    for (second, got) in per_second.iter().enumerate().skip(1) {
        let (min, max) = (got.iter().min().unwrap(), got.iter().max().unwrap());
        assert!(*min > 0, "second {second}: a stream got nothing: {got:?}");
        assert!(min * 3 >= *max, "second {second}: uneven shares: {got:?}");
    }
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "ksg_stalled_stream_resets_total"), 0.0);
    assert_eq!(
        metric(&text, "ksg_connections_closed_total{reason=\"stalled\"}"),
        0.0
    );
    gw.shutdown().await;
}

/// A client that keeps its connection window at zero while its streams have window of their
/// own: the connection as a whole is closed after the stall time (GOAWAY), not its streams one
/// by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_window_kept_at_zero_closes_the_connection_once() {
    let (cluster, topic, gw, mut raw) = scarce_connection_window("starve", "1", 4).await;
    // 100 KB of events: more than the connection's 65,535 bytes.
    let p = cluster.producer();
    for n in 0..1000 {
        p.send(&topic, None, None, Some(hundred_bytes(n).as_bytes()));
    }
    p.flush().await;
    let kinds = tokio::time::timeout(Duration::from_secs(20), raw.read_until_closed())
        .await
        .expect("the connection closes");
    assert!(kinds.contains(&h2raw::GOAWAY), "{kinds:?}");
    assert!(
        !kinds.contains(&h2raw::RST_STREAM),
        "no stream reset one by one: {kinds:?}"
    );
    wait_metric(&gw, "ksg_connections_closed_total{reason=\"stalled\"}", 1.0).await;
    assert_eq!(
        metric(&metrics(&gw).await, "ksg_stalled_stream_resets_total"),
        0.0
    );
    gw.shutdown().await;
}

/// A gateway with `KSG_STREAM_STALL_SECS=stall` and a raw client of `streams` streams of a new
/// topic, each with a 1 MiB window, on a connection whose window stays at 65,535 bytes.
async fn scarce_connection_window(
    prefix: &str,
    stall: &str,
    streams: u32,
) -> (
    Cluster,
    String,
    kafka_sse_gateway::Handle,
    RawH2<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
) {
    let cluster = Cluster::new();
    let topic = unique_topic(prefix);
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_STREAM_STALL_SECS", stall)]).await;
    let tls = tls_connect(&gw, b"h2").await;
    let mut raw = RawH2::handshake_with(tls, 1 << 20, 0).await;
    for n in 0..streams {
        raw.get(1 + 2 * n, &format!("/{topic}")).await;
    }
    (cluster, topic, gw, raw)
}

/// A record value of 100 bytes that names its number.
fn hundred_bytes(n: u32) -> String {
    format!("{n:05}-{}", "x".repeat(94))
}
