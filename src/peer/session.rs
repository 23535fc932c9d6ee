//! The peer's session with the index, as a value: who we are to the index, whether it may
//! have lost track of us, the file-list changes, task failures and in-doubt publishes it has
//! not heard of yet, the heartbeat interval it set, and what the user should be told.
//! Events come in (a rescan found changes, a call was answered or failed, a task failed, we
//! installed a file); out come the next request to send, built from this state, and how long
//! the agent waits before its next round.
//!
//! It must not do I/O, read a clock, start threads or draw randomness: the agent and the
//! peer's other edges do that and report here, passing time in as an argument. So every
//! decision can be tested without sockets or timing luck. (It logs; a log line decides
//! nothing.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::files::{Changes, Identity};
use crate::protocol::{
    ErrorCode, FileMeta, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
    Rejected, TaskFailure,
};

/// The interval until the index names one.
const FIRST_INTERVAL: Duration = Duration::from_millis(1000);
/// The shortest interval taken from an index, so that a misconfigured one cannot make us spin.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// How long to wait before retrying when no index answered.
pub const RETRY: Duration = Duration::from_secs(1);

/// How a call to the index failed, as far as the session's decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An index answered and refused: nothing changed there. The code says why.
    Refused(ErrorCode),
    /// No index answered for sure: what was sent may have been applied, or not.
    Unanswered,
}

impl Failure {
    fn unknown_peer(self) -> bool {
        self == Failure::Refused(ErrorCode::UnknownPeer)
    }
}

/// A publish no index confirmed or refused, to settle when an index answers again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubt {
    pub meta: FileMeta,
    pub lease_id: String,
    /// Where the edit is kept meanwhile.
    pub kept: PathBuf,
}

/// The agent's next call.
#[derive(Debug, Clone)]
pub enum Round {
    /// The whole file list: the index may have lost track of us.
    Register(RegisterRequest),
    /// A long poll carrying the queued changes; the index may hold it `wait_ms`.
    Heartbeat(HeartbeatRequest),
}

/// What the agent's round came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundEnd {
    Registered,
    RegisterFailed,
    /// A heartbeat was answered; `new_tasks` of its tasks were not already queued or running.
    Answered {
        new_tasks: usize,
    },
    HeartbeatFailed(Failure),
}

/// What the agent does after a round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Next {
    /// How long to wait before the next round.
    pub wait: Duration,
    /// Publishes to ask about again now: an index answered, so writes may get through.
    pub settle: Vec<InDoubt>,
}

#[derive(Debug)]
pub struct Session {
    /// Where other peers reach our file server; every register says it.
    addr: String,
    identity: Option<Identity>,
    interval: Duration,
    /// Counts the moments the index may have lost a report (or never had us). A register
    /// covers the count it was built at; one is due while the count moved past that.
    losses: u64,
    /// The count the last register that got through was built at; `None` before the first.
    covered: Option<u64>,
    /// The count the register in flight was built at.
    register_built_at: u64,
    /// Changes not yet reported: name -> new meta, or `None` for a removal.
    pending: BTreeMap<String, Option<FileMeta>>,
    /// Files the index refused for a per-peer limit, to report again: after the wait it
    /// named (`rate_limited`), or once we report a removal (`too_many_files`: at the cap).
    held: BTreeMap<String, Held>,
    /// Tasks given up on and not yet reported, oldest first.
    failed_tasks: Vec<TaskFailure>,
    in_doubt: Vec<InDoubt>,
    notices: Vec<String>,
    /// When the agent's current round was sent (monotonic clock reading).
    round_sent: Duration,
}

/// A file refused for a per-peer limit, and when to report it again (`None`: after our next
/// removal).
#[derive(Debug, Clone)]
struct Held {
    meta: FileMeta,
    due: Option<Duration>,
}

/// The shortest wait before a file refused as `rate_limited` is reported again.
const MIN_RETRY: Duration = Duration::from_secs(1);

impl Session {
    /// A session that has not registered yet; `identity` is the one saved by an earlier run.
    pub fn new(addr: String, identity: Option<Identity>) -> Session {
        Session {
            addr,
            identity,
            interval: FIRST_INTERVAL,
            losses: 0,
            covered: None,
            register_built_at: 0,
            pending: BTreeMap::new(),
            held: BTreeMap::new(),
            failed_tasks: Vec::new(),
            in_doubt: Vec::new(),
            notices: Vec::new(),
            round_sent: Duration::ZERO,
        }
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Whether the next round registers the whole file list.
    pub fn must_register(&self) -> bool {
        self.covered != Some(self.losses) || self.identity.is_none()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.interval
    }

    /// The index may have missed something: the next round registers.
    fn lost(&mut self) {
        self.losses = self.losses.wrapping_add(1);
    }

    /// The agent's next call, sent at `now`. `files` (the whole catalog) is read only when
    /// a register is due, after the queued changes were dropped: a change found meanwhile is
    /// queued again, so it is reported twice at worst, never lost.
    pub fn next_round(&mut self, now: Duration, files: impl FnOnce() -> Vec<FileMeta>) -> Round {
        self.round_sent = now;
        if !self.must_register() {
            if let Some(rq) = self.heartbeat_request(Some(self.interval)) {
                return Round::Heartbeat(rq);
            }
        }
        self.pending.clear();
        self.held.clear();
        self.register_built_at = self.losses;
        let id = self.identity.as_ref();
        Round::Register(RegisterRequest {
            addr: self.addr.clone(),
            files: files(),
            peer_id: id.map(|i| i.peer_id.clone()),
            token: id.map(|i| i.token.clone()),
        })
    }

    /// A heartbeat that does not wait, to report changes or a failed task at once (the
    /// agent's own is usually held by the index). `None` while a register is due: it
    /// carries everything, and the failures ride on the heartbeat after it.
    pub fn report(&mut self) -> Option<HeartbeatRequest> {
        if self.must_register() {
            return None;
        }
        self.heartbeat_request(None)
    }

    fn heartbeat_request(&mut self, wait: Option<Duration>) -> Option<HeartbeatRequest> {
        let id = self.identity.as_ref()?;
        let mut rq = HeartbeatRequest {
            peer_id: id.peer_id.clone(),
            token: id.token.clone(),
            added: Vec::new(),
            removed: Vec::new(),
            failed: std::mem::take(&mut self.failed_tasks),
            wait_ms: wait.map(|w| w.as_millis().try_into().unwrap_or(u64::MAX)),
        };
        self.release_held();
        for (name, meta) in std::mem::take(&mut self.pending) {
            match meta {
                Some(meta) => rq.added.push(meta),
                None => rq.removed.push(name),
            }
        }
        Some(rq)
    }

    /// Queues the held files whose time has come: those whose wait is over, and, when this
    /// report removes files, those refused at the cap. A newer finding queued meanwhile wins.
    fn release_held(&mut self) {
        let removing = self.pending.values().any(Option::is_none);
        let now = self.round_sent;
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.due.map_or(removing, |due| due <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            if let Some(held) = self.held.remove(&name) {
                self.pending.entry(name).or_insert(Some(held.meta));
            }
        }
    }

    /// A rescan found `changes`; they are reported with the next heartbeat. A later finding
    /// for a name replaces an earlier one. Returns whether anything changed.
    pub fn rescanned(&mut self, changes: Changes) -> bool {
        let changed = !changes.is_empty();
        for meta in changes.added {
            self.held.remove(&meta.name);
            self.pending.insert(meta.name.clone(), Some(meta));
        }
        for name in changes.removed {
            self.held.remove(&name);
            self.pending.insert(name, None);
        }
        changed
    }

    /// We put `name` in place ourselves (not a rescan): what a rescan queued for it before
    /// (its removal, when a local copy was set aside) no longer holds, and the announce that
    /// follows reports it.
    pub fn installed(&mut self, name: &str) {
        self.pending.remove(name);
    }

    /// A task we could not carry out; the next heartbeat tells the index, which gives it to
    /// another peer.
    pub fn task_failed(&mut self, failure: TaskFailure) {
        self.failed_tasks.push(failure);
    }

    /// The index took our register `sent`. Returns the identity to save when it is new to us.
    pub fn register_answered(
        &mut self,
        sent: &RegisterRequest,
        answer: &RegisterResponse,
    ) -> Option<Identity> {
        self.covered = Some(self.register_built_at);
        self.interval = Duration::from_millis(answer.heartbeat_interval_ms).max(MIN_INTERVAL);
        self.note_rejected(&answer.rejected);
        self.hold_refused(&sent.files, &answer.rejected);
        let fresh = Identity {
            peer_id: answer.peer_id.clone(),
            token: answer.token.clone(),
        };
        if self.identity.as_ref() == Some(&fresh) {
            return None;
        }
        self.identity = Some(fresh.clone());
        Some(fresh)
    }

    /// `sent` got no answer, or a refusal. A `bad_token` refusal of the identity we sent
    /// means another peer holds our id (a copied folder?): it is dropped, so the next
    /// register asks for a new one. Returns whether it was.
    pub fn register_failed(&mut self, sent: &RegisterRequest, failure: Failure) -> bool {
        self.lost();
        let ours = self.identity.as_ref().map(|i| &i.peer_id);
        if failure == Failure::Refused(ErrorCode::BadToken)
            && sent.peer_id.is_some()
            && sent.peer_id.as_ref() == ours
        {
            self.identity = None;
            return true;
        }
        false
    }

    pub fn heartbeat_answered(&mut self, sent: &HeartbeatRequest, answer: &HeartbeatResponse) {
        self.note_rejected(&answer.rejected);
        self.hold_refused(&sent.added, &answer.rejected);
    }

    /// Keeps the files of `sent` the index refused for a per-peer limit, to report again
    /// (see `held`): a peer over the rate publishes them as the index lets it, not only at
    /// its next register.
    fn hold_refused(&mut self, sent: &[FileMeta], rejected: &[Rejected]) {
        let limited =
            |r: &Rejected| matches!(r.code, ErrorCode::RateLimited | ErrorCode::TooManyFiles);
        if !rejected.iter().any(limited) {
            return;
        }
        let by_name: std::collections::HashMap<&str, &FileMeta> =
            sent.iter().map(|m| (m.name.as_str(), m)).collect();
        for r in rejected {
            let due = match r.code {
                ErrorCode::RateLimited => {
                    let wait = Duration::from_millis(r.retry_after_ms.unwrap_or(0));
                    Some(self.round_sent + wait.max(MIN_RETRY))
                }
                ErrorCode::TooManyFiles => None,
                _ => continue,
            };
            // A newer finding for the name, queued meanwhile, supersedes what was sent.
            if self.pending.contains_key(&r.name) {
                continue;
            }
            if let Some(meta) = by_name.get(r.name.as_str()) {
                let meta = (*meta).clone();
                self.held.insert(r.name.clone(), Held { meta, due });
            }
        }
    }

    /// `sent` got no answer, or a refusal: the failed tasks it carried are told again next
    /// time; the file-list changes it carried may be lost, so a register follows.
    pub fn heartbeat_failed(&mut self, sent: HeartbeatRequest, failure: Failure) {
        if !sent.added.is_empty() || !sent.removed.is_empty() || failure.unknown_peer() {
            self.lost();
        }
        let mut failed = sent.failed;
        failed.append(&mut self.failed_tasks);
        self.failed_tasks = failed;
    }

    /// An announce failed. If the index may have missed it, a register tells it again (a
    /// refusal is an answer: the index's record of us is as it was).
    pub fn announce_failed(&mut self, failure: Failure) {
        if failure == Failure::Unanswered || failure.unknown_peer() {
            self.lost();
        }
    }

    /// A call that changes none of our holdings (a lease) failed: only an index that forgot
    /// us matters.
    pub fn call_failed(&mut self, failure: Failure) {
        if failure.unknown_peer() {
            self.lost();
        }
    }

    /// No index confirmed or refused this publish; it is asked about again after the
    /// agent's next round that an index answers.
    pub fn publish_in_doubt(&mut self, doubt: InDoubt) {
        self.in_doubt.push(doubt);
    }

    /// Asking about `doubt` again got no answer either.
    pub fn still_in_doubt(&mut self, doubt: InDoubt) {
        self.in_doubt.push(doubt);
    }

    /// The agent's round is over at `now`: the wait before the next one, and what to settle.
    pub fn round_ended(&mut self, ended: RoundEnd, now: Duration) -> Next {
        let answered = matches!(ended, RoundEnd::Registered | RoundEnd::Answered { .. });
        let wait = match ended {
            RoundEnd::Registered => self.interval,
            RoundEnd::RegisterFailed => RETRY,
            // The index answers a long poll at once when it has a task for us.
            RoundEnd::Answered { new_tasks } if new_tasks > 0 => Duration::ZERO,
            // Nothing new (a reminder, or an index that did not hold the answer): the rest
            // of the interval, so polls never spin.
            RoundEnd::Answered { .. } => self
                .interval
                .saturating_sub(now.saturating_sub(self.round_sent)),
            // The index forgot us (restart, prune): register again right away.
            RoundEnd::HeartbeatFailed(f) if f.unknown_peer() => Duration::ZERO,
            RoundEnd::HeartbeatFailed(_) => self.interval.min(RETRY),
        };
        let settle = if answered {
            std::mem::take(&mut self.in_doubt)
        } else {
            Vec::new()
        };
        Next { wait, settle }
    }

    /// Something the user should hear about; the shell prints it before its next answer.
    pub fn notice(&mut self, text: String) {
        log::warn!("{text}");
        self.notices.push(text);
    }

    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// A conflict is about one file and is told as such. A per-peer limit refuses a whole
    /// run of files for one reason (a folder over the index's cap may be thousands): it is
    /// told once per answer, with how many files and the first few names.
    fn note_rejected(&mut self, rejected: &[Rejected]) {
        let limit =
            |r: &&Rejected| matches!(r.code, ErrorCode::TooManyFiles | ErrorCode::RateLimited);
        for r in rejected.iter().filter(|r| !limit(r)) {
            self.notice(format!("the index refused {}: {}", r.name, r.reason));
        }
        for code in [ErrorCode::TooManyFiles, ErrorCode::RateLimited] {
            let run: Vec<&Rejected> = rejected.iter().filter(|r| r.code == code).collect();
            let Some(first) = run.first() else {
                continue;
            };
            if run.len() == 1 {
                self.notice(format!(
                    "the index refused {}: {}",
                    first.name, first.reason
                ));
                continue;
            }
            let shown: Vec<&str> = run.iter().take(3).map(|r| r.name.as_str()).collect();
            let more = if run.len() > shown.len() { ", ..." } else { "" };
            self.notice(format!(
                "the index refused {} files ({}{more}): {}",
                run.len(),
                shown.join(", "),
                first.reason
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Task;

    const ADDR: &str = "127.0.0.1:9001";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn meta(name: &str, version: u64) -> FileMeta {
        FileMeta {
            name: name.into(),
            version,
            size: 1,
            sha256: "a".repeat(64),
        }
    }

    fn id(peer_id: &str) -> Identity {
        Identity {
            peer_id: peer_id.into(),
            token: format!("token-of-{peer_id}"),
        }
    }

    fn answer(identity: &Identity, interval_ms: u64) -> RegisterResponse {
        RegisterResponse {
            peer_id: identity.peer_id.clone(),
            token: identity.token.clone(),
            heartbeat_interval_ms: interval_ms,
            tasks: Vec::new(),
            rejected: Vec::new(),
        }
    }

    fn failure(task: &str) -> TaskFailure {
        TaskFailure {
            task_id: task.into(),
            reason: "every holder failed".into(),
        }
    }

    fn found(added: &[FileMeta], removed: &[&str]) -> Changes {
        Changes {
            added: added.to_vec(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn register(s: &mut Session, files: Vec<FileMeta>) -> RegisterRequest {
        match s.next_round(Duration::ZERO, || files) {
            Round::Register(rq) => rq,
            Round::Heartbeat(rq) => panic!("a heartbeat where a register was due: {rq:?}"),
        }
    }

    fn heartbeat(s: &mut Session, now: Duration) -> HeartbeatRequest {
        match s.next_round(now, || panic!("the file list is read only for a register")) {
            Round::Heartbeat(rq) => rq,
            Round::Register(rq) => panic!("a register where a heartbeat was due: {rq:?}"),
        }
    }

    /// A register that listed nothing (for answers whose refusals are not under test).
    fn nothing_sent() -> RegisterRequest {
        RegisterRequest {
            addr: ADDR.into(),
            files: Vec::new(),
            peer_id: None,
            token: None,
        }
    }

    fn no_heartbeat() -> HeartbeatRequest {
        HeartbeatRequest {
            peer_id: "p1".into(),
            token: "t".into(),
            added: Vec::new(),
            removed: Vec::new(),
            failed: Vec::new(),
            wait_ms: None,
        }
    }

    /// A session registered as `p1` with a 1 s interval.
    fn registered() -> Session {
        let mut s = Session::new(ADDR.into(), None);
        register(&mut s, Vec::new());
        s.register_answered(&nothing_sent(), &answer(&id("p1"), 1000));
        assert!(!s.must_register());
        s
    }

    #[test]
    fn a_new_peer_registers_its_whole_list_and_saves_the_identity_it_is_given() {
        let mut s = Session::new(ADDR.into(), None);
        assert!(s.must_register());
        assert_eq!(s.heartbeat_interval(), FIRST_INTERVAL);
        assert!(
            s.report().is_none(),
            "no heartbeat before the first register"
        );
        let rq = register(&mut s, vec![meta("a", 1)]);
        assert_eq!(rq.addr, ADDR);
        assert_eq!(rq.files, vec![meta("a", 1)]);
        assert_eq!((rq.peer_id, rq.token), (None, None));

        let saved = s.register_answered(&nothing_sent(), &answer(&id("p1"), 5000));
        assert_eq!(saved, Some(id("p1")), "a new identity is saved");
        assert_eq!(s.identity(), Some(&id("p1")));
        assert!(!s.must_register());
        assert_eq!(s.heartbeat_interval(), ms(5000));
        let hb = heartbeat(&mut s, Duration::ZERO);
        assert_eq!(hb.peer_id, "p1");
        assert_eq!(hb.token, "token-of-p1");
        assert_eq!(
            hb.wait_ms,
            Some(5000),
            "the agent's heartbeat is a long poll"
        );
    }

    #[test]
    fn a_saved_identity_is_sent_and_kept_when_the_index_confirms_it() {
        let mut s = Session::new(ADDR.into(), Some(id("p7")));
        assert!(
            s.must_register(),
            "a restart registers even with an identity"
        );
        let rq = register(&mut s, Vec::new());
        assert_eq!(rq.peer_id.as_deref(), Some("p7"));
        assert_eq!(rq.token.as_deref(), Some("token-of-p7"));
        assert_eq!(
            s.register_answered(&nothing_sent(), &answer(&id("p7"), 1000)),
            None
        );
        assert_eq!(s.identity(), Some(&id("p7")));
    }

    #[test]
    fn an_interval_too_short_to_be_sane_is_raised() {
        let mut s = Session::new(ADDR.into(), None);
        register(&mut s, Vec::new());
        s.register_answered(&nothing_sent(), &answer(&id("p1"), 0));
        assert_eq!(s.heartbeat_interval(), MIN_INTERVAL);
    }

    #[test]
    fn a_bad_token_refusal_drops_our_identity_and_the_next_register_asks_for_a_new_one() {
        let mut s = Session::new(ADDR.into(), Some(id("p7")));
        let rq = register(&mut s, Vec::new());
        assert!(s.register_failed(&rq, Failure::Refused(ErrorCode::BadToken)));
        assert_eq!(s.identity(), None);
        assert!(s.must_register());
        let again = register(&mut s, Vec::new());
        assert_eq!(
            (again.peer_id.as_deref(), again.token.as_deref()),
            (None, None)
        );
        // Refused again without an identity sent: there is nothing left to drop.
        s.identity = Some(id("p8"));
        assert!(!s.register_failed(&again, Failure::Refused(ErrorCode::BadToken)));
        assert_eq!(s.identity(), Some(&id("p8")));
    }

    #[test]
    fn other_register_failures_keep_the_identity_and_retry_after_a_pause() {
        for failure in [
            Failure::Unanswered,
            Failure::Refused(ErrorCode::BadRequest),
            Failure::Refused(ErrorCode::Unknown),
        ] {
            let mut s = Session::new(ADDR.into(), Some(id("p7")));
            let rq = register(&mut s, Vec::new());
            assert!(!s.register_failed(&rq, failure), "{failure:?}");
            assert_eq!(s.identity(), Some(&id("p7")), "{failure:?}");
            assert!(s.must_register(), "{failure:?}");
            let next = s.round_ended(RoundEnd::RegisterFailed, ms(10));
            assert_eq!(next.wait, RETRY);
        }
    }

    #[test]
    fn a_register_answered_waits_one_interval() {
        let mut s = Session::new(ADDR.into(), None);
        register(&mut s, Vec::new());
        s.register_answered(&nothing_sent(), &answer(&id("p1"), 3000));
        assert_eq!(s.round_ended(RoundEnd::Registered, ms(5)).wait, ms(3000));
    }

    #[test]
    fn a_heartbeat_lost_with_changes_makes_the_next_round_a_register() {
        for failure in [Failure::Unanswered, Failure::Refused(ErrorCode::TooMany)] {
            let mut s = registered();
            s.rescanned(found(&[meta("a", 1)], &[]));
            let hb = heartbeat(&mut s, Duration::ZERO);
            assert_eq!(hb.added, vec![meta("a", 1)]);
            s.heartbeat_failed(hb, failure);
            assert!(s.must_register(), "{failure:?}");
            let rq = register(&mut s, vec![meta("a", 1)]);
            assert_eq!(
                rq.files,
                vec![meta("a", 1)],
                "the whole list tells it again"
            );
        }
    }

    #[test]
    fn a_heartbeat_lost_without_changes_is_just_retried() {
        let mut s = registered();
        let hb = heartbeat(&mut s, Duration::ZERO);
        s.heartbeat_failed(hb, Failure::Unanswered);
        assert!(!s.must_register());
        heartbeat(&mut s, ms(10));
    }

    #[test]
    fn an_unknown_peer_answer_registers_again_at_once() {
        let mut s = registered();
        let hb = heartbeat(&mut s, Duration::ZERO);
        let forgot = Failure::Refused(ErrorCode::UnknownPeer);
        s.heartbeat_failed(hb, forgot);
        assert!(s.must_register());
        assert_eq!(
            s.round_ended(RoundEnd::HeartbeatFailed(forgot), ms(3)).wait,
            Duration::ZERO
        );
        let rq = register(&mut s, Vec::new());
        assert_eq!(rq.peer_id.as_deref(), Some("p1"), "same identity, again");
    }

    #[test]
    fn an_unanswered_announce_or_an_unknown_peer_anywhere_registers_but_a_refusal_does_not() {
        let mut s = registered();
        s.announce_failed(Failure::Refused(ErrorCode::Conflict));
        s.call_failed(Failure::Refused(ErrorCode::LeaseHeld));
        s.call_failed(Failure::Unanswered);
        assert!(!s.must_register(), "refusals change nothing on the index");
        s.announce_failed(Failure::Unanswered);
        assert!(s.must_register(), "the index may have missed the announce");

        let mut s = registered();
        s.announce_failed(Failure::Refused(ErrorCode::UnknownPeer));
        assert!(s.must_register());
        let mut s = registered();
        s.call_failed(Failure::Refused(ErrorCode::UnknownPeer));
        assert!(s.must_register());
    }

    #[test]
    fn a_loss_while_a_register_is_in_flight_is_not_forgotten_by_its_answer() {
        let mut s = registered();
        s.announce_failed(Failure::Unanswered);
        register(&mut s, Vec::new());
        // Meanwhile a report the register's list may not cover is lost.
        s.rescanned(found(&[meta("late", 1)], &[]));
        s.announce_failed(Failure::Unanswered);
        s.register_answered(&nothing_sent(), &answer(&id("p1"), 1000));
        assert!(s.must_register(), "the register in flight did not cover it");
        register(&mut s, Vec::new());
        s.register_answered(&nothing_sent(), &answer(&id("p1"), 1000));
        assert!(!s.must_register());
    }

    #[test]
    fn a_later_finding_for_a_name_replaces_an_earlier_one() {
        let mut s = registered();
        assert!(s.rescanned(found(&[meta("a", 1), meta("b", 1)], &["gone"])));
        assert!(s.rescanned(found(&[meta("a", 2)], &["b"])));
        assert!(s.rescanned(found(&[meta("gone", 1)], &[])));
        assert!(!s.rescanned(Changes::default()), "nothing new");
        let hb = heartbeat(&mut s, Duration::ZERO);
        assert_eq!(hb.added, vec![meta("a", 2), meta("gone", 1)]);
        assert_eq!(hb.removed, vec!["b".to_string()]);
        let hb = heartbeat(&mut s, ms(1));
        assert!(
            hb.added.is_empty() && hb.removed.is_empty(),
            "reported once"
        );
    }

    #[test]
    fn a_full_register_supersedes_what_was_queued() {
        let mut s = Session::new(ADDR.into(), None);
        s.rescanned(found(&[meta("a", 1)], &["old"]));
        register(&mut s, vec![meta("a", 1)]);
        s.register_answered(&nothing_sent(), &answer(&id("p1"), 1000));
        let hb = heartbeat(&mut s, Duration::ZERO);
        assert!(hb.added.is_empty() && hb.removed.is_empty(), "{hb:?}");
    }

    #[test]
    fn a_file_we_installed_drops_what_a_rescan_queued_for_it() {
        let mut s = registered();
        s.rescanned(found(&[meta("other", 1)], &["doc"]));
        s.installed("doc");
        let hb = heartbeat(&mut s, Duration::ZERO);
        assert_eq!(hb.removed, Vec::<String>::new(), "the announce reports it");
        assert_eq!(
            hb.added,
            vec![meta("other", 1)],
            "only that name is dropped"
        );
    }

    #[test]
    fn failed_tasks_are_told_again_when_the_heartbeat_carrying_them_failed() {
        let mut s = registered();
        s.task_failed(failure("t1"));
        let report = s.report().expect("registered: a report can go");
        assert_eq!(report.failed, vec![failure("t1")]);
        assert_eq!(report.wait_ms, None, "a report does not wait");
        s.task_failed(failure("t2"));
        s.heartbeat_failed(report, Failure::Unanswered);
        assert!(!s.must_register(), "failures alone need no register");
        let hb = heartbeat(&mut s, Duration::ZERO);
        assert_eq!(
            hb.failed,
            vec![failure("t1"), failure("t2")],
            "oldest first"
        );
        s.heartbeat_answered(&no_heartbeat(), &HeartbeatResponse::default());
        assert!(
            heartbeat(&mut s, ms(1)).failed.is_empty(),
            "told once answered"
        );
    }

    #[test]
    fn no_report_goes_while_a_register_is_due() {
        let mut s = registered();
        s.announce_failed(Failure::Unanswered);
        s.task_failed(failure("t1"));
        assert!(s.report().is_none());
        register(&mut s, Vec::new());
        s.register_answered(&nothing_sent(), &answer(&id("p1"), 1000));
        assert_eq!(
            s.report().map(|r| r.failed),
            Some(vec![failure("t1")]),
            "the failure rides on the heartbeat after the register"
        );
    }

    #[test]
    fn new_tasks_poll_again_at_once() {
        let mut s = registered();
        heartbeat(&mut s, ms(100));
        let next = s.round_ended(RoundEnd::Answered { new_tasks: 2 }, ms(105));
        assert_eq!(next.wait, Duration::ZERO);
    }

    #[test]
    fn a_reminder_or_an_early_answer_waits_out_the_interval_so_polls_never_spin() {
        let mut s = registered();
        heartbeat(&mut s, ms(10_000));
        // Tasks already queued (a reminder), answered after 300 ms of a 1 s interval.
        let next = s.round_ended(RoundEnd::Answered { new_tasks: 0 }, ms(10_300));
        assert_eq!(next.wait, ms(700));
        // An index that does not hold long polls answers at once: a whole interval.
        heartbeat(&mut s, ms(20_000));
        let next = s.round_ended(RoundEnd::Answered { new_tasks: 0 }, ms(20_000));
        assert_eq!(next.wait, ms(1000));
        // Held the whole interval: go again.
        heartbeat(&mut s, ms(30_000));
        let next = s.round_ended(RoundEnd::Answered { new_tasks: 0 }, ms(31_500));
        assert_eq!(next.wait, Duration::ZERO);
    }

    #[test]
    fn a_failed_heartbeat_is_retried_after_the_interval_or_a_second_whichever_is_less() {
        let mut s = registered();
        let failed = RoundEnd::HeartbeatFailed(Failure::Unanswered);
        heartbeat(&mut s, Duration::ZERO);
        assert_eq!(s.round_ended(failed, ms(2)).wait, ms(1000));
        s.interval = ms(5000);
        assert_eq!(s.round_ended(failed, ms(2)).wait, RETRY);
        s.interval = ms(200);
        assert_eq!(s.round_ended(failed, ms(2)).wait, ms(200));
    }

    #[test]
    fn in_doubt_publishes_are_settled_after_the_next_answered_round() {
        let doubt = InDoubt {
            meta: meta("doc", 2),
            lease_id: "lease-1".into(),
            kept: PathBuf::from("/tmp/doc.1"),
        };
        let mut s = registered();
        s.publish_in_doubt(doubt.clone());
        let failed = RoundEnd::HeartbeatFailed(Failure::Unanswered);
        assert!(s.round_ended(failed, ms(1)).settle.is_empty());
        assert!(s
            .round_ended(RoundEnd::RegisterFailed, ms(1))
            .settle
            .is_empty());
        let next = s.round_ended(RoundEnd::Answered { new_tasks: 0 }, ms(2));
        assert_eq!(next.settle, vec![doubt.clone()]);
        assert!(
            s.round_ended(RoundEnd::Answered { new_tasks: 0 }, ms(3))
                .settle
                .is_empty(),
            "handed out once"
        );
        // Still unanswered: it waits for the next answer, a register's as well.
        s.still_in_doubt(doubt.clone());
        assert_eq!(
            s.round_ended(RoundEnd::Registered, ms(4)).settle,
            vec![doubt]
        );
    }

    #[test]
    fn refused_files_become_notices_for_the_user() {
        let mut s = Session::new(ADDR.into(), None);
        register(&mut s, Vec::new());
        let mut first = answer(&id("p1"), 1000);
        first.rejected.push(Rejected {
            name: "doc".into(),
            reason: "version 1 already exists with other content".into(),
            status: 409,
            code: ErrorCode::Conflict,
            retry_after_ms: None,
        });
        s.register_answered(&nothing_sent(), &first);
        s.heartbeat_answered(
            &no_heartbeat(),
            &HeartbeatResponse {
                tasks: vec![Task {
                    task_id: "t".into(),
                    file: "x".into(),
                    version: 1,
                    sha256: "a".repeat(64),
                    size: 1,
                    sources: Vec::new(),
                }],
                rejected: vec![Rejected {
                    name: "new".into(),
                    reason: "no lease".into(),
                    status: 409,
                    code: ErrorCode::LeaseRequired,
                    retry_after_ms: None,
                }],
            },
        );
        assert_eq!(
            s.take_notices(),
            vec![
                "the index refused doc: version 1 already exists with other content".to_string(),
                "the index refused new: no lease".to_string(),
            ]
        );
        assert!(s.take_notices().is_empty());
        // Files over a limit are told once per answer, however many.
        let over = |name: String| Rejected {
            name,
            reason: "this peer already holds 3 names".into(),
            status: 409,
            code: ErrorCode::TooManyFiles,
            retry_after_ms: None,
        };
        s.heartbeat_answered(
            &no_heartbeat(),
            &HeartbeatResponse {
                tasks: Vec::new(),
                rejected: (0..5000).map(|n| over(format!("f{n}"))).collect(),
            },
        );
        assert_eq!(
            s.take_notices(),
            vec!["the index refused 5000 files (f0, f1, f2, ...): this peer already holds 3 names"]
        );
    }

    fn limited(name: &str, code: ErrorCode, retry_after_ms: Option<u64>) -> Rejected {
        Rejected {
            name: name.into(),
            reason: "over a limit".into(),
            status: code.status(),
            code,
            retry_after_ms,
        }
    }

    /// Files refused for a per-peer limit are reported again: after the wait the index
    /// named, or (at the cap) with our next removal; not before, and not if a newer finding
    /// for the name came meanwhile.
    #[test]
    fn files_refused_for_a_limit_are_reported_again_when_the_index_may_take_them() {
        let mut s = registered();
        s.rescanned(found(
            &[meta("fast", 1), meta("capped", 1), meta("newer", 1)],
            &[],
        ));
        let sent = heartbeat(&mut s, ms(1000));
        assert_eq!(sent.added.len(), 3);
        s.heartbeat_answered(
            &sent,
            &HeartbeatResponse {
                tasks: Vec::new(),
                rejected: vec![
                    limited("fast", ErrorCode::RateLimited, Some(5000)),
                    limited("capped", ErrorCode::TooManyFiles, None),
                    limited("newer", ErrorCode::RateLimited, Some(5000)),
                ],
            },
        );
        // A newer finding for one of them replaces what is held.
        s.rescanned(found(&[meta("newer", 2)], &[]));
        let next = heartbeat(&mut s, ms(2000));
        assert_eq!(next.added, vec![meta("newer", 2)]);
        // Not before the wait is over.
        assert!(heartbeat(&mut s, ms(5999)).added.is_empty());
        assert_eq!(heartbeat(&mut s, ms(6000)).added, vec![meta("fast", 1)]);
        // The capped one waits for a removal of ours.
        assert!(heartbeat(&mut s, ms(60_000)).added.is_empty());
        s.rescanned(found(&[], &["old"]));
        let freed = heartbeat(&mut s, ms(61_000));
        assert_eq!(freed.added, vec![meta("capped", 1)]);
        assert_eq!(freed.removed, vec!["old".to_string()]);
        // A register lists everything anew: nothing stays held.
        s.hold_refused(
            &[meta("x", 1)],
            &[limited("x", ErrorCode::TooManyFiles, None)],
        );
        s.lost();
        register(&mut s, vec![meta("x", 1)]);
        assert!(s.held.is_empty());
    }
}
