//! Streams of several keys (`/{topic}?key=A&key=B`): exactly the records of those keys, live,
//! from `earliest` (a catch-up reader), from a snapshot, resumed from the same replica's memory,
//! on another replica (its own interleaving of partitions) and after a restart, over HTTP/2 and
//! HTTP/1.1; and the checks on the parameters. Records come from librdkafka's default
//! partitioner, as users' producers place them.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use kafka_sse_gateway::position;
use support::*;

/// Keys `key0`..`key11` are produced; the streams ask for three of them.
const KEYS: usize = 12;
const WANT: [&str; 3] = ["key1", "key4", "key7"];
const PARTITIONS: i32 = 3;

/// The path of a stream of `WANT`, with the keys in another order and one repeated (the same
/// stream) and `extra` parameters.
fn path(topic: &str, extra: &str) -> String {
    format!("/{topic}?key=key7&key=key1&key=key4&key=key1{extra}")
}

type Placement = HashMap<String, (i32, i64)>;

/// The records of the wanted keys with seqs in `seqs` that the position `id` does not cover,
/// by key, in order.
fn uncovered(
    id: &str,
    seqs: Range<u64>,
    at: &Placement,
    topic: &str,
) -> BTreeMap<String, Vec<u64>> {
    let from = position::decode(id, topic).unwrap();
    WANT.iter()
        .map(|k| {
            let rest = seqs
                .clone()
                .filter(|s| {
                    let (p, offset) = at[&format!("{k}:{s}")];
                    offset >= from.offset(p).unwrap_or(0)
                })
                .collect();
            (k.to_string(), rest)
        })
        .collect()
}

/// Every wanted key's records with seqs in `seqs`.
fn all_of(seqs: Range<u64>) -> BTreeMap<String, Vec<u64>> {
    WANT.iter()
        .map(|k| (k.to_string(), seqs.clone().collect()))
        .collect()
}

/// Reads exactly the records `expected` (by key, in order per key), each with a full id that
/// covers it, then nothing more for 300 ms (heartbeats and id-only blocks aside).
async fn read_exactly(
    sse: &mut SseReader,
    expected: &BTreeMap<String, Vec<u64>>,
    at: &Placement,
    topic: &str,
) {
    let n = expected.values().map(Vec::len).sum();
    let mut got: BTreeMap<String, Vec<u64>> =
        WANT.iter().map(|k| (k.to_string(), Vec::new())).collect();
    for event in sse.events(n).await {
        let text = event.text();
        let (key, seq) = text.split_once(':').expect("key:seq");
        let list = got
            .get_mut(key)
            .unwrap_or_else(|| panic!("a record of a key not asked for: {text}"));
        list.push(seq.parse().unwrap());
        let id = position::decode(event.id.as_deref().expect("an id"), topic).unwrap();
        assert_eq!(id.entries.len(), PARTITIONS as usize, "full ids");
        let (p, offset) = at[&text];
        assert!(id.offset(p).unwrap() > offset, "the id of {text} covers it");
    }
    assert_eq!(&got, expected, "exactly these records, in order per key");
    no_event_for(sse, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_several_keys_is_exact_live_caught_up_snapshotted_and_resumed_anywhere() {
    let cluster = Cluster::new();
    let topic = unique_topic("multikey");
    cluster.create_topic(&topic, PARTITIONS).await;
    let gw1 = gateway(&cluster, &[]).await;
    let gw2 = gateway(&cluster, &[]).await;
    // gw2 has the topic attached (its own interleaving of partitions) before anything is produced.
    let (_, mut watcher) = get(&h2_connect(&gw2).await, &format!("/{topic}"), &[]).await;
    watcher.next_block().await.unwrap();

    let h2 = h2_connect(&gw1).await;
    let mut live = get_stream(&h2, &path(&topic, ""), &[]).await;
    let start = live.next_block().await.unwrap().id.unwrap();
    let mut h1 = h1_stream(&gw1, &path(&topic, ""), &[]).await;
    h1.next_block().await.unwrap();
    // Another stream of the same keys, named otherwise, on the same connection.
    let mut twin = get_stream(&h2, &format!("/{topic}?key=key4&key=key7&key=key1"), &[]).await;
    twin.next_block().await.unwrap();

    let p = cluster.producer();
    produce_keyed(&p, &topic, KEYS, 0..20);
    p.flush().await;
    let at = placement(&cluster, &topic).await;
    let first = uncovered(&start, 0..20, &at, &topic);
    assert_eq!(first, all_of(0..20));
    for sse in [&mut live, &mut h1, &mut twin] {
        read_exactly(sse, &first, &at, &topic).await;
    }
    // Where clients that dropped after about half of it resume from.
    let mid = {
        let mut again = get_stream(&h2, &path(&topic, "&from=earliest"), &[]).await;
        let events = again.events(30).await;
        events[29].id.clone().unwrap()
    };

    // From earliest: a catch-up reader reads Kafka for the three keys.
    let mut earliest = get_stream(&h2, &path(&topic, "&from=earliest"), &[]).await;
    read_exactly(&mut earliest, &all_of(0..20), &at, &topic).await;

    // A snapshot: the latest value of each key, then `event: live`.
    let mut snap = get_stream(&h2, &path(&topic, "&from=snapshot"), &[]).await;
    let events = snap.events(4).await;
    let latest: HashSet<String> = events[..3].iter().map(Block::text).collect();
    let expected: HashSet<String> = WANT.iter().map(|k| format!("{k}:19")).collect();
    assert_eq!(latest, expected);
    assert_eq!(events[3].event.as_deref(), Some("live"));

    // Resumed from `mid`: on the same replica and on the other one (its own interleaving of
    // partitions), from their memory: exactly what `mid` does not cover.
    let rest = uncovered(&mid, 0..20, &at, &topic);
    assert!(rest.values().map(Vec::len).sum::<usize>() == 30);
    let mut resumed = Vec::new();
    for replica in [&gw1, &gw2] {
        let h2 = h2_connect(replica).await;
        let mut sse = get_stream(&h2, &path(&topic, ""), &[("last-event-id", &mid)]).await;
        read_exactly(&mut sse, &rest, &at, &topic).await;
        assert_eq!(
            metric(
                &metrics(replica).await,
                "ksg_resumes_total{source=\"memory\"}"
            ),
            1.0
        );
        resumed.push((h2, sse));
    }

    // Live again: every stream gets the next round; the resumed ones have left their own
    // queues for their connections' logs.
    produce_keyed(&p, &topic, KEYS, 20..25);
    p.flush().await;
    let at = placement(&cluster, &topic).await;
    for sse in [&mut live, &mut h1, &mut twin, &mut earliest, &mut snap] {
        read_exactly(sse, &all_of(20..25), &at, &topic).await;
    }
    for (_, sse) in &mut resumed {
        read_exactly(sse, &all_of(20..25), &at, &topic).await;
    }
    for gw in [&gw1, &gw2] {
        wait_metric(gw, "ksg_streams_own_queue", 0.0).await;
    }
    gw2.shutdown().await;

    // A restart, with records produced while no gateway runs: the live stream's last id (the
    // live position, given as the gateway stops) resumes it with exactly the records after it,
    // and `mid` with everything after it, read from Kafka.
    gw1.shutdown().await;
    while live.next_block().await.is_some() {}
    let last = live.last_id.clone().unwrap();
    produce_keyed(&p, &topic, KEYS, 25..30);
    p.flush().await;
    let at = placement(&cluster, &topic).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let mut after_last = get_stream(&h2, &path(&topic, ""), &[("last-event-id", &last)]).await;
    assert_eq!(uncovered(&last, 0..30, &at, &topic), all_of(25..30));
    read_exactly(&mut after_last, &all_of(25..30), &at, &topic).await;
    let mut from_mid =
        h1_stream(&gw, &format!("{}&lastEventId={mid}", path(&topic, "")), &[]).await;
    read_exactly(
        &mut from_mid,
        &uncovered(&mid, 0..30, &at, &topic),
        &at,
        &topic,
    )
    .await;
    assert!(metric(&metrics(&gw).await, "ksg_resumes_total{source=\"kafka\"}") >= 2.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_parameters_are_decoded_like_path_keys_and_bounded() {
    let cluster = Cluster::new();
    let topic = unique_topic("multikeyargs");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(&cluster, &[("KSG_MAX_KEYS_PER_STREAM", "3")]).await;
    let h2 = h2_connect(&gw).await;
    let refused = |reason: &str| format!("ksg_streams_refused_total{{reason=\"{reason}\"}}");
    for (query, why) in [
        (
            "?key=a&key=b&key=c&key=d",
            "4 keys asked; a stream takes at most 3 (KSG_MAX_KEYS_PER_STREAM)",
        ),
        ("?key=a&key=", "empty key"),
        ("?key=%zz", "invalid percent-encoding"),
    ] {
        let (head, mut body) = get(&h2, &format!("/{topic}{query}"), &[]).await;
        assert_eq!(head.status, 400, "{query}");
        let text = body_text(&mut body).await;
        assert!(text.contains(why), "{query}: {text}");
    }
    let (head, mut body) = get(&h2, &format!("/{topic}/a?key=b"), &[]).await;
    assert_eq!(head.status, 400);
    assert!(body_text(&mut body).await.contains("names its key"));
    assert_eq!(metric(&metrics(&gw).await, &refused("bad_keys")), 4.0);

    // Keys of any bytes, percent-encoded as in a path; a `+` is a plus. Three keys, named
    // with repeats: within the limit.
    let mut sse = get_stream(
        &h2,
        &format!("/{topic}?key=a%2Fb%20c&key=x+y&key=%FF%00&key=x%2By"),
        &[],
    )
    .await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    for (key, value) in [
        (&b"a/b c"[..], "slash-space"),
        (b"a/b", "other"),
        (b"x+y", "plus"),
        (b"x y", "space"),
        (&[0xff, 0][..], "binary"),
        (b"", "empty"),
    ] {
        p.send(&topic, None, Some(key), Some(value.as_bytes()));
    }
    p.send(&topic, None, None, Some(b"keyless"));
    p.flush().await;
    let got: HashSet<String> = sse.events(3).await.iter().map(Block::text).collect();
    let want: HashSet<String> = ["slash-space", "plus", "binary"].map(String::from).into();
    assert_eq!(got, want);
    no_event_for(&mut sse, Duration::from_millis(300)).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_fixes_keys_and_a_format_that_a_request_cannot_widen() {
    let cluster = Cluster::new();
    let topic = unique_topic("routed");
    cluster.create_topic(&topic, 2).await;
    let routes = format!("/tech={topic}?key=GOOG&key=AAPL,/watch={topic}?format=envelope");
    let gw = gateway(&cluster, &[("KSG_ROUTES", routes.as_str())]).await;
    let h2 = h2_connect(&gw).await;
    let mut tech = get_stream(&h2, "/tech", &[]).await;
    let mut goog = get_stream(&h2, "/tech?key=GOOG", &[]).await;
    let mut watch = get_stream(&h2, "/watch?key=MSFT", &[]).await;
    for sse in [&mut tech, &mut goog, &mut watch] {
        sse.next_block().await.unwrap();
    }
    for (query, why) in [
        ("/tech?key=GOOG&key=MSFT", "only its own keys"),
        ("/watch?format=plain", "format=envelope only"),
    ] {
        let (head, mut body) = get(&h2, query, &[]).await;
        assert_eq!(head.status, 400, "{query}");
        assert!(body_text(&mut body).await.contains(why), "{query}");
    }
    let p = cluster.producer();
    for key in ["GOOG", "MSFT", "AAPL"] {
        p.send(
            &topic,
            None,
            Some(key.as_bytes()),
            Some(format!("{key}:1").as_bytes()),
        );
    }
    p.flush().await;
    let mut got: Vec<String> = tech.events(2).await.iter().map(Block::text).collect();
    got.sort();
    assert_eq!(got, ["AAPL:1", "GOOG:1"]);
    assert_eq!(goog.next_event().await.unwrap().text(), "GOOG:1");
    let envelope: serde_json::Value =
        serde_json::from_str(&watch.next_event().await.unwrap().text()).unwrap();
    assert_eq!(
        (envelope["key"].as_str(), envelope["value"].as_str()),
        (Some("MSFT"), Some("MSFT:1"))
    );
    for sse in [&mut tech, &mut goog, &mut watch] {
        no_event_for(sse, Duration::from_millis(300)).await;
    }
    gw.shutdown().await;
}
