//! The handlers that change the index: parse and check the request, build the command, submit
//! it, and render its typed outcome. Each answer waits for its op to be durable (`Reply::after`).

use std::time::Duration;

use super::long_poll::MAX_WAIT;
use super::reply::{rejected, ApiError, Park, Reply};
use super::validate;
use crate::index::lease::Lease;
use crate::index::state::{
    AcquireLease, Announce, Heartbeat, Register, ReleaseLease, RenewLease, Unregister,
};
use crate::index::Index;
use crate::protocol::{
    AnnounceRequest, AnnounceResponse, ErrorCode, FileMeta, HeartbeatRequest, HeartbeatResponse,
    LeaseIdRequest, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse,
    ReleaseResponse, UnregisterRequest,
};

/// Most task failures one heartbeat may report.
const MAX_FAILURES: usize = 1024;

pub fn register(index: &Index, rq: RegisterRequest) -> Result<Reply, ApiError> {
    let config = index.config();
    validate::addr(&rq.addr)?;
    validate::files(config, &rq.files)?;
    let (peer_id, token) = match (rq.peer_id, rq.token) {
        (Some(id), Some(token)) => (id, token),
        (None, None) => {
            let fresh = |n| {
                index
                    .ids()
                    .hex(n)
                    .map_err(|e| ApiError::internal(format!("no randomness for ids: {e}")))
            };
            (fresh(8)?, fresh(16)?)
        }
        (Some(id), None) => {
            return Err(ApiError::new(
                ErrorCode::BadToken,
                format!(
                    "peer_id {id} given without its token; send both, or neither for a new \
                     identity"
                ),
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "token given without peer_id; send both, or neither for a new identity",
            ))
        }
    };
    let token_hash = validate::credentials(&peer_id, &token)?;
    let addr = rq.addr.clone();
    let applied = index.submit(Register {
        peer_id: peer_id.clone(),
        token_hash,
        addr: rq.addr,
        files: rq.files,
        limits: config.limits(),
    })?;
    let registered = applied.outcome;
    log::info!(
        "{} peer {peer_id} at {addr}{}",
        if registered.new_peer {
            "registered"
        } else {
            "re-registered"
        },
        if registered.refused.is_empty() {
            String::new()
        } else {
            format!(" ({} file(s) rejected)", registered.refused.len())
        }
    );
    let tasks = index.deliver_tasks(&peer_id);
    Ok(Reply::json(
        200,
        &RegisterResponse {
            peer_id,
            token,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            tasks,
            rejected: rejected(registered.refused),
        },
    )
    .after(applied.seq, applied.wake))
}

pub fn heartbeat(index: &Index, rq: HeartbeatRequest) -> Result<Reply, ApiError> {
    let config = index.config();
    let token_hash = validate::credentials(&rq.peer_id, &rq.token)?;
    validate::count(config, rq.added.len() + rq.removed.len())?;
    validate::files(config, &rq.added)?;
    validate::names(config, &rq.removed)?;
    if rq.failed.len() > MAX_FAILURES {
        return Err(ApiError::bad_request(format!(
            "more than {MAX_FAILURES} failed tasks reported"
        )));
    }
    let peer_id = rq.peer_id.clone();
    let wait = Duration::from_millis(rq.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let failed = rq.failed;
    let (rejected, seq, wake) = if rq.added.is_empty() && rq.removed.is_empty() {
        // "Still alive" is not a change of the index: no op (see `shadowing`).
        index.touch(&rq.peer_id, &token_hash)?;
        (Vec::new(), 0, Vec::new())
    } else {
        let applied = index.submit(Heartbeat {
            peer_id: rq.peer_id,
            token_hash,
            added: rq.added,
            removed: rq.removed,
            limits: config.limits(),
        })?;
        (rejected(applied.outcome.refused), applied.seq, applied.wake)
    };
    // Reported only once the peer is known to be who it says (the op or touch checked it).
    index.tasks_failed(&peer_id, &failed);
    if wait.is_zero() {
        // A report, not a poll: the tasks go along for information, the poll delivers them.
        let tasks = index.tasks_for(&peer_id);
        return Ok(Reply::json(200, &HeartbeatResponse { tasks, rejected }).after(seq, wake));
    }
    if index.has_new_tasks(&peer_id) {
        let tasks = index.deliver_tasks(&peer_id);
        return Ok(Reply::json(200, &HeartbeatResponse { tasks, rejected }).after(seq, wake));
    }
    // Nothing new: hold the poll until there is, or its wait is over (then it carries the
    // tasks already sent again, as a reminder).
    let mut reply = Reply::json(200, &HeartbeatResponse::default()).after(seq, wake);
    reply.park = Some(Park {
        peer_id,
        wait,
        rejected,
    });
    Ok(reply)
}

pub fn announce(index: &Index, rq: AnnounceRequest) -> Result<Reply, ApiError> {
    let token_hash = validate::credentials(&rq.peer_id, &rq.token)?;
    let file = FileMeta {
        name: rq.file,
        version: rq.version,
        size: rq.size,
        sha256: rq.sha256,
    };
    validate::file(index.config(), &file)?;
    if let Some(id) = &rq.lease_id {
        validate::lease_id(id)?;
    }
    let (name, version) = (file.name.clone(), file.version);
    let applied = index.submit(Announce {
        peer_id: rq.peer_id,
        token_hash,
        file,
        lease_id: rq.lease_id,
        limits: index.config().limits(),
    })?;
    // Holders of an older version now have a refresh task: their waiting heartbeats are
    // answered with the announce (once it is on disk), not at the end of their wait.
    Ok(Reply::json(
        200,
        &AnnounceResponse {
            file: name,
            version,
            latest_version: applied.outcome.latest_version,
        },
    )
    .after(applied.seq, applied.wake))
}

pub fn unregister(index: &Index, rq: UnregisterRequest) -> Result<Reply, ApiError> {
    let token_hash = validate::credentials(&rq.peer_id, &rq.token)?;
    let peer_id = rq.peer_id.clone();
    let applied = index.submit(Unregister {
        peer_id: rq.peer_id,
        token_hash,
    })?;
    log::info!("peer {peer_id} unregistered");
    Ok(Reply::json(200, &serde_json::json!({ "ok": true })).after(applied.seq, applied.wake))
}

fn lease_reply(index: &Index, lease: &Lease, latest: FileMeta) -> Reply {
    Reply::json(
        200,
        &LeaseResponse {
            lease_id: lease.lease_id.clone(),
            file: lease.file.clone(),
            ttl_ms: lease.remaining_ms(index.now()),
            version: latest.version,
            size: latest.size,
            sha256: latest.sha256,
        },
    )
}

pub fn lease(index: &Index, rq: LeaseRequest) -> Result<Reply, ApiError> {
    let token_hash = validate::credentials(&rq.peer_id, &rq.token)?;
    validate::name(index.config(), &rq.file)?;
    let lease_id = index
        .ids()
        .hex(16)
        .map_err(|e| ApiError::internal(format!("no randomness for lease ids: {e}")))?;
    let ttl = index.config().lease_ttl;
    let applied = index.submit(AcquireLease {
        peer_id: rq.peer_id,
        token_hash,
        file: rq.file,
        lease_id,
        ttl_ms: ttl.as_millis() as u64,
    })?;
    let leased = applied.outcome;
    log::info!(
        "peer {} leased {} (v{}) for {ttl:?}",
        leased.lease.peer_id,
        leased.lease.file,
        leased.latest.version,
    );
    Ok(lease_reply(index, &leased.lease, leased.latest).after(applied.seq, applied.wake))
}

pub fn renew_lease(index: &Index, rq: LeaseIdRequest) -> Result<Reply, ApiError> {
    let token_hash = validate::credentials(&rq.peer_id, &rq.token)?;
    validate::lease_id(&rq.lease_id)?;
    let applied = index.submit(RenewLease {
        peer_id: rq.peer_id,
        token_hash,
        lease_id: rq.lease_id,
        ttl_ms: index.config().lease_ttl.as_millis() as u64,
    })?;
    let leased = applied.outcome;
    Ok(lease_reply(index, &leased.lease, leased.latest).after(applied.seq, applied.wake))
}

pub fn release_lease(index: &Index, rq: LeaseIdRequest) -> Result<Reply, ApiError> {
    let token_hash = validate::credentials(&rq.peer_id, &rq.token)?;
    validate::lease_id(&rq.lease_id)?;
    let peer_id = rq.peer_id.clone();
    let applied = index.submit(ReleaseLease {
        peer_id: rq.peer_id,
        token_hash,
        lease_id: rq.lease_id,
    })?;
    let file = applied.outcome.file;
    log::info!("peer {peer_id} released its lease on {file}");
    Ok(Reply::json(
        200,
        &ReleaseResponse {
            released: true,
            file,
        },
    )
    .after(applied.seq, applied.wake))
}
