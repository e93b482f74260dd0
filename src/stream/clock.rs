//! One clock for the heartbeats and lifetimes of every stream of a gateway, instead of a timer
//! per stream.
//!
//! The clock counts *rounds*: [`ROUNDS`] per heartbeat interval. A stream remembers the round of
//! its last write (one atomic load per event: no system clock, no timer to move) and, when it
//! has nothing to send, parks its waker in the slot of the round its heartbeat (or its end) is
//! due, once per due round. Each round the ticker wakes that round's slot and nothing else, so
//! a busy stream costs the clock one wake-up per heartbeat interval and an idle one a heartbeat.
//!
//! A heartbeat therefore follows between `(ROUNDS - 1) / ROUNDS` and one full interval of quiet:
//! early by at most one round, never late, which is what a proxy's idle timeout needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

/// Rounds per heartbeat interval.
pub const ROUNDS: u64 = 8;
/// Waker slots: one more than [`ROUNDS`], so a round being woken never shares its slot with a
/// round a stream may still register for (at most [`ROUNDS`] ahead).
const SLOTS: usize = ROUNDS as usize + 1;

/// The rounds of one gateway's streams.
pub struct StreamClock {
    round: AtomicU64,
    every: Duration,
    slots: [Mutex<Vec<Waker>>; SLOTS],
}

impl StreamClock {
    /// A clock for streams whose heartbeat interval is `heartbeat`; it ticks once
    /// [`StreamClock::run`] runs.
    pub fn new(heartbeat: Duration) -> Arc<StreamClock> {
        let every = (heartbeat / ROUNDS as u32).max(Duration::from_millis(1));
        Arc::new(StreamClock {
            round: AtomicU64::new(0),
            every,
            slots: std::array::from_fn(|_| Mutex::new(Vec::new())),
        })
    }

    /// A clock that ticks on the current runtime until the last handle on it is gone.
    pub fn start(heartbeat: Duration) -> Arc<StreamClock> {
        let clock = StreamClock::new(heartbeat);
        tokio::spawn(StreamClock::run(Arc::downgrade(&clock)));
        clock
    }

    /// Ticks every round until the clock is dropped.
    async fn run(clock: Weak<StreamClock>) {
        let Some(every) = clock.upgrade().map(|c| c.every) else {
            return;
        };
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match clock.upgrade() {
                Some(clock) => clock.advance(),
                None => return,
            }
        }
    }

    /// The current round.
    pub fn now(&self) -> u64 {
        self.round.load(Ordering::Acquire)
    }

    /// The length of a round.
    pub fn round_length(&self) -> Duration {
        self.every
    }

    /// Rounds in `d`, rounded up (a lifetime never ends early because of the clock's grain).
    pub fn rounds_in(&self, d: Duration) -> u64 {
        let every = self.every.as_nanos().max(1);
        d.as_nanos().div_ceil(every).min(u64::MAX as u128) as u64
    }

    /// Starts the next round: wakes the streams waiting for it.
    pub fn advance(&self) {
        let round = self.round.fetch_add(1, Ordering::AcqRel) + 1;
        let due = std::mem::take(&mut *self.slot(round));
        for waker in due {
            waker.wake();
        }
    }

    /// Parks `waker` until round `due`. Returns false when `due` has come meanwhile (the caller
    /// acts now instead). `due` must be at most [`ROUNDS`] ahead of [`StreamClock::now`].
    pub fn wake_at(&self, due: u64, waker: &Waker) -> bool {
        debug_assert!(due <= self.now() + ROUNDS);
        self.slot(due).push(waker.clone());
        // The ticker moves the round before it empties the slot: a round seen here that has
        // not reached `due` will still find the waker in its slot.
        self.now() < due
    }

    fn slot(&self, round: u64) -> MutexGuard<'_, Vec<Waker>> {
        self.slots[(round % SLOTS as u64) as usize].lock()
    }
}

/// One stream's appointments with the clock: its heartbeat and, when it has one, its end.
pub struct Appointments {
    clock: Arc<StreamClock>,
    /// The round of the stream's last write.
    last_write: u64,
    /// The round the stream ends at (`u64::MAX`: never).
    ends_at: u64,
    /// The round the stream's waker is parked for (0: none): parked once per due round, not
    /// once per write.
    parked_for: u64,
}

/// What the clock says a quiet stream should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Write a heartbeat.
    Heartbeat,
    /// End: its lifetime is over.
    End,
    /// Nothing yet; the stream is woken when something is due.
    Nothing,
}

impl Appointments {
    /// Appointments from now, for a stream that lives `lifetime` (`None`: for ever).
    pub fn new(clock: Arc<StreamClock>, lifetime: Option<Duration>) -> Appointments {
        let now = clock.now();
        let ends_at = lifetime.map_or(u64::MAX, |d| now.saturating_add(clock.rounds_in(d)));
        Appointments {
            clock,
            last_write: now,
            ends_at,
            parked_for: 0,
        }
    }

    /// True once the stream's lifetime is over.
    pub fn over(&self) -> bool {
        self.clock.now() >= self.ends_at
    }

    /// The stream wrote something: its heartbeat moves.
    pub fn wrote(&mut self) {
        self.last_write = self.clock.now();
    }

    /// For a stream with nothing to send: what is due now, or a wake-up for when it is.
    pub fn poll(&mut self, waker: &Waker) -> Due {
        loop {
            let now = self.clock.now();
            if now >= self.ends_at {
                return Due::End;
            }
            let heartbeat = self.last_write + ROUNDS;
            if now >= heartbeat {
                self.last_write = now;
                return Due::Heartbeat;
            }
            if self.parked_for > now {
                // Woken at that round (no later than what is due now: writes only move the
                // heartbeat later), the stream looks again then.
                return Due::Nothing;
            }
            let due = heartbeat.min(self.ends_at);
            self.parked_for = due;
            if self.clock.wake_at(due, waker) {
                return Due::Nothing;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::counting_waker as counter;

    #[test]
    fn a_quiet_stream_gets_a_heartbeat_after_one_interval_of_rounds() {
        let clock = StreamClock::new(Duration::from_secs(8));
        let (woken, waker) = counter();
        let mut stream = Appointments::new(clock.clone(), None);
        assert_eq!(stream.poll(&waker), Due::Nothing);
        assert_eq!(
            stream.poll(&waker),
            Due::Nothing,
            "parked once per due round"
        );
        for _ in 0..ROUNDS - 1 {
            clock.advance();
        }
        assert_eq!(woken.get(), 0);
        clock.advance();
        assert_eq!(woken.get(), 1, "woken at the due round");
        assert_eq!(stream.poll(&waker), Due::Heartbeat);
        assert_eq!(
            stream.poll(&waker),
            Due::Nothing,
            "the next one is an interval away"
        );
        for _ in 0..ROUNDS {
            clock.advance();
        }
        assert_eq!(woken.get(), 2);
        assert_eq!(stream.poll(&waker), Due::Heartbeat);
    }

    #[test]
    fn writes_move_the_heartbeat_and_a_busy_stream_is_woken_once_per_interval() {
        let clock = StreamClock::new(Duration::from_secs(8));
        let (woken, waker) = counter();
        let mut stream = Appointments::new(clock.clone(), None);
        assert_eq!(stream.poll(&waker), Due::Nothing);
        for _ in 0..3 * ROUNDS {
            clock.advance();
            stream.wrote();
            assert_eq!(stream.poll(&waker), Due::Nothing);
        }
        // Parked at rounds 8, 16 and 24, each time after a write: woken three times, no
        // heartbeat.
        assert_eq!(woken.get(), 3);
    }

    #[test]
    fn a_lifetime_ends_at_its_round_rounded_up() {
        let clock = StreamClock::new(Duration::from_secs(8));
        assert_eq!(clock.round_length(), Duration::from_secs(1));
        let (woken, waker) = counter();
        let mut stream = Appointments::new(clock.clone(), Some(Duration::from_millis(2500)));
        assert_eq!(stream.poll(&waker), Due::Nothing);
        clock.advance();
        clock.advance();
        assert_eq!(woken.get(), 0, "2 s is not 2.5 s");
        clock.advance();
        assert_eq!(woken.get(), 1);
        assert_eq!(stream.poll(&waker), Due::End);
    }

    #[test]
    fn a_round_that_passes_while_parking_is_not_missed() {
        let clock = StreamClock::new(Duration::from_secs(8));
        let (_, waker) = counter();
        // The due round came between the stream's look at the clock and its parking.
        for _ in 0..ROUNDS {
            clock.advance();
        }
        assert!(!clock.wake_at(ROUNDS, &waker));
        let mut stream = Appointments {
            clock: clock.clone(),
            last_write: 0,
            ends_at: u64::MAX,
            parked_for: 0,
        };
        assert_eq!(stream.poll(&waker), Due::Heartbeat);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_runs_rounds_on_the_runtime_clock_until_dropped() {
        let clock = StreamClock::start(Duration::from_secs(16));
        let (woken, waker) = counter();
        let mut stream = Appointments::new(clock.clone(), None);
        assert_eq!(stream.poll(&waker), Due::Nothing);
        tokio::time::sleep(Duration::from_millis(15_900)).await;
        assert_eq!(woken.get(), 0);
        assert_eq!(stream.poll(&waker), Due::Nothing);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(woken.get(), 1);
        assert_eq!(stream.poll(&waker), Due::Heartbeat);
        assert_eq!(clock.now(), ROUNDS);
        let weak = Arc::downgrade(&clock);
        drop((stream, clock));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(weak.upgrade().is_none(), "the ticker holds no handle");
    }
}
