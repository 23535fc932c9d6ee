//! Search over the state: the file named exactly as the query first, then the held names
//! containing every token of the query, best ranked first, cut to the limit, with a count of
//! all matches. The search index here is derived from the files' holders (rebuilt on
//! restore, never in a snapshot or digest) and kept up to date by `apply` through
//! [`SearchIndex::holding_changed`]; it does no I/O and reads no clock, like the rest of the
//! state.
//!
//! # Ranking
//! Exact name first; then names containing every query token, those with more *up-to-date*
//! holders (holders of the latest version) first, then by name (byte order). Only names some
//! registered peer holds are listed or counted.
//!
//! # Why a search costs the answer, not the matches
//! A keyword query used to turn every match into a result (strings cloned), sort them all and
//! only then cut to the limit: `mp3` over 1,000,000 files held the state's read lock for 4.9 s.
//! Now:
//!
//! - Names are interned to `u32` ids; each held name has a [`RankKey`] (holders, name order,
//!   id, in one `u128`), kept current: a holder count changes by a delta as holdings come and
//!   go, and the name order is an integer label (`order`), so ranking never reads a string.
//! - Each token's posting ([`Posting`]) holds the ids of the held names containing it; a
//!   large one is kept in rank order, so the best matches of a token are at its front, and a
//!   very large one also as a bitmap.
//! - A query starts from its smallest posting (the *driver*) and checks the other tokens on
//!   each candidate (a bitmap bit, or a binary search in the candidate's own few token ids).
//!   A ranked driver is walked from the front and the walk stops once `limit` matches are in
//!   hand: for a broad query that is about `limit` steps. A small driver is read whole and
//!   the best `limit` picked from it (at most [`posting::FEW_MAX`] candidates).
//! - When every token of a multi-token query has a bitmap, the exact number of matches is one
//!   pass of word-wide ANDs (a million names: 15,625 words per token); when that number is
//!   small, the matches are taken from the same pass and ranked directly, so a query whose
//!   tokens are each in half the names but which together match three is as cheap as one
//!   that matches three names outright.
//!
//! # Bounds, and what happens at them
//! No query visits more than [`SCAN_BUDGET`] candidates (65,536), so a search holds the
//! state's read lock for a few milliseconds at most and a write never waits long behind one.
//! A walk can only get near the budget when every token of a multi-token query is in more
//! than that many names, and the matches are rare at the front of the driver (they gather
//! in a name range it ranks late). Then:
//!
//! - if every token has a bitmap (always the case below about a million names, given the
//!   sizes), the total is exact anyway, and the walk gives up early, after 16 times the
//!   candidates that the matches' overall density predicts: the matches are then taken from
//!   the bitmaps and ranked directly, up to [`COLLECT_MAX`] of them (measured at 1,000,000
//!   names, 250,000 matches all ranked behind 250,000 non-matches: 0.6 ms, p99 0.8);
//! - otherwise the walk stops at the budget: the matches found so far are listed (the
//!   best-ranked ones, in order, since the walk goes in rank order; possibly fewer than the
//!   limit), and the total is what was counted, marked as a lower bound.
//!
//! The checks per candidate are bounded too: a candidate is turned down at its first
//! missing token, and it has no more tokens than its name has characters.

mod order;
mod posting;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use order::NameOrder;
use posting::{Bits, Posting, RankKey};

use super::{FileEntry, IndexState};
use crate::protocol::{Holder, SearchResponse, SearchResult};

/// Most candidates one query may visit (walking a posting, or reading a small one).
pub(super) const SCAN_BUDGET: usize = 65_536;

/// Most matches of an intersection of bitmaps taken from it at once and ranked directly,
/// rather than found by walking the driver (for more, walking is cheaper: they are common
/// enough in the driver to be met early). Smaller in the unit tests, like the postings'
/// shapes, so that both ways are taken with a few thousand names.
pub(super) const COLLECT_FIRST: u64 = if cfg!(test) { 256 } else { 4_096 };

/// Most matches of an intersection of bitmaps taken from it and ranked directly after a walk
/// ran out of budget (matches common overall but rare at the front of the driver).
pub(super) const COLLECT_MAX: u64 = 262_144;

/// Splits a name or query into lowercase alphanumeric tokens ("My_Song-01.mp3" ->
/// ["my", "song", "01", "mp3"]).
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// The keyword side of a search: held names by id, their ranks, tokens and order.
#[derive(Default)]
pub(crate) struct SearchIndex {
    /// Held name -> its id.
    ids: HashMap<Arc<str>, u32>,
    order: NameOrder,
    /// Per id (a free id has no name):
    names: Vec<Option<Arc<str>>>,
    /// its current rank key (holders, label, id);
    rank: Vec<RankKey>,
    /// the latest version its holder count counts holders of;
    latest: Vec<u64>,
    /// its distinct token ids, sorted.
    name_tokens: Vec<Box<[u32]>>,
    free_ids: Vec<u32>,
    /// Token -> token id; a token id indexes `postings`. A token no held name has is dropped.
    token_ids: HashMap<Box<str>, u32>,
    postings: Vec<Posting>,
    free_tokens: Vec<u32>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("names", &self.ids.len())
            .field("tokens", &self.token_ids.len())
            .finish()
    }
}

/// The keyword matches of one query: the best `limit` ids in rank order, and how many match.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Matches {
    pub ids: Vec<u32>,
    pub total: u64,
    /// false: `total` is a lower bound (the scan budget ran out first).
    pub exact: bool,
}

/// The up-to-date holders of `entry`: those holding its latest version.
fn up_to_date(entry: &FileEntry, latest: u64) -> u32 {
    entry.holders.values().filter(|&&v| v == latest).count() as u32
}

/// The query's distinct tokens.
fn query_tokens(query: &str) -> BTreeSet<String> {
    tokenize(query).collect()
}

impl SearchIndex {
    /// Room for `names` held names, so that the maps do not rehash under the write lock while
    /// the index warms up.
    pub fn with_capacity(names: usize) -> SearchIndex {
        SearchIndex {
            ids: HashMap::with_capacity(names),
            names: Vec::with_capacity(names),
            rank: Vec::with_capacity(names),
            latest: Vec::with_capacity(names),
            name_tokens: Vec::with_capacity(names),
            token_ids: HashMap::with_capacity(names),
            postings: Vec::with_capacity(names),
            ..SearchIndex::default()
        }
    }

    /// The index of every held name in `files`, built in one go (a restore): ids and labels
    /// are handed out in name order, and each posting takes its shape once.
    pub fn rebuild<'a>(files: impl Iterator<Item = (&'a String, &'a FileEntry)>) -> SearchIndex {
        let mut held: Vec<(&String, &FileEntry)> =
            files.filter(|(_, e)| !e.holders.is_empty()).collect();
        held.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut index = SearchIndex::with_capacity(held.len());
        let names: Vec<(Arc<str>, u32)> = held
            .iter()
            .enumerate()
            .map(|(id, (name, _))| (Arc::from(name.as_str()), id as u32))
            .collect();
        let mut members: Vec<Vec<RankKey>> = Vec::new();
        let (order, labels) = NameOrder::from_sorted(names.clone());
        for (((name, id), (_, entry)), label) in names.into_iter().zip(&held).zip(labels) {
            let latest = entry.latest_version();
            let key = RankKey::new(up_to_date(entry, latest), label, id);
            let tokens = index.token_ids_of(&name);
            for &token in tokens.iter() {
                let token = token as usize;
                if members.len() <= token {
                    members.resize_with(token + 1, Vec::new);
                }
                members[token].push(key);
            }
            index.ids.insert(name.clone(), id);
            index.names.push(Some(name));
            index.rank.push(key);
            index.latest.push(latest);
            index.name_tokens.push(tokens);
        }
        let ids = index.names.len();
        index.postings = members
            .into_iter()
            .map(|keys| Posting::from_keys(keys, ids))
            .collect();
        index.order = order;
        index
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize)?.as_deref()
    }

    /// Keeps the index true after one holding of `name` changed: a peer that held version
    /// `before` (`None`: held nothing) now holds `after` (`None`: nothing). `entry` is the
    /// name's entry as it is now. Costs O(tokens of the name) B-tree updates, plus one pass
    /// over the holders when the latest version moved.
    pub fn holding_changed(
        &mut self,
        name: &str,
        entry: &FileEntry,
        before: Option<u64>,
        after: Option<u64>,
    ) {
        let latest = entry.latest_version();
        match self.ids.get(name).copied() {
            None if entry.holders.is_empty() => {}
            None => self.add(name, up_to_date(entry, latest), latest),
            Some(id) if entry.holders.is_empty() => self.remove(id),
            Some(id) => {
                let at = id as usize;
                // Only this peer's holding changed: while the latest version stays, the count
                // moves by this holding alone. A new latest version (or a count that would
                // go below zero, which a missed change would cause) is counted afresh.
                let delta = (self.latest[at] == latest)
                    .then(|| {
                        let old = self.rank[at].holders();
                        old.checked_add(u32::from(after == Some(latest)))?
                            .checked_sub(u32::from(before == Some(latest)))
                    })
                    .flatten();
                self.latest[at] = latest;
                let holders = delta.unwrap_or_else(|| up_to_date(entry, latest));
                self.set_holders(id, holders);
            }
        }
    }

    fn set_holders(&mut self, id: u32, holders: u32) {
        let old = self.rank[id as usize];
        let new = old.with_holders(holders);
        if old == new {
            return;
        }
        for &token in self.name_tokens[id as usize].iter() {
            self.postings[token as usize].rekey(old, new);
        }
        self.rank[id as usize] = new;
    }

    /// The sorted distinct token ids of `name`, creating the tokens it is the first to have.
    fn token_ids_of(&mut self, name: &str) -> Box<[u32]> {
        let mut ids: Vec<u32> = tokenize(name)
            .map(|token| {
                if let Some(&id) = self.token_ids.get(token.as_str()) {
                    return id;
                }
                let id = match self.free_tokens.pop() {
                    Some(id) => id,
                    None => {
                        self.postings.push(Posting::default());
                        (self.postings.len() - 1) as u32
                    }
                };
                self.token_ids.insert(token.into_boxed_str(), id);
                id
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_boxed_slice()
    }

    fn add(&mut self, name: &str, holders: u32, latest: u64) {
        let name: Arc<str> = Arc::from(name);
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.names.push(None);
                self.rank.push(RankKey::default());
                self.latest.push(0);
                self.name_tokens.push(Box::default());
                (self.names.len() - 1) as u32
            }
        };
        let rank = &self.rank;
        let placed = self
            .order
            .insert(name.clone(), id, |other| rank[other as usize].label());
        // Names moved to make room get their new keys in every ranked posting they are in.
        for (other, label) in placed.moved {
            let old = self.rank[other as usize];
            let new = old.with_label(label);
            for &token in self.name_tokens[other as usize].iter() {
                self.postings[token as usize].rekey(old, new);
            }
            self.rank[other as usize] = new;
        }
        let key = RankKey::new(holders, placed.label, id);
        let at = id as usize;
        self.rank[at] = key;
        self.latest[at] = latest;
        let tokens = self.token_ids_of(&name);
        for &token in tokens.iter() {
            self.postings[token as usize].insert(key, self.rank.len());
        }
        self.name_tokens[at] = tokens;
        self.names[at] = Some(name.clone());
        self.ids.insert(name, id);
    }

    fn remove(&mut self, id: u32) {
        let at = id as usize;
        let Some(name) = self.names[at].take() else {
            return;
        };
        let key = self.rank[at];
        for &token in self.name_tokens[at].iter() {
            self.postings[token as usize].remove(key, self.rank.len());
        }
        // A token no held name has any more goes, and its id is reused: churn through
        // ever-new names must not grow the vocabulary for good.
        for text in tokenize(&name) {
            if let Some(&token) = self.token_ids.get(text.as_str()) {
                if self.postings[token as usize].is_empty() {
                    self.token_ids.remove(text.as_str());
                    self.postings[token as usize] = Posting::default();
                    self.free_tokens.push(token);
                }
            }
        }
        self.name_tokens[at] = Box::default();
        self.rank[at] = RankKey::default();
        self.order.remove(&name);
        self.ids.remove(&*name);
        self.free_ids.push(id);
    }
}

impl SearchIndex {
    /// The held names containing every token of `query` (none when it has no token): the
    /// best `limit` in rank order, leaving out `skip` (the exact match, which the caller
    /// lists first; it is still counted), and how many there are.
    pub fn keyword_matches(&self, query: &str, limit: usize, skip: Option<&str>) -> Matches {
        self.keyword_matches_within(query, limit, skip, SCAN_BUDGET)
    }

    /// [`SearchIndex::keyword_matches`] with a scan budget of `budget` candidates.
    fn keyword_matches_within(
        &self,
        query: &str,
        limit: usize,
        skip: Option<&str>,
        budget: usize,
    ) -> Matches {
        let mut tokens = Vec::new();
        for token in query_tokens(query) {
            match self.token_ids.get(token.as_str()) {
                Some(&id) => tokens.push(id),
                // A token no held name has: nothing matches.
                None => return Matches::none(),
            }
        }
        // The smallest posting drives; the others are checked smallest first, as the
        // likeliest to turn a candidate down.
        tokens.sort_by_key(|&t| self.postings[t as usize].len());
        let Some((&driver, others)) = tokens.split_first() else {
            return Matches::none();
        };
        let query = Query {
            index: self,
            driver: &self.postings[driver as usize],
            others,
            skip: skip.and_then(|name| self.ids.get(name)).copied(),
            limit,
            budget,
        };
        if others.is_empty() {
            return query.one_token();
        }
        let bitmaps: Option<Vec<&Bits>> = tokens
            .iter()
            .map(|&t| self.postings[t as usize].bits())
            .collect();
        match bitmaps {
            Some(bitmaps) => query.bitmaps(&bitmaps),
            None => query.walk(None, query.budget),
        }
    }

    /// Whether name `id` has every token of `tokens`.
    fn has_all(&self, id: u32, tokens: &[u32]) -> bool {
        let own = &self.name_tokens[id as usize];
        tokens.iter().all(|&t| {
            self.postings[t as usize]
                .quick_contains(id)
                .unwrap_or_else(|| own.binary_search(&t).is_ok())
        })
    }

    /// The best `limit` of `ids`, in rank order.
    fn best_of_ids(&self, ids: impl Iterator<Item = u32>, limit: usize) -> Vec<u32> {
        best(ids.map(|id| self.rank[id as usize]), limit)
    }
}

/// The best `limit` of `keys`, in rank order, as ids. One comparison per key against the
/// worst of the best kept so far, and at most 2 x `limit` keys held: ranking the 250,000
/// matches of a broad intersection costs a pass over them, not a sort.
fn best(keys: impl Iterator<Item = RankKey>, limit: usize) -> Vec<u32> {
    if limit == 0 {
        return Vec::new();
    }
    let mut kept: Vec<RankKey> = Vec::new();
    let mut worst: Option<RankKey> = None;
    for key in keys {
        if worst.is_some_and(|worst| key > worst) {
            continue;
        }
        kept.push(key);
        if kept.len() == 2 * limit {
            // The best `limit` to the front, the limit-th best at `limit - 1`.
            kept.select_nth_unstable(limit - 1);
            kept.truncate(limit);
            worst = Some(kept[limit - 1]);
        }
    }
    if kept.len() > limit {
        kept.select_nth_unstable(limit - 1);
        kept.truncate(limit);
    }
    kept.sort_unstable();
    kept.into_iter().map(RankKey::id).collect()
}

impl Matches {
    fn none() -> Matches {
        Matches {
            ids: Vec::new(),
            total: 0,
            exact: true,
        }
    }
}

/// One keyword query, its tokens resolved.
struct Query<'a> {
    index: &'a SearchIndex,
    /// The smallest posting of the query's tokens.
    driver: &'a Posting,
    /// The query's other tokens.
    others: &'a [u32],
    skip: Option<u32>,
    limit: usize,
    /// Most candidates to visit.
    budget: usize,
}

impl Query<'_> {
    fn listed(&self, id: u32) -> bool {
        Some(id) != self.skip
    }

    /// One token: its posting is the matches, ranked already when it is large.
    fn one_token(&self) -> Matches {
        let ids = match (self.driver.ranked(), self.driver.few()) {
            (Some(keys), _) => keys
                .map(RankKey::id)
                .filter(|&id| self.listed(id))
                .take(self.limit)
                .collect(),
            (None, Some(keys)) => best(
                keys.iter().copied().filter(|k| self.listed(k.id())),
                self.limit,
            ),
            (None, None) => Vec::new(),
        };
        Matches {
            ids,
            total: self.driver.len() as u64,
            exact: true,
        }
    }

    /// Every token has a bitmap: the exact count is a word-wide AND. Few matches are taken
    /// from the bitmaps and ranked; more are met early by walking the driver, unless they
    /// sit at its end, when (up to `COLLECT_MAX`) they are taken from the bitmaps after all.
    fn bitmaps(&self, bitmaps: &[&Bits]) -> Matches {
        let total = and_count(bitmaps);
        if total <= COLLECT_FIRST {
            return self.collect(bitmaps, total);
        }
        // Spread through the driver, `limit` matches are met within about limit x driver /
        // total candidates. Sixteen times that without them means they gather further down
        // (a name range the driver ranks late): collecting them from the bitmaps is cheaper
        // than walking on.
        let expected = (self.limit as u64 + 1) * self.driver.len() as u64 / total;
        let patience = expected.saturating_mul(16).saturating_add(1024);
        let walked = self.walk(Some(total), patience.min(self.budget as u64) as usize);
        if walked.ids.len() < self.limit && !walked.exact && total <= COLLECT_MAX {
            return self.collect(bitmaps, total);
        }
        Matches {
            exact: true,
            ..walked
        }
    }

    fn collect(&self, bitmaps: &[&Bits], total: u64) -> Matches {
        let ids = and_ids(bitmaps).into_iter().filter(|&id| self.listed(id));
        Matches {
            ids: self.index.best_of_ids(ids, self.limit),
            total,
            exact: true,
        }
    }

    /// A short-list driver: every member that has the other tokens, counted and ranked. When
    /// the next smallest posting is a short list too, the two are merged by id first (two
    /// sequential reads), so that the checks run only on the names they share.
    fn short_driver(&self, driver: &[RankKey]) -> Matches {
        let second = self.others.first().and_then(|&t| {
            let posting = &self.index.postings[t as usize];
            posting.bits().is_none().then(|| posting.few()).flatten()
        });
        let matched: Vec<RankKey> = match second {
            Some(second) => merge_by_id(driver, second)
                .filter(|k| self.index.has_all(k.id(), &self.others[1..]))
                .collect(),
            None => driver
                .iter()
                .copied()
                .filter(|k| self.index.has_all(k.id(), self.others))
                .collect(),
        };
        Matches {
            total: matched.len() as u64,
            ids: best(
                matched.into_iter().filter(|k| self.listed(k.id())),
                self.limit,
            ),
            exact: true,
        }
    }

    /// Goes through the driver best first (a small one: all of it, then ranks what matched)
    /// checking the other tokens, until `limit` matches are listed and, unless `total` is
    /// known, every match is counted; or until `budget` candidates were seen. `exact` in the
    /// answer: the whole driver was seen.
    fn walk(&self, total: Option<u64>, budget: usize) -> Matches {
        let Some(keys) = self.driver.ranked() else {
            return self.short_driver(self.driver.few().unwrap_or_default());
        };
        let mut ids = Vec::new();
        let mut counted = 0u64;
        let mut exact = true;
        for (seen, key) in keys.enumerate() {
            if ids.len() == self.limit && total.is_some() {
                break;
            }
            if seen == budget {
                exact = false;
                break;
            }
            let id = key.id();
            if !self.index.has_all(id, self.others) {
                continue;
            }
            counted += 1;
            if ids.len() < self.limit && self.listed(id) {
                ids.push(id);
            }
        }
        Matches {
            ids,
            total: total.unwrap_or(counted),
            exact,
        }
    }
}

/// The keys of `a` whose ids are also in `b`, both sorted by id: a merge that gallops ahead
/// in `b` (steps of 1, 2, 4, ... then a binary search), so that it costs about the shorter
/// list when the two differ much in size, and a plain merge when they do not.
fn merge_by_id<'a>(a: &'a [RankKey], b: &'a [RankKey]) -> impl Iterator<Item = RankKey> + 'a {
    let mut rest = b;
    a.iter().copied().filter(move |key| {
        let id = key.id();
        // Everything in `rest` below `id` is below every later key of `a` too.
        rest = &rest[gallop(rest, id)..];
        rest.first().is_some_and(|k| k.id() == id)
    })
}

/// The first position in `keys` (sorted by id) whose id is not below `id`.
fn gallop(keys: &[RankKey], id: u32) -> usize {
    let mut end = 1;
    while end < keys.len() && keys[end - 1].id() < id {
        end *= 2;
    }
    // keys[..end / 2] are all below `id`; the answer is at most min(end, len).
    let start = end / 2;
    let end = end.min(keys.len());
    start + keys[start..end].partition_point(|k| k.id() < id)
}

/// Words of the bitmaps ANDed at a time: a block on the stack, so that each bitmap is read
/// as a plain slice (no bounds check per word) and the loop vectorizes.
const AND_BLOCK: usize = 64;

/// Calls `each(first word index, block)` for every block of words of the AND of `bitmaps`.
fn and_blocks(bitmaps: &[&Bits], mut each: impl FnMut(usize, &[u64])) {
    let words = bitmaps.iter().map(|b| b.words().len()).min().unwrap_or(0);
    let Some((first, rest)) = bitmaps.split_first() else {
        return;
    };
    let mut block = [0u64; AND_BLOCK];
    for start in (0..words).step_by(AND_BLOCK) {
        let end = (start + AND_BLOCK).min(words);
        let block = &mut block[..end - start];
        block.copy_from_slice(&first.words()[start..end]);
        for bits in rest {
            for (word, other) in block.iter_mut().zip(&bits.words()[start..end]) {
                *word &= other;
            }
        }
        each(start, block);
    }
}

/// How many ids are in every one of `bitmaps`.
fn and_count(bitmaps: &[&Bits]) -> u64 {
    let mut count = 0;
    and_blocks(bitmaps, |_, block| {
        count += block.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
    });
    count
}

/// The ids in every one of `bitmaps`, ascending.
fn and_ids(bitmaps: &[&Bits]) -> Vec<u32> {
    let mut ids = Vec::new();
    and_blocks(bitmaps, |start, block| {
        for (w, &word) in block.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                ids.push(((start + w) * 64) as u32 + word.trailing_zeros());
                word &= word - 1;
            }
        }
    });
    ids
}

impl IndexState {
    /// The listed results of [`IndexState::search_counted`].
    pub fn search(&self, query: &str, limit: usize) -> Vec<SearchResult> {
        self.search_counted(query, limit).results
    }

    /// Exact name first, then names containing every token of `query` (see the module's
    /// ranking), at most `limit` of them, with the number of all matches. Only files that
    /// some peer holds are listed or counted.
    pub fn search_counted(&self, query: &str, limit: usize) -> SearchResponse {
        let exact = self.result_for(query);
        let skip = exact.as_ref().map(|_| query);
        let rest = limit.saturating_sub(usize::from(exact.is_some()));
        let matches = self.search.keyword_matches(query, rest, skip);
        let mut total = matches.total;
        // The exact name has every token of the query, so it was counted, unless the query
        // has no token at all.
        if exact.is_some() && tokenize(query).next().is_none() {
            total += 1;
        }
        let mut results = Vec::with_capacity(limit.min(1 + matches.ids.len()));
        results.extend(exact.filter(|_| limit > 0));
        results.extend(
            matches
                .ids
                .iter()
                .filter_map(|&id| self.search.name(id))
                .filter_map(|name| self.result_for(name)),
        );
        SearchResponse {
            // A lower bound never says fewer than were listed (the exact name may sit past
            // where the count stopped).
            total: total.max(results.len() as u64),
            total_exact: matches.exact,
            results,
        }
    }

    fn result_for(&self, name: &str) -> Option<SearchResult> {
        let entry = self.files.get(name)?;
        if entry.holders.is_empty() {
            return None;
        }
        let (version, info) = entry.latest()?;
        let mut holders = Vec::new();
        let mut stale_holders = Vec::new();
        for (peer_id, held) in &entry.holders {
            let Some(peer) = self.peers.get(peer_id) else {
                continue;
            };
            let holder = Holder {
                peer_id: peer_id.clone(),
                addr: peer.addr.clone(),
            };
            if *held == version {
                holders.push(holder);
            } else {
                stale_holders.push(holder);
            }
        }
        Some(SearchResult {
            name: name.to_string(),
            version,
            size: info.size,
            sha256: info.sha256.to_string(),
            holders,
            stale_holders,
        })
    }
}

#[cfg(test)]
impl SearchIndex {
    /// Checks everything here against the files it is derived from (tests).
    pub(crate) fn check<'a>(&self, files: impl Iterator<Item = (&'a String, &'a FileEntry)>) {
        let mut held = 0;
        for (name, entry) in files {
            let Some(&id) = self.ids.get(name.as_str()) else {
                assert!(entry.holders.is_empty(), "{name} is held but not indexed");
                continue;
            };
            held += 1;
            let at = id as usize;
            assert!(!entry.holders.is_empty(), "{name} is indexed but not held");
            let latest = entry.latest_version();
            assert_eq!(self.latest[at], latest, "{name}: latest version");
            let key = self.rank[at];
            assert_eq!(key.holders(), up_to_date(entry, latest), "{name}: holders");
            assert_eq!(key.id(), id);
            assert_eq!(self.names[at].as_deref(), Some(name.as_str()));
            let tokens: BTreeSet<u32> =
                tokenize(name).map(|t| self.token_ids[t.as_str()]).collect();
            let tokens: Vec<u32> = tokens.into_iter().collect();
            assert_eq!(&*self.name_tokens[at], tokens.as_slice(), "{name}: tokens");
            for &t in &tokens {
                assert!(
                    self.postings[t as usize].ids().any(|member| member == id),
                    "{name} missing from a posting"
                );
            }
        }
        assert_eq!(self.ids.len(), held, "names indexed");
        let in_order: Vec<u32> = self.order.ids().map(|(_, id)| id).collect();
        assert_eq!(in_order.len(), held, "names in the order");
        self.order.check(|id| self.rank[id as usize].label());
        for (text, &t) in &self.token_ids {
            let posting = &self.postings[t as usize];
            assert!(!posting.is_empty(), "token {text} kept without a name");
            posting.check(&self.rank);
            let members: BTreeSet<u32> = posting.ids().collect();
            assert_eq!(members.len(), posting.len(), "{text}: a name twice");
            for id in members {
                assert!(
                    self.name_tokens[id as usize].binary_search(&t).is_ok(),
                    "{text}: lists a name without it"
                );
            }
        }
        for &id in &self.free_ids {
            assert!(self.names[id as usize].is_none(), "a free id has a name");
        }
        for &t in &self.free_tokens {
            assert!(
                self.postings[t as usize].is_empty(),
                "a free token has names"
            );
        }
    }
}
