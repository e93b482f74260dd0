//! JWT authorization end to end over HTTP/2 and HTTP/1.1: who may read which stream, how a
//! refusal reads, limits per connection and in total, and a stream that ends at its token's
//! expiry and resumes with a fresh token without loss.

mod support;

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use support::*;

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

fn now() -> u64 {
    kafka_sse_gateway::auth::now_secs()
}

/// A token for `sub` allowing `patterns`, valid for `secs` more seconds.
fn token(sub: &str, patterns: &[&str], secs: u64) -> String {
    let claims = json!({"sub": sub, "exp": now() + secs, "ksg": {"subscribe": patterns}});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn jwt_vars(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut vars = vec![
        ("KSG_AUTH", "jwt"),
        ("KSG_AUTH_JWT_SECRET", SECRET),
        ("KSG_AUTH_COOKIE", "ksg_token"),
    ];
    vars.extend_from_slice(extra);
    vars
}

fn header<'a>(head: &'a http::response::Parts, name: &str) -> &'a str {
    head.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_need_a_token_that_allows_their_path() {
    let cluster = Cluster::new();
    let topic = unique_topic("orders");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(&cluster, &jwt_vars(&[])).await;
    let h2 = h2_connect(&gw).await;
    let alice = token(
        "alice",
        &["/{topic}/{sub}".replace("{topic}", &topic).as_str()],
        300,
    );
    let bearer = format!("Bearer {alice}");

    // No token: 401, a challenge, a reason.
    let (head, mut body) = get(&h2, &format!("/{topic}/alice"), &[]).await;
    assert_eq!(head.status, 401);
    assert!(header(&head, "www-authenticate").starts_with("Bearer "));
    assert!(header(&head, "www-authenticate").contains("error=\"invalid_request\""));
    assert!(body_text(&mut body)
        .await
        .contains("access token is required"));

    // A forged signature, an expired token, garbage: 401 invalid_token.
    let forged = {
        let claims = json!({"sub": "alice", "exp": now() + 300, "ksg": {"subscribe": ["/*/*"]}});
        let key = EncodingKey::from_secret(b"not the gateway's secret, but long enough");
        encode(&Header::default(), &claims, &key).unwrap()
    };
    let expired = {
        let claims = json!({"sub": "alice", "exp": now() - 1, "ksg": {"subscribe": ["/*/*"]}});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for (bad, why) in [
        (forged.as_str(), "signature"),
        (expired.as_str(), "expired"),
        ("e30.e30.e30", "malformed"),
    ] {
        let auth = format!("Bearer {bad}");
        let (head, mut body) =
            get(&h2, &format!("/{topic}/alice"), &[("authorization", &auth)]).await;
        assert_eq!(head.status, 401, "{why}");
        assert!(header(&head, "www-authenticate").contains("error=\"invalid_token\""));
        assert!(body_text(&mut body).await.contains(why), "{why}");
    }

    // Valid but not for this path: 403 insufficient_scope, before any routing (a topic that
    // does not exist is not revealed).
    for path in [
        format!("/{topic}/bob"),
        format!("/{topic}"),
        "/no-such-topic/alice".to_string(),
    ] {
        let (head, mut body) = get(&h2, &path, &[("authorization", &bearer)]).await;
        assert_eq!(head.status, 403, "{path}");
        assert!(header(&head, "www-authenticate").contains("insufficient_scope"));
        assert!(body_text(&mut body).await.contains("does not allow"));
    }

    // Allowed: from the header, and from the cookie; key percent-encoded or not.
    let producer = cluster.producer();
    let (head, mut by_header) = get(
        &h2,
        &format!("/{topic}/alice"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(head.status, 200);
    let cookie = format!("theme=dark; ksg_token={alice}");
    let (head, mut by_cookie) =
        get(&h2, &format!("/{topic}/%61lice"), &[("cookie", &cookie)]).await;
    assert_eq!(head.status, 200);
    by_header.next_block().await.unwrap();
    by_cookie.next_block().await.unwrap();
    producer
        .produce(&topic, Some("bob"), Some("not for alice"))
        .await;
    producer
        .produce(&topic, Some("alice"), Some("hello alice"))
        .await;
    assert_eq!(by_header.next_event().await.unwrap().text(), "hello alice");
    assert_eq!(by_cookie.next_event().await.unwrap().text(), "hello alice");

    // A query token is refused unless the operator turned it on.
    let (head, _) = get(&h2, &format!("/{topic}/alice?access_token={alice}"), &[]).await;
    assert_eq!(head.status, 401);

    // HEAD is checked as GET is.
    let (head, _) = head_request(&h2, &format!("/{topic}/bob"), &bearer).await;
    assert_eq!(head.status, 403);

    // CORS preflights carry no credentials and are answered.
    let text = metrics(&gw).await;
    let refused = |reason: &str| {
        metric(
            &text,
            &format!("ksg_auth_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        refused("missing_token"),
        2.0,
        "no header, and the query token"
    );
    assert_eq!(refused("bad_signature"), 1.0);
    assert_eq!(refused("expired"), 1.0);
    assert_eq!(refused("malformed_token"), 1.0);
    assert_eq!(refused("forbidden"), 4.0);
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"unauthorized\"}"),
        5.0
    );
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"forbidden\"}"),
        4.0
    );
    gw.shutdown().await;
}

async fn head_request(h2: &H2, path: &str, auth: &str) -> (http::response::Parts, ()) {
    let request = http::Request::head(format!("https://localhost{path}"))
        .header("authorization", auth)
        .body(())
        .unwrap();
    let mut h2 = h2.clone().ready().await.unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    (response.into_parts().0, ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_tokens_work_when_enabled_and_http1_is_checked_too() {
    let cluster = Cluster::new();
    let topic = unique_topic("q");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(&cluster, &jwt_vars(&[("KSG_AUTH_QUERY_TOKEN", "on")])).await;
    let all = format!("/{topic}");
    let t = token("svc", &[all.as_str()], 300);
    let h2 = h2_connect(&gw).await;
    let (head, _) = get(
        &h2,
        &format!("/{topic}?from=earliest&access_token={t}"),
        &[],
    )
    .await;
    assert_eq!(head.status, 200);

    // HTTP/1.1 (ALPN http/1.1): the same rules.
    for (auth, status) in [(None, "401"), (Some(t.as_str()), "200")] {
        let mut tls = tls_connect(&gw, b"http/1.1").await;
        let auth = auth.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        let request = format!("GET /{topic} HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n");
        let raw = http1_exchange(&mut tls, &request, b"\r\n\r\n").await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_at_its_tokens_expiry_and_resumes_with_a_fresh_one_without_loss() {
    let cluster = Cluster::new();
    let topic = unique_topic("exp");
    cluster.create_topic(&topic, 3).await;
    let gw = gateway(&cluster, &jwt_vars(&[("KSG_AUTH_EXPIRY_NOTICE_SECS", "2")])).await;
    let h2 = h2_connect(&gw).await;
    let pattern = format!("/{topic}");
    let exp = now() + 4;
    let short = {
        let claims = json!({"sub": "reader", "exp": exp, "ksg": {"subscribe": [pattern]}});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let auth = format!("Bearer {short}");
    let (head, mut sse) = get(&h2, &pattern, &[("authorization", &auth)]).await;
    assert_eq!(head.status, 200);
    sse.next_block().await.unwrap();

    // A producer keeps writing through the expiry and the reconnect.
    let producer = cluster.producer();
    let writer = {
        let topic = topic.clone();
        let producer = producer.clone();
        tokio::spawn(async move {
            for seq in 0..80u64 {
                let v = format!("k{}:{}", seq % 3, seq / 3);
                producer.send(
                    &topic,
                    None,
                    Some(format!("k{}", seq % 3).as_bytes()),
                    Some(v.as_bytes()),
                );
                producer.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut seen = Continuity::default();
    let (mut notice, mut ended) = (false, false);
    while let Some(block) = sse.next_block().await {
        match block.event.as_deref() {
            Some("expiring") => {
                assert!(!notice && !ended);
                assert!(block.id.is_none(), "notices leave lastEventId alone");
                assert!(
                    block.text().contains(&format!("\"exp\":{exp}")),
                    "{block:?}"
                );
                notice = true;
            }
            Some("expired") => {
                assert!(notice, "the notice came first");
                assert!(block.id.is_none());
                assert!(block.text().contains("expired"));
                ended = true;
            }
            _ if block.data.is_empty() => {}
            _ => {
                assert!(!ended, "nothing after the last event");
                seen.check(&block);
            }
        }
    }
    assert!(ended, "the stream ended with event: expired");
    assert!(seen.count > 0, "events came before the expiry");
    let last_id = sse.last_id.clone().expect("an id to resume from");

    // The old token no longer opens a stream.
    let (head, _) = get(&h2, &pattern, &[("authorization", &auth)]).await;
    assert_eq!(head.status, 401);

    // A fresh token resumes exactly after the last event received.
    let fresh = format!("Bearer {}", token("reader", &[pattern.as_str()], 300));
    let (head, mut resumed) = get(
        &h2,
        &pattern,
        &[("authorization", &fresh), ("last-event-id", &last_id)],
    )
    .await;
    assert_eq!(head.status, 200);
    writer.await.unwrap();
    while seen.count < 80 {
        let event = resumed.next_event().await.expect("the rest of the records");
        seen.check(&event);
    }
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "ksg_streams_token_expired_total"), 1.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_opens_per_connection_and_streams_in_total_are_limited() {
    let cluster = Cluster::new();
    let topic = unique_topic("lim");
    cluster.create_topic(&topic, 1).await;
    let gw = gateway(
        &cluster,
        &[
            ("KSG_MAX_STREAMS_PER_CONNECTION", "5"),
            ("KSG_MAX_STREAM_OPENS_PER_SEC", "1"),
            ("KSG_MAX_STREAMS", "6"),
        ],
    )
    .await;
    let path = format!("/{topic}");
    // A burst of 5 (the streams a connection may hold), then 1 a second; requests that get an
    // error count too.
    let a = h2_connect(&gw).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let (head, sse) = get(&a, &path, &[]).await;
        assert_eq!(head.status, 200);
        held.push(sse);
    }
    let mut limited = None;
    for _ in 0..50 {
        let (head, body) = get(&a, "/no/such/route", &[]).await;
        if head.status == 429 {
            limited = Some((head, body));
            break;
        }
        assert_eq!(head.status, 404);
    }
    let (head, mut body) = limited.expect("429 once the burst is spent");
    let retry: u64 = header(&head, "retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(body_text(&mut body)
        .await
        .contains("KSG_MAX_STREAM_OPENS_PER_SEC"));
    // An EventSource (it asks for text/event-stream) is not refused: it is told to come back.
    let event_source = [("accept", "text/event-stream")];
    let (head, mut body) = get(&a, &path, &event_source).await;
    assert_unavailable_stream(&head, &mut body, "rate_limited", 1..=1_000).await;

    // Another connection has its own budget; the total stops at 6 streams.
    let b = h2_connect(&gw).await;
    let (head, _s1) = get(&b, &path, &[]).await;
    assert_eq!(head.status, 200);
    let (head, _s2) = get(&b, &path, &[]).await;
    assert_eq!(head.status, 200);
    let (head, mut body) = get(&b, &path, &[]).await;
    assert_eq!(head.status, 429);
    assert_eq!(header(&head, "retry-after"), "5");
    assert!(body_text(&mut body).await.contains("KSG_MAX_STREAMS"));
    let other = h2_connect(&gw).await;
    let (head, mut body) = get(&other, &path, &event_source).await;
    assert_unavailable_stream(&head, &mut body, "too_many_streams", 5_000..=5_000).await;
    // Counted as refusals all the same.
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "ksg_streams_refused_total{reason=\"rate_limited\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "ksg_streams_refused_total{reason=\"too_many_streams\"}"
        ),
        2.0
    );
    drop(held);
    gw.shutdown().await;
}

/// A JWK of an EC P-256 key pair's public half, with `kid`.
fn ec_jwk(pair: &rcgen::KeyPair, kid: &str) -> serde_json::Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let point = pair.public_key_raw();
    json!({"kty": "EC", "crv": "P-256", "kid": kid,
           "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])})
}

/// An ES256 token signed by `pair` as `kid`, allowing every topic stream, for 5 minutes.
fn ec_token(pair: &rcgen::KeyPair, kid: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let claims = json!({"sub": kid, "exp": now() + 300, "ksg": {"subscribe": ["/*"]}});
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    encode(&header, &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_the_key_that_verified_their_token_leaves_the_key_set() {
    let cluster = Cluster::new();
    let topic = unique_topic("revoked");
    cluster.create_topic(&topic, 1).await;
    let pair = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (leaked, kept) = (pair(), pair());
    let path = std::env::temp_dir().join(format!("ksg-revoke-{}.json", std::process::id()));
    let write = |keys: &[serde_json::Value]| {
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
    };
    write(&[ec_jwk(&leaked, "leaked"), ec_jwk(&kept, "kept")]);
    let keys_path: &'static str = Box::leak(path.display().to_string().into_boxed_str());
    let gw = gateway(
        &cluster,
        &[("KSG_AUTH", "jwt"), ("KSG_AUTH_JWT_KEYS", keys_path)],
    )
    .await;
    let h2 = h2_connect(&gw).await;
    let stream_with = |token: String| {
        let h2 = h2.clone();
        let path = format!("/{topic}");
        async move {
            let bearer = format!("Bearer {token}");
            let (head, mut sse) = get(&h2, &path, &[("authorization", &bearer)]).await;
            assert_eq!(head.status, 200);
            sse.next_block().await.unwrap();
            sse
        }
    };
    let mut by_leaked = stream_with(ec_token(&leaked, "leaked")).await;
    let mut by_kept = stream_with(ec_token(&kept, "kept")).await;
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("one"))
        .await;
    assert_eq!(by_leaked.next_event().await.unwrap().text(), "one");
    assert_eq!(by_kept.next_event().await.unwrap().text(), "one");

    // The leaked key leaves the file: within a reload interval (5 s), its stream ends with
    // `event: expired` and the reason; the other key's stream goes on.
    write(&[ec_jwk(&kept, "kept")]);
    let last = by_leaked
        .next_event()
        .await
        .expect("the end, with a reason");
    assert_eq!(last.event.as_deref(), Some("expired"));
    assert!(last.id.is_none(), "no id: the client keeps its last one");
    assert!(
        last.text()
            .contains("\"reason\":\"the signing key was revoked\""),
        "{}",
        last.text()
    );
    assert!(
        by_leaked.next_block().await.is_none(),
        "and the stream ends"
    );
    cluster
        .producer()
        .produce(&topic, Some("k"), Some("two"))
        .await;
    assert_eq!(by_kept.next_event().await.unwrap().text(), "two");
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "ksg_streams_key_revoked_total"), 1.0);
    assert_eq!(metric(&text, "ksg_streams_token_expired_total"), 0.0);
    // The leaked key opens nothing new.
    let bearer = format!("Bearer {}", ec_token(&leaked, "leaked"));
    let (head, _) = get(&h2, &format!("/{topic}"), &[("authorization", &bearer)]).await;
    assert_eq!(head.status, 401);
    let _ = std::fs::remove_file(&path);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_several_keys_needs_every_key_allowed_and_no_parameter_widens_a_grant() {
    let cluster = Cluster::new();
    let topic = unique_topic("watch");
    cluster.create_topic(&topic, 2).await;
    let gw = gateway(&cluster, &jwt_vars(&[])).await;
    let h2 = h2_connect(&gw).await;
    let patterns = [
        format!("/{topic}/GOOG"),
        format!("/{topic}/AAPL"),
        format!("/{topic}/{{sub}}"),
    ];
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let bearer = format!("Bearer {}", token("alice", &patterns, 300));
    let auth = [("authorization", bearer.as_str())];
    let status = |query: &'static str| {
        let (h2, topic, auth) = (h2.clone(), topic.clone(), auth);
        async move { get(&h2, &format!("/{topic}{query}"), &auth).await.0.status }
    };
    for query in [
        "?key=GOOG&key=AAPL",
        "?key=AAPL",
        "?key=%47OOG&key=alice",
        "?key=GOOG&key=GOOG",
    ] {
        assert_eq!(status(query).await, 200, "{query}");
    }
    for query in [
        "",
        "?key=GOOG&key=MSFT",
        "?key=MSFT",
        "?key=bob",
        "?key=GOOG&key=",
        "?key=GOOG&key",
        "?key=GOOG&key=%zz",
        "?key=GOOG;key=MSFT",
        "?key=GOOG&key=GOOG%2FX",
        "?from=earliest",
    ] {
        assert_eq!(status(query).await, 403, "{query}");
    }
    // A key path the token allows, with keys in its query: refused, never widened.
    let (head, _) = get(&h2, &format!("/{topic}/GOOG?key=MSFT"), &auth).await;
    assert_eq!(head.status, 400);
    // Parameters that are not `key` exactly name no key: the stream is the allowed one only.
    let mut sse = get_stream(
        &h2,
        &format!("/{topic}?key=GOOG&Key=MSFT&%6Bey=MSFT&keys=MSFT"),
        &auth,
    )
    .await;
    sse.next_block().await.unwrap();
    let p = cluster.producer();
    p.produce(&topic, Some("MSFT"), Some("MSFT:1")).await;
    p.produce(&topic, Some("GOOG"), Some("GOOG:1")).await;
    assert_eq!(sse.next_event().await.unwrap().text(), "GOOG:1");
    no_event_for(&mut sse, Duration::from_millis(300)).await;
    gw.shutdown().await;
}
