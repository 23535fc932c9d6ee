//! Search over the state: exact name first, then keyword matches from the token index
//! (lowercase name token -> names containing it), so a keyword search never scans all files.

use std::collections::{BTreeSet, HashSet};

use super::IndexState;
use crate::protocol::{Holder, SearchResult};

/// Splits a name or query into lowercase alphanumeric tokens ("My_Song-01.mp3" ->
/// ["my", "song", "01", "mp3"]).
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

impl IndexState {
    /// Adds a name new to the index to the token index (it stays while the name has a
    /// history: a history outlives its holders, until `forget_name`).
    pub(super) fn index_name(&mut self, name: &str) {
        for token in tokenize(name) {
            self.tokens
                .entry(token)
                .or_default()
                .insert(name.to_string());
        }
    }

    /// Takes a name whose history was dropped (`ForgetHistories`) out of the token index;
    /// the one way a name leaves it.
    pub(super) fn forget_name(&mut self, name: &str) {
        for token in tokenize(name) {
            if let Some(names) = self.tokens.get_mut(&token) {
                names.remove(name);
                if names.is_empty() {
                    self.tokens.remove(&token);
                }
            }
        }
        super::shrink_if_sparse(&mut self.tokens);
    }

    /// Exact name first, then names containing every token of `query`, most holders first.
    /// Only files that some peer holds are listed.
    pub fn search(&self, query: &str, limit: usize) -> Vec<SearchResult> {
        let mut results = Vec::new();
        if limit == 0 {
            return results;
        }
        if let Some(r) = self.result_for(query) {
            results.push(r);
        }
        let query_tokens: BTreeSet<String> = tokenize(query).collect();
        let mut postings: Vec<&HashSet<String>> = Vec::with_capacity(query_tokens.len());
        for token in &query_tokens {
            match self.tokens.get(token) {
                Some(names) => postings.push(names),
                None => return results,
            }
        }
        postings.sort_by_key(|p| p.len());
        let Some((smallest, rest)) = postings.split_first() else {
            return results;
        };
        let mut matches: Vec<SearchResult> = smallest
            .iter()
            .filter(|name| name.as_str() != query)
            .filter(|name| rest.iter().all(|p| p.contains(*name)))
            .filter_map(|name| self.result_for(name))
            .collect();
        matches.sort_by(|a, b| {
            b.holders
                .len()
                .cmp(&a.holders.len())
                .then_with(|| a.name.cmp(&b.name))
        });
        results.extend(matches);
        results.truncate(limit);
        results
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
