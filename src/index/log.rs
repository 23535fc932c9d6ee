//! Durability: the index's op stream on disk, plus snapshots, in `--data-dir`.
//!
//! Every op applied to the state is appended (under the state's write lock, so in sequence
//! order) to an in-memory queue; a request that changed the state waits until its op is on
//! disk before it is answered. Waiting requests share fsyncs (group commit): whoever finds no
//! write in progress writes everything queued and fsyncs once for all of them.
//!
//! Layout of the directory:
//! - `FORMAT`: the format line and the epoch of the history kept here;
//! - `snapshot.json`: the state at some sequence number, replaced atomically;
//! - `log-<first seq>.nap`: segments of records, each `len (u32 LE) | checksum (the first 8
//!   bytes of the SHA-256 of the payload) | payload (a JSON `SyncOp`)`.
//!
//! Start-up loads the snapshot and replays the records after it. A torn last record (a crash
//! mid-write) is cut off with a warning; damage anywhere else stops the start with the file
//! and offset, since skipping it would silently lose acknowledged writes.

use crate::threads::lock;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::state::Snapshot;
use super::sync::SyncOp;

/// The first line of `FORMAT`; another line means another format, which is refused.
pub const FORMAT: &str = "nap-index data format 1";
const FORMAT_FILE: &str = "FORMAT";
const SNAPSHOT_FILE: &str = "snapshot.json";
const LOCK_FILE: &str = "LOCK";
const HEADER: usize = 12;
/// A record longer than this is damage, not data (no op comes near it).
const MAX_RECORD: usize = 1 << 30;

/// When the log reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before each change is acknowledged (waiting requests share one fsync).
    Always,
    /// Every few milliseconds in the background: a crash can lose the last moments' writes.
    Batch,
    /// Never explicitly: the OS writes when it likes; a power cut can lose much more.
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> Result<Fsync, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "batch" => Ok(Fsync::Batch),
            "never" => Ok(Fsync::Never),
            _ => Err(format!("--fsync must be always, batch or never, not {s:?}")),
        }
    }
}

/// What was on disk at start-up.
pub struct Recovered {
    pub epoch: String,
    pub snapshot: Option<Snapshot>,
    /// Records after the snapshot, in order.
    pub ops: Vec<SyncOp>,
}

pub struct DiskLog {
    dir: PathBuf,
    /// Held (locked) while the log is open: two indexes on one directory would interleave.
    _lock: File,
    fsync: Fsync,
    inner: Mutex<Inner>,
    written: Condvar,
    /// How long each write + fsync of a batch took, for `/metrics`.
    fsync_times: Mutex<super::metrics::Histogram>,
}

struct Inner {
    /// Applied, not yet written.
    queue: Vec<SyncOp>,
    segment: File,
    /// Records written since the last snapshot.
    since_snapshot: u64,
    /// Highest seq on disk (fsynced, or written when fsync is off).
    durable: u64,
    /// Someone is writing right now; others wait for them.
    writing: bool,
    /// A write failed: the log cannot promise anything any more.
    failed: Option<String>,
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

fn segment_name(first_seq: u64) -> String {
    format!("log-{first_seq:020}.nap")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segments in `dir`, oldest first, with their first sequence numbers.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_prefix("log-")
            .and_then(|rest| rest.strip_suffix(".nap"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads the records of one segment. In the last segment a torn end is cut off (the file is
/// truncated to the last whole record); anywhere else a bad record is an error.
fn read_segment(path: &Path, last: bool) -> io::Result<Vec<SyncOp>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut ops = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let damage = |why: &str| {
            invalid(format!(
                "{}: damaged record at byte offset {at}: {why}",
                path.display()
            ))
        };
        let rest = &bytes[at..];
        let whole = rest.len() >= HEADER && {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            len <= MAX_RECORD && rest.len() >= HEADER + len
        };
        if !whole {
            if last {
                log::warn!(
                    "{}: cutting off a torn record at byte offset {at} ({} bytes)",
                    path.display(),
                    rest.len()
                );
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(at as u64)?;
                break;
            }
            return Err(damage("cut short"));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let payload = &rest[HEADER..HEADER + len];
        if rest[4..HEADER] != checksum(payload) {
            // A bad checksum on the very last record is a write the crash interrupted.
            if last && at + HEADER + len == bytes.len() {
                log::warn!(
                    "{}: cutting off a torn record at byte offset {at}",
                    path.display()
                );
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(at as u64)?;
                break;
            }
            return Err(damage("checksum mismatch"));
        }
        let op: SyncOp =
            serde_json::from_slice(payload).map_err(|e| damage(&format!("unreadable: {e}")))?;
        ops.push(op);
        at += HEADER + len;
    }
    Ok(ops)
}

impl DiskLog {
    /// Opens (creating if empty) the data directory and reads what it holds. A directory of
    /// another format, or with damage other than a torn last record, is refused.
    pub fn open(dir: &Path, fsync: Fsync, new_epoch: &str) -> io::Result<(DiskLog, Recovered)> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        if let Err(e) = lock.try_lock() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another nap-index ({e})", dir.display()),
            ));
        }
        let format_path = dir.join(FORMAT_FILE);
        let epoch = match fs::read_to_string(&format_path) {
            Ok(text) => {
                let mut lines = text.lines();
                if lines.next() != Some(FORMAT) {
                    return Err(invalid(format!(
                        "{}: not a nap-index data directory of this version (expected {FORMAT:?})",
                        dir.display()
                    )));
                }
                lines
                    .next()
                    .and_then(|l| l.strip_prefix("epoch "))
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("{}: no epoch", format_path.display())))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let foreign = fs::read_dir(dir)?
                    .filter_map(Result::ok)
                    .any(|e| e.file_name() != LOCK_FILE);
                if foreign {
                    return Err(invalid(format!(
                        "{} is not empty and has no {FORMAT_FILE}: not a nap-index data directory",
                        dir.display()
                    )));
                }
                write_atomically(
                    dir,
                    FORMAT_FILE,
                    format!("{FORMAT}\nepoch {new_epoch}\n").as_bytes(),
                )?;
                new_epoch.to_string()
            }
            Err(e) => return Err(e),
        };
        let snapshot: Option<Snapshot> = match fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                invalid(format!(
                    "{}: unreadable snapshot: {e}",
                    dir.join(SNAPSHOT_FILE).display()
                ))
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let found = segments(dir)?;
        // Only the newest segment with records can end in a torn one (empty segments are
        // opened after a start and may follow it).
        let mut newest = 0;
        for (i, (_, path)) in found.iter().enumerate() {
            if fs::metadata(path)?.len() > 0 {
                newest = i;
            }
        }
        let mut ops: Vec<SyncOp> = Vec::new();
        for (i, (_, path)) in found.iter().enumerate() {
            for op in read_segment(path, i >= newest)? {
                if op.seq <= after {
                    continue;
                }
                let expected = ops.last().map_or(after + 1, |o| o.seq + 1);
                if op.seq != expected {
                    return Err(invalid(format!(
                        "{}: op {} where op {expected} was due: the log has a hole",
                        path.display(),
                        op.seq
                    )));
                }
                ops.push(op);
            }
        }
        let last = ops.last().map_or(after, |o| o.seq);
        // New records go to a fresh segment: an existing one may end in a cut-off record.
        let segment = create_segment(dir, last + 1)?;
        let log = DiskLog {
            dir: dir.to_path_buf(),
            _lock: lock,
            fsync,
            inner: Mutex::new(Inner {
                queue: Vec::new(),
                segment,
                since_snapshot: ops.len() as u64,
                durable: last,
                writing: false,
                failed: None,
            }),
            written: Condvar::new(),
            fsync_times: Mutex::default(),
        };
        Ok((
            log,
            Recovered {
                epoch,
                snapshot,
                ops,
            },
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Queues an applied op. Called under the state's write lock, so the queue is in order.
    pub fn append(&self, op: SyncOp) {
        self.lock().queue.push(op);
    }

    /// Returns once op `seq` is on disk (with `--fsync always`; at once otherwise). One caller
    /// writes and fsyncs everything queued while the others wait for it.
    pub fn wait_durable(&self, seq: u64) -> io::Result<()> {
        if self.fsync != Fsync::Always {
            return self.failure();
        }
        let mut inner = self.lock();
        loop {
            if let Some(why) = &inner.failed {
                return Err(io::Error::other(why.clone()));
            }
            if inner.durable >= seq {
                return Ok(());
            }
            if inner.writing {
                inner = self.written.wait(inner).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            inner = self.write_queued(inner, true);
        }
    }

    /// Writes what is queued (and fsyncs unless `--fsync never`). For the background flusher.
    pub fn flush(&self) -> io::Result<()> {
        let inner = self.lock();
        if inner.writing || inner.queue.is_empty() {
            drop(inner);
            return self.failure();
        }
        drop(self.write_queued(inner, self.fsync != Fsync::Never));
        self.failure()
    }

    /// The durations of the log's writes with fsync so far.
    pub fn fsync_times(&self) -> super::metrics::Histogram {
        lock(&self.fsync_times).clone()
    }

    /// Writes what is queued and fsyncs the log whatever `--fsync` says: for a clean stop.
    pub fn sync_all(&self) -> io::Result<()> {
        let inner = self.lock();
        let inner = if inner.writing {
            self.written
                .wait_while(inner, |i| i.writing)
                .unwrap_or_else(|e| e.into_inner())
        } else {
            inner
        };
        let inner = self.write_queued(inner, true);
        let synced = inner.segment.sync_data();
        drop(inner);
        synced?;
        self.failure()
    }

    fn failure(&self) -> io::Result<()> {
        match &self.lock().failed {
            Some(why) => Err(io::Error::other(why.clone())),
            None => Ok(()),
        }
    }

    /// Takes the queue, writes it outside the lock, and records the outcome.
    fn write_queued<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        sync: bool,
    ) -> MutexGuard<'a, Inner> {
        let batch = std::mem::take(&mut inner.queue);
        let Some(last) = batch.last().map(|o| o.seq) else {
            return inner;
        };
        inner.writing = true;
        let file = inner.segment.try_clone();
        drop(inner);
        let started = std::time::Instant::now();
        let written = file.and_then(|mut file| {
            let mut buf = Vec::new();
            for op in &batch {
                let payload = serde_json::to_vec(op).map_err(io::Error::other)?;
                buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                buf.extend_from_slice(&checksum(&payload));
                buf.extend_from_slice(&payload);
            }
            file.write_all(&buf)?;
            if sync {
                file.sync_data()?;
            }
            Ok(())
        });
        if sync && written.is_ok() {
            lock(&self.fsync_times).observe(started.elapsed());
        }
        let mut inner = self.lock();
        inner.writing = false;
        match written {
            Ok(()) => {
                inner.durable = inner.durable.max(last);
                inner.since_snapshot += batch.len() as u64;
            }
            Err(e) => {
                log::error!(
                    "the op log in {} cannot be written: {e}",
                    self.dir.display()
                );
                inner.failed = Some(format!("the index cannot write its log: {e}"));
            }
        }
        self.written.notify_all();
        inner
    }

    /// Records written since the last snapshot: the sweeper snapshots past a threshold.
    pub fn since_snapshot(&self) -> u64 {
        self.lock().since_snapshot
    }

    /// Starts a new segment for the ops after the current ones; returns the last seq in the
    /// old segments. Everything queued is written first.
    pub fn rotate(&self) -> io::Result<u64> {
        let mut inner = self.lock();
        while inner.writing {
            inner = self.written.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        let mut inner = self.write_queued(inner, self.fsync != Fsync::Never);
        if let Some(why) = &inner.failed {
            return Err(io::Error::other(why.clone()));
        }
        let last = inner.durable;
        inner.segment = create_segment(&self.dir, last + 1)?;
        Ok(last)
    }

    /// Writes a snapshot (`json`, the state at `seq`) atomically and drops the segments it
    /// makes redundant (all of whose records are at or below `covered`, as returned by
    /// `rotate` before the snapshot was taken).
    pub fn save_snapshot(&self, json: &[u8], seq: u64, covered: u64) -> io::Result<()> {
        write_atomically(&self.dir, SNAPSHOT_FILE, json)?;
        // `rotate` began a new segment at `covered + 1`: the ones before it hold nothing newer.
        for (first, path) in segments(&self.dir)? {
            if first <= covered && covered <= seq {
                fs::remove_file(path)?;
            }
        }
        sync_dir(&self.dir)?;
        let mut inner = self.lock();
        inner.since_snapshot = inner.durable.saturating_sub(seq);
        Ok(())
    }

    /// Replaces everything with `snapshot` (a shadow taking its primary's state).
    pub fn reset(&self, snapshot: &Snapshot) -> io::Result<()> {
        let mut inner = self.lock();
        while inner.writing {
            inner = self.written.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner.queue.clear();
        let bytes = serde_json::to_vec(snapshot).map_err(io::Error::other)?;
        write_atomically(&self.dir, SNAPSHOT_FILE, &bytes)?;
        write_atomically(
            &self.dir,
            FORMAT_FILE,
            format!("{FORMAT}\nepoch {}\n", snapshot.epoch).as_bytes(),
        )?;
        for (_, path) in segments(&self.dir)? {
            fs::remove_file(path)?;
        }
        inner.segment = create_segment(&self.dir, snapshot.seq + 1)?;
        inner.durable = snapshot.seq;
        inner.since_snapshot = 0;
        Ok(())
    }
}

fn create_segment(dir: &Path, first_seq: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(segment_name(first_seq)))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Temp file, fsync, rename, fsync the directory: a crash leaves the old or the new file.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// The log keeper thread: writes out what no request waits for (sweeps, and everything with
/// `--fsync batch` or `never`) and snapshots the state, dropping the log before it, once the
/// log since the last snapshot holds `snapshot_every` ops and at least as many as the state
/// has files (so a large state, whose encoding holds the read lock longest, is snapshotted
/// less often). Loops until `stop` closes, then writes what is left.
pub fn keep(index: &super::Index, stop: &crossbeam_channel::Receiver<()>) {
    let Some(disk) = index.disk() else {
        return;
    };
    let every = match disk.fsync() {
        Fsync::Batch => std::time::Duration::from_millis(5),
        Fsync::Always | Fsync::Never => std::time::Duration::from_millis(50),
    };
    loop {
        let stopping = !matches!(
            stop.recv_timeout(every),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        );
        if let Err(e) = disk.flush() {
            log::error!("{e}");
        }
        if stopping {
            return;
        }
        let due = index
            .config()
            .snapshot_every
            .max(1)
            .max(index.read().file_count() as u64);
        if disk.since_snapshot() >= due {
            let started = std::time::Instant::now();
            let saved = disk.rotate().and_then(|covered| {
                // Encoded under the read lock (no copy), written outside it.
                let (json, seq) = {
                    let state = index.read();
                    (
                        state.snapshot_json().map_err(io::Error::other)?,
                        state.seq(),
                    )
                };
                disk.save_snapshot(&json, seq, covered).map(|()| seq)
            });
            match saved {
                Ok(seq) => log::info!(
                    "snapshot at seq {seq} written in {:.0} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ),
                Err(e) => log::error!("snapshot failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::state::{IndexState, Op};

    fn op(seq: u64) -> SyncOp {
        SyncOp {
            seq,
            at: seq * 10,
            op: Op::Prune {
                peers: vec![format!("p{seq}")],
            },
        }
    }

    fn write(log: &DiskLog, seqs: std::ops::RangeInclusive<u64>) {
        let last = *seqs.end();
        for seq in seqs {
            log.append(op(seq));
        }
        log.wait_durable(last).unwrap();
    }

    fn seqs(r: &Recovered) -> Vec<u64> {
        r.ops.iter().map(|o| o.seq).collect()
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let all = segments(dir).unwrap();
        // The newest segment is the empty one a reopen starts; the records are before it.
        all.iter()
            .rev()
            .find(|(_, p)| fs::metadata(p).unwrap().len() > 0)
            .unwrap()
            .1
            .clone()
    }

    #[test]
    fn what_was_acknowledged_comes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, found) = DiskLog::open(tmp.path(), Fsync::Always, "e1").unwrap();
        assert!(found.ops.is_empty() && found.snapshot.is_none());
        write(&log, 1..=5);
        drop(log);
        let (log, found) = DiskLog::open(tmp.path(), Fsync::Always, "other").unwrap();
        assert_eq!(found.epoch, "e1", "the epoch is the directory's");
        assert_eq!(seqs(&found), vec![1, 2, 3, 4, 5]);
        write(&log, 6..=7);
        drop(log);
        let (_, found) = DiskLog::open(tmp.path(), Fsync::Always, "e1").unwrap();
        assert_eq!(seqs(&found), (1..=7).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_damage_before_it_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = DiskLog::open(tmp.path(), Fsync::Always, "e").unwrap();
        write(&log, 1..=3);
        drop(log);
        // A crash in the middle of writing op 4: half a record at the end.
        let segment = last_segment(tmp.path());
        let good_len = fs::metadata(&segment).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (_, found) = DiskLog::open(tmp.path(), Fsync::Always, "e").unwrap();
        assert_eq!(seqs(&found), vec![1, 2, 3]);
        assert_eq!(fs::metadata(&segment).unwrap().len(), good_len, "cut off");

        // A flipped byte inside op 2, with op 3 after it: refused, naming file and offset.
        let mut bytes = fs::read(&segment).unwrap();
        let first_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let second = HEADER + first_len;
        bytes[second + HEADER + 3] ^= 0xff;
        fs::write(&segment, &bytes).unwrap();
        let err = DiskLog::open(tmp.path(), Fsync::Always, "e").err().unwrap();
        let message = err.to_string();
        assert!(message.contains(&format!("offset {second}")), "{message}");
        assert!(message.contains("log-"), "{message}");
    }

    #[test]
    fn one_index_at_a_time_per_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, _) = DiskLog::open(tmp.path(), Fsync::Always, "e").unwrap();
        let err = DiskLog::open(tmp.path(), Fsync::Always, "e").err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        assert!(DiskLog::open(tmp.path(), Fsync::Always, "e").is_ok());
    }

    #[test]
    fn another_format_or_a_foreign_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join(FORMAT_FILE),
            "nap-index data format 0\nepoch e\n",
        )
        .unwrap();
        let err = DiskLog::open(tmp.path(), Fsync::Always, "e").err().unwrap();
        assert!(
            err.to_string().contains("not a nap-index data directory"),
            "{err}"
        );
        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("notes.txt"), "mine").unwrap();
        assert!(DiskLog::open(other.path(), Fsync::Always, "e").is_err());
    }

    #[test]
    fn a_snapshot_lets_the_log_before_it_go() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = DiskLog::open(tmp.path(), Fsync::Batch, "e").unwrap();
        for seq in 1..=4 {
            log.append(op(seq));
        }
        let covered = log.rotate().unwrap();
        assert_eq!(covered, 4);
        // The state the snapshot describes is at seq 4 or later.
        let mut state = IndexState::default().with_epoch("e".into());
        for seq in 1..=4 {
            state.apply(op(seq).op, seq).unwrap();
        }
        log.append(op(5));
        log.flush().unwrap();
        log.save_snapshot(&state.snapshot_json().unwrap(), state.seq(), covered)
            .unwrap();
        assert_eq!(
            segments(tmp.path()).unwrap().len(),
            1,
            "only the new segment is left"
        );
        drop(log);
        let (_, found) = DiskLog::open(tmp.path(), Fsync::Batch, "e").unwrap();
        assert_eq!(found.snapshot.as_ref().unwrap().seq, 4);
        assert_eq!(seqs(&found), vec![5]);
    }
}
