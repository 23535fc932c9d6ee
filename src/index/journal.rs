//! Durability: the index's op stream on disk (the journal), plus snapshots, in `--data-dir`.
//!
//! Every op applied to the state is queued here (under the state's write lock, so in
//! sequence order); a request that changed the state is answered only once its op is on
//! disk. Waiting requests share fsyncs (group commit): whoever finds no write in progress
//! writes everything queued and fsyncs once for all of them.
//!
//! Layout of the directory (a [`Disk`]):
//! - `FORMAT`: the format line and the epoch of the history kept here;
//! - `snapshot.json`: the state at some sequence number, replaced atomically;
//! - `log-<first seq>.nap`: segments of records, each `len (u32 LE) | checksum (the first 8
//!   bytes of the SHA-256 of the payload) | payload (a JSON `AppliedOp`)`.
//!
//! Start-up loads the snapshot and replays the records after it. A torn last record (a crash
//! mid-write) is cut off with a warning; damage anywhere else stops the start with the file
//! and offset, since skipping it would silently lose acknowledged writes.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::disk::{DirDisk, Disk};
use super::metrics::Histogram;
use super::state::{AppliedOp, Snapshot};
use crate::threads::lock;

/// The first line of `FORMAT`; another line means another format, which is refused.
///
/// Format 2 logs ops that format 1 did not have (forgetting histories) and fields that change
/// what an op does (the limits a register was applied under). An index of format 1 would
/// skip those fields without a word and rebuild another state, so it must refuse the
/// directory instead: the marker says 2 as soon as this version opens it.
pub const FORMAT: &str = "nap-index data format 2";
/// Formats this version reads: theirs are a subset of its own (new fields default to what
/// format 1 meant), so a directory of them is taken over and marked as `FORMAT`.
const READABLE_FORMATS: [&str; 1] = ["nap-index data format 1"];
const FORMAT_FILE: &str = "FORMAT";
const SNAPSHOT_FILE: &str = "snapshot.json";
const HEADER: usize = 12;
/// A record longer than this is damage, not data (no op comes near it).
const MAX_RECORD: usize = 1 << 30;

/// When the journal reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before each change is acknowledged (waiting requests share one fsync).
    Always,
    /// Every few milliseconds in the background: a crash can lose the last moments' writes.
    Batch,
    /// Never explicitly: the OS writes when it likes; a power cut can lose much more.
    Never,
}

/// An `--fsync` value that is none of always, batch, never.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFsync(pub String);

impl std::fmt::Display for UnknownFsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--fsync must be always, batch or never, not {:?}",
            self.0
        )
    }
}

impl std::error::Error for UnknownFsync {}

impl std::str::FromStr for Fsync {
    type Err = UnknownFsync;

    fn from_str(s: &str) -> Result<Fsync, UnknownFsync> {
        match s {
            "always" => Ok(Fsync::Always),
            "batch" => Ok(Fsync::Batch),
            "never" => Ok(Fsync::Never),
            _ => Err(UnknownFsync(s.to_string())),
        }
    }
}

/// What was on disk at start-up.
pub struct Recovered {
    pub epoch: String,
    pub snapshot: Option<Snapshot>,
    /// Records after the snapshot, in order.
    pub ops: Vec<AppliedOp>,
}

pub struct Journal {
    disk: Arc<dyn Disk>,
    fsync: Fsync,
    inner: Mutex<Inner>,
    written: Condvar,
    /// How long each write + fsync of a batch took, for `/metrics`.
    fsync_times: Mutex<Histogram>,
}

struct Inner {
    /// Applied, not yet written.
    queue: Vec<AppliedOp>,
    /// The segment records are appended to.
    segment: String,
    /// Weight of the records written since the last snapshot (one per op, plus one per file
    /// it lists: what replaying them would cost).
    since_snapshot: u64,
    /// Highest seq on disk (fsynced, or written when fsync is off).
    durable: u64,
    /// Someone is writing right now; others wait for them.
    writing: bool,
    /// A write failed: the journal cannot promise anything any more.
    failed: Option<String>,
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

/// `op` framed as one record.
fn encode(op: &AppliedOp, buf: &mut Vec<u8>) -> io::Result<()> {
    let payload = serde_json::to_vec(op).map_err(io::Error::other)?;
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum(&payload));
    buf.extend_from_slice(&payload);
    Ok(())
}

/// What replaying `ops` costs, about (see `Op::weight`).
fn weight_of(ops: &[AppliedOp]) -> u64 {
    ops.iter()
        .fold(0u64, |sum, o| sum.saturating_add(o.op.weight() as u64))
}

fn segment_name(first_seq: u64) -> String {
    format!("log-{first_seq:020}.nap")
}

/// The segments on `disk`, oldest first, with their first sequence numbers.
fn segments(disk: &dyn Disk) -> io::Result<Vec<(u64, String)>> {
    let mut found: Vec<(u64, String)> = disk
        .list()?
        .into_iter()
        .filter_map(|name| {
            let seq = name
                .strip_prefix("log-")
                .and_then(|rest| rest.strip_suffix(".nap"))
                .and_then(|n| n.parse::<u64>().ok())?;
            Some((seq, name))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads the records of one segment. In the last segment a torn end is cut off (the file is
/// truncated to the last whole record); anywhere else a bad record is an error.
fn read_segment(disk: &dyn Disk, name: &str, last: bool) -> io::Result<Vec<AppliedOp>> {
    let bytes = disk.read(name)?.unwrap_or_default();
    let place = format!("{}/{name}", disk.describe());
    let mut ops = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let damage = |why: &str| {
            invalid(format!(
                "{place}: damaged record at byte offset {at}: {why}"
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
                    "{place}: cutting off a torn record at byte offset {at} ({} bytes)",
                    rest.len()
                );
                disk.truncate(name, at as u64)?;
                break;
            }
            return Err(damage("cut short"));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let payload = &rest[HEADER..HEADER + len];
        if rest[4..HEADER] != checksum(payload) {
            // A bad checksum on the very last record is a write the crash interrupted.
            if last && at + HEADER + len == bytes.len() {
                log::warn!("{place}: cutting off a torn record at byte offset {at}");
                disk.truncate(name, at as u64)?;
                break;
            }
            return Err(damage("checksum mismatch"));
        }
        let op: AppliedOp =
            serde_json::from_slice(payload).map_err(|e| damage(&format!("unreadable: {e}")))?;
        ops.push(op);
        at += HEADER + len;
    }
    Ok(ops)
}

/// The epoch `FORMAT` records, or `None` for a directory nap never wrote to.
fn read_format(disk: &dyn Disk) -> io::Result<Option<String>> {
    let Some(bytes) = disk.read(FORMAT_FILE)? else {
        if !disk.list()?.is_empty() {
            return Err(invalid(format!(
                "{} is not empty and has no {FORMAT_FILE}: not a nap-index data directory",
                disk.describe()
            )));
        }
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let first = lines.next();
    if first != Some(FORMAT) && !first.is_some_and(|f| READABLE_FORMATS.contains(&f)) {
        return Err(invalid(format!(
            "{}: not a nap-index data directory of this version (expected {FORMAT:?})",
            disk.describe()
        )));
    }
    let epoch = lines
        .next()
        .and_then(|l| l.strip_prefix("epoch "))
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("{}/{FORMAT_FILE}: no epoch", disk.describe())))?;
    if first != Some(FORMAT) {
        // Taken over: from now on it may hold what an older version cannot read.
        write_format(disk, &epoch)?;
    }
    Ok(Some(epoch))
}

fn write_format(disk: &dyn Disk, epoch: &str) -> io::Result<()> {
    disk.replace(FORMAT_FILE, format!("{FORMAT}\nepoch {epoch}\n").as_bytes())
}

impl Journal {
    /// Opens the journal in directory `dir` (created if missing, locked while open).
    pub fn open_dir(
        dir: &std::path::Path,
        fsync: Fsync,
        new_epoch: &str,
    ) -> io::Result<(Journal, Recovered)> {
        Journal::open(Arc::new(DirDisk::open(dir)?), fsync, new_epoch)
    }

    /// Reads what `disk` holds, starting it with `new_epoch` if it is empty. A disk of another
    /// format, or with damage other than a torn last record, is refused.
    pub fn open(
        disk: Arc<dyn Disk>,
        fsync: Fsync,
        new_epoch: &str,
    ) -> io::Result<(Journal, Recovered)> {
        let epoch = match read_format(&*disk)? {
            Some(epoch) => epoch,
            None => {
                write_format(&*disk, new_epoch)?;
                new_epoch.to_string()
            }
        };
        let snapshot: Option<Snapshot> = match disk.read(SNAPSHOT_FILE)? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                invalid(format!(
                    "{}/{SNAPSHOT_FILE}: unreadable snapshot: {e}",
                    disk.describe()
                ))
            })?),
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let found = segments(&*disk)?;
        // Only the newest segment with records can end in a torn one (empty segments are
        // opened after a start and may follow it).
        let mut newest = 0;
        for (i, (_, name)) in found.iter().enumerate() {
            if disk.read(name)?.is_some_and(|b| !b.is_empty()) {
                newest = i;
            }
        }
        let mut ops: Vec<AppliedOp> = Vec::new();
        for (i, (_, name)) in found.iter().enumerate() {
            for op in read_segment(&*disk, name, i >= newest)? {
                if op.seq <= after {
                    continue;
                }
                let expected = ops.last().map_or(after + 1, |o| o.seq + 1);
                if op.seq != expected {
                    return Err(invalid(format!(
                        "{}/{name}: op {} where op {expected} was due: the log has a hole",
                        disk.describe(),
                        op.seq
                    )));
                }
                ops.push(op);
            }
        }
        let last = ops.last().map_or(after, |o| o.seq);
        // New records go to a fresh segment: an existing one may end in a cut-off record.
        let segment = segment_name(last + 1);
        disk.create(&segment)?;
        let journal = Journal {
            disk,
            fsync,
            inner: Mutex::new(Inner {
                queue: Vec::new(),
                segment,
                since_snapshot: weight_of(&ops),
                durable: last,
                writing: false,
                failed: None,
            }),
            written: Condvar::new(),
            fsync_times: Mutex::default(),
        };
        Ok((
            journal,
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

    /// Waits until no write is in progress.
    fn idle<'a>(&'a self, inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.written
            .wait_while(inner, |i| i.writing)
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Queues an applied op. Called under the state's write lock, so the queue is in order.
    pub fn append(&self, op: AppliedOp) {
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
            if inner.queue.is_empty() {
                // Nothing to write will ever bring it: an error, not a wait for ever.
                return Err(io::Error::other(format!(
                    "op {seq} was never given to the log (it is at {})",
                    inner.durable
                )));
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

    /// The durations of the journal's writes with fsync so far.
    pub fn fsync_times(&self) -> Histogram {
        lock(&self.fsync_times).clone()
    }

    /// Writes what is queued and fsyncs whatever `--fsync` says: for a clean stop.
    pub fn sync_all(&self) -> io::Result<()> {
        let inner = self.idle(self.lock());
        let inner = self.write_queued(inner, true);
        let synced = self.disk.sync(&inner.segment);
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
        let segment = inner.segment.clone();
        drop(inner);
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let written = batch
            .iter()
            .try_for_each(|op| encode(op, &mut buf))
            .and_then(|()| self.disk.append(&segment, &buf, sync));
        if sync && written.is_ok() {
            lock(&self.fsync_times).observe(started.elapsed());
        }
        let mut inner = self.lock();
        inner.writing = false;
        match written {
            Ok(()) => {
                inner.durable = inner.durable.max(last);
                inner.since_snapshot = inner.since_snapshot.saturating_add(weight_of(&batch));
            }
            Err(e) => {
                log::error!(
                    "the op log in {} cannot be written: {e}",
                    self.disk.describe()
                );
                inner.failed = Some(format!("the index cannot write its log: {e}"));
            }
        }
        self.written.notify_all();
        inner
    }

    /// The highest seq on disk (fsynced; with `--fsync never`, written).
    pub fn durable_seq(&self) -> u64 {
        self.lock().durable
    }

    /// Waits until an op after `seq` is on disk, or `timeout` passes.
    pub fn wait_durable_past(&self, seq: u64, timeout: std::time::Duration) {
        let inner = self.lock();
        let _ = self
            .written
            .wait_timeout_while(inner, timeout, |i| i.durable <= seq && i.failed.is_none());
    }

    /// Weight of the records written since the last snapshot (an op weighs one, plus one
    /// per file it lists): the keeper snapshots past a threshold.
    pub fn since_snapshot(&self) -> u64 {
        self.lock().since_snapshot
    }

    /// Starts a new segment for the ops after the current ones; returns the last seq in the
    /// old segments. Everything queued is written first.
    pub fn rotate(&self) -> io::Result<u64> {
        let inner = self.idle(self.lock());
        let mut inner = self.write_queued(inner, self.fsync != Fsync::Never);
        if let Some(why) = &inner.failed {
            return Err(io::Error::other(why.clone()));
        }
        let last = inner.durable;
        let segment = segment_name(last + 1);
        self.disk.create(&segment)?;
        inner.segment = segment;
        Ok(last)
    }

    /// Writes a snapshot (`json`, the state at `seq`) atomically and drops the segments it
    /// makes redundant (all of whose records are at or below `covered`, as returned by
    /// `rotate` before the snapshot was taken).
    pub fn save_snapshot(&self, json: &[u8], seq: u64, covered: u64) -> io::Result<()> {
        self.disk.replace(SNAPSHOT_FILE, json)?;
        // `rotate` began a new segment at `covered + 1`: the ones before it hold nothing newer.
        for (first, name) in segments(&*self.disk)? {
            if first <= covered && covered <= seq {
                self.disk.remove(&name)?;
            }
        }
        let mut inner = self.lock();
        // What was written while the snapshot was taken, at one per op (their weight is
        // gone with them; the next snapshot comes a little later, never sooner).
        inner.since_snapshot = inner.durable.saturating_sub(seq);
        Ok(())
    }

    /// Replaces everything with `snapshot` (a shadow taking its primary's state, a primary
    /// taking a shadow's).
    pub fn reset(&self, snapshot: &Snapshot) -> io::Result<()> {
        let mut inner = self.idle(self.lock());
        inner.queue.clear();
        let bytes = serde_json::to_vec(snapshot).map_err(io::Error::other)?;
        self.disk.replace(SNAPSHOT_FILE, &bytes)?;
        write_format(&*self.disk, &snapshot.epoch)?;
        for (_, name) in segments(&*self.disk)? {
            self.disk.remove(&name)?;
        }
        let segment = segment_name(snapshot.seq + 1);
        self.disk.create(&segment)?;
        inner.segment = segment;
        inner.durable = snapshot.seq;
        inner.since_snapshot = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::disk::MemDisk;
    use crate::index::state::{IndexState, Op, Prune};

    fn op(seq: u64) -> AppliedOp {
        AppliedOp {
            seq,
            at: seq * 10,
            op: Op::Prune(Prune {
                peers: vec![format!("p{seq}")],
            }),
        }
    }

    fn write(log: &Journal, seqs: std::ops::RangeInclusive<u64>) {
        let last = *seqs.end();
        for seq in seqs {
            log.append(op(seq));
        }
        log.wait_durable(last).unwrap();
    }

    fn seqs(r: &Recovered) -> Vec<u64> {
        r.ops.iter().map(|o| o.seq).collect()
    }

    /// The newest segment holding records (a reopen starts an empty one after it).
    fn last_segment(disk: &dyn Disk) -> String {
        segments(disk)
            .unwrap()
            .into_iter()
            .rev()
            .find(|(_, name)| disk.read(name).unwrap().is_some_and(|b| !b.is_empty()))
            .unwrap()
            .1
    }

    #[test]
    fn what_was_acknowledged_comes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, found) = Journal::open_dir(tmp.path(), Fsync::Always, "e1").unwrap();
        assert!(found.ops.is_empty() && found.snapshot.is_none());
        write(&log, 1..=5);
        drop(log);
        let (log, found) = Journal::open_dir(tmp.path(), Fsync::Always, "other").unwrap();
        assert_eq!(found.epoch, "e1", "the epoch is the directory's");
        assert_eq!(seqs(&found), vec![1, 2, 3, 4, 5]);
        write(&log, 6..=7);
        drop(log);
        let (_, found) = Journal::open_dir(tmp.path(), Fsync::Always, "e1").unwrap();
        assert_eq!(seqs(&found), (1..=7).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_damage_before_it_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = Journal::open_dir(tmp.path(), Fsync::Always, "e").unwrap();
        write(&log, 1..=3);
        drop(log);
        // A crash in the middle of writing op 4: half a record at the end.
        let disk = DirDisk::open(tmp.path()).unwrap();
        let segment = last_segment(&disk);
        let path = disk.path(&segment);
        drop(disk);
        let good_len = std::fs::metadata(&path).unwrap().len();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let (log, found) = Journal::open_dir(tmp.path(), Fsync::Always, "e").unwrap();
        drop(log);
        assert_eq!(seqs(&found), vec![1, 2, 3]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len, "cut off");

        // A flipped byte inside op 2, with op 3 after it: refused, naming file and offset.
        let mut bytes = std::fs::read(&path).unwrap();
        let first_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let second = HEADER + first_len;
        bytes[second + HEADER + 3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::open_dir(tmp.path(), Fsync::Always, "e")
            .err()
            .unwrap();
        let message = err.to_string();
        assert!(message.contains(&format!("offset {second}")), "{message}");
        assert!(message.contains("log-"), "{message}");
    }

    #[test]
    fn one_index_at_a_time_per_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, _) = Journal::open_dir(tmp.path(), Fsync::Always, "e").unwrap();
        let err = Journal::open_dir(tmp.path(), Fsync::Always, "e")
            .err()
            .unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        assert!(Journal::open_dir(tmp.path(), Fsync::Always, "e").is_ok());
    }

    #[test]
    fn another_format_or_a_foreign_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(FORMAT_FILE),
            "nap-index data format 0\nepoch e\n",
        )
        .unwrap();
        let err = Journal::open_dir(tmp.path(), Fsync::Always, "e")
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not a nap-index data directory"),
            "{err}"
        );
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("notes.txt"), "mine").unwrap();
        assert!(Journal::open_dir(other.path(), Fsync::Always, "e").is_err());
    }

    #[test]
    fn a_directory_of_format_1_is_read_and_marked_as_this_format() {
        let disk = Arc::new(MemDisk::new());
        disk.replace(FORMAT_FILE, b"nap-index data format 1\nepoch old\n")
            .unwrap();
        let (log, recovered) = Journal::open(disk.clone(), Fsync::Always, "new").unwrap();
        assert_eq!(recovered.epoch, "old", "the same history goes on");
        drop(log);
        let marker = disk.read(FORMAT_FILE).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(marker).unwrap(),
            format!("{FORMAT}\nepoch old\n")
        );
    }

    #[test]
    fn a_snapshot_lets_the_log_before_it_go() {
        let disk = Arc::new(MemDisk::new());
        let (log, _) = Journal::open(disk.clone(), Fsync::Batch, "e").unwrap();
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
            segments(&*disk).unwrap().len(),
            1,
            "only the new segment is left"
        );
        drop(log);
        let (_, found) = Journal::open(disk, Fsync::Batch, "e").unwrap();
        assert_eq!(found.snapshot.as_ref().unwrap().seq, 4);
        assert_eq!(seqs(&found), vec![5]);
    }

    #[test]
    fn a_crash_loses_only_what_was_not_durable() {
        let disk = Arc::new(MemDisk::new());
        let (log, _) = Journal::open(disk.clone(), Fsync::Always, "e").unwrap();
        write(&log, 1..=3);
        // Written but not synced, then a crash that keeps half a record of it.
        log.append(op(4));
        log.append(op(5));
        {
            let inner = log.lock();
            let inner = log.write_queued(inner, false);
            drop(inner);
        }
        drop(log);
        disk.crash(|_, unsynced| unsynced / 3);
        let (_, found) = Journal::open(disk, Fsync::Always, "e").unwrap();
        assert_eq!(
            seqs(&found),
            vec![1, 2, 3],
            "the torn op 4 is cut, 1-3 stay"
        );
    }
}
