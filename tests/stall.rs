//! Flow control. A client that never opens its flow-control window cannot hold streams or
//! memory: each of its streams is reset (`RST_STREAM(CANCEL)`) after `KSG_STREAM_STALL_SECS`
//! with data waiting, its subscription released, and the connection, left with no stream, closes
//! when idle. Other clients of the same topic are not held up. A client with small windows gets
//! every byte, in order, as its window updates come.

mod support;

use std::time::Duration;

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
    let text = metrics(&gw).await;
    assert!(metric(&text, "ksg_connections_closed_total{reason=\"idle\"}") >= 1.0);
    assert_eq!(metric(&text, "ksg_connections_open"), 1.0);
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
