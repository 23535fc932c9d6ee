//! A local demo cluster: one index and three peers with sample files on loopback, all in this
//! process. On a terminal it opens the shell of the third peer; otherwise (a pipe, CI) it runs
//! a short scripted tour and exits.
//!
//!     cargo run --release --example cluster

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use nap::index::{IndexConfig, IndexServer};
use nap::peer::{shell, PeerConfig, PeerNode};

fn peer(dir: &Path, index: &str) -> io::Result<PeerNode> {
    PeerNode::start(PeerConfig {
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        index: vec![index.to_string()],
        rescan_interval: Duration::from_secs(2),
        ..PeerConfig::default()
    })
}

fn main() -> io::Result<()> {
    nap::init_logging(log::LevelFilter::Warn);
    let index = IndexServer::start(IndexConfig {
        listen: "127.0.0.1:0".into(),
        heartbeat_interval: Duration::from_secs(1),
        peer_timeout: Duration::from_secs(5),
        ..IndexConfig::default()
    })?;
    let url = index.url();

    let root = tempfile::Builder::new().prefix("nap-demo-").tempdir()?;
    let (alice, bob, you) = (
        root.path().join("alice"),
        root.path().join("bob"),
        root.path().join("you"),
    );
    for dir in [&alice, &bob, &you] {
        fs::create_dir_all(dir)?;
    }
    fs::write(
        alice.join("welcome.txt"),
        "Welcome to nap: the index knows who has what; the bytes travel peer to peer.\n",
    )?;
    fs::write(
        alice.join("napster history.md"),
        "# 1999\nA dorm room, a central index.\n",
    )?;
    // A few MiB, so `get` shows its progress.
    let song: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    fs::write(bob.join("demo song.mp3"), song)?;
    fs::write(
        bob.join("welcome.txt"),
        fs::read(alice.join("welcome.txt"))?,
    )?;

    let nodes = [peer(&alice, &url)?, peer(&bob, &url)?, peer(&you, &url)?];
    let me = nodes[2].peer();
    println!("nap demo cluster: index at {url}");
    for (name, node) in ["alice", "bob", "you"].iter().zip(&nodes) {
        println!(
            "  {name:<5} shares {} at {}",
            node.peer().store.dir().display(),
            node.peer().addr()
        );
    }

    let mut out = io::stdout();
    if io::stdin().is_terminal() {
        println!(
            "\nYou are the third peer. Try: search welcome, get demo song.mp3, update welcome.txt, \
             list, help, quit"
        );
        shell::run(me, io::stdin().lock(), &mut out)?;
    } else {
        println!("\nA short tour (stdin is not a terminal):");
        for command in [
            "search welcome",
            "search song",
            "get demo song.mp3",
            "get welcome.txt",
            "list",
        ] {
            println!("nap> {command}");
            shell::run(me, command.as_bytes(), &mut out)?;
        }
        // `update` opens $EDITOR; with no one at the keyboard the tour's "editor" appends a
        // line to the working copy instead.
        println!("nap> update welcome.txt    (the tour's editor adds a line)");
        shell::update_with(me, "welcome.txt", &mut out, &mut |path| {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| e.to_string())?;
            f.write_all(b"Edited under a write lease: one writer at a time.\n")
                .map_err(|e| e.to_string())
        })?;
        // alice and bob now hold a stale v1; their next heartbeat tells them to fetch v2.
        let caught_up = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < caught_up
            && [&alice, &bob].iter().any(|dir| {
                fs::read(dir.join("welcome.txt")).ok() != fs::read(you.join("welcome.txt")).ok()
            })
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for command in ["search welcome", "status"] {
            println!("nap> {command}");
            shell::run(me, command.as_bytes(), &mut out)?;
        }
    }
    out.flush()?;
    for node in nodes {
        node.stop();
    }
    index.stop();
    Ok(())
}
