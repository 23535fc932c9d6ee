//! The planner: pure functions from the index state to the copy tasks handed out in heartbeat
//! and register answers. It reads the state and changes nothing, so it can run under the read
//! lock, on the shadow, or in a test, and always says the same for the same state.

use super::state::IndexState;
use crate::protocol::Task;

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
            sha256: info.sha256.clone(),
            size: info.size,
            sources,
        });
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::state::tests::meta;
    use crate::index::state::{hash_token, Op};
    use crate::protocol::FileMeta;

    fn register(id: &str, port: u16, files: Vec<FileMeta>) -> Op {
        Op::Register {
            peer_id: id.into(),
            token_hash: hash_token(id),
            addr: format!("127.0.0.1:{port}"),
            files,
        }
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
            Op::AcquireLease {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
                file: "doc".into(),
                lease_id: "L".into(),
                ttl_ms: 100,
            },
            1,
        )
        .unwrap();
        s.apply(
            Op::Announce {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
                file: meta("doc", 2, "v2"),
                lease_id: Some("L".into()),
            },
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
            Op::Prune {
                peers: vec!["a".into()],
            },
            3,
        )
        .unwrap();
        assert!(refresh_tasks(&s, "b").is_empty());
    }
}
