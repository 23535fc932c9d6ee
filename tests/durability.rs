//! Durability with real processes: an index killed with SIGKILL and started again on its data
//! directory has every write it acknowledged, keeps its leases, does not prune its peers for
//! its own absence, and refuses a damaged log instead of losing part of it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn versions(url: &str, name: &str) -> BTreeMap<u64, String> {
    let info = get(&format!("{url}/file?name={name}")).json();
    info["versions"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn start_on(port: u16, dir: &std::path::Path, extra: &[&str]) -> IndexProc {
    let mut args = vec!["--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_index_on(&format!("127.0.0.1:{port}"), &args)
}

/// 20 clients publish as fast as they can; the index is killed mid-stream and started again
/// on its directory: every publish that was answered 200 is there, with its content, and the
/// history has no gap.
#[test]
fn a_killed_index_keeps_every_acknowledged_write() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut index = start_on(port, data.path(), &[]);
    let url = index.url.clone();
    let ids: Vec<Arc<Id>> = (0..20)
        .map(|n| {
            let files = if n == 0 {
                vec![file_entry("log.txt", 1, "v1")]
            } else {
                vec![]
            };
            Arc::new(identity(&url, 9100 + n, files))
        })
        .collect();
    let barrier = Arc::new(Barrier::new(ids.len() + 1));
    let threads: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let (id, barrier, url) = (id.clone(), barrier.clone(), url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut acked = Vec::new();
                let started = Instant::now();
                // Until the index is gone (or a deadline, should the kill never come).
                while started.elapsed() < DEADLINE {
                    let Some(granted) = try_post(
                        &format!("{url}/lease"),
                        &json!({
                        "peer_id": id.peer_id, "token": id.token, "file": "log.txt"}),
                    ) else {
                        break;
                    };
                    if granted.0 != 200 {
                        continue;
                    }
                    let next = granted.1["version"].as_u64().unwrap() + 1;
                    let content = format!("client {n} v{next}");
                    let f = file_entry("log.txt", next, &content);
                    let Some(answer) = try_post(
                        &format!("{url}/announce"),
                        &json!({
                        "peer_id": id.peer_id, "token": id.token, "file": "log.txt",
                        "version": next, "size": f["size"], "sha256": f["sha256"],
                        "lease_id": granted.1["lease_id"]}),
                    ) else {
                        break;
                    };
                    if answer.0 == 200 {
                        acked.push((next, f["sha256"].as_str().unwrap().to_string()));
                    }
                }
                acked
            })
        })
        .collect();
    barrier.wait();
    poll_until("a good number of publishes", || {
        (versions(&url, "log.txt").len() > 100).then_some(())
    });
    index.proc.kill();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for t in threads {
        for (version, sha) in t.join().unwrap() {
            assert!(
                acked.insert(version, sha).is_none(),
                "v{version} acked twice"
            );
        }
    }
    // Over 100 publishes were in the history; only the answers in flight at the kill are lost.
    assert!(acked.len() >= 50, "only {} acknowledged", acked.len());

    let index = start_on(port, data.path(), &[]);
    let history = versions(&index.url, "log.txt");
    for (version, sha) in &acked {
        assert_eq!(
            history.get(version),
            Some(sha),
            "acknowledged v{version} lost"
        );
    }
    let expected: Vec<u64> = (1..=*history.keys().last().unwrap()).collect();
    assert_eq!(
        history.keys().copied().collect::<Vec<_>>(),
        expected,
        "gapless"
    );
    index.proc.wait_stderr(|l| l.contains("loaded the index"));
}

/// POSTs `body`; `None` when the index does not answer (it was killed).
fn try_post(url: &str, body: &Value) -> Option<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_recv_response(Some(Duration::from_secs(5)))
        .build()
        .into();
    let response = agent
        .post(url)
        .header("Connection", "close")
        .send_json(body)
        .ok()?;
    let status = response.status().as_u16();
    let value = response.into_body().read_json().unwrap_or(Value::Null);
    Some((status, value))
}

#[test]
fn leases_and_peers_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut index = start_on(port, data.path(), &["--peer-timeout", "2"]);
    let url = index.url.clone();
    let a = identity(&url, 9201, vec![file_entry("doc.txt", 1, "v1")]);
    let b = identity(&url, 9202, vec![]);
    let granted = lease(&url, &a, "doc.txt");
    assert_eq!(granted.status, 200);
    index.proc.kill();
    // Down for longer than the peer timeout.
    std::thread::sleep(Duration::from_millis(2_500));
    let index = start_on(port, data.path(), &["--peer-timeout", "2"]);
    // The peers were not pruned for the index's own absence...
    assert_eq!(
        holders(&index.url, "doc.txt"),
        vec!["127.0.0.1:9201".to_string()]
    );
    // ...and the lease still holds.
    let refused = lease(&index.url, &b, "doc.txt");
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.json()["holder"], a.peer_id.as_str());
    // A peer that does not come back within the timeout is pruned as usual.
    poll_until("the silent peers are pruned", || {
        holders(&index.url, "doc.txt").is_empty().then_some(())
    });
}

#[test]
fn a_damaged_log_is_refused_with_its_offset_and_a_torn_tail_is_cut() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut index = start_on(port, data.path(), &[]);
    for n in 0..5 {
        identity(
            &index.url,
            9300 + n,
            vec![file_entry(&format!("f{n}"), 1, "x")],
        );
    }
    index.proc.kill();
    let segment = fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nap"))
        .find(|p| fs::metadata(p).unwrap().len() > 0)
        .unwrap();

    // Half a record at the end, as a crash mid-write leaves it: cut off, the rest is there.
    let mut bytes = fs::read(&segment).unwrap();
    let good = bytes.clone();
    bytes.extend_from_slice(&[99, 0, 0, 0, 7, 7]);
    fs::write(&segment, &bytes).unwrap();
    let mut index = start_on(port, data.path(), &[]);
    assert_eq!(get(&format!("{}/status", index.url)).json()["peers"], 5);
    index.proc.wait_stderr(|l| l.contains("torn record"));
    index.proc.kill();

    // A flipped byte in the first record, with more after it: the index will not start.
    let mut bytes = good;
    bytes[20] ^= 0xff;
    fs::write(&segment, &bytes).unwrap();
    let mut proc = Proc::spawn(
        "damaged index",
        index_bin(),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(!proc.wait_exit().success());
    let name = segment.file_name().unwrap().to_str().unwrap().to_string();
    proc.wait_stderr(|l| l.contains("offset 0") && l.contains(&name));
}

/// SIGTERM (and SIGINT) stop the index cleanly: it exits 0 after writing and syncing its log,
/// so even with `--fsync never` every answered publish is there after a restart.
#[test]
fn a_terminated_index_stops_cleanly_and_keeps_its_log() {
    let data = tempfile::tempdir().unwrap();
    for signal in ["TERM", "INT"] {
        let port = free_port();
        let mut index = start_on(port, data.path(), &["--fsync", "never"]);
        let url = index.url.clone();
        let file = format!("{signal}.txt");
        let a = identity(&url, 9301, vec![file_entry(&file, 1, "v1")]);
        for v in 2..=20u64 {
            let granted = lease(&url, &a, &file);
            assert_eq!(granted.status, 200, "{:?}", granted.json());
            let f = file_entry(&file, v, &format!("v{v}"));
            let answer = post(
                &format!("{url}/announce"),
                &json!({"peer_id": a.peer_id, "token": a.token, "file": file, "version": v,
                        "size": f["size"], "sha256": f["sha256"],
                        "lease_id": granted.json()["lease_id"]})
                .to_string(),
            );
            assert_eq!(answer.status, 200);
        }
        index.proc.signal(signal);
        let status = index.proc.wait_exit();
        assert!(status.success(), "SIG{signal}: {status}");
        index
            .proc
            .wait_stderr(|line| line.contains("op log written and synced"));

        let index = start_on(port, data.path(), &[]);
        assert_eq!(versions(&index.url, &file).len(), 20, "SIG{signal}");
    }
}
