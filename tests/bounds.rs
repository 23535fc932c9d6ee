//! What one peer may hold and what the index keeps of names nobody holds, against the real
//! binary: files past `--max-files-per-peer` or brought too fast (`--new-names-burst`,
//! `--new-names-per-minute`) are refused one by one with a code and what to do, an announce
//! over a limit is refused whole (429 with `Retry-After` when waiting helps); the history of
//! a name nobody holds is forgotten after `--history-retention`, on the shadow too, and stays
//! forgotten across a restart.

mod common;

use common::*;
use serde_json::{json, Value};

fn register(url: &str, files: Vec<Value>) -> Value {
    let answer = post(
        &format!("{url}/register"),
        &json!({"addr": "127.0.0.1:9300", "files": files}).to_string(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

fn heartbeat(url: &str, peer: &Value, added: Vec<Value>, removed: &[&str]) -> Value {
    let answer = post(
        &format!("{url}/heartbeat"),
        &json!({"peer_id": peer["peer_id"], "token": peer["token"], "added": added,
                "removed": removed})
        .to_string(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// An announce of v1 of `name` as `peer`: status, `Retry-After` and body.
fn announce(url: &str, peer: &Value, name: &str) -> (u16, Option<String>, Value) {
    let body = json!({"peer_id": peer["peer_id"], "token": peer["token"], "file": name,
        "version": 1, "size": name.len(), "sha256": sha256_hex(name.as_bytes())});
    let response = agent()
        .post(&format!("{url}/announce"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("the index answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let text = response.into_body().read_to_string().expect("a body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, retry_after, value)
}

fn files(names: &[&str]) -> Vec<Value> {
    names.iter().map(|n| file_entry(n, 1, n)).collect()
}

fn status(url: &str) -> Value {
    get(&format!("{url}/status")).json()
}

#[test]
fn files_past_a_peers_cap_are_refused_one_by_one_and_an_announce_whole() {
    // (The burst of new names follows the cap unless told otherwise: raised out of the way.)
    let index = start_index(&["--max-files-per-peer", "3", "--new-names-burst", "100"]);
    let url = index.url.clone();
    let peer = register(&url, files(&["a", "b", "c", "d", "e"]));
    let rejected = peer["rejected"].as_array().unwrap();
    let names: Vec<&str> = rejected
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["d", "e"],
        "the list is taken in order up to the cap"
    );
    for r in rejected {
        assert_eq!(r["code"], "too_many_files", "{r}");
        assert_eq!(r["status"], 409, "{r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("--max-files-per-peer") && reason.contains("share fewer files"),
            "{reason}"
        );
    }
    assert_eq!(status(&url)["files"], 3);
    // Another name by announce: refused whole, with the same code.
    let (code, retry_after, body) = announce(&url, &peer, "f");
    assert_eq!((code, body["code"].as_str()), (409, Some("too_many_files")));
    assert_eq!(retry_after, None, "waiting does not help");
    // Making room first works; the rest of the list still counts.
    let answer = heartbeat(&url, &peer, files(&["d", "e"]), &["a"]);
    let refused: Vec<(&str, &str)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(refused, [("e", "too_many_files")]);
    assert_eq!(holders(&url, "d").len(), 1);
}

#[test]
fn new_names_past_the_burst_are_refused_until_the_rate_allows_them() {
    let index = start_index(&["--new-names-burst", "2", "--new-names-per-minute", "60"]);
    let url = index.url.clone();
    let peer = register(&url, files(&["one", "two", "three"]));
    let rejected = peer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let r = &rejected[0];
    assert_eq!(
        (r["name"].as_str(), r["code"].as_str(), r["status"].as_u64()),
        (Some("three"), Some("rate_limited"), Some(429))
    );
    let wait = r["retry_after_ms"].as_u64().unwrap();
    assert!((1..=1_000).contains(&wait), "{r}");
    assert!(r["reason"].as_str().unwrap().contains("again in"), "{r}");
    // Names the index knows cost nothing: a second peer copies them at once.
    let other = register(&url, files(&["one", "two"]));
    assert!(other["rejected"].as_array().unwrap().is_empty());
    // An announce of a new name is refused whole, with when to try again.
    let (code, retry_after, body) = announce(&url, &peer, "four");
    if code == 429 {
        assert_eq!(body["code"], "rate_limited", "{body}");
        assert_eq!(
            retry_after.as_deref(),
            Some("1"),
            "whole seconds, rounded up"
        );
        assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
    } else {
        // The machine was slow enough for a name's worth of allowance to come back.
        assert_eq!(code, 200, "{body}");
    }
    // Reported again later, the refused file is taken.
    poll_until("the refused name is taken", || {
        let answer = heartbeat(&url, &peer, files(&["three"]), &[]);
        answer["rejected"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    assert_eq!(holders(&url, "three").len(), 1);
}

#[test]
fn a_history_nobody_holds_is_forgotten_after_the_retention_on_the_shadow_too() {
    let retention = ["--history-retention", "2"];
    let (primary, shadow, _) = start_pair(&retention, &[]);
    let url = primary.url.clone();
    let peer = register(&url, files(&["Old Song.mp3", "kept.txt"]));
    let left = heartbeat(&url, &peer, Vec::new(), &["Old Song.mp3"]);
    assert!(left["rejected"].as_array().unwrap().is_empty());
    let found = status(&url);
    assert_eq!(
        (found["files"].as_u64(), found["histories"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(found["history_retention_ms"], 2_000);
    assert_eq!(get(&format!("{url}/file?name=Old%20Song.mp3")).status, 200);
    poll_until("the history is forgotten", || {
        (status(&url)["histories"] == 1).then_some(())
    });
    for index in [&url, &shadow.url] {
        poll_until("the shadow has forgotten it too", || {
            (get(&format!("{index}/file?name=Old%20Song.mp3")).status == 404).then_some(())
        });
        assert!(search(index, "song").is_empty());
        assert_eq!(search(index, "kept").len(), 1, "the held name stays");
    }
    // The name is new again: any version starts its history.
    let again = register(&url, vec![file_entry("Old Song.mp3", 4, "v4")]);
    assert!(again["rejected"].as_array().unwrap().is_empty());
    assert_eq!(search(&url, "Old Song.mp3")[0]["version"], 4);
}

#[test]
fn a_forgotten_history_stays_forgotten_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir = data.path().to_str().unwrap();
    let flags = ["--data-dir", dir, "--history-retention", "1"];
    let mut index = start_index_on(&format!("127.0.0.1:{port}"), &flags);
    let url = index.url.clone();
    let names: Vec<String> = (0..50).map(|i| format!("track {i}.mp3")).collect();
    let list: Vec<&str> = names.iter().map(String::as_str).collect();
    let peer = register(&url, files(&list));
    let answer = post(
        &format!("{url}/unregister"),
        &json!({"peer_id": peer["peer_id"], "token": peer["token"]}).to_string(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    poll_until("the histories are forgotten", || {
        (status(&url)["histories"] == 0).then_some(())
    });
    index.proc.signal("TERM");
    assert!(index.proc.wait_exit().success());
    let again = start_index_on(&format!("127.0.0.1:{port}"), &flags);
    let after = status(&again.url);
    assert_eq!(
        (after["histories"].as_u64(), after["peers"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        get(&format!("{}/file?name=track%201.mp3", again.url)).status,
        404
    );
    assert!(search(&again.url, "track").is_empty());
}
