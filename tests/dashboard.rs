//! The status page (`GET /`) in a real headless browser: Debian's chromium loads it from a
//! running primary/shadow pair and the DOM it built must show what the cluster holds. Skips,
//! saying why, when chromium is not installed (`.ci/run` installs it when it can).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The DOM chromium built for `url`, serialized.
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > DEADLINE * 2 {
            let _ = child.kill();
            panic!("chromium did not finish loading {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in a serialized DOM (up to its first tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"))
        + id.len()
        + 6;
    let end = dom[start..].find('<').map_or(dom.len(), |n| start + n);
    &dom[start..end]
}

#[test]
fn the_status_page_shows_the_cluster_in_a_browser() {
    if !Path::new(CHROMIUM).is_file() {
        eprintln!("SKIPPED: {CHROMIUM} is not installed (apt-get install chromium)");
        return;
    }
    let (_primary, _shadow, Addrs { purl, surl, .. }) = start_pair(
        &["--replication-factor", "2", "--max-connections", "100"],
        &[],
    );
    // Two peers: one file both hold, one only the first holds (below R), and a name that
    // would be markup if the page did not escape it.
    let a = identity(
        &purl,
        9701,
        vec![
            file_entry("both.txt", 1, "b"),
            file_entry("lonely.txt", 1, "l"),
            file_entry("<i>x.txt", 1, "x"),
        ],
    );
    let _b = identity(&purl, 9702, vec![file_entry("both.txt", 1, "b")]);
    assert_eq!(lease(&purl, &a, "both.txt").status, 200);
    poll_until("the planner has counted what is below R", || {
        (get(&format!("{purl}/status")).json()["under_replicated"] == 2).then_some(())
    });

    let dom = dump_dom(&format!("{purl}/"));
    assert_eq!(text_of(&dom, "role"), "primary");
    assert_eq!(text_of(&dom, "peers-count"), "2");
    assert_eq!(text_of(&dom, "files-count"), "3");
    assert_eq!(text_of(&dom, "under-count"), "2");
    for shown in ["127.0.0.1:9701", "127.0.0.1:9702", &surl, &a.peer_id] {
        assert!(dom.contains(shown), "{shown} not on the page:\n{dom}");
    }
    // The file tables: both.txt at R, lonely.txt highlighted below it.
    assert!(
        dom.contains("<td>both.txt</td><td class=\"n\">1</td>"),
        "{dom}"
    );
    let lonely = dom.find("<td>lonely.txt</td>").expect("lonely.txt listed");
    let row_start = dom[..lonely].rfind("<tr").unwrap();
    assert!(dom[row_start..lonely].contains("class=\"under\""), "{dom}");
    // The hostile name is text, not an element.
    assert!(dom.contains("&lt;i&gt;x.txt"), "{dom}");
    assert!(!dom.contains("<i>x.txt"), "{dom}");
    // The connection counts, with the limit; the page's own request is in flight (no
    // peer process holds a long poll here).
    let connections = text_of(&dom, "connections");
    assert!(
        connections.contains("limit 100; requests in flight: 1;"),
        "{connections}"
    );
    // The lease, with its holder.
    let leases = &dom[dom.find("id=\"leases\"").unwrap()..];
    assert!(
        leases.contains("<td>both.txt</td>") && leases.contains(&a.peer_id),
        "{leases}"
    );

    // The shadow's page says what it is and when it last heard from the primary.
    poll_until("the shadow has the primary's seq", || {
        let p = get(&format!("{purl}/status")).json()["seq"].clone();
        (get(&format!("{surl}/status")).json()["seq"] == p).then_some(())
    });
    let dom = dump_dom(&format!("{surl}/"));
    assert_eq!(text_of(&dom, "role"), "shadow");
    assert_eq!(text_of(&dom, "peers-count"), "2", "{dom}");
    assert!(
        text_of(&dom, "sync").contains("last push from the primary"),
        "{dom}"
    );
}
