//! The windows' arithmetic, as pure functions of numbers: an increment applied to a window, a
//! change of SETTINGS_INITIAL_WINDOW_SIZE, a round's share of the connection's window, and how
//! much of its data a stream may write now. The wire's `State` keeps the numbers and calls
//! these; `tests` below checks them against RFC 9113 §6.9 on their own, and `super::proptests`
//! checks the wire that uses them against a model of the whole protocol.

use super::frame::{MAX_WINDOW, MIN_SHARE};

/// A window after the client granted `increment` more, or `None` when that takes it past
/// 2³¹−1: a flow-control error (RFC 9113 §6.9.1), which changes nothing.
pub(super) fn granted(window: i64, increment: i64) -> Option<i64> {
    let now = window + increment;
    (now <= MAX_WINDOW).then_some(now)
}

/// What a change of SETTINGS_INITIAL_WINDOW_SIZE from `initial` to `value` adds to every open
/// stream's window (RFC 9113 §6.9.2: it may take them below zero), or `None` when it would take
/// the largest of them, `largest`, past 2³¹−1: a connection error.
pub(super) fn initial_change(initial: i64, value: i64, largest: Option<i64>) -> Option<i64> {
    let change = value - initial;
    match largest {
        Some(window) if change > 0 && granted(window, change).is_none() => None,
        _ => Some(change),
    }
}

/// One round of the connection's `window` (more than 0) among `waiting` streams (at least
/// one): the share each stream reached may write, and how many of them, from the first in
/// line, the window reaches. The share is equal, and at least [`MIN_SHARE`] unless the whole
/// window is smaller (then the first in line gets it all); the shares never add up to more
/// than the window.
pub(super) fn round(window: i64, waiting: usize) -> (i64, usize) {
    debug_assert!(window > 0 && waiting > 0);
    let share = (window / waiting as i64).max(MIN_SHARE.min(window));
    let reached = ((window / share) as usize).clamp(1, waiting);
    (share, reached)
}

/// What limits a stream's next DATA frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Room {
    /// It may write this many bytes (more than 0) in one frame.
    Bytes(usize),
    /// Its own window is spent.
    Stream,
    /// The connection's window, or its share of it (`allowance`), is spent.
    Connection,
}

/// How much of `len` bytes (more than 0) a stream may write in its next frame: within its own
/// window, the connection's, its share of the connection's when that is rationed
/// (`allowance`), and the client's largest frame.
pub(super) fn room(
    len: usize,
    stream: i64,
    connection: i64,
    allowance: Option<i64>,
    max_frame: usize,
) -> Room {
    if stream <= 0 {
        return Room::Stream;
    }
    let window = stream.min(connection).min(allowance.unwrap_or(i64::MAX));
    if window <= 0 {
        return Room::Connection;
    }
    Room::Bytes(len.min(window as usize).min(max_frame))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn window() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(0i64),
            Just(MAX_WINDOW),
            -70_000i64..0,
            1i64..2_000,
            1i64..=MAX_WINDOW
        ]
    }

    #[test]
    fn the_largest_window_is_reached_and_not_passed() {
        assert_eq!(granted(MAX_WINDOW - 5, 5), Some(MAX_WINDOW));
        assert_eq!(granted(MAX_WINDOW - 5, 6), None);
        assert_eq!(granted(-10, MAX_WINDOW), Some(MAX_WINDOW - 10));
        assert_eq!(initial_change(100, 105, Some(MAX_WINDOW - 5)), Some(5));
        assert_eq!(initial_change(100, 106, Some(MAX_WINDOW - 5)), None);
        // Lowering never overflows, even below zero.
        assert_eq!(initial_change(65_535, 0, Some(MAX_WINDOW)), Some(-65_535));
    }

    proptest! {
        #[test]
        fn an_increment_is_refused_exactly_when_it_passes_the_largest_window(
            window in window(),
            increment in 1i64..=MAX_WINDOW,
        ) {
            match granted(window, increment) {
                Some(now) => {
                    prop_assert_eq!(now, window + increment);
                    prop_assert!(now <= MAX_WINDOW);
                }
                None => prop_assert!(window + increment > MAX_WINDOW),
            }
        }

        #[test]
        fn a_new_initial_window_moves_every_window_by_the_change_unless_one_would_overflow(
            initial in 0i64..=MAX_WINDOW,
            value in 0i64..=MAX_WINDOW,
            largest in proptest::option::of(window()),
        ) {
            match initial_change(initial, value, largest) {
                Some(change) => {
                    prop_assert_eq!(change, value - initial);
                    if let Some(largest) = largest {
                        prop_assert!(change <= 0 || largest + change <= MAX_WINDOW);
                    }
                }
                None => {
                    let largest = largest.expect("only an open stream can overflow");
                    prop_assert!(value > initial && largest + value - initial > MAX_WINDOW);
                }
            }
        }

        #[test]
        fn a_round_never_shares_out_more_than_the_window_and_reaches_all_it_can(
            window in 1i64..=MAX_WINDOW,
            waiting in 1usize..300,
        ) {
            let (share, reached) = round(window, waiting);
            prop_assert!((1..=waiting).contains(&reached));
            prop_assert!(share >= MIN_SHARE.min(window));
            prop_assert!(share * reached as i64 <= window);
            // Everyone is reached when the window holds a smallest share for each; else as
            // many as it holds shares for.
            if window >= MIN_SHARE * waiting as i64 {
                prop_assert_eq!(reached, waiting);
            } else {
                prop_assert_eq!(reached as i64, (window / share).max(1));
            }
        }

        #[test]
        fn a_frame_never_exceeds_a_window_an_allowance_or_the_largest_frame(
            len in 1usize..100_000,
            stream in window(),
            connection in window(),
            allowance in proptest::option::of(-1_000i64..70_000),
            max_frame in 16_384usize..=(1 << 24) - 1,
        ) {
            match room(len, stream, connection, allowance, max_frame) {
                Room::Bytes(n) => {
                    prop_assert!(n > 0 && n <= len && n <= max_frame);
                    prop_assert!(n as i64 <= stream && n as i64 <= connection);
                    prop_assert!(allowance.is_none_or(|a| n as i64 <= a));
                    // As large as all of them allow.
                    let limit = stream.min(connection).min(allowance.unwrap_or(i64::MAX));
                    prop_assert_eq!(n, len.min(max_frame).min(limit as usize));
                }
                Room::Stream => prop_assert!(stream <= 0),
                Room::Connection => {
                    prop_assert!(stream > 0);
                    prop_assert!(connection <= 0 || allowance.is_some_and(|a| a <= 0));
                }
            }
        }
    }
}
