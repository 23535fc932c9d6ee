//! The state machine's own tests: ops applied directly, invariants checked after each.

use super::*;
use crate::index::lease::LeaseError;

/// A file entry for `content`, as a peer would report it.
pub(crate) fn meta(name: &str, version: u64, content: &str) -> FileMeta {
    FileMeta {
        name: name.into(),
        version,
        size: content.len() as u64,
        sha256: sha256_hex(content.as_bytes()),
    }
}

fn register(id: &str, files: Vec<FileMeta>) -> Op {
    Op::Register(Register {
        peer_id: id.into(),
        token_hash: hash_token(&format!("tok-{id}")),
        addr: format!("127.0.0.1:{}", 9000 + id.len()),
        files,
        limits: Limits::NONE,
    })
}

fn announce(id: &str, file: FileMeta, lease_id: Option<&str>) -> Op {
    Op::Announce(Announce {
        peer_id: id.into(),
        token_hash: hash_token(&format!("tok-{id}")),
        file,
        lease_id: lease_id.map(String::from),
        limits: Limits::NONE,
    })
}

fn lease(id: &str, file: &str, lease_id: &str, ttl_ms: u64) -> Op {
    Op::AcquireLease(AcquireLease {
        peer_id: id.into(),
        token_hash: hash_token(&format!("tok-{id}")),
        file: file.into(),
        lease_id: lease_id.into(),
        ttl_ms,
    })
}

fn heartbeat(id: &str, added: Vec<FileMeta>, removed: Vec<&str>) -> Op {
    Op::Heartbeat(Heartbeat {
        peer_id: id.into(),
        token_hash: hash_token(&format!("tok-{id}")),
        added,
        removed: removed.into_iter().map(String::from).collect(),
        limits: Limits::NONE,
    })
}

#[test]
fn register_then_search_finds_holders() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("doc.txt", 1, "hello")]), 10)
        .unwrap();
    s.apply(register("bb", vec![meta("doc.txt", 1, "hello")]), 11)
        .unwrap();
    let r = s.search("doc.txt", 10);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].version, 1);
    assert_eq!(r[0].holders.len(), 2);
    assert_eq!(s.seq(), 2);
    assert_eq!(s.peer_count(), 2);
}

#[test]
fn keyword_search_uses_tokens_and_puts_exact_first() {
    let mut s = IndexState::default();
    s.apply(
        register(
            "a",
            vec![
                meta("Beatles - Help.mp3", 1, "x"),
                meta("help", 1, "y"),
                meta("help me.txt", 1, "z"),
                meta("unrelated.mp3", 1, "w"),
            ],
        ),
        0,
    )
    .unwrap();
    let names: Vec<String> = s.search("help", 10).into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["help", "Beatles - Help.mp3", "help me.txt"]);
    let names: Vec<String> = s
        .search("HELP mp3", 10)
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["Beatles - Help.mp3"]);
    assert!(s.search("nothing", 10).is_empty());
    assert_eq!(s.search("help", 2).len(), 2);
    assert!(s.search("", 10).is_empty());
}

#[test]
fn same_version_with_other_content_is_rejected() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("doc.txt", 1, "hello")]), 0)
        .unwrap();
    let out = s
        .apply(register("b", vec![meta("doc.txt", 1, "evil")]), 0)
        .unwrap();
    let Outcome::Registered(Registered {
        refused: rejected, ..
    }) = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].name, "doc.txt");
    let r = s.search("doc.txt", 10);
    assert_eq!(r[0].holders.len(), 1);
    assert_eq!(r[0].sha256, meta("doc.txt", 1, "hello").sha256);

    let err = s
        .apply(
            Op::Announce(Announce {
                peer_id: "b".into(),
                token_hash: hash_token("tok-b"),
                file: meta("doc.txt", 1, "evil"),
                lease_id: None,
                limits: Limits::NONE,
            }),
            0,
        )
        .unwrap_err();
    assert!(matches!(err, StateError::Conflict(_)));
}

#[test]
fn new_version_makes_old_holders_stale_and_gaps_are_refused() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("doc.txt", 1, "v1")]), 0)
        .unwrap();
    s.apply(register("b", vec![meta("doc.txt", 1, "v1")]), 0)
        .unwrap();
    s.apply(lease("a", "doc.txt", "L1", 1_000), 1).unwrap();
    s.apply(announce("a", meta("doc.txt", 2, "v2"), Some("L1")), 1)
        .unwrap();
    let r = &s.search("doc.txt", 10)[0];
    assert_eq!(r.version, 2);
    assert_eq!(r.holders.len(), 1);
    assert_eq!(r.holders[0].peer_id, "a");
    assert_eq!(r.stale_holders[0].peer_id, "b");

    let err = s
        .apply(
            Op::Announce(Announce {
                peer_id: "b".into(),
                token_hash: hash_token("tok-b"),
                file: meta("doc.txt", 4, "v4"),
                lease_id: None,
                limits: Limits::NONE,
            }),
            2,
        )
        .unwrap_err();
    assert!(matches!(err, StateError::Conflict(ref m) if m.to_string().contains("skips")));
}

#[test]
fn wrong_token_and_unknown_peer_change_nothing() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("doc.txt", 1, "v1")]), 0)
        .unwrap();
    let before = s.digest();
    let hijack = Op::Register(Register {
        peer_id: "a".into(),
        token_hash: hash_token("guess"),
        addr: "127.0.0.1:1".into(),
        files: vec![],
        limits: Limits::NONE,
    });
    assert!(matches!(s.apply(hijack, 1), Err(StateError::BadToken(_))));
    assert!(matches!(
        s.apply(heartbeat("zz", vec![], vec![]), 1),
        Err(StateError::UnknownPeer(_))
    ));
    let unreg = Op::Unregister(Unregister {
        peer_id: "a".into(),
        token_hash: hash_token("nope"),
    });
    assert!(matches!(s.apply(unreg, 1), Err(StateError::BadToken(_))));
    assert_eq!(s.digest(), before);
}

#[test]
fn heartbeat_reports_additions_and_removals() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("one", 1, "1")]), 0)
        .unwrap();
    s.apply(heartbeat("a", vec![meta("two", 1, "2")], vec!["one"]), 5)
        .unwrap();
    assert!(s.search("one", 10).is_empty());
    assert_eq!(s.search("two", 10).len(), 1);
    assert_eq!(s.peer("a").unwrap().last_seen_ms, 5);
    // The history of "one" survives its last holder.
    assert!(s.file("one").is_some());
}

#[test]
fn reregister_replaces_the_file_list() {
    let mut s = IndexState::default();
    s.apply(
        register("a", vec![meta("one", 1, "1"), meta("two", 1, "2")]),
        0,
    )
    .unwrap();
    s.apply(register("a", vec![meta("two", 1, "2")]), 1)
        .unwrap();
    assert!(s.search("one", 10).is_empty());
    assert_eq!(s.peer("a").unwrap().files.len(), 1);
}

#[test]
fn prune_and_unregister_remove_holdings() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("f", 1, "1")]), 0).unwrap();
    s.apply(register("bb", vec![meta("f", 1, "1")]), 0).unwrap();
    s.apply(heartbeat("bb", vec![], vec![]), 5_000).unwrap();
    assert_eq!(s.silent_peers(6_000, 3_000), vec!["a".to_string()]);
    let out = s
        .apply(
            Op::Prune(Prune {
                peers: s.silent_peers(6_000, 3_000),
            }),
            6_000,
        )
        .unwrap();
    assert_eq!(
        out,
        Outcome::Pruned(Pruned {
            peers: vec!["a".into()]
        })
    );
    assert_eq!(s.search("f", 10)[0].holders.len(), 1);
    assert_eq!(s.held_file_count(), 1);
    s.apply(
        Op::Unregister(Unregister {
            peer_id: "bb".into(),
            token_hash: hash_token("tok-bb"),
        }),
        7_000,
    )
    .unwrap();
    assert!(s.search("f", 10).is_empty());
    assert_eq!(s.peer_count(), 0);
    assert_eq!(s.held_file_count(), 0);
}

#[test]
fn a_new_version_needs_the_publishers_live_lease_and_uses_it_up() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("doc", 1, "v1")]), 0)
        .unwrap();
    s.apply(register("b", vec![meta("doc", 1, "v1")]), 0)
        .unwrap();

    // Without a lease: neither a heartbeat nor an announce may publish v2.
    let out = s
        .apply(heartbeat("a", vec![meta("doc", 2, "x")], vec![]), 1)
        .unwrap();
    let Outcome::HeartbeatAccepted(HeartbeatAccepted { refused: rejected }) = out else {
        panic!("{out:?}")
    };
    assert!(
        rejected[0].why.to_string().contains("lease"),
        "{rejected:?}"
    );
    let err = s
        .apply(announce("a", meta("doc", 2, "x"), None), 1)
        .unwrap_err();
    assert!(matches!(err, StateError::Conflict(ref m) if m.to_string().contains("lease")));
    assert_eq!(s.file("doc").unwrap().latest_version(), 1);

    // One lease at a time; the loser learns who holds it and for how long.
    let out = s.apply(lease("a", "doc", "La", 1_000), 10).unwrap();
    let Outcome::Leased(Leased {
        lease: granted,
        latest,
    }) = out
    else {
        panic!("{out:?}")
    };
    assert_eq!((granted.lease_id.as_str(), latest.version), ("La", 1));
    assert_eq!(
        s.apply(lease("b", "doc", "Lb", 1_000), 110),
        Err(StateError::Lease(LeaseError::Held {
            file: "doc".into(),
            holder: "a".into(),
            remaining_ms: 900
        }))
    );
    // Someone else's lease, or no such file.
    assert_eq!(
        s.apply(announce("b", meta("doc", 2, "y"), Some("La")), 120),
        Err(StateError::Lease(LeaseError::NotYours {
            holder: "a".into()
        }))
    );
    assert!(matches!(
        s.apply(lease("b", "nothing", "Lb", 1_000), 120),
        Err(StateError::NoSuchFile(_))
    ));

    s.apply(announce("a", meta("doc", 2, "x"), Some("La")), 200)
        .unwrap();
    assert_eq!(s.file("doc").unwrap().latest_version(), 2);
    assert!(s.leases().is_empty(), "a publish spends the lease");
    assert_eq!(
        s.apply(announce("a", meta("doc", 3, "z"), Some("La")), 210),
        Err(StateError::Lease(LeaseError::Unknown))
    );
    // The file is free again; b is stale now, and can copy v2 without a lease.
    s.apply(lease("b", "doc", "Lb", 1_000), 220).unwrap();
    s.apply(announce("b", meta("doc", 2, "x"), None), 230)
        .unwrap();
    assert_eq!(s.search("doc", 1)[0].holders.len(), 2);
    // A retried publish of what is now an existing version is accepted as a copy.
    s.apply(announce("a", meta("doc", 2, "x"), Some("La")), 240)
        .unwrap();
}

#[test]
fn expired_leases_are_worthless_and_swept() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("doc", 1, "v1")]), 0)
        .unwrap();
    s.apply(register("b", vec![]), 0).unwrap();
    s.apply(lease("a", "doc", "La", 100), 0).unwrap();
    s.apply(
        Op::RenewLease(RenewLease {
            peer_id: "a".into(),
            token_hash: hash_token("tok-a"),
            lease_id: "La".into(),
            ttl_ms: 100,
        }),
        50,
    )
    .unwrap();
    assert!(s.leases().expired(149).is_empty());
    assert_eq!(
        s.apply(announce("a", meta("doc", 2, "x"), Some("La")), 160),
        Err(StateError::Lease(LeaseError::Expired { ago_ms: 10 }))
    );
    // Expired means free, even before the sweeper comes by.
    let before = s.leases().expired(160);
    assert_eq!(before, vec!["La".to_string()]);
    s.apply(lease("b", "doc", "Lb", 100), 170).unwrap();
    // The sweeper removes only what is still expired when its op applies.
    let out = s
        .apply(
            Op::ExpireLeases(ExpireLeases {
                lease_ids: vec!["La".into(), "Lb".into()],
            }),
            180,
        )
        .unwrap();
    assert_eq!(
        out,
        Outcome::LeasesExpired(LeasesExpired {
            lease_ids: Vec::new()
        })
    );
    assert_eq!(s.leases().len(), 1);
    s.apply(
        Op::ExpireLeases(ExpireLeases {
            lease_ids: s.leases().expired(300),
        }),
        300,
    )
    .unwrap();
    assert!(s.leases().is_empty());
    assert_eq!(
        s.apply(announce("b", meta("doc", 2, "x"), Some("Lb")), 300),
        Err(StateError::Lease(LeaseError::Unknown))
    );
}

#[test]
fn a_lease_is_for_one_file_and_goes_with_its_peer() {
    let mut s = IndexState::default();
    s.apply(
        register("a", vec![meta("one", 1, "1"), meta("two", 1, "2")]),
        0,
    )
    .unwrap();
    s.apply(lease("a", "one", "L1", 1_000), 0).unwrap();
    assert_eq!(
        s.apply(announce("a", meta("two", 2, "x"), Some("L1")), 1),
        Err(StateError::Lease(LeaseError::OtherFile {
            leased: "one".into()
        }))
    );
    s.apply(
        Op::Prune(Prune {
            peers: vec!["a".into()],
        }),
        2,
    )
    .unwrap();
    assert!(
        s.leases().is_empty(),
        "a pruned peer's lease frees its file"
    );
}

#[test]
fn interleaved_publishers_never_lose_or_duplicate_a_version() {
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let peers: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let mut s = IndexState::default();
    s.apply(register("p0", vec![meta("f", 1, "0")]), 0).unwrap();
    for p in &peers[1..] {
        s.apply(register(p, vec![]), 0).unwrap();
    }
    // Each peer: take the lease, then later publish what it believes is the next version.
    let mut plans: Vec<Option<(String, u64)>> = vec![None; peers.len()];
    let mut published = Vec::new();
    for step in 1..4_000u64 {
        let i = next(peers.len() as u64) as usize;
        let id = &peers[i];
        match plans[i].take() {
            None => {
                let lease_id = format!("L{step}");
                if let Ok(Outcome::Leased(Leased { lease, latest })) =
                    s.apply(lease(id, "f", &lease_id, 50), step)
                {
                    plans[i] = Some((lease.lease_id, latest.version + 1));
                }
            }
            Some((lease_id, version)) => {
                let content = format!("{id}@{step}");
                let file = meta("f", version, &content);
                if s.apply(announce(id, file.clone(), Some(&lease_id)), step)
                    .is_ok()
                {
                    published.push(file);
                }
            }
        }
        if step % 97 == 0 {
            let expired = s.leases().expired(step);
            s.apply(Op::ExpireLeases(ExpireLeases { lease_ids: expired }), step)
                .unwrap();
        }
    }
    assert!(published.len() > 50, "only {} publishes", published.len());
    let entry = s.file("f").unwrap();
    assert_eq!(entry.latest_version(), published.len() as u64 + 1);
    let versions: Vec<u64> = entry.versions.keys().copied().collect();
    assert_eq!(
        versions,
        (1..=published.len() as u64 + 1).collect::<Vec<_>>()
    );
    for file in &published {
        assert_eq!(
            entry
                .versions
                .get(&file.version)
                .unwrap()
                .sha256
                .to_string(),
            file.sha256
        );
    }
}

#[test]
fn a_restored_snapshot_equals_the_original_and_liveness_is_not_sequenced() {
    let mut one = IndexState::default().with_epoch("e1".into());
    one.apply(
        register("a", vec![meta("x y", 1, "1"), meta("z", 1, "2")]),
        1,
    )
    .unwrap();
    one.apply(register("bb", vec![meta("x y", 1, "1")]), 2)
        .unwrap();
    one.apply(lease("a", "z", "L1", 100), 3).unwrap();
    let (seq, digest) = (one.seq(), one.digest());
    one.touch("bb", &hash_token("tok-bb"), 50).unwrap();
    assert_eq!((one.seq(), one.digest()), (seq, digest.clone()));
    assert!(one.touch("bb", &hash_token("guess"), 60).is_err());

    let json = serde_json::to_string(&one.snapshot()).unwrap();
    let mut two = IndexState::restore(serde_json::from_str(&json).unwrap());
    let direct = one.snapshot_json().unwrap();
    let three = IndexState::restore(serde_json::from_slice(&direct).unwrap());
    assert_eq!(
        three.digest(),
        digest,
        "the direct encoding reads back the same"
    );
    assert_eq!(two.digest(), digest);
    assert_eq!(two.epoch(), "e1");
    assert_eq!(two.search("x", 10), one.search("x", 10));
    assert_eq!(two.held_file_count(), one.held_file_count());
    assert_eq!(two.peer("bb").unwrap().last_seen_ms, 50);
    check_invariants(&two);
    // Both go on the same way from there.
    for (op, now) in [
        (announce("a", meta("z", 2, "3"), Some("L1")), 60),
        (heartbeat("bb", vec![], vec!["x y"]), 61),
    ] {
        one.apply(op.clone(), now).unwrap();
        two.apply(op, now).unwrap();
    }
    assert_eq!(one.digest(), two.digest());
    let mut three = IndexState::default();
    three.set_liveness(&one.liveness());
    assert_eq!(
        three.peer_count(),
        0,
        "liveness of unknown peers is ignored"
    );
}

/// Everything derived must agree with what it is derived from.
fn check_invariants(s: &IndexState) {
    let held = s.files.values().filter(|f| !f.holders.is_empty()).count();
    assert_eq!(s.held_file_count(), held);
    for (id, peer) in &s.peers {
        for name in &peer.files {
            assert!(s.files[name].holders.contains_key(id), "{id} lists {name}");
        }
    }
    for (name, entry) in &s.files {
        for (id, version) in &entry.holders {
            assert!(s.peers[id].files.contains(name), "{name} lists {id}");
            assert!(entry.versions.contains_key(version));
        }
    }
    s.search.check(s.files.iter());
    for (file, lease) in s.leases().canonical() {
        assert_eq!(file, lease.file);
        assert!(s.files.contains_key(file), "lease on unknown {file}");
        assert!(s.peers.contains_key(&lease.peer_id), "lease of a peer gone");
    }
    // A name is an orphan exactly while nobody holds it, listed at the time it became one.
    let orphans = s.files.values().filter(|f| f.holders.is_empty()).count();
    assert_eq!(s.orphan_count(), orphans);
    for (name, entry) in &s.files {
        match entry.orphaned_ms {
            Some(since) => assert!(s.orphans.contains(&(since, name.clone())), "{name}"),
            None => assert!(!entry.holders.is_empty(), "{name} unheld, not an orphan"),
        }
    }
    for (since, name) in &s.orphans {
        assert_eq!(s.files[name].orphaned_ms, Some(*since), "{name}");
    }
    // The search index lists exactly the held names (so never a forgotten one).
    s.search.check(s.files.iter());
}

#[test]
fn random_op_sequences_keep_the_invariants() {
    // A small deterministic generator: the same sequence on every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut s = IndexState::default();
    let peers = ["a", "bb", "ccc", "dddd"];
    let names = ["x", "y z", "Z.mp3", "w"];
    for step in 0..5_000u64 {
        let id = peers[next(4) as usize];
        let name = names[next(4) as usize];
        let file = meta(name, 1 + next(3), &format!("{name}{}", next(2)));
        let op = match next(9) {
            0 => register(id, vec![file]),
            1 => heartbeat(id, vec![file], vec![]),
            2 => heartbeat(id, vec![], vec![name]),
            3 => announce(id, file, Some(&format!("L{}", next(4)))),
            6 => lease(id, name, &format!("L{}", next(4)), next(20)),
            7 => Op::ReleaseLease(ReleaseLease {
                peer_id: id.into(),
                token_hash: hash_token(&format!("tok-{id}")),
                lease_id: format!("L{}", next(4)),
            }),
            4 => Op::Unregister(Unregister {
                peer_id: id.into(),
                token_hash: hash_token(&format!("tok-{id}")),
            }),
            5 => Op::Prune(Prune {
                peers: s.silent_peers(step, next(50)),
            }),
            8 if next(2) == 0 => Op::ForgetHistories(ForgetHistories {
                before_ms: step.saturating_sub(next(30)),
                max_names: 1 + next(3) as usize,
            }),
            _ => Op::ExpireLeases(ExpireLeases {
                lease_ids: s.leases().expired(step),
            }),
        };
        // Some requests come with tight limits: a cap of two names, a burst of one.
        let op = match (op, next(3)) {
            (Op::Register(r), 0) => Op::Register(Register { limits: TIGHT, ..r }),
            (Op::Heartbeat(h), 0) => Op::Heartbeat(Heartbeat { limits: TIGHT, ..h }),
            (Op::Announce(a), 0) => Op::Announce(Announce { limits: TIGHT, ..a }),
            (op, _) => op,
        };
        let before = s.seq();
        match s.apply(op, step) {
            Ok(_) => assert_eq!(s.seq(), before + 1),
            Err(_) => assert_eq!(s.seq(), before),
        }
        check_invariants(&s);
    }
    assert!(s.seq() > 1_000, "most ops should apply");
}

#[test]
fn replaying_the_same_ops_gives_the_same_digest() {
    let ops = vec![
        (
            register("a", vec![meta("x", 1, "1"), meta("y z", 1, "2")]),
            1,
        ),
        (register("b", vec![meta("x", 1, "1")]), 2),
        (lease("a", "x", "L1", 10), 3),
        (announce("a", meta("x", 2, "3"), Some("L1")), 3),
        (heartbeat("a", vec![], vec!["y z"]), 3),
        (
            Op::Prune(Prune {
                peers: vec!["b".into()],
            }),
            4,
        ),
    ];
    let mut one = IndexState::default();
    let mut two = IndexState::with_capacity(100, 100);
    for (op, now) in &ops {
        one.apply(op.clone(), *now).unwrap();
    }
    let mut digests = vec![];
    for (op, now) in ops {
        two.apply(op, now).unwrap();
        digests.push(two.digest());
    }
    assert_eq!(one.digest(), two.digest());
    digests.dedup();
    assert_eq!(digests.len(), 6, "every op changes the digest");
}

const TIGHT: Limits = Limits {
    max_files: Some(2),
    new_names: Some(Rate {
        per_minute: 60,
        burst: 1,
    }),
};

fn with_limits(op: Op, limits: Limits) -> Op {
    match op {
        Op::Register(r) => Op::Register(Register { limits, ..r }),
        Op::Heartbeat(h) => Op::Heartbeat(Heartbeat { limits, ..h }),
        Op::Announce(a) => Op::Announce(Announce { limits, ..a }),
        op => op,
    }
}

fn files(names: &[&str]) -> Vec<FileMeta> {
    names.iter().map(|n| meta(n, 1, n)).collect()
}

fn refused(outcome: Outcome) -> Vec<(String, Refused)> {
    let refusals = match outcome {
        Outcome::Registered(r) => r.refused,
        Outcome::HeartbeatAccepted(h) => h.refused,
        other => panic!("{other:?}"),
    };
    refusals.into_iter().map(|r| (r.name, r.why)).collect()
}

fn forget(before_ms: Millis, max_names: usize) -> Op {
    Op::ForgetHistories(ForgetHistories {
        before_ms,
        max_names,
    })
}

fn forgot(outcome: Outcome) -> HistoriesForgotten {
    match outcome {
        Outcome::HistoriesForgotten(f) => f,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_peer_holds_at_most_its_cap_and_names_it_holds_never_count_twice() {
    let cap = Limits {
        max_files: Some(3),
        new_names: None,
    };
    let mut s = IndexState::default();
    let out = s
        .apply(
            with_limits(register("a", files(&["1", "2", "3", "4", "5"])), cap),
            0,
        )
        .unwrap();
    let why = Refused::Limit(Limit::Files { max: 3 });
    assert_eq!(
        refused(out),
        vec![
            ("4".to_string(), why.clone()),
            ("5".to_string(), why.clone())
        ]
    );
    assert_eq!(s.peer("a").unwrap().files.len(), 3);
    assert!(s.file("4").is_none(), "a refused name leaves no history");
    // Registering the same list again changes nothing; a newer version of a name it
    // holds is no new name.
    let again = with_limits(register("a", files(&["1", "2", "3", "4"])), cap);
    assert_eq!(refused(s.apply(again, 1).unwrap()).len(), 1);
    s.apply(lease("a", "1", "L1", 100), 2).unwrap();
    s.apply(
        with_limits(announce("a", meta("1", 2, "new"), Some("L1")), cap),
        3,
    )
    .unwrap();
    // At the cap, an announce of another name is refused whole, and changes nothing.
    s.apply(register("b", files(&["6"])), 4).unwrap();
    let digest = s.digest();
    assert_eq!(
        s.apply(with_limits(announce("a", meta("6", 1, "6"), None), cap), 5),
        Err(StateError::Limit(Limit::Files { max: 3 }))
    );
    assert_eq!(s.digest(), digest);
    // A heartbeat's removals make room before its additions count.
    let swap = with_limits(heartbeat("a", files(&["4", "5"]), vec!["2", "3"]), cap);
    assert!(refused(s.apply(swap, 6).unwrap()).is_empty());
    let held: Vec<&str> = s
        .peer("a")
        .unwrap()
        .files
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(held, ["1", "4", "5"]);
    // Ops logged before limits existed, or replayed with none, are not limited.
    s.apply(heartbeat("a", files(&["7", "8"]), vec![]), 7)
        .unwrap();
    assert_eq!(s.peer("a").unwrap().files.len(), 5);
    check_invariants(&s);
}

#[test]
fn new_names_come_in_a_burst_then_at_the_rate_and_known_names_cost_nothing() {
    let rate = Limits {
        max_files: None,
        new_names: Some(Rate {
            per_minute: 60,
            burst: 2,
        }),
    };
    let mut s = IndexState::default();
    let out = s
        .apply(
            with_limits(register("a", files(&["1", "2", "3"])), rate),
            1_000,
        )
        .unwrap();
    let refusals = refused(out);
    assert_eq!(refusals.len(), 1);
    let (name, why) = &refusals[0];
    assert_eq!(name, "3");
    let Refused::Limit(limit) = why else {
        panic!("{why:?}")
    };
    assert_eq!(limit.retry_after_ms(), Some(1_000), "one a second");
    assert!(why.to_string().contains("again in 1.0 s"), "{why}");
    // Another peer's copies of known names draw nothing from its allowance, nor from a's.
    s.apply(with_limits(register("b", files(&["1", "2"])), rate), 1_000)
        .unwrap();
    assert_eq!(s.peer("b").unwrap().allowance, None, "b spent nothing");
    // 999 ms later still nothing for a; at 1 s, one more.
    let early = with_limits(heartbeat("a", files(&["3"]), vec![]), rate);
    assert_eq!(refused(s.apply(early, 1_999).unwrap()).len(), 1);
    let due = with_limits(heartbeat("a", files(&["3", "4"]), vec![]), rate);
    let refusals = refused(s.apply(due, 2_000).unwrap());
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].0, "4");
    // Announcing a new name draws on the same allowance; refused whole when it is spent.
    assert!(matches!(
        s.apply(
            with_limits(announce("a", meta("5", 1, "5"), None), rate),
            2_000
        ),
        Err(StateError::Limit(Limit::NewNames { .. }))
    ));
    // Two minutes on, the burst is back and the allowance is not kept at all.
    let later = with_limits(announce("a", meta("5", 1, "5"), None), rate);
    s.apply(later, 122_000).unwrap();
    assert!(s.peer("a").unwrap().allowance.is_some());
    let full = with_limits(heartbeat("a", vec![], vec!["5"]), rate);
    s.apply(full, 300_000).unwrap();
    check_invariants(&s);
}

#[test]
fn a_history_nobody_holds_is_forgotten_exactly_when_its_retention_is_over() {
    let mut s = IndexState::default();
    s.apply(register("a", files(&["old song.mp3", "kept"])), 10)
        .unwrap();
    s.apply(heartbeat("a", vec![], vec!["old song.mp3"]), 100)
        .unwrap();
    assert_eq!(s.file("old song.mp3").unwrap().orphaned_ms, Some(100));
    assert_eq!(s.oldest_orphan_ms(), Some(100));
    let out = forgot(s.apply(forget(99, 10), 200).unwrap());
    assert_eq!((out.names, out.more), (0, false), "one ms short");
    assert!(s.file("old song.mp3").is_some());
    let out = forgot(s.apply(forget(100, 10), 200).unwrap());
    assert_eq!((out.names, out.more), (1, false));
    // Forgotten entirely: no history, no search result (check_invariants: no token).
    assert!(s.file("old song.mp3").is_none());
    assert!(s.search("song", 10).is_empty());
    assert_eq!(s.orphan_count(), 0);
    assert_eq!(s.file_count(), 1, "the held name stays");
    check_invariants(&s);
    // Held again (by a peer that kept an old copy), the name starts a new history.
    s.apply(register("b", vec![meta("old song.mp3", 3, "v3")]), 300)
        .unwrap();
    assert_eq!(s.file("old song.mp3").unwrap().latest_version(), 3);
}

#[test]
fn while_a_history_is_kept_a_stale_copy_never_comes_back_as_latest() {
    let mut s = IndexState::default();
    s.apply(register("a", vec![meta("doc", 1, "v1")]), 0)
        .unwrap();
    s.apply(register("b", vec![meta("doc", 1, "v1")]), 0)
        .unwrap();
    s.apply(lease("b", "doc", "L", 100), 1).unwrap();
    s.apply(announce("b", meta("doc", 2, "v2"), Some("L")), 2)
        .unwrap();
    // Everyone leaves; the history is kept for its retention.
    for id in ["a", "b"] {
        s.apply(
            Op::Unregister(Unregister {
                peer_id: id.into(),
                token_hash: hash_token(&format!("tok-{id}")),
            }),
            10,
        )
        .unwrap();
    }
    assert_eq!(forgot(s.apply(forget(9, 10), 50).unwrap()).names, 0);
    // a comes back with its old copy: v2 is still the latest, and a is a stale holder.
    s.apply(register("a", vec![meta("doc", 1, "v1")]), 60)
        .unwrap();
    let found = &s.search("doc", 1)[0];
    assert_eq!(found.version, 2);
    assert!(found.holders.is_empty());
    assert_eq!(found.stale_holders[0].peer_id, "a");
    // Held again, the name is no orphan: a sweep long after its first orphaning keeps it,
    // and its time starts again when it is left again.
    assert_eq!(forgot(s.apply(forget(1_000, 10), 1_000).unwrap()).names, 0);
    s.apply(heartbeat("a", vec![], vec!["doc"]), 2_000).unwrap();
    assert_eq!(forgot(s.apply(forget(1_999, 10), 2_500).unwrap()).names, 0);
    assert_eq!(s.file("doc").unwrap().latest_version(), 2);
    check_invariants(&s);
}

#[test]
fn forgetting_is_bounded_per_op_and_spares_leased_names() {
    let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut s = IndexState::default();
    s.apply(register("a", files(&refs)), 0).unwrap();
    s.apply(register("b", vec![]), 0).unwrap();
    s.apply(heartbeat("a", vec![], refs.clone()), 10).unwrap();
    // b leases n0 without holding it: someone means to publish it.
    s.apply(lease("b", "n0", "L", 1_000), 20).unwrap();
    let out = forgot(s.apply(forget(10, 2), 30).unwrap());
    assert_eq!((out.names, out.kept, out.more), (1, 1, true));
    assert_eq!(
        s.file("n0").unwrap().orphaned_ms,
        Some(30),
        "its time starts again"
    );
    let out = forgot(s.apply(forget(10, 10), 40).unwrap());
    assert_eq!((out.names, out.kept, out.more), (3, 0, false));
    assert_eq!(s.file_count(), 1);
    check_invariants(&s);
    // Once its lease is gone, it goes a retention after it was spared.
    s.apply(
        Op::ReleaseLease(ReleaseLease {
            peer_id: "b".into(),
            token_hash: hash_token("tok-b"),
            lease_id: "L".into(),
        }),
        50,
    )
    .unwrap();
    assert_eq!(forgot(s.apply(forget(29, 10), 60).unwrap()).names, 0);
    assert_eq!(forgot(s.apply(forget(30, 10), 60).unwrap()).names, 1);
    assert_eq!(s.file_count(), 0);
    check_invariants(&s);
}

#[test]
fn limits_and_forgetting_replay_identically_through_the_log_and_a_snapshot() {
    let rate = Limits {
        max_files: Some(3),
        new_names: Some(Rate {
            per_minute: 6,
            burst: 2,
        }),
    };
    let ops: Vec<(Op, Millis)> = vec![
        (
            with_limits(register("a", files(&["x", "y z", "w"])), rate),
            1,
        ),
        (with_limits(register("b", files(&["x", "q"])), rate), 2),
        (
            with_limits(heartbeat("a", files(&["w", "v"]), vec!["x"]), rate),
            3,
        ),
        (
            Op::Prune(Prune {
                peers: vec!["b".into()],
            }),
            4,
        ),
        (forget(3, 1), 5),
        (
            with_limits(heartbeat("a", files(&["v"]), vec![]), rate),
            20_000,
        ),
        (forget(4, 10), 20_001),
    ];
    // As the journal carries them: JSON records with their `at`.
    let records: Vec<String> = ops
        .iter()
        .enumerate()
        .map(|(i, (op, at))| {
            serde_json::to_string(&AppliedOp {
                seq: i as u64 + 1,
                at: *at,
                op: op.clone(),
            })
            .unwrap()
        })
        .collect();
    let mut primary = IndexState::default();
    let mut digests = Vec::new();
    for (op, at) in ops {
        primary.apply(op, at).unwrap();
        digests.push(primary.digest());
    }
    check_invariants(&primary);
    assert!(primary.file("x").is_none() && primary.file("q").is_none());
    // w was refused twice (no allowance left), v at the second try.
    let held: Vec<&str> = primary
        .peer("a")
        .unwrap()
        .files
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(held, ["v", "y z"]);
    // A replay of the records, and a shadow that took a snapshot half-way, end equal.
    let mut replay = IndexState::default();
    let mut shadow = IndexState::default();
    for (i, record) in records.iter().enumerate() {
        let op: AppliedOp = serde_json::from_str(record).unwrap();
        replay.apply(op.op.clone(), op.at).unwrap();
        assert_eq!(replay.digest(), digests[i]);
        if i == 3 {
            let json = replay.snapshot_json().unwrap();
            shadow = IndexState::restore(serde_json::from_slice(&json).unwrap());
        } else if i > 3 {
            shadow.apply(op.op, op.at).unwrap();
            assert_eq!(shadow.digest(), digests[i]);
        }
    }
    check_invariants(&shadow);
}

#[test]
fn snapshots_and_records_from_before_limits_and_retention_still_read() {
    // Written by the index before this change: no `limits`, `orphaned_ms` or `allowance`.
    let sha = sha256_hex(b"1");
    let record = format!(
        r#"{{"seq":1,"at":5,"op":{{"op":"register","peer_id":"a","token_hash":"h","addr":"x:1","files":[{{"name":"f","version":1,"size":1,"sha256":"{sha}"}}]}}}}"#
    );
    let op: AppliedOp = serde_json::from_str(&record).unwrap();
    let Op::Register(r) = &op.op else {
        panic!("{op:?}")
    };
    assert_eq!(r.limits, Limits::NONE);
    let snapshot = format!(
        r#"{{"epoch":"e","seq":3,"peers":{{"a":{{"addr":"x:1","token_hash":"h","last_seen_ms":5,"files":["f"]}}}},
           "files":{{"f":{{"versions":{{"1":{{"size":1,"sha256":"{sha}","created_ms":5}}}},"holders":{{"a":1}}}},
                     "gone":{{"versions":{{"1":{{"size":1,"sha256":"{sha}","created_ms":7}},"2":{{"size":1,"sha256":"{sha}","created_ms":9}}}},"holders":{{}}}}}},
           "leases":[]}}"#
    );
    let s = IndexState::restore(serde_json::from_str(&snapshot).unwrap());
    assert_eq!(s.peer("a").unwrap().allowance, None);
    assert_eq!(s.file("f").unwrap().orphaned_ms, None);
    // An old orphan counts from its latest version's time.
    assert_eq!(s.file("gone").unwrap().orphaned_ms, Some(9));
    assert_eq!(s.oldest_orphan_ms(), Some(9));
    check_invariants(&s);
    // Written again, it reads back the same.
    let again = IndexState::restore(serde_json::from_slice(&s.snapshot_json().unwrap()).unwrap());
    assert_eq!(again.digest(), s.digest());
}
