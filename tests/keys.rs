//! Key streams are exact whatever partitioner the producers use: librdkafka's default
//! (`consistent_random`, CRC-32), the Java client's (murmur2), random placement, and explicit
//! partitions that spread one key over every partition. Each case checks the exact records of
//! every key — no loss, no duplicate, in order per partition — from `earliest`, live, a
//! snapshot, a timestamp (real broker) and a resume after a restart of the gateway.
//!
//! A promised partitioner (`KSG_KEY_PARTITIONER`) gives short ids; a record that breaks the
//! promise, seen live or by a catch-up reader, ends the short-id streams with an id that any
//! replica reads as "every partition", so their clients lose nothing.

mod support;

use std::collections::HashMap;

use kafka_sse_gateway::partitioner::KeyPartitioner;
use kafka_sse_gateway::position;
use support::*;

const PARTITIONS: i32 = 6;
const KEYS: [&str; 4] = ["K1", "K2", "K3", "K4"];
/// Records per key in each round.
const PER_KEY: u64 = 12;

/// How the test producer places keys.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// librdkafka's defaults (`consistent_random`): what Python, Go, .NET, node-rdkafka and
    /// kcat producers do unless told otherwise.
    LibraryDefault,
    /// `murmur2_random`: the Java client's default.
    Murmur2,
    /// `random`: keys ignored.
    Random,
    /// The producer names the partition: record `seq` of every key goes to `seq % 6`.
    Explicit,
}

fn producer_for(cluster: &Cluster, placement: Placement) -> Producer_ {
    match placement {
        Placement::LibraryDefault | Placement::Explicit => cluster.producer(),
        // These cases are about the partitioner, so it is set.
        Placement::Murmur2 => cluster.producer_with(&[("partitioner", "murmur2_random")]),
        Placement::Random => cluster.producer_with(&[("partitioner", "random")]),
    }
}

/// Queues `{key}:{seq}` for every key and seq, with CreateTime `recent_base_ts() + seq`.
fn produce_round(p: &Producer_, topic: &str, placement: Placement, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        for key in KEYS {
            let value = format!("{key}:{seq}");
            let mut record = rdkafka::producer::BaseRecord::<str, str>::to(topic)
                .key(key)
                .payload(&value)
                .timestamp(recent_base_ts() + seq as i64);
            if let Placement::Explicit = placement {
                record = record.partition((seq % PARTITIONS as u64) as i32);
            }
            p.0.send(record).map_err(|(e, _)| e).expect("queued");
        }
    }
}

/// Checks that `events` are exactly the records `{key}:{seq}` for `seqs`: each once, in offset
/// order within each partition, each id a full position covering the record.
fn check_exact(
    events: &[Block],
    key: &str,
    seqs: impl IntoIterator<Item = u64>,
    at: &HashMap<String, (i32, i64)>,
    topic: &str,
    partitions: usize,
) {
    let mut got: Vec<String> = events.iter().map(Block::text).collect();
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    for event in events {
        let text = event.text();
        let (p, offset) = at[&text];
        let previous = last_offset.insert(p, offset);
        assert!(
            previous.is_none_or(|o| o < offset),
            "{text} at {p}/{offset} after {previous:?}: out of order"
        );
        let id = position::decode(event.id.as_deref().expect("an id"), topic).unwrap();
        assert_eq!(id.entries.len(), partitions, "a full id");
        assert!(id.offset(p).unwrap() > offset, "the id covers {text}");
    }
    got.sort();
    let mut expected: Vec<String> = seqs.into_iter().map(|s| format!("{key}:{s}")).collect();
    expected.sort();
    assert_eq!(got, expected, "key {key}: every record once");
}

/// The seqs below `end` of `key` whose records lie at or after the position `id` names.
fn not_covered(
    id: &str,
    key: &str,
    end: u64,
    at: &HashMap<String, (i32, i64)>,
    topic: &str,
) -> Vec<u64> {
    let from = position::decode(id, topic).unwrap();
    let rest: Vec<u64> = (0..end)
        .filter(|s| {
            let (p, offset) = at[&format!("{key}:{s}")];
            offset >= from.offset(p).unwrap()
        })
        .collect();
    rest
}

/// Reads `n` events; nothing was produced after them, so an event within the next 300 ms
/// would be a duplicate (heartbeats and id-only blocks are fine).
async fn exactly(sse: &mut SseReader, n: usize) -> Vec<Block> {
    let events = sse.events(n).await;
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        match sse.next_block_within(left).await {
            Ok(Some(block)) => assert!(block.data.is_empty(), "an extra event: {block:?}"),
            Ok(None) | Err(()) => break,
        }
    }
    events
}

async fn exact_case(placement: Placement) {
    let cluster = Cluster::new();
    let topic = unique_topic("keys");
    cluster.create_topic(&topic, PARTITIONS).await;
    let p = producer_for(&cluster, placement);
    produce_round(&p, &topic, placement, 0..PER_KEY);
    p.flush().await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;

    // Live streams opened before the second round.
    let mut live = Vec::new();
    for key in KEYS {
        let (head, mut sse) = get(&h2, &format!("/{topic}/{key}"), &[]).await;
        assert_eq!(head.status, 200);
        let start = sse.next_block().await.unwrap().id.unwrap();
        assert_eq!(
            position::decode(&start, &topic).unwrap().entries.len(),
            PARTITIONS as usize,
            "key streams carry full ids by default"
        );
        live.push(sse);
    }

    // From earliest: the whole first round of each key.
    let at = support::placement(&cluster, &topic).await;
    let spread: usize = KEYS
        .iter()
        .map(|k| {
            (0..PER_KEY)
                .map(|s| at[&format!("{k}:{s}")].0)
                .collect::<std::collections::HashSet<_>>()
                .len()
        })
        .max()
        .unwrap();
    eprintln!("{placement:?}: the most spread key is on {spread} partitions");
    if let Placement::Explicit = placement {
        assert_eq!(spread, PARTITIONS as usize, "one key on every partition");
    }
    let mut resume_ids = Vec::new();
    for key in KEYS {
        let (_, mut sse) = get(&h2, &format!("/{topic}/{key}?from=earliest"), &[]).await;
        let events = exactly(&mut sse, PER_KEY as usize).await;
        check_exact(&events, key, 0..PER_KEY, &at, &topic, PARTITIONS as usize);
        // Where a client that dropped after 5 events resumes from.
        resume_ids.push(events[4].id.clone().unwrap());
    }

    // Live: the second round, exactly.
    produce_round(&p, &topic, placement, PER_KEY..2 * PER_KEY);
    p.flush().await;
    let at = support::placement(&cluster, &topic).await;
    let mut live_ids = Vec::new();
    for (key, sse) in KEYS.iter().zip(&mut live) {
        let events = exactly(sse, PER_KEY as usize).await;
        live_ids.push(events[4].id.clone().unwrap());
        check_exact(
            &events,
            key,
            PER_KEY..2 * PER_KEY,
            &at,
            &topic,
            PARTITIONS as usize,
        );
    }

    // Snapshot of a key: its latest value, then live. A key on several partitions keeps the
    // record with the latest timestamp; the mock cluster gives every record the same one, so
    // there it may be the last record of any of the key's partitions.
    let (_, mut snap) = get(&h2, &format!("/{topic}/K2?from=snapshot"), &[]).await;
    let events = snap.events(2).await;
    let latest = format!("K2:{}", 2 * PER_KEY - 1);
    if cluster.is_real() || spread == 1 {
        assert_eq!(events[0].text(), latest);
    } else {
        let tails: std::collections::HashSet<String> = (0..PARTITIONS)
            .filter_map(|p| {
                (0..2 * PER_KEY)
                    .map(|s| format!("K2:{s}"))
                    .filter(|v| at[v].0 == p)
                    .max_by_key(|v| at[v].1)
            })
            .collect();
        assert!(
            tails.contains(&events[0].text()),
            "{events:?} not in {tails:?}"
        );
    }
    assert_eq!(events[1].event.as_deref(), Some("live"));
    assert!(
        snap.next_block_within(std::time::Duration::from_millis(300))
            .await
            .is_err(),
        "nothing after the live marker"
    );
    drop(live);

    // Resume with the id of the fifth live event: on the same replica (from its memory), and
    // on another replica with its own interleaving: exactly what the id does not cover.
    let other = gateway(&cluster, &[]).await;
    for replica in [&gw, &other] {
        let h2 = h2_connect(replica).await;
        for (key, id) in KEYS.iter().zip(&live_ids) {
            let rest = not_covered(id, key, 2 * PER_KEY, &at, &topic);
            assert_eq!(rest.len() as u64, PER_KEY - 5);
            let (_, mut sse) = get(&h2, &format!("/{topic}/{key}"), &[("last-event-id", id)]).await;
            let events = exactly(&mut sse, rest.len()).await;
            check_exact(&events, key, rest, &at, &topic, PARTITIONS as usize);
        }
    }
    other.shutdown().await;
    let memory = metric(&metrics(&gw).await, "ksg_resumes_total{source=\"memory\"}");
    assert_eq!(
        memory,
        KEYS.len() as f64,
        "the same replica resumed from memory"
    );
    gw.shutdown().await;

    // A restart, with records produced while no gateway runs: each client resumes with the id
    // of its fifth event and gets exactly the records that id does not cover (spread keys
    // arrive in offset order per partition only, so which five came first varies).
    produce_round(&p, &topic, placement, 2 * PER_KEY..3 * PER_KEY);
    p.flush().await;
    let at = support::placement(&cluster, &topic).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    for (key, id) in KEYS.iter().zip(&resume_ids) {
        let (head, mut sse) = get(&h2, &format!("/{topic}/{key}"), &[("last-event-id", id)]).await;
        assert_eq!(head.status, 200);
        let rest = not_covered(id, key, 3 * PER_KEY, &at, &topic);
        assert_eq!(rest.len() as u64, 3 * PER_KEY - 5);
        let events = exactly(&mut sse, rest.len()).await;
        check_exact(&events, key, rest, &at, &topic, PARTITIONS as usize);
    }

    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_with_librdkafkas_default_partitioner() {
    exact_case(Placement::LibraryDefault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_with_the_java_clients_murmur2() {
    exact_case(Placement::Murmur2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_with_random_placement() {
    exact_case(Placement::Random).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_with_one_key_on_every_partition() {
    exact_case(Placement::Explicit).await;
}

/// From a timestamp, per key, whatever the partitioner: a real broker keeps the producer's
/// CreateTime (the mock cluster gives every record the same timestamp).
async fn timestamp_case(placement: Placement) {
    let cluster = Cluster::new();
    assert!(
        cluster.is_real(),
        "needs KSG_TEST_KAFKA (scripts/test.sh runs it)"
    );
    let topic = unique_topic("keyts");
    cluster.create_topic(&topic, PARTITIONS).await;
    let p = producer_for(&cluster, placement);
    produce_round(&p, &topic, placement, 0..2 * PER_KEY);
    p.flush().await;
    let at = support::placement(&cluster, &topic).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let first = PER_KEY + 3;
    for key in KEYS {
        let path = format!("/{topic}/{key}?from={}", recent_base_ts() + first as i64);
        let (_, mut sse) = get(&h2, &path, &[]).await;
        let events = exactly(&mut sse, (2 * PER_KEY - first) as usize).await;
        check_exact(
            &events,
            key,
            first..2 * PER_KEY,
            &at,
            &topic,
            PARTITIONS as usize,
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker"]
async fn exact_from_a_timestamp_whatever_the_partitioner() {
    for placement in [
        Placement::LibraryDefault,
        Placement::Murmur2,
        Placement::Random,
        Placement::Explicit,
    ] {
        timestamp_case(placement).await;
    }
}

/// A key whose partition under `a` differs from its partition under `b` among `n`.
fn key_placed_apart(a: KeyPartitioner, b: KeyPartitioner, n: usize) -> String {
    (0..)
        .map(|i| format!("SYM{i}"))
        .find(|k| a.partition(k.as_bytes(), n) != b.partition(k.as_bytes(), n))
        .unwrap()
}

/// Reads a stream to its end: its data events and the last id it set (an id-only block too).
async fn read_to_end(sse: &mut SseReader) -> Vec<Block> {
    let mut events = Vec::new();
    while let Some(block) = sse.next_block().await {
        if !block.data.is_empty() {
            events.push(block);
        }
    }
    events
}

fn mismatches(text: &str, topic: &str) -> f64 {
    metric(
        text,
        &format!("ksg_key_partition_mismatches_total{{topic=\"{topic}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promised_crc32_gives_short_ids_for_librdkafkas_default_producers() {
    let cluster = Cluster::new();
    let topic = unique_topic("crc32");
    cluster.create_topic(&topic, 12).await;
    let gw = gateway(
        &cluster,
        &[("KSG_KEY_PARTITIONER", "crc32"), ("KSG_REPLAY_BYTES", "0")],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let home = KeyPartitioner::Crc32.partition(b"GOOG", 12) as i32;
    let (_, mut sse) = get(&h2, &format!("/{topic}/GOOG"), &[]).await;
    let start = sse.next_block().await.unwrap().id.unwrap();
    assert_eq!(
        position::decode(&start, &topic).unwrap().entries,
        vec![(home, 0)]
    );
    assert_eq!(start.len(), 12, "{start}");
    // librdkafka's default producer, many keys: every one lands where crc32 says.
    let p = cluster.producer();
    for n in 0..5 {
        for key in ["GOOG", "AAPL", "MSFT", "AMZN", "NVDA", "TSLA", "META"] {
            p.send(
                &topic,
                None,
                Some(key.as_bytes()),
                Some(format!("{key}:{n}").as_bytes()),
            );
        }
    }
    p.flush().await;
    let events = sse.events(5).await;
    let at = support::placement(&cluster, &topic).await;
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event.text(), format!("GOOG:{n}"));
        let (partition, offset) = at[&event.text()];
        assert_eq!(partition, home);
        let id = event.id.as_deref().unwrap();
        assert_eq!(
            position::decode(id, &topic).unwrap().entries,
            vec![(home, offset + 1)]
        );
        assert!(id.len() <= 20, "{id}");
    }
    // Resumed from Kafka (no replay ring) with a short id: exactly the rest, still short.
    let (_, mut resumed) = get(
        &h2,
        &format!("/{topic}/GOOG"),
        &[("last-event-id", events[1].id.as_deref().unwrap())],
    )
    .await;
    let rest = resumed.events(3).await;
    let texts: Vec<String> = rest.iter().map(Block::text).collect();
    assert_eq!(texts, vec!["GOOG:2", "GOOG:3", "GOOG:4"]);
    assert!(rest.iter().all(|e| e.id.as_ref().unwrap().len() <= 20));
    // A whole-topic snapshot reads (and checks) every record: the promise holds.
    let (_, mut snapshot) = get(&h2, &format!("/{topic}?from=snapshot"), &[]).await;
    let events = snapshot.events(8).await;
    assert_eq!(events[7].event.as_deref(), Some("live"));
    assert_eq!(mismatches(&metrics(&gw).await, &topic), 0.0);
    gw.shutdown().await;
}

/// The operator promised murmur2 but the producers use librdkafka's default: the first record
/// the live path sees off its promised partition ends the short-id stream with an id that
/// reads every partition; the client resumes with it and gets every record of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_promise_seen_live_loses_nothing() {
    let cluster = Cluster::new();
    let topic = unique_topic("broken-live");
    cluster.create_topic(&topic, 6).await;
    let key = key_placed_apart(KeyPartitioner::Murmur2, KeyPartitioner::Crc32, 6);
    let gw = gateway(&cluster, &[("KSG_KEY_PARTITIONER", "murmur2")]).await;
    let h2 = h2_connect(&gw).await;
    let (_, mut sse) = get(&h2, &format!("/{topic}/{key}"), &[]).await;
    let start = sse.next_block().await.unwrap().id.unwrap();
    assert_eq!(position::decode(&start, &topic).unwrap().entries.len(), 1);
    assert_eq!(mismatches(&metrics(&gw).await, &topic), 0.0);

    let p = cluster.producer();
    for n in 0..10 {
        p.send(
            &topic,
            None,
            Some(key.as_bytes()),
            Some(format!("{key}:{n}").as_bytes()),
        );
    }
    p.flush().await;
    // The short-id stream ends without the records (they are not on its partition), its
    // last id naming every partition.
    assert!(read_to_end(&mut sse).await.is_empty());
    let last = sse.last_id.clone().unwrap();
    let every = position::decode(&last, &topic).unwrap();
    assert!(every.every, "the last id reads every partition");
    assert_eq!(mismatches(&metrics(&gw).await, &topic), 1.0);

    // The client reconnects with it: every record, once, full ids from now on.
    let (_, mut resumed) = get(&h2, &format!("/{topic}/{key}"), &[("last-event-id", &last)]).await;
    let events = resumed.events(10).await;
    let at = support::placement(&cluster, &topic).await;
    check_exact(&events, &key, 0..10, &at, &topic, 6);
    // The same id on another replica that has seen nothing broken: the same records.
    let other = gateway(&cluster, &[("KSG_KEY_PARTITIONER", "murmur2")]).await;
    let (_, mut elsewhere) = get(
        &h2_connect(&other).await,
        &format!("/{topic}/{key}"),
        &[("last-event-id", &last)],
    )
    .await;
    check_exact(&elsewhere.events(10).await, &key, 0..10, &at, &topic, 6);
    // New key streams of the topic carry full ids; the warning was counted once.
    let (_, mut fresh) = get(&h2, &format!("/{topic}/{key}"), &[]).await;
    let start = fresh.next_block().await.unwrap().id.unwrap();
    assert_eq!(position::decode(&start, &topic).unwrap().entries.len(), 6);
    p.produce(&topic, Some(&key), Some("after")).await;
    assert_eq!(fresh.next_event().await.unwrap().text(), "after");
    assert_eq!(mismatches(&metrics(&gw).await, &topic), 1.0);
    other.shutdown().await;
    gw.shutdown().await;
}

/// Records written before the gateway ran, by a producer that breaks the promise: a catch-up
/// reader finds one off its partition, ends the short-id stream, and the resume gets all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_promise_seen_by_a_catch_up_reader_loses_nothing() {
    let cluster = Cluster::new();
    let topic = unique_topic("broken-catchup");
    cluster.create_topic(&topic, 3).await;
    let key = key_placed_apart(KeyPartitioner::Murmur2, KeyPartitioner::Crc32, 3);
    let home = KeyPartitioner::Murmur2.partition(key.as_bytes(), 3);
    // Other keys librdkafka puts on the key's murmur2 partition though murmur2 would not.
    let strays: Vec<String> = (0..200)
        .map(|i| format!("other{i}"))
        .filter(|k| {
            let b = k.as_bytes();
            KeyPartitioner::Crc32.partition(b, 3) == home
                && KeyPartitioner::Murmur2.partition(b, 3) != home
        })
        .take(3)
        .collect();
    assert_eq!(strays.len(), 3);
    let p = cluster.producer();
    for n in 0..10 {
        p.send(
            &topic,
            None,
            Some(key.as_bytes()),
            Some(format!("{key}:{n}").as_bytes()),
        );
        let stray = &strays[n % 3];
        p.send(
            &topic,
            None,
            Some(stray.as_bytes()),
            Some(format!("{stray}:{n}").as_bytes()),
        );
    }
    p.flush().await;
    let at = support::placement(&cluster, &topic).await;
    let gw = gateway(
        &cluster,
        &[
            ("KSG_KEY_PARTITIONER", "murmur2"),
            ("KSG_REPLAY_BYTES", "0"),
        ],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let (_, mut sse) = get(&h2, &format!("/{topic}/{key}?from=earliest"), &[]).await;
    // Nothing of the key is on its promised partition; the stream ends with an id that reads
    // every partition (its own from where the reader got to).
    assert!(read_to_end(&mut sse).await.is_empty());
    let last = sse.last_id.clone().unwrap();
    assert!(position::decode(&last, &topic).unwrap().every);
    assert_eq!(mismatches(&metrics(&gw).await, &topic), 1.0);
    let (_, mut resumed) = get(&h2, &format!("/{topic}/{key}"), &[("last-event-id", &last)]).await;
    check_exact(&resumed.events(10).await, &key, 0..10, &at, &topic, 3);
    gw.shutdown().await;

    // A whole-topic snapshot on a fresh gateway finds it too: key streams carry full ids.
    let gw = gateway(&cluster, &[("KSG_KEY_PARTITIONER", "murmur2")]).await;
    let h2 = h2_connect(&gw).await;
    let (_, mut snapshot) = get(&h2, &format!("/{topic}?from=snapshot"), &[]).await;
    let events = snapshot.events(5).await;
    assert_eq!(events[4].event.as_deref(), Some("live"));
    assert_eq!(mismatches(&metrics(&gw).await, &topic), 1.0);
    let (_, mut fresh) = get(&h2, &format!("/{topic}/{key}?from=earliest"), &[]).await;
    check_exact(&fresh.events(10).await, &key, 0..10, &at, &topic, 3);
    gw.shutdown().await;
}

/// 200 partitions, librdkafka's default producer: a key stream resumed from an id after a
/// restart gets exactly the rest of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stream_on_200_partitions_resumes_exactly() {
    let cluster = Cluster::new();
    let topic = unique_topic("wide");
    cluster.create_topic(&topic, 200).await;
    let p = cluster.producer();
    produce_round(&p, &topic, Placement::LibraryDefault, 0..10);
    p.flush().await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let mut sse = get_stream(&h2, &format!("/{topic}/K3?from=earliest"), &[]).await;
    let first = sse.events(4).await;
    let id = first[3].id.clone().unwrap();
    assert!(id.len() < 400, "{} characters", id.len());
    gw.shutdown().await;
    produce_round(&p, &topic, Placement::LibraryDefault, 10..15);
    p.flush().await;
    let at = support::placement(&cluster, &topic).await;
    let gw = gateway(&cluster, &[]).await;
    let mut resumed = get_stream(
        &h2_connect(&gw).await,
        &format!("/{topic}/K3"),
        &[("last-event-id", &id)],
    )
    .await;
    check_exact(&resumed.events(11).await, "K3", 4..15, &at, &topic, 200);
    gw.shutdown().await;
}
