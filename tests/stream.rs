//! Black-box tests of the SSE streams: a gateway started in-process on port 0, real TLS,
//! real HTTP/2 (the `h2` client) and HTTP/1.1, against the mock cluster or a real broker.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kafka_sse_gateway::position;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_arrive_in_partition_order_with_ids() {
    let cluster = Cluster::new();
    let topic = unique_topic("order");
    cluster.create_topic(&topic, 3).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let (head, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-type"], "text/event-stream");
    assert_eq!(head.headers["cache-control"], "no-cache");

    // The preamble: retry first, then the start position (every partition at 0).
    let preamble = sse.next_block().await.unwrap();
    assert_eq!(preamble.retry.as_deref(), Some("3000"));
    let start = position::decode(preamble.id.as_deref().unwrap(), &topic).unwrap();
    assert_eq!(start.entries, vec![(0, 0), (1, 0), (2, 0)]);

    let producer = cluster.producer();
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
    for seq in 0..20 {
        for key in keys {
            producer.send(
                &topic,
                None,
                Some(key.as_bytes()),
                Some(format!("{key}:{seq}").as_bytes()),
            );
        }
    }
    producer.flush().await;

    let events = sse.events(20 * keys.len()).await;
    let mut next_seq: HashMap<String, u32> = HashMap::new();
    let mut previous: Option<position::Position> = None;
    for event in &events {
        assert_eq!(event.event, None, "default event type");
        let (key, seq) = event
            .text()
            .split_once(':')
            .map(|(k, s)| (k.to_string(), s.parse::<u32>().unwrap()))
            .unwrap();
        let expected = next_seq.entry(key.clone()).or_insert(0);
        assert_eq!(seq, *expected, "key {key} in order, no loss, no duplicate");
        *expected += 1;
        // Each id is the position after its record: exactly one partition advanced by one.
        let id = position::decode(event.id.as_deref().unwrap(), &topic).unwrap();
        let before = previous.as_ref().unwrap_or(&start);
        let advanced: Vec<i64> = id
            .entries
            .iter()
            .zip(&before.entries)
            .map(|(now, then)| now.1 - then.1)
            .collect();
        assert_eq!(advanced.iter().sum::<i64>(), 1, "{advanced:?}");
        assert!(advanced.iter().all(|d| *d == 0 || *d == 1));
        previous = Some(id);
    }
    assert!(next_seq.values().all(|n| *n == 20));
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            &format!("ksg_events_sent_total{{topic=\"{topic}\"}}")
        ),
        160.0
    );
    assert_eq!(
        metric(&text, "ksg_streams_opened_total{route=\"/{topic}\"}"),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_filter_excludes_other_keys_and_tombstones_are_deletes() {
    let cluster = Cluster::new();
    let topic = unique_topic("keys");
    cluster.create_topic(&topic, 3).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let (head, mut sse) = get(&h2, &format!("/{topic}/GO%20OG"), &[]).await;
    assert_eq!(head.status, 200);
    sse.next_block().await.unwrap();

    let p = cluster.producer();
    for (key, value) in [
        ("AAPL", Some("a1")),
        ("GO OG", Some("g1")),
        ("MSFT", Some("m1")),
        ("GO OG", Some("line one\nline two\r\nthree\rfour")),
        ("AAPL", None),
        ("GO OG", None),
        ("GO OG", Some("")),
        ("GO OG", Some("end")),
    ] {
        p.send(&topic, None, Some(key.as_bytes()), value.map(str::as_bytes));
    }
    p.send(&topic, None, Some(b"GO OG"), Some(&[0xff, 0xfe, b'x']));
    p.flush().await;

    let got = sse.events(6).await;
    let summary: Vec<(Option<&str>, Vec<&str>)> = got
        .iter()
        .map(|b| {
            (
                b.event.as_deref(),
                b.data.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (None, vec!["g1"]),
            (None, vec!["line one", "line two", "three", "four"]),
            (Some("delete"), vec!["GO OG"]),
            (None, vec![""]),
            (None, vec!["end"]),
            (Some("binary"), vec!["//54"]),
        ]
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_streams_too() {
    let cluster = Cluster::new();
    let topic = unique_topic("h1");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[]).await;
    let mut tls = tls_connect(&gw, b"http/1.1").await;
    let request =
        format!("GET /{topic}/k HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n");
    let head = http1_exchange(&mut tls, &request, b"\n\n").await;
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(head.contains("retry: 3000\n"), "{head}");
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("hello h1"))
        .await;
    let rest = http1_exchange(&mut tls, "", b"data: hello h1\n\n").await;
    assert!(String::from_utf8_lossy(&rest).contains("data: hello h1\n\n"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_h2c_and_http1_when_tls_is_off() {
    let cluster = Cluster::new();
    let topic = unique_topic("h2c");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_TLS", "off")]).await;
    assert!(gw.cert_der.is_none());
    let h2 = h2_handshake(tokio::net::TcpStream::connect(gw.addr).await.unwrap()).await;
    let (head, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(head.status, 200);
    sse.next_block().await.unwrap();
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("over h2c"))
        .await;
    assert_eq!(sse.next_event().await.unwrap().text(), "over h2c");

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("GET /{topic} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let head = http1_exchange(&mut tcp, &request, b"\n\n").await;
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200 OK\r\n"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_status_and_reason() {
    let cluster = Cluster::new();
    let topic = unique_topic("errors");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_TOPICS", "errors-*,missing-*")]).await;
    let h2 = h2_connect(&gw).await;
    for (path, status, reason) in [
        ("/missing-topic", 404, "does not exist"),
        ("/not-allowed", 404, "not served"),
        ("/a/b/c", 404, "no route"),
        ("/bad%20name", 400, "not a valid topic name"),
        (&format!("/{topic}/"), 400, "empty key"),
    ] {
        let (head, mut body) = get(&h2, path, &[]).await;
        assert_eq!(head.status, status, "{path}");
        assert_eq!(head.headers["content-type"], "text/plain; charset=utf-8");
        let text = body_text(&mut body).await;
        assert!(text.contains(reason), "{path}: {text}");
    }
    let mut h2m = h2.clone().ready().await.unwrap();
    let request = http::Request::post(format!("https://localhost/{topic}"))
        .body(())
        .unwrap();
    let (response, _) = h2m.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD, OPTIONS");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"not_found\"}"),
        3.0
    );
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"bad_request\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "ksg_streams_refused_total{reason=\"method_not_allowed\"}"
        ),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_comment_when_quiet() {
    let cluster = Cluster::new();
    let topic = unique_topic("heartbeat");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(
        &cluster,
        &[("KSG_HEARTBEAT_SECS", "1"), ("KSG_RETRY_MS", "1500")],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let (_, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    assert_eq!(
        sse.next_block().await.unwrap().retry.as_deref(),
        Some("1500")
    );
    for _ in 0..2 {
        let block = sse
            .next_block_within(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            block,
            Block {
                comments: vec![String::new()],
                ..Block::default()
            }
        );
    }
    assert!(metric(&metrics(&gw).await, "ksg_heartbeats_sent_total") >= 2.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_is_cut_off_while_others_keep_receiving() {
    let cluster = Cluster::new();
    let topic = unique_topic("slow");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_STREAM_QUEUE", "200")]).await;
    // Separate connections: a stalled stream must not hold the other's connection window.
    let (stalled_conn, live_conn) = (h2_connect_small_windows(&gw).await, h2_connect(&gw).await);
    let (_, stalled) = get(&stalled_conn, &format!("/{topic}"), &[]).await;
    let (_, live) = get(&live_conn, &format!("/{topic}"), &[]).await;
    // 3000 records of 1 KiB: far beyond what the stalled stream's window, send buffer and
    // queue of 200 can hold.
    let run = Overrun {
        topic: &topic,
        records: 3000,
        batch: 100,
        bytes: 1024,
    };
    run.cuts_off(&cluster, &gw, stalled, live).await;
    gw.shutdown().await;
}

/// Two live streams of one topic on one HTTP/2 connection share the connection's log: the one
/// whose client stops reading is cut off when it falls `KSG_STREAM_QUEUE` events behind, and
/// the other goes on with every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_sharing_a_connection_is_cut_off_and_its_neighbour_goes_on() {
    let cluster = Cluster::new();
    let topic = unique_topic("shared");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_STREAM_QUEUE", "100")]).await;
    // Browser-sized windows: the stream left unread takes its 6 MiB window, then stalls while
    // its neighbour's reads keep the connection's window open.
    let h2 = h2_connect(&gw).await;
    let (_, stalled) = get(&h2, &format!("/{topic}"), &[]).await;
    let (_, live) = get(&h2, &format!("/{topic}"), &[]).await;
    // 2000 records of 8 KiB (16 MB): far past the unread stream's window and log bound.
    let run = Overrun {
        topic: &topic,
        records: 2000,
        batch: 50,
        bytes: 8 * 1024,
    };
    run.cuts_off(&cluster, &gw, stalled, live).await;
    gw.shutdown().await;
}

/// A burst of records that reach the gateway together, ten times `KSG_STREAM_QUEUE`: the poll
/// thread appends them to the connection's log faster than the connection writes them (each
/// batch of up to 256 records before the connection is even woken), and streams whose clients
/// read them all are not cut off for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_queue_bound_reaches_streams_that_read_it() {
    let cluster = Cluster::new();
    let topic = unique_topic("burst");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_STREAM_QUEUE", "100")]).await;
    let h2 = h2_connect(&gw).await;
    let (_, mut a) = get(&h2, &format!("/{topic}"), &[]).await;
    let (_, mut b) = get(&h2, &format!("/{topic}"), &[]).await;
    a.next_block().await.unwrap();
    b.next_block().await.unwrap();
    let p = cluster.producer();
    let records = 1000;
    for seq in 0..records {
        p.send(&topic, None, Some(b"k"), Some(seq.to_string().as_bytes()));
    }
    p.flush().await;
    for stream in [&mut a, &mut b] {
        let texts: Vec<String> = stream
            .events(records)
            .await
            .iter()
            .map(|e| e.text().to_string())
            .collect();
        let expected: Vec<String> = (0..records).map(|s| s.to_string()).collect();
        assert_eq!(texts, expected, "every record of the burst, in order");
    }
    let cutoffs = format!("ksg_slow_stream_cutoffs_total{{topic=\"{topic}\"}}");
    assert_eq!(metric(&metrics(&gw).await, &cutoffs), 0.0);
    gw.shutdown().await;
}

/// Records numbered from 0, produced in batches that one stream reads before the next batch
/// while another stream is not read at all.
struct Overrun<'a> {
    topic: &'a str,
    records: usize,
    batch: usize,
    /// Bytes of filler per record.
    bytes: usize,
}

impl Overrun<'_> {
    /// Checks that `live` gets every record in order, that `stalled` (read at last) got a
    /// gap-free prefix and then its end, and that one cut-off was counted.
    async fn cuts_off(
        &self,
        cluster: &Cluster,
        gw: &kafka_sse_gateway::Handle,
        mut stalled: SseReader,
        mut live: SseReader,
    ) {
        stalled.next_block().await.unwrap();
        live.next_block().await.unwrap();
        let p = cluster.producer();
        let filler = "x".repeat(self.bytes);
        let seqs = |events: &[Block]| -> Vec<usize> {
            events
                .iter()
                .map(|e| e.text().split(' ').next().unwrap().parse().unwrap())
                .collect()
        };
        let mut received = Vec::new();
        for first in (0..self.records).step_by(self.batch) {
            for seq in first..first + self.batch {
                let value = format!("{seq} {filler}");
                p.send(self.topic, None, Some(b"k"), Some(value.as_bytes()));
            }
            p.flush().await;
            received.extend(live.events(self.batch).await);
        }
        assert_eq!(
            seqs(&received),
            (0..self.records).collect::<Vec<_>>(),
            "the reading stream got everything"
        );
        let mut got = Vec::new();
        while let Some(event) = stalled.next_event().await {
            got.push(event);
        }
        assert!(
            !got.is_empty() && got.len() < self.records,
            "{} events before the cut",
            got.len()
        );
        assert_eq!(seqs(&got), (0..got.len()).collect::<Vec<_>>());
        let cutoffs = format!("ksg_slow_stream_cutoffs_total{{topic=\"{}\"}}", self.topic);
        assert_eq!(metric(&metrics(gw).await, &cutoffs), 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_returns() {
    let cluster = Cluster::new();
    let topic = unique_topic("shutdown");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_SHUTDOWN_GRACE_SECS", "5")]).await;
    let addr = gw.addr;
    let h2 = h2_connect(&gw).await;
    let (_, mut a) = get(&h2, &format!("/{topic}"), &[]).await;
    let (_, mut b) = get(&h2, &format!("/{topic}/k"), &[]).await;
    a.next_block().await.unwrap();
    b.next_block().await.unwrap();
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("before"))
        .await;
    let before = a.next_event().await.unwrap();
    assert_eq!(before.text(), "before");
    let drained = tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("shutdown returns");
    assert!(drained, "every connection closed within the grace period");
    // Each stream's last block is an id-only block with the live position: here the id of
    // the one record (the key stream's too, its key being the topic's last).
    let last = |block: Option<Block>| {
        let block = block.expect("an id-only block before the end");
        assert!(block.data.is_empty() && block.event.is_none(), "{block:?}");
        block.id
    };
    assert_eq!(last(a.next_block().await), before.id);
    assert_eq!(a.next_block().await, None, "stream A ended");
    assert_eq!(b.next_event().await.unwrap().text(), "before");
    assert_eq!(last(b.next_block().await), before.id);
    assert_eq!(
        b.next_block().await,
        None,
        "stream B ended after its queued event and its last id"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_last_event_id() {
    let cluster = Cluster::new();
    let topic = unique_topic("cors");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_CORS_ORIGINS", "https://app.example")]).await;
    let h2 = h2_connect(&gw).await;
    let mut send = h2.clone().ready().await.unwrap();
    let preflight = http::Request::builder()
        .method("OPTIONS")
        .uri(format!("https://localhost/{topic}"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .body(())
        .unwrap();
    let response = send.send_request(preflight, true).unwrap().0.await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = response.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("last-event-id") && allowed.contains("authorization"));
    // A listed origin may send its cookies (a token cookie, with withCredentials).
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );

    let (head, _) = get(
        &h2,
        &format!("/{topic}"),
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(
        head.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let (head, _) = get(
        &h2,
        &format!("/{topic}"),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(head.headers.get("access-control-allow-origin").is_none());
    assert!(head
        .headers
        .get("access-control-allow-credentials")
        .is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_stream_ids_name_only_the_keys_partition_when_murmur2_is_promised() {
    use kafka_sse_gateway::partitioner::KeyPartitioner;
    let cluster = Cluster::new();
    let topic = unique_topic("keyids");
    cluster.create_topic(&topic, 12).await;
    let gw = gateway(
        &cluster,
        &[
            ("KSG_REPLAY_BYTES", "0"),
            ("KSG_KEY_PARTITIONER", "murmur2"),
        ],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let home = KeyPartitioner::Murmur2.partition(b"GOOG", 12) as i32;
    let (_, mut sse) = get(&h2, &format!("/{topic}/GOOG"), &[]).await;
    let start = sse.next_block().await.unwrap().id.unwrap();
    assert_eq!(
        position::decode(&start, &topic).unwrap().entries,
        vec![(home, 0)]
    );
    assert_eq!(start.len(), 12, "{start}");

    // This test is about the murmur2 promise, so the producer places keys as the Java client.
    let p = cluster.producer_with(&[("partitioner", "murmur2_random")]);
    // Another key on another partition, so GOOG's offsets are 0, 1, 2, ...
    let other = ["AAPL", "MSFT", "AMZN", "NVDA"]
        .into_iter()
        .find(|k| KeyPartitioner::Murmur2.partition(k.as_bytes(), 12) as i32 != home)
        .unwrap();
    for n in 0..5 {
        p.send(
            &topic,
            None,
            Some(b"GOOG"),
            Some(format!("GOOG:{n}").as_bytes()),
        );
        let value = format!("{other}:{n}");
        p.send(&topic, None, Some(other.as_bytes()), Some(value.as_bytes()));
    }
    p.flush().await;
    let events = sse.events(5).await;
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event.text(), format!("GOOG:{n}"));
        let id = position::decode(event.id.as_deref().unwrap(), &topic).unwrap();
        assert_eq!(id.entries, vec![(home, n as i64 + 1)]);
    }
    // Resume from Kafka with a one-partition id: exactly the rest.
    let second = events[1].id.clone().unwrap();
    let (_, mut resumed) = get(
        &h2,
        &format!("/{topic}/GOOG"),
        &[("last-event-id", &second)],
    )
    .await;
    let texts: Vec<String> = resumed.events(3).await.iter().map(|e| e.text()).collect();
    assert_eq!(texts, vec!["GOOG:2", "GOOG:3", "GOOG:4"]);
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            &format!("ksg_key_partition_mismatches_total{{topic=\"{topic}\"}}")
        ),
        0.0
    );
    gw.shutdown().await;

    // With no promise (the default): full ids from the start.
    let gw = gateway(&cluster, &[]).await;
    let (_, mut sse) = get(&h2_connect(&gw).await, &format!("/{topic}/GOOG"), &[]).await;
    let start = sse.next_block().await.unwrap().id.unwrap();
    assert_eq!(position::decode(&start, &topic).unwrap().entries.len(), 12);
    gw.shutdown().await;
}

/// Every metric family the README lists is on the admin listener's `/metrics`, in Prometheus
/// text with its HELP and TYPE, with at least one sample: a renamed or unregistered family fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_metrics_export_every_documented_family() {
    let cluster = Cluster::new();
    let topic = unique_topic("families");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_METADATA_REFRESH_SECS", "1")]).await;
    let h2 = h2_connect(&gw).await;
    let (_, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    p.produce(&topic, Some("k"), Some("v")).await;
    assert_eq!(sse.next_event().await.unwrap().text(), "v");
    // Events are counted as events: a catch-up batch of three is three, not one queue item.
    p.produce(&topic, Some("k"), Some("w")).await;
    p.produce(&topic, Some("k"), Some("x")).await;
    assert_eq!(sse.events(2).await.len(), 2);
    let (_, mut earliest) = get(&h2, &format!("/{topic}?from=earliest"), &[]).await;
    assert_eq!(earliest.events(3).await.len(), 3);
    drop(earliest);
    // The lag gauge appears with the first metadata refresh.
    let lag = format!("ksg_consumer_lag{{topic=\"{topic}\"}}");
    for _ in 0..100 {
        if metrics(&gw).await.contains(&lag) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = format!("\n{}", metrics(&gw).await);
    assert_eq!(metric(&text, &lag), 0.0, "the gateway has read everything");
    assert_eq!(
        metric(
            &text,
            &format!("ksg_events_sent_total{{topic=\"{topic}\"}}")
        ),
        6.0
    );
    let route = "route=\"/{topic}\"";
    assert_eq!(
        metric(&text, &format!("ksg_first_event_seconds_count{{{route}}}")),
        2.0
    );
    // Both streams' requests were answered (and timed), whatever else the test asked.
    assert!(metric(&text, "ksg_answer_seconds_count") >= 2.0);
    assert!(
        metric(
            &text,
            &format!("ksg_event_latency_seconds_count{{topic=\"{topic}\"}}")
        ) >= 3.0
    );
    assert!(metric(&text, "process_resident_memory_bytes") > 0.0);
    assert!(metric(&text, "process_open_fds") > 0.0);
    let families = [
        ("ksg_connections_accepted_total", "counter"),
        ("ksg_connections_open", "gauge"),
        ("ksg_ready", "gauge"),
        ("ksg_admin_unauthorized_total", "counter"),
        ("ksg_build_info", "gauge"),
        ("ksg_connections_rejected_total", "counter"),
        ("ksg_connections_closed_total", "counter"),
        ("ksg_streams_opened_total", "counter"),
        ("ksg_streams_open", "gauge"),
        ("ksg_topic_streams_open", "gauge"),
        ("ksg_streams_max", "gauge"),
        ("ksg_streams_refused_total", "counter"),
        ("ksg_events_sent_total", "counter"),
        ("ksg_event_bytes_sent_total", "counter"),
        ("ksg_heartbeats_sent_total", "counter"),
        ("ksg_records_consumed_total", "counter"),
        ("ksg_records_encoded_total", "counter"),
        ("ksg_slow_stream_cutoffs_total", "counter"),
        ("ksg_kafka_errors_total", "counter"),
        ("ksg_topics_attached", "gauge"),
        ("ksg_partitions_assigned", "gauge"),
        ("ksg_resumes_total", "counter"),
        ("ksg_gaps_total", "counter"),
        ("ksg_gap_offsets_skipped_total", "counter"),
        ("ksg_records_oversize_total", "counter"),
        ("ksg_key_partition_mismatches_total", "counter"),
        ("ksg_snapshot_keyless_records_total", "counter"),
        ("ksg_streams_expired_total", "counter"),
        ("ksg_catchup_readers_active", "gauge"),
        ("ksg_catchup_shared_total", "counter"),
        ("ksg_catchup_handovers_total", "counter"),
        ("ksg_stalled_stream_resets_total", "counter"),
        ("ksg_event_latency_seconds", "histogram"),
        ("ksg_answer_seconds", "histogram"),
        ("ksg_first_event_seconds", "histogram"),
        ("ksg_stream_duration_seconds", "histogram"),
        ("ksg_consumer_lag", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("ksg_catchup_readers", "gauge"),
        ("ksg_replay_bytes", "gauge"),
        ("ksg_snapshot_entries", "gauge"),
        ("ksg_snapshot_bytes", "gauge"),
    ];
    let consumed = format!("ksg_records_consumed_total{{topic=\"{topic}\"}}");
    assert_eq!(metric(&text, &consumed), 3.0);
    for (family, kind) in families {
        assert!(
            text.contains(&format!("\n# HELP {family} ")),
            "no HELP for {family}"
        );
        assert!(
            text.contains(&format!("\n# TYPE {family} {kind}\n")),
            "no TYPE {kind} for {family}"
        );
        let sample = if kind == "histogram" {
            format!("{family}_count")
        } else {
            family.to_string()
        };
        let sampled = text.lines().any(|l| {
            l.strip_prefix(sample.as_str())
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        });
        assert!(sampled, "no sample of {family}");
    }
    // Per-topic series exist at 0 as soon as the topic is attached.
    for family in [
        "ksg_key_partition_mismatches_total",
        "ksg_gaps_total",
        "ksg_records_oversize_total",
        "ksg_slow_stream_cutoffs_total",
    ] {
        assert_eq!(
            metric(&text, &format!("{family}{{topic=\"{topic}\"}}")),
            0.0
        );
    }
    gw.shutdown().await;
}
