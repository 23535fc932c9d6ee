//! `GET /`: a status page for people. Plain HTML with its styles inline, no script and no
//! external asset; it reloads itself every few seconds. Tables are cut at `ROWS` rows, so a
//! page over a large index stays small and costs one pass over the files under the read lock.

use std::collections::BinaryHeap;
use std::fmt::Write;

use super::Index;

/// Rows shown per table.
const ROWS: usize = 200;
/// Seconds between reloads.
const REFRESH_SECS: u32 = 2;

/// `text` with the characters HTML gives meaning to escaped: names and addresses come from
/// peers and may hold anything the file-name rule lets through.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

struct FileRow {
    name: String,
    version: u64,
    size: u64,
    current: usize,
    stale: usize,
}

struct PeerRow {
    id: String,
    addr: String,
    seen_ms_ago: u64,
    files: usize,
    bytes: u64,
}

pub fn render(index: &Index) -> String {
    let now = index.now();
    let config = index.config();
    let want = config.replication_factor;
    let status = index.metrics_snapshot();
    let (peers, files, leases, epoch) = {
        let state = index.read();
        // The first ROWS names in name order, without sorting them all.
        let mut first: BinaryHeap<&str> = BinaryHeap::with_capacity(ROWS + 1);
        for name in state.file_names() {
            first.push(name);
            if first.len() > ROWS {
                first.pop();
            }
        }
        let files: Vec<FileRow> = first
            .into_sorted_vec()
            .into_iter()
            .filter_map(|name| {
                let entry = state.file(name)?;
                let (version, info) = entry.latest()?;
                let current = entry.holders.values().filter(|v| **v == version).count();
                Some(FileRow {
                    name: name.to_string(),
                    version,
                    size: info.size,
                    current,
                    stale: entry.holders.len() - current,
                })
            })
            .filter(|f| f.current + f.stale > 0)
            .collect();
        let mut peers: Vec<PeerRow> = state
            .peer_ids()
            .filter_map(|id| {
                let peer = state.peer(id)?;
                let bytes = peer
                    .files
                    .iter()
                    .filter_map(|name| {
                        let entry = state.file(name)?;
                        let held = entry.holders.get(id)?;
                        entry.versions.get(held).map(|v| v.size)
                    })
                    // Sizes are what peers claim, up to u64::MAX each.
                    .fold(0u64, u64::saturating_add);
                Some(PeerRow {
                    id: id.to_string(),
                    addr: peer.addr.clone(),
                    seen_ms_ago: now.saturating_sub(peer.last_seen_ms),
                    files: peer.files.len(),
                    bytes,
                })
            })
            .collect();
        peers.sort_by(|a, b| a.addr.cmp(&b.addr).then_with(|| a.id.cmp(&b.id)));
        let leases: Vec<(String, String, u64)> = state
            .leases()
            .canonical()
            .into_values()
            .take(ROWS)
            .map(|l| (l.file.clone(), l.peer_id.clone(), l.remaining_ms(now)))
            .collect();
        (peers, files, leases, state.epoch().to_string())
    };
    let (under, under_files) = index.under_replicated(ROWS);

    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>nap index ({role})</title><style>\
         body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\
         th{{background:#f3f3f3}} td.n{{text-align:right}}\
         tr.under td{{background:#fde2e1}} .note{{color:#666}}\
         </style></head><body>\n",
        role = status.role
    );
    let _ = writeln!(
        h,
        "<h1>nap index: <span id=\"role\">{}</span></h1>",
        status.role
    );
    let _ = writeln!(
        h,
        "<p id=\"summary\">up {uptime}, seq <b id=\"seq\">{seq}</b>, epoch {epoch}; \
         <b id=\"peers-count\">{peers}</b> peers, <b id=\"files-count\">{files}</b> files, \
         {leases} leases; replication factor {want}, <b id=\"under-count\">{under}</b> \
         under-replicated, {tasks} copies in flight.</p>",
        uptime = seconds(status.uptime.as_millis() as u64),
        seq = status.seq,
        epoch = esc(&epoch),
        peers = status.peers,
        files = status.files,
        leases = status.leases,
        tasks = status.tasks.in_flight,
    );
    match (&status.since_sync, status.shadows.is_empty()) {
        (Some(ago), _) => {
            let _ = writeln!(
                h,
                "<p id=\"sync\">read-only shadow; last push from the primary {:.1} s ago.</p>",
                ago
            );
        }
        (None, false) => {
            h.push_str("<h2>Shadows</h2><table id=\"shadows\"><tr><th>shadow</th><th>lag (ops)</th><th>last ack</th></tr>\n");
            for (url, lag, ago) in &status.shadows {
                let ago = ago.map_or("never".to_string(), |s| format!("{s:.1} s ago"));
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td class=\"n\">{lag}</td><td>{ago}</td></tr>",
                    esc(url)
                );
            }
            h.push_str("</table>\n");
        }
        (None, true) => {}
    }
    if let Some(c) = &status.connections {
        let _ = writeln!(
            h,
            "<p id=\"connections\">connections: {open} open, limit {max}; requests in \
             flight: {busy}; refused: {refused}; idle connections closed: {closed}.</p>",
            open = c.open,
            busy = c.in_flight,
            max = c.max,
            refused = c.refused,
            closed = c.closed_idle + c.closed_over_limit,
        );
    }

    let _ = writeln!(
        h,
        "<h2>Peers</h2><table id=\"peers\"><tr><th>peer</th><th>address</th>\
         <th>last seen</th><th>files</th><th>bytes</th></tr>"
    );
    for p in peers.iter().take(ROWS) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{} ago</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            esc(&p.id),
            esc(&p.addr),
            seconds(p.seen_ms_ago),
            p.files,
            p.bytes
        );
    }
    h.push_str("</table>\n");
    if peers.len() > ROWS {
        let _ = writeln!(
            h,
            "<p class=\"note\">{ROWS} of {} peers shown.</p>",
            peers.len()
        );
    }

    if under > 0 {
        let _ = writeln!(
            h,
            "<h2>Under-replicated</h2><table id=\"under\"><tr><th>file</th><th>version</th>\
             <th>up-to-date holders</th><th>copies in flight</th></tr>"
        );
        for u in &under_files {
            let _ = writeln!(
                h,
                "<tr class=\"under\"><td>{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{} / {want}</td><td class=\"n\">{}</td></tr>",
                esc(&u.name),
                u.version,
                u.holders,
                u.in_flight
            );
        }
        h.push_str("</table>\n");
    }

    let _ = writeln!(
        h,
        "<h2>Files</h2><table id=\"files\"><tr><th>file</th><th>version</th><th>size</th>\
         <th>up-to-date holders / R</th><th>stale holders</th></tr>"
    );
    for f in &files {
        let class = if f.current < want {
            " class=\"under\""
        } else {
            ""
        };
        let _ = writeln!(
            h,
            "<tr{class}><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{} / {want}</td><td class=\"n\">{}</td></tr>",
            esc(&f.name),
            f.version,
            f.size,
            f.current,
            f.stale
        );
    }
    h.push_str("</table>\n");
    if status.files > files.len() {
        let _ = writeln!(
            h,
            "<p class=\"note\">The first {} of {} files by name.</p>",
            files.len(),
            status.files
        );
    }

    let _ = writeln!(
        h,
        "<h2>Leases</h2><table id=\"leases\"><tr><th>file</th><th>holder</th>\
         <th>remaining</th></tr>"
    );
    for (file, holder, remaining) in &leases {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(file),
            esc(holder),
            seconds(*remaining)
        );
    }
    h.push_str("</table>\n");
    let _ = writeln!(
        h,
        "<p class=\"note\">Reloads every {REFRESH_SECS} s. JSON: <a href=\"/status\">/status</a>, \
         Prometheus: <a href=\"/metrics\">/metrics</a>.</p></body></html>"
    );
    h
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn names_cannot_inject_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
