//! `?format=envelope`: each event's data is one JSON object with the record's topic, partition,
//! offset, timestamp, key, value and headers, for every kind of stream (all keys, one key,
//! several keys; live, from `earliest`, resumed from memory and from Kafka, a snapshot; HTTP/2
//! and HTTP/1.1), with the same ids as the plain format; the plain format is unchanged beside
//! it on the same connection.

mod support;

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde_json::{json, Value};
use support::*;

/// The records produced: (key, value, headers), librdkafka's default partitioner placing them.
/// A record to produce: key, value (`None`: a tombstone) and headers.
type Produced = (
    &'static [u8],
    Option<&'static [u8]>,
    Vec<(&'static str, Option<&'static [u8]>)>,
);

fn records() -> Vec<Produced> {
    vec![
        (
            b"k1",
            Some(b"{\"total\":1}"),
            vec![("tenant", Some(b"acme"))],
        ),
        (b"k2", Some(b"line one\r\nline two"), vec![]),
        (
            b"k1",
            Some(&[0xff, 0x00, 0x41]),
            vec![("raw", Some(&[0xfe])), ("none", None)],
        ),
        (&[0xc3, 0x28], Some(b"binary key"), vec![]),
        (
            b"k2",
            None,
            vec![("tenant", Some(b"acme")), ("tenant", Some(b"globex"))],
        ),
        (b"k1", Some(b"last"), vec![]),
    ]
}

fn produce_all(p: &Producer_, topic: &str) {
    for (key, value, headers) in records() {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if !headers.is_empty() {
            let mut owned = OwnedHeaders::new();
            for (name, value) in headers {
                owned = owned.insert(Header { key: name, value });
            }
            record = record.headers(owned);
        }
        p.0.send(record).map_err(|(e, _)| e).expect("queued");
    }
}

/// The envelope expected for record `i`, at `(partition, offset)`.
fn expected(topic: &str, i: usize, (p, offset): (i32, i64)) -> Value {
    let bodies = [
        json!({"key": "k1", "value": "{\"total\":1}", "headers": {"tenant": "acme"}}),
        json!({"key": "k2", "value": "line one\r\nline two", "headers": {}}),
        json!({"key": "k1", "value": null, "value_b64": "/wBB", "headers": {"raw": {"b64": "/g=="}, "none": null}}),
        json!({"key": null, "key_b64": "wyg=", "value": "binary key", "headers": {}}),
        json!({"key": "k2", "value": null, "headers": {"tenant": "globex"}}),
        json!({"key": "k1", "value": "last", "headers": {}}),
    ];
    let mut envelope = bodies[i].clone();
    let fields = envelope.as_object_mut().unwrap();
    fields.insert("topic".into(), json!(topic));
    fields.insert("partition".into(), json!(p));
    fields.insert("offset".into(), json!(offset));
    envelope
}

/// Where each record is, by its index in [`records`], read back from Kafka by offset order
/// per partition (every value is distinct but the tombstone's, which the key and headers tell).
async fn places(cluster: &Cluster, topic: &str) -> Vec<(i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::ClientConfig;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", unique_topic("places"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consumer.subscribe(&[&topic]).unwrap();
        let all = records();
        let mut found = vec![None; all.len()];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while found.iter().any(Option::is_none) {
            assert!(std::time::Instant::now() < deadline, "records read back");
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let tenant = m
                .headers()
                .and_then(|h| h.iter().last().and_then(|h| h.value.map(<[u8]>::to_vec)));
            let i = all
                .iter()
                .position(|(k, v, h)| {
                    m.key() == Some(*k)
                        && m.payload() == *v
                        && (v.is_some() || tenant.as_deref() == h.last().and_then(|(_, v)| *v))
                })
                .expect("a record produced here");
            found[i] = Some((m.partition(), m.offset()));
        }
        found.into_iter().map(Option::unwrap).collect()
    })
    .await
    .unwrap()
}

/// The event's envelope, without its timestamp (checked to be a number), and its type.
fn envelope_of(block: &Block) -> (Option<String>, Value) {
    let mut json: Value = serde_json::from_str(&block.text()).unwrap();
    let timestamp = json.as_object_mut().unwrap().remove("timestamp");
    assert!(timestamp.is_some_and(|t| t.is_i64()), "a timestamp: {json}");
    (block.event.clone(), json)
}

/// Reads the envelopes of the records `want` (indexes into [`records`]), in order.
async fn check(sse: &mut SseReader, want: &[usize], topic: &str, at: &[(i32, i64)]) -> Vec<Block> {
    let events = sse.events(want.len()).await;
    let mut got: Vec<(Option<String>, Value)> = events.iter().map(envelope_of).collect();
    let mut expected: Vec<(Option<String>, Value)> = want
        .iter()
        .map(|&i| {
            let kind = records()[i].1.is_none().then(|| "delete".to_string());
            (kind, expected(topic, i, at[i]))
        })
        .collect();
    // In order per partition; across partitions, in the order the gateway read them.
    let order = |v: &(Option<String>, Value)| (v.1["partition"].as_i64(), v.1["offset"].as_i64());
    got.sort_by_key(order);
    expected.sort_by_key(order);
    assert_eq!(got, expected);
    no_event_for(sse, Duration::from_millis(300)).await;
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_carry_every_part_of_a_record_for_every_kind_of_stream() {
    let cluster = Cluster::new();
    let topic = unique_topic("envelope");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let mut all = get_stream(&h2, &format!("/{topic}?format=envelope"), &[]).await;
    let mut plain = get_stream(&h2, &format!("/{topic}"), &[]).await;
    let mut key = get_stream(&h2, &format!("/{topic}/k1?format=envelope"), &[]).await;
    let mut keys = get_stream(
        &h2,
        &format!("/{topic}?format=envelope&key=k2&key=%C3%28"),
        &[],
    )
    .await;
    let mut h1 = h1_stream(&gw, &format!("/{topic}?format=envelope"), &[]).await;
    for sse in [&mut all, &mut plain, &mut key, &mut keys, &mut h1] {
        sse.next_block().await.unwrap();
    }
    let p = cluster.producer();
    produce_all(&p, &topic);
    p.flush().await;
    let at = places(&cluster, &topic).await;

    let events = check(&mut all, &[0, 1, 2, 3, 4, 5], &topic, &at).await;
    check(&mut h1, &[0, 1, 2, 3, 4, 5], &topic, &at).await;
    check(&mut key, &[0, 2, 5], &topic, &at).await;
    check(&mut keys, &[1, 3, 4], &topic, &at).await;
    // The plain stream beside them is as it always was, with the same ids.
    let plain_events = plain.events(6).await;
    let texts: Vec<String> = plain_events.iter().map(Block::text).collect();
    assert!(
        texts.contains(&"line one\nline two".to_string()),
        "{texts:?}"
    );
    let ids = |list: &[Block]| {
        let mut ids: Vec<String> = list.iter().map(|b| b.id.clone().unwrap()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&events), ids(&plain_events));

    // From earliest (a catch-up reader), and resumed after the second event, from memory
    // and (on a new gateway) from Kafka: the same envelopes.
    let mut earliest =
        get_stream(&h2, &format!("/{topic}?format=envelope&from=earliest"), &[]).await;
    check(&mut earliest, &[0, 1, 2, 3, 4, 5], &topic, &at).await;
    let second = events[1].id.clone().unwrap();
    let from = kafka_sse_gateway::position::decode(&second, &topic).unwrap();
    let rest: Vec<usize> = (0..6)
        .filter(|&i| at[i].1 >= from.offset(at[i].0).unwrap())
        .collect();
    assert_eq!(rest.len(), 4);
    let resumed = [("last-event-id", second.as_str())];
    let mut memory = get_stream(&h2, &format!("/{topic}?format=envelope"), &resumed).await;
    check(&mut memory, &rest, &topic, &at).await;
    let other = gateway(&cluster, &[]).await;
    let mut kafka = get_stream(
        &h2_connect(&other).await,
        &format!("/{topic}?format=envelope"),
        &resumed,
    )
    .await;
    check(&mut kafka, &rest, &topic, &at).await;
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "ksg_resumes_total{source=\"memory\"}"), 1.0);
    assert_eq!(
        metric(
            &metrics(&other).await,
            "ksg_resumes_total{source=\"kafka\"}"
        ),
        1.0
    );
    other.shutdown().await;

    // A snapshot: the latest record of each key (k2's is a tombstone: gone), then `live`.
    let mut snap = get_stream(&h2, &format!("/{topic}?format=envelope&from=snapshot"), &[]).await;
    let latest = snap.events(3).await;
    let mut got: Vec<Value> = latest[..2].iter().map(|b| envelope_of(b).1).collect();
    got.sort_by_key(|v| v["offset"].as_i64());
    let mut want = vec![expected(&topic, 3, at[3]), expected(&topic, 5, at[5])];
    want.sort_by_key(|v| v["offset"].as_i64());
    assert_eq!(got, want);
    assert!(latest[..2].iter().all(|b| b.id.is_none()));
    assert_eq!(latest[2].event.as_deref(), Some("live"));

    // A format this gateway does not know: 400, with the reason.
    let (head, mut body) = get(&h2, &format!("/{topic}?format=xml"), &[]).await;
    assert_eq!(head.status, 400);
    assert!(body_text(&mut body)
        .await
        .contains("not plain, envelope or json"));
    gw.shutdown().await;
}

/// The JSON answer of `path`: its status and its document.
async fn json_of(h2: &H2, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (head, mut body) = get(h2, path, headers).await;
    let text = body_text(&mut body).await;
    if head.status != 200 {
        return (head.status.as_u16(), json!(text));
    }
    let kind = head.headers.get("content-type").unwrap().to_str().unwrap();
    assert_eq!(kind, "application/json");
    (200, serde_json::from_str(&text).unwrap())
}

/// The `value`s of a document's records, sorted.
fn values(doc: &Value) -> Vec<String> {
    let mut values: Vec<String> = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_snapshot_hands_over_to_a_stream_with_no_gap_and_no_duplicate() {
    let cluster = Cluster::new();
    let topic = unique_topic("jsonsnap");
    cluster.create_topic(&topic, 3).await;
    let p = cluster.producer();
    produce_keyed(&p, &topic, 6, 0..10);
    p.send(&topic, None, Some(b"key5"), None);
    p.flush().await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;

    // The latest record of every key (key5's is a tombstone: gone), and where they were read.
    let (status, doc) = json_of(&h2, &format!("/{topic}?from=snapshot&format=json"), &[]).await;
    assert_eq!(status, 200, "{doc}");
    let latest: Vec<String> = (0..5).map(|k| format!("key{k}:9")).collect();
    assert_eq!(values(&doc), latest);
    assert!(doc["records"][0]["topic"] == json!(topic) && doc["records"][0]["partition"].is_i64());
    let accept = [("accept", "application/json")];
    let (_, by_accept) = json_of(&h2, &format!("/{topic}?from=snapshot"), &accept).await;
    assert_eq!(values(&by_accept), latest);
    assert_eq!(by_accept["id"], doc["id"]);
    let (_, one) = json_of(
        &h2,
        &format!("/{topic}/key1?from=snapshot&format=json"),
        &[],
    )
    .await;
    assert_eq!(values(&one), ["key1:9"]);
    let (_, two) = json_of(
        &h2,
        &format!("/{topic}?key=key2&key=key4&from=snapshot&format=json"),
        &[],
    )
    .await;
    assert_eq!(values(&two), ["key2:9", "key4:9"]);

    // Render, then subscribe from the document's id: exactly what came after.
    produce_keyed(&p, &topic, 6, 10..15);
    p.flush().await;
    let id = doc["id"].as_str().unwrap();
    let mut sse = get_stream(&h2, &format!("/{topic}?lastEventId={id}"), &[]).await;
    let mut seen = Continuity::starting_at((0..6).map(|k| format!("key{k}")), 10);
    read_checked(&mut sse, 30, &mut seen).await;
    no_event_for(&mut sse, Duration::from_millis(300)).await;

    // `from=latest`: no records, the live position.
    let (status, latest) = json_of(&h2, &format!("/{topic}?from=latest&format=json"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(latest["records"], json!([]));
    produce_keyed(&p, &topic, 6, 15..17);
    p.flush().await;
    let id = latest["id"].as_str().unwrap();
    let mut sse = get_stream(&h2, &format!("/{topic}"), &[("last-event-id", id)]).await;
    let mut seen = Continuity::starting_at((0..6).map(|k| format!("key{k}")), 15);
    read_checked(&mut sse, 12, &mut seen).await;
    no_event_for(&mut sse, Duration::from_millis(300)).await;

    // Only snapshots and the live position are documents.
    let (status, why) = json_of(&h2, &format!("/{topic}?from=earliest&format=json"), &[]).await;
    assert_eq!(status, 400);
    assert!(why
        .as_str()
        .unwrap()
        .contains("from=snapshot or from=latest"));
    gw.shutdown().await;

    // Past KSG_SNAPSHOT_BYTES: 413, with the reason.
    let small = gateway(&cluster, &[("KSG_SNAPSHOT_BYTES", "1024")]).await;
    let h2 = h2_connect(&small).await;
    let (status, why) = json_of(&h2, &format!("/{topic}?from=snapshot&format=json"), &[]).await;
    assert_eq!(status, 413, "{why}");
    assert!(why.as_str().unwrap().contains("KSG_SNAPSHOT_BYTES"));
    let refused = "ksg_streams_refused_total{reason=\"snapshot_too_large\"}";
    assert_eq!(metric(&metrics(&small).await, refused), 1.0);
    small.shutdown().await;
}
