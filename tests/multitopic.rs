//! Streams of several topics (`/{topicA},{topicB}`): every record of each topic, its event typed
//! with its topic (plain) or saying it (envelope), one id covering every topic's position;
//! live, from `earliest`, resumed from memory and on another replica (from Kafka), a snapshot
//! and one JSON document, keys and filters, HTTP/2 and HTTP/1.1, a drain; and the checks on the
//! path, the limit, the id and the token. Records come from librdkafka's default partitioner.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use kafka_sse_gateway::position;
use serde_json::{json, Value};
use support::*;

const KEYS: usize = 4;

/// Where each record of a topic is: `key:seq` → (partition, offset).
type Placement = HashMap<String, (i32, i64)>;

/// (topic, key) → the sequence numbers received, in order.
type Got = BTreeMap<(String, String), Vec<u64>>;

/// The topic and `key:seq` of an event: from its type (plain) or its envelope.
fn parse(event: &Block) -> (String, String, u64) {
    let text = event.text();
    let (topic, value) = match serde_json::from_str::<Value>(&text) {
        Ok(envelope) if envelope.get("topic").is_some() => (
            envelope["topic"].as_str().unwrap().to_string(),
            envelope["value"].as_str().unwrap().to_string(),
        ),
        _ => (
            event.event.clone().expect("a record's type is its topic"),
            text,
        ),
    };
    let (key, seq) = value.split_once(':').expect("key:seq");
    (topic, key.to_string(), seq.parse().unwrap())
}

/// Reads `n` events, then nothing more for 300 ms.
async fn read(sse: &mut SseReader, n: usize) -> (Got, Vec<Block>) {
    let events = sse.events(n).await;
    let mut got = Got::new();
    for event in &events {
        let (topic, key, seq) = parse(event);
        got.entry((topic, key)).or_default().push(seq);
    }
    no_event_for(sse, Duration::from_millis(300)).await;
    (got, events)
}

/// Every record of `topics` with seqs in `seqs`, of the keys `keys` (`None`: all), that the
/// position `id` (of the topics, in order) does not cover.
fn expected(
    topics: &[&String],
    seqs: std::ops::Range<u64>,
    keys: Option<&[&str]>,
    after: Option<(&str, &[Placement])>,
) -> Got {
    let mut out = Got::new();
    for (i, topic) in topics.iter().enumerate() {
        for k in 0..KEYS {
            let key = format!("key{k}");
            if keys.is_some_and(|keys| !keys.contains(&key.as_str())) {
                continue;
            }
            let list: Vec<u64> = seqs
                .clone()
                .filter(|s| match after {
                    None => true,
                    Some((id, at)) => {
                        let part = id.split('.').nth(i).unwrap();
                        if part.is_empty() {
                            return true;
                        }
                        let from = position::decode(part, topic).unwrap();
                        let (p, offset) = at[i][&format!("{key}:{s}")];
                        offset >= from.offset(p).unwrap_or(0)
                    }
                })
                .collect();
            if !list.is_empty() {
                out.insert((topic.to_string(), key), list);
            }
        }
    }
    out
}

fn count(got: &Got) -> usize {
    got.values().map(Vec::len).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_several_topics_is_exact_live_caught_up_snapshotted_and_resumed_anywhere() {
    let cluster = Cluster::new();
    let (a, b) = (unique_topic("multia"), unique_topic("multib"));
    cluster.create_topic(&a, 2).await;
    cluster.create_topic(&b, 3).await;
    let topics = sorted(&a, &b);
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let both = format!("/{a},{b}");
    let mut plain = get_stream(&h2, &both, &[]).await;
    let start = plain.next_block().await.unwrap().id.expect("a start id");
    assert_eq!(start.split('.').count(), 2, "one part per topic: {start}");
    let mut reversed = get_stream(&h2, &format!("/{b},{a},{a}?key=key1"), &[]).await;
    let mut envelope = get_stream(&h2, &format!("{both}?format=envelope"), &[]).await;
    let mut h1 = h1_stream(&gw, &both, &[]).await;
    for sse in [&mut reversed, &mut envelope, &mut h1] {
        sse.next_block().await.unwrap();
    }
    let p = cluster.producer();
    produce_keyed(&p, &a, KEYS, 0..10);
    produce_keyed(&p, &b, KEYS, 0..10);
    p.flush().await;
    let all = expected(&topics, 0..10, None, None);
    let (got, events) = read(&mut plain, 80).await;
    assert_eq!(got, all);
    for event in &events {
        let id = event.id.as_deref().expect("every event has an id");
        let parts: Vec<&str> = id.split('.').collect();
        assert!(
            parts.len() == 2 && parts.iter().all(|p| !p.is_empty()),
            "{id}"
        );
    }
    assert_eq!(read(&mut h1, 80).await.0, all);
    assert_eq!(read(&mut envelope, 80).await.0, all);
    let key1 = expected(&topics, 0..10, Some(&["key1"]), None);
    assert_eq!(read(&mut reversed, 20).await.0, key1);

    // From earliest: a catch-up reader per topic.
    let mut earliest = get_stream(&h2, &format!("{both}?from=earliest"), &[]).await;
    assert_eq!(read(&mut earliest, 80).await.0, all);

    // Resumed after the 30th event, here (memory) and on another replica (Kafka).
    let mid = events[29].id.clone().unwrap();
    produce_keyed(&p, &a, KEYS, 10..15);
    produce_keyed(&p, &b, KEYS, 10..15);
    p.flush().await;
    let at = [
        placement(&cluster, topics[0]).await,
        placement(&cluster, topics[1]).await,
    ];
    let rest = expected(&topics, 0..15, None, Some((&mid, &at)));
    assert_eq!(count(&rest), 120 - 30);
    let gw2 = gateway(&cluster, &[]).await;
    for replica in [&gw, &gw2] {
        let h2 = h2_connect(replica).await;
        let mut resumed = get_stream(&h2, &both, &[("last-event-id", &mid)]).await;
        assert_eq!(read(&mut resumed, count(&rest)).await.0, rest);
    }

    // A snapshot: each topic's latest of each key, then one `event: live` for both.
    let mut snap = get_stream(&h2, &format!("{both}?from=snapshot"), &[]).await;
    let events = snap.events(2 * KEYS + 1).await;
    let latest: Vec<(String, String, u64)> = events[..2 * KEYS].iter().map(parse).collect();
    assert!(latest.iter().all(|(_, _, seq)| *seq == 14), "{latest:?}");
    let live = &events[2 * KEYS];
    assert_eq!(live.event.as_deref(), Some("live"));
    let data: Value = serde_json::from_str(&live.text()).unwrap();
    assert_eq!(data["snapshot_events"], json!(2 * KEYS));
    no_event_for(&mut snap, Duration::from_millis(300)).await;
    // The JSON document, and a stream from its id: exactly what came after.
    let (head, mut body) = get(&h2, &format!("{both}?from=snapshot&format=json"), &[]).await;
    assert_eq!(head.status, 200);
    let doc: Value = serde_json::from_str(&body_text(&mut body).await).unwrap();
    let records = doc["records"].as_array().unwrap();
    assert_eq!(records.len(), 2 * KEYS);
    let named: std::collections::HashSet<&str> = records
        .iter()
        .map(|r| r["topic"].as_str().unwrap())
        .collect();
    assert_eq!(named.len(), 2, "records of both topics");
    produce_keyed(&p, &a, KEYS, 15..17);
    produce_keyed(&p, &b, KEYS, 15..17);
    p.flush().await;
    let id = doc["id"].as_str().unwrap();
    let mut after = get_stream(&h2, &format!("{both}?lastEventId={id}"), &[]).await;
    assert_eq!(
        read(&mut after, 16).await.0,
        expected(&topics, 15..17, None, None)
    );
    // The live stream got all of them too; then a tombstone keeps its type.
    assert_eq!(
        read(&mut plain, 56).await.0,
        expected(&topics, 10..17, None, None)
    );
    p.send(&a, None, Some(b"key0"), None);
    p.flush().await;
    let tombstone = plain.next_event().await.unwrap();
    assert_eq!(tombstone.event.as_deref(), Some("delete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_stream_of_several_topics_resumes_on_another_replica_with_nothing_lost() {
    let cluster = Cluster::new();
    let (a, b) = (unique_topic("draina"), unique_topic("drainb"));
    cluster.create_topic(&a, 2).await;
    cluster.create_topic(&b, 2).await;
    let topics = sorted(&a, &b);
    let leaving = gateway(&cluster, &[("KSG_DRAIN_DELAY_SECS", "1")]).await;
    let staying = gateway(&cluster, &[]).await;
    let both = format!("/{a},{b}?key=key0&key=key2");
    let mut sse = get_stream(&h2_connect(&leaving).await, &both, &[]).await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    produce_keyed(&p, &a, KEYS, 0..5);
    produce_keyed(&p, &b, KEYS, 0..5);
    p.flush().await;
    let first = expected(&topics, 0..5, Some(&["key0", "key2"]), None);
    let (got, _) = read(&mut sse, count(&first)).await;
    assert_eq!(got, first);
    assert!(leaving.drain_and_shutdown().await, "drained in time");
    while sse.next_block().await.is_some() {}
    let id = sse.last_id.clone().expect("an id");
    produce_keyed(&p, &a, KEYS, 5..8);
    produce_keyed(&p, &b, KEYS, 5..8);
    p.flush().await;
    let mut resumed = get_stream(
        &h2_connect(&staying).await,
        &both,
        &[("last-event-id", &id)],
    )
    .await;
    let rest = expected(&topics, 5..8, Some(&["key0", "key2"]), None);
    assert_eq!(read(&mut resumed, count(&rest)).await.0, rest);
}

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_topics_are_bounded_checked_and_each_allowed_by_the_token() {
    let cluster = Cluster::new();
    let (a, b, c) = (unique_topic("ta"), unique_topic("tb"), unique_topic("tc"));
    for t in [&a, &b, &c] {
        cluster.create_topic(t, 1).await;
    }
    let gw = gateway(
        &cluster,
        &[
            ("KSG_MAX_TOPICS_PER_STREAM", "2"),
            ("KSG_AUTH", "jwt"),
            ("KSG_AUTH_JWT_SECRET", SECRET),
        ],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let every = token(&["/*".to_string()], 300);
    let auth = [("authorization", every.as_str())];
    let refused = |status: u16, why: &str| (status, why.to_string());
    let cases = [
        (
            format!("/{a},{b},{c}"),
            refused(
                400,
                "3 topics asked; a stream takes at most 2 (KSG_MAX_TOPICS_PER_STREAM)",
            ),
        ),
        (format!("/{a},"), refused(400, "not a valid topic name")),
        (
            format!("/{a},{b}?lastEventId=AAAA"),
            refused(400, "not one of a stream of these 2 topics"),
        ),
        (format!("/{a},{b}?lastEventId=AAAA.BBBB"), refused(400, "")),
    ];
    for (path, (status, why)) in cases {
        let (head, mut body) = get(&h2, &path, &auth).await;
        assert_eq!(head.status, status, "{path}");
        let text = body_text(&mut body).await;
        assert!(text.contains(&why), "{path}: {text}");
    }
    // Each topic must be allowed: a token of one of them cannot open both.
    let one = token(&[format!("/{a}")], 300);
    let (head, _) = get(&h2, &format!("/{a},{b}"), &[("authorization", &one)]).await;
    assert_eq!(head.status, 403);
    // A topic named twice is one topic: its own path is what the token must allow.
    let (head, _) = get(&h2, &format!("/{a},{a}"), &[("authorization", &one)]).await;
    assert_eq!(head.status, 200);
    // A token's filter for one topic holds for that topic only.
    let mixed = token(&[format!("/{a}"), format!("/{b}?header.tenant=x")], 300);
    let mut sse = get_stream(&h2, &format!("/{a},{b}"), &[("authorization", &mixed)]).await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    p.produce(&b, Some("key0"), Some("key0:0")).await;
    p.produce(&a, Some("key0"), Some("key0:0")).await;
    let event = sse.next_event().await.unwrap();
    assert_eq!(
        event.event.as_deref(),
        Some(a.as_str()),
        "b's record has no tenant"
    );
    no_event_for(&mut sse, Duration::from_millis(300)).await;
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"bad_topics\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_several_topics_keeps_the_gap_and_expiry_rules() {
    let cluster = Cluster::new();
    let (a, b) = (unique_topic("gapa"), unique_topic("gapb"));
    cluster.create_topic(&a, 2).await;
    cluster.create_topic(&b, 2).await;
    let topics = sorted(&a, &b);
    let p = cluster.producer();
    produce_keyed(&p, &a, KEYS, 0..3);
    produce_keyed(&p, &b, KEYS, 0..3);
    p.flush().await;
    let gw = gateway(
        &cluster,
        &[
            ("KSG_AUTH", "jwt"),
            ("KSG_AUTH_JWT_SECRET", SECRET),
            ("KSG_AUTH_EXPIRY_NOTICE_SECS", "1"),
        ],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let patterns = vec![format!("/{a}"), format!("/{b}")];
    let fresh = token(&patterns, 300);
    let auth = [("authorization", fresh.as_str())];
    // The first topic's part of the id is ahead of its log; the second's is its start.
    let ahead = position::encode_dense(position::fingerprint(topics[0]), &[1_000_000, 0]);
    let start = position::encode_dense(position::fingerprint(topics[1]), &[0, 0]);
    let id = format!("{ahead}.{start}");
    let both = format!("/{a},{b}");
    let mut sse = get_stream(&h2, &both, &[auth[0], ("last-event-id", &id)]).await;
    let gap = sse.next_event().await.unwrap();
    assert_eq!(gap.event.as_deref(), Some("gap"));
    let data: Value = serde_json::from_str(&gap.text()).unwrap();
    assert_eq!(data["topic"], json!(topics[0]), "{data}");
    assert_eq!(data["partitions"][0]["partition"], json!(0));
    let all = expected(&topics, 0..3, None, None);
    assert_eq!(read(&mut sse, count(&all)).await.0, all);

    // A token that expires ends the stream with `event: expired`; a fresh one resumes it
    // exactly after its last event, in every topic.
    let short = token(&patterns, 3);
    let mut sse = get_stream(&h2, &both, &[("authorization", &short)]).await;
    sse.next_block().await.unwrap();
    produce_keyed(&p, &a, KEYS, 3..6);
    produce_keyed(&p, &b, KEYS, 3..6);
    p.flush().await;
    let (mut got, mut kinds) = (Got::new(), Vec::new());
    while let Some(block) = sse.next_block().await {
        match block.event.as_deref() {
            Some("expiring") | Some("expired") => kinds.push(block.event.clone().unwrap()),
            _ if block.data.is_empty() => {}
            _ => {
                let (topic, key, seq) = parse(&block);
                got.entry((topic, key)).or_default().push(seq);
            }
        }
    }
    assert_eq!(got, expected(&topics, 3..6, None, None));
    assert_eq!(kinds, ["expiring", "expired"]);
    produce_keyed(&p, &a, KEYS, 6..8);
    produce_keyed(&p, &b, KEYS, 6..8);
    p.flush().await;
    let last = sse.last_id.clone().unwrap();
    let mut resumed = get_stream(&h2, &both, &[auth[0], ("last-event-id", &last)]).await;
    let rest = expected(&topics, 6..8, None, None);
    assert_eq!(read(&mut resumed, count(&rest)).await.0, rest);
}

/// The two topics, sorted by name (the order of an id's parts).
fn sorted<'a>(a: &'a String, b: &'a String) -> Vec<&'a String> {
    let mut topics = vec![a, b];
    topics.sort();
    topics
}

/// A bearer token allowing `patterns` for `secs` more seconds.
fn token(patterns: &[String], secs: u64) -> String {
    let exp = kafka_sse_gateway::auth::now_secs() + secs;
    let claims = json!({"sub": "s", "exp": exp, "ksg": {"subscribe": patterns}});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    format!(
        "Bearer {}",
        encode(&Header::default(), &claims, &key).unwrap()
    )
}
