//! End-to-end tests of the core: a real index and real peers on loopback.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;

#[test]
fn three_peers_search_and_get_through_the_shell() {
    let index = start_index(&[]);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let doc = b"the quick brown fox\n".repeat(1000);
    fs::write(a.path().join("doc.txt"), &doc).unwrap();
    fs::write(b.path().join("Beatles - Help.mp3"), b"not really music").unwrap();
    let pa = start_peer(a.path(), &index.url, true, &[]);
    let pb = start_peer(b.path(), &index.url, true, &[]);
    let mut pc = start_peer(c.path(), &index.url, false, &[]);

    let line = pc.proc.command("search doc.txt", "match");
    assert!(
        line.contains("Found 1 match: doc.txt (v1") && line.contains(&pa.addr),
        "{line}"
    );
    let line = pc.proc.command("search help", "match");
    assert!(
        line.contains("Beatles - Help.mp3") && line.contains(&pb.addr),
        "{line}"
    );

    let line = pc.proc.command("get doc.txt", "doc.txt");
    assert!(line.starts_with("Downloaded doc.txt v1"), "{line}");
    assert!(
        line.contains(&pa.addr) && line.contains("verified"),
        "{line}"
    );
    assert_eq!(fs::read(c.path().join("doc.txt")).unwrap(), doc);

    // The download was announced: the index now lists both holders.
    let mut both = holders(&index.url, "doc.txt");
    both.sort();
    let mut expected = vec![pa.addr.clone(), pc.addr.clone()];
    expected.sort();
    assert_eq!(both, expected);

    let line = pc.proc.command("list", "doc.txt");
    assert!(line.contains("v1"), "{line}");
    let line = pc.proc.command("get doc.txt", "doc.txt");
    assert!(line.contains("already have v1"), "{line}");
    let line = pc.proc.command("get missing.txt", "missing.txt");
    assert!(line.contains("not on the index"), "{line}");
    let line = pc.proc.command("status", "index:");
    assert!(line.contains("3 peer(s)"), "{line}");
    let transcript = pc.proc.transcript();
    assert!(
        transcript
            .contains("uploads: 0 in progress, 0 served (0 B); downloads: 0 in progress, 1 done"),
        "{transcript}"
    );
    assert!(
        transcript.contains(&format!("{} (in use)", index.url)),
        "{transcript}"
    );
    // Each peer's GET /status says what it moved: a served the file once, in full.
    let a_status = get(&format!("http://{}/status", pa.addr)).json();
    assert_eq!(a_status["uploads_total"], 1, "{a_status}");
    assert_eq!(a_status["bytes_served"], doc.len() as u64, "{a_status}");
    assert_eq!(a_status["uploads_active"], 0, "{a_status}");
    assert_eq!(a_status["files"], 1, "{a_status}");
    assert_eq!(a_status["index_in_use"], index.url.as_str(), "{a_status}");
    let c_status = get(&format!("http://{}/status", pc.addr)).json();
    assert_eq!(c_status["downloads_total"], 1, "{c_status}");
    assert_eq!(
        c_status["peer_id"].as_str().map(str::len),
        Some(16),
        "{c_status}"
    );

    // The one-shot search sees the same.
    let out = std::process::Command::new(peer_bin())
        .args(["search", "doc", "--index", &index.url, "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["results"][0]["holders"].as_array().unwrap().len(), 2);

    // End of input: the shell exits cleanly and its peer leaves the index at once.
    pc.proc.close_stdin();
    assert!(pc.proc.wait_exit().success());
    assert_eq!(holders(&index.url, "doc.txt"), vec![pa.addr.clone()]);
}

#[test]
fn shell_driven_by_a_pipe_runs_to_the_end() {
    let index = start_index(&[]);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    fs::write(a.path().join("notes.md"), b"# notes").unwrap();
    for i in 0..55 {
        fs::write(a.path().join(format!("song {i:02}.txt")), format!("{i}")).unwrap();
    }
    let _pa = start_peer(a.path(), &index.url, true, &[]);
    let script = "search notes\nsearch song\nget notes.md\nlist\nget ../../etc/passwd\nbogus\n";
    let mut pb = start_peer(b.path(), &index.url, false, &[]);
    pb.proc.send(script.trim_end());
    pb.proc.close_stdin();
    // At the end of its input the shell exits by itself, cleanly (wait_exit has a deadline).
    assert!(pb.proc.wait_exit().success());
    pb.proc.wait_stdout("unknown command");
    let text = pb.proc.stdout_lines().join("\n");
    assert!(text.contains("Found 1 match: notes.md (v1"), "{text}");
    // The shell lists 50 and says how many there are.
    assert!(
        text.contains("Found 50 of 55 matches, best first"),
        "{text}"
    );
    assert!(text.contains("  song 00.txt (v1"), "{text}");
    assert!(text.contains("Downloaded notes.md v1"), "{text}");
    assert!(text.contains("1 file(s) in"), "{text}");
    assert!(text.contains("not a valid file name"), "{text}");
    assert!(text.contains("unknown command \"bogus\""), "{text}");
    assert_eq!(fs::read(b.path().join("notes.md")).unwrap(), b"# notes");
}

/// SIGTERM to a daemon, SIGINT to a shell: the peer leaves the index at once (long before its
/// peer timeout) and exits 0.
#[test]
fn a_signalled_peer_leaves_the_index() {
    let index = start_index(&["--peer-timeout", "600"]);
    for (daemon, signal) in [(true, "TERM"), (false, "INT")] {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("mine.txt"), b"mine").unwrap();
        let mut peer = start_peer(dir.path(), &index.url, daemon, &[]);
        poll_until("the peer is listed", || {
            (holders(&index.url, "mine.txt").len() == 1).then_some(())
        });
        peer.proc.signal(signal);
        let status = peer.proc.wait_exit();
        assert!(status.success(), "SIG{signal}: {status}");
        let left = get(&format!("{}/status", index.url)).json();
        assert_eq!(left["peers"], 0, "SIG{signal}: {left}");
        assert!(holders(&index.url, "mine.txt").is_empty());
    }
}

#[test]
fn killed_peer_is_pruned_with_its_holdings() {
    let index = start_index(&["--peer-timeout", "1.5"]);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    fs::write(a.path().join("shared.bin"), b"a copy").unwrap();
    fs::write(b.path().join("shared.bin"), b"a copy").unwrap();
    let mut pa = start_peer(a.path(), &index.url, true, &[]);
    let pb = start_peer(b.path(), &index.url, true, &[]);
    poll_until("both holders are listed", || {
        (holders(&index.url, "shared.bin").len() == 2).then_some(())
    });
    pa.proc.kill();
    poll_until("the killed peer is pruned", || {
        (holders(&index.url, "shared.bin") == vec![pb.addr.clone()]).then_some(())
    });
    // The live peer keeps heartbeating and is not pruned.
    let status = get(&format!("{}/status", index.url)).json();
    assert_eq!(status["peers"], 1);
}

#[test]
fn a_corrupt_holder_is_detected_and_the_next_one_used() {
    let index = start_index(&["--peer-timeout", "60"]);
    let content = b"precious bytes ".repeat(5000);
    let sha = sha256_hex(&content);
    let good = tempfile::tempdir().unwrap();
    fs::write(good.path().join("data.bin"), &content).unwrap();
    let pgood = start_peer(good.path(), &index.url, true, &[]);

    // A holder that claims the same file but serves other bytes of the same length. Its
    // peer id sorts first, so it is the first holder the downloader tries.
    let (evil_addr, served) = corrupt_server(content.len());
    let register = serde_json::json!({
        "addr": evil_addr,
        "peer_id": "0-corrupt",
        "token": "evil-token",
        "files": [{"name": "data.bin", "version": 1, "size": content.len(), "sha256": sha}],
    });
    let answer = post(&format!("{}/register", index.url), &register.to_string());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let listed = holders(&index.url, "data.bin");
    assert_eq!(listed, vec![evil_addr.clone(), pgood.addr.clone()]);

    let c = tempfile::tempdir().unwrap();
    let mut pc = start_peer(c.path(), &index.url, false, &[]);
    let line = pc.proc.command("get data.bin", "data.bin");
    assert!(line.starts_with("Downloaded data.bin v1"), "{line}");
    assert!(line.contains(&pgood.addr), "{line}");
    assert!(
        served.load(Ordering::SeqCst) >= 1,
        "the corrupt holder was never asked"
    );
    assert_eq!(fs::read(c.path().join("data.bin")).unwrap(), content);
    // The log line was written before the result; its reader thread may lag a little.
    pc.proc
        .wait_stderr(|l| l.contains(&evil_addr) && l.contains("bad content"));
    // Nothing unverified is left behind.
    let partial = fs::read_dir(c.path().join(".nap/partial")).unwrap().count();
    assert_eq!(partial, 0);
}

#[test]
fn traversal_names_are_refused_by_index_and_file_server() {
    let index = start_index(&[]);
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"top secret").unwrap();
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("ok.txt"), b"fine").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), a.path().join("link")).unwrap();
    let pa = start_peer(a.path(), &index.url, true, &[]);

    let sha = "0".repeat(64);
    for bad in [
        "../x",
        "a/b",
        "..",
        ".nap",
        "nul\u{0}byte",
        "back\\slash",
        "line\nbreak",
    ] {
        let register = serde_json::json!({
            "addr": "127.0.0.1:9",
            "files": [{"name": bad, "version": 1, "size": 1, "sha256": sha}],
        });
        let answer = post(&format!("{}/register", index.url), &register.to_string());
        assert_eq!(answer.status, 400, "{bad:?}: {}", answer.body);
        assert!(answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("file name"));
    }
    // The symlink is never listed.
    assert!(search(&index.url, "link").is_empty());

    for path in [
        "/files/../../etc/passwd",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/%2E%2E",
        "/files/.nap%2Fidentity.json",
        "/files/nul%00byte",
        "/files/ok.txt%2F..%2F..%2Fsecret",
    ] {
        let status = raw_status(
            &pa.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 400, "{path}");
    }
    for path in ["/files/link", "/files/secret", "/files/missing"] {
        let status = raw_status(
            &pa.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 404, "{path}");
    }
    let ok = get(&format!("http://{}/files/ok.txt", pa.addr));
    assert_eq!((ok.status, ok.body.as_str()), (200, "fine"));
}

#[test]
fn file_server_answers_ranges_and_head() {
    let index = start_index(&[]);
    let a = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    fs::write(a.path().join("r.bin"), &content).unwrap();
    let pa = start_peer(a.path(), &index.url, true, &[]);
    let url = format!("http://{}/files/r.bin", pa.addr);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .get(&url)
        .header("Range", "bytes=9000-")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 206);
    assert_eq!(
        response.headers().get("Content-Range").unwrap(),
        "bytes 9000-9999/10000"
    );
    assert_eq!(
        response
            .headers()
            .get("X-Nap-Sha256")
            .unwrap()
            .to_str()
            .unwrap(),
        sha256_hex(&content)
    );
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(body, &content[9000..]);

    let response = agent
        .get(&url)
        .header("Range", "bytes=20000-")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 416);
    let response = agent.head(&url).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers().get("Content-Length").unwrap(), "10000");
    let response = agent.post(&url).send("x").unwrap();
    assert_eq!(response.status().as_u16(), 405);
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let index = start_index(&["--peer-timeout", "60"]);
    let content = b"0123456789".repeat(10_000);
    let sha = sha256_hex(&content);
    let half = content.len() / 2;

    // A holder that records the Range it was asked for and serves exactly that.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (ranges, content) = (ranges.clone(), content.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut from = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        from = v.trim().trim_end_matches('-').parse().unwrap();
                        ranges.lock().unwrap().push(from);
                    }
                    line.clear();
                }
                let len = content.len();
                let _ = write!(
                    stream,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    len - 1,
                    len - from
                );
                let _ = stream.write_all(&content[from..]);
            }
        });
    }
    let register = serde_json::json!({
        "addr": addr, "peer_id": "resumer", "token": "t",
        "files": [{"name": "big.txt", "version": 1, "size": content.len(), "sha256": sha}],
    });
    assert_eq!(
        post(&format!("{}/register", index.url), &register.to_string()).status,
        200
    );

    // What an earlier, interrupted download left behind.
    let c = tempfile::tempdir().unwrap();
    fs::create_dir_all(c.path().join(".nap/partial")).unwrap();
    fs::write(c.path().join(".nap/partial").join(&sha), &content[..half]).unwrap();
    let mut pc = start_peer(c.path(), &index.url, false, &[]);
    let line = pc.proc.command("get big.txt", "big.txt");
    assert!(line.starts_with("Downloaded big.txt v1"), "{line}");
    assert_eq!(*ranges.lock().unwrap(), vec![half]);
    assert_eq!(fs::read(c.path().join("big.txt")).unwrap(), content);
}
