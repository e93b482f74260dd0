//! Topics changing under open streams: partitions added, topic deleted and recreated.
//! The mock cluster can do neither, so these run against a real broker (`KSG_TEST_KAFKA`),
//! which the project's test command always starts; plain `cargo test` lists them as ignored.

mod support;

use std::time::Duration;

use kafka_sse_gateway::position;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use support::*;

fn admin(cluster: &Cluster) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client")
}

/// Waits (bounded) until a metric reaches `value`.
async fn wait_metric(gw: &kafka_sse_gateway::Handle, series: &str, value: f64) {
    for _ in 0..150 {
        if metric(&metrics(gw).await, series) == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never reached {value}: {}", metrics(gw).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker (the mock cluster cannot add partitions)"]
async fn partitions_added_are_streamed_and_old_ids_start_them_from_earliest() {
    let cluster = real_cluster();
    let topic = unique_topic("grow");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(&cluster, &[("KSG_METADATA_REFRESH_SECS", "1")]).await;
    let h2 = h2_connect(&gw).await;
    let (_, mut live) = get(&h2, &format!("/{topic}"), &[]).await;
    let old_id = live.next_block().await.unwrap().id.unwrap();

    let partitions = NewPartitions::new(&topic, 4);
    for result in admin(&cluster)
        .create_partitions([&partitions], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.expect("partitions added");
    }
    wait_metric(&gw, "ksg_partitions_assigned", 4.0).await;
    let p = cluster.producer();
    for partition in 0..4 {
        p.send(
            &topic,
            Some(partition),
            Some(b"k"),
            Some(format!("p{partition}").as_bytes()),
        );
    }
    p.flush().await;
    let mut got: Vec<String> = live.events(4).await.iter().map(|e| e.text()).collect();
    got.sort();
    assert_eq!(got, vec!["p0", "p1", "p2", "p3"]);
    let id = live.last_id.clone().unwrap();
    assert_eq!(
        position::decode(&id, &topic).unwrap().entries.len(),
        4,
        "ids cover the new partitions"
    );

    // An id from before the change lacks partitions 2 and 3: they start from their earliest.
    let (_, mut resumed) = get(&h2, &format!("/{topic}"), &[("last-event-id", &old_id)]).await;
    let mut got: Vec<String> = resumed.events(4).await.iter().map(|e| e.text()).collect();
    got.sort();
    assert_eq!(got, vec!["p0", "p1", "p2", "p3"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker (the mock cluster cannot delete topics)"]
async fn deleted_topic_ends_streams_with_an_event_then_404_then_works_when_recreated() {
    let cluster = real_cluster();
    let topic = unique_topic("deleted");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(
        &cluster,
        &[
            ("KSG_METADATA_REFRESH_SECS", "1"),
            ("KSG_TOPIC_IDLE_SECS", "0"),
        ],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let (_, mut a) = get(&h2, &format!("/{topic}"), &[]).await;
    let (_, mut b) = get(&h2, &format!("/{topic}/k"), &[]).await;
    a.next_block().await.unwrap();
    b.next_block().await.unwrap();
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("before"))
        .await;
    assert_eq!(a.next_event().await.unwrap().text(), "before");
    // Five more on each partition: the id of this incarnation is past the end of the next.
    let p = cluster.producer();
    for n in 0..10 {
        p.send(&topic, Some(n % 2), None, Some(b"old"));
    }
    p.flush().await;
    let old = a.events(10).await;
    let old_id = old.last().unwrap().id.clone().expect("an id");

    for result in admin(&cluster)
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.expect("topic deleted");
    }
    for stream in [&mut a, &mut b] {
        let mut last = None;
        while let Some(block) = stream.next_block().await {
            if !block.data.is_empty() {
                last = Some(block);
            }
        }
        let last = last.expect("an end event before the stream ended");
        assert_eq!(last.event.as_deref(), Some("end"));
        assert_eq!(last.text(), r#"{"reason":"topic-deleted"}"#);
    }
    let (head, _) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 404);
    wait_metric(&gw, "ksg_topics_attached", 0.0).await;
    wait_metric(&gw, "ksg_partitions_assigned", 0.0).await;
    let errors_after_delete = metric(
        &metrics(&gw).await,
        "ksg_kafka_errors_total{code=\"UnknownTopicOrPartition\"}",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let errors_later = metric(
        &metrics(&gw).await,
        "ksg_kafka_errors_total{code=\"UnknownTopicOrPartition\"}",
    );
    assert!(
        errors_later - errors_after_delete <= 2.0,
        "no error loop: {errors_after_delete} then {errors_later}"
    );

    cluster.create_topic(&topic, 1).await;
    let (head, mut again) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);
    again.next_block().await.unwrap();
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("after"))
        .await;
    assert_eq!(again.next_event().await.unwrap().text(), "after");

    // A client of the old incarnation comes back with its id: not a 400 (it could do nothing
    // about it), but a gap naming both partitions (one past the end, one gone), then the new
    // incarnation's records from its start.
    let (head, mut resumed) = get(&h2, &format!("/{topic}"), &[("last-event-id", &old_id)]).await;
    assert_eq!(head.status, 200);
    let gap = resumed.next_event().await.unwrap();
    assert_eq!(gap.event.as_deref(), Some("gap"));
    let data: serde_json::Value = serde_json::from_str(&gap.text()).unwrap();
    let partitions = data["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2, "{data}");
    assert_eq!(partitions[0]["partition"], 0);
    assert_eq!(partitions[0]["to"], 0, "partition 0 from the start: {data}");
    assert_eq!(partitions[1]["partition"], 1);
    assert!(partitions[1]["to"].is_null(), "partition 1 is gone: {data}");
    assert_eq!(resumed.next_event().await.unwrap().text(), "after");
    gw.shutdown().await;
}

/// `KSG_KAFKA_*` reaches librdkafka: with the right SASL/PLAIN credentials the gateway reads the
/// broker's SASL listener (`KSG_TEST_KAFKA_SASL`, which the project's test command sets for its
/// local broker); with a wrong password it never becomes ready and streams get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker with a SASL/PLAIN listener (KSG_TEST_KAFKA_SASL)"]
async fn kafka_properties_pass_through_sasl_plain() {
    let cluster = real_cluster();
    let sasl = std::env::var("KSG_TEST_KAFKA_SASL")
        .expect("KSG_TEST_KAFKA_SASL names the broker's SASL/PLAIN listener");
    let topic = unique_topic("sasl");
    cluster.create_topic(&topic, 1).await;
    let vars = |password: &'static str| {
        let mut vars = vec![
            ("KSG_KAFKA_BROKERS".to_string(), sasl.clone()),
            ("KSG_TOPICS".to_string(), "*".to_string()),
            ("KSG_AUTH".to_string(), "none".to_string()),
            ("KSG_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("KSG_ADMIN_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            (
                "KSG_KAFKA_SECURITY_PROTOCOL".to_string(),
                "SASL_PLAINTEXT".to_string(),
            ),
            ("KSG_KAFKA_SASL_MECHANISMS".to_string(), "PLAIN".to_string()),
            ("KSG_KAFKA_SASL_USERNAME".to_string(), "ksg".to_string()),
        ];
        vars.push(("KSG_KAFKA_SASL_PASSWORD".to_string(), password.to_string()));
        kafka_sse_gateway::config::Config::from_vars(vars).unwrap()
    };

    let gw = kafka_sse_gateway::start(vars("ksg-secret")).await.unwrap();
    wait_ready(&gw).await;
    let (_, mut sse) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    sse.next_block().await.unwrap();
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("over SASL"))
        .await;
    assert_eq!(sse.next_event().await.unwrap().text(), "over SASL");
    gw.shutdown().await;

    let gw = kafka_sse_gateway::start(vars("wrong")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!gw.is_ready(), "a wrong password never reaches Kafka");
    let (head, _) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 503);
    let text = metrics(&gw).await;
    assert!(
        metric(&text, "ksg_kafka_errors_total{code=\"Authentication\"}") >= 1.0,
        "{text}"
    );
    gw.shutdown().await;
}

/// Runs `scripts/kafka-local.sh <command>` for a broker of this test's own (ports 19192-19194).
fn own_broker_now(command: &str, data: &std::path::Path) -> std::process::ExitStatus {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-local.sh");
    std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .env("KAFKA_LOCAL_PORT", "19192")
        .env("KAFKA_LOCAL_DATA", data)
        // The broker's data must outlive its stop: the test restarts it.
        .env_remove("KAFKA_LOCAL_EPHEMERAL")
        .status()
        .expect("kafka-local.sh runs")
}

/// [`own_broker_now`] off the runtime's threads.
async fn own_broker(command: &'static str, data: std::path::PathBuf) {
    let status = tokio::task::spawn_blocking(move || own_broker_now(command, &data))
        .await
        .unwrap();
    assert!(status.success(), "kafka-local.sh {command} failed");
}

/// Stops the test's own broker and removes its data when the test ends, failed or not, so no
/// broker is left holding the ports for the next run.
struct OwnBrokerGuard(std::path::PathBuf);

impl Drop for OwnBrokerGuard {
    fn drop(&mut self) {
        own_broker_now("stop", &self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker (it stops and restarts one of its own)"]
async fn real_broker_stopped_for_30_seconds_then_restarted_streams_continue_without_loss() {
    real_cluster();
    let data = std::env::temp_dir().join(format!("ksg-outage-{}", std::process::id()));
    let _guard = OwnBrokerGuard(data.clone());
    own_broker("start", data.clone()).await;
    let cluster = Cluster::Real("127.0.0.1:19192".into());
    let topic = unique_topic("outage");
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

    own_broker("stop", data.clone()).await;
    let heartbeats = only_heartbeats_for(&mut sse, Duration::from_secs(30)).await;
    assert!(
        heartbeats >= 12,
        "heartbeats kept the stream open: {heartbeats}"
    );
    own_broker("start", data.clone()).await;
    produce_keyed(&p, &topic, 6, 10..20);
    p.flush().await;
    for event in sse.events(60).await {
        seen.check(&event);
    }
    p.produce(&topic, Some("key0"), Some("key0:20")).await;
    seen.check(&sse.next_event().await.unwrap());
    gw.shutdown().await;
}
