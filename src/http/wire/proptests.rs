//! Property tests of the wire's window arithmetic and of how it shares the connection's window.
//!
//! Against a model of RFC 9113's flow control (a window per stream and one for the connection;
//! SETTINGS_INITIAL_WINDOW_SIZE moves every stream's window by the change; an increment that
//! takes a window past 2³¹−1 is an error), over random sequences of the client's SETTINGS
//! (initial window up and down, to 0 and back), WINDOW_UPDATEs (stream and connection, some
//! overflowing) and the streams' sends, with every stream always having data:
//! - no send ever exceeds either window, and the wire's windows are the model's;
//! - every overflow reaches `h2` as the error RFC 9113 §6.9 asks for (the frame as it came,
//!   then two increments of 2³¹−1 for the same window), and changes nothing here;
//! - while a stream waits for its turn at the connection's window, no other stream is served
//!   twice: the connection's window goes round the waiting streams.

use std::collections::HashSet;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::tests::{due, h2_writes_headers, inbound, opening, settings, window_update, wire};
use super::*;

const STREAMS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    Initial(u32),
    /// A WINDOW_UPDATE for stream `0..STREAMS`.
    Stream(usize, u32),
    /// A WINDOW_UPDATE for the connection.
    Connection(u32),
    /// An increment that takes the stream's window (or, `None`, the connection's) one past
    /// 2³¹−1.
    Overflow(Option<usize>),
}

/// Stream windows from none to far more than the connection's, so that the connection's
/// window is often what the streams wait for.
fn stream_window() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        1u32..2_000,
        2_000u32..200_000,
        (1u32 << 20)..(1u32 << 24)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => stream_window().prop_map(Op::Initial),
        3 => (0..STREAMS, 1u32..1_000_000).prop_map(|(s, n)| Op::Stream(s, n)),
        6 => prop_oneof![3 => 1u32..600, 3 => 600u32..5_000, 1 => 5_000u32..100_000]
            .prop_map(Op::Connection),
        1 => prop_oneof![Just(None), (0..STREAMS).prop_map(Some)].prop_map(Op::Overflow),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The model's windows, and which streams wait for the connection's window.
struct Model {
    connection: i64,
    initial: i64,
    streams: [i64; STREAMS],
    waiting: [bool; STREAMS],
    /// For each waiting stream, the streams served since it began to wait or was last served.
    served_since: [HashSet<usize>; STREAMS],
}

impl Model {
    fn served(&mut self, stream: usize) -> Result<(), TestCaseError> {
        for other in 0..STREAMS {
            if other == stream || !self.waiting[other] {
                continue;
            }
            prop_assert!(
                self.served_since[other].insert(stream),
                "stream {stream} served twice while stream {other} waited for its turn"
            );
        }
        self.served_since[stream].clear();
        Ok(())
    }
}

/// Polls the due streams as the connection's task does, until none is due.
fn poll(
    wire: &Wire,
    ready: &Ready,
    outs: &[StreamOut],
    data: &mut [Bytes],
    model: &mut Model,
) -> Result<(), TestCaseError> {
    for _ in 0..1_000 {
        let tokens = due(ready);
        if tokens.is_empty() {
            return Ok(());
        }
        for token in tokens {
            let s = token - 10;
            let before = data[s].len();
            let result = outs[s].send(&mut wire.lock(), &mut data[s]);
            let sent = (before - data[s].len()) as i64;
            prop_assert!(
                sent <= model.streams[s].max(0),
                "stream {s}: {sent} over its window"
            );
            prop_assert!(
                sent <= model.connection.max(0),
                "stream {s}: {sent} over the connection's window"
            );
            model.streams[s] -= sent;
            model.connection -= sent;
            if sent > 0 {
                model.served(s)?;
            }
            let waits = result == Sent::Connection;
            if !waits {
                model.served_since[s].clear();
            }
            model.waiting[s] = waits;
        }
        wire.lock().start_round();
    }
    prop_assert!(false, "streams still due after 1,000 polls");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn windows_are_never_exceeded_and_waiting_streams_take_turns(
        first in stream_window(),
        ops in vec(op(), 1..60),
    ) {
        let (wire, ready, _) = wire();
        let ids = [1u32, 3, 5];
        let client = opening(&[(0x4, first)], &ids);
        inbound(&wire, &client, client.len());
        let outs: Vec<StreamOut> = ids.iter().map(|&id| wire.attach(id, 10 + (id as usize - 1) / 2)).collect();
        for &id in &ids {
            h2_writes_headers(&wire, id);
        }
        let mut data: Vec<Bytes> = (0..STREAMS).map(|_| Bytes::from(vec![b'x'; 8 << 20])).collect();
        let mut model = Model {
            connection: DEFAULT_WINDOW,
            initial: i64::from(first),
            streams: [i64::from(first); STREAMS],
            waiting: [false; STREAMS],
            served_since: Default::default(),
        };
        poll(&wire, &ready, &outs, &mut data, &mut model)?;
        let max = window_update(0, 0x7fff_ffff);
        for op in ops {
            match op {
                Op::Initial(value) => {
                    let change = i64::from(value) - model.initial;
                    let bytes = settings(&[(0x4, value)]);
                    let seen = inbound(&wire, &bytes, 7);
                    if model.streams.iter().any(|w| w + change > MAX_WINDOW) {
                        // A connection error: FLOW_CONTROL_ERROR, by h2.
                        prop_assert_eq!(seen, [bytes, max.clone(), max.clone()].concat());
                    } else {
                        prop_assert_eq!(seen, bytes);
                        model.initial = i64::from(value);
                        for w in &mut model.streams {
                            *w += change;
                        }
                    }
                }
                Op::Stream(s, n) => {
                    let id = ids[s];
                    let bytes = window_update(id, n);
                    let seen = inbound(&wire, &bytes, 5);
                    if model.streams[s] + i64::from(n) > MAX_WINDOW {
                        let over = window_update(id, 0x7fff_ffff);
                        prop_assert_eq!(seen, [bytes, over.clone(), over].concat());
                    } else {
                        prop_assert!(seen.is_empty(), "kept here");
                        model.streams[s] += i64::from(n);
                    }
                }
                Op::Connection(n) => {
                    let bytes = window_update(0, n);
                    let seen = inbound(&wire, &bytes, 5);
                    if model.connection + i64::from(n) > MAX_WINDOW {
                        prop_assert_eq!(seen, [bytes, max.clone(), max.clone()].concat());
                    } else {
                        prop_assert!(seen.is_empty(), "kept here");
                        model.connection += i64::from(n);
                    }
                }
                Op::Overflow(target) => {
                    let (id, window) = match target {
                        Some(s) => (ids[s], model.streams[s]),
                        None => (0, model.connection),
                    };
                    let n = MAX_WINDOW - window + 1;
                    if !(1..=0x7fff_ffff).contains(&n) {
                        continue;
                    }
                    let bytes = window_update(id, n as u32);
                    let seen = inbound(&wire, &bytes, 5);
                    let over = window_update(id, 0x7fff_ffff);
                    prop_assert_eq!(seen, [bytes, over.clone(), over].concat());
                }
            }
            poll(&wire, &ready, &outs, &mut data, &mut model)?;
            let state = wire.state.lock();
            prop_assert_eq!(state.connection_window, model.connection);
            for (s, &id) in ids.iter().enumerate() {
                prop_assert_eq!(state.streams[state.ids.get(id).unwrap()].window, model.streams[s]);
            }
        }
    }
}
