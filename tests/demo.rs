//! The embedded default: no KSG_KAFKA_BROKERS runs the mock cluster, the ticker and the page.

mod support;

use kafka_sse_gateway::config::Config;
use support::*;

/// The gateway in demo mode (no KSG_KAFKA_BROKERS), ticking fast, on port 0, ready.
async fn demo(extra: &[(&str, &str)]) -> kafka_sse_gateway::Handle {
    let mut vars = vec![
        ("KSG_LISTEN", "127.0.0.1:0"),
        ("KSG_ADMIN_LISTEN", "127.0.0.1:0"),
        ("KSG_DEMO_TICKS_PER_SEC", "20"),
    ];
    vars.extend_from_slice(extra);
    let gw = kafka_sse_gateway::start(Config::from_vars(vars).unwrap())
        .await
        .unwrap();
    wait_ready(&gw).await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_starter_page_and_live_ticks() {
    let gw = demo(&[]).await;
    let h2 = h2_connect(&gw).await;

    let (head, mut page) = get(&h2, "/", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-type"], "text/html; charset=utf-8");
    let html = body_text(&mut page).await;
    assert!(html.contains("const path = '/stock-prices/' + encodeURIComponent(symbol);"));
    assert!(html.contains("new EventSource(path)"));

    let (head, mut sse) = get(&h2, "/stock-prices/GOOG", &[]).await;
    assert_eq!(head.status, 200);
    // Ticks for GOOG only (or its delisting), in increasing sequence.
    let mut last_seq = 0;
    for event in sse.events(5).await {
        match event.event.as_deref() {
            Some("delete") => assert_eq!(event.text(), "GOOG"),
            None => {
                let text = event.text();
                assert!(text.starts_with(r#"{"symbol":"GOOG","n":"#), "{text}");
                let seq: u64 = text
                    .split(r#""seq":"#)
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(seq > last_seq);
                last_seq = seq;
            }
            other => panic!("unexpected event type {other:?}"),
        }
    }
    // Only the demo topic is served.
    let (head, _) = get(&h2, "/other-topic", &[]).await;
    assert_eq!(head.status, 404);
    gw.shutdown().await;
}

/// The per-symbol tick counter `n` of a demo price event.
fn tick_number(text: &str) -> u64 {
    text.split(r#""n":"#)
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_at_their_lifetime_and_resume_without_loss() {
    let gw = demo(&[("KSG_STREAM_MAX_SECS", "1")]).await;
    let h2 = h2_connect(&gw).await;
    let mut last_id: Option<String> = None;
    let mut ticks = Vec::new();
    let mut connections = 0;
    while connections < 3 {
        let headers: Vec<(&str, &str)> = last_id
            .iter()
            .map(|id| ("last-event-id", id.as_str()))
            .collect();
        let (head, mut sse) = get(&h2, "/stock-prices/GOOG", &headers).await;
        assert_eq!(head.status, 200);
        connections += 1;
        while let Some(block) = sse.next_block().await {
            if block.event.is_none() && !block.data.is_empty() {
                ticks.push(tick_number(&block.text()));
            }
        }
        last_id = sse.last_id.clone();
    }
    assert!(ticks.len() >= 20, "{} ticks", ticks.len());
    let first = ticks[0];
    assert_eq!(
        ticks,
        (first..first + ticks.len() as u64).collect::<Vec<_>>(),
        "no loss, no duplicate"
    );
    let text = metrics(&gw).await;
    assert!(metric(&text, "ksg_streams_expired_total") >= 3.0);
    assert!(metric(&text, "ksg_resumes_total{source=\"memory\"}") >= 2.0);
    gw.shutdown().await;
}

/// A newcomer's first snapshots on a fresh demo gateway (default tick rate): each reaches
/// `event: live` (the catch-up reader hands over through the replay ring instead of chasing
/// the moving end of every partition at once), with each symbol at most once before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_snapshots_reach_live() {
    let gw = demo(&[("KSG_DEMO_TICKS_PER_SEC", "2")]).await;
    let h2 = h2_connect(&gw).await;
    for round in 0..4 {
        let started = std::time::Instant::now();
        let (head, mut sse) = get(&h2, "/stock-prices?from=snapshot", &[]).await;
        assert_eq!(head.status, 200);
        let mut symbols = std::collections::HashSet::new();
        loop {
            let event = sse.next_event().await.expect("the snapshot reaches live");
            if event.event.as_deref() == Some("live") {
                break;
            }
            assert!(event.id.is_none(), "snapshot entries carry no id");
            let symbol = event
                .text()
                .split('"')
                .nth(3)
                .unwrap_or_default()
                .to_string();
            assert!(symbols.insert(symbol), "a symbol twice: {}", event.text());
        }
        eprintln!(
            "snapshot {round}: {} symbols, live after {:?}",
            symbols.len(),
            started.elapsed()
        );
        assert!(
            sse.next_event().await.unwrap().id.is_some(),
            "then live ticks"
        );
    }
    gw.shutdown().await;
}
