//! Filtered streams (`header.<name>=`, `where=`): exactly the records that pass, for every kind
//! of stream (all keys, one key, several keys; live, from `earliest`, resumed from memory and
//! from Kafka, a snapshot, one JSON document; HTTP/2 and HTTP/1.1; plain and envelope), filters
//! fixed by a route and by a token that no parameter removes, the parameter checks, and the
//! count of records a `where` test cannot test. Records come from librdkafka's default
//! partitioner, as users' producers place them; they carry headers as a producer sets them.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header as JwtHeader};
use kafka_sse_gateway::position;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde_json::{json, Value};
use support::*;

const KEYS: u64 = 6;
const PARTITIONS: i32 = 3;

/// One produced record, made from its sequence number.
struct Rec {
    seq: u64,
    key: String,
    /// `None`: a tombstone.
    value: Option<String>,
    json: Option<Value>,
    tenant: Option<&'static str>,
}

fn rec(seq: u64) -> Rec {
    let key = format!("k{}", seq % KEYS);
    let tenant = match seq % 5 {
        4 => None,
        _ if seq % 2 == 0 => Some("a"),
        _ => Some("b"),
    };
    let (value, json) = if seq % 11 == 5 {
        (None, None)
    } else if seq % 7 == 3 {
        (Some(format!("plain text {seq}")), None)
    } else {
        let status = if seq % 3 == 0 { "shipped" } else { "open" };
        let doc = json!({"seq": seq, "status": status, "total": (seq * 37) % 100, "customer": {"tier": if seq % 4 == 0 {"gold"} else {"silver"}}});
        (Some(doc.to_string()), Some(doc))
    };
    // A tombstone carries no headers: no filter here passes it.
    let tenant = tenant.filter(|_| value.is_some());
    Rec {
        seq,
        key,
        value,
        json,
        tenant,
    }
}

fn produce(p: &Producer_, topic: &str, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let r = rec(seq);
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(r.key.as_bytes());
        if let Some(v) = &r.value {
            record = record.payload(v.as_bytes());
        }
        if let Some(tenant) = r.tenant {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "tenant",
                    value: Some("ignored"),
                })
                .insert(Header {
                    key: "tenant",
                    value: Some(tenant),
                });
            record = record.headers(headers);
        }
        p.0.send(record).map_err(|(e, _)| e).expect("queued");
    }
}

/// The filters the streams use, as the records are judged by them here.
fn shipped(r: &Rec) -> bool {
    r.json.as_ref().is_some_and(|j| j["status"] == "shipped")
}
fn over_50(r: &Rec) -> bool {
    r.json
        .as_ref()
        .is_some_and(|j| j["total"].as_u64().unwrap() > 50)
}
fn tenant_a(r: &Rec) -> bool {
    r.tenant == Some("a")
}
fn gold(r: &Rec) -> bool {
    r.json
        .as_ref()
        .is_some_and(|j| j["customer"]["tier"] == "gold")
}

/// The record an event carries, by the sequence number in its value (plain or envelope).
fn seq_of(event: &Block) -> u64 {
    let text = event.text();
    let value = match serde_json::from_str::<Value>(&text) {
        Ok(envelope) if envelope.get("topic").is_some() => {
            envelope["value"].as_str().unwrap().to_string()
        }
        _ => text,
    };
    match value.strip_prefix("plain text ") {
        Some(seq) => seq.parse().unwrap(),
        None => serde_json::from_str::<Value>(&value).unwrap()["seq"]
            .as_u64()
            .unwrap(),
    }
}

type Placement = std::collections::HashMap<String, (i32, i64)>;

/// What a stream's filters let through, as judged here.
type Pass<'a> = &'a dyn Fn(&Rec) -> bool;

/// The records of `seqs` among `keys` (`None`: every key) that `pass`, and that the position
/// `after` (an id; `None`: none) does not cover: by key, in order.
fn expected(
    seqs: std::ops::Range<u64>,
    keys: Option<&[&str]>,
    pass: &dyn Fn(&Rec) -> bool,
    after: Option<(&str, &Placement, &str)>,
) -> BTreeMap<String, Vec<u64>> {
    let mut out = BTreeMap::new();
    for r in seqs.map(rec) {
        if keys.is_some_and(|k| !k.contains(&r.key.as_str())) || !pass(&r) {
            continue;
        }
        if let Some((id, at, topic)) = after {
            let from = position::decode(id, topic).unwrap();
            let (p, offset) = at[r.value.as_ref().unwrap()];
            if offset < from.offset(p).unwrap_or(0) {
                continue;
            }
        }
        out.entry(r.key.clone())
            .or_insert_with(Vec::new)
            .push(r.seq);
    }
    out
}

/// Reads exactly the records `want` (by key, in order per key), then nothing for 300 ms.
async fn read_exactly(sse: &mut SseReader, want: &BTreeMap<String, Vec<u64>>) -> Vec<Block> {
    let n = want.values().map(Vec::len).sum();
    let events = sse.events(n).await;
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &events {
        let r = rec(seq_of(event));
        got.entry(r.key).or_default().push(r.seq);
    }
    assert_eq!(
        &got, want,
        "exactly the records that pass, in order per key"
    );
    no_event_for(sse, Duration::from_millis(300)).await;
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_streams_are_exact_live_caught_up_snapshotted_and_resumed_anywhere() {
    let cluster = Cluster::new();
    let topic = unique_topic("filters");
    cluster.create_topic(&topic, PARTITIONS).await;
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let t = &topic;
    let shipped_path = format!("/{t}?where=/status=shipped");
    let mut all = get_stream(&h2, &shipped_path, &[]).await;
    // The same filter named otherwise (escaped, repeated) on the same connection.
    let twin_path = format!("/{t}?where=%2Fstatus%3D%22shipped%22&where=/status=shipped");
    let mut twin = get_stream(&h2, &twin_path, &[]).await;
    let mut envelope = get_stream(&h2, &format!("{shipped_path}&format=envelope"), &[]).await;
    let mut h1 = h1_stream(&gw, &shipped_path, &[]).await;
    let mut key = get_stream(&h2, &format!("/{t}/k1?where=/total%3E50"), &[]).await;
    let keys_path = format!("/{t}?key=k1&key=k2&header.tenant=a");
    let mut keys = get_stream(&h2, &keys_path, &[]).await;
    let both_path = format!("/{t}?header.tenant=a&header.tenant=b&where=/customer/tier=gold");
    let mut both = get_stream(&h2, &both_path, &[]).await;
    for sse in [
        &mut all,
        &mut twin,
        &mut envelope,
        &mut h1,
        &mut key,
        &mut keys,
        &mut both,
    ] {
        sse.next_block().await.unwrap();
    }
    let p = cluster.producer();
    produce(&p, t, 0..60);
    p.flush().await;
    let at = placement(&cluster, t).await;

    let first = read_exactly(&mut all, &expected(0..60, None, &shipped, None)).await;
    for sse in [&mut twin, &mut envelope, &mut h1] {
        read_exactly(sse, &expected(0..60, None, &shipped, None)).await;
    }
    read_exactly(&mut key, &expected(0..60, Some(&["k1"]), &over_50, None)).await;
    let k12 = Some(&["k1", "k2"][..]);
    read_exactly(&mut keys, &expected(0..60, k12, &tenant_a, None)).await;
    let tenant_gold = |r: &Rec| r.tenant.is_some() && gold(r);
    read_exactly(&mut both, &expected(0..60, None, &tenant_gold, None)).await;
    // Records that are not JSON were counted once per distinct filter that could not test
    // them, however many streams and connections hold it: the shipped filter (four streams,
    // two connections) tests every record, k1's tests k1's, and the tenant-and-gold filter
    // reaches its where test only for records with a tenant.
    let not_json = (0..60)
        .map(rec)
        .filter(|r| r.value.is_some() && r.json.is_none());
    let counted: usize = not_json
        .map(|r| 1 + usize::from(r.key == "k1") + usize::from(r.tenant.is_some()))
        .sum();
    let unmatchable = format!("ksg_filter_unmatchable_total{{topic=\"{t}\"}}");
    assert_eq!(metric(&metrics(&gw).await, &unmatchable), counted as f64);

    // From earliest: a catch-up reader applies the filters.
    for (path, keys, pass) in [
        (&shipped_path, None, &shipped as &dyn Fn(&Rec) -> bool),
        (&keys_path, k12, &tenant_a),
    ] {
        let mut sse = get_stream(&h2, &format!("{path}&from=earliest"), &[]).await;
        read_exactly(&mut sse, &expected(0..60, keys, pass, None)).await;
    }

    // Resumed after the third event: from memory here, and from Kafka on a new replica.
    let mid = first[2].id.clone().unwrap();
    produce(&p, t, 60..80);
    p.flush().await;
    let at = {
        let mut at = at;
        at.extend(placement(&cluster, t).await);
        at
    };
    let rest = expected(0..80, None, &shipped, Some((&mid, &at, t)));
    assert!(rest.values().map(Vec::len).sum::<usize>() > 10);
    let gw2 = gateway(&cluster, &[]).await;
    for replica in [&gw, &gw2] {
        let h2 = h2_connect(replica).await;
        let mut sse = get_stream(&h2, &shipped_path, &[("last-event-id", &mid)]).await;
        read_exactly(&mut sse, &rest).await;
        let mut keyed = get_stream(&h2, &format!("{keys_path}&lastEventId={mid}"), &[]).await;
        let want = expected(0..80, k12, &tenant_a, Some((&mid, &at, t)));
        read_exactly(&mut keyed, &want).await;
    }

    // A snapshot: a key is in it when its latest record passes.
    let latest_passing: HashSet<u64> = (0..KEYS)
        .filter_map(|k| {
            let last = (0..80).rev().find(|s| s % KEYS == k).unwrap();
            shipped(&rec(last)).then_some(last)
        })
        .collect();
    let mut snap = get_stream(&h2, &format!("{shipped_path}&from=snapshot"), &[]).await;
    let events = snap.events(latest_passing.len() + 1).await;
    let got: HashSet<u64> = events[..latest_passing.len()].iter().map(seq_of).collect();
    assert_eq!(got, latest_passing);
    assert_eq!(events.last().unwrap().event.as_deref(), Some("live"));
    let (head, mut body) = get(
        &h2,
        &format!("{shipped_path}&from=snapshot&format=json"),
        &[],
    )
    .await;
    assert_eq!(head.status, 200);
    let doc: Value = serde_json::from_str(&body_text(&mut body).await).unwrap();
    let records = doc["records"].as_array().unwrap();
    let got: HashSet<u64> = records
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r["value"].as_str().unwrap()).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(got, latest_passing);
    // Subscribing from the document's id continues with exactly what passes after it.
    produce(&p, t, 80..100);
    p.flush().await;
    let id = doc["id"].as_str().unwrap();
    let mut after = get_stream(&h2, &format!("{shipped_path}&lastEventId={id}"), &[]).await;
    read_exactly(&mut after, &expected(80..100, None, &shipped, None)).await;
}

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

fn token(sub: &str, patterns: &[String]) -> String {
    let exp = kafka_sse_gateway::auth::now_secs() + 300;
    let claims = json!({"sub": sub, "exp": exp, "ksg": {"subscribe": patterns}});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&JwtHeader::default(), &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_fixed_by_a_route_or_a_token_hold_whatever_the_request_asks() {
    let cluster = Cluster::new();
    let topic = unique_topic("fixed");
    cluster.create_topic(&topic, PARTITIONS).await;
    let t = &topic;
    let routes =
        format!("/shipped/{{key}}={t}?where=/status=shipped,/gold={t}?where=/customer/tier=gold");
    let gw = gateway(
        &cluster,
        &[
            ("KSG_ROUTES", routes.as_str()),
            ("KSG_AUTH", "jwt"),
            ("KSG_AUTH_JWT_SECRET", SECRET),
        ],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let patterns = vec![
        format!("/{t}?header.tenant={{sub}}"),
        format!("/{t}/*?header.tenant={{sub}}"),
        "/shipped/*".to_string(),
        "/gold".to_string(),
    ];
    let bearer = format!("Bearer {}", token("a", &patterns));
    let auth = [("authorization", bearer.as_str())];
    // Every way a request might try to see tenant b's records.
    let tries = [
        format!("/{t}"),
        format!("/{t}?header.tenant=b"),
        format!("/{t}?header.tenant=a&header.tenant=b"),
        format!("/{t}?Header.tenant=b&header.Tenant=b&header.tenant%00=b"),
        format!("/{t}?where=/status=shipped"),
        format!("/{t}?key=k1&key=k2"),
        format!("/{t}/k1"),
        format!("/{t}/k1?header.tenant=b"),
        format!("/{t}?format=envelope&header.tenant=%62"),
    ];
    let mut streams = Vec::new();
    for path in &tries {
        let mut sse = get_stream(&h2, path, &auth).await;
        sse.next_block().await.unwrap();
        streams.push(sse);
    }
    let mut shipped_route = get_stream(&h2, "/shipped/k2?where=/total%3E50", &auth).await;
    let mut gold_route = get_stream(&h2, "/gold?header.tenant=b", &auth).await;
    shipped_route.next_block().await.unwrap();
    gold_route.next_block().await.unwrap();
    let p = cluster.producer();
    produce(&p, t, 0..60);
    p.flush().await;
    fn only_a(extra: fn(&Rec) -> bool) -> impl Fn(&Rec) -> bool {
        move |r| tenant_a(r) && extra(r)
    }
    let wants: Vec<BTreeMap<String, Vec<u64>>> = vec![
        expected(0..60, None, &only_a(|_| true), None),
        // The request's own test of the same header is added: a then b passes nothing.
        expected(0..60, None, &|_| false, None),
        expected(0..60, None, &only_a(|_| true), None),
        // Names that are not the header: no record has them.
        expected(0..60, None, &|_| false, None),
        expected(0..60, None, &only_a(shipped), None),
        expected(0..60, Some(&["k1", "k2"]), &only_a(|_| true), None),
        expected(0..60, Some(&["k1"]), &only_a(|_| true), None),
        expected(0..60, Some(&["k1"]), &|_| false, None),
        expected(0..60, None, &|_| false, None),
    ];
    for (sse, want) in streams.iter_mut().zip(&wants) {
        read_exactly(sse, want).await;
    }
    let shipped_over = |r: &Rec| shipped(r) && over_50(r);
    read_exactly(
        &mut shipped_route,
        &expected(0..60, Some(&["k2"]), &shipped_over, None),
    )
    .await;
    let gold_b = |r: &Rec| gold(r) && r.tenant == Some("b");
    read_exactly(&mut gold_route, &expected(0..60, None, &gold_b, None)).await;
    // A token without the subject's filter for this path is refused.
    let other = token("a", &[format!("/{t}/k9?header.tenant={{sub}}")]);
    let (head, _) = get(
        &h2,
        &format!("/{t}"),
        &[("authorization", &format!("Bearer {other}"))],
    )
    .await;
    assert_eq!(head.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_get_400_with_what_is_wrong_and_where() {
    let cluster = Cluster::new();
    let topic = unique_topic("badfilter");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &[("KSG_MAX_FILTERS_PER_STREAM", "2")]).await;
    let h2 = h2_connect(&gw).await;
    let cases = [
        ("where=/status", "no operator"),
        ("where=status=x", "must start with /"),
        ("where=/a~2b=1", "bad escape in the JSON pointer at byte 2"),
        ("where=/a==1", "== is written ="),
        ("where=/a~b", "no operator"),
        ("where=/a=%22open", "not valid JSON"),
        ("where=/a%3Dx%zz", "percent-encoding"),
        ("header.=x", "header's name"),
        (
            "where=/a=1&where=/b=2&header.x=1",
            "3 filters (header.* and where= parameters) asked; a stream takes at most 2 (KSG_MAX_FILTERS_PER_STREAM)",
        ),
    ];
    for (query, why) in cases {
        let (head, mut body) = get(&h2, &format!("/{topic}?{query}"), &[]).await;
        assert_eq!(head.status, 400, "{query}");
        let text = body_text(&mut body).await;
        assert!(text.contains(why), "{query}: {text}");
    }
    let long = format!("/{topic}?where=/{}=1", "p".repeat(300));
    let (head, mut body) = get(&h2, &long, &[]).await;
    assert_eq!(head.status, 400);
    assert!(body_text(&mut body).await.contains("at most 256"));
    let refused = metric(
        &metrics(&gw).await,
        "ksg_streams_refused_total{reason=\"bad_filter\"}",
    );
    assert_eq!(refused, cases.len() as f64 + 1.0);
}

/// Reads every block until the stream ends; returns the records' sequence numbers by key and
/// the blocks' event types other than records'.
async fn read_to_end(sse: &mut SseReader) -> (BTreeMap<String, Vec<u64>>, Vec<String>) {
    let (mut got, mut kinds) = (BTreeMap::<String, Vec<u64>>::new(), Vec::new());
    while let Some(block) = sse.next_block().await {
        match block.event.as_deref() {
            Some(kind) => kinds.push(kind.to_string()),
            None if block.data.is_empty() => {}
            None => {
                let r = rec(seq_of(&block));
                got.entry(r.key).or_default().push(r.seq);
            }
        }
    }
    (got, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_streams_keep_the_gap_drain_and_expiry_rules() {
    let cluster = Cluster::new();
    let topic = unique_topic("filterrules");
    cluster.create_topic(&topic, PARTITIONS).await;
    let t = &topic;
    let p = cluster.producer();
    produce(&p, t, 0..30);
    p.flush().await;

    // An id ahead of the log: `event: gap` first, then what passes from the earliest offsets.
    let gw = gateway(&cluster, &[]).await;
    let h2 = h2_connect(&gw).await;
    let shipped_path = format!("/{t}?where=/status=shipped");
    let ahead = position::encode_dense(position::fingerprint(t), &[1_000_000, 0, 0]);
    let mut sse = get_stream(&h2, &shipped_path, &[("last-event-id", &ahead)]).await;
    let first = sse.next_event().await.unwrap();
    assert_eq!(first.event.as_deref(), Some("gap"));
    read_exactly(&mut sse, &expected(0..30, None, &shipped, None)).await;

    // A drain ends filtered streams with the live position; they resume on another replica
    // with nothing lost or repeated.
    let leaving = gateway(&cluster, &[("KSG_DRAIN_DELAY_SECS", "1")]).await;
    let to_leaving = h2_connect(&leaving).await;
    let keys_path = format!("/{t}?key=k1&key=k2&where=/total%3E30");
    let k12 = Some(&["k1", "k2"][..]);
    let mut streams = Vec::new();
    for path in [&shipped_path, &keys_path] {
        let mut sse = get_stream(&to_leaving, path, &[]).await;
        sse.next_block().await.unwrap();
        streams.push(sse);
    }
    produce(&p, t, 30..50);
    p.flush().await;
    let wants: [(Pass, Option<&[&str]>); 2] = [(&shipped, None), (&over_30, k12)];
    for (sse, (pass, keys)) in streams.iter_mut().zip(wants) {
        let want = expected(30..50, keys, pass, None);
        let n = want.values().map(Vec::len).sum();
        let mut got = BTreeMap::<String, Vec<u64>>::new();
        for event in sse.events(n).await {
            let r = rec(seq_of(&event));
            got.entry(r.key).or_default().push(r.seq);
        }
        assert_eq!(got, want);
    }
    assert!(leaving.drain_and_shutdown().await, "drained in time");
    produce(&p, t, 50..70);
    p.flush().await;
    for ((sse, path), (pass, keys)) in streams
        .iter_mut()
        .zip([&shipped_path, &keys_path])
        .zip(wants)
    {
        let (got, _) = read_to_end(sse).await;
        assert!(got.is_empty(), "nothing more before the end: {got:?}");
        let id = sse.last_id.clone().expect("an id to resume from");
        let mut resumed = get_stream(&h2, path, &[("last-event-id", &id)]).await;
        read_exactly(&mut resumed, &expected(50..70, keys, pass, None)).await;
    }

    // A token's filter holds through its expiry: the stream ends with `event: expired`, and a
    // fresh token resumes it exactly after its last event.
    let jwt = gateway(
        &cluster,
        &[
            ("KSG_AUTH", "jwt"),
            ("KSG_AUTH_JWT_SECRET", SECRET),
            ("KSG_AUTH_EXPIRY_NOTICE_SECS", "1"),
        ],
    )
    .await;
    let h2 = h2_connect(&jwt).await;
    let pattern = vec![format!("/{t}?header.tenant={{sub}}")];
    let short = {
        let exp = kafka_sse_gateway::auth::now_secs() + 3;
        let claims = json!({"sub": "a", "exp": exp, "ksg": {"subscribe": pattern}});
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        format!(
            "Bearer {}",
            encode(&JwtHeader::default(), &claims, &key).unwrap()
        )
    };
    let mut sse = get_stream(&h2, &format!("/{t}"), &[("authorization", &short)]).await;
    sse.next_block().await.unwrap();
    produce(&p, t, 70..90);
    p.flush().await;
    let (got, kinds) = read_to_end(&mut sse).await;
    assert_eq!(got, expected(70..90, None, &tenant_a, None));
    assert_eq!(kinds, ["expiring", "expired"]);
    produce(&p, t, 90..110);
    p.flush().await;
    let fresh = format!("Bearer {}", token("a", &pattern));
    let id = sse.last_id.clone().unwrap();
    let mut resumed = get_stream(
        &h2,
        &format!("/{t}"),
        &[("authorization", &fresh), ("last-event-id", &id)],
    )
    .await;
    read_exactly(&mut resumed, &expected(90..110, None, &tenant_a, None)).await;
}

fn over_30(r: &Rec) -> bool {
    r.json
        .as_ref()
        .is_some_and(|j| j["total"].as_u64().unwrap() > 30)
}
