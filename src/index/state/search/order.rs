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
//! A new name takes a label between its neighbours' (where exactly: see [`place`], which
//! recognises runs of names arriving in order, so that sorted lists and catalogs registered
//! one after another never run out of room: measured, 3,000,000 sorted names, or 1,000
//! catalogs of 1,000 names interleaved, are labelled without a single relabelling). When there
//! is none left between them, the names around it are spread out again: the smallest aligned range of labels around the
//! insertion point (sizes 2, 4, 8, ... 2^63) that is sparse enough is relabelled evenly. "Sparse
//! enough" for a range of 2^i labels means at most 2^(i/2) names in it (density threshold
//! T = sqrt(2) in Bender, Cole, Demaine, Farach-Colton and Zito, "Two simplified algorithms
//! for maintaining order in a list", ESA 2002, whose analysis gives O(log n) amortized
//! relabels per insertion). After the spread every gap in the range is at least 2^(i/2), so
//! the range takes many more insertions before it is relabelled again. The whole label space
//! holds 2^31.5 names, far more than the index's u32 ids would reach in memory. Measured on
//! the worst order for neighbour labels (each name halfway between the two latest, in 10,000
//! gaps of 100): 3.7 names relabelled per insertion, at most 87 at once.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// Labels lie in `0..UNIVERSE`.
const UNIVERSE_BITS: u32 = 63;
const UNIVERSE: u64 = 1 << UNIVERSE_BITS;

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
        // The two names before and the two after, nearest first.
        let mut before = self
            .by_name
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(key)))
            .rev()
            .map(|(_, &id)| i128::from(label_of(id)));
        let mut after = self
            .by_name
            .range::<str, _>((Bound::Excluded(key), Bound::Unbounded))
            .map(|(_, &id)| i128::from(label_of(id)));
        let (pred, pred2) = (before.next(), before.next());
        let (succ, succ2) = (after.next(), after.next());
        // The open interval of free labels, as i128 so that "before 0" is -1 and "after the
        // last" is UNIVERSE.
        let low = pred.unwrap_or(-1);
        let high = succ.unwrap_or(i128::from(UNIVERSE));
        let gap = high - low;
        let placed = if gap >= 2 {
            Placed {
                label: place(
                    gap,
                    low,
                    high,
                    pred2.map(|l| low - l),
                    succ2.map(|l| l - high),
                ) as u64,
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

/// Where a new name goes in the free labels between `low` and `high` (exclusive, `gap` apart,
/// at least 2), given how far the predecessor is from its own predecessor (`left`) and the
/// successor from its own successor (`right`).
///
/// Names often arrive in runs: a sorted list falls into one gap, each name right after the
/// last (or, reversed, right before it). Halving the gap each time would use it up after
/// about 60 names and relabel. Instead a run is recognised by the spacing it left behind: a
/// predecessor k times closer to its own predecessor than to the successor is likely the k-th
/// name of an ascending run, so the new name takes 1/(k+2) of the gap. Over a run that
/// spreads names harmonically (the n-th step is about 2/n^2 of the first gap) instead of
/// geometrically, so a run of a million names fits in a gap of 2^41 labels. Without such
/// evidence, the midpoint. The order never depends on this choice, only how soon labels run
/// out.
fn place(gap: i128, low: i128, high: i128, left: Option<i128>, right: Option<i128>) -> i128 {
    let ascending = left.filter(|&l| l > 0 && l <= gap).map_or(0, |l| gap / l);
    let descending = right.filter(|&r| r > 0 && r <= gap).map_or(0, |r| gap / r);
    if ascending == 0 && descending == 0 {
        low + gap / 2
    } else if ascending >= descending {
        low + (gap / (ascending + 2)).max(1)
    } else {
        high - (gap / (descending + 2)).max(1)
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
