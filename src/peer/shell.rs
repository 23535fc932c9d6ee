//! The interactive shell: one command per line (`list`, `search`, `get`, `update`, `status`,
//! `help`, `quit`). It works the same on a terminal and on a pipe, so scripts can drive it;
//! it only parses lines and prints answers, the work is done by [`Peer`].

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::Command;

use super::edit::{EditOutcome, EditorError};
use super::{GetError, Peer};
use crate::protocol::{validate_file_name, Holder, SearchResult};

const HELP: &str = "\
commands:
  list             files shared from this peer
  search TEXT      find files on the index (exact name first, then keywords)
  get NAME         download NAME from a peer that holds it, verified
  update NAME      take NAME's write lease, edit it in $VISUAL/$EDITOR, publish
                   the next version (or release the lease if nothing changed)
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
            [] if found.total == 0 => writeln!(out, "No match for {text:?}"),
            [] => writeln!(
                out,
                "No match listed for {text:?}, of {}: the index gave up ranking them; \
                 add words to narrow the search",
                matches(found.total, found.total_exact)
            ),
            [one] if found.total <= 1 => writeln!(out, "Found 1 match: {}", describe(one)),
            many => {
                let shown = many.len() as u64;
                if found.total <= shown {
                    // All of them (or an index too old to count them).
                    writeln!(out, "Found {shown} matches:")?;
                } else {
                    writeln!(
                        out,
                        "Found {shown} of {}, best first (add words to narrow the search):",
                        matches(found.total, found.total_exact)
                    )?;
                }
                for r in many {
                    writeln!(out, "  {}", describe(r))?;
                }
                Ok(())
            }
        },
        Err(e) => writeln!(out, "search failed: {e}"),
    }
}

/// "100,000 matches", or "at least 100,000 matches" when the index stopped counting.
pub fn matches(total: u64, exact: bool) -> String {
    let bound = if exact { "" } else { "at least " };
    let noun = if total == 1 { "match" } else { "matches" };
    format!("{bound}{} {noun}", thousands(total))
}

/// `n` with its digits in groups of three: 100000 -> "100,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A download progress line for large files. It goes to stderr, and only to a terminal: a
/// script reading the output sees results only.
fn progress_bar() -> impl FnMut(u64, u64) {
    let mut shown = 0u64;
    let show = io::stderr().is_terminal();
    move |done: u64, total: u64| {
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
    }
}

/// Downloads `name` and reports how it went. Returns whether the file is now here.
fn fetch(peer: &Peer, name: &str, out: &mut impl Write) -> io::Result<bool> {
    let mut progress = progress_bar();
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

/// Publishes the next version of `name`: takes its lease, opens a working copy in the user's
/// editor (fetching the latest version first if needed), and publishes what comes back.
fn update(peer: &Peer, arg: &str, out: &mut impl Write) -> io::Result<()> {
    let Some(name) = checked_name(arg, "update NAME", out)? else {
        return Ok(());
    };
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let mut run_editor = |path: &Path| -> Result<(), EditorError> {
        // Through the shell, so EDITOR may carry arguments ("code --wait").
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(path)
            .status();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(EditorError::Exited(s)),
            Err(error) => Err(EditorError::NotStarted {
                editor: editor.clone(),
                error,
            }),
        }
    };
    update_with(peer, name, out, &mut run_editor)
}

/// `update` with the editor given as a function of the working copy's path (the demo's
/// scripted tour edits without a terminal this way). Its error may be an [`EditorError`] or
/// anything that becomes one, such as a message.
pub fn update_with<E: Into<EditorError>>(
    peer: &Peer,
    name: &str,
    out: &mut impl Write,
    run_editor: &mut dyn FnMut(&Path) -> Result<(), E>,
) -> io::Result<()> {
    let mut progress = progress_bar();
    let outcome = {
        let mut say = |line: String| {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        };
        let mut editor = |path: &Path| run_editor(path).map_err(Into::into);
        peer.edit(name, &mut say, &mut progress, &mut editor)
    };
    match outcome {
        Ok(EditOutcome::Published { meta }) => writeln!(
            out,
            "Published {name} v{} ({}, sha256 {})",
            meta.version,
            human(meta.size),
            &meta.sha256[..12]
        ),
        Ok(EditOutcome::Unchanged { version }) => writeln!(
            out,
            "{name} is unchanged (still v{version}); lease released, nothing published"
        ),
        Ok(EditOutcome::Abandoned { why }) => {
            writeln!(out, "{why}; nothing published, lease released")
        }
        Ok(EditOutcome::NotPublished { why, kept }) => writeln!(
            out,
            "{name} was NOT published: {why}\n  your edit is kept at {}",
            kept.display()
        ),
        Ok(EditOutcome::InDoubt { why, kept }) => writeln!(
            out,
            "{name} was NOT confirmed: {why}\n  your edit is kept at {}; nap asks the index \
             again when it answers and puts the edit in place if it was published",
            kept.display()
        ),
        Err(e) => writeln!(out, "update {name}: {e}"),
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
    let report = peer.status_report();
    writeln!(out, "files shared: {}", report.files)?;
    writeln!(
        out,
        "uploads: {} in progress, {} served ({}); downloads: {} in progress, {} done",
        report.uploads_active,
        report.uploads_total,
        human(report.bytes_served),
        report.downloads_active,
        report.downloads_total
    )?;
    let current = peer.index.current();
    let servers: Vec<String> = peer
        .index
        .servers()
        .iter()
        .map(|s| {
            if s == current {
                format!("{s} (in use)")
            } else {
                s.clone()
            }
        })
        .collect();
    writeln!(out, "index servers: {}", servers.join(", "))?;
    match peer.index.status() {
        Ok(s) => writeln!(
            out,
            "index: {} {} with {} peer(s) and {} file(s), seq {}",
            s.role,
            peer.index.current(),
            s.peers,
            s.files,
            s.seq
        ),
        Err(e) => writeln!(out, "index: unreachable ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_counts_read_well() {
        assert_eq!(matches(0, true), "0 matches");
        assert_eq!(matches(1, true), "1 match");
        assert_eq!(matches(999, true), "999 matches");
        assert_eq!(matches(1_000, true), "1,000 matches");
        assert_eq!(matches(100_000, true), "100,000 matches");
        assert_eq!(matches(1_234_567, false), "at least 1,234,567 matches");
    }
}
