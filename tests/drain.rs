//! A rolling update as clients see it: SIGTERM's drain turns `/readyz` to 503 while streams go
//! on, then every stream ends and its client resumes on another replica with `Last-Event-ID`,
//! losing nothing. Runs on the mock cluster and on the real broker.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_then_resume_on_another_replica_loses_nothing() {
    let cluster = Cluster::new();
    let topic = unique_topic("drain");
    cluster.create_topic(&topic, 3).await;
    let leaving = gateway(&cluster, &[("KSG_DRAIN_DELAY_SECS", "2")]).await;
    let staying = gateway(&cluster, &[]).await;
    assert_eq!(admin_get(&leaving, "/readyz").await.0, 200);
    assert_eq!(metric(&metrics(&leaving).await, "ksg_ready"), 1.0);
    let to_leaving = h2_connect(&leaving).await;
    let (_, mut sse) = get(&to_leaving, &format!("/{topic}"), &[]).await;
    sse.next_block().await.unwrap();
    // A key stream too: its key's last record is not the topic's.
    let (_, mut key0) = get(&to_leaving, &format!("/{topic}/key0"), &[]).await;
    key0.next_block().await.unwrap();
    // And a stream of several keys.
    let two_keys = format!("/{topic}?key=key1&key=key3");
    let (_, mut keys) = get(&to_leaving, &two_keys, &[]).await;
    keys.next_block().await.unwrap();
    let p = cluster.producer();
    produce_keyed(&p, &topic, 4, 0..5);
    p.flush().await;
    let mut seen = Continuity::default();
    for event in sse.events(20).await {
        seen.check(&event);
    }
    let admin = leaving.admin_addr;
    let metrics_before = metrics(&leaving).await;
    assert!(metric(&metrics_before, "ksg_build_info{version=\"0.1.0\"}") == 1.0);
    let stopping = tokio::spawn(leaving.drain_and_shutdown());
    // Draining: not ready, but the stream goes on.
    let mut not_ready = false;
    for _ in 0..50 {
        let (status, body) = admin_status(admin).await;
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(not_ready, "/readyz turns 503 at once");
    produce_keyed(&p, &topic, 4, 5..10);
    p.flush().await;
    for event in sse.events(20).await {
        seen.check(&event);
    }
    // Then the stream ends; records produced meanwhile are not lost.
    produce_keyed(&p, &topic, 4, 10..15);
    p.flush().await;
    while let Some(block) = sse.next_block().await {
        if !block.data.is_empty() {
            seen.check(&block);
        }
    }
    let mut seen_key0 = Continuity::default();
    while let Some(block) = key0.next_block().await {
        if !block.data.is_empty() {
            seen_key0.check(&block);
        }
    }
    let mut seen_keys = Continuity::default();
    while let Some(block) = keys.next_block().await {
        if !block.data.is_empty() {
            seen_keys.check(&block);
        }
    }
    assert!(stopping.await.unwrap(), "drained in time");
    let id = sse.last_id.clone().unwrap();
    // Every stream ended with the live position: the key stream's last id is the topic's,
    // not that of key0's last record.
    assert_eq!(key0.last_id.as_ref(), Some(&id));
    assert_eq!(keys.last_id.as_ref(), Some(&id));
    assert!(["key1", "key3"].iter().all(|k| seen_keys.next_of(k) == 15));
    assert_eq!(seen_keys.count, 30, "only its keys' records");
    let (_, mut key0) = get(
        &h2_connect(&staying).await,
        &format!("/{topic}/key0"),
        &[("last-event-id", &id)],
    )
    .await;
    let (_, mut resumed) = get(
        &h2_connect(&staying).await,
        &format!("/{topic}"),
        &[("last-event-id", &id)],
    )
    .await;
    while seen.count < 60 {
        seen.check(&resumed.next_event().await.unwrap());
    }
    assert!((0..4).all(|k| seen.next_of(&format!("key{k}")) == 15));
    p.produce(&topic, Some("key0"), Some("key0:15")).await;
    seen.check(&resumed.next_event().await.unwrap());
    // The key stream lost nothing either: key0's next record is the first it gets.
    assert_eq!(seen_key0.next_of("key0"), 15);
    seen_key0.check(&key0.next_event().await.unwrap());
    // Nor the stream of several keys, resumed with the same id.
    let (_, mut keys) = get(
        &h2_connect(&staying).await,
        &two_keys,
        &[("last-event-id", &id)],
    )
    .await;
    p.produce(&topic, Some("key3"), Some("key3:15")).await;
    seen_keys.check(&keys.next_event().await.unwrap());
    staying.shutdown().await;
}

/// `GET /readyz` on an admin address: status and body.
async fn admin_status(admin: std::net::SocketAddr) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let raw = http1_exchange(
        &mut tcp,
        "GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"\0never\0",
    )
    .await;
    let text = String::from_utf8(raw).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text)
}
