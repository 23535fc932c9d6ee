//! One token's posting: the held names containing it, as their rank keys, kept in whichever
//! shape its size calls for. It owns no names and no counts: keys come in from the search
//! index, which keeps each name's current key.
//!
//! - **Few** (at most [`FEW_MAX`] names): the keys in a `Vec` sorted by name id. A query
//!   driven by such a token reads all of it, sequentially (64 KiB at most), ranking as it
//!   goes; two small postings intersect by a merge of their id orders, without touching
//!   anything else; membership is a binary search; a holder count changing rewrites one key
//!   in place.
//! - **Ranked** (more): a `BTreeSet<RankKey>` in rank order, best first, so that a query
//!   takes its best names from the front and stops as soon as it has enough. A name whose
//!   holder count changes moves in each ranked posting it is in (one `u128` B-tree removal
//!   and insertion each, about a microsecond at a million names).
//! - **Dense** (any ranked posting holding at least 1/16 of all names): also a bitmap over
//!   name ids, at most 2 bytes a name it holds, for O(1) membership tests and word-wide
//!   intersection counts. Without it, telling how many names contain both `mp3` and
//!   `track` would mean visiting every one of them.

use std::collections::BTreeSet;

/// Largest posting kept as a plain sorted list. The unit tests use a smaller one, so that a
/// few thousand names take postings through every shape (the code is the same).
pub(super) const FEW_MAX: usize = if cfg!(test) { 64 } else { 4096 };

/// A name's place in the ranking as one integer: more up-to-date holders first (the count is
/// stored inverted), then name order (the name's label, see `order`), then its id (so a key
/// also says which name it is). Smaller is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(super) struct RankKey(u128);

impl RankKey {
    pub fn new(holders: u32, label: u64, id: u32) -> RankKey {
        RankKey((u128::from(u32::MAX - holders) << 96) | (u128::from(label) << 32) | u128::from(id))
    }

    pub fn id(self) -> u32 {
        self.0 as u32
    }

    pub fn label(self) -> u64 {
        (self.0 >> 32) as u64
    }

    pub fn holders(self) -> u32 {
        u32::MAX - (self.0 >> 96) as u32
    }

    pub fn with_holders(self, holders: u32) -> RankKey {
        RankKey::new(holders, self.label(), self.id())
    }

    pub fn with_label(self, label: u64) -> RankKey {
        RankKey::new(self.holders(), label, self.id())
    }
}

/// Smallest ranked posting that also keeps a bitmap, given how many ids are in use: a
/// bitmap costs an eighth of a byte per id, so from 1/16 of all ids it costs at most 2 bytes
/// per name it holds.
pub(super) fn dense_min(ids: usize) -> usize {
    (ids / 16).max(FEW_MAX + 1)
}

#[derive(Debug)]
enum Members {
    /// Sorted by id.
    Few(Vec<RankKey>),
    Ranked(BTreeSet<RankKey>),
}

#[derive(Debug)]
pub(super) struct Posting {
    members: Members,
    dense: Option<Bits>,
}

impl Default for Posting {
    fn default() -> Posting {
        Posting {
            members: Members::Few(Vec::new()),
            dense: None,
        }
    }
}

impl Posting {
    /// A posting of `keys` (any order), shaped for its size among `ids` ids in use.
    pub fn from_keys(mut keys: Vec<RankKey>, ids: usize) -> Posting {
        let mut posting = Posting::default();
        if keys.len() <= FEW_MAX {
            keys.sort_unstable_by_key(|k| k.id());
            posting.members = Members::Few(keys);
        } else {
            posting.members = Members::Ranked(keys.into_iter().collect());
        }
        posting.reshape(ids);
        posting
    }

    pub fn len(&self) -> usize {
        match &self.members {
            Members::Few(keys) => keys.len(),
            Members::Ranked(keys) => keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a name by its current key; `ids` is how many ids are in use.
    pub fn insert(&mut self, key: RankKey, ids: usize) {
        match &mut self.members {
            Members::Few(keys) => {
                if let Err(at) = keys.binary_search_by_key(&key.id(), |k| k.id()) {
                    keys.insert(at, key);
                }
            }
            Members::Ranked(keys) => {
                keys.insert(key);
            }
        }
        if let Some(bits) = &mut self.dense {
            bits.set(key.id());
        }
        self.reshape(ids);
    }

    /// Removes a name by its current key.
    pub fn remove(&mut self, key: RankKey, ids: usize) {
        match &mut self.members {
            Members::Few(keys) => {
                if let Ok(at) = keys.binary_search_by_key(&key.id(), |k| k.id()) {
                    keys.remove(at);
                }
            }
            Members::Ranked(keys) => {
                keys.remove(&key);
            }
        }
        if let Some(bits) = &mut self.dense {
            bits.clear(key.id());
        }
        self.reshape(ids);
    }

    /// A member's key changed (its holder count, or its label).
    pub fn rekey(&mut self, old: RankKey, new: RankKey) {
        match &mut self.members {
            Members::Few(keys) => {
                if let Ok(at) = keys.binary_search_by_key(&old.id(), |k| k.id()) {
                    keys[at] = new;
                }
            }
            Members::Ranked(keys) => {
                if keys.remove(&old) {
                    keys.insert(new);
                }
            }
        }
    }

    /// Changes shape when the size calls for it, with some slack either way so that a
    /// posting at a boundary does not flip back and forth.
    fn reshape(&mut self, ids: usize) {
        let len = self.len();
        match &mut self.members {
            Members::Few(keys) if len > FEW_MAX => {
                self.members = Members::Ranked(keys.drain(..).collect());
            }
            Members::Ranked(keys) if len < FEW_MAX / 2 => {
                // The set iterates in rank order; the list is in id order.
                let mut few: Vec<RankKey> = keys.iter().copied().collect();
                few.sort_unstable_by_key(|k| k.id());
                self.members = Members::Few(few);
                self.dense = None;
            }
            _ => {}
        }
        let ranked = matches!(self.members, Members::Ranked(_));
        let dense_min = dense_min(ids);
        if self.dense.is_none() && ranked && len >= dense_min {
            let mut bits = Bits::with_ids(ids);
            for id in self.ids() {
                bits.set(id);
            }
            self.dense = Some(bits);
        } else if self.dense.is_some() && len < dense_min / 2 {
            self.dense = None;
        }
    }

    /// Whether `id` is a member, when the posting can tell cheaply: a bit of its bitmap, or a
    /// binary search in its short list. `None` for a large posting without a bitmap.
    pub fn quick_contains(&self, id: u32) -> Option<bool> {
        if let Some(bits) = &self.dense {
            return Some(bits.get(id));
        }
        match &self.members {
            Members::Few(keys) => Some(keys.binary_search_by_key(&id, |k| k.id()).is_ok()),
            Members::Ranked(_) => None,
        }
    }

    pub fn bits(&self) -> Option<&Bits> {
        self.dense.as_ref()
    }

    /// The members, best first, when the posting is ranked.
    pub fn ranked(&self) -> Option<impl Iterator<Item = RankKey> + '_> {
        match &self.members {
            Members::Ranked(keys) => Some(keys.iter().copied()),
            Members::Few(_) => None,
        }
    }

    /// The members by id, when the posting is a short list.
    pub fn few(&self) -> Option<&[RankKey]> {
        match &self.members {
            Members::Few(keys) => Some(keys),
            Members::Ranked(_) => None,
        }
    }

    /// Every member's id, in no particular order.
    pub fn ids(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match &self.members {
            Members::Few(keys) => Box::new(keys.iter().map(|k| k.id())),
            Members::Ranked(keys) => Box::new(keys.iter().map(|k| k.id())),
        }
    }

    /// Checks the shape, and that each key is its id's current key (tests).
    #[cfg(test)]
    pub fn check(&self, rank: &[RankKey]) {
        let keys: Vec<RankKey> = match &self.members {
            Members::Few(keys) => {
                assert!(keys.len() <= FEW_MAX, "short list of {}", keys.len());
                assert!(self.dense.is_none(), "a short list with a bitmap");
                assert!(
                    keys.windows(2).all(|w| w[0].id() < w[1].id()),
                    "list out of order"
                );
                keys.clone()
            }
            Members::Ranked(keys) => {
                assert!(
                    keys.len() >= FEW_MAX / 2,
                    "ranked posting of {}",
                    keys.len()
                );
                keys.iter().copied().collect()
            }
        };
        for key in keys {
            assert_eq!(key, rank[key.id() as usize], "stale key in a posting");
        }
        if let Some(bits) = &self.dense {
            assert_eq!(bits.count(), self.len(), "bitmap and members disagree");
            assert!(self.ids().all(|id| bits.get(id)));
        }
    }
}

/// A bitmap over name ids.
#[derive(Debug, Default)]
pub(super) struct Bits {
    words: Vec<u64>,
}

impl Bits {
    fn with_ids(ids: usize) -> Bits {
        Bits {
            words: vec![0; ids.div_ceil(64)],
        }
    }

    fn set(&mut self, id: u32) {
        let word = id as usize / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (id % 64);
    }

    fn clear(&mut self, id: u32) {
        if let Some(word) = self.words.get_mut(id as usize / 64) {
            *word &= !(1 << (id % 64));
        }
    }

    pub fn get(&self, id: u32) -> bool {
        self.words
            .get(id as usize / 64)
            .is_some_and(|word| word & (1 << (id % 64)) != 0)
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
}
