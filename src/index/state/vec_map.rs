//! [`VecMap`]: a small ordered map kept as one sorted vector, which is what a file's versions
//! and holders are. Most files have one version and one or two holders, and for those a
//! `BTreeMap` allocates a whole node of eleven slots (about 550 bytes for one version, 370
//! for one holder); a `VecMap` allocates the entries it has. Lookups are binary searches; an
//! insert or a removal moves the entries after it, which stays cheap at the sizes a file's
//! holders reach (a file held by 1,000 peers moves at most 32 KB).
//!
//! It serializes exactly as a `BTreeMap` does (a JSON object in key order), so snapshots
//! written before it read back, and state digests are unchanged.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Entries up to this many grow one at a time (most maps never pass it); beyond it the
/// vector doubles as usual, so a popular file's holders are not reallocated on every insert.
const EXACT_UP_TO: usize = 8;

#[derive(Clone, PartialEq, Eq)]
pub struct VecMap<K, V>(Vec<(K, V)>);

/// The entries of a [`VecMap`], in key order.
pub type Iter<'a, K, V> =
    std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

fn pair<K, V>((k, v): &(K, V)) -> (&K, &V) {
    (k, v)
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> VecMap<K, V> {
    pub fn new() -> Self {
        VecMap::default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        self.0.iter().map(pair as fn(&(K, V)) -> (&K, &V))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }

    /// The entry with the greatest key.
    pub fn last(&self) -> Option<(&K, &V)> {
        self.0.last().map(pair)
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; returns the value it had.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.make_room();
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`, inserted from `value()` if it was missing.
    pub fn get_or_insert_with(&mut self, key: K, value: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.make_room();
                self.0.insert(i, (key, value()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.find(key).ok()?;
        let (_, value) = self.0.remove(i);
        // Memory goes back with the entries: nothing at all once empty (a history nobody
        // holds keeps no holder slot), and a quarter-full vector halves.
        if self.0.is_empty() {
            self.0 = Vec::new();
        } else if self.0.capacity() > EXACT_UP_TO && self.0.len() < self.0.capacity() / 4 {
            self.0.shrink_to(self.0.len() * 2);
        }
        Some(value)
    }

    /// Room for one more entry: exactly one while the map is small.
    fn make_room(&mut self) {
        if self.0.len() < EXACT_UP_TO {
            self.0.reserve_exact(1);
        }
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    /// As a `BTreeMap` collects: in key order, a later value for a key replacing an earlier.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = VecMap::new();
        for (k, v) in entries {
            map.insert(k, v);
        }
        map
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K, V> Deserialize<'de> for VecMap<K, V>
where
    K: Ord + Deserialize<'de>,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for Entries<K, V>
        where
            K: Ord + Deserialize<'de>,
            V: Deserialize<'de>,
        {
            type Value = VecMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                // Written in key order, so each entry goes on the end; out of order (a file
                // edited by hand) it still comes out sorted.
                let mut map = VecMap(Vec::with_capacity(access.size_hint().unwrap_or(0).min(64)));
                while let Some((k, v)) = access.next_entry()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn it_behaves_and_serializes_as_a_btree_map() {
        let mut map: VecMap<u64, String> = VecMap::new();
        let mut tree: BTreeMap<u64, String> = BTreeMap::new();
        let mut seed = 7u64;
        for step in 0..2_000u64 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let key = (seed >> 33) % 40;
            if (seed >> 20).is_multiple_of(3) {
                assert_eq!(map.remove(&key), tree.remove(&key));
            } else {
                let value = format!("v{step}");
                assert_eq!(map.insert(key, value.clone()), tree.insert(key, value));
            }
            assert_eq!(map.len(), tree.len());
            assert_eq!(map.last(), tree.iter().next_back());
            assert!(map.iter().eq(tree.iter()));
        }
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            serde_json::to_string(&tree).unwrap()
        );
        let json = r#"{"3":"c","1":"a","2":"b","1":"z"}"#;
        let back: VecMap<u64, String> = serde_json::from_str(json).unwrap();
        let tree: BTreeMap<u64, String> = serde_json::from_str(json).unwrap();
        assert!(back.iter().eq(tree.iter()), "sorted, the later value kept");
        assert!(serde_json::from_str::<VecMap<u64, String>>(r#"{"x":"a"}"#).is_err());
    }

    #[test]
    fn a_small_map_holds_no_spare_room_and_an_empty_one_none() {
        let mut map: VecMap<String, u64> = VecMap::new();
        map.insert("b".into(), 1);
        map.insert("a".into(), 2);
        assert_eq!(map.0.capacity(), 2);
        assert_eq!(*map.get_or_insert_with("c".into(), || 3), 3);
        assert_eq!(*map.get_or_insert_with("c".into(), || 9), 3);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        for key in ["a", "b", "c"] {
            map.remove(key);
        }
        assert_eq!(map.0.capacity(), 0);
    }
}
