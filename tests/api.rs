//! The index API against a real `nap-index`: errors, identities, limits, restarts, bursts.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use nap::peer::client::IndexClient;
use serde_json::json;

fn sha(n: u8) -> String {
    sha256_hex(&[n])
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let index = start_index(&["--max-body", "2000"]);
    let url = &index.url;
    let before = get(&format!("{url}/status")).json();

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/register", "{bad".into(), 400, "bad JSON"),
        ("/register", "[]".into(), 400, "bad JSON"),
        ("/register", json!({"files": []}).to_string(), 400, "addr"),
        ("/register", json!({"addr": "nohost"}).to_string(), 400, "host:port"),
        ("/register", json!({"addr": "h:1", "peer_id": "x"}).to_string(), 401, "without its token"),
        ("/register", json!({"addr": "h:1", "token": "x"}).to_string(), 400, "without peer_id"),
        (
            "/register",
            json!({"addr": "h:1", "peer_id": "../x", "token": "t"}).to_string(),
            400,
            "peer_id",
        ),
        (
            "/register",
            json!({"addr": "h:1", "files": [{"name": "a", "version": 1, "size": 1, "sha256": "xyz"}]})
                .to_string(),
            400,
            "sha256",
        ),
        (
            "/register",
            json!({"addr": "h:1", "files": [{"name": "a", "version": 0, "size": 1, "sha256": sha(1)}]})
                .to_string(),
            400,
            "versions start at 1",
        ),
        (
            "/register",
            json!({"addr": "h:1", "files": [
                {"name": "a", "version": 1, "size": 1, "sha256": sha(1)},
                {"name": "a", "version": 1, "size": 1, "sha256": sha(1)}]})
            .to_string(),
            400,
            "twice",
        ),
        ("/register", "x".repeat(5000), 413, "larger than 2000"),
        (
            "/heartbeat",
            json!({"peer_id": "ghost", "token": "t"}).to_string(),
            404,
            "register again",
        ),
        (
            "/announce",
            json!({"peer_id": "ghost", "token": "t", "file": "f", "version": 1, "size": 1,
                   "sha256": sha(1)})
            .to_string(),
            404,
            "register again",
        ),
        ("/unregister", json!({"peer_id": "ghost"}).to_string(), 400, "token"),
    ];
    for (path, body, status, needle) in cases {
        let answer = post(&format!("{url}{path}"), &body);
        assert_eq!(answer.status, status, "{path} {body:.80}: {}", answer.body);
        let error = answer.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(needle), "{path}: {error:?} lacks {needle:?}");
    }
    let ghost = post(
        &format!("{url}/heartbeat"),
        &json!({"peer_id": "ghost", "token": "t"}).to_string(),
    );
    assert_eq!(ghost.json()["reregister"], true);

    assert_eq!(get(&format!("{url}/nope")).status, 404);
    assert_eq!(get(&format!("{url}/register")).status, 405);
    assert_eq!(post(&format!("{url}/search?q=x"), "").status, 405);
    assert_eq!(post(&format!("{url}/health"), "").status, 405);
    assert_eq!(get(&format!("{url}/search")).status, 400);
    assert_eq!(get(&format!("{url}/search?q=x&limit=lots")).status, 400);
    assert_eq!(get(&format!("{url}/search?q=%zz")).status, 400);
    assert_eq!(get(&format!("{url}/search?q=..%2F..%2Fetc")).status, 200);

    let after = get(&format!("{url}/status")).json();
    assert_eq!(
        before["seq"], after["seq"],
        "a refused request changed the state"
    );
    // Still serving after all that.
    assert_eq!(get(&format!("{url}/status")).status, 200);
}

#[test]
fn identities_are_kept_and_guarded_by_their_token() {
    let index = start_index(&[]);
    let url = &index.url;
    let first = post(
        &format!("{url}/register"),
        &json!({"addr": "127.0.0.1:9"}).to_string(),
    );
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    let (id, token) = (
        first["peer_id"].as_str().unwrap(),
        first["token"].as_str().unwrap(),
    );
    assert!(first["heartbeat_interval_ms"].as_u64().unwrap() > 0);
    assert!(first["tasks"].as_array().unwrap().is_empty());

    let hijack = post(
        &format!("{url}/register"),
        &json!({"addr": "127.0.0.1:10", "peer_id": id, "token": "guess"}).to_string(),
    );
    assert_eq!(hijack.status, 401, "{}", hijack.body);
    let wrong = post(
        &format!("{url}/heartbeat"),
        &json!({"peer_id": id, "token": "guess"}).to_string(),
    );
    assert_eq!(wrong.status, 401);
    let wrong = post(
        &format!("{url}/unregister"),
        &json!({"peer_id": id, "token": "guess"}).to_string(),
    );
    assert_eq!(wrong.status, 401);

    let again = post(
        &format!("{url}/register"),
        &json!({"addr": "127.0.0.1:11", "peer_id": id, "token": token}).to_string(),
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["peer_id"], id);
    let beat = post(
        &format!("{url}/heartbeat"),
        &json!({"peer_id": id, "token": token}).to_string(),
    );
    assert_eq!(beat.status, 200, "{}", beat.body);
}

#[test]
fn conflicting_content_under_one_version_is_refused() {
    let index = start_index(&[]);
    let url = &index.url;
    let file = |n| json!([{"name": "doc.txt", "version": 1, "size": 1, "sha256": sha(n)}]);
    let a = post(
        &format!("{url}/register"),
        &json!({"addr": "127.0.0.1:9", "files": file(1)}).to_string(),
    );
    assert!(a.json()["rejected"].as_array().unwrap().is_empty());
    let b = post(
        &format!("{url}/register"),
        &json!({"addr": "127.0.0.1:10", "files": file(2)}).to_string(),
    );
    assert_eq!(b.status, 200);
    let b = b.json();
    assert_eq!(b["rejected"][0]["name"], "doc.txt");
    assert_eq!(b["rejected"][0]["status"], 409);
    let results = search(url, "doc.txt");
    assert_eq!(results[0]["sha256"], sha(1));
    assert_eq!(results[0]["holders"].as_array().unwrap().len(), 1);

    let announce = post(
        &format!("{url}/announce"),
        &json!({"peer_id": b["peer_id"], "token": b["token"], "file": "doc.txt",
                "version": 1, "size": 1, "sha256": sha(2)})
        .to_string(),
    );
    assert_eq!(announce.status, 409, "{}", announce.body);
}

/// A search lists the best `limit` matches (exact name first, then the most up-to-date
/// holders, then by name) and says how many there are in all.
#[test]
fn search_lists_the_best_and_counts_them_all() {
    let index = start_index(&[]);
    let url = &index.url;
    let songs = (0..60)
        .map(|i| file_entry(&format!("song {i:02}.mp3"), 1, &format!("s{i}")))
        .collect();
    identity(url, 9001, songs);
    identity(
        url,
        9002,
        vec![
            file_entry("song 42.mp3", 1, "s42"),
            file_entry("song", 1, "x"),
        ],
    );
    let answer = get(&format!("{url}/search?q=song&limit=5")).json();
    let names: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "song",
            "song 42.mp3",
            "song 00.mp3",
            "song 01.mp3",
            "song 02.mp3"
        ]
    );
    assert_eq!(
        (answer["total"].clone(), answer["total_exact"].clone()),
        (json!(61), json!(true))
    );
    // limit=0 only counts; an unknown word matches nothing, exactly.
    let count = get(&format!("{url}/search?q=MP3&limit=0")).json();
    assert_eq!(
        count,
        json!({"results": [], "total": 60, "total_exact": true})
    );
    let none = get(&format!("{url}/search?q=song+nothing")).json();
    assert_eq!(
        none,
        json!({"results": [], "total": 0, "total_exact": true})
    );
}

#[test]
fn a_restarted_peer_keeps_its_identity_and_a_restarted_index_relearns_peers() {
    let index = start_index(&[]);
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("keep.txt"), b"keep").unwrap();
    let mut pa = start_peer(a.path(), &index.url, true, &[]);
    let id = poll_until("the identity is saved", || {
        let text = fs::read_to_string(a.path().join(".nap/identity.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(v["peer_id"].as_str()?.to_string())
    });
    pa.proc.kill();
    let pa = start_peer(a.path(), &index.url, true, &[]);
    let results = search(&index.url, "keep.txt");
    assert_eq!(results[0]["holders"][0]["peer_id"], id.as_str());
    assert_eq!(results[0]["holders"][0]["addr"], pa.addr.as_str());

    // The index restarts empty on the same address: the peer's next heartbeat is told to
    // register again, and its files are back without anyone restarting the peer.
    let listen = index.url.trim_start_matches("http://").to_string();
    drop(index);
    let index = start_index_on(&listen, &[]);
    poll_until("the peer has registered again", || {
        (holders(&index.url, "keep.txt") == vec![pa.addr.clone()]).then_some(())
    });
}

#[test]
fn new_files_and_removals_reach_the_index_and_unleased_edits_are_refused() {
    let index = start_index(&[]);
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("one.txt"), b"v1").unwrap();
    let pa = start_peer(a.path(), &index.url, true, &["--rescan-interval", "0.2"]);
    assert_eq!(holders(&index.url, "one.txt").len(), 1);
    fs::write(a.path().join("two.txt"), b"new").unwrap();
    poll_until("the new file is listed", || {
        (holders(&index.url, "two.txt").len() == 1).then_some(())
    });
    // An edit made outside `update` has no lease: the index refuses it as v2, says why, and
    // stops listing the peer as a holder of content it no longer has.
    fs::write(a.path().join("one.txt"), b"v2 content").unwrap();
    pa.proc
        .wait_stderr(|l| l.contains("refused one.txt") && l.contains("lease"));
    assert!(search(&index.url, "one.txt").is_empty());
    let info = get(&format!("{}/file?name=one.txt", index.url)).json();
    assert_eq!(info["versions"].as_array().unwrap().len(), 1, "{info}");
    fs::remove_file(a.path().join("two.txt")).unwrap();
    poll_until("the removed file is gone", || {
        search(&index.url, "two.txt").is_empty().then_some(())
    });
}

/// tiny_http 0.12 can leave a new connection queued behind pool threads that stay with open
/// keep-alive connections; a client that keeps its connection and calls again every so often
/// (as peers heartbeat) would hold a thread for good. nap clients send one request per
/// connection, so every request of many such clients must be answered within the client's
/// own timeout: none may time out or fail over. (With keep-alive clients this test fails.)
///
/// Peers also hold a heartbeat open at all times (the long poll that carries tasks), each on
/// a pool thread of its own; those must not stall anyone either.
#[test]
fn many_periodic_clients_are_served_without_stalls() {
    let index = start_index(&["--workers", "2"]);
    let clients = 48;
    let run_for = Duration::from_secs(3);
    let pollers: Vec<(String, String)> = (0..16)
        .map(|n| {
            let answer = post(
                &format!("{}/register", index.url),
                &json!({"addr": format!("127.0.0.1:{}", 9000 + n)}).to_string(),
            )
            .json();
            (
                answer["peer_id"].as_str().unwrap().to_string(),
                answer["token"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let failures: usize = std::thread::scope(|s| {
        for (peer_id, token) in &pollers {
            let url = index.url.clone();
            s.spawn(move || {
                let client = IndexClient::new(vec![url], Duration::from_secs(2));
                let start = std::time::Instant::now();
                while start.elapsed() < run_for {
                    let rq = nap::protocol::HeartbeatRequest {
                        peer_id: peer_id.clone(),
                        token: token.clone(),
                        added: vec![],
                        removed: vec![],
                        failed: vec![],
                        wait_ms: Some(5_000),
                    };
                    client.heartbeat(&rq).unwrap();
                }
            });
        }
        let handles: Vec<_> = (0..clients)
            .map(|n| {
                let url = index.url.clone();
                s.spawn(move || {
                    let client = IndexClient::new(vec![url], Duration::from_secs(2));
                    let start = std::time::Instant::now();
                    let mut failed = 0;
                    while start.elapsed() < run_for {
                        if client.search(&format!("file {n}"), 5).is_err() {
                            failed += 1;
                        }
                        // Pacing, like a heartbeat interval; not a wait for a result.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(failures, 0, "{failures} requests timed out or failed");
}

#[test]
fn a_peer_whose_identity_is_taken_gets_a_new_one() {
    let index = start_index(&[]);
    let taken = json!({"addr": "127.0.0.1:9", "peer_id": "taken", "token": "first"});
    assert_eq!(
        post(&format!("{}/register", index.url), &taken.to_string()).status,
        200
    );
    let a = tempfile::tempdir().unwrap();
    fs::create_dir_all(a.path().join(".nap")).unwrap();
    fs::write(
        a.path().join(".nap/identity.json"),
        json!({"peer_id": "taken", "token": "copied"}).to_string(),
    )
    .unwrap();
    fs::write(a.path().join("mine.txt"), b"mine").unwrap();
    let pa = start_peer(a.path(), &index.url, true, &[]);
    let results = poll_until("the peer registered under a new id", || {
        search(&index.url, "mine.txt").into_iter().next()
    });
    let id = results["holders"][0]["peer_id"].as_str().unwrap();
    assert_ne!(id, "taken");
    assert_eq!(results["holders"][0]["addr"], pa.addr.as_str());
    poll_until("the new identity is saved", || {
        let saved = fs::read_to_string(a.path().join(".nap/identity.json")).ok()?;
        saved.contains(id).then_some(())
    });
}

/// `GET /metrics` is valid Prometheus text: every sample line is `name{labels} number`, each
/// family is announced by HELP and TYPE, histogram buckets are cumulative and end at the
/// count, and the numbers say what happened.
#[test]
fn metrics_are_prometheus_text_and_count_what_happened() {
    let data = tempfile::tempdir().unwrap();
    let index = start_index(&["--data-dir", data.path().to_str().unwrap()]);
    let url = &index.url;
    let a = identity(
        url,
        9401,
        vec![file_entry("song.mp3", 1, "s"), file_entry("b.txt", 1, "b")],
    );
    for _ in 0..3 {
        assert_eq!(get(&format!("{url}/search?q=song")).status, 200);
    }
    assert_eq!(get(&format!("{url}/nowhere/../secret")).status, 404);
    assert_eq!(lease(url, &a, "b.txt").status, 200);

    let response = agent().get(&format!("{url}/metrics")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.into_body().read_to_string().unwrap();

    let mut typed = std::collections::HashSet::new();
    let mut samples: Vec<(String, String, f64)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(typed.insert(name.to_string()), "{name} typed twice");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect(line).to_string()),
            None => (series, String::new()),
        };
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no TYPE line before it");
        samples.push((name.to_string(), labels, value));
    }
    let value = |name: &str, labels: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    };
    assert_eq!(value("nap_peers", ""), 1.0);
    assert_eq!(value("nap_files", ""), 2.0);
    assert_eq!(value("nap_leases", ""), 1.0);
    assert_eq!(value("nap_role", "role=\"primary\""), 1.0);
    let searches = "endpoint=\"/search\",status=\"200\"";
    assert_eq!(value("nap_request_duration_seconds_count", searches), 3.0);
    assert_eq!(
        value(
            "nap_request_duration_seconds_count",
            "endpoint=\"other\",status=\"404\""
        ),
        1.0
    );
    // Buckets never decrease and end at the count.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == "nap_request_duration_seconds_bucket" && l.starts_with(searches))
        .map(|(_, _, v)| *v)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&3.0));
    // The register, the lease: each written and fsynced before its answer.
    assert!(
        value("nap_log_fsync_duration_seconds_count", "") >= 2.0,
        "{text}"
    );
}

/// Every limit is a flag, and going over it gets a clear error naming the flag.
#[test]
fn limits_are_flags_with_clear_errors() {
    let index = start_index(&[
        "--max-name-bytes",
        "10",
        "--max-files-per-request",
        "2",
        "--max-search-results",
        "5",
    ]);
    let url = &index.url;
    let a = identity(url, 9601, vec![file_entry("short.txt", 1, "s")]);

    let long = lease(url, &a, "eleven.char");
    assert_eq!(long.status, 400);
    assert!(long.json()["error"]
        .as_str()
        .unwrap()
        .contains("--max-name-bytes"));
    assert_eq!(lease(url, &a, "short.txt").status, 200);

    let three = json!({"addr": "127.0.0.1:9", "files": [
        file_entry("a", 1, "a"), file_entry("b", 1, "b"), file_entry("c", 1, "c")]});
    let refused = post(&format!("{url}/register"), &three.to_string());
    assert_eq!(refused.status, 413);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("--max-files-per-request"));
    let heartbeat = json!({"peer_id": a.peer_id, "token": a.token,
                           "added": [file_entry("a", 1, "a"), file_entry("b", 1, "b")],
                           "removed": ["short.txt"]});
    assert_eq!(
        post(&format!("{url}/heartbeat"), &heartbeat.to_string()).status,
        413
    );

    let search = get(&format!("{url}/search?q=short&limit=6"));
    assert_eq!(search.status, 400);
    assert!(search.json()["error"]
        .as_str()
        .unwrap()
        .contains("--max-search-results"));
    assert_eq!(get(&format!("{url}/search?q=short&limit=5")).status, 200);
    // Nothing refused changed anything.
    let status = get(&format!("{url}/status")).json();
    assert_eq!(
        (status["peers"].as_u64(), status["files"].as_u64()),
        (Some(1), Some(1))
    );
}

/// Sizes are what peers claim: two files of u64::MAX bytes each must not break the status
/// page's per-peer byte count (found by schemathesis: a worker panicked on the overflow).
#[test]
fn the_status_page_survives_absurd_sizes() {
    let index = start_index(&[]);
    let url = &index.url;
    let huge = |name: &str| json!({"name": name, "version": 1, "size": u64::MAX, "sha256": sha(name.len() as u8)});
    let body = json!({"addr": "127.0.0.1:9", "files": [huge("a.bin"), huge("bb.bin")]});
    assert_eq!(
        post(&format!("{url}/register"), &body.to_string()).status,
        200
    );
    for _ in 0..8 {
        let page = get(&format!("{url}/"));
        assert_eq!(page.status, 200);
        assert!(page.body.contains(&u64::MAX.to_string()), "{}", page.body);
    }
}

/// A file claimed at version u64::MAX (a new name may start at any version) can take no next
/// version: the announce of one is refused, and nothing overflows.
#[test]
fn the_highest_version_has_no_successor() {
    let index = start_index(&[]);
    let url = &index.url;
    let top = json!({"name": "top.txt", "version": u64::MAX, "size": 1, "sha256": sha(1)});
    let body = json!({"addr": "127.0.0.1:9", "files": [top]});
    let a = post(&format!("{url}/register"), &body.to_string()).json();
    let id = Id {
        peer_id: a["peer_id"].as_str().unwrap().into(),
        token: a["token"].as_str().unwrap().into(),
    };
    let granted = lease(url, &id, "top.txt");
    assert_eq!(granted.status, 200);
    assert_eq!(granted.json()["version"], u64::MAX);
    let announce = json!({"peer_id": id.peer_id, "token": id.token, "file": "top.txt",
                          "version": 5, "size": 2, "sha256": sha(2),
                          "lease_id": granted.json()["lease_id"]});
    let answer = post(&format!("{url}/announce"), &announce.to_string());
    assert!(answer.status < 500, "{}: {}", answer.status, answer.body);
    let info = get(&format!("{url}/file?name=top.txt")).json();
    let versions = info["versions"].as_array().unwrap();
    assert_eq!(versions.last().unwrap()["version"], u64::MAX, "{info}");
    assert_eq!(get(&format!("{url}/health")).status, 200);
}
