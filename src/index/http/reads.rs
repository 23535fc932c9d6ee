//! The handlers that only read: search, one file's record, status, health. None changes the
//! state; each holds the read lock only while it copies what it answers.

use super::reply::{ApiError, Reply};
use super::validate;
use crate::index::Index;
use crate::protocol::{
    self, FileInfoResponse, HealthResponse, HolderVersion, LeaseInfo, StatusResponse, VersionEntry,
};

pub fn file_info(index: &Index, query: &str) -> Result<Reply, ApiError> {
    let name = validate::query_params(query)?
        .into_iter()
        .find(|(key, _)| *key == "name")
        .map(|(_, value)| value)
        .ok_or_else(|| ApiError::bad_request("missing query parameter name"))?;
    validate::name(index.config(), &name)?;
    let now = index.now();
    let state = index.read();
    let entry = state
        .file(&name)
        .ok_or_else(|| ApiError::not_found(format!("no version of {name} is known")))?;
    let info = FileInfoResponse {
        name: name.clone(),
        versions: entry
            .versions
            .iter()
            .map(|(v, i)| VersionEntry {
                version: *v,
                size: i.size,
                sha256: i.sha256.to_string(),
                created_ms: i.created_ms,
            })
            .collect(),
        holders: entry
            .holders
            .iter()
            .filter_map(|(id, version)| {
                state.peer(id).map(|p| HolderVersion {
                    peer_id: id.clone(),
                    addr: p.addr.clone(),
                    version: *version,
                })
            })
            .collect(),
        lease: state.leases().live(&name, now).map(|l| LeaseInfo {
            holder: l.peer_id.clone(),
            remaining_ms: l.remaining_ms(now),
        }),
    };
    drop(state);
    Ok(Reply::json(200, &info))
}

pub fn search(index: &Index, query: &str) -> Result<Reply, ApiError> {
    let mut text = None;
    let max = index.config().max_search_results;
    let mut limit = protocol::DEFAULT_SEARCH_LIMIT.min(max);
    for (key, value) in validate::query_params(query)? {
        match key {
            "q" => text = Some(value),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request("limit must be a whole number"))?;
                if limit > max {
                    return Err(ApiError::bad_request(format!(
                        "limit {limit} is more than this index answers: at most {max} \
                         (--max-search-results)"
                    )));
                }
            }
            _ => {}
        }
    }
    let text = text.ok_or_else(|| ApiError::bad_request("missing query parameter q"))?;
    let found = index.read().search_counted(&text, limit);
    Ok(Reply::json(200, &found))
}

/// `GET /status`; with `?digest=1` also the state digest (it costs a pass over the state).
pub fn status(index: &Index, query: &str) -> Result<Reply, ApiError> {
    let with_digest = validate::query_params(query)?
        .iter()
        .any(|(key, value)| *key == "digest" && matches!(value.as_str(), "1" | "true"));
    let (peers, files, histories, seq, leases, epoch, digest) = {
        let state = index.read();
        (
            state.peer_count(),
            state.held_file_count(),
            state.file_count(),
            state.seq(),
            state.leases().len(),
            state.epoch().to_string(),
            with_digest.then(|| state.digest()),
        )
    };
    let config = index.config();
    let (under_replicated, under_replicated_files) = index.under_replicated(100);
    Ok(Reply::json(
        200,
        &StatusResponse {
            role: index.role().name().into(),
            epoch,
            primary: index.role().shadow().map(|s| s.primary.clone()),
            last_sync_ms_ago: index.since_last_sync().map(|d| d.as_millis() as u64),
            replication_factor: config.replication_factor,
            tasks_in_flight: index.copy_counts().in_flight,
            under_replicated,
            under_replicated_files,
            shadows: index.shadow_states(seq),
            peers,
            files,
            histories,
            history_retention_ms: config.history_retention.map_or(0, |d| d.as_millis() as u64),
            seq,
            uptime_ms: index.uptime().as_millis() as u64,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            peer_timeout_ms: config.peer_timeout.as_millis() as u64,
            leases,
            lease_ttl_ms: config.lease_ttl.as_millis() as u64,
            digest,
        },
    ))
}

/// `GET /health`: answered without touching the state.
pub fn health(index: &Index) -> Reply {
    Reply::json(
        200,
        &HealthResponse {
            ok: true,
            role: index.role().name().into(),
        },
    )
}
