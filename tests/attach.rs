//! Attaching a topic completes or rolls back whatever happens to the request that started it:
//! a client that cancels the first request for a topic (RST_STREAM at once, or an HTTP/1.1
//! connection closed right after its request) leaves the topic working for everyone, and an
//! attached topic no stream ever used is released when idle.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_first_requests_leave_their_topics_working() {
    let cluster = Cluster::new();
    let topics: Vec<String> = (0..6).map(|_| unique_topic("cancel")).collect();
    for topic in &topics {
        cluster.create_topic(topic, 3).await;
    }
    let gw = gateway(&cluster, &[("KSG_TOPIC_IDLE_SECS", "2")]).await;
    let h2 = h2_connect(&gw).await;
    // The first request for each topic is reset at once (h2 sends RST_STREAM(CANCEL) when the
    // response future and the request stream are dropped), while the attach is under way.
    for topic in &topics[..3] {
        let request = http::Request::get(format!("https://localhost/{topic}/GOOG"))
            .body(())
            .unwrap();
        let mut sender = h2.clone().ready().await.unwrap();
        let (response, stream) = sender.send_request(request, true).unwrap();
        drop((response, stream));
    }
    // ... or its HTTP/1.1 connection closes right after the request.
    for topic in &topics[3..] {
        use tokio::io::AsyncWriteExt;
        let mut tls = tls_connect(&gw, b"http/1.1").await;
        let request = format!("GET /{topic} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        drop(tls);
    }
    // Every topic then serves streams, and records flow.
    let p = cluster.producer();
    for topic in &topics {
        let (head, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
        if head.status != 200 {
            panic!("{topic}: {} {}", head.status, body_text(&mut sse).await);
        }
        sse.next_block().await.unwrap();
        p.produce(topic, Some("k"), Some("after")).await;
        assert_eq!(sse.next_event().await.unwrap().text(), "after");
    }
    wait_metric(&gw, "ksg_topics_attached", 6.0).await;
    wait_metric(&gw, "ksg_partitions_assigned", 18.0).await;
    drop(h2);
    // With no stream left, every topic is released, and nothing stays assigned.
    wait_metric(&gw, "ksg_topics_attached", 0.0).await;
    wait_metric(&gw, "ksg_partitions_assigned", 0.0).await;
    gw.shutdown().await;
}

/// A topic attached by a request that was gone before its stream registered holds no
/// assignment forever: it is released when idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_no_stream_used_is_released_when_idle() {
    let cluster = Cluster::new();
    let topic = unique_topic("orphan");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(&cluster, &[("KSG_TOPIC_IDLE_SECS", "1")]).await;
    let h2 = h2_connect(&gw).await;
    for _ in 0..20 {
        let request = http::Request::get(format!("https://localhost/{topic}"))
            .body(())
            .unwrap();
        let mut sender = h2.clone().ready().await.unwrap();
        let (response, stream) = sender.send_request(request, true).unwrap();
        drop((response, stream));
    }
    // Whatever the resets raced with, the topic is attached at most once at any time, and
    // released.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let attached = metric(&metrics(&gw).await, "ksg_topics_attached");
        assert!(attached <= 1.0, "attached {attached} times");
        if attached == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_metric(&gw, "ksg_partitions_assigned", 0.0).await;
    let (head, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);
    sse.next_block().await.unwrap();
    gw.shutdown().await;
}
