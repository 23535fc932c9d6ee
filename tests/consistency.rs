//! Write leases and versions against a real index: one publisher at a time, no lost or
//! duplicated version, expiry, and the shell's `update` under a lease.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn lease_call(url: &str, path: &str, id: &Id, lease_id: &str) -> Answer {
    post(
        &format!("{url}{path}"),
        &json!({"peer_id": id.peer_id, "token": id.token, "lease_id": lease_id}).to_string(),
    )
}

fn announce(url: &str, id: &Id, file: &Value, lease_id: Option<&str>) -> Answer {
    let mut body = json!({"peer_id": id.peer_id, "token": id.token, "file": file["name"],
                          "version": file["version"], "size": file["size"],
                          "sha256": file["sha256"]});
    if let Some(l) = lease_id {
        body["lease_id"] = json!(l);
    }
    post(&format!("{url}/announce"), &body.to_string())
}

fn file_info(url: &str, name: &str) -> Value {
    let answer = get(&format!("{url}/file?name={name}"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

#[test]
fn two_peers_race_for_a_lease_and_exactly_one_wins() {
    let index = start_index(&[]);
    let url = index.url.as_str();
    let names: Vec<String> = (0..20).map(|n| format!("race-{n}.txt")).collect();
    let files = names.iter().map(|n| file_entry(n, 1, n)).collect();
    let a = Arc::new(identity(url, 9001, files));
    let b = Arc::new(identity(url, 9002, vec![]));
    for name in &names {
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<(String, Answer)> = [a.clone(), b.clone()]
            .into_iter()
            .map(|id| {
                let (barrier, url, name) = (barrier.clone(), url.to_string(), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (id.peer_id.clone(), lease(&url, &id, &name))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let winners: Vec<&(String, Answer)> =
            answers.iter().filter(|(_, a)| a.status == 200).collect();
        let losers: Vec<&(String, Answer)> =
            answers.iter().filter(|(_, a)| a.status != 200).collect();
        assert_eq!(winners.len(), 1, "{name}: {:?}", statuses(&answers));
        let (winner, granted) = winners[0];
        let granted = granted.json();
        assert_eq!(granted["file"], name.as_str());
        assert_eq!(granted["version"], 1);
        assert!(
            granted["lease_id"].as_str().unwrap().len() >= 32,
            "{granted}"
        );
        let (_, refused) = losers[0];
        assert_eq!(refused.status, 409, "{}", refused.body);
        let refused = refused.json();
        assert_eq!(refused["holder"], winner.as_str(), "{refused}");
        let remaining = refused["remaining_ms"].as_u64().unwrap();
        assert!(remaining > 0 && remaining <= 60_000, "{refused}");
        assert!(refused["error"].as_str().unwrap().contains(winner.as_str()));
    }
}

fn statuses(answers: &[(String, Answer)]) -> Vec<u16> {
    answers.iter().map(|(_, a)| a.status).collect()
}

/// 20 clients loop lease -> announce on one file. Every successful announce must be one
/// version of the history, in order, with the content that client published: nothing lost,
/// nothing published twice under one version.
#[test]
fn concurrent_publishers_never_lose_or_duplicate_a_version() {
    let index = start_index(&[]);
    let url = index.url.as_str();
    let ids: Vec<Arc<Id>> = (0..20)
        .map(|n| {
            let files = if n == 0 {
                vec![file_entry("shared.txt", 1, "v1")]
            } else {
                vec![]
            };
            Arc::new(identity(url, 9100 + n, files))
        })
        .collect();
    let run_for = Duration::from_secs(3);
    let barrier = Arc::new(Barrier::new(ids.len()));
    let threads: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let (id, barrier, url) = (id.clone(), barrier.clone(), url.to_string());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let mut published = Vec::new();
                let mut round = 0;
                while start.elapsed() < run_for {
                    round += 1;
                    let granted = lease(&url, &id, "shared.txt");
                    if granted.status != 200 {
                        assert_eq!(granted.status, 409, "{}", granted.body);
                        continue;
                    }
                    let granted = granted.json();
                    let next = granted["version"].as_u64().unwrap() + 1;
                    let file = file_entry("shared.txt", next, &format!("client {n} round {round}"));
                    let lease_id = granted["lease_id"].as_str().unwrap();
                    let answer = announce(&url, &id, &file, Some(lease_id));
                    assert_eq!(answer.status, 200, "{}", answer.body);
                    published.push((next, file["sha256"].as_str().unwrap().to_string()));
                }
                published
            })
        })
        .collect();
    let mut published: BTreeMap<u64, String> = BTreeMap::new();
    for t in threads {
        for (version, sha) in t.join().unwrap() {
            assert!(
                published.insert(version, sha).is_none(),
                "v{version} published twice"
            );
        }
    }
    assert!(published.len() >= 20, "only {} publishes", published.len());
    let info = file_info(url, "shared.txt");
    let history: BTreeMap<u64, String> = info["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected_latest = 1 + published.len() as u64;
    assert_eq!(
        history.keys().copied().collect::<Vec<_>>(),
        (1..=expected_latest).collect::<Vec<_>>(),
        "versions are gapless"
    );
    for (version, sha) in &published {
        assert_eq!(&history[version], sha, "v{version} has another content");
    }
    assert_eq!(search(url, "shared.txt")[0]["version"], expected_latest);
    assert!(info["lease"].is_null(), "every publish spent its lease");
}

#[test]
fn leases_are_guarded_and_an_expired_lease_cannot_publish() {
    let index = start_index(&["--lease-ttl", "1"]);
    let url = index.url.as_str();
    let a = identity(url, 9201, vec![file_entry("doc.txt", 1, "v1")]);
    let b = identity(url, 9202, vec![]);

    // Unknown files, hostile names, wrong tokens, other peers' leases.
    assert_eq!(lease(url, &a, "nothing.txt").status, 404);
    assert_eq!(lease(url, &a, "../doc.txt").status, 400);
    let thief = Id {
        peer_id: a.peer_id.clone(),
        token: "guess".into(),
    };
    assert_eq!(lease(url, &thief, "doc.txt").status, 401);
    let granted = lease(url, &a, "doc.txt");
    assert_eq!(granted.status, 200, "{}", granted.body);
    let lease_id = granted.json()["lease_id"].as_str().unwrap().to_string();
    assert_eq!(lease_call(url, "/lease/renew", &b, &lease_id).status, 403);
    assert_eq!(lease_call(url, "/lease/release", &b, &lease_id).status, 403);
    let stolen = announce(url, &b, &file_entry("doc.txt", 2, "b's"), Some(&lease_id));
    assert_eq!(stolen.status, 403, "{}", stolen.body);
    assert_eq!(lease_call(url, "/lease/renew", &a, "not-hex").status, 400);
    // No lease at all, or a version that skips one.
    let bare = announce(url, &a, &file_entry("doc.txt", 2, "a's"), None);
    assert_eq!(bare.status, 409, "{}", bare.body);
    assert!(bare.json()["error"].as_str().unwrap().contains("lease"));
    let skip = announce(url, &a, &file_entry("doc.txt", 3, "a's"), Some(&lease_id));
    assert_eq!(skip.status, 409, "{}", skip.body);
    assert_eq!(lease_call(url, "/lease/renew", &a, &lease_id).status, 200);

    // Let it run out: once the index shows no live lease, it is worthless.
    poll_until("the lease expires", || {
        file_info(url, "doc.txt")["lease"].is_null().then_some(())
    });
    let late = announce(url, &a, &file_entry("doc.txt", 2, "a's"), Some(&lease_id));
    assert_eq!(late.status, 409, "{}", late.body);
    let error = late.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("expired") || error.contains("unknown lease"),
        "{error}"
    );
    assert_eq!(lease_call(url, "/lease/renew", &a, &lease_id).status, 409);
    assert_eq!(file_info(url, "doc.txt")["versions"][0]["version"], 1);
    assert_eq!(
        file_info(url, "doc.txt")["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The file is free for the next peer; releasing frees it at once.
    let granted = lease(url, &b, "doc.txt");
    assert_eq!(granted.status, 200, "{}", granted.body);
    let lease_id = granted.json()["lease_id"].as_str().unwrap().to_string();
    let released = lease_call(url, "/lease/release", &b, &lease_id);
    assert_eq!(released.status, 200, "{}", released.body);
    assert_eq!(lease(url, &a, "doc.txt").status, 200);
}

#[test]
fn a_long_edit_keeps_its_lease_and_a_killed_editor_frees_the_file_after_the_ttl() {
    // A long peer timeout: the file must be freed by the lease's expiry, not by pruning.
    let index = start_index(&["--lease-ttl", "3", "--peer-timeout", "120"]);
    let url = index.url.as_str();
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("doc.txt"), b"v1\n").unwrap();
    let tools = tempfile::tempdir().unwrap();
    let release = tools.path().join("release");
    let _release = ReleaseOnDrop(release.clone());
    let mut pa = start_editing_peer(a.path(), url, &waiting_editor(tools.path(), &release), &[]);
    pa.proc.send("update doc.txt");
    pa.proc.wait_stdout("editor open on");
    let holder = poll_until("the index shows the lease", || {
        file_info(url, "doc.txt")["lease"]["holder"]
            .as_str()
            .map(String::from)
    });

    // For over two TTLs the lease stays with the editing peer: it is being renewed.
    let b = identity(url, 9301, vec![]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        let answer = lease(url, &b, "doc.txt");
        assert_eq!(answer.status, 409, "{}", answer.body);
        assert_eq!(answer.json()["holder"], holder.as_str());
        std::thread::sleep(Duration::from_millis(200));
    }

    // The editing peer dies: no more renewals, and after the TTL the file is free.
    pa.proc.kill();
    let granted = poll_until("another peer gets the lease", || {
        let answer = lease(url, &b, "doc.txt");
        (answer.status == 200).then_some(answer.json())
    });
    assert_eq!(granted["version"], 1, "nothing was published: {granted}");
}

#[test]
fn update_publishes_under_a_lease_and_stale_holders_catch_up() {
    let index = start_index(&[]);
    let url = index.url.as_str();
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("doc.txt"), b"first draft\n").unwrap();
    let pa = start_peer(a.path(), url, true, &[]);
    let tools = tempfile::tempdir().unwrap();
    let editor = appending_editor(tools.path(), "second thoughts");

    // c does not hold doc.txt: update fetches v1, then publishes v2.
    let c = tempfile::tempdir().unwrap();
    let mut pc = start_editing_peer(c.path(), url, &editor, &[]);
    let line = pc.proc.command("update doc.txt", "Published");
    assert!(line.contains("doc.txt v2"), "{line}");
    let transcript = pc.proc.transcript();
    assert!(transcript.contains("Fetched doc.txt v1"), "{transcript}");
    let updated = b"first draft\nsecond thoughts\n";
    assert_eq!(fs::read(c.path().join("doc.txt")).unwrap(), updated);
    let results = search(url, "doc.txt");
    assert_eq!(results[0]["version"], 2);
    assert_eq!(results[0]["sha256"], sha256_hex(updated));
    // The lease was spent by the publish: the file is free at once.
    assert!(file_info(url, "doc.txt")["lease"].is_null());

    // a held v1: its heartbeat answer tells it to fetch v2, which it does, verified.
    poll_until("the stale holder fetches v2", || {
        (fs::read(a.path().join("doc.txt")).ok()? == updated).then_some(())
    });
    poll_until("both holders are listed at v2", || {
        let r = search(url, "doc.txt").into_iter().next()?;
        (r["holders"].as_array()?.len() == 2 && r["stale_holders"].as_array()?.is_empty())
            .then_some(())
    });
    let _ = pa;

    // Another peer now gets v2, verified.
    let d = tempfile::tempdir().unwrap();
    let mut pd = start_editing_peer(d.path(), url, "true", &[]);
    let line = pd.proc.command("get doc.txt", "doc.txt");
    assert!(line.starts_with("Downloaded doc.txt v2"), "{line}");
    assert_eq!(fs::read(d.path().join("doc.txt")).unwrap(), updated);
    // An edit that changes nothing gives the lease back and publishes nothing.
    let line = pd.proc.command("update doc.txt", "unchanged");
    assert!(line.contains("lease released"), "{line}");
    assert!(file_info(url, "doc.txt")["lease"].is_null());
    assert_eq!(search(url, "doc.txt")[0]["version"], 2);
    let line = pd.proc.command("update nothing.txt", "nothing.txt");
    assert!(line.contains("not on the index"), "{line}");
    let line = pd.proc.command("update ../doc.txt", "doc.txt");
    assert!(line.contains("not a valid file name"), "{line}");
}

#[test]
fn update_tells_who_is_editing_and_keeps_an_edit_whose_lease_was_lost() {
    let index = start_index(&["--lease-ttl", "1"]);
    let url = &index.url.clone();
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("doc.txt"), b"v1\n").unwrap();
    let tools = tempfile::tempdir().unwrap();
    let release = tools.path().join("release");
    let _release = ReleaseOnDrop(release.clone());
    let mut pa = start_editing_peer(a.path(), url, &waiting_editor(tools.path(), &release), &[]);

    // Someone else holds the lease: update says who, and for how long.
    let other = identity(url, 9401, vec![]);
    let granted = lease(url, &other, "doc.txt");
    assert_eq!(granted.status, 200, "{}", granted.body);
    let line = pa.proc.command("update doc.txt", "doc.txt");
    assert!(
        line.contains(&other.peer_id) && line.contains("editing"),
        "{line}"
    );
    let lease_id = granted.json()["lease_id"].as_str().unwrap().to_string();
    assert_eq!(
        lease_call(url, "/lease/release", &other, &lease_id).status,
        200
    );

    // Now a's edit starts; the index goes away while the editor is open, so the lease
    // cannot be renewed and runs out.
    pa.proc.send("update doc.txt");
    pa.proc.wait_stdout("editor open on");
    drop(index);
    pa.proc.wait_stderr(|l| l.contains("lost"));
    fs::write(&release, b"").unwrap();
    let line = pa.proc.wait_stdout("NOT published");
    assert!(line.contains("lease"), "{line}");
    let kept_line = pa.proc.wait_stdout("your edit is kept at");
    let kept = kept_line.rsplit(' ').next().unwrap();
    assert_eq!(fs::read(kept).unwrap(), b"v1\nedited\n");
    // The shared copy is still the published v1.
    assert_eq!(fs::read(a.path().join("doc.txt")).unwrap(), b"v1\n");
}

#[test]
fn a_conflicting_copy_is_refused_and_the_shell_says_so() {
    let index = start_index(&[]);
    let url = index.url.as_str();
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("doc.txt"), b"the original\n").unwrap();
    let _pa = start_peer(a.path(), url, true, &[]);
    let b = tempfile::tempdir().unwrap();
    fs::write(b.path().join("doc.txt"), b"something else\n").unwrap();
    let mut pb = start_peer(b.path(), url, false, &[]);
    let line = pb.proc.command("status", "refused doc.txt");
    assert!(line.contains("already exists with other content"), "{line}");
    let results = search(url, "doc.txt");
    assert_eq!(results[0]["sha256"], sha256_hex(b"the original\n"));
    assert_eq!(results[0]["holders"].as_array().unwrap().len(), 1);
    assert_eq!(
        fs::read(b.path().join("doc.txt")).unwrap(),
        b"something else\n"
    );
}

/// A peer whose copy of doc.txt was edited outside `update` (so the index refused it), with
/// an editor that appends a line. `other_holder` adds a second peer holding v1.
fn unleased_edit_then_update(other_holder: bool) -> (String, Vec<u8>, Vec<u8>) {
    let index = start_index(&[]);
    let url = index.url.as_str();
    let b = tempfile::tempdir().unwrap();
    let _pb = other_holder.then(|| {
        fs::write(b.path().join("doc.txt"), b"v1\n").unwrap();
        start_peer(b.path(), url, true, &[])
    });
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("doc.txt"), b"v1\n").unwrap();
    let tools = tempfile::tempdir().unwrap();
    let editor = appending_editor(tools.path(), "via update");
    let mut pa = start_editing_peer(a.path(), url, &editor, &["--rescan-interval", "0.2"]);
    fs::write(a.path().join("doc.txt"), b"v1\nbehind its back\n").unwrap();
    pa.proc.wait_stderr(|l| l.contains("refused doc.txt"));
    let line = pa.proc.command("update doc.txt", "Published");
    assert!(line.contains("doc.txt v2"), "{line}");
    let transcript = pa.proc.transcript();
    let kept = transcript
        .lines()
        .find_map(|l| l.split("it is kept at ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no kept path in:\n{transcript}"));
    let kept = fs::read(kept).unwrap();
    let published = fs::read(a.path().join("doc.txt")).unwrap();
    let r = search(url, "doc.txt");
    assert_eq!(r[0]["version"], 2);
    assert_eq!(r[0]["sha256"], sha256_hex(&published));
    // The peer stays listed as a holder of v2 through later heartbeats (no stale removal
    // queued by the set-aside may undo the publish).
    let a_addr = pa.addr.clone();
    let seen = Instant::now();
    while seen.elapsed() < Duration::from_secs(1) {
        let holders = holders(url, "doc.txt");
        assert!(holders.contains(&a_addr), "{holders:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (transcript, kept, published)
}

#[test]
fn update_after_an_unleased_local_edit_keeps_that_copy_and_starts_from_the_latest() {
    let (transcript, kept, published) = unleased_edit_then_update(true);
    assert_eq!(kept, b"v1\nbehind its back\n");
    assert!(transcript.contains("Fetched doc.txt v1"), "{transcript}");
    assert_eq!(published, b"v1\nvia update\n");
}

#[test]
fn update_starts_from_the_local_copy_when_no_peer_holds_the_latest() {
    let (transcript, kept, published) = unleased_edit_then_update(false);
    assert_eq!(kept, b"v1\nbehind its back\n");
    assert!(transcript.contains("starts from your copy"), "{transcript}");
    assert_eq!(published, b"v1\nbehind its back\nvia update\n");
}

#[test]
fn update_of_a_file_no_one_online_holds_says_so_and_gives_the_lease_back() {
    let index = start_index(&[]);
    let url = index.url.as_str();
    let gone = identity(url, 9501, vec![file_entry("orphan.txt", 1, "only copy")]);
    let left = post(
        &format!("{url}/unregister"),
        &json!({"peer_id": gone.peer_id, "token": gone.token}).to_string(),
    );
    assert_eq!(left.status, 200, "{}", left.body);
    let a = tempfile::tempdir().unwrap();
    let mut pa = start_editing_peer(a.path(), url, "true", &[]);
    let line = pa.proc.command("update orphan.txt", "orphan.txt");
    assert!(
        line.contains("no peer online holds orphan.txt v1"),
        "{line}"
    );
    assert!(file_info(url, "orphan.txt")["lease"].is_null());
    assert!(!a.path().join("orphan.txt").exists());
}
