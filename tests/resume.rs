//! Resume with no loss: Last-Event-ID after a dropped connection, on another replica, after a
//! restart, from far back (Kafka catch-up), across the hand-over to live; gaps; start positions.

mod support;

use std::time::Duration;

use kafka_sse_gateway::position;
use support::*;

const KEYS: usize = 12;

/// Queues `per_key` records for each of `KEYS` keys, numbering from `first`.
fn produce_round(p: &Producer_, topic: &str, first: u64, per_key: u64) {
    produce_keyed(p, topic, KEYS, first..first + per_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_resumes_from_memory_then_on_a_second_replica() {
    let cluster = Cluster::new();
    let topic = unique_topic("resume");
    cluster.create_topic(&topic, 3).await;
    let gw1 = gateway(&cluster, &[]).await;
    let gw2 = gateway(&cluster, &[]).await;
    // gw2 has the topic attached (its own interleaving of partitions) before anything is produced.
    let (_, mut watcher) = get(&h2_connect(&gw2).await, &format!("/{topic}"), &[]).await;
    watcher.next_block().await.unwrap();

    let h2 = h2_connect(&gw1).await;
    let (_, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    produce_round(&p, &topic, 0, 30);
    p.flush().await;
    let mut seen = Continuity::default();
    read_checked(&mut sse, 100, &mut seen).await;
    let id = sse.last_id.clone().unwrap();
    drop((sse, h2)); // the TCP connection goes away mid-stream

    // Same replica: from the replay ring.
    let h2 = h2_connect(&gw1).await;
    let (head, mut sse) = get(&h2, &format!("/{topic}"), &[("last-event-id", &id)]).await;
    assert_eq!(head.status, 200);
    read_checked(&mut sse, 150, &mut seen).await;
    assert_eq!(
        metric(&metrics(&gw1).await, "ksg_resumes_total{source=\"memory\"}"),
        1.0
    );
    let id = sse.last_id.clone().unwrap();
    drop((sse, h2));

    // Another replica that saw its own interleaving: no loss, no duplicate.
    let h2 = h2_connect(&gw2).await;
    let (_, mut sse) = get(&h2, &format!("/{topic}"), &[("last-event-id", &id)]).await;
    read_checked(&mut sse, 30 * KEYS - 250, &mut seen).await;
    produce_round(&p, &topic, 30, 5);
    p.flush().await;
    read_checked(&mut sse, 5 * KEYS, &mut seen).await;
    // Its floor passed, the stream left its own queue for the connection's shared log.
    wait_metric(&gw2, "ksg_streams_own_queue", 0.0).await;
    let id = sse.last_id.clone().unwrap();
    drop((sse, h2));

    // And back to the first replica with an id the second one issued.
    produce_round(&p, &topic, 35, 5);
    p.flush().await;
    let (_, mut sse) = get(
        &h2_connect(&gw1).await,
        &format!("/{topic}"),
        &[("last-event-id", &id)],
    )
    .await;
    read_checked(&mut sse, 5 * KEYS, &mut seen).await;
    assert!((0..KEYS).all(|k| seen.next_of(&format!("key{k}")) == 40));
    // Nothing more: the next event is the sentinel.
    p.produce(&topic, Some("key0"), Some("key0:40")).await;
    seen.check(&sse.next_event().await.unwrap());
    gw1.shutdown().await;
    gw2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_restart_of_the_gateway() {
    let cluster = Cluster::new();
    let topic = unique_topic("restart");
    cluster.create_topic(&topic, 3).await;
    let gw = gateway(&cluster, &[]).await;
    let (_, mut sse) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    produce_round(&p, &topic, 0, 10);
    p.flush().await;
    let mut seen = Continuity::default();
    read_checked(&mut sse, 50, &mut seen).await;
    let id = sse.last_id.clone().unwrap();
    gw.shutdown().await;
    produce_round(&p, &topic, 10, 10); // produced while no gateway runs
    p.flush().await;

    let gw = gateway(&cluster, &[]).await;
    let (_, mut sse) = get(
        &h2_connect(&gw).await,
        &format!("/{topic}?lastEventId={id}"),
        &[],
    )
    .await;
    read_checked(&mut sse, 20 * KEYS - 50, &mut seen).await;
    assert_eq!(
        metric(&metrics(&gw).await, "ksg_resumes_total{source=\"kafka\"}"),
        1.0
    );
    p.produce(&topic, Some("key1"), Some("key1:20")).await;
    seen.check(&sse.next_event().await.unwrap());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_resumes_from_far_back_share_a_bounded_set_of_readers() {
    let cluster = Cluster::new();
    let topic = unique_topic("catchup");
    cluster.create_topic(&topic, 3).await;
    // A tiny ring: the old ids are far outside it, so every resume reads from Kafka.
    let gw = gateway(
        &cluster,
        &[("KSG_REPLAY_BYTES", "2000"), ("KSG_CATCHUP_READERS", "3")],
    )
    .await;
    let (_, mut first) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    let start_id = first.next_block().await.unwrap().id.unwrap();
    let p = cluster.producer();
    let mut seen = Continuity::default();
    produce_round(&p, &topic, 0, 20);
    p.flush().await;
    read_checked(&mut first, 20 * KEYS, &mut seen).await;
    // Another resume point, near the first: right after round 19.
    let mid_id = first.last_id.clone().unwrap();
    produce_round(&p, &topic, 20, 20);
    p.flush().await;
    read_checked(&mut first, 20 * KEYS, &mut seen).await;

    let h2 = h2_connect(&gw).await;
    let mut clients = Vec::new();
    for client in 0..50 {
        let (h2, path) = (h2.clone(), format!("/{topic}"));
        let (id, from) = if client % 2 == 0 {
            (start_id.clone(), 0)
        } else {
            (mid_id.clone(), 20)
        };
        clients.push(tokio::spawn(async move {
            let (head, mut sse) = get(&h2, &path, &[("last-event-id", &id)]).await;
            assert_eq!(head.status, 200);
            let mut seen = Continuity::starting_at((0..KEYS).map(|k| format!("key{k}")), from);
            read_checked(&mut sse, (40 - from as usize) * KEYS, &mut seen).await;
            seen.count
        }));
    }
    for (client, handle) in clients.into_iter().enumerate() {
        let expected = if client % 2 == 0 {
            40 * KEYS
        } else {
            20 * KEYS
        };
        assert_eq!(handle.await.unwrap(), expected);
    }
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "ksg_resumes_total{source=\"kafka\"}"), 50.0);
    // Resumes that wait together share one reader pass: the README promises a handful of
    // passes for 50 resumes, not one each. (Without sharing this would be 50.)
    let shared = metric(&text, "ksg_catchup_shared_total");
    let passes = 50.0 - shared;
    eprintln!("50 resumes took {passes} reader passes ({shared} shared a pass)");
    assert!(passes <= 10.0, "50 resumes took {passes} reader passes");
    gw.shutdown().await;
}

/// Reads one resume of `path` from `id` to the end of `rounds` rounds (every key, or `key`
/// alone), checked; returns the ids the stream carried.
async fn resume_reading(
    h2: &H2,
    path: &str,
    id: &str,
    key: Option<usize>,
    rounds: u64,
) -> Vec<String> {
    let (head, mut sse) = get(h2, path, &[("last-event-id", id)]).await;
    assert_eq!(head.status, 200);
    let keys: Vec<String> = match key {
        Some(k) => vec![format!("key{k}")],
        None => (0..KEYS).map(|k| format!("key{k}")).collect(),
    };
    let mut seen = Continuity::starting_at(keys.clone(), 0);
    let mut ids = Vec::new();
    for event in sse.events(keys.len() * rounds as usize).await {
        seen.check(&event);
        ids.push(event.id.clone().unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_at_one_position_share_one_encoding_of_each_event() {
    let cluster = Cluster::new();
    let topic = unique_topic("cohort");
    cluster.create_topic(&topic, 3).await;
    // No ring: every resume reads from Kafka, through one reader.
    let gw = gateway(
        &cluster,
        &[("KSG_REPLAY_BYTES", "0"), ("KSG_CATCHUP_READERS", "1")],
    )
    .await;
    let (_, mut first) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    let start_id = first.next_block().await.unwrap().id.unwrap();
    let p = cluster.producer();
    produce_round(&p, &topic, 0, 20);
    p.flush().await;
    read_checked(&mut first, 20 * KEYS, &mut Continuity::default()).await;
    let (every, one_key) = (format!("/{topic}"), format!("/{topic}/key3"));

    // What one resume of each view costs the readers, alone.
    let h2 = h2_connect(&gw).await;
    let bytes = |text: &str| metric(text, "ksg_catchup_bytes_total");
    let ids_every = resume_reading(&h2, &every, &start_id, None, 20).await;
    let after_every = bytes(&metrics(&gw).await);
    resume_reading(&h2, &one_key, &start_id, Some(3), 20).await;
    let text = metrics(&gw).await;
    let (one_every, one_of_key) = (after_every, bytes(&text) - after_every);
    let shared_before = metric(&text, "ksg_catchup_shared_total");
    assert!(one_every > 0.0 && one_of_key > 0.0);

    // 40 resumes from the same id, half of every record, half of one key, on one connection.
    let mut clients = Vec::new();
    for client in 0..40 {
        let (h2, id) = (h2.clone(), start_id.clone());
        let (path, key) = if client % 2 == 0 {
            (every.clone(), None)
        } else {
            (one_key.clone(), Some(3))
        };
        clients.push(tokio::spawn(async move {
            (key, resume_reading(&h2, &path, &id, key, 20).await)
        }));
    }
    // The order of partitions may differ from pass to pass, so the ids along the way may too
    // (and a key stream's last id, the position at its key's last record), but a stream of
    // every record ends at the lone resume's last id, the end of the topic.
    let mut sequences = std::collections::HashSet::new();
    for handle in clients {
        let (key, ids) = handle.await.unwrap();
        if key.is_none() {
            assert_eq!(ids.last(), ids_every.last());
        }
        sequences.insert(ids);
    }
    let text = metrics(&gw).await;
    let passes = 40.0 - (metric(&text, "ksg_catchup_shared_total") - shared_before);
    let encoded = bytes(&text) - one_every - one_of_key;
    eprintln!(
        "40 resumes: {passes} reader passes, {} distinct id sequences, {encoded} bytes encoded (one of each view: {one_every} + {one_of_key})",
        sequences.len()
    );
    assert!(passes <= 10.0, "40 resumes took {passes} reader passes");
    // Streams of one view in one pass got the very same events: at most one sequence of ids
    // per view and pass.
    assert!(sequences.len() as f64 <= 2.0 * passes);
    // Each pass encodes each view once, however many streams read it (without sharing: 20 ×
    // each). Ids differ in length by a byte here and there from pass to pass.
    assert!(
        encoded <= 1.1 * passes * (one_every + one_of_key),
        "{encoded} bytes encoded in {passes} passes"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_over_to_live_while_records_keep_coming() {
    // The memory path (the ring holds everything) and the Kafka path (no ring).
    for (replay_bytes, source) in [("4194304", "memory"), ("0", "kafka")] {
        hand_over_case(replay_bytes, source).await;
    }
}

async fn hand_over_case(replay_bytes: &str, source: &str) {
    let cluster = Cluster::new();
    let topic = unique_topic("handover");
    cluster.create_topic(&topic, 3).await;
    let gw = gateway(&cluster, &[("KSG_REPLAY_BYTES", replay_bytes)]).await;
    let (_, mut first) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    let start_id = first.next_block().await.unwrap().id.unwrap();
    let p = cluster.producer();
    produce_round(&p, &topic, 0, 50);
    p.flush().await;

    // Keep producing while the resumed stream catches up and switches to live.
    let producing = {
        let (p, topic) = (p.clone(), topic.clone());
        tokio::spawn(async move {
            for round in 50..150 {
                produce_round(&p, &topic, round, 1);
                p.flush().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (_, mut sse) = get(
        &h2_connect(&gw).await,
        &format!("/{topic}"),
        &[("last-event-id", &start_id)],
    )
    .await;
    let mut seen = Continuity::default();
    read_checked(&mut sse, 150 * KEYS, &mut seen).await;
    producing.await.unwrap();
    p.produce(&topic, Some("key3"), Some("key3:150")).await;
    seen.check(&sse.next_event().await.unwrap());
    let resumes = metric(
        &metrics(&gw).await,
        &format!("ksg_resumes_total{{source=\"{source}\"}}"),
    );
    assert_eq!(resumes, 1.0, "resumed from {source}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_gone_from_kafka_are_announced_as_a_gap() {
    let cluster = Cluster::new();
    let topic = unique_topic("gap");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(&cluster, &[("KSG_REPLAY_BYTES", "0")]).await;
    let (_, mut first) = get(&h2_connect(&gw).await, &format!("/{topic}"), &[]).await;
    let start_id = first.next_block().await.unwrap().id.unwrap();
    let p = cluster.producer();
    // Age out the head of partition 0: DeleteRecords on a real broker; on the mock cluster,
    // which has no DeleteRecords, enough data that it drops its oldest batches itself.
    let (count, padding) = if cluster.is_real() {
        (10, 0)
    } else {
        (100, 100 * 1024)
    };
    let pad = "p".repeat(padding);
    for seq in 0..count {
        p.send(
            &topic,
            Some(0),
            Some(b"a"),
            Some(format!("a:{seq}:{pad}").as_bytes()),
        );
        p.flush().await;
    }
    for seq in 0..10 {
        p.send(
            &topic,
            Some(1),
            Some(b"b"),
            Some(format!("b:{seq}:").as_bytes()),
        );
    }
    p.flush().await;
    if cluster.is_real() {
        delete_records(&cluster, &topic, 0, 4).await;
    }
    let log_start = watermarks(&cluster, &topic, 0).await.0;
    assert!(log_start > 0 && log_start < count, "log start {log_start}");

    let (_, mut sse) = get(
        &h2_connect(&gw).await,
        &format!("/{topic}"),
        &[("last-event-id", &start_id)],
    )
    .await;
    let gap = sse.next_event().await.unwrap();
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(
        gap.text(),
        format!(
            r#"{{"partitions":[{{"partition":0,"from":0,"to":{log_start},"skipped":{log_start}}}]}}"#
        )
    );
    assert_eq!(
        position::decode(gap.id.as_deref().unwrap(), &topic)
            .unwrap()
            .entries,
        vec![(0, log_start), (1, 0)]
    );
    let mut texts: Vec<String> = sse
        .events((count - log_start) as usize + 10)
        .await
        .iter()
        .map(|e| e.text().rsplit_once(':').unwrap().0.to_string())
        .collect();
    texts.sort();
    let mut expected: Vec<String> = (log_start..count)
        .map(|s| format!("a:{s}"))
        .chain((0..10).map(|s| format!("b:{s}")))
        .collect();
    expected.sort();
    assert_eq!(texts, expected);
    let text = metrics(&gw).await;
    let skipped = metric(
        &text,
        &format!("ksg_gap_offsets_skipped_total{{topic=\"{topic}\"}}"),
    );
    assert_eq!(skipped, log_start as f64);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_earliest_with_key_filter() {
    let cluster = Cluster::new();
    let topic = unique_topic("from");
    cluster.create_topic(&topic, 3).await;
    let p = cluster.producer();
    let base = recent_base_ts();
    for seq in 0..10 {
        for key in ["x", "y"] {
            let mut record = rdkafka::producer::BaseRecord::<str, str>::to(&topic)
                .key(key)
                .timestamp(base + seq * 1000);
            let value = format!("{key}:{seq}");
            record = record.payload(&value);
            p.0.send(record).map_err(|(e, _)| e).unwrap();
        }
    }
    p.flush().await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;

    let (_, mut sse) = get(&h2, &format!("/{topic}?from=earliest"), &[]).await;
    let mut seen = Continuity::default();
    read_checked(&mut sse, 20, &mut seen).await;

    let (_, mut sse) = get(&h2, &format!("/{topic}/y?from=earliest"), &[]).await;
    let texts: Vec<String> = sse.events(10).await.iter().map(|e| e.text()).collect();
    assert_eq!(texts, (0..10).map(|s| format!("y:{s}")).collect::<Vec<_>>());

    gw.shutdown().await;
}

/// A catch-up reader left unused for `KSG_CATCHUP_READER_IDLE_SECS` is closed (a restart's
/// burst of resumes does not keep its consumers for the process's life), and the next resume
/// from Kafka opens one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_catchup_readers_are_closed_and_opened_again_when_needed() {
    let cluster = Cluster::new();
    let topic = unique_topic("idle-readers");
    cluster.create_topic(&topic, 3).await;
    let p = cluster.producer();
    produce_round(&p, &topic, 0, 5);
    p.flush().await;
    let gw = gateway(&cluster, &[("KSG_CATCHUP_READER_IDLE_SECS", "2")]).await;
    let h2 = h2_connect(&gw).await;
    for round in 0..2 {
        let (_, mut sse) = get(&h2, &format!("/{topic}?from=earliest"), &[]).await;
        let mut seen = Continuity::default();
        // Round 1 also reads the live record of round 0.
        read_checked(&mut sse, 5 * KEYS + round, &mut seen).await;
        let readers = metric(&metrics(&gw).await, "ksg_catchup_readers");
        assert_eq!(readers, 1.0, "round {round}: the reader that read it");
        wait_metric(&gw, "ksg_catchup_readers", 0.0).await;
        // Live records still come to the stream once its reader is gone.
        let value = format!("key0:{}", 5 + round);
        p.produce(&topic, Some("key0"), Some(&value)).await;
        seen.check(&sse.next_event().await.unwrap());
    }
    gw.shutdown().await;
}

/// A record no stream takes is kept in the ring as it came and encoded only when a replay
/// first needs it, with the id it would have had: `ksg_records_encoded_total` counts the
/// records encoded, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_nobody_reads_are_encoded_only_when_a_replay_needs_them() {
    let cluster = Cluster::new();
    let topic = unique_topic("lazy");
    cluster.create_topic(&topic, 3).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let mut watched = get_stream(&h2, &format!("/{topic}/key1"), &[]).await;
    let start = watched.next_block().await.unwrap().id.unwrap();
    let p = cluster.producer();
    produce_keyed(&p, &topic, 4, 0..10);
    p.flush().await;
    let mut seen = Continuity::default();
    read_checked(&mut watched, 10, &mut seen).await;
    let encoded = format!("ksg_records_encoded_total{{topic=\"{topic}\"}}");
    let consumed = format!("ksg_records_consumed_total{{topic=\"{topic}\"}}");
    wait_metric(&gw, &consumed, 40.0).await;
    assert_eq!(
        metric(&metrics(&gw).await, &encoded),
        10.0,
        "key1's records only"
    );
    // Every record, replayed from the ring: the others are encoded now, once.
    let mut replayed = Vec::new();
    for round in 0..2 {
        let resumed = [("last-event-id", start.as_str())];
        let mut all = get_stream(&h2, &format!("/{topic}"), &resumed).await;
        let mut seen = Continuity::default();
        read_checked(&mut all, 40, &mut seen).await;
        assert_eq!(metric(&metrics(&gw).await, &encoded), 40.0, "round {round}");
        replayed.push((all, seen));
    }
    // Live again: a record the streams take is encoded once, as dispatched.
    p.produce(&topic, Some("key0"), Some("key0:10")).await;
    for (all, seen) in &mut replayed {
        seen.check(&all.next_event().await.unwrap());
    }
    assert_eq!(metric(&metrics(&gw).await, &encoded), 41.0);
    gw.shutdown().await;
}

/// Timestamps need a broker that keeps the producer's CreateTime (the mock cluster does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker"]
async fn from_timestamp_with_key_filter() {
    let cluster = real_cluster();
    let topic = unique_topic("fromts");
    cluster.create_topic(&topic, 3).await;
    let p = cluster.producer();
    let base = recent_base_ts();
    for seq in 0..10 {
        for key in ["x", "y"] {
            let value = format!("{key}:{seq}");
            let record = rdkafka::producer::BaseRecord::<str, str>::to(&topic)
                .key(key)
                .timestamp(base + seq * 1000)
                .payload(&value);
            p.0.send(record).map_err(|(e, _)| e).unwrap();
        }
    }
    p.flush().await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let (_, mut sse) = get(&h2, &format!("/{topic}/x?from={}", base + 6500), &[]).await;
    let texts: Vec<String> = sse.events(3).await.iter().map(|e| e.text()).collect();
    assert_eq!(texts, vec!["x:7", "x:8", "x:9"]);
    // The same instant as base + 8 s, written as RFC 3339.
    let at = rfc3339(base + 8000);
    assert_eq!(kafka_sse_gateway::start::rfc3339_ms(&at), Some(base + 8000));
    let (_, mut sse) = get(&h2, &format!("/{topic}/x?from={at}"), &[]).await;
    assert_eq!(sse.next_event().await.unwrap().text(), "x:8");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_resume_ids_are_400_without_kafka_work() {
    let cluster = Cluster::new();
    let topic = unique_topic("badid");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let foreign = position::encode_dense(position::fingerprint("another-topic"), &[1]);
    let long = "A".repeat(5000);
    for (id, reason) in [
        ("not a token!", "not base64url"),
        ("AQ", "malformed"),
        (foreign.as_str(), "another topic"),
        (long.as_str(), "longer than"),
    ] {
        let (head, mut body) = get(&h2, &format!("/{topic}"), &[("last-event-id", id)]).await;
        assert_eq!(head.status, 400, "{id}");
        let body = body
            .body_mut()
            .as_mut()
            .unwrap()
            .data()
            .await
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&body).contains(reason),
            "{id}: {body:?}"
        );
    }
    let (head, _) = get(&h2, &format!("/{topic}?from=tomorrow"), &[]).await;
    assert_eq!(head.status, 400);
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"bad_resume_id\"}"),
        5.0
    );
    assert_eq!(
        metric(&text, "ksg_topics_attached"),
        0.0,
        "no Kafka work for a bad request"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sends_latest_values_then_live_marker_then_updates() {
    use kafka_sse_gateway::partitioner::KeyPartitioner;
    let cluster = Cluster::new();
    let topic = unique_topic("snapshot");
    cluster.create_topic(&topic, 2).await;
    let p = cluster.producer();
    let records = [
        ("k1", Some("k1=v1")),
        ("k2", Some("k2=v1")),
        ("k1", Some("k1=v2")),
        ("k3", Some("k3=v1")),
        ("k3", None),
        ("k4", Some("k4=v1")),
    ];
    // Where librdkafka's default partitioner (consistent_random: CRC-32 of the key) puts each
    // record, and so what the snapshot must hold.
    let mut next = [0i64; 2];
    let mut latest: std::collections::HashMap<&str, (usize, i64, &str)> = Default::default();
    for (key, value) in records {
        p.send(&topic, None, Some(key.as_bytes()), value.map(str::as_bytes));
        let partition = KeyPartitioner::Crc32.partition(key.as_bytes(), 2);
        match value {
            Some(v) => latest.insert(key, (partition, next[partition], v)),
            None => latest.remove(key),
        };
        next[partition] += 1;
    }
    p.send(&topic, Some(1), None, Some(b"no key"));
    next[1] += 1;
    p.flush().await;
    let mut expected: Vec<(usize, i64, &str)> = latest.values().copied().collect();
    expected.sort();
    let expected: Vec<(Option<String>, String)> = expected
        .iter()
        .map(|(_, _, v)| (None, v.to_string()))
        .collect();
    let gw = gateway(&cluster, &[("KSG_SNAPSHOT_TOPICS", "snapshot-*")]).await;
    let h2 = h2_connect(&gw).await;

    // The default for a topic in KSG_SNAPSHOT_TOPICS; by partition, then offset.
    let (_, mut sse) = get(&h2, &format!("/{topic}"), &[]).await;
    let preamble = sse.next_block().await.unwrap();
    assert_eq!(
        preamble.id, None,
        "a snapshot stream names no position before its end"
    );
    let snapshot: Vec<(Option<String>, String)> = sse
        .events(4)
        .await
        .into_iter()
        .map(|e| (e.id.clone(), e.text()))
        .collect();
    assert_eq!(
        snapshot[..3],
        expected[..],
        "latest values, no ids, k3 deleted"
    );
    let live = &snapshot[3];
    assert_eq!(live.1, r#"{"snapshot_events":3}"#);
    let end = position::decode(live.0.as_deref().unwrap(), &topic).unwrap();
    assert_eq!(end.entries, vec![(0, next[0]), (1, next[1])]);

    // A key-filtered snapshot on the same topic, asked for explicitly.
    let (_, mut keyed) = get(&h2, &format!("/{topic}/k1?from=snapshot"), &[]).await;
    let events = keyed.events(2).await;
    assert_eq!(events[0].text(), "k1=v2");
    assert_eq!(events[1].event.as_deref(), Some("live"));

    p.produce(&topic, Some("k2"), Some("k2=v2")).await;
    let update = sse.next_event().await.unwrap();
    assert_eq!(
        (update.event.as_deref(), update.text().as_str()),
        (None, "k2=v2")
    );
    assert!(update.id.is_some());
    // from=latest overrides the topic's snapshot default.
    let (_, mut latest) = get(&h2, &format!("/{topic}?from=latest"), &[]).await;
    assert!(latest.next_block().await.unwrap().id.is_some());
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "ksg_resumes_total{source=\"snapshot\"}"), 2.0);
    let keyless = format!("ksg_snapshot_keyless_records_total{{topic=\"{topic}\"}}");
    assert_eq!(
        metric(&text, &keyless),
        1.0,
        "the keyless record was left out of the first snapshot"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_over_its_budget_is_sent_early_and_still_ends_right() {
    let cluster = Cluster::new();
    let topic = unique_topic("bigsnap");
    cluster.create_topic(&topic, 1).await;
    let p = cluster.producer();
    let pad = "x".repeat(200);
    for round in 0..3 {
        for k in 0..40 {
            p.send(
                &topic,
                None,
                Some(format!("key{k}").as_bytes()),
                Some(format!("key{k}={round}{pad}").as_bytes()),
            );
        }
    }
    p.flush().await;
    // 2 KiB of budget: about six entries, far fewer than the 40 keys.
    let gw = gateway(&cluster, &[("KSG_SNAPSHOT_BYTES", "2048")]).await;
    let (_, mut sse) = get(
        &h2_connect(&gw).await,
        &format!("/{topic}?from=snapshot"),
        &[],
    )
    .await;
    let mut latest = std::collections::HashMap::new();
    let mut received = 0;
    loop {
        let event = sse.next_event().await.unwrap();
        if event.event.as_deref() == Some("live") {
            break;
        }
        let text = event.text();
        let (key, value) = text.split_once('=').unwrap();
        latest.insert(key.to_string(), value[..1].to_string());
        received += 1;
    }
    assert!(
        received > 40 && received <= 120,
        "sent early, so some keys came more than once: {received}"
    );
    assert_eq!(latest.len(), 40);
    assert!(
        latest.values().all(|v| v == "2"),
        "every key ends at its latest value"
    );
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "ksg_snapshot_bytes"),
        0.0,
        "nothing held once the snapshot is sent"
    );
    assert_eq!(metric(&text, "ksg_snapshot_entries"), 0.0);
    gw.shutdown().await;
}

/// A resume id the log cannot honour (an offset past a partition's end, a partition the topic
/// does not have: another cluster's id, or a recreated topic's) is not refused: the client can
/// do nothing about it. The stream opens with `event: gap` naming the partitions concerned and
/// reads them from their earliest offsets; the other partitions resume where the id says. An id
/// exactly at the end is an ordinary resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_ids_ahead_of_the_log_open_with_a_gap_and_read_those_partitions_from_the_start() {
    let cluster = Cluster::new();
    let topic = unique_topic("ahead");
    cluster.create_topic(&topic, 3).await;
    let p = cluster.producer();
    // Two records on each partition, all of key k: offsets 0 and 1, ends at 2.
    for n in 0..6 {
        let value = format!("p{}-{}", n % 3, n / 3);
        p.send(&topic, Some(n % 3), Some(b"k"), Some(value.as_bytes()));
    }
    p.flush().await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let fp = position::fingerprint(&topic);
    let gap_of = |block: &Block| -> serde_json::Value {
        assert_eq!(block.event.as_deref(), Some("gap"), "{block:?}");
        assert!(block.id.is_none(), "the gap has no id");
        let data: serde_json::Value = serde_json::from_str(&block.text()).unwrap();
        assert!(data["reason"]
            .as_str()
            .unwrap()
            .starts_with("the resume id is ahead of the log"));
        data["partitions"].clone()
    };
    let cases = [
        // Partition 2 past its end: it starts over, the others resume at their ends.
        (
            position::encode_dense(fp, &[2, 2, 3]),
            serde_json::json!([{"partition": 2, "from": 3, "to": 0}]),
            vec!["p2-0", "p2-1"],
        ),
        // Partition 0 far past its end; 1 and 2 resume from 0.
        (
            position::encode_dense(fp, &[1_000_000, 0, 0]),
            serde_json::json!([{"partition": 0, "from": 1_000_000, "to": 0}]),
            vec!["p0-0", "p0-1", "p1-0", "p1-1", "p2-0", "p2-1"],
        ),
    ];
    // Every kind of path: every key, one key, several keys.
    let paths = [
        format!("/{topic}"),
        format!("/{topic}/k"),
        format!("/{topic}?key=k&key=other"),
    ];
    for (id, partitions, expected) in cases {
        for path in &paths {
            let (head, mut sse) = get(&h2, path, &[("last-event-id", &id)]).await;
            assert_eq!(head.status, 200, "{path}");
            let first = sse.next_event().await.unwrap();
            assert_eq!(gap_of(&first), partitions, "{path}");
            let mut got: Vec<String> = sse
                .events(expected.len())
                .await
                .iter()
                .map(Block::text)
                .collect();
            got.sort();
            assert_eq!(got, expected, "{path}");
        }
    }
    // A partition the topic does not have: it is left out; the partitions the id does not name
    // start from their earliest offsets, as for any id.
    let gone = position::encode_sparse(fp, &[(7, 0)]);
    let mut live = Vec::new();
    for path in &paths {
        let (head, mut sse) = get(&h2, path, &[("last-event-id", &gone)]).await;
        assert_eq!(head.status, 200, "{path}");
        let first = sse.next_event().await.unwrap();
        assert_eq!(
            gap_of(&first),
            serde_json::json!([{"partition": 7, "from": 0, "to": null}])
        );
        let mut got: Vec<String> = sse.events(6).await.iter().map(Block::text).collect();
        got.sort();
        assert_eq!(
            got,
            ["p0-0", "p0-1", "p1-0", "p1-1", "p2-0", "p2-1"],
            "{path}"
        );
        live.push(sse);
    }
    p.send(&topic, Some(1), Some(b"k"), Some(b"next"));
    p.flush().await;
    for sse in &mut live {
        assert_eq!(sse.next_event().await.unwrap().text(), "next");
    }
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, &format!("ksg_gaps_total{{topic=\"{topic}\"}}")),
        9.0
    );
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"bad_resume_id\"}"),
        0.0
    );
    // At the end of the log: an ordinary resume, no gap.
    let at_end = position::encode_dense(fp, &[2, 3, 2]);
    let (head, mut sse) = get(&h2, &format!("/{topic}"), &[("last-event-id", &at_end)]).await;
    assert_eq!(head.status, 200);
    p.send(&topic, Some(1), Some(b"k"), Some(b"after"));
    p.flush().await;
    assert_eq!(sse.next_event().await.unwrap().text(), "after");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_the_ring_outruns_ends_with_its_id_resumes_from_kafka_with_nothing_lost_and_keeps_up(
) {
    let cluster = Cluster::new();
    let topic = unique_topic("outrun");
    cluster.create_topic(&topic, 3).await;
    // A ring of 256 KiB: about 60 of the 4-KiB records below.
    let gw = gateway(&cluster, &[("KSG_REPLAY_BYTES", "262144")]).await;
    let path = format!("/{topic}");
    let (_, mut watcher) = get(&h2_connect(&gw).await, &path, &[]).await;
    let start_id = watcher.next_block().await.unwrap().id.unwrap();
    let p = cluster.producer();
    // Values of 4 KiB, each `<name>:<seq>` for its key.
    let names: Vec<String> = (0..4)
        .map(|k| format!("k{k}-{}", "x".repeat(4000)))
        .collect();
    let produce = |seqs: std::ops::Range<u64>| {
        for seq in seqs {
            for (k, name) in names.iter().enumerate() {
                let value = format!("{name}:{seq}");
                let key = format!("k{k}");
                p.send(&topic, None, Some(key.as_bytes()), Some(value.as_bytes()));
            }
        }
    };
    produce(0..10);
    p.flush().await;
    watcher.events(40).await;

    // Resumed from the start, in the ring, by a client that reads nothing yet: HTTP/2's
    // default 64 KiB window holds the gateway to about 15 of the 40 replayed events.
    let slow_h2 = h2_connect_small_windows(&gw).await;
    let (head, mut slow) = get(&slow_h2, &path, &[("last-event-id", &start_id)]).await;
    assert_eq!(head.status, 200);
    let resumed = |source: &str| format!("ksg_resumes_total{{source=\"{source}\"}}");
    assert_eq!(metric(&metrics(&gw).await, &resumed("memory")), 1.0);
    // 100 records more (400 KiB): the ring drops what the replay has not read. Fewer than
    // KSG_STREAM_QUEUE events, so only the ring can outrun the stream.
    produce(10..35);
    p.flush().await;
    watcher.events(100).await;

    // The client reads: what was sent, then the end; nothing of what the ring dropped. (A
    // stream that went on would bring its 140 events, then only heartbeats: bounded.)
    let mut seen = Continuity::default();
    while let Ok(Some(block)) = slow.next_block_within(Duration::from_secs(5)).await {
        if !block.data.is_empty() {
            seen.check(&block);
        }
    }
    assert!(
        (1..40).contains(&seen.count),
        "cut off inside the replay, after {} events",
        seen.count
    );
    let cutoffs = format!("ksg_slow_stream_cutoffs_total{{topic=\"{topic}\"}}");
    assert_eq!(metric(&metrics(&gw).await, &cutoffs), 1.0);

    // Its last id is older than the ring: the rest comes from Kafka, once.
    let id = slow.last_id.clone().expect("the events carried ids");
    let (_, mut sse) = get(&h2_connect(&gw).await, &path, &[("last-event-id", &id)]).await;
    read_checked(&mut sse, 140 - seen.count, &mut seen).await;
    assert!(names.iter().all(|k| seen.next_of(k) == 35));
    assert_eq!(metric(&metrics(&gw).await, &resumed("kafka")), 1.0);
    // From there it keeps up: the next records come live, with no second cut-off and no
    // second resume.
    produce(35..45);
    p.flush().await;
    read_checked(&mut sse, 40, &mut seen).await;
    assert!(names.iter().all(|k| seen.next_of(k) == 45));
    let after = metrics(&gw).await;
    assert_eq!(metric(&after, &cutoffs), 1.0, "cut off once");
    assert_eq!(metric(&after, &resumed("kafka")), 1.0);
    gw.shutdown().await;
}
