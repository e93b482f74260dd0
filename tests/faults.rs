//! Kafka faults under open streams, injected into the in-process mock cluster: Kafka
//! unreachable at start, a broker down for 30 s, transient fetch errors and a leader change;
//! oversize records. Tests named `mock_only_*` build their own mock cluster to inject faults: the
//! real-broker pass of `scripts/test.sh` filters them out (`--skip mock_only_`), and the runner
//! counts them as filtered out.

mod support;

use std::time::Duration;

use kafka_sse_gateway::embedded::EmbeddedKafka;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::*;

/// A mock cluster of `brokers` brokers, to inject faults into.
fn mock(brokers: i32) -> Cluster {
    Cluster::Mock(EmbeddedKafka::start(brokers).expect("mock cluster"))
}

fn embedded(cluster: &Cluster) -> &EmbeddedKafka {
    match cluster {
        Cluster::Mock(m) => m,
        Cluster::Real(_) => unreachable!("fault tests use the mock cluster"),
    }
}

fn down(cluster: &Cluster, broker: i32) {
    embedded(cluster)
        .with(move |c| c.broker_down(broker).map_err(|e| e.to_string()))
        .unwrap();
}

fn up(cluster: &Cluster, broker: i32) {
    embedded(cluster)
        .with(move |c| c.broker_up(broker).map_err(|e| e.to_string()))
        .unwrap();
}

async fn readyz(gw: &kafka_sse_gateway::Handle) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(gw.admin_addr).await.unwrap();
    let answer = http1_exchange(
        &mut tcp,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"\n\n\n",
    )
    .await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text[9..12].parse().unwrap();
    (
        status,
        text.rsplit("\r\n\r\n").next().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_only_unreachable_kafka_at_start_gives_503_and_not_ready_then_recovers() {
    let cluster = mock(1);
    let topic = unique_topic("unreachable");
    cluster.create_topic(&topic, 1).await;
    down(&cluster, 1);
    let config = kafka_sse_gateway::config::Config::from_vars([
        ("KSG_KAFKA_BROKERS", cluster.bootstrap().as_str()),
        ("KSG_TOPICS", "*"),
        ("KSG_AUTH", "none"),
        ("KSG_LISTEN", "127.0.0.1:0"),
        ("KSG_ADMIN_LISTEN", "127.0.0.1:0"),
    ])
    .unwrap();
    let gw = kafka_sse_gateway::start(config)
        .await
        .expect("starts while Kafka is unreachable");
    assert_eq!(readyz(&gw).await.0, 503);
    let h2 = h2_connect(&gw).await;
    let (head, mut body) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 503);
    let reason = body
        .body_mut()
        .as_mut()
        .unwrap()
        .data()
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&reason).contains("Kafka has not been reached"),
        "{reason:?}"
    );
    assert_eq!(
        head.headers.get("retry-after").unwrap(),
        "3",
        "KSG_RETRY_MS"
    );
    // An EventSource gets a stream that tells it to come back after KSG_RETRY_MS.
    let (head, mut body) = get(
        &h2,
        &format!("/{topic}"),
        &[("accept", "text/event-stream")],
    )
    .await;
    assert_unavailable_stream(&head, &mut body, "kafka_unavailable", 3_000..=3_000).await;

    up(&cluster, 1);
    wait_ready(&gw).await;
    assert_eq!(readyz(&gw).await, (200, "ready\n".to_string()));
    let (head, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);
    sse.next_block().await.unwrap();
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("k:0"))
        .await;
    assert_eq!(sse.next_event().await.unwrap().text(), "k:0");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_only_broker_down_for_30_seconds_streams_stay_open_then_continue_without_loss() {
    let cluster = mock(1);
    let topic = unique_topic("brokerdown");
    cluster.create_topic(&topic, 3).await;
    let gw = gateway(&cluster, &[("KSG_HEARTBEAT_SECS", "2")]).await;
    let (_, mut sse) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    produce_keyed(&p, &topic, 6, 0..10);
    p.flush().await;
    let mut seen = Continuity::default();
    for event in sse.events(60).await {
        seen.check(&event);
    }

    down(&cluster, 1);
    // Records produced during the outage wait in the producer and arrive after it.
    produce_keyed(&p, &topic, 6, 10..20);
    let heartbeats = only_heartbeats_for(&mut sse, Duration::from_secs(30)).await;
    assert!(
        heartbeats >= 12,
        "heartbeats kept the stream open: {heartbeats}"
    );
    up(&cluster, 1);
    p.flush().await;
    for event in sse.events(60).await {
        seen.check(&event);
    }
    p.produce(&topic, Some("key0"), Some("key0:20")).await;
    seen.check(&sse.next_event().await.unwrap());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_only_fetch_errors_and_a_leader_change_recover_without_loss() {
    let cluster = mock(3);
    let topic = unique_topic("leader");
    cluster.create_topic(&topic, 3).await;
    let gw = gateway(&cluster, &[]).await;
    let (_, mut sse) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    let mut seen = Continuity::default();
    for round in 0..4u64 {
        if round == 1 {
            embedded(&cluster)
                .with(|c| {
                    let errors = [
                        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    ];
                    c.request_errors(RDKafkaApiKey::Fetch, &errors);
                    Ok(())
                })
                .unwrap();
        }
        if round == 2 {
            let topic = topic.clone();
            embedded(&cluster)
                .with(move |c| {
                    for partition in 0..3 {
                        c.partition_leader(&topic, partition, Some(1 + (partition + 1) % 3))
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        produce_keyed(&p, &topic, 6, round * 10..(round + 1) * 10);
        p.flush().await;
        for event in sse.events(60).await {
            seen.check(&event);
        }
    }
    assert_eq!(seen.count, 240);
    p.produce(&topic, Some("key5"), Some("key5:40")).await;
    seen.check(&sse.next_event().await.unwrap());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_records_become_an_event_and_the_stream_goes_on() {
    let cluster = Cluster::new();
    let topic = unique_topic("oversize");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_MAX_EVENT_BYTES", "1000")]).await;
    let h2 = h2_connect(&gw).await;
    let (_, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    let start = sse.next_block().await.unwrap().id.unwrap();
    let p = cluster.producer();
    p.send(&topic, None, Some(b"k"), Some(b"small"));
    p.send(&topic, None, Some(b"k"), Some("x".repeat(5000).as_bytes()));
    p.send(&topic, None, Some(b"k"), Some(b"after"));
    p.flush().await;
    let events = sse.events(3).await;
    assert_eq!(events[0].text(), "small");
    assert_eq!(events[1].event.as_deref(), Some("oversize"));
    assert_eq!(
        events[1].text(),
        r#"{"partition":0,"offset":1,"bytes":5000}"#
    );
    assert_eq!(events[2].text(), "after");
    // The same on the catch-up path.
    let (_, mut resumed) = get(&h2, &format!("/{topic}"), &[("last-event-id", &start)]).await;
    let again: Vec<(Option<String>, String)> = resumed
        .events(3)
        .await
        .into_iter()
        .map(|e| (e.event.clone(), e.text()))
        .collect();
    assert_eq!(again[1].0.as_deref(), Some("oversize"));
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            &format!("ksg_records_oversize_total{{topic=\"{topic}\"}}")
        ),
        1.0
    );
    gw.shutdown().await;
}
