//! Primary–shadow replication and peer failover, with real processes: the shadow mirrors the
//! primary (equal digests at equal sequence numbers), refuses writes, and takes over reads
//! when the primary is killed or frozen; peers go back to the primary when it returns.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn status(url: &str) -> Value {
    let answer = get(&format!("{url}/status?digest=1"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// Waits until the shadow is at the primary's sequence number with the same state.
fn wait_converged(primary: &str, shadow: &str) -> Value {
    poll_until("the shadow converges to the primary", || {
        let (p, s) = (status(primary), status(shadow));
        (p["seq"] == s["seq"] && p["digest"] == s["digest"] && p["epoch"] == s["epoch"])
            .then_some(p)
    })
}

/// Publishes the next version of `name` as `id`: lease, then announce.
fn publish(url: &str, id: &Id, name: &str, content: &str) {
    let lease = post(
        &format!("{url}/lease"),
        &json!({"peer_id": id.peer_id, "token": id.token, "file": name}).to_string(),
    );
    assert_eq!(lease.status, 200, "{}", lease.body);
    let lease = lease.json();
    let next = lease["version"].as_u64().unwrap() + 1;
    let f = file_entry(name, next, content);
    let answer = post(
        &format!("{url}/announce"),
        &json!({"peer_id": id.peer_id, "token": id.token, "file": name, "version": next,
                "size": f["size"], "sha256": f["sha256"], "lease_id": lease["lease_id"]})
        .to_string(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[test]
fn the_shadow_mirrors_the_primary_and_refuses_writes() {
    let (primary, shadow, Addrs { purl, surl, .. }) = start_pair(&[], &[]);
    let a = identity(&primary.url, 9001, vec![file_entry("doc.txt", 1, "v1")]);
    let _b = identity(&primary.url, 9002, vec![file_entry("doc.txt", 1, "v1")]);
    publish(&primary.url, &a, "doc.txt", "v2");
    let lease = post(
        &format!("{}/lease", primary.url),
        &json!({"peer_id": a.peer_id, "token": a.token, "file": "doc.txt"}).to_string(),
    );
    assert_eq!(lease.status, 200);

    let p = wait_converged(&primary.url, &shadow.url);
    assert!(p["seq"].as_u64().unwrap() >= 4, "{p}");
    let s = status(&shadow.url);
    assert_eq!(s["role"], "shadow");
    assert_eq!(s["primary"], purl.as_str());
    assert_eq!(p["shadows"][0]["url"], surl.as_str());
    for (url, role) in [(&purl, "primary"), (&surl, "shadow")] {
        let health = get(&format!("{url}/health"));
        assert_eq!(health.status, 200);
        assert_eq!(health.json(), json!({"ok": true, "role": role}));
        let metrics = get(&format!("{url}/metrics")).body;
        assert!(
            metrics.contains(&format!("nap_role{{role=\"{role}\"}} 1\n")),
            "{metrics}"
        );
    }
    // The primary reports its shadow's lag, the shadow when it last heard from the primary.
    let metrics = get(&format!("{purl}/metrics")).body;
    assert!(
        metrics.contains(&format!("nap_shadow_lag_ops{{shadow=\"{surl}\"}} 0\n")),
        "{metrics}"
    );
    assert!(get(&format!("{surl}/metrics"))
        .body
        .contains("\nnap_sync_last_seconds "));
    // The primary hears the shadow's acknowledgement with the answer to its push.
    poll_until("the primary sees the shadow's ack", || {
        let shadows = status(&primary.url)["shadows"].clone();
        (shadows[0]["acked_seq"] == p["seq"] && shadows[0]["lag"] == 0).then_some(())
    });
    // Reads answer the same on both.
    assert_eq!(search(&primary.url, "doc"), search(&shadow.url, "doc"));
    let info = get(&format!("{}/file?name=doc.txt", shadow.url)).json();
    assert_eq!(info["versions"].as_array().unwrap().len(), 2, "{info}");
    assert_eq!(info["lease"]["holder"], a.peer_id.as_str());

    // Every write to the shadow: 403, naming the primary; nothing changes.
    let creds = json!({"peer_id": a.peer_id, "token": a.token});
    for path in [
        "/register",
        "/heartbeat",
        "/announce",
        "/unregister",
        "/lease",
        "/lease/renew",
        "/lease/release",
    ] {
        let answer = post(&format!("{}{path}", shadow.url), &creds.to_string());
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
        let body = answer.json();
        assert_eq!(body["error"], "read-only shadow", "{path}");
        assert_eq!(body["primary"], purl.as_str(), "{path}");
    }
    assert_eq!(status(&shadow.url)["seq"], p["seq"]);

    // Replication endpoints want the secret.
    let sync_body = json!({"epoch": "x", "ops": []}).to_string();
    assert_eq!(
        post(&format!("{}/sync", shadow.url), &sync_body).status,
        401
    );
    assert_eq!(get(&format!("{}/snapshot", primary.url)).status, 401);
    let wrong = agent_with_secret("not the secret");
    assert_eq!(
        wrong
            .get(&format!("{}/snapshot", primary.url))
            .call()
            .unwrap()
            .status(),
        401
    );
    let right = agent_with_secret(SECRET);
    let snapshot = right
        .get(&format!("{}/snapshot", primary.url))
        .call()
        .unwrap();
    assert_eq!(snapshot.status(), 200);
    let pushed = right
        .post(&format!("{}/sync", primary.url))
        .header("Content-Type", "application/json")
        .send(&sync_body)
        .unwrap();
    assert_eq!(pushed.status(), 403, "a primary takes no /sync");
}

/// A ureq agent that sends the cluster secret header on every request.
fn agent_with_secret(secret: &str) -> AgentWithSecret {
    AgentWithSecret(secret.to_string())
}

struct AgentWithSecret(String);

impl AgentWithSecret {
    fn get(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        quiet_agent()
            .get(url)
            .header("X-Nap-Cluster-Secret", &self.0)
    }

    fn post(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        quiet_agent()
            .post(url)
            .header("X-Nap-Cluster-Secret", &self.0)
    }
}

fn quiet_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_recv_response(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A primary and its shadow with two peers: `a` shares doc.txt (daemon), `b` runs the shell
/// with `--index primary,shadow`.
struct Pair {
    primary: IndexProc,
    _shadow: IndexProc,
    pport: u16,
    purl: String,
    surl: String,
    _a: PeerProc,
    b: PeerProc,
    _dirs: Vec<tempfile::TempDir>,
}

fn pair_with_peers(index_timeout: &str) -> Pair {
    let (
        primary,
        shadow,
        Addrs {
            pport, purl, surl, ..
        },
    ) = start_pair(&[], &[]);
    let both = format!("{purl},{surl}");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::write(a.path().join("doc.txt"), b"replicated\n").unwrap();
    let pa = start_peer(a.path(), &both, true, &["--index-timeout", index_timeout]);
    let pb = start_peer(b.path(), &both, false, &["--index-timeout", index_timeout]);
    wait_converged(&purl, &surl);
    Pair {
        primary,
        _shadow: shadow,
        pport,
        purl,
        surl,
        _a: pa,
        b: pb,
        _dirs: vec![a, b],
    }
}

#[test]
fn a_killed_primary_leaves_reads_working_and_writes_read_only_until_it_returns() {
    let mut pair = pair_with_peers("2");
    let both = format!("{},{}", pair.purl, pair.surl);
    pair.primary.proc.kill();

    // Every search keeps working, through the shadow: from the shell and one-shot.
    for _ in 0..5 {
        let line = pair.b.proc.command("search doc.txt", "doc.txt");
        assert!(line.starts_with("Found 1 match: doc.txt (v1"), "{line}");
    }
    for _ in 0..3 {
        let out = std::process::Command::new(peer_bin())
            .args(["search", "doc.txt", "--json", "--index", &both])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("doc.txt"));
    }
    let line = pair.b.proc.command("status", "index servers");
    assert!(line.contains(&format!("{} (in use)", pair.surl)), "{line}");
    // Writes say why they cannot be done.
    let line = pair.b.proc.command("update doc.txt", "doc.txt");
    assert!(
        line.contains("read-only while the primary is down"),
        "{line}"
    );

    // The primary comes back, recovers the state from its shadow (nothing is lost on either),
    // and the shell's peer goes back to it.
    let before = status(&pair.surl);
    let primary = start_primary(pair.pport, &pair.surl, &[]);
    primary
        .proc
        .wait_stderr(|l| l.contains("recovered the index state"));
    let after = status(&primary.url);
    assert!(after["seq"].as_u64() >= before["seq"].as_u64(), "{after}");
    assert_ne!(
        after["epoch"], before["epoch"],
        "a recovered primary starts a new epoch"
    );
    assert_eq!(holders(&pair.surl, "doc.txt").len(), 1);
    poll_until("the peer is back on the primary", || {
        let line = pair.b.proc.command("status", "index servers");
        line.contains(&format!("{} (in use)", pair.purl))
            .then_some(())
    });
    poll_until("the primary knows doc.txt again", || {
        (holders(&primary.url, "doc.txt").len() == 1).then_some(())
    });
    wait_converged(&primary.url, &pair.surl);
    let line = pair.b.proc.command("get doc.txt", "doc.txt");
    assert!(line.starts_with("Downloaded doc.txt v1"), "{line}");
}

#[test]
fn a_frozen_primary_fails_over_after_the_timeout() {
    let pair = pair_with_peers("1");
    let both = format!("{},{}", pair.purl, pair.surl);
    pair.primary.proc.signal("STOP");
    let started = Instant::now();
    let out = std::process::Command::new(peer_bin())
        .args([
            "search",
            "doc.txt",
            "--index",
            &both,
            "--index-timeout",
            "1",
        ])
        .output()
        .unwrap();
    let took = started.elapsed();
    pair.primary.proc.signal("CONT");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("doc.txt"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // It was the shadow that answered, after the frozen primary timed out.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("now in use: {}", pair.surl)),
        "{stderr}"
    );
    // Not "never": bounded by the timeouts (connect or answer), with room for a slow machine.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn late_and_restarted_shadows_converge_under_writes() {
    let Addrs {
        pport,
        sport,
        purl,
        surl,
    } = addrs();
    // A short op log, so that a shadow that misses ops must catch up by snapshot.
    let primary = start_primary(pport, &surl, &["--sync-log", "20"]);
    let writer = identity(&primary.url, 9100, vec![file_entry("log.txt", 1, "0")]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = {
        let (url, stop) = (primary.url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                publish(&url, &writer, "log.txt", &n.to_string());
                if n.is_multiple_of(10) {
                    identity(&url, 9200 + (n % 500) as u16, vec![file_entry("x", 1, "x")]);
                }
            }
            n
        })
    };
    // The shadow starts late: the primary already has more ops than its log keeps.
    poll_until("the primary has written a while", || {
        (status(&primary.url)["seq"].as_u64()? > 100).then_some(())
    });
    let shadow = start_shadow(sport, &purl, &[]);
    poll_until("the late shadow follows", || {
        (status(&shadow.url)["seq"].as_u64()? > 100).then_some(())
    });
    // Restarted mid-stream: it comes back empty and catches up again.
    drop(shadow);
    let before = status(&primary.url)["seq"].as_u64().unwrap();
    poll_until("writes go on while the shadow is down", || {
        (status(&primary.url)["seq"].as_u64()? > before + 50).then_some(())
    });
    let shadow = start_shadow(sport, &purl, &[]);
    poll_until("the restarted shadow follows", || {
        (status(&shadow.url)["seq"].as_u64()? > before).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = writes.join().unwrap();
    let p = wait_converged(&primary.url, &shadow.url);
    let info = get(&format!("{}/file?name=log.txt", shadow.url)).json();
    assert_eq!(
        info["versions"].as_array().unwrap().len() as u32,
        published + 1,
        "{p}"
    );
    shadow.proc.wait_stderr(|l| l.contains("snapshot"));
}

/// The primary takes the publish and freezes before answering: the shell says the publish is
/// not confirmed and keeps the edit; once the primary resumes (and applies it), the peer
/// settles it: the new version is in its folder and on the index, held by it.
#[test]
fn a_publish_the_frozen_primary_applies_late_is_settled() {
    let index = start_index(&[]);
    let url = index.url.clone();
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("doc.txt"), b"v1\n").unwrap();
    let tools = tempfile::tempdir().unwrap();
    let release = tools.path().join("release");
    let _release = ReleaseOnDrop(release.clone());
    let editor = waiting_editor(tools.path(), &release);
    let mut pa = start_editing_peer(a.path(), &url, &editor, &["--index-timeout", "1"]);
    pa.proc.send("update doc.txt");
    pa.proc.wait_stdout("editor open on");
    index.proc.signal("STOP");
    fs::write(&release, b"").unwrap();
    let line = pa.proc.wait_stdout("NOT confirmed");
    assert!(line.contains("doc.txt"), "{line}");
    assert_eq!(fs::read(a.path().join("doc.txt")).unwrap(), b"v1\n");
    index.proc.signal("CONT");
    poll_until("the late publish is settled", || {
        (fs::read(a.path().join("doc.txt")).ok()? == b"v1\nedited\n").then_some(())
    });
    let r = search(&url, "doc.txt");
    assert_eq!(r[0]["version"], 2);
    assert_eq!(r[0]["sha256"], sha256_hex(b"v1\nedited\n"));
    poll_until("the peer is listed as the holder of v2", || {
        let info = get(&format!("{url}/file?name=doc.txt")).json();
        (info["holders"][0]["version"] == 2).then_some(())
    });
    pa.proc.wait_stderr(|l| l.contains("published after all"));
}

/// With data directories, a shadow restarted on its own still answers with what it had: the
/// seed's shadow lost its state on restart.
#[test]
fn a_shadow_restarted_alone_keeps_its_state() {
    let Addrs {
        pport,
        sport,
        purl,
        surl,
    } = addrs();
    let (pdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sdata = sdir.path().to_str().unwrap().to_string();
    let shadow = start_shadow(sport, &purl, &["--data-dir", &sdata]);
    let primary = start_primary(pport, &surl, &["--data-dir", pdir.path().to_str().unwrap()]);
    identity(&primary.url, 9401, vec![file_entry("kept.txt", 1, "kept")]);
    let p = wait_converged(&purl, &surl);
    drop(primary);
    drop(shadow);
    let shadow = start_shadow(sport, &purl, &["--data-dir", &sdata]);
    let s = status(&shadow.url);
    assert_eq!(s["seq"], p["seq"], "{s}");
    assert_eq!(s["digest"], p["digest"]);
    assert_eq!(
        holders(&shadow.url, "kept.txt"),
        vec!["127.0.0.1:9401".to_string()]
    );
}
