//! The replay ring: one topic's recent events in dispatch order, bounded in bytes.
//!
//! Kept in the order the hub dispatched them, so every stored event's id (the hub's position
//! after it) stays valid for a client that resumes from inside the ring. `start` is the
//! position before the oldest entry: the ring holds every record at or after it, so a resume
//! from a position at or after `start` on every partition is served from memory.

use std::collections::VecDeque;

use bytes::Bytes;

/// Fixed per-entry bookkeeping counted against the byte budget.
const ENTRY_OVERHEAD: usize = 64;

/// One dispatched record, already encoded.
pub struct Entry {
    /// Partition of the record.
    pub partition: usize,
    /// Offset of the record.
    pub offset: i64,
    /// Key, for key-filtered replays.
    pub key: Option<Bytes>,
    /// The encoded event, id included.
    pub event: Bytes,
}

impl Entry {
    fn cost(&self) -> usize {
        self.event.len() + self.key.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD
    }
}

/// The ring of one topic.
pub struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    limit: usize,
    start: Vec<i64>,
}

impl Ring {
    /// An empty ring whose coverage starts at `position`, holding at most `limit` bytes.
    pub fn new(limit: usize, position: Vec<i64>) -> Ring {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
            start: position,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends an entry and evicts the oldest ones beyond the budget. Returns the change in bytes.
    pub fn push(&mut self, entry: Entry) -> isize {
        let before = self.bytes as isize;
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        while self.bytes > self.limit {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
            self.start[old.partition] = old.offset + 1;
        }
        self.bytes as isize - before
    }

    /// Partitions added to the topic: the ring holds all of them from their log start.
    pub fn grow(&mut self, starts: &[i64]) {
        self.start.extend_from_slice(starts);
    }

    /// True when every partition of `from` is at or after the ring's start (no gap).
    pub fn covers(&self, from: &[i64]) -> bool {
        from.len() == self.start.len() && from.iter().zip(&self.start).all(|(f, s)| f >= s)
    }

    /// The entries in dispatch order, each with the hub's position after it.
    pub fn iter_with_positions(&self) -> impl Iterator<Item = (&Entry, Vec<i64>)> + '_ {
        let mut position = self.start.clone();
        self.entries.iter().map(move |e| {
            position[e.partition] = e.offset + 1;
            (e, position.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: usize, offset: i64, size: usize) -> Entry {
        Entry {
            partition,
            offset,
            key: None,
            event: Bytes::from(vec![b'x'; size]),
        }
    }

    #[test]
    fn evicts_oldest_and_moves_start() {
        let mut ring = Ring::new(3 * (100 + ENTRY_OVERHEAD), vec![10, 20]);
        ring.push(entry(0, 10, 100));
        ring.push(entry(1, 20, 100));
        ring.push(entry(0, 11, 100));
        assert!(ring.covers(&[10, 20]));
        ring.push(entry(1, 21, 100));
        assert_eq!(ring.bytes(), 3 * (100 + ENTRY_OVERHEAD));
        assert!(
            !ring.covers(&[10, 20]),
            "offset 10 of partition 0 was evicted"
        );
        assert!(ring.covers(&[11, 20]));
        let positions: Vec<Vec<i64>> = ring.iter_with_positions().map(|(_, p)| p).collect();
        assert_eq!(positions, vec![vec![11, 21], vec![12, 21], vec![12, 22]]);
    }

    #[test]
    fn an_oversized_event_does_not_stay() {
        let mut ring = Ring::new(50, vec![0]);
        ring.push(entry(0, 0, 1000));
        assert_eq!(ring.bytes(), 0);
        assert!(ring.covers(&[1]) && !ring.covers(&[0]));
    }

    #[test]
    fn wrong_partition_count_is_not_covered() {
        assert!(!Ring::new(10, vec![0, 0]).covers(&[0]));
    }
}
