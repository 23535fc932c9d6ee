//! Search's own tests: ranking, totals and limits through `IndexState`, the label order under
//! hostile insertion orders, the scan budget, and the fast search against a naive reference
//! over seeded random states (every shape of posting and every query path included).

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Arc;

use super::order::NameOrder;
use super::posting::{RankKey, FEW_MAX};
use super::*;
use crate::index::state::tests::meta;
use crate::index::state::{hash_token, AcquireLease, Announce, Heartbeat, Limits, Op, Register};
use crate::index::state::{Prune, Unregister};
use crate::protocol::FileMeta;

fn token_of(peer: &str) -> String {
    hash_token(&format!("tok-{peer}"))
}

fn register(peer: &str, files: Vec<FileMeta>) -> Op {
    Op::Register(Register {
        peer_id: peer.into(),
        token_hash: token_of(peer),
        addr: format!("10.0.0.1:{}", 1000 + peer.len()),
        files,
        limits: Limits::NONE,
    })
}

fn heartbeat(peer: &str, added: Vec<FileMeta>, removed: Vec<String>) -> Op {
    Op::Heartbeat(Heartbeat {
        peer_id: peer.into(),
        token_hash: token_of(peer),
        added,
        removed,
        limits: Limits::NONE,
    })
}

fn unregister(peer: &str) -> Op {
    Op::Unregister(Unregister {
        peer_id: peer.into(),
        token_hash: token_of(peer),
    })
}

/// Publishes version `version` of `name` as `peer` (a lease, then the announce).
fn publish(s: &mut IndexState, peer: &str, name: &str, version: u64) {
    let lease_id = format!("L-{peer}-{name}-{version}");
    s.apply(
        Op::AcquireLease(AcquireLease {
            peer_id: peer.into(),
            token_hash: token_of(peer),
            file: name.into(),
            lease_id: lease_id.clone(),
            ttl_ms: 1_000,
        }),
        0,
    )
    .unwrap();
    s.apply(
        Op::Announce(Announce {
            peer_id: peer.into(),
            token_hash: token_of(peer),
            file: meta(name, version, &format!("{name} v{version}")),
            lease_id: Some(lease_id),
            limits: Limits::NONE,
        }),
        0,
    )
    .unwrap();
}

fn v1(name: &str) -> FileMeta {
    meta(name, 1, name)
}

/// Version `version` of `name` as `publish` made it.
fn held(name: &str, version: u64) -> FileMeta {
    if version == 1 {
        v1(name)
    } else {
        meta(name, version, &format!("{name} v{version}"))
    }
}

fn listed(found: &SearchResponse) -> Vec<&str> {
    found.results.iter().map(|r| r.name.as_str()).collect()
}

/// The search as the seed did it: every held name checked, every match ranked, then cut.
fn naive(s: &IndexState, query: &str, limit: usize) -> (Vec<String>, u64) {
    let wanted: BTreeSet<String> = tokenize(query).collect();
    let exact = s
        .files
        .get(query)
        .filter(|e| !e.holders.is_empty())
        .map(|_| query.to_string());
    let mut matches: Vec<(Reverse<u32>, &String)> = s
        .files
        .iter()
        .filter(|(_, e)| !e.holders.is_empty())
        .filter(|(name, _)| {
            let own: BTreeSet<String> = tokenize(name).collect();
            !wanted.is_empty() && wanted.is_subset(&own)
        })
        .map(|(name, e)| (Reverse(up_to_date(e, e.latest_version())), name))
        .collect();
    let total = matches.len() as u64 + u64::from(exact.is_some() && wanted.is_empty());
    matches.sort();
    let mut names: Vec<String> = exact.into_iter().collect();
    names.extend(
        matches
            .into_iter()
            .map(|(_, name)| name.clone())
            .filter(|name| name != query),
    );
    names.truncate(limit);
    (names, total)
}

/// The fast search agrees with the naive one, and says its total is exact.
fn agrees(s: &IndexState, query: &str, limit: usize) {
    let found = s.search_counted(query, limit);
    let (names, total) = naive(s, query, limit);
    assert_eq!(listed(&found), names, "query {query:?} limit {limit}");
    assert_eq!(
        (found.total, found.total_exact),
        (total, true),
        "total of {query:?}"
    );
}

#[test]
fn more_up_to_date_holders_first_then_by_name() {
    let mut s = IndexState::default();
    let songs = ["b song.mp3", "a song.mp3", "c song.mp3", "d song.mp3"];
    s.apply(register("p1", songs.iter().map(|n| v1(n)).collect()), 0)
        .unwrap();
    s.apply(register("p2", vec![v1("c song.mp3"), v1("d song.mp3")]), 0)
        .unwrap();
    s.apply(register("p3", vec![v1("d song.mp3")]), 0).unwrap();
    let found = s.search_counted("song", 10);
    assert_eq!(
        listed(&found),
        ["d song.mp3", "c song.mp3", "a song.mp3", "b song.mp3"]
    );
    assert_eq!((found.total, found.total_exact), (4, true));
    assert_eq!(found.results[0].holders.len(), 3);

    // A new version counts only its own holders: the two others of d hold a stale copy.
    publish(&mut s, "p1", "d song.mp3", 2);
    let found = s.search_counted("song", 10);
    assert_eq!(
        listed(&found),
        ["c song.mp3", "a song.mp3", "b song.mp3", "d song.mp3"]
    );
    let d = &found.results[3];
    assert_eq!(
        (d.version, d.holders.len(), d.stale_holders.len()),
        (2, 1, 2)
    );
    // Fetching the new version brings a holder back up to date.
    s.apply(heartbeat("p2", vec![held("d song.mp3", 2)], vec![]), 0)
        .unwrap();
    let found = s.search_counted("song", 10);
    assert_eq!(
        listed(&found),
        ["c song.mp3", "d song.mp3", "a song.mp3", "b song.mp3"]
    );
    agrees(&s, "song", 10);
}

#[test]
fn exact_name_first_counted_once_and_limits_cut() {
    let mut s = IndexState::default();
    s.apply(
        register(
            "p1",
            vec![
                v1("help"),
                v1("help me.txt"),
                v1("Beatles - Help.mp3"),
                v1("--"),
            ],
        ),
        0,
    )
    .unwrap();
    s.apply(
        register("p2", vec![v1("help me.txt"), v1("Beatles - Help.mp3")]),
        0,
    )
    .unwrap();
    // The exact name has one holder, the others two: it still comes first, counted once.
    let found = s.search_counted("help", 10);
    assert_eq!(
        listed(&found),
        ["help", "Beatles - Help.mp3", "help me.txt"]
    );
    assert_eq!((found.total, found.total_exact), (3, true));
    let found = s.search_counted("help", 2);
    assert_eq!(listed(&found), ["help", "Beatles - Help.mp3"]);
    assert_eq!(found.total, 3);
    let found = s.search_counted("help", 1);
    assert_eq!(listed(&found), ["help"]);
    assert_eq!(found.total, 3);
    // limit 0 only counts.
    let found = s.search_counted("help", 0);
    assert!(found.results.is_empty());
    assert_eq!((found.total, found.total_exact), (3, true));
    // Case and punctuation do not matter to tokens; all tokens must be there.
    assert_eq!(
        listed(&s.search_counted("HELP, mp3!", 10)),
        ["Beatles - Help.mp3"]
    );
    assert_eq!(s.search_counted("help flac", 10).total, 0);
    assert_eq!(s.search_counted("", 10).total, 0);
    // A name without tokens is found by its exact name only, and counted.
    let found = s.search_counted("--", 10);
    assert_eq!(listed(&found), ["--"]);
    assert_eq!((found.total, found.total_exact), (1, true));
    for query in ["help", "HELP mp3", "me", "--", "x", "beatles help mp3"] {
        for limit in [0, 1, 2, 5] {
            agrees(&s, query, limit);
        }
    }
}

#[test]
fn holders_leaving_and_returning() {
    let mut s = IndexState::default();
    s.apply(register("p1", vec![v1("x one"), v1("x two")]), 0)
        .unwrap();
    s.apply(register("p2", vec![v1("x two"), v1("rare y")]), 0)
        .unwrap();
    assert_eq!(listed(&s.search_counted("x", 10)), ["x two", "x one"]);
    // p2 leaves: "x two" drops to one holder, "rare y" is held by no one.
    s.apply(unregister("p2"), 0).unwrap();
    assert_eq!(listed(&s.search_counted("x", 10)), ["x one", "x two"]);
    let gone = s.search_counted("rare", 10);
    assert!(gone.results.is_empty());
    assert_eq!((gone.total, gone.total_exact), (0, true));
    assert!(s.search_counted("rare y", 10).results.is_empty());
    // Its tokens went with it; the history stays.
    assert!(!s.search.token_ids.contains_key("rare"));
    assert!(s.file("rare y").is_some());
    s.search.check(s.files.iter());
    // It comes back, as does the name.
    s.apply(register("p2", vec![v1("rare y")]), 0).unwrap();
    assert_eq!(listed(&s.search_counted("rare", 10)), ["rare y"]);
    // A heartbeat drops one holding; a prune drops all of a peer's.
    s.apply(heartbeat("p1", vec![], vec!["x one".into()]), 0)
        .unwrap();
    assert_eq!(listed(&s.search_counted("x", 10)), ["x two"]);
    s.apply(
        Op::Prune(Prune {
            peers: vec!["p1".into()],
        }),
        0,
    )
    .unwrap();
    assert_eq!(s.search_counted("x", 10).total, 0);
    s.search.check(s.files.iter());
    for query in ["x", "rare", "y", "x two"] {
        agrees(&s, query, 10);
    }
}

#[test]
fn names_with_many_tokens_and_queries_with_many() {
    let mut s = IndexState::default();
    let long: Vec<String> = (0..120).map(|i| format!("w{i}")).collect();
    let long_name = long.join(" ");
    let files = vec![
        v1(&long_name),
        v1("a a a b"),
        v1("Ünïcode Straße 01.flac"),
        v1("w1 w2"),
    ];
    s.apply(register("p1", files), 0).unwrap();
    s.search.check(s.files.iter());
    assert_eq!(
        listed(&s.search_counted("w119 w0", 10)),
        [long_name.as_str()]
    );
    assert_eq!(s.search_counted("w1 w2", 10).total, 2);
    assert_eq!(listed(&s.search_counted("b a a", 10)), ["a a a b"]);
    assert_eq!(
        listed(&s.search_counted("straße ÜNÏCODE", 10)),
        ["Ünïcode Straße 01.flac"]
    );
    // Every token of the long name at once, and one more than it has.
    assert_eq!(s.search_counted(&long_name, 10).total, 1);
    let too_many = format!("{long_name} w120");
    assert_eq!(s.search_counted(&too_many, 10).total, 0);
    for query in [long_name.as_str(), "w5", "w1", "a", "01 flac", &too_many] {
        agrees(&s, query, 3);
    }
}

/// A state with `n` names sharing the tokens "all" (every name), "half" (every other), the
/// name's own number, and "g{n % groups}"; each name held by 1 to 3 peers of 4.
fn big_state(n: usize, groups: usize) -> IndexState {
    let mut s = IndexState::default();
    let mut lists: Vec<Vec<FileMeta>> = vec![Vec::new(); 4];
    for i in 0..n {
        let half = if i % 2 == 0 { " half" } else { "" };
        let name = format!("all g{} n{i}{half}.dat", i % groups);
        for (p, list) in lists.iter_mut().enumerate() {
            if p == 0 || (i * 7 + p) % 5 == 0 {
                list.push(v1(&name));
            }
        }
    }
    for (p, files) in lists.into_iter().enumerate() {
        s.apply(register(&format!("p{p}"), files), 0).unwrap();
    }
    s
}

#[test]
fn large_postings_rank_and_count_on_every_path() {
    // 3,000 names: "all", "half" and "g0".."g2" (1,000 each) are ranked with bitmaps, each
    // "n{i}" has one name.
    let mut s = big_state(3_000, 3);
    // Files named exactly as queries are, on every path: listed first, and only once. Held
    // by all four peers, they are also at the front of their tokens' postings.
    for p in 0..4 {
        let named = vec![v1("all"), v1("all half"), v1("g1"), v1("half n10")];
        s.apply(heartbeat(&format!("p{p}"), named, vec![]), 0)
            .unwrap();
    }
    s.search.check(s.files.iter());
    let queries = [
        "all",            // one ranked token
        "half",           // the same, half the names
        "g1",             // one token, a third of the names
        "all half",       // bitmaps, many matches: a walk
        "half n10",       // a one-name driver
        "all half n11",   // n11 is odd: no match
        "g2 half",        // bitmaps again
        "all g0 n300",    // one match
        "all half g1 n4", // one match, four tokens
    ];
    for limit in [0, 1, 7, 50] {
        for query in queries {
            agrees(&s, query, limit);
        }
    }
    // Churn: peers drop and take back slices, changing holder counts all over.
    for round in 0..4 {
        let peer = format!("p{}", 1 + round % 3);
        let removed: Vec<String> = (0..3_000)
            .filter(|i| (i + round) % 4 == 0)
            .map(|i| {
                let half = if i % 2 == 0 { " half" } else { "" };
                format!("all g{} n{i}{half}.dat", i % 3)
            })
            .collect();
        s.apply(heartbeat(&peer, vec![], removed), 0).unwrap();
        s.search.check(s.files.iter());
        for query in queries {
            agrees(&s, query, 20);
        }
    }
    // Shrinking back below the ranked size changes shape again.
    for p in 0..4 {
        s.apply(unregister(&format!("p{p}")), 0).unwrap();
    }
    s.search.check(s.files.iter());
    assert_eq!(s.search_counted("all", 10).total, 0);
    assert!(s.search.token_ids.is_empty());
}

#[test]
fn an_intersection_of_bitmaps_is_exact_and_small_ones_are_collected() {
    // Two tokens in about two thirds of the names each whose names in common are few and
    // rank last (no extra holder, names that sort last).
    let mut s = IndexState::default();
    let mut files = Vec::new();
    for i in 0..3_000 {
        files.push(v1(&format!("a{i:05} left.x")));
        files.push(v1(&format!("b{i:05} right.x")));
    }
    for i in 0..7 {
        files.push(v1(&format!("z{i} left right.x")));
    }
    s.apply(register("p1", files.clone()), 0).unwrap();
    // Everything but the common names gets a second holder.
    let popular: Vec<FileMeta> = files
        .into_iter()
        .filter(|f| !f.name.starts_with('z'))
        .collect();
    s.apply(register("p2", popular), 0).unwrap();
    let found = s.search_counted("left right", 5);
    assert_eq!(
        listed(&found),
        [
            "z0 left right.x",
            "z1 left right.x",
            "z2 left right.x",
            "z3 left right.x",
            "z4 left right.x"
        ]
    );
    assert_eq!((found.total, found.total_exact), (7, true));
    agrees(&s, "right left x", 50);
    // A file named as the query, with both holders: first, once, and counted.
    for peer in ["p1", "p2"] {
        s.apply(heartbeat(peer, vec![v1("left right")], vec![]), 0)
            .unwrap();
    }
    let found = s.search_counted("left right", 3);
    assert_eq!(
        listed(&found),
        ["left right", "z0 left right.x", "z1 left right.x"]
    );
    assert_eq!((found.total, found.total_exact), (8, true));
    agrees(&s, "left right", 50);
}

#[test]
fn the_scan_budget_gives_the_best_found_so_far_and_a_lower_bound() {
    // 4,000 names, so that "mid" (236 names) is ranked but has no bitmap (fewer than 1/16 of
    // the names), while "odd" and "hi" (2,000 each) have one. A second holder lifts the even
    // names from 2,000 on, so that the front of "mid" and of "hi" is names that are not odd.
    let mut s = IndexState::default();
    let mut files = Vec::new();
    for i in 0..4_000 {
        let mid = if i % 17 == 0 { " mid" } else { "" };
        let odd = if i % 2 == 1 { " odd" } else { "" };
        let hi = if i >= 2_000 { " hi" } else { "" };
        files.push(v1(&format!("f{i:05}{mid}{odd}{hi}")));
    }
    let lifted: Vec<FileMeta> = files
        .iter()
        .filter(|f| f.name.contains(" hi") && !f.name.contains(" odd"))
        .cloned()
        .collect();
    s.apply(register("p1", files), 0).unwrap();
    s.apply(register("p2", lifted), 0).unwrap();
    s.search.check(s.files.iter());
    let mid = &s.search.postings[s.search.token_ids["mid"] as usize];
    assert!(mid.len() > FEW_MAX && mid.bits().is_none());
    let (names, total) = naive(&s, "mid odd", usize::MAX);
    assert!(total > 100);
    // Unlimited, the walk sees all of "mid" and counts exactly.
    let full = s
        .search
        .keyword_matches_within("mid odd", 10, None, usize::MAX);
    assert_eq!((full.total, full.exact), (total, true));
    // With a budget of 100 candidates: the matches among those 100, the best ones in order,
    // and their number as a lower bound.
    let cut = s.search.keyword_matches_within("mid odd", 1_000, None, 100);
    assert!(!cut.exact);
    assert_eq!(cut.total, cut.ids.len() as u64);
    assert!(cut.total > 0 && cut.total < total, "{}", cut.total);
    let cut_names: Vec<&str> = cut.ids.iter().filter_map(|&id| s.search.name(id)).collect();
    assert_eq!(cut_names, names[..cut.ids.len()]);
    // When every token has a bitmap the total is exact whatever the budget, and matches a
    // walk could not reach in its budget are collected from the bitmaps.
    let (names, total) = naive(&s, "hi odd", 10);
    assert!(total > COLLECT_FIRST && total <= COLLECT_MAX);
    let collected = s.search.keyword_matches_within("hi odd", 10, None, 1);
    assert_eq!((collected.total, collected.exact), (total, true));
    let collected: Vec<&str> = collected
        .ids
        .iter()
        .filter_map(|&id| s.search.name(id))
        .collect();
    assert_eq!(collected, names);
    agrees(&s, "mid hi odd", 10);
}

#[test]
fn a_restored_state_answers_the_same() {
    let mut one = big_state(2_500, 4);
    publish(&mut one, "p0", "all g1 n1.dat", 2);
    one.apply(unregister("p3"), 0).unwrap();
    let snapshot = one.snapshot();
    let mut two = IndexState::restore(snapshot);
    two.search.check(two.files.iter());
    let queries = [
        "all",
        "half",
        "g1",
        "all half",
        "g3 half",
        "n1",
        "all g1 n1.dat",
        "zzz",
    ];
    for query in queries {
        assert_eq!(
            one.search_counted(query, 30),
            two.search_counted(query, 30),
            "{query}"
        );
    }
    // Both go on the same way.
    for s in [&mut one, &mut two] {
        s.apply(
            heartbeat(
                "p1",
                vec![v1("all new one")],
                vec!["all g0 n0 half.dat".into()],
            ),
            1,
        )
        .unwrap();
        s.apply(
            register("p9", vec![v1("all g1 n1.dat"), v1("all g2 n2 half.dat")]),
            1,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
    }
    for query in queries {
        assert_eq!(
            one.search_counted(query, 30),
            two.search_counted(query, 30),
            "{query}"
        );
        agrees(&two, query, 30);
    }
    two.search.check(two.files.iter());
}

/// A change reported twice (or one never reported) cannot drive a holder count below zero:
/// the count is taken afresh from the entry instead.
#[test]
fn a_miscounted_holding_is_counted_afresh() {
    let mut s = IndexState::default();
    s.apply(register("p1", vec![v1("one x")]), 0).unwrap();
    let entry = s.files["one x"].clone();
    let mut index = SearchIndex::rebuild(s.files.iter());
    // "p1 dropped v1" reported twice while the entry still lists it.
    index.holding_changed("one x", &entry, Some(1), None);
    index.holding_changed("one x", &entry, Some(1), None);
    index.check(s.files.iter());
    let found = index.keyword_matches("x", 10, None);
    assert_eq!((found.total, found.ids.len()), (1, 1));
}

/// The buffered top-k picks what a full sort would, whatever order the keys come in.
#[test]
fn best_of_many_keys_is_the_front_of_the_sorted_keys() {
    let mut rng = Rng(99);
    let random: Vec<RankKey> = (0..10_000)
        .map(|id| RankKey::new(rng.below(5) as u32, rng.below(1 << 40) as u64, id))
        .collect();
    let mut descending = random.clone();
    descending.sort_unstable_by(|a, b| b.cmp(a));
    let mut ascending = random.clone();
    ascending.sort_unstable();
    for keys in [&random, &descending, &ascending] {
        for limit in [0, 1, 2, 7, 50, 1_000, 10_000, 20_000] {
            let want: Vec<u32> = ascending.iter().take(limit).map(|k| k.id()).collect();
            assert_eq!(
                super::best(keys.iter().copied(), limit),
                want,
                "limit {limit}"
            );
        }
    }
}

/// Inserts `names` in order into an empty name order; returns it with the labels, the names
/// relabelled in all, and the most relabelled by one insertion.
fn label_all(names: &[String]) -> (NameOrder, Vec<u64>, usize, usize) {
    let mut order = NameOrder::default();
    let mut labels: Vec<u64> = Vec::new();
    let (mut moved, mut most) = (0, 0);
    for name in names {
        let id = labels.len() as u32;
        labels.push(0);
        let placed = order.insert(Arc::from(name.as_str()), id, |i| labels[i as usize]);
        moved += placed.moved.len();
        most = most.max(placed.moved.len());
        for (other, label) in placed.moved {
            labels[other as usize] = label;
        }
        labels[id as usize] = placed.label;
    }
    order.check(|i| labels[i as usize]);
    (order, labels, moved, most)
}

/// Names as binary fractions (bit strings without trailing zeros sort as their values do),
/// each halfway between the two latest: every insertion halves the same shrinking gap, on
/// alternating sides, the worst case for labels between neighbours. `gaps` gaps, `depth`
/// names in each.
fn bisections(gaps: usize, depth: usize) -> Vec<String> {
    let bits = |mut x: u128| {
        let mut s = String::new();
        for _ in 0..127 {
            s.push(if (x >> 126) & 1 == 1 { '1' } else { '0' });
            x <<= 1;
        }
        s.trim_end_matches('0').to_string()
    };
    let mut names = Vec::new();
    for g in 0..gaps {
        let (mut a, mut b) = (1u128 << 125, 3u128 << 125);
        names.push(format!("z{g:06}-{}", bits(a)));
        names.push(format!("z{g:06}-{}", bits(b)));
        for _ in 0..depth {
            let mid = a / 2 + b / 2;
            names.push(format!("z{g:06}-{}", bits(mid)));
            (a, b) = (b, mid);
        }
    }
    names
}

/// The labels under insertion orders that crowd them. Runs (sorted, reversed, catalogs
/// interleaved as peers register them) are recognised and never relabel; bisecting one gap
/// over and over relabels a few names per insertion, never many at once; the order stays
/// the names' order throughout, and after removals.
#[test]
fn labels_keep_name_order_and_rarely_move() {
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "ascending",
            (0..20_000).map(|i| format!("n{i:06}")).collect(),
        ),
        (
            "descending",
            (0..20_000).rev().map(|i| format!("n{i:06}")).collect(),
        ),
        ("nested", (1..250).map(|i| "b".repeat(i)).collect()),
        (
            "nested down",
            (1..250)
                .map(|i| format!("c{}", "\u{1}".repeat(250 - i)))
                .collect(),
        ),
        (
            "catalogs",
            (0..40)
                .flat_map(|p| {
                    (0..500).map(move |f| {
                        let kind = if f % 2 == 0 { "track" } else { "demo" };
                        format!("{kind} {f:03} of peer {p}.mp3")
                    })
                })
                .collect(),
        ),
        ("random", {
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            (0..20_000)
                .map(|_| format!("r{}", rng.below(1 << 40)))
                .collect()
        }),
    ];
    for (what, names) in runs {
        let (mut order, labels, moved, _) = label_all(&names);
        assert!(moved <= names.len() / 100, "{what}: {moved} relabels");
        for name in names.iter().step_by(3) {
            order.remove(name);
        }
        order.check(|i| labels[i as usize]);
    }
    let names = bisections(200, 100);
    let (_, _, moved, most) = label_all(&names);
    assert!(moved < 8 * names.len(), "bisections: {moved} relabels");
    assert!(most < 1_000, "bisections: {most} relabelled at once");
}

/// A small deterministic generator: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Random names from a skewed vocabulary, random holdings, publishes, departures and
/// returns; after each step the fast search answers random queries as the naive one does.
/// Two scales: a few hundred names (every op checked), and a few thousand (postings ranked
/// and dense, checked every few steps).
#[test]
fn fast_search_matches_the_naive_one_on_random_states() {
    const WORDS: [&str; 12] = [
        "mp3", "the", "live", "mix", "demo", "a", "b", "x", "love", "song", "2024", "ü",
    ];
    for (seed, names, steps, every) in [(7u64, 300, 600, 1), (11, 4_000, 40, 10)] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let peers: Vec<String> = (0..6).map(|p| format!("peer{p}")).collect();
        let name_of = |i: usize| {
            // Word i % 12 always, more words by the bits of i: a skewed vocabulary. "k{i % 20}"
            // gives every name a token of 1/20 of the names: at 4,000 names, ranked postings
            // without a bitmap.
            let group = format!("k{}", i % 20);
            let mut parts = vec![WORDS[i % WORDS.len()], group.as_str()];
            for (bit, word) in WORDS.iter().enumerate() {
                if (i >> (bit % 8)) & 3 == 0 && bit % 3 == i % 3 {
                    parts.push(word);
                }
            }
            // A third of the names end in mp3, the rest in ogg: at 4,000 names both are
            // ranked postings with bitmaps, the words unordered ones.
            format!(
                "{} {i}.{}",
                parts.join(" "),
                if i.is_multiple_of(3) { "mp3" } else { "ogg" }
            )
        };
        let word = |rng: &mut Rng| match rng.below(WORDS.len() + 2) {
            n if n < WORDS.len() => WORDS[n],
            n if n == WORDS.len() => "ogg",
            _ => "mp3",
        };
        let mut s = IndexState::default();
        for peer in &peers {
            let files = (0..names)
                .filter(|_| rng.below(3) == 0)
                .map(|i| v1(&name_of(i)));
            s.apply(register(peer, files.collect()), 0).unwrap();
        }
        let mut version = vec![1u64; names];
        for step in 0..steps {
            let peer = &peers[rng.below(peers.len())];
            match rng.below(6) {
                0 => {
                    // v1 of names published since: stale holdings.
                    let files = (0..names)
                        .filter(|_| rng.below(4) == 0)
                        .map(|i| v1(&name_of(i)));
                    s.apply(register(peer, files.collect()), 0).unwrap();
                }
                1 => {
                    s.apply(unregister(peer), 0).unwrap();
                    s.apply(register(peer, vec![]), 0).unwrap();
                }
                2 | 3 => {
                    let mut added = Vec::new();
                    let mut removed = Vec::new();
                    for _ in 0..1 + rng.below(names / 10) {
                        let i = rng.below(names);
                        if rng.below(2) == 0 {
                            added.push(held(&name_of(i), version[i]));
                        } else {
                            removed.push(name_of(i));
                        }
                    }
                    removed.retain(|r| !added.iter().any(|a| &a.name == r));
                    s.apply(heartbeat(peer, added, removed), 0).unwrap();
                }
                4 => {
                    let i = rng.below(names);
                    let name = name_of(i);
                    let holds = s.file(&name).is_some_and(|e| e.holders.contains_key(peer));
                    if holds {
                        version[i] += 1;
                        publish(&mut s, peer, &name, version[i]);
                    }
                }
                _ => {}
            }
            if step % every == 0 {
                s.search.check(s.files.iter());
            }
            for _ in 0..3 {
                let query = match rng.below(6) {
                    0 => word(&mut rng).to_string(),
                    1 | 2 => format!("{} {}", word(&mut rng), word(&mut rng)),
                    3 => name_of(rng.below(names)),
                    4 => format!("k{} {}", rng.below(20), word(&mut rng)),
                    _ => format!("{} {} {}", word(&mut rng), word(&mut rng), rng.below(names)),
                };
                agrees(&s, &query, [0, 1, 5, 50][rng.below(4)]);
            }
        }
        s.search.check(s.files.iter());
    }
}
