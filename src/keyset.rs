//! The keys a stream takes: one (`/{topic}/{key}`) or several (`/{topic}?key=A&key=B`), matched
//! against each record's key. Pure.
//!
//! A set is sorted and without duplicates, so two requests naming the same keys in another
//! order or with repeats read the same view (and share a connection's log); it is cheap to
//! clone (one reference count), since the hub keeps it with each group and resuming stream.

use std::fmt;
use std::sync::Arc;

/// One key or more, sorted, without duplicates.
#[derive(Clone)]
pub struct Keys(Arc<[Vec<u8>]>);

impl Keys {
    /// The set of one key.
    pub fn one(key: Vec<u8>) -> Keys {
        Keys(Arc::from(vec![key]))
    }

    /// The set of `keys` (in any order, repeats allowed); `None` when there are none.
    pub fn new(mut keys: Vec<Vec<u8>>) -> Option<Keys> {
        if keys.is_empty() {
            return None;
        }
        keys.sort_unstable();
        keys.dedup();
        Some(Keys(Arc::from(keys)))
    }

    /// True when a record with key `key` belongs to the set (a record without a key never does).
    pub fn contains(&self, key: Option<&[u8]>) -> bool {
        let Some(key) = key else { return false };
        match &*self.0 {
            [one] => one.as_slice() == key,
            many => many.binary_search_by(|k| k.as_slice().cmp(key)).is_ok(),
        }
    }

    /// The key, for a set of one.
    pub fn single(&self) -> Option<&[u8]> {
        match &*self.0 {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The first key (every set has one): where a set's entries in per-key maps are looked up.
    pub fn first(&self) -> &[u8] {
        &self.0[0]
    }

    /// The keys, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(Vec::as_slice)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a set holds one key at least (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
        let shown = self.0.iter().take(8).map(|k| String::from_utf8_lossy(k));
        let mut list = f.debug_list();
        list.entries(shown);
        if self.0.len() > 8 {
            list.entry(&format_args!("… {} keys", self.0.len()));
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
    }
}
