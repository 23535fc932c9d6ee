//! The peer's shared folder: which files it holds, at which version, with which SHA-256.
//!
//! The catalog lives in `DIR/.nap/files.json` so a file is hashed once and keeps its version
//! across restarts; a rescan rehashes only files whose size or modification time changed and
//! gives a changed file the next version. Downloads land in `DIR/.nap/partial/` and are moved
//! into place only after verification; `update` edits a working copy in `DIR/.nap/edit/`, and
//! what must not be lost but cannot be published is kept in `DIR/.nap/unpublished/`. Nothing
//! here talks to the network.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::hashing::sha256_of;
use crate::protocol::{self, FileMeta};
use crate::threads::lock;

const NAP_DIR: &str = ".nap";
const CATALOG: &str = "files.json";
const IDENTITY: &str = "identity.json";
const PARTIAL: &str = "partial";
const EDIT: &str = "edit";
const UNPUBLISHED: &str = "unpublished";

/// What `install` does when the local copy it would replace changed since the last scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalChanges {
    /// Leave everything as it is and fail: a download must never eat a local edit.
    Refuse,
    /// Move the local copy to `unpublished/` first: the new version is ours and must land.
    SetAside,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    version: u64,
    size: u64,
    sha256: String,
    /// Modification time in nanoseconds since the epoch when the hash was taken.
    mtime_ns: u128,
}

/// What a rescan found since the previous one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// New files and new versions of known files.
    pub added: Vec<FileMeta>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// A new version put in place ahead of its publish (see `LocalStore::stage`).
#[must_use = "a staged file is committed or undone"]
pub struct Staged {
    name: String,
    previous: Option<Previous>,
}

/// The copy a staged file replaced, kept until the publish is settled.
struct Previous {
    backup: PathBuf,
    entry: Option<Entry>,
    /// It held changes never scanned (made while the edit ran).
    changed: bool,
}

/// The identity the index gave this peer; kept private in `DIR/.nap/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub peer_id: String,
    pub token: String,
}

pub struct LocalStore {
    dir: PathBuf,
    nap_dir: PathBuf,
    catalog: Mutex<BTreeMap<String, Entry>>,
    /// Serializes rescans with installs, so a rescan never mistakes a file being moved into
    /// place for a local edit.
    scan_lock: Mutex<()>,
}

fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

impl LocalStore {
    /// Opens (creating if needed) the shared folder `dir` and its private `.nap` folder.
    pub fn open(dir: &Path) -> io::Result<LocalStore> {
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let nap_dir = dir.join(NAP_DIR);
        for sub in [PARTIAL, EDIT, UNPUBLISHED] {
            fs::create_dir_all(nap_dir.join(sub))?;
        }
        let catalog = match fs::read(nap_dir.join(CATALOG)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!(
                    "{}: unreadable catalog ({e}); rehashing every file",
                    dir.display()
                );
                BTreeMap::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(LocalStore {
            dir,
            nap_dir,
            catalog: Mutex::new(catalog),
            scan_lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        lock(&self.catalog)
    }

    /// The files this peer holds, as last scanned.
    pub fn list(&self) -> Vec<FileMeta> {
        self.catalog()
            .iter()
            .map(|(name, e)| meta_of(name, e))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<FileMeta> {
        self.catalog().get(name).map(|e| meta_of(name, e))
    }

    /// Where `name` lives in the shared folder; `None` for names that could escape it.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        protocol::validate_file_name(name).ok()?;
        Some(self.dir.join(name))
    }

    /// Opens `name` for reading, refusing anything but a regular file directly in the folder
    /// (a symlink could point anywhere). Returns the open file and its length.
    pub fn open_file(&self, name: &str) -> io::Result<(File, u64)> {
        use std::os::unix::fs::MetadataExt;
        let path = self
            .path_of(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad file name"))?;
        let file = File::open(&path)?;
        let opened = file.metadata()?;
        // lstat after open: if the name is a link, or was swapped for one, the two differ.
        let named = fs::symlink_metadata(&path)?;
        if !named.file_type().is_file()
            || named.dev() != opened.dev()
            || named.ino() != opened.ino()
        {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not a regular file in the shared folder",
            ));
        }
        Ok((file, opened.len()))
    }

    /// Rescans the folder: hashes new or modified files, drops vanished ones, and saves the
    /// catalog. A modified file gets its previous version + 1.
    pub fn rescan(&self) -> io::Result<Changes> {
        let _scan = lock(&self.scan_lock);
        let known = self.catalog().clone();
        let mut seen = BTreeMap::new();
        let mut changes = Changes::default();
        for dirent in fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let Some(name) = dirent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if protocol::validate_file_name(&name).is_err() {
                continue;
            }
            let meta = match fs::symlink_metadata(dirent.path()) {
                Ok(m) if m.file_type().is_file() => m,
                _ => continue,
            };
            let mtime = mtime_ns(&meta);
            if let Some(e) = known.get(&name) {
                if e.size == meta.len() && e.mtime_ns == mtime {
                    seen.insert(name, e.clone());
                    continue;
                }
            }
            // Hash what we can open; a file that vanished meanwhile is simply not there.
            let Ok((file, _)) = self.open_file(&name) else {
                continue;
            };
            let sha256 = sha256_of(file)?;
            let entry = match known.get(&name) {
                Some(old) if old.sha256 == sha256 => Entry {
                    mtime_ns: mtime,
                    size: meta.len(),
                    ..old.clone()
                },
                other => {
                    let e = Entry {
                        version: other.map_or(1, |o| o.version.saturating_add(1)),
                        size: meta.len(),
                        sha256,
                        mtime_ns: mtime,
                    };
                    changes.added.push(meta_of(&name, &e));
                    e
                }
            };
            seen.insert(name, entry);
        }
        changes.removed = known
            .keys()
            .filter(|name| !seen.contains_key(*name))
            .cloned()
            .collect();
        let dirty = seen != known;
        *self.catalog() = seen;
        if dirty {
            self.save_catalog()?;
        }
        Ok(changes)
    }

    /// Where a download of content `sha256` is written until verified. Keyed by content, so
    /// an interrupted download resumes whichever holder serves the rest.
    pub fn partial_path(&self, sha256: &str) -> Option<PathBuf> {
        protocol::is_sha256(sha256).then_some(())?;
        Some(self.nap_dir.join(PARTIAL).join(sha256))
    }

    /// Where `update` keeps its working copy of `name`.
    pub fn edit_path(&self, name: &str) -> Option<PathBuf> {
        protocol::validate_file_name(name).ok()?;
        Some(self.nap_dir.join(EDIT).join(name))
    }

    /// Moves `path` to `unpublished/` under a name that says what it was and when; returns
    /// where it went. For content the index would not take, so that it is never lost.
    pub fn set_aside(&self, path: &Path, name: &str) -> io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let dir = self.nap_dir.join(UNPUBLISHED);
        let mut target = dir.join(format!("{name}.{stamp}"));
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{name}.{stamp}-{n}"));
            n += 1;
        }
        fs::rename(path, &target)?;
        Ok(target)
    }

    /// Whether the file on disk under `name` is what the catalog says (or absent from both):
    /// same size and modification time as when it was hashed.
    fn unchanged_since_scan(&self, name: &str, path: &Path) -> io::Result<bool> {
        match fs::symlink_metadata(path) {
            Ok(on_disk) => Ok(self
                .catalog()
                .get(name)
                .is_some_and(|e| e.size == on_disk.len() && e.mtime_ns == mtime_ns(&on_disk))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Moves a verified file into place and records it. Refuses to replace a local copy at
    /// the same or a newer version; a local copy changed since the last scan (or never
    /// scanned) is refused or set aside as `local_changes` says. Returns where a set-aside
    /// copy went.
    pub fn install(
        &self,
        partial: &Path,
        meta: &FileMeta,
        local_changes: LocalChanges,
    ) -> io::Result<Option<PathBuf>> {
        let _scan = lock(&self.scan_lock);
        if let Some(local) = self.get(&meta.name) {
            if local.version >= meta.version {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} v{} is already here; not replacing it with v{}",
                        meta.name, local.version, meta.version
                    ),
                ));
            }
        }
        let target = self
            .path_of(&meta.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad file name"))?;
        let mut set_aside = None;
        if !self.unchanged_since_scan(&meta.name, &target)? {
            match local_changes {
                LocalChanges::Refuse => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "the local {} has changes not yet scanned; not replacing it",
                            meta.name
                        ),
                    ))
                }
                LocalChanges::SetAside => set_aside = Some(self.set_aside(&target, &meta.name)?),
            }
        }
        self.put_in_place(partial, &target, meta)?;
        Ok(set_aside)
    }

    /// Puts `new` in place as `meta` ahead of publishing it, keeping the copy it replaces so
    /// that a refused publish can be undone. Peers told of the new version by the index may
    /// ask for it the moment the index accepts it, so it must already be here by then.
    pub fn stage(&self, new: &Path, meta: &FileMeta) -> io::Result<Staged> {
        let _scan = lock(&self.scan_lock);
        let target = self
            .path_of(&meta.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad file name"))?;
        let previous = match fs::symlink_metadata(&target) {
            Ok(_) => {
                let changed = !self.unchanged_since_scan(&meta.name, &target)?;
                let backup = self
                    .nap_dir
                    .join(EDIT)
                    .join(format!("{}.previous", meta.name));
                fs::rename(&target, &backup)?;
                Some(Previous {
                    backup,
                    entry: self.catalog().get(&meta.name).cloned(),
                    changed,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Err(e) = self.put_in_place(new, &target, meta) {
            if let Some(p) = &previous {
                let _ = fs::rename(&p.backup, &target);
            }
            return Err(e);
        }
        Ok(Staged {
            name: meta.name.clone(),
            previous,
        })
    }

    /// The publish went through: the replaced copy goes, unless it held changes never
    /// scanned (made during the edit), which are kept in `unpublished/`; returns where.
    pub fn commit(&self, staged: Staged) -> io::Result<Option<PathBuf>> {
        match staged.previous {
            Some(p) if p.changed => self.set_aside(&p.backup, &staged.name).map(Some),
            Some(p) => fs::remove_file(&p.backup).map(|()| None),
            None => Ok(None),
        }
    }

    /// The publish did not go through: the staged file moves to `unpublished/` (returned)
    /// and the replaced copy, with its catalog entry, comes back.
    pub fn undo(&self, staged: Staged) -> io::Result<PathBuf> {
        let _scan = lock(&self.scan_lock);
        let target = self
            .path_of(&staged.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad file name"))?;
        let kept = self.set_aside(&target, &staged.name)?;
        match staged.previous {
            Some(p) => {
                fs::rename(&p.backup, &target)?;
                match p.entry {
                    Some(entry) => self.catalog().insert(staged.name, entry),
                    None => self.catalog().remove(&staged.name),
                };
            }
            None => {
                self.catalog().remove(&staged.name);
            }
        }
        self.save_catalog()?;
        Ok(kept)
    }

    /// Renames `new` to `target` and records it as `meta`.
    fn put_in_place(&self, new: &Path, target: &Path, meta: &FileMeta) -> io::Result<()> {
        fs::rename(new, target)?;
        File::open(&self.dir)?.sync_all()?;
        let on_disk = fs::symlink_metadata(target)?;
        self.catalog().insert(
            meta.name.clone(),
            Entry {
                version: meta.version,
                size: meta.size,
                sha256: meta.sha256.clone(),
                mtime_ns: mtime_ns(&on_disk),
            },
        );
        self.save_catalog()
    }

    fn save_catalog(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&*self.catalog()).map_err(io::Error::other)?;
        write_atomically(&self.nap_dir.join(CATALOG), &bytes)
    }

    pub fn load_identity(&self) -> Option<Identity> {
        let bytes = fs::read(self.nap_dir.join(IDENTITY)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(id) => Some(id),
            Err(e) => {
                log::warn!("ignoring unreadable identity file: {e}");
                None
            }
        }
    }

    pub fn save_identity(&self, identity: &Identity) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.nap_dir.join(IDENTITY);
        let bytes = serde_json::to_vec(identity).map_err(io::Error::other)?;
        write_atomically(&path, &bytes)?;
        // The token is a secret: readable by the owner only.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
    }
}

fn meta_of(name: &str, e: &Entry) -> FileMeta {
    FileMeta {
        name: name.to_string(),
        version: e.version,
        size: e.size,
        sha256: e.sha256.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, secs: u64) {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(secs);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn rescan_versions_new_changed_and_removed_files() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.txt"), "one").unwrap();
        fs::write(tmp.path().join(".hidden"), "x").unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        let c = store.rescan().unwrap();
        assert_eq!(c.added.len(), 1);
        assert_eq!(c.added[0].version, 1);
        assert_eq!(c.added[0].sha256, sha256_of(&b"one"[..]).unwrap());
        assert!(store.rescan().unwrap().is_empty(), "nothing changed");

        fs::write(tmp.path().join("a.txt"), "two!").unwrap();
        set_mtime(&tmp.path().join("a.txt"), 1_000);
        let c = store.rescan().unwrap();
        assert_eq!(c.added[0].version, 2);

        // Touching without changing content keeps the version.
        set_mtime(&tmp.path().join("a.txt"), 2_000);
        assert!(store.rescan().unwrap().is_empty());

        fs::remove_file(tmp.path().join("a.txt")).unwrap();
        let c = store.rescan().unwrap();
        assert_eq!(c.removed, vec!["a.txt".to_string()]);

        // The catalog survives a reopen.
        fs::write(tmp.path().join("b"), "b").unwrap();
        store.rescan().unwrap();
        let again = LocalStore::open(tmp.path()).unwrap();
        assert_eq!(again.get("b").unwrap().version, 1);
    }

    #[test]
    fn symlinks_are_neither_listed_nor_opened() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), tmp.path().join("link")).unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        assert!(store.rescan().unwrap().is_empty());
        assert!(store.open_file("link").is_err());
        assert!(store.open_file("../secret").is_err());
        assert!(store.path_of("..").is_none());
    }

    #[test]
    fn install_never_replaces_a_newer_copy() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("doc"), "v3 content").unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        store.rescan().unwrap();
        let partial = store.partial_path(&"a".repeat(64)).unwrap();
        fs::write(&partial, "old").unwrap();
        let meta = FileMeta {
            name: "doc".into(),
            version: 1,
            size: 3,
            sha256: "a".repeat(64),
        };
        assert!(store
            .install(&partial, &meta, LocalChanges::Refuse)
            .is_err());
        assert_eq!(
            fs::read_to_string(tmp.path().join("doc")).unwrap(),
            "v3 content"
        );
    }

    #[test]
    fn install_never_eats_a_local_edit() {
        let tmp = tempfile::tempdir().unwrap();
        let doc = tmp.path().join("doc");
        fs::write(&doc, "v1").unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        store.rescan().unwrap();
        // Edited after the scan: a download of v2 must not replace it...
        fs::write(&doc, "my edit").unwrap();
        set_mtime(&doc, 1_000);
        let partial = store.partial_path(&"b".repeat(64)).unwrap();
        fs::write(&partial, "v2").unwrap();
        let meta = FileMeta {
            name: "doc".into(),
            version: 2,
            size: 2,
            sha256: "b".repeat(64),
        };
        assert!(store
            .install(&partial, &meta, LocalChanges::Refuse)
            .is_err());
        assert_eq!(fs::read_to_string(&doc).unwrap(), "my edit");
        // ...nor may one land on a file that was never scanned.
        fs::write(tmp.path().join("new"), "mine").unwrap();
        let new = FileMeta {
            name: "new".into(),
            ..meta.clone()
        };
        assert!(store.install(&partial, &new, LocalChanges::Refuse).is_err());
        assert_eq!(fs::read_to_string(tmp.path().join("new")).unwrap(), "mine");
        // Setting it aside keeps it, under unpublished/.
        let kept = store
            .install(&partial, &meta, LocalChanges::SetAside)
            .unwrap()
            .unwrap();
        assert_eq!(fs::read_to_string(&kept).unwrap(), "my edit");
        assert_eq!(fs::read_to_string(&doc).unwrap(), "v2");
        assert_eq!(store.get("doc").unwrap().version, 2);
    }

    #[test]
    fn a_staged_version_is_committed_or_undone_without_losing_a_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let doc = tmp.path().join("doc");
        fs::write(&doc, "v1").unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        store.rescan().unwrap();
        let v1 = store.get("doc").unwrap();
        let v2 = |store: &LocalStore, content: &str| {
            let work = store.edit_path("doc").unwrap();
            fs::write(&work, content).unwrap();
            let meta = FileMeta {
                version: 2,
                size: content.len() as u64,
                sha256: sha256_of(content.as_bytes()).unwrap(),
                ..v1.clone()
            };
            (store.stage(&work, &meta).unwrap(), meta)
        };
        // Undone: the edit goes to unpublished/, v1 and its catalog entry come back.
        let (staged, _) = v2(&store, "refused");
        assert_eq!(fs::read_to_string(&doc).unwrap(), "refused");
        let kept = store.undo(staged).unwrap();
        assert_eq!(fs::read_to_string(kept).unwrap(), "refused");
        assert_eq!(fs::read_to_string(&doc).unwrap(), "v1");
        assert_eq!(store.get("doc"), Some(v1.clone()));
        assert!(store.rescan().unwrap().is_empty(), "catalog and disk agree");
        // Committed: v2 stays, the old copy is gone (it was the catalogued v1).
        let (staged, meta) = v2(&store, "accepted");
        assert_eq!(store.commit(staged).unwrap(), None);
        assert_eq!(store.get("doc"), Some(meta));
        assert!(store.rescan().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(tmp.path().join(".nap/edit")).unwrap().count(),
            0
        );
    }

    #[test]
    fn identity_is_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        assert!(store.load_identity().is_none());
        let id = Identity {
            peer_id: "p".into(),
            token: "t".into(),
        };
        store.save_identity(&id).unwrap();
        assert_eq!(store.load_identity(), Some(id));
        let mode = fs::metadata(tmp.path().join(".nap/identity.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
