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
    })
}

fn announce(id: &str, file: FileMeta, lease_id: Option<&str>) -> Op {
    Op::Announce(Announce {
        peer_id: id.into(),
        token_hash: hash_token(&format!("tok-{id}")),
        file,
        lease_id: lease_id.map(String::from),
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
        assert_eq!(entry.versions[&file.version].sha256, file.sha256);
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
            _ => Op::ExpireLeases(ExpireLeases {
                lease_ids: s.leases().expired(step),
            }),
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
