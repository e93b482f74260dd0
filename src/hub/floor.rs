//! A resumed stream's floor: the position its client already has. Records below it are
//! skipped; an event whose shared id does not yet cover it gets its id raised to cover both,
//! until the shared ids pass the floor and the stream shares bytes again. A key stream whose
//! ids name only its key's partition (its *scope*) carries that partition's offset alone.

use bytes::Bytes;

use super::replay::Ring;
use crate::position;
use crate::sse;

/// The id a stream carries for `position`: the whole vector, or only the scoped partition.
pub(super) fn id_for(fingerprint: u32, scope: Option<usize>, position: &[i64]) -> String {
    match scope {
        None => position::encode_dense(fingerprint, position),
        Some(p) => position::encode_sparse(fingerprint, &[(p as i32, position[p])]),
    }
}

/// Appends to `events` the ring's events after `from` for a stream with key filter `key` and
/// scope `scope`, each the ring's own bytes where the stream shares them (no copy); returns the
/// stream's floor after them (`None` once its ids are shared).
pub(super) fn replay(
    fingerprint: u32,
    ring: Option<&Ring>,
    key: Option<&[u8]>,
    scope: Option<usize>,
    from: Vec<i64>,
    events: &mut Vec<Bytes>,
) -> Option<Vec<i64>> {
    let mut floor = Some(from);
    for (entry, after) in ring.into_iter().flat_map(Ring::iter_with_positions) {
        if key.is_some() && entry.key.as_deref() != key {
            continue;
        }
        let shared = match scope {
            None => entry.event.clone(),
            Some(_) => sse::with_id(&entry.event, &id_for(fingerprint, scope, &after)),
        };
        if let Some(bytes) = for_stream(
            &mut floor,
            scope,
            entry.partition,
            entry.offset,
            &after,
            &shared,
            fingerprint,
        ) {
            events.push(bytes);
        }
    }
    floor
}

/// True when `a` is at or after `b` on every partition.
pub(super) fn covers(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x >= y)
}

/// Decides what a stream with an optional floor receives for one event; `None`: nothing.
#[allow(clippy::too_many_arguments)]
pub(super) fn for_stream(
    floor: &mut Option<Vec<i64>>,
    scope: Option<usize>,
    partition: usize,
    offset: i64,
    after: &[i64],
    event: &Bytes,
    fingerprint: u32,
) -> Option<Bytes> {
    let Some(f) = floor else {
        return Some(event.clone());
    };
    if offset < f[partition] {
        return None;
    }
    if covers(after, f) {
        *floor = None;
        return Some(event.clone());
    }
    for (mine, theirs) in f.iter_mut().zip(after) {
        *mine = (*mine).max(*theirs);
    }
    Some(sse::with_id(event, &id_for(fingerprint, scope, f)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::replay::Entry;

    #[test]
    fn covers_is_at_or_after_on_every_partition() {
        assert!(covers(&[5, 3], &[5, 3]));
        assert!(covers(&[6, 4], &[5, 3]));
        assert!(!covers(&[6, 2], &[5, 3]));
        assert!(!covers(&[5, 3], &[5, 3, 0]), "another partition count");
        assert!(covers(&[], &[]));
    }

    #[test]
    fn id_for_names_every_partition_or_only_the_scope() {
        let fp = position::fingerprint("t");
        assert_eq!(
            id_for(fp, None, &[5, 3]),
            position::encode_dense(fp, &[5, 3])
        );
        assert_eq!(
            id_for(fp, Some(1), &[5, 3]),
            position::encode_sparse(fp, &[(1, 3)])
        );
    }

    /// A ring from position [10, 20] holding p0@10 (key a), p1@20 (key b), p0@11 (key a), each
    /// encoded with the dense id of the position after it, as the hub encodes them.
    fn ring(fp: u32) -> (Ring, Vec<Bytes>) {
        let mut ring = Ring::new(1 << 20, vec![10, 20]);
        let mut events = Vec::new();
        let mut at = vec![10, 20];
        for (partition, offset, key) in [(0, 10, "a"), (1, 20, "b"), (0, 11, "a")] {
            at[partition] = offset + 1;
            let event = sse::record_event(
                &position::encode_dense(fp, &at),
                Some(key.as_bytes()),
                Some(b"v"),
            );
            events.push(event.clone());
            ring.push(Entry {
                partition,
                offset,
                key: Some(Bytes::from(key)),
                event,
            });
        }
        (ring, events)
    }

    #[test]
    fn replay_sends_the_shared_bytes_once_the_floor_is_covered() {
        let fp = position::fingerprint("t");
        let (ring, events) = ring(fp);
        let mut batch = Vec::new();
        assert_eq!(
            replay(fp, Some(&ring), None, None, vec![10, 20], &mut batch),
            None
        );
        assert_eq!(batch, events);
        assert!(
            batch
                .iter()
                .zip(&events)
                .all(|(a, b)| a.as_ptr() == b.as_ptr()),
            "the ring's own bytes, not copies"
        );
        let mut batch = Vec::new();
        let floor = replay(fp, Some(&ring), Some(b"a"), None, vec![11, 20], &mut batch);
        assert_eq!(floor, None);
        assert_eq!(batch, [events[2].clone()], "only key a, after offset 10");
        let mut batch = Vec::new();
        assert_eq!(
            replay(fp, None, None, None, vec![3, 4], &mut batch),
            Some(vec![3, 4]),
            "no ring: nothing sent, the floor stays"
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn replay_raises_ids_below_the_floor_and_names_only_the_scope() {
        let fp = position::fingerprint("t");
        let (ring, events) = ring(fp);
        // Another replica's client has p0 up to 12: p0@10 and p0@11 are skipped, p1@20 goes
        // out with an id that covers both positions, and the floor stays.
        let mut batch = Vec::new();
        let floor = replay(fp, Some(&ring), None, None, vec![12, 20], &mut batch);
        assert_eq!(floor, Some(vec![12, 21]));
        let raised = sse::with_id(&events[1], &position::encode_dense(fp, &[12, 21]));
        assert_eq!(batch, [raised]);
        // A short-id stream of key a on partition 0 gets ids naming p0 alone.
        let mut batch = Vec::new();
        let floor = replay(
            fp,
            Some(&ring),
            Some(b"a"),
            Some(0),
            vec![11, 21],
            &mut batch,
        );
        assert_eq!(floor, None);
        let short = sse::with_id(&events[2], &position::encode_sparse(fp, &[(0, 12)]));
        assert_eq!(batch, [short]);
    }

    #[test]
    fn floor_skips_below_and_raises_ids_until_covered() {
        let fp = position::fingerprint("t");
        let event = sse::record_event(&position::encode_dense(fp, &[5, 3]), None, Some(b"v"));
        // The client has p0 up to 6 and p1 up to 2 (another replica's interleaving).
        let mut floor = Some(vec![6, 2]);
        assert_eq!(
            for_stream(&mut floor, None, 0, 4, &[5, 3], &event, fp),
            None,
            "p0@4 already delivered"
        );
        let raised = for_stream(&mut floor, None, 1, 2, &[5, 3], &event, fp).unwrap();
        let id = position::encode_dense(fp, &[6, 3]);
        assert_eq!(raised, sse::with_id(&event, &id));
        assert_eq!(floor, Some(vec![6, 3]));
        // Once the shared id covers the floor, the shared bytes go out and the floor is gone.
        let event2 = sse::record_event(&position::encode_dense(fp, &[7, 3]), None, Some(b"w"));
        assert_eq!(
            for_stream(&mut floor, None, 0, 6, &[7, 3], &event2, fp),
            Some(event2.clone())
        );
        assert_eq!(floor, None);
    }
}
