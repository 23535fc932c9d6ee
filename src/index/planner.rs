//! The planner: functions from the index state to the copy tasks handed out in heartbeat and
//! register answers. No I/O, no clock, no threads: the state (read-locked) and the time come in,
//! tasks come out, so the same inputs always give the same plan, in a test as in the server.
//!
//! Two kinds of task: *refresh* (a peer holding an older version fetches the latest) and
//! *copy* (replication: a file whose latest version has fewer than R up-to-date holders gets
//! more). Copies in flight are tracked in [`InFlight`], soft state kept beside the index state:
//! it is not replicated, and a new primary simply plans again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::metrics::TaskCounts;
use super::state::{FileEntry, IndexState, Millis, Touched};
use crate::protocol::{Task, UnderReplicatedFile};

/// At most this many sources per task: enough to survive a few dead holders, short enough to
/// keep answers small for popular files.
const MAX_SOURCES: usize = 8;

/// Tasks for `peer_id` to bring each file it holds at an older version up to the latest, from
/// the holders of the latest. Files with no live holder of the latest get no task (there is
/// nowhere to fetch from). Task ids name the file and version, so a repeated task is
/// recognisable as the same one.
pub fn refresh_tasks(state: &IndexState, peer_id: &str) -> Vec<Task> {
    let Some(peer) = state.peer(peer_id) else {
        return Vec::new();
    };
    let mut tasks = Vec::new();
    for name in &peer.files {
        let Some(entry) = state.file(name) else {
            continue;
        };
        let Some((latest, info)) = entry.latest() else {
            continue;
        };
        if entry
            .holders
            .get(peer_id)
            .is_none_or(|held| *held >= latest)
        {
            continue;
        }
        let sources: Vec<String> = entry
            .holders
            .iter()
            .filter(|(id, held)| **held == latest && id.as_str() != peer_id)
            .filter_map(|(id, _)| state.peer(id).map(|p| p.addr.clone()))
            .take(MAX_SOURCES)
            .collect();
        if sources.is_empty() {
            continue;
        }
        tasks.push(Task {
            task_id: format!("refresh:{name}:v{latest}"),
            file: name.clone(),
            version: latest,
            sha256: info.sha256.to_string(),
            size: info.size,
            sources,
        });
    }
    tasks
}

/// What the planner aims for, and its limits.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Up-to-date copies wanted of each file's latest version.
    pub replication_factor: usize,
    /// Copy tasks in flight per peer, at most.
    pub max_tasks_per_peer: usize,
    /// A copy not done by then is given to another peer.
    pub task_timeout_ms: u64,
    /// Names one peer may hold (`--max-files-per-peer`): a peer that holds that many, its
    /// copies in flight counted, would be refused the copy, so it is not asked.
    pub max_files_per_peer: usize,
}

/// A copy handed to a peer and not yet seen done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub peer_id: String,
    pub task: Task,
    pub deadline_ms: Millis,
    /// Sent to the peer in a heartbeat answer at least once.
    pub sent: bool,
}

/// Copy tasks in flight, and copies that failed or timed out lately (not handed to the same
/// peer again until their cool-down ends).
#[derive(Debug, Default)]
pub struct InFlight {
    by_id: BTreeMap<String, Assignment>,
    /// peer -> its task ids, so a heartbeat finds its peer's tasks without a scan.
    by_peer: HashMap<String, BTreeSet<String>>,
    /// (file, version, peer) -> until when not to ask that peer again.
    cooling: HashMap<(String, u64, String), Millis>,
    /// The files below R after the last pass, kept up to date from the names the state
    /// says changed, so that a pass costs what changed, not the whole index.
    short: BTreeSet<String>,
    /// Whether `short` was ever filled: a new planner starts with a look at every file.
    scanned: bool,
    /// Tasks assigned, done, reported failed and timed out since start, for `/metrics`.
    counts: TaskCounts,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The tasks in flight now, and those planned, done, failed and timed out since start.
    pub fn counts(&self) -> TaskCounts {
        TaskCounts {
            in_flight: self.by_id.len(),
            ..self.counts
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The copy tasks `peer_id` has in flight, to send (again) with its next answer.
    pub fn tasks_for(&self, peer_id: &str) -> Vec<Task> {
        self.by_peer
            .get(peer_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .map(|a| a.task.clone())
            .collect()
    }

    /// The copy tasks of `peer_id`, marked as sent: what a long poll or register answers.
    pub fn deliver(&mut self, peer_id: &str) -> Vec<Task> {
        let ids: Vec<String> = self
            .by_peer
            .get(peer_id)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut tasks = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(a) = self.by_id.get_mut(id) {
                a.sent = true;
                tasks.push(a.task.clone());
            }
        }
        tasks
    }

    /// Whether `peer_id` has a copy task it has not been sent yet.
    pub fn has_unsent(&self, peer_id: &str) -> bool {
        self.by_peer
            .get(peer_id)
            .into_iter()
            .flatten()
            .any(|id| self.by_id.get(id).is_some_and(|a| !a.sent))
    }

    /// `peer_id` announced `file` at `version`: its copy task, if any, is done, and the slot
    /// is free for the next one without waiting for a planning pass.
    pub fn done(&mut self, peer_id: &str, file: &str, version: u64) -> bool {
        let done = self
            .remove(&format!("copy:{file}:v{version}:{peer_id}"))
            .is_some();
        if done {
            self.counts.completed += 1;
        }
        done
    }

    /// The peer reports that it could not make the copy: it goes to someone else.
    pub fn failed(&mut self, peer_id: &str, task_id: &str, now: Millis, cool_down_ms: u64) -> bool {
        if self.by_id.get(task_id).is_none_or(|a| a.peer_id != peer_id) {
            return false;
        }
        if let Some(a) = self.remove(task_id) {
            self.cool(&a, now + cool_down_ms);
            self.counts.failed += 1;
        }
        true
    }

    fn insert(&mut self, a: Assignment) {
        self.counts.planned += 1;
        self.by_peer
            .entry(a.peer_id.clone())
            .or_default()
            .insert(a.task.task_id.clone());
        self.by_id.insert(a.task.task_id.clone(), a);
    }

    fn remove(&mut self, task_id: &str) -> Option<Assignment> {
        let a = self.by_id.remove(task_id)?;
        if let Some(ids) = self.by_peer.get_mut(&a.peer_id) {
            ids.remove(task_id);
            if ids.is_empty() {
                self.by_peer.remove(&a.peer_id);
            }
        }
        Some(a)
    }

    fn cool(&mut self, a: &Assignment, until: Millis) {
        self.cooling.insert(
            (a.task.file.clone(), a.task.version, a.peer_id.clone()),
            until,
        );
    }

    fn cooling(&self, file: &str, version: u64, peer_id: &str, now: Millis) -> bool {
        self.cooling
            .get(&(file.to_string(), version, peer_id.to_string()))
            .is_some_and(|until| now < *until)
    }
}

/// How a task in flight left the books.
enum Settled {
    Done,
    /// Its peer left, or a newer version made it pointless.
    Moot,
    Late,
}

/// What one planning pass did.
#[derive(Debug, Default)]
pub struct Plan {
    /// Peers that got new tasks (to wake their waiting heartbeats).
    pub assigned: BTreeSet<String>,
    /// Tasks that ran past their deadline and were taken back.
    pub timed_out: Vec<Assignment>,
    /// Files below the replication factor after this pass, by name.
    pub under_replicated: Vec<UnderReplicatedFile>,
}

/// One planning pass. First the copies in flight are checked against the state: done (the
/// peer now holds that version), moot (peer gone, version superseded) or late (past the
/// deadline: taken back, and that peer is not asked for that copy again for a while) ones
/// are dropped. Then every file below R with at least one up-to-date holder gets copies
/// assigned to peers that lack it, least loaded first (fewest files, then fewest tasks in
/// flight), at most `max_tasks_per_peer` in flight per peer and never two for one copy.
///
/// `touched` names the files changed since the last pass (`IndexState::take_touched`);
/// only those are checked against R again, besides the files already below it.
///
/// Cost: one pass over the changed and the under-replicated files (over all of them when
/// `touched` is `All`), one over the peers and one over the tasks in flight; each
/// assignment walks the load-ordered peers only past those that cannot take it.
pub fn plan(
    state: &IndexState,
    touched: Touched,
    flight: &mut InFlight,
    now: Millis,
    cfg: &PlanConfig,
) -> Plan {
    let mut out = Plan::default();
    let mut settled = Vec::new();
    for (id, a) in &flight.by_id {
        let entry = state.file(&a.task.file);
        let latest = entry.map_or(0, |e| e.latest_version());
        let held = entry.and_then(|e| e.holders.get(&a.peer_id)).copied();
        if held == Some(latest) && latest == a.task.version {
            // Made (and announced, or reported in a heartbeat or a register).
            settled.push((id.clone(), Settled::Done));
        } else if state.peer(&a.peer_id).is_none()
            || latest != a.task.version
            || held == Some(latest)
        {
            settled.push((id.clone(), Settled::Moot));
        } else if now >= a.deadline_ms {
            settled.push((id.clone(), Settled::Late));
        }
    }
    for (id, how) in settled {
        if let Some(a) = flight.remove(&id) {
            match how {
                Settled::Done => flight.counts.completed += 1,
                Settled::Moot => {}
                Settled::Late => {
                    flight.counts.timed_out += 1;
                    flight.cool(&a, now + cfg.task_timeout_ms);
                    out.timed_out.push(a);
                }
            }
        }
    }
    flight.cooling.retain(|_, until| now < *until);

    let mut per_peer: HashMap<&str, usize> = HashMap::new();
    let mut per_copy: HashMap<(&str, u64), Vec<&str>> = HashMap::new();
    for a in flight.by_id.values() {
        *per_peer.entry(&a.peer_id).or_default() += 1;
        per_copy
            .entry((&a.task.file, a.task.version))
            .or_default()
            .push(&a.peer_id);
    }

    // Files below R, in name order so that a plan does not depend on hash order.
    let want = cfg.replication_factor;
    let below = |entry: &FileEntry| {
        let latest = entry.latest_version();
        let holders = entry.holders.values().filter(|v| **v == latest).count();
        // No holder at all: the file left the network with its last holder; not ours to copy.
        (holders > 0 && holders < want).then_some((latest, holders))
    };
    let touched = if flight.scanned {
        touched
    } else {
        Touched::All
    };
    flight.scanned = true;
    match touched {
        Touched::All => {
            flight.short = state
                .file_names()
                .filter(|name| state.file(name).and_then(below).is_some())
                .map(str::to_string)
                .collect();
        }
        Touched::Names(names) => {
            for name in names {
                if state.file(&name).and_then(below).is_some() {
                    flight.short.insert(name);
                } else {
                    flight.short.remove(&name);
                }
            }
        }
    }
    let short: Vec<(&str, &FileEntry, u64, usize)> = flight
        .short
        .iter()
        .filter_map(|name| state.file_named(name))
        .filter_map(|(name, entry)| below(entry).map(|(v, h)| (name, entry, v, h)))
        .collect();

    // Peers that can take a task, least loaded first. A task taken this pass counts in
    // both numbers of the key, so the cap is kept with a little room to spare (at most
    // `max_tasks_per_peer` names) rather than overrun.
    let can_take = |files: usize, tasks: usize| {
        tasks < cfg.max_tasks_per_peer && files.saturating_add(tasks) < cfg.max_files_per_peer
    };
    let mut ready: BTreeSet<(usize, usize, &str)> = state
        .peer_ids()
        .filter_map(|id| {
            let tasks = per_peer.get(id).copied().unwrap_or(0);
            let files = state.peer(id).map_or(0, |p| p.files.len());
            can_take(files, tasks).then_some((files, tasks, id))
        })
        .collect();

    let mut new = Vec::new();
    for (name, entry, version, holders) in short {
        let taken_by = per_copy.get(&(name, version));
        let in_flight = taken_by.map_or(0, Vec::len);
        let missing = want.saturating_sub(holders + in_flight);
        let Some(info) = entry.versions.get(&version) else {
            continue;
        };
        // Not a holder of any version (stale ones are refreshed instead), not already copying
        // it, not lately failed at it.
        let candidates: Vec<(usize, usize, &str)> = ready
            .iter()
            .filter(|(_, _, id)| {
                !entry.holders.contains_key(*id)
                    && !taken_by.is_some_and(|t| t.contains(id))
                    && !flight.cooling(name, version, id, now)
            })
            .take(missing)
            .copied()
            .collect();
        let sources: Vec<String> = entry
            .holders
            .iter()
            .filter(|(_, v)| **v == version)
            .filter_map(|(id, _)| state.peer(id).map(|p| p.addr.clone()))
            .take(MAX_SOURCES)
            .collect();
        for key in &candidates {
            let (files, tasks, id) = *key;
            ready.remove(key);
            if can_take(files + 1, tasks + 1) {
                ready.insert((files + 1, tasks + 1, id));
            }
            new.push(Assignment {
                peer_id: id.to_string(),
                task: Task {
                    task_id: format!("copy:{name}:v{version}:{id}"),
                    file: name.to_string(),
                    version,
                    sha256: info.sha256.to_string(),
                    size: info.size,
                    sources: sources.clone(),
                },
                deadline_ms: now + cfg.task_timeout_ms,
                sent: false,
            });
        }
        out.under_replicated.push(UnderReplicatedFile {
            name: name.to_string(),
            version,
            holders,
            in_flight: in_flight + candidates.len(),
        });
    }
    for a in new {
        out.assigned.insert(a.peer_id.clone());
        flight.insert(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::state::tests::meta;
    use crate::index::state::*;
    use crate::protocol::FileMeta;

    /// A planner pass as the planner thread runs it: over the names changed since the last.
    fn pass(s: &mut IndexState, flight: &mut InFlight, now: Millis, cfg: &PlanConfig) -> Plan {
        let touched = s.take_touched();
        plan(s, touched, flight, now, cfg)
    }

    fn register(id: &str, port: u16, files: Vec<FileMeta>) -> Op {
        Op::Register(Register {
            peer_id: id.into(),
            token_hash: hash_token(id),
            addr: format!("127.0.0.1:{port}"),
            files,
            limits: Limits::NONE,
        })
    }

    #[test]
    fn stale_holders_are_told_to_fetch_the_latest_from_its_holders() {
        let mut s = IndexState::default();
        s.apply(register("a", 1, vec![meta("doc", 1, "v1")]), 0)
            .unwrap();
        s.apply(
            register("b", 2, vec![meta("doc", 1, "v1"), meta("own", 1, "o")]),
            0,
        )
        .unwrap();
        assert!(refresh_tasks(&s, "a").is_empty());
        assert!(refresh_tasks(&s, "b").is_empty());
        s.apply(
            Op::AcquireLease(AcquireLease {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
                file: "doc".into(),
                lease_id: "L".into(),
                ttl_ms: 100,
            }),
            1,
        )
        .unwrap();
        s.apply(
            Op::Announce(Announce {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
                file: meta("doc", 2, "v2"),
                lease_id: Some("L".into()),
                limits: Limits::NONE,
            }),
            2,
        )
        .unwrap();
        let tasks = refresh_tasks(&s, "b");
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].file, "doc");
        assert_eq!(tasks[0].version, 2);
        assert_eq!(tasks[0].sha256, meta("doc", 2, "v2").sha256);
        assert_eq!(tasks[0].sources, vec!["127.0.0.1:1".to_string()]);
        assert!(refresh_tasks(&s, "a").is_empty());
        assert!(refresh_tasks(&s, "nobody").is_empty());

        // With the only holder of v2 gone there is nowhere to fetch from: no task.
        s.apply(
            Op::Prune(Prune {
                peers: vec!["a".into()],
            }),
            3,
        )
        .unwrap();
        assert!(refresh_tasks(&s, "b").is_empty());
    }

    fn cfg(r: usize, k: usize) -> PlanConfig {
        PlanConfig {
            replication_factor: r,
            max_tasks_per_peer: k,
            task_timeout_ms: 1_000,
            max_files_per_peer: usize::MAX,
        }
    }

    fn holders_of(s: &IndexState, name: &str) -> usize {
        s.file(name).map_or(0, |e| e.holders.len())
    }

    fn announce(s: &mut IndexState, peer: &str, file: crate::protocol::FileMeta, now: Millis) {
        s.apply(
            Op::Announce(Announce {
                peer_id: peer.into(),
                token_hash: hash_token(peer),
                file,
                lease_id: None,
                limits: Limits::NONE,
            }),
            now,
        )
        .unwrap();
    }

    #[test]
    fn copies_go_to_the_least_loaded_peers_once_each() {
        let mut s = IndexState::default();
        s.apply(
            register("a", 1, vec![meta("f", 1, "f"), meta("g", 1, "g")]),
            0,
        )
        .unwrap();
        s.apply(
            register(
                "busy",
                2,
                (0..5).map(|i| meta(&format!("x{i}"), 1, "x")).collect(),
            ),
            0,
        )
        .unwrap();
        s.apply(register("idle1", 3, vec![]), 0).unwrap();
        s.apply(register("idle2", 4, vec![]), 0).unwrap();
        let mut flight = InFlight::default();
        let plan1 = pass(&mut s, &mut flight, 10, &cfg(2, 4));
        let target = |file: &str| -> Vec<String> {
            flight
                .by_id
                .values()
                .filter(|a| a.task.file == file)
                .map(|a| a.peer_id.clone())
                .collect()
        };
        // f and g (a's) go to the idle peers first; the busy peer's five files spread over
        // everyone else; nobody is asked to copy a file it holds; one task per copy.
        let (f, g) = (target("f"), target("g"));
        assert_eq!(f.len(), 1);
        assert_eq!(g.len(), 1);
        assert!(f[0].starts_with("idle") && g[0].starts_with("idle") && f != g);
        for i in 0..5 {
            let x = target(&format!("x{i}"));
            assert_eq!(x.len(), 1);
            assert_ne!(x[0], "busy");
        }
        assert!(flight.tasks_for("busy").is_empty());
        let counts: Vec<usize> = ["a", "idle1", "idle2"]
            .iter()
            .map(|p| flight.tasks_for(p).len())
            .collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 2,
            "{counts:?}"
        );
        assert_eq!(plan1.assigned.len(), 3);
        let task = &flight.tasks_for(&f[0])[0];
        assert_eq!(task.sources, vec!["127.0.0.1:1".to_string()]);
        assert_eq!(task.sha256, meta(&task.file, 1, &task.file).sha256);
        assert_eq!(plan1.under_replicated.len(), 7);

        // Planning again changes nothing: a copy in flight is not handed out twice.
        let before = flight.len();
        let again = pass(&mut s, &mut flight, 20, &cfg(2, 4));
        assert!(again.assigned.is_empty());
        assert_eq!(flight.len(), before);

        // Done copies leave the books; the file is no longer under-replicated.
        let done = flight.tasks_for("idle1")[0].clone();
        announce(&mut s, "idle1", meta(&done.file, 1, &done.file), 30);
        let after = pass(&mut s, &mut flight, 30, &cfg(2, 4));
        assert!(flight
            .tasks_for("idle1")
            .iter()
            .all(|t| t.task_id != done.task_id));
        assert!(after.under_replicated.iter().all(|u| u.name != done.file));
        assert_eq!(holders_of(&s, &done.file), 2);
    }

    #[test]
    fn in_flight_tasks_per_peer_are_limited() {
        let mut s = IndexState::default();
        let files: Vec<_> = (0..10).map(|i| meta(&format!("f{i}"), 1, "c")).collect();
        s.apply(register("a", 1, files), 0).unwrap();
        s.apply(register("b", 2, vec![]), 0).unwrap();
        let mut flight = InFlight::default();
        pass(&mut s, &mut flight, 0, &cfg(2, 3));
        assert_eq!(flight.tasks_for("b").len(), 3, "K = 3");
        assert!(flight.tasks_for("a").is_empty(), "a holds them all");
        // With R = 3 and only two peers, the rest waits: reported under-replicated.
        let mut flight = InFlight::default();
        let p = pass(&mut s, &mut flight, 0, &cfg(3, 100));
        assert_eq!(flight.tasks_for("b").len(), 10);
        assert_eq!(p.under_replicated.len(), 10);
        assert!(p
            .under_replicated
            .iter()
            .all(|u| u.holders == 1 && u.in_flight == 1));
    }

    #[test]
    fn late_or_failed_copies_go_to_another_peer() {
        let mut s = IndexState::default();
        let other = meta("other", 1, "o");
        s.apply(register("a", 1, vec![meta("f", 1, "f"), other.clone()]), 0)
            .unwrap();
        s.apply(register("b", 2, vec![]), 0).unwrap();
        s.apply(register("c", 3, vec![other]), 0).unwrap();
        let mut flight = InFlight::default();
        pass(&mut s, &mut flight, 0, &cfg(2, 4));
        let first = flight.tasks_for("b");
        assert_eq!(first.len(), 1, "b has fewer files than c");
        // Past the deadline: taken back, and given to c; b is not asked again for a while.
        let p = pass(&mut s, &mut flight, 1_000, &cfg(2, 4));
        assert_eq!(p.timed_out.len(), 1);
        assert_eq!(flight.tasks_for("c")[0].file, "f");
        assert!(flight.tasks_for("b").is_empty());
        // c reports a failure: the copy goes back to b once b's cool-down is over.
        let task_id = flight.tasks_for("c")[0].task_id.clone();
        assert!(flight.failed("c", &task_id, 1_100, 5_000));
        assert!(!flight.failed("c", &task_id, 1_100, 5_000), "only once");
        pass(&mut s, &mut flight, 1_200, &cfg(2, 4));
        assert!(flight.is_empty(), "b cools down until 2000, c until 6100");
        pass(&mut s, &mut flight, 2_000, &cfg(2, 4));
        assert_eq!(flight.tasks_for("b").len(), 1);
        // A peer that leaves takes its tasks with it.
        s.apply(
            Op::Prune(Prune {
                peers: vec!["b".into()],
            }),
            2_100,
        )
        .unwrap();
        pass(&mut s, &mut flight, 2_100, &cfg(2, 4));
        assert!(flight.tasks_for("b").is_empty());
    }

    #[test]
    fn files_with_no_holder_or_enough_holders_get_no_copies() {
        let mut s = IndexState::default();
        s.apply(register("a", 1, vec![meta("f", 1, "f")]), 0)
            .unwrap();
        s.apply(register("b", 2, vec![meta("f", 1, "f")]), 0)
            .unwrap();
        s.apply(register("c", 3, vec![]), 0).unwrap();
        let mut flight = InFlight::default();
        let p = pass(&mut s, &mut flight, 0, &cfg(2, 4));
        assert!(flight.is_empty() && p.under_replicated.is_empty());
        s.apply(
            Op::Prune(Prune {
                peers: vec!["a".into(), "b".into()],
            }),
            1,
        )
        .unwrap();
        let p = pass(&mut s, &mut flight, 1, &cfg(2, 4));
        assert!(flight.is_empty() && p.under_replicated.is_empty());
    }

    #[test]
    fn a_peer_at_its_cap_of_names_is_not_asked_to_copy() {
        let mut s = IndexState::default();
        s.apply(
            register("a", 1, vec![meta("f", 1, "f"), meta("g", 1, "g")]),
            0,
        )
        .unwrap();
        s.apply(register("full", 2, vec![meta("x", 1, "x")]), 0)
            .unwrap();
        s.apply(
            register("room", 3, vec![meta("y", 1, "y"), meta("z", 1, "z")]),
            0,
        )
        .unwrap();
        let mut flight = InFlight::default();
        let capped = PlanConfig {
            max_files_per_peer: 2,
            ..cfg(2, 4)
        };
        pass(&mut s, &mut flight, 0, &capped);
        // "full" holds one name and could take one copy; "room" holds two: none. f and g
        // both need a copy, and only one fits anywhere.
        assert_eq!(flight.tasks_for("full").len(), 1);
        assert!(flight.tasks_for("room").is_empty());
        assert_eq!(flight.len(), 1);
    }

    #[test]
    fn tasks_are_sent_once_and_settled_by_the_announce() {
        let mut s = IndexState::default();
        s.apply(register("a", 1, vec![meta("f", 1, "f")]), 0)
            .unwrap();
        s.apply(register("b", 2, vec![]), 0).unwrap();
        let mut flight = InFlight::default();
        pass(&mut s, &mut flight, 0, &cfg(2, 4));
        assert!(flight.has_unsent("b"));
        assert_eq!(flight.deliver("b").len(), 1);
        assert!(
            !flight.has_unsent("b"),
            "a poll now waits for something new"
        );
        assert_eq!(flight.tasks_for("b").len(), 1, "still in flight");
        assert!(flight.done("b", "f", 1));
        assert!(flight.is_empty());
        assert!(!flight.done("b", "f", 1));
    }

    #[test]
    fn the_changed_names_keep_the_short_list_a_full_scan_would_find() {
        let c = cfg(2, 1_000);
        let full_scan = |s: &IndexState| -> Vec<String> {
            let mut fresh = InFlight::default();
            let p = plan(s, Touched::All, &mut fresh, 0, &c);
            p.under_replicated.into_iter().map(|u| u.name).collect()
        };
        let files =
            |names: &[&str]| -> Vec<FileMeta> { names.iter().map(|n| meta(n, 1, n)).collect() };
        let lease = |s: &mut IndexState, peer: &str, file: &str, id: &str| {
            s.apply(
                Op::AcquireLease(AcquireLease {
                    peer_id: peer.into(),
                    token_hash: hash_token(peer),
                    file: file.into(),
                    lease_id: id.into(),
                    ttl_ms: 60_000,
                }),
                0,
            )
            .unwrap();
        };
        type Change<'a> = Box<dyn Fn(&mut IndexState) + 'a>;
        let ops: Vec<Change> = vec![
            Box::new(|s| {
                s.apply(register("a", 1, files(&["f0", "f1", "f2", "f3"])), 0)
                    .unwrap();
            }),
            Box::new(|s| {
                s.apply(register("b", 2, files(&["f0", "f1"])), 0).unwrap();
            }),
            Box::new(|s| {
                let op = Op::Heartbeat(Heartbeat {
                    peer_id: "b".into(),
                    token_hash: hash_token("b"),
                    added: files(&["f2"]),
                    removed: vec!["f1".into()],
                    limits: Limits::NONE,
                });
                s.apply(op, 0).unwrap();
            }),
            Box::new(|s| {
                lease(s, "a", "f0", "L1");
                let op = Op::Announce(Announce {
                    peer_id: "a".into(),
                    token_hash: hash_token("a"),
                    file: meta("f0", 2, "f0 v2"),
                    lease_id: Some("L1".into()),
                    limits: Limits::NONE,
                });
                s.apply(op, 0).unwrap();
            }),
            Box::new(|s| {
                s.apply(register("c", 3, vec![meta("f0", 2, "f0 v2")]), 0)
                    .unwrap();
            }),
            Box::new(|s| {
                let op = Op::Unregister(Unregister {
                    peer_id: "a".into(),
                    token_hash: hash_token("a"),
                });
                s.apply(op, 0).unwrap();
            }),
            Box::new(|s| {
                s.apply(
                    Op::Prune(Prune {
                        peers: vec!["b".into()],
                    }),
                    0,
                )
                .unwrap();
            }),
        ];
        let mut s = IndexState::default();
        let mut flight = InFlight::default();
        for (n, op) in ops.iter().enumerate() {
            op(&mut s);
            let p = pass(&mut s, &mut flight, n as u64, &c);
            let incremental: Vec<String> = p.under_replicated.into_iter().map(|u| u.name).collect();
            assert_eq!(incremental, full_scan(&s), "after op {n}");
        }
    }
}
