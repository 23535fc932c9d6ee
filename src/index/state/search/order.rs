//! Name order as integers. Each held name gets a *label*, a `u64` whose order is the names'
//! byte order, so that the ranked postings compare two names by comparing two integers
//! instead of following two pointers to two strings (at a million names every such pointer is
//! a cache miss, and a posting update makes about twenty comparisons: measured, an update of
//! a `BTreeSet` keyed by (holders, name) took 4.7 µs at 1,000,000 names, one keyed by `u128`
//! 0.95 µs). This module owns the names' order and picks labels; it does not know about
//! tokens or holders, and the labels it hands out mean nothing outside this process: they
//! depend on the order names arrived in, so they are never part of a snapshot or digest, and
//! an answer never depends on a label's value, only on the order labels keep.
//!
//! A new name takes a label between its neighbours'. When there is none left between them,
//! the names around it are spread out again: the smallest aligned range of labels around the
//! insertion point (sizes 2, 4, 8, ... 2^63) that is sparse enough is relabelled evenly. "Sparse
//! enough" for a range of 2^i labels means at most 2^(i/2) names in it (density threshold
//! T = sqrt(2) in Bender, Cole, Demaine, Farach-Colton and Zito, "Two simplified algorithms
//! for maintaining order in a list", ESA 2002, whose analysis gives O(log n) amortized
//! relabels per insertion). After the spread every gap in the range is at least 2^(i/2), so
//! the range takes many more insertions before it is relabelled again. The whole label space
//! holds 2^31.5 names, far more than the index's u32 ids would reach in memory.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// Labels lie in `0..UNIVERSE`.
const UNIVERSE_BITS: u32 = 63;
const UNIVERSE: u64 = 1 << UNIVERSE_BITS;

/// How far after the last name (or before the first) a new last (first) name goes, rather
/// than halfway to the end of the label space: lists arrive sorted (a peer's catalog is), and
/// halving the space left at each name would run out after about 60 names and relabel; with
/// this step 2^22 names can be appended before the end is reached.
const EDGE_STEP: u64 = 1 << 40;

/// The held names in byte order, with their ids. Labels themselves live with the caller
/// (beside each name's rank), which reads them through the `label_of` it passes in.
#[derive(Debug, Default)]
pub(super) struct NameOrder {
    by_name: BTreeMap<Arc<str>, u32>,
}

/// Where a new name went.
pub(super) struct Placed {
    /// The new name's label.
    pub label: u64,
    /// Names that were given new labels to make room: (id, new label). Their old labels are
    /// still what `label_of` says, so the caller can find them in its postings.
    pub moved: Vec<(u32, u64)>,
}

impl NameOrder {
    /// The order of `names` (already sorted by name, no duplicates), with labels spread
    /// evenly over the whole space: the returned labels are in the same order.
    pub fn from_sorted(names: Vec<(Arc<str>, u32)>) -> (NameOrder, Vec<u64>) {
        let gap = UNIVERSE / (names.len() as u64 + 1);
        let labels = (1..=names.len() as u64).map(|j| j * gap).collect();
        let order = NameOrder {
            by_name: names.into_iter().collect(),
        };
        (order, labels)
    }

    /// Adds `name` (not present) as `id` and labels it; `label_of` gives the current label of
    /// any name already present.
    pub fn insert(&mut self, name: Arc<str>, id: u32, label_of: impl Fn(u32) -> u64) -> Placed {
        let key: &str = &name;
        let pred = self
            .by_name
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(key)))
            .next_back()
            .map(|(_, &id)| id);
        let succ = self
            .by_name
            .range::<str, _>((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map(|(_, &id)| id);
        // The open interval of free labels, as i128 so that "before 0" is -1.
        let low = pred.map_or(-1, |p| i128::from(label_of(p)));
        let high = succ.map_or(i128::from(UNIVERSE), |s| i128::from(label_of(s)));
        let gap = high - low;
        let placed = if gap >= 2 {
            let half = gap / 2;
            let label = match (pred, succ) {
                (Some(_), None) => low + half.min(i128::from(EDGE_STEP)),
                (None, Some(_)) => high - half.min(i128::from(EDGE_STEP)),
                _ => low + half,
            };
            Placed {
                label: label as u64,
                moved: Vec::new(),
            }
        } else {
            // No free label between the neighbours: the insertion point is right after the
            // predecessor's label, or at 0 before a first name labelled 0.
            let at = if low >= 0 { low as u64 } else { 0 };
            self.relabel_around(key, at, &label_of)
        };
        self.by_name.insert(name, id);
        placed
    }

    /// Removes `name`; the others keep their labels.
    pub fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// Spreads the names of the smallest sparse-enough aligned range around label `at` (where
    /// `name`, not yet present, goes) evenly over that range, `name` included.
    fn relabel_around(&self, name: &str, at: u64, label_of: &impl Fn(u32) -> u64) -> Placed {
        // Names before `name` (nearest first) and after it (nearest first), collected as far
        // as the range reaches; each level only extends them, so the whole search costs the
        // size of the range it settles on.
        let mut before = self
            .by_name
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(name)))
            .rev()
            .map(|(_, &id)| id)
            .peekable();
        let mut after = self
            .by_name
            .range::<str, _>((Bound::Excluded(name), Bound::Unbounded))
            .map(|(_, &id)| id)
            .peekable();
        let mut lower: Vec<u32> = Vec::new();
        let mut upper: Vec<u32> = Vec::new();
        for bits in 1..=UNIVERSE_BITS {
            let start = (at >> bits) << bits;
            let end = start + (1u64 << bits) - 1; // inclusive: start + 2^63 would overflow
            while let Some(&id) = before.peek() {
                if label_of(id) < start {
                    break;
                }
                lower.push(id);
                before.next();
            }
            while let Some(&id) = after.peek() {
                if label_of(id) > end {
                    break;
                }
                upper.push(id);
                after.next();
            }
            let names = lower.len() + upper.len() + 1;
            if names as u64 <= capacity(bits) {
                return spread(start, bits, &lower, &upper, label_of);
            }
        }
        // Unreachable below 2^31 names (the whole space is the last range tried); should it
        // ever happen, spreading everything over the whole space is still correct.
        spread(0, UNIVERSE_BITS, &lower, &upper, label_of)
    }

    /// Checks that labels rise with names (tests).
    #[cfg(test)]
    pub fn check(&self, label_of: impl Fn(u32) -> u64) {
        let mut last: Option<(u64, &str)> = None;
        for (name, &id) in &self.by_name {
            let label = label_of(id);
            assert!(label < UNIVERSE, "{name}: label {label} out of range");
            if let Some((prev, prev_name)) = last {
                assert!(prev < label, "{prev_name} ({prev}) before {name} ({label})");
            }
            last = Some((label, name));
        }
    }

    /// The id of every name, in name order (tests).
    #[cfg(test)]
    pub fn ids(&self) -> impl Iterator<Item = (&str, u32)> {
        self.by_name.iter().map(|(name, &id)| (&**name, id))
    }
}

/// Most names a range of 2^bits labels may hold before it must be spread over a larger one:
/// floor(sqrt(2^bits)).
fn capacity(bits: u32) -> u64 {
    let even = 1u64 << (bits / 2);
    if bits.is_multiple_of(2) {
        even
    } else {
        // floor(2^(bits/2) * sqrt(2)), exactly: the largest x with x^2 <= 2^bits.
        let mut x = ((even as f64) * std::f64::consts::SQRT_2) as u64;
        while u128::from(x) * u128::from(x) > 1u128 << bits {
            x -= 1;
        }
        while u128::from(x + 1) * u128::from(x + 1) <= 1u128 << bits {
            x += 1;
        }
        x
    }
}

/// New labels, evenly spaced over `start .. start + 2^bits`, for `lower` (nearest first),
/// the new name, then `upper` (nearest first), in that (name) order.
fn spread(
    start: u64,
    bits: u32,
    lower: &[u32],
    upper: &[u32],
    label_of: &impl Fn(u32) -> u64,
) -> Placed {
    let names = (lower.len() + upper.len() + 1) as u128;
    let gap = (1u128 << bits) / names;
    let label_at = |slot: usize| (u128::from(start) + slot as u128 * gap + gap / 2) as u64;
    let mut moved = Vec::with_capacity(lower.len() + upper.len());
    let in_order = lower
        .iter()
        .rev()
        .map(Some)
        .chain([None])
        .chain(upper.iter().map(Some));
    let mut label = 0;
    for (slot, id) in in_order.enumerate() {
        let new = label_at(slot);
        match id {
            Some(&id) if label_of(id) != new => moved.push((id, new)),
            Some(_) => {}
            None => label = new,
        }
    }
    Placed { label, moved }
}
