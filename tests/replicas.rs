//! Automated replication with real processes: the index keeps every file at R verified copies
//! through joins and crashes, handing tasks to peers inside their (long-polled) heartbeats.

mod common;

use std::fs;
use std::sync::atomic::Ordering;

use common::*;
use serde_json::{json, Value};

fn status(url: &str) -> Value {
    get(&format!("{url}/status")).json()
}

/// The addresses holding `name`'s latest version, once there are exactly `n`.
fn wait_holders(url: &str, name: &str, n: usize) -> Vec<String> {
    poll_until(&format!("{name} has {n} up-to-date holders"), || {
        let listed = holders(url, name);
        (listed.len() == n).then_some(listed)
    })
}

fn replicating_index(r: &str, extra: &[&str]) -> IndexProc {
    let mut args = vec!["--replication-factor", r, "--plan-interval", "0.5"];
    args.extend_from_slice(extra);
    start_index(&args)
}

#[test]
fn a_new_file_gets_a_verified_second_copy() {
    let index = replicating_index("2", &[]);
    let url = index.url.as_str();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let peers: Vec<PeerProc> = dirs
        .iter()
        .map(|d| start_peer(d.path(), url, true, &["--rescan-interval", "0.2"]))
        .collect();
    let content = b"worth keeping twice\n".repeat(100);
    fs::write(dirs[0].path().join("precious.txt"), &content).unwrap();
    let listed = wait_holders(url, "precious.txt", 2);
    assert!(listed.contains(&peers[0].addr), "{listed:?}");
    let copy = peers
        .iter()
        .zip(&dirs)
        .find(|(p, _)| p.addr != peers[0].addr && listed.contains(&p.addr))
        .map(|(_, d)| d.path().join("precious.txt"))
        .unwrap();
    assert_eq!(fs::read(copy).unwrap(), content);
    poll_until("the copy task is done on the books", || {
        let s = status(url);
        (s["tasks_in_flight"] == 0 && s["under_replicated"] == 0).then_some(())
    });
    // R is a target, not a floor to overshoot: the third peer does not get it too.
    assert_eq!(holders(url, "precious.txt").len(), 2);
    // One copy planned and done, as /metrics counts them.
    let metrics = get(&format!("{url}/metrics")).body;
    for line in [
        "nap_tasks_planned_total 1\n",
        "nap_tasks_completed_total 1\n",
        "nap_tasks_failed_total 0\n",
        "nap_tasks_in_flight 0\n",
        "nap_under_replicated_files 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
}

#[test]
fn a_killed_holder_is_replaced_from_the_remaining_copy() {
    let index = replicating_index("2", &["--peer-timeout", "1.5"]);
    let url = index.url.as_str();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    fs::write(dirs[0].path().join("doc.txt"), b"survives\n").unwrap();
    let mut peers: Vec<PeerProc> = dirs
        .iter()
        .map(|d| start_peer(d.path(), url, true, &[]))
        .collect();
    let first = wait_holders(url, "doc.txt", 2);
    // Kill the copy's holder (not the origin): the origin must seed a new copy.
    let victim = peers
        .iter()
        .position(|p| p.addr != peers[0].addr && first.contains(&p.addr))
        .unwrap();
    let victim_addr = peers[victim].addr.clone();
    peers[victim].proc.kill();
    let again = poll_until("R restored without the killed peer", || {
        let listed = holders(url, "doc.txt");
        (listed.len() == 2 && !listed.contains(&victim_addr)).then_some(listed)
    });
    let spare = (0..3).find(|i| *i != 0 && *i != victim).unwrap();
    assert!(again.contains(&peers[spare].addr), "{again:?}");
    assert_eq!(
        fs::read(dirs[spare].path().join("doc.txt")).unwrap(),
        b"survives\n"
    );
}

#[test]
fn too_few_peers_is_reported_and_a_joining_peer_gets_the_copy() {
    let index = replicating_index("3", &[]);
    let url = index.url.as_str();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    fs::write(a.path().join("doc.txt"), b"three copies wanted\n").unwrap();
    let _pa = start_peer(a.path(), url, true, &[]);
    let _pb = start_peer(b.path(), url, true, &[]);
    wait_holders(url, "doc.txt", 2);
    let s = poll_until("doc.txt is reported under-replicated", || {
        let s = status(url);
        (s["under_replicated"] == 1 && s["tasks_in_flight"] == 0).then_some(s)
    });
    assert_eq!(s["replication_factor"], 3);
    assert_eq!(s["under_replicated_files"][0]["name"], "doc.txt");
    assert_eq!(s["under_replicated_files"][0]["holders"], 2);

    let c = tempfile::tempdir().unwrap();
    let pc = start_peer(c.path(), url, true, &[]);
    let listed = wait_holders(url, "doc.txt", 3);
    assert!(listed.contains(&pc.addr));
    assert_eq!(
        fs::read(c.path().join("doc.txt")).unwrap(),
        b"three copies wanted\n"
    );
    poll_until("nothing is under-replicated", || {
        (status(url)["under_replicated"] == 0).then_some(())
    });
}

#[test]
fn a_corrupt_source_is_skipped_and_never_copied() {
    let index = replicating_index("3", &["--peer-timeout", "60"]);
    let url = index.url.as_str();
    let content = b"the real bytes ".repeat(2000);
    let sha = sha256_hex(&content);
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("data.bin"), &content).unwrap();
    let pa = start_peer(a.path(), url, true, &[]);
    // A holder serving other bytes of the same length; its id sorts first among sources.
    let (evil_addr, served) = corrupt_server(content.len());
    let evil = json!({
        "addr": evil_addr, "peer_id": "0-corrupt", "token": "evil-token",
        "files": [{"name": "data.bin", "version": 1, "size": content.len(), "sha256": sha}],
    });
    assert_eq!(
        post(&format!("{url}/register"), &evil.to_string()).status,
        200
    );
    // The new peer gets the copy task with both sources and ends with the real bytes.
    let b = tempfile::tempdir().unwrap();
    let pb = start_peer(b.path(), url, true, &[]);
    let listed = wait_holders(url, "data.bin", 3);
    assert!(listed.contains(&pb.addr) && listed.contains(&pa.addr));
    assert_eq!(fs::read(b.path().join("data.bin")).unwrap(), content);
    assert!(
        served.load(Ordering::SeqCst) >= 1,
        "the corrupt source was tried"
    );
    pb.proc
        .wait_stderr(|l| l.contains(&evil_addr) && l.contains("bad content"));
}

#[test]
fn a_copy_with_only_corrupt_sources_fails_and_nothing_is_announced() {
    let index = replicating_index("2", &["--peer-timeout", "60"]);
    let url = index.url.as_str();
    let content = b"nobody has the real bytes".to_vec();
    let (evil_addr, served) = corrupt_server(content.len());
    let evil = json!({
        "addr": evil_addr, "peer_id": "0-corrupt", "token": "evil-token",
        "files": [{"name": "fake.bin", "version": 1, "size": content.len(),
                   "sha256": sha256_hex(&content)}],
    });
    assert_eq!(
        post(&format!("{url}/register"), &evil.to_string()).status,
        200
    );
    let b = tempfile::tempdir().unwrap();
    let pb = start_peer(b.path(), url, true, &[]);
    // The copy is tried, fails verification, and the failure is reported to the index.
    pb.proc
        .wait_stderr(|l| l.contains("copy:fake.bin") && l.contains("failed"));
    poll_until("the index took the task back", || {
        (status(url)["tasks_in_flight"] == 0).then_some(())
    });
    assert!(served.load(Ordering::SeqCst) >= 1);
    assert!(!b.path().join("fake.bin").exists());
    assert_eq!(holders(url, "fake.bin"), vec![evil_addr]);
    index
        .proc
        .wait_stderr(|l| l.contains("failed task copy:fake.bin"));
}
