//! The keys a stream takes: one (`/{topic}/{key}`) or several (`/{topic}?key=A&key=B`), matched
//! against each record's key. Pure.
//!
//! A set is sorted and without duplicates, so two requests naming the same keys in another
//! order or with repeats read the same view (and share a connection's log); it is cheap to
//! clone (one reference count), since the hub keeps it with each group and resuming stream.

use std::fmt;
use std::sync::Arc;

/// One key or more, sorted, without duplicates: their bytes in one buffer, and where each
/// ends (a watchlist of 300 short keys takes two allocations of about 3 KiB, not 300).
#[derive(Clone)]
pub struct Keys(Arc<List>);

#[derive(PartialEq, Eq, Hash)]
struct List {
    bytes: Box<[u8]>,
    ends: Box<[u32]>,
}

impl Keys {
    /// The set of one key.
    pub fn one(key: Vec<u8>) -> Keys {
        let end = key.len() as u32;
        Keys(Arc::new(List {
            bytes: key.into_boxed_slice(),
            ends: Box::new([end]),
        }))
    }

    /// The set of `keys` (in any order, repeats allowed); `None` when there are none.
    pub fn new(mut keys: Vec<Vec<u8>>) -> Option<Keys> {
        if keys.is_empty() {
            return None;
        }
        keys.sort_unstable();
        keys.dedup();
        let mut bytes = Vec::with_capacity(keys.iter().map(Vec::len).sum());
        let mut ends = Vec::with_capacity(keys.len());
        for key in &keys {
            bytes.extend_from_slice(key);
            ends.push(bytes.len() as u32);
        }
        Some(Keys(Arc::new(List {
            bytes: bytes.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
        })))
    }

    /// Key `i`.
    fn get(&self, i: usize) -> &[u8] {
        let list = &*self.0;
        let start = i.checked_sub(1).map_or(0, |j| list.ends[j] as usize);
        &list.bytes[start..list.ends[i] as usize]
    }

    /// True when a record with key `key` belongs to the set (a record without a key never does).
    pub fn contains(&self, key: Option<&[u8]>) -> bool {
        let Some(key) = key else { return false };
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = (low + high) / 2;
            match self.get(mid).cmp(key) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// The key, for a set of one.
    pub fn single(&self) -> Option<&[u8]> {
        (self.len() == 1).then(|| self.first())
    }

    /// The first key (every set has one): where a set's entries in per-key maps are looked up.
    pub fn first(&self) -> &[u8] {
        self.get(0)
    }

    /// The keys, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.ends.len()
    }

    /// Never true: a set holds one key at least (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.0.ends.is_empty()
    }
}

impl PartialEq for Keys {
    fn eq(&self, other: &Keys) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Keys {}

impl std::hash::Hash for Keys {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.iter().take(8).map(String::from_utf8_lossy);
        let mut list = f.debug_list();
        list.entries(shown);
        if self.len() > 8 {
            list.entry(&format_args!("… {} keys", self.len()));
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Keys {
        Keys::new(list.iter().map(|k| k.as_bytes().to_vec()).collect()).unwrap()
    }

    #[test]
    fn a_set_is_sorted_and_without_repeats_whatever_the_order_asked() {
        assert_eq!(keys(&["b", "a", "b"]), keys(&["a", "b"]));
        assert_eq!(keys(&["b", "a"]).iter().collect::<Vec<_>>(), [b"a", b"b"]);
        assert_eq!(keys(&["a", "a"]), Keys::one(b"a".to_vec()));
        assert_eq!(keys(&["a", "a"]).single(), Some(&b"a"[..]));
        assert_eq!(keys(&["a", "b"]).single(), None);
        assert_ne!(keys(&["a"]), keys(&["a", "b"]));
        assert!(Keys::new(Vec::new()).is_none());
    }

    #[test]
    fn contains_matches_exact_keys_only() {
        let set = keys(&["GOOG", "AAPL", "", "MSFT"]);
        for k in ["GOOG", "AAPL", "MSFT", ""] {
            assert!(set.contains(Some(k.as_bytes())), "{k}");
        }
        for k in ["GOO", "GOOGL", "aapl", "Z"] {
            assert!(!set.contains(Some(k.as_bytes())), "{k}");
        }
        assert!(!set.contains(None), "a record without a key matches no key");
        assert!(Keys::one(Vec::new()).contains(Some(b"")));
        assert!(!Keys::one(Vec::new()).contains(None));
        // Keys that are prefixes of each other, and bytes of any value.
        let set = Keys::new(vec![
            b"ab".to_vec(),
            b"a".to_vec(),
            b"abc".to_vec(),
            vec![0xff, 0],
        ])
        .unwrap();
        for k in [&b"a"[..], b"ab", b"abc", &[0xff, 0]] {
            assert!(set.contains(Some(k)), "{k:?}");
        }
        for k in [&b""[..], b"b", b"abcd", &[0xff]] {
            assert!(!set.contains(Some(k)), "{k:?}");
        }
        assert_eq!(set.first(), b"a");
        assert_eq!(set.len(), 4);
    }
}
