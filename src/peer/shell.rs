//! The interactive shell: one command per line (`list`, `search`, `get`, `update`, `status`,
//! `help`, `quit`). It works the same on a terminal and on a pipe, so scripts can drive it;
//! it only parses lines and prints answers, the work is done by [`Peer`].

use std::io::{self, BufRead, IsTerminal, Write};
use std::process::Command;

use super::{GetError, Peer};
use crate::protocol::{validate_file_name, Holder, SearchResult};

const HELP: &str = "\
commands:
  list             files shared from this peer
  search TEXT      find files on the index (exact name first, then keywords)
  get NAME         download NAME from a peer that holds it, verified
  update NAME      edit NAME in $VISUAL/$EDITOR and publish the next version
  status           this peer and the index it talks to
  help             this text
  quit             leave the index and exit";

/// Files at least this large show download progress.
const PROGRESS_FROM: u64 = 1 << 20;

/// Reads commands until end of input or `quit`.
pub fn run(peer: &Peer, input: impl BufRead, out: &mut impl Write) -> io::Result<()> {
    let interactive = io::stdin().is_terminal();
    let prompt = |out: &mut dyn Write| -> io::Result<()> {
        if interactive {
            write!(out, "nap> ")?;
        }
        out.flush()
    };
    prompt(out)?;
    for line in input.lines() {
        let line = line?;
        for notice in peer.take_notices() {
            writeln!(out, "! {notice}")?;
        }
        let line = line.trim();
        let (command, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arg = arg.trim();
        match command {
            "" => {}
            "quit" | "exit" => return Ok(()),
            "help" | "?" => writeln!(out, "{HELP}")?,
            "list" | "ls" => list(peer, out)?,
            "search" | "find" => search(peer, arg, out)?,
            "get" => get(peer, arg, out)?,
            "update" | "edit" => update(peer, arg, out)?,
            "status" => status(peer, out)?,
            other => writeln!(out, "unknown command {other:?}; type help")?,
        }
        prompt(out)?;
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn list(peer: &Peer, out: &mut impl Write) -> io::Result<()> {
    if let Err(e) = peer.rescan() {
        writeln!(out, "could not rescan the folder: {e}")?;
    }
    let files = peer.store.list();
    if files.is_empty() {
        return writeln!(out, "no files shared from {}", peer.store.dir().display());
    }
    writeln!(
        out,
        "{} file(s) in {}:",
        files.len(),
        peer.store.dir().display()
    )?;
    for f in files {
        writeln!(
            out,
            "  {} (v{}, {}, sha256 {})",
            f.name,
            f.version,
            human(f.size),
            &f.sha256[..12]
        )?;
    }
    Ok(())
}

fn addrs(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| h.addr.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(r: &SearchResult) -> String {
    let mut s = format!("{} (v{}, {})", r.name, r.version, human(r.size));
    if r.holders.is_empty() {
        s.push_str(" - no holder of the latest version is online");
    } else {
        s.push_str(&format!(" hosted by {}", addrs(&r.holders)));
    }
    if !r.stale_holders.is_empty() {
        s.push_str(&format!(" (older copies at {})", addrs(&r.stale_holders)));
    }
    s
}

fn search(peer: &Peer, text: &str, out: &mut impl Write) -> io::Result<()> {
    if text.is_empty() {
        return writeln!(out, "usage: search TEXT");
    }
    match peer
        .index
        .search(text, crate::protocol::DEFAULT_SEARCH_LIMIT)
    {
        Ok(found) => match found.results.as_slice() {
            [] => writeln!(out, "No match for {text:?}"),
            [one] => writeln!(out, "Found 1 match: {}", describe(one)),
            many => {
                writeln!(out, "Found {} matches:", many.len())?;
                for r in many {
                    writeln!(out, "  {}", describe(r))?;
                }
                Ok(())
            }
        },
        Err(e) => writeln!(out, "search failed: {e}"),
    }
}

/// Downloads `name` and reports how it went. Returns whether the file is now here.
fn fetch(peer: &Peer, name: &str, out: &mut impl Write) -> io::Result<bool> {
    let mut shown = 0u64;
    // Progress goes to stderr, and only to a terminal: a script reading output sees results.
    let show = io::stderr().is_terminal();
    let mut progress = |done: u64, total: u64| {
        if show && total >= PROGRESS_FROM && (done - shown >= total / 50 || done == total) {
            shown = done;
            eprint!(
                "\r  {:3}% {} of {}",
                done * 100 / total,
                human(done),
                human(total)
            );
            if done == total {
                eprintln!();
            }
        }
    };
    match peer.get(name, &mut progress) {
        Ok(fetched) => {
            writeln!(
                out,
                "Downloaded {} v{} ({}) from {}, sha256 verified, saved to {}",
                fetched.meta.name,
                fetched.meta.version,
                human(fetched.meta.size),
                fetched.source,
                peer.store.dir().join(&fetched.meta.name).display()
            )?;
            if let Some(e) = fetched.announce_error {
                writeln!(out, "  (could not tell the index yet, will retry: {e})")?;
            }
            Ok(true)
        }
        Err(e @ GetError::AlreadyCurrent { .. }) => {
            writeln!(out, "{name}: {e}; nothing to do")?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "get {name} failed: {e}")?;
            Ok(false)
        }
    }
}

fn checked_name<'a>(
    arg: &'a str,
    usage: &str,
    out: &mut impl Write,
) -> io::Result<Option<&'a str>> {
    if arg.is_empty() {
        writeln!(out, "usage: {usage}")?;
        return Ok(None);
    }
    if let Err(why) = validate_file_name(arg) {
        writeln!(out, "{arg:?} is not a valid file name: {why}")?;
        return Ok(None);
    }
    Ok(Some(arg))
}

fn get(peer: &Peer, arg: &str, out: &mut impl Write) -> io::Result<()> {
    if let Some(name) = checked_name(arg, "get NAME", out)? {
        fetch(peer, name, out)?;
    }
    Ok(())
}

/// Opens the local copy in the user's editor (fetching it first if we do not hold it), then
/// publishes the next version if the content changed.
fn update(peer: &Peer, arg: &str, out: &mut impl Write) -> io::Result<()> {
    let Some(name) = checked_name(arg, "update NAME", out)? else {
        return Ok(());
    };
    if peer.store.get(name).is_none() && !fetch(peer, name, out)? {
        return Ok(());
    }
    let Some(before) = peer.store.get(name) else {
        return writeln!(out, "{name} is not here");
    };
    let Some(path) = peer.store.path_of(name) else {
        return writeln!(out, "{name} is not a valid file name");
    };
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    out.flush()?;
    // Through the shell, so EDITOR may carry arguments ("code --wait").
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return writeln!(out, "the editor exited with {s}; nothing published"),
        Err(e) => return writeln!(out, "could not start the editor {editor:?}: {e}"),
    }
    match peer.sync_now() {
        Ok(()) => match peer.store.get(name) {
            Some(after) if after.version > before.version => writeln!(
                out,
                "Published {name} v{} ({}, sha256 {})",
                after.version,
                human(after.size),
                &after.sha256[..12]
            ),
            Some(_) => writeln!(out, "{name} is unchanged; nothing published"),
            None => writeln!(out, "{name} was removed"),
        },
        Err(e) => writeln!(out, "could not publish the change: {e}"),
    }
}

fn status(peer: &Peer, out: &mut impl Write) -> io::Result<()> {
    let id = peer.identity();
    writeln!(
        out,
        "peer {} serving {} at {}",
        id.as_ref()
            .map_or("(not registered)", |i| i.peer_id.as_str()),
        peer.store.dir().display(),
        peer.addr()
    )?;
    writeln!(out, "files shared: {}", peer.store.list().len())?;
    writeln!(out, "index servers: {}", peer.index.servers().join(", "))?;
    match peer.index.status() {
        Ok(s) => writeln!(
            out,
            "index: {} with {} peer(s) and {} file(s), seq {}",
            s.role, s.peers, s.files, s.seq
        ),
        Err(e) => writeln!(out, "index: unreachable ({e})"),
    }
}
