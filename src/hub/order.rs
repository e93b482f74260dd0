//! The hub's lock order, written once and checked in debug builds.
//!
//! Three kinds of lock, always taken in this order and never the other way round, and never
//! two of one kind at once:
//! 1. a topic's state ([`super::topic::Topic::lock`]): its position, ring, streams and groups;
//! 2. a connection's list of groups ([`super::group::Fanout`]);
//! 3. a group's log ([`super::group::Group`]): the events its streams share and their places.
//!
//! A topic's replay ring has a lock of its own, a leaf: taken under the topic's lock by the poll
//! thread (to append) and by a stream opening (to place its replay), and under a stream's
//! queue's lock by the stream reading its replay; nothing is taken under it. So are a
//! connection's lists of the groups it has to look at (`group::Touched`): taken under a group's
//! log (by an append, or a stream's read) or alone (by the connection's task).
//!
//! The Kafka reader takes 1 then 3 (it appends each record's event to the logs under the topic's
//! lock); opening and ending a stream take 1, then 2 or 3; a connection's task takes 2 or 3
//! alone. None of them holds a lock across an `.await`. In debug builds each lock taken
//! through [`Ordered`] asserts that the thread holds no lock of its level or a later one.

use std::ops::{Deref, DerefMut};

/// A lock's place in the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    Topic = 1,
    Groups = 2,
    Log = 3,
}

#[cfg(debug_assertions)]
thread_local! {
    /// The latest level of lock this thread holds (0: none).
    static HELD: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// A guard taken in the hub's lock order (checked in debug builds).
pub(super) struct Ordered<G> {
    guard: G,
    #[cfg(debug_assertions)]
    previous: u8,
}

impl<G> Ordered<G> {
    /// Wraps a guard at `level`, just taken: in debug builds, panics if the thread already
    /// holds a lock of this level or a later one.
    pub(super) fn new(level: Level, guard: G) -> Ordered<G> {
        #[cfg(debug_assertions)]
        {
            let previous = HELD.with(|held| held.replace(level as u8));
            assert!(
                previous < level as u8,
                "lock order: {level:?} taken while holding a lock of level {previous}"
            );
            Ordered { guard, previous }
        }
        #[cfg(not(debug_assertions))]
        {
            let _ = level;
            Ordered { guard }
        }
    }
}

impl<G> Drop for Ordered<G> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        HELD.with(|held| held.set(self.previous));
    }
}

impl<G: Deref> Deref for Ordered<G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Ordered<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn locks_in_order_pass_and_out_of_order_panic() {
        let (topic, log) = (Mutex::new(1), Mutex::new(2));
        {
            let _t = Ordered::new(Level::Topic, topic.lock());
            let _l = Ordered::new(Level::Log, log.lock());
        }
        // Released: the same locks again, one at a time.
        drop(Ordered::new(Level::Log, log.lock()));
        drop(Ordered::new(Level::Topic, topic.lock()));
        let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _l = Ordered::new(Level::Log, log.lock());
            let _t = Ordered::new(Level::Topic, topic.lock());
        }));
        assert!(wrong.is_err(), "the topic's lock under a log's is refused");
        HELD.with(|held| held.set(0));
    }
}
