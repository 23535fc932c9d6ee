//! Where the journal's files live: a [`Disk`] is one flat directory of named files with the
//! few operations the journal needs, each with the durability it promises. [`DirDisk`] is a
//! real directory; [`MemDisk`] keeps the files in memory and can crash, losing what was
//! never synced (and tearing the last write), which is how the simulation runs years of
//! restarts in seconds.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::threads::lock;

/// The operations the journal performs on its directory.
pub trait Disk: Send + Sync {
    /// Where this is, for messages.
    fn describe(&self) -> String;
    /// The names of the files, in any order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// A whole file; `None` if there is no such file.
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Replaces (or creates) `name` with `bytes` atomically and durably: after a crash it
    /// holds the old content or the new, never a mix.
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Creates an empty file if there is none, durably (its directory entry survives a crash).
    fn create(&self, name: &str) -> io::Result<()>;
    /// Appends `bytes` to `name`; with `sync`, everything appended so far is durable once this
    /// returns. Without it, a crash may lose (or cut) what was appended since the last sync.
    fn append(&self, name: &str, bytes: &[u8], sync: bool) -> io::Result<()>;
    /// Makes everything appended to `name` so far durable.
    fn sync(&self, name: &str) -> io::Result<()>;
    /// Cuts `name` to `len` bytes.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Removes `name`, durably.
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// A real directory, locked for one process at a time (two indexes on one directory would
/// interleave their logs).
pub struct DirDisk {
    dir: PathBuf,
    /// Held (locked) while open.
    _lock: File,
    /// The file appended to last, kept open: the journal appends to one segment at a time.
    open: Mutex<Option<(String, File)>>,
}

const LOCK_FILE: &str = "LOCK";

impl DirDisk {
    /// Opens (creating if missing) `dir` and takes its lock.
    pub fn open(dir: &Path) -> io::Result<DirDisk> {
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
        Ok(DirDisk {
            dir: dir.to_path_buf(),
            _lock: lock,
            open: Mutex::new(None),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Runs `f` on `name` opened for appending (reusing the handle of the last call).
    fn with_appender(
        &self,
        name: &str,
        f: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut open = lock(&self.open);
        if open.as_ref().is_none_or(|(n, _)| n != name) {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(name))?;
            *open = Some((name.to_string(), file));
        }
        match open.as_mut() {
            Some((_, file)) => f(file),
            None => Err(io::Error::other("no file open")),
        }
    }

    fn forget(&self, name: &str) {
        let mut open = lock(&self.open);
        if open.as_ref().is_some_and(|(n, _)| n == name) {
            *open = None;
        }
    }
}

impl Disk for DirDisk {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                if name != LOCK_FILE {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Temp file, fsync, rename, fsync the directory.
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path(&format!("{name}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        self.forget(name);
        fs::rename(&tmp, self.path(name))?;
        self.sync_dir()
    }

    fn create(&self, name: &str) -> io::Result<()> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))?;
        self.sync_dir()
    }

    fn append(&self, name: &str, bytes: &[u8], sync: bool) -> io::Result<()> {
        self.with_appender(name, |file| {
            file.write_all(bytes)?;
            if sync {
                file.sync_data()?;
            }
            Ok(())
        })
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.with_appender(name, |file| file.sync_data())
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.forget(name);
        OpenOptions::new()
            .write(true)
            .open(self.path(name))?
            .set_len(len)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.forget(name);
        fs::remove_file(self.path(name))?;
        self.sync_dir()
    }
}

/// Files in memory, for the simulation: each keeps the bytes a crash cannot take (synced) and
/// those it can (appended since the last sync).
#[derive(Default)]
pub struct MemDisk {
    files: Mutex<BTreeMap<String, MemFile>>,
    /// Armed by `fail_next_append`: how many bytes of the next append reach the disk.
    torn: Mutex<Option<usize>>,
}

#[derive(Default, Clone)]
struct MemFile {
    synced: Vec<u8>,
    unsynced: Vec<u8>,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// A crash: every file keeps its synced bytes and, of what was appended since, the first
    /// `keep(name, unsynced_len)` bytes (0: all lost; a number inside a record: a torn write).
    /// A fault armed by `fail_next_append` ends with the crash.
    pub fn crash(&self, mut keep: impl FnMut(&str, usize) -> usize) {
        *lock(&self.torn) = None;
        for (name, file) in lock(&self.files).iter_mut() {
            let kept = keep(name, file.unsynced.len()).min(file.unsynced.len());
            let tail: Vec<u8> = file.unsynced.drain(..kept).collect();
            file.synced.extend_from_slice(&tail);
            file.unsynced.clear();
        }
    }

    /// The next append fails after `keep` of its bytes reached the disk (and were synced):
    /// the power failing in the middle of a write. The caller then crashes the node.
    pub fn fail_next_append(&self, keep: usize) {
        *lock(&self.torn) = Some(keep);
    }
}

fn missing(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl Disk for MemDisk {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.files).keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(lock(&self.files).get(name).map(|f| {
            let mut all = f.synced.clone();
            all.extend_from_slice(&f.unsynced);
            all
        }))
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let file = MemFile {
            synced: bytes.to_vec(),
            unsynced: Vec::new(),
        };
        lock(&self.files).insert(name.to_string(), file);
        Ok(())
    }

    fn create(&self, name: &str) -> io::Result<()> {
        lock(&self.files).entry(name.to_string()).or_default();
        Ok(())
    }

    fn append(&self, name: &str, bytes: &[u8], sync: bool) -> io::Result<()> {
        let mut files = lock(&self.files);
        let file = files.entry(name.to_string()).or_default();
        if let Some(keep) = lock(&self.torn).take() {
            let kept = &bytes[..keep.min(bytes.len())];
            file.synced.append(&mut file.unsynced);
            file.synced.extend_from_slice(kept);
            return Err(io::Error::other(
                "the power failed in the middle of a write",
            ));
        }
        file.unsynced.extend_from_slice(bytes);
        if sync {
            let tail = std::mem::take(&mut file.unsynced);
            file.synced.extend_from_slice(&tail);
        }
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.append(name, &[], true)
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut files = lock(&self.files);
        let file = files.get_mut(name).ok_or_else(|| missing(name))?;
        let mut all = std::mem::take(&mut file.synced);
        all.append(&mut file.unsynced);
        all.truncate(len as usize);
        file.synced = all;
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        lock(&self.files)
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| missing(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_what_was_synced_and_tears_the_rest() {
        let disk = MemDisk::new();
        disk.append("a", b"one", true).unwrap();
        disk.append("a", b"two", false).unwrap();
        disk.create("b").unwrap();
        assert_eq!(disk.read("a").unwrap().unwrap(), b"onetwo");
        disk.crash(|_, _| 1);
        assert_eq!(disk.read("a").unwrap().unwrap(), b"onet", "a torn write");
        assert_eq!(disk.read("b").unwrap().unwrap(), b"");
        disk.append("a", b"xyz", false).unwrap();
        disk.crash(|_, _| 0);
        assert_eq!(disk.read("a").unwrap().unwrap(), b"onet");
        disk.fail_next_append(2);
        assert!(disk.append("a", b"uvw", true).is_err());
        assert_eq!(disk.read("a").unwrap().unwrap(), b"onetuv");
        disk.append("a", b"!", true).unwrap();
        assert!(disk.read("c").unwrap().is_none());
    }

    #[test]
    fn a_directory_is_locked_for_one_process() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DirDisk::open(tmp.path()).unwrap();
        first.append("x", b"12", true).unwrap();
        first.replace("y", b"whole").unwrap();
        assert!(DirDisk::open(tmp.path()).is_err());
        let mut names = first.list().unwrap();
        names.sort();
        assert_eq!(names, ["x", "y"]);
        first.truncate("x", 1).unwrap();
        first.append("x", b"3", false).unwrap();
        assert_eq!(first.read("x").unwrap().unwrap(), b"13");
        drop(first);
        assert!(DirDisk::open(tmp.path()).is_ok());
    }
}
