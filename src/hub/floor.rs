//! A resumed stream's floor: the position its client already has. Records below it are
//! skipped; an event whose shared id does not yet cover it gets its id raised to cover both,
//! until the shared ids pass the floor and the stream shares bytes again. A key stream whose
//! ids name only its key's partition (its *scope*) carries that partition's offset alone.

use bytes::Bytes;

use crate::position;
use crate::sse;

/// The id a stream carries for `position`: the whole vector, or only the scoped partition.
pub(super) fn id_for(fingerprint: u32, scope: Option<usize>, position: &[i64]) -> String {
    match scope {
        None => position::encode_dense(fingerprint, position),
        Some(p) => position::encode_sparse(fingerprint, &[(p as i32, position[p])]),
    }
}

/// True when `a` is at or after `b` on every partition.
pub(super) fn covers(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x >= y)
}

/// What a stream with an optional floor does with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Its client already has the record.
    Skip,
    /// The event as every stream gets it (the floor, if any, is gone).
    Shared,
    /// The event with its id raised to the floor, which now covers the event's id too.
    Raised,
}

/// Judges an event of `partition`@`offset`, whose shared id is the position `after`, for a
/// stream with `floor`, and moves the floor: gone once `after` covers it, raised otherwise.
pub(super) fn judge(
    floor: &mut Option<Vec<i64>>,
    partition: usize,
    offset: i64,
    after: &[i64],
) -> Verdict {
    let Some(f) = floor else {
        return Verdict::Shared;
    };
    if offset < f[partition] {
        return Verdict::Skip;
    }
    if covers(after, f) {
        *floor = None;
        return Verdict::Shared;
    }
    for (mine, theirs) in f.iter_mut().zip(after) {
        *mine = (*mine).max(*theirs);
    }
    Verdict::Raised
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
    match judge(floor, partition, offset, after) {
        Verdict::Skip => None,
        Verdict::Shared => Some(event.clone()),
        Verdict::Raised => {
            let f = floor.as_deref().unwrap_or(after);
            Some(sse::with_id(event, &id_for(fingerprint, scope, f)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
