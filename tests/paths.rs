//! One path for every stream: fresh and resumed, all-keys and key, from the replay ring and from
//! a Kafka catch-up, on HTTP/2 and on HTTP/1.1, every stream ends up reading its connection's
//! shared log (`ksg_streams_own_queue` back to 0), with every record once and in order.

mod support;

use support::*;

const KEYS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_stream_reads_the_shared_log_once_live() {
    let cluster = Cluster::new();
    let topic = unique_topic("paths");
    cluster.create_topic(&topic, 3).await;
    let p = cluster.producer();
    // Records from before the gateway attaches the topic: only a catch-up reads them.
    produce_keyed(&p, &topic, KEYS, 0..5);
    p.flush().await;
    // No heartbeat within the test: a stream that is not woken for its events does not get
    // them, rather than late at its next heartbeat.
    let gw = gateway(&cluster, &[("KSG_HEARTBEAT_SECS", "300")]).await;
    let h2 = h2_connect(&gw).await;

    let mut all = get_stream(&h2, &format!("/{topic}"), &[]).await;
    let mut key = get_stream(&h2, &format!("/{topic}/key1"), &[]).await;
    all.next_block().await.unwrap();
    key.next_block().await.unwrap();
    let (mut seen_all, mut seen_key) = (
        Continuity::starting_at((0..KEYS).map(|k| format!("key{k}")), 5),
        Continuity::starting_at(["key1".to_string()], 5),
    );
    produce_keyed(&p, &topic, KEYS, 5..10);
    p.flush().await;
    read_checked(&mut all, 5 * KEYS, &mut seen_all).await;
    read_checked(&mut key, 5, &mut seen_key).await;
    assert_eq!(
        metric(&metrics(&gw).await, "ksg_streams_own_queue"),
        0.0,
        "fresh streams read the shared log at once"
    );
    // Ids taken mid-way, to resume from the ring; then from Kafka (`from=earliest`).
    let id_all = all.last_id.clone().unwrap();
    let id_key = key.last_id.clone().unwrap();
    produce_keyed(&p, &topic, KEYS, 10..15);
    p.flush().await;
    read_checked(&mut all, 5 * KEYS, &mut seen_all).await;
    read_checked(&mut key, 5, &mut seen_key).await;

    let h2b = h2_connect(&gw).await;
    let resumed = [("last-event-id", id_all.as_str())];
    let mut ring_all = get_stream(&h2b, &format!("/{topic}"), &resumed).await;
    let resumed = [("last-event-id", id_key.as_str())];
    let mut ring_key = get_stream(&h2b, &format!("/{topic}/key1"), &resumed).await;
    let mut kafka_all = get_stream(&h2b, &format!("/{topic}?from=earliest"), &[]).await;
    let mut kafka_key = get_stream(&h2b, &format!("/{topic}/key1?from=earliest"), &[]).await;
    // The same four on HTTP/1.1, a connection each.
    let resumed = [("last-event-id", id_all.as_str())];
    let mut h1_ring_all = h1_stream(&gw, &format!("/{topic}"), &resumed).await;
    let resumed = [("last-event-id", id_key.as_str())];
    let mut h1_ring_key = h1_stream(&gw, &format!("/{topic}/key1"), &resumed).await;
    let mut h1_kafka_all = h1_stream(&gw, &format!("/{topic}?from=earliest"), &[]).await;
    let mut h1_kafka_key = h1_stream(&gw, &format!("/{topic}/key1?from=earliest"), &[]).await;
    let mut seen_ring_all = Continuity::starting_at((0..KEYS).map(|k| format!("key{k}")), 10);
    let mut seen_ring_key = Continuity::starting_at(["key1".to_string()], 10);
    let mut seen_kafka_all = Continuity::default();
    let mut seen_kafka_key = Continuity::default();
    read_checked(&mut ring_all, 5 * KEYS, &mut seen_ring_all).await;
    read_checked(&mut ring_key, 5, &mut seen_ring_key).await;
    read_checked(&mut kafka_all, 15 * KEYS, &mut seen_kafka_all).await;
    read_checked(&mut kafka_key, 15, &mut seen_kafka_key).await;
    let mut seen_h1_ring_all = Continuity::starting_at((0..KEYS).map(|k| format!("key{k}")), 10);
    let mut seen_h1_ring_key = Continuity::starting_at(["key1".to_string()], 10);
    let mut seen_h1_kafka_all = Continuity::default();
    let mut seen_h1_kafka_key = Continuity::default();
    read_checked(&mut h1_ring_all, 5 * KEYS, &mut seen_h1_ring_all).await;
    read_checked(&mut h1_ring_key, 5, &mut seen_h1_ring_key).await;
    read_checked(&mut h1_kafka_all, 15 * KEYS, &mut seen_h1_kafka_all).await;
    read_checked(&mut h1_kafka_key, 15, &mut seen_h1_kafka_key).await;
    // A fresh HTTP/1.1 stream joins its connection's log at once.
    let mut h1_fresh = h1_stream(&gw, &format!("/{topic}/key2"), &[]).await;
    h1_fresh.next_block().await.unwrap();
    let mut seen_h1_fresh = Continuity::starting_at(["key2".to_string()], 15);
    // Every stream is live: the resumed ones left their own queues for the connection's log.
    wait_metric(&gw, "ksg_streams_own_queue", 0.0).await;
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "ksg_resumes_total{source=\"memory\"}"), 4.0);
    assert_eq!(metric(&m, "ksg_resumes_total{source=\"kafka\"}"), 4.0);

    // Every record from here on reaches every stream once, in order, through the shared logs.
    produce_keyed(&p, &topic, KEYS, 15..40);
    p.flush().await;
    for (sse, seen, n) in [
        (&mut all, &mut seen_all, 25 * KEYS),
        (&mut key, &mut seen_key, 25),
        (&mut ring_all, &mut seen_ring_all, 25 * KEYS),
        (&mut ring_key, &mut seen_ring_key, 25),
        (&mut kafka_all, &mut seen_kafka_all, 25 * KEYS),
        (&mut kafka_key, &mut seen_kafka_key, 25),
        (&mut h1_ring_all, &mut seen_h1_ring_all, 25 * KEYS),
        (&mut h1_ring_key, &mut seen_h1_ring_key, 25),
        (&mut h1_kafka_all, &mut seen_h1_kafka_all, 25 * KEYS),
        (&mut h1_kafka_key, &mut seen_h1_kafka_key, 25),
        (&mut h1_fresh, &mut seen_h1_fresh, 25),
    ] {
        read_checked(sse, n, seen).await;
    }
    assert_eq!(
        metric(&metrics(&gw).await, "ksg_streams_own_queue"),
        0.0,
        "live streams read their connections' logs"
    );
    for k in 0..KEYS {
        let k = format!("key{k}");
        for seen in [
            &seen_all,
            &seen_ring_all,
            &seen_kafka_all,
            &seen_h1_ring_all,
            &seen_h1_kafka_all,
        ] {
            assert_eq!(seen.next_of(&k), 40);
        }
    }
    assert_eq!(seen_h1_fresh.next_of("key2"), 40);
    for seen in [
        &seen_key,
        &seen_ring_key,
        &seen_kafka_key,
        &seen_h1_ring_key,
        &seen_h1_kafka_key,
    ] {
        assert_eq!(seen.next_of("key1"), 40);
        assert_eq!(seen.next_of("key0"), 0, "a key stream gets only its key");
    }
    // Nothing more than that: the next event of each key stream is the sentinel.
    p.produce(&topic, Some("key1"), Some("key1:40")).await;
    for (sse, seen) in [
        (&mut key, &mut seen_key),
        (&mut ring_key, &mut seen_ring_key),
        (&mut kafka_key, &mut seen_kafka_key),
        (&mut h1_ring_key, &mut seen_h1_ring_key),
        (&mut h1_kafka_key, &mut seen_h1_kafka_key),
    ] {
        seen.check(&sse.next_event().await.unwrap());
    }
    gw.shutdown().await;
}
