//! The manager: runs one job at a time on the leader.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use metakv_store::TombstoneRef;

use crate::{
    AgentReply, AgentRequest, GcConfig, JobId, JobRecord, NodeCompaction, Outcome, PROTOCOL_MIN,
    PhaseTime, Trigger,
};

/// Agreed tombstones a dry run keeps to show.
const SAMPLE_MAX: usize = 20;
/// After a job ends, the threshold trigger waits this long before it fires again, so a pile
/// of tombstones too young to collect does not start job after job.
pub const THRESHOLD_PAUSE_MS: u64 = 60_000;

/// What the driver must do. Every action but `Release` and `Finished` is answered by exactly
/// one [`Event`] carrying the job's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Call a node's agent; answer with `Event::Reply` or `Event::CallFailed`.
    Call { node: u64, request: AgentRequest },
    /// Tell a node's agent to drop the job's lease; no answer expected.
    Release { node: u64, job: JobId },
    /// Propose a guarded `Purge` entry; answer with `Event::Purged` or `Event::PurgeFailed`.
    Purge {
        job: JobId,
        items: Vec<TombstoneRef>,
    },
    /// Write the job record to `_sys` through Raft; answer with `Event::RecordWritten` or
    /// `Event::RecordFailed`.
    WriteRecord(JobRecord),
    /// Hand leadership to `to`; the answer is `Event::LeaderLost` (or a `tick` past the
    /// call timeout, after which the leader compacts in place).
    TransferLeader { to: u64 },
    /// The job is over, as recorded (or as it would have been, if the record could not be
    /// written).
    Finished(JobRecord),
}

/// What happened; every variant but `LeaderLost` and `Membership` names its job, and events of
/// another job (late answers) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Reply {
        job: JobId,
        node: u64,
        reply: AgentReply,
    },
    CallFailed {
        job: JobId,
        node: u64,
        error: String,
    },
    Purged {
        job: JobId,
        purged: u64,
        skipped: u64,
    },
    PurgeFailed {
        job: JobId,
        error: String,
    },
    RecordWritten {
        job: JobId,
    },
    RecordFailed {
        job: JobId,
        error: String,
    },
    /// This node is no longer the leader.
    LeaderLost,
    /// The cluster's members now (voters and learners).
    Membership {
        members: Vec<u64>,
    },
}

impl Event {
    /// The job the event belongs to; `None` for leadership and membership changes.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Event::Reply { job, .. }
            | Event::CallFailed { job, .. }
            | Event::Purged { job, .. }
            | Event::PurgeFailed { job, .. }
            | Event::RecordWritten { job }
            | Event::RecordFailed { job, .. } => Some(*job),
            Event::LeaderLost | Event::Membership { .. } => None,
        }
    }
}

/// Why a job did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    AlreadyRunning {
        job: JobId,
    },
    /// A member speaks an older GC protocol: the cluster waits until it is upgraded.
    Version {
        node: u64,
        protocol: u32,
    },
    /// A member did not answer the probe.
    Unreachable {
        node: u64,
        error: crate::ProbeError,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::AlreadyRunning { job } => write!(f, "GC job {job} is already running"),
            StartError::Version { node, protocol } => write!(
                f,
                "node {node} speaks GC protocol {protocol}, jobs need {PROTOCOL_MIN}: \
                 GC waits until every member is upgraded"
            ),
            StartError::Unreachable { node, error } => {
                write!(f, "node {node} did not answer the GC probe: {error}")
            }
        }
    }
}

impl std::error::Error for StartError {}

/// A running job as the leader sees it now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub job: JobId,
    pub phase: String,
    pub collected: Vec<(u64, u64)>,
    pub agreed: u64,
    pub purged: u64,
    pub skipped: u64,
    pub compacted: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The start record is being written.
    Starting,
    /// Pages come in, the merge finds agreed tombstones, purges run in batches.
    Collect,
    /// Compacting `order[at]`.
    Compact { at: usize },
    /// The handoff record is being written.
    Handoff,
    /// Leadership is moving to another voter.
    Transfer { since_ms: u64 },
    /// The end record is being written.
    Recording,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Starting => "start",
            Phase::Collect => "collect+purge",
            Phase::Compact { .. } => "compact",
            Phase::Handoff => "handoff",
            Phase::Transfer { .. } => "transfer",
            Phase::Recording => "record",
        }
    }
}

/// One node's stream of collectable tombstones, a page at a time.
#[derive(Debug)]
struct Cursor {
    buf: VecDeque<TombstoneRef>,
    more: bool,
    /// A page was asked for and has not come yet.
    waiting: bool,
    collected: u64,
    last: Option<(String, Vec<u8>)>,
}

#[derive(Debug)]
struct Job {
    record: JobRecord,
    phase: Phase,
    phase_started_ms: u64,
    cursors: BTreeMap<u64, Cursor>,
    batch: Vec<TombstoneRef>,
    /// Calls, purge or record write in flight, with the time each was sent.
    calls: BTreeMap<u64, u64>,
    /// Purges proposed and not yet answered, oldest first, with the time each was proposed.
    purges: VecDeque<u64>,
    record_since: Option<u64>,
    /// Nodes to compact, in order: followers, then this node.
    order: Vec<u64>,
    /// Voters other than this node, for the handoff.
    voters: Vec<u64>,
}

/// The manager's state machine; one per term in which this node leads. Time is the leader's
/// wall clock in ms since the Unix epoch, passed in by the caller.
#[derive(Debug)]
pub struct Manager {
    me: u64,
    term: u64,
    config: GcConfig,
    seq: u64,
    last_end_ms: u64,
    job: Option<Job>,
}

fn key_of(t: &TombstoneRef) -> (&str, &[u8]) {
    (&t.bucket, &t.key)
}

impl Manager {
    /// The manager of a node that became leader in `term` at `now_ms`.
    pub fn new(me: u64, term: u64, config: GcConfig, now_ms: u64) -> Manager {
        Manager {
            me,
            term,
            config,
            seq: 0,
            last_end_ms: now_ms,
            job: None,
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The running job's id.
    pub fn running(&self) -> Option<JobId> {
        self.job.as_ref().map(|j| j.record.id)
    }

    pub fn progress(&self) -> Option<Progress> {
        let j = self.job.as_ref()?;
        Some(Progress {
            job: j.record.id,
            phase: j.phase.name().to_owned(),
            collected: collected(j),
            agreed: j.record.agreed,
            purged: j.record.purged,
            skipped: j.record.skipped,
            compacted: j.record.compactions.iter().map(|c| c.node).collect(),
        })
    }

    /// Whether the timer or the threshold wants a job now. `tombstones` is the leader's count.
    pub fn due(&self, now_ms: u64, tombstones: u64) -> Option<Trigger> {
        if self.job.is_some() {
            return None;
        }
        let since = now_ms.saturating_sub(self.last_end_ms);
        let c = &self.config;
        if c.interval_ms > 0 && since >= c.interval_ms {
            return Some(Trigger::Timer);
        }
        if c.tombstone_threshold > 0
            && tombstones > c.tombstone_threshold
            && since >= THRESHOLD_PAUSE_MS
        {
            return Some(Trigger::Threshold { tombstones });
        }
        None
    }

    /// Starts a job over `members` (voters and learners; `voters` among them), given what each
    /// member answered to the protocol probe.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        now_ms: u64,
        trigger: Trigger,
        dry_run: bool,
        min_age_ms: u64,
        members: &[u64],
        voters: &[u64],
        probes: &BTreeMap<u64, Result<u32, crate::ProbeError>>,
    ) -> Result<(JobId, Vec<Action>), StartError> {
        if let Some(job) = self.running() {
            return Err(StartError::AlreadyRunning { job });
        }
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        for &node in &members {
            match probes.get(&node) {
                Some(Ok(p)) if *p >= PROTOCOL_MIN => {}
                Some(Ok(p)) => {
                    return Err(StartError::Version { node, protocol: *p });
                }
                Some(Err(e)) => {
                    return Err(StartError::Unreachable {
                        node,
                        error: e.clone(),
                    });
                }
                None => {
                    return Err(StartError::Unreachable {
                        node,
                        error: crate::ProbeError::NotProbed,
                    });
                }
            }
        }
        self.seq += 1;
        let id = JobId {
            term: self.term,
            seq: self.seq,
        };
        let record = JobRecord::started(
            id,
            self.me,
            trigger,
            dry_run,
            min_age_ms,
            members.clone(),
            now_ms,
        );
        let mut order: Vec<u64> = members.iter().copied().filter(|&n| n != self.me).collect();
        if members.contains(&self.me) {
            order.push(self.me);
        }
        let mut voters: Vec<u64> = voters.iter().copied().filter(|&n| n != self.me).collect();
        voters.sort_unstable();
        self.job = Some(Job {
            record: record.clone(),
            phase: Phase::Starting,
            phase_started_ms: now_ms,
            cursors: BTreeMap::new(),
            batch: Vec::new(),
            calls: BTreeMap::new(),
            purges: VecDeque::new(),
            record_since: Some(now_ms),
            order,
            voters,
        });
        Ok((id, vec![Action::WriteRecord(record)]))
    }

    /// Takes over a job the previous leader handed off (its record says `Handoff`): compacts
    /// the node it names, then writes the end record.
    pub fn adopt(&mut self, now_ms: u64, record: JobRecord) -> Result<Vec<Action>, StartError> {
        if let Some(job) = self.running() {
            return Err(StartError::AlreadyRunning { job });
        }
        let Outcome::Handoff { compact } = record.outcome else {
            return Ok(Vec::new());
        };
        self.job = Some(Job {
            record,
            phase: Phase::Compact { at: 0 },
            phase_started_ms: now_ms,
            cursors: BTreeMap::new(),
            batch: Vec::new(),
            calls: BTreeMap::new(),
            purges: VecDeque::new(),
            record_since: None,
            order: vec![compact],
            voters: Vec::new(),
        });
        let mut actions = Vec::new();
        self.compact_next(now_ms, &mut actions);
        Ok(actions)
    }

    /// The record to write for a job a previous leader left `Running` (it died or lost
    /// leadership before the end): failed, with the reason.
    pub fn stale(record: &JobRecord, now_ms: u64) -> JobRecord {
        let mut r = record.clone();
        r.outcome = Outcome::Failed {
            reason: format!("leader {} lost leadership during the job", record.leader),
        };
        r.finished_ms = Some(now_ms);
        r
    }

    /// The clock moved: fails a job whose call, purge or record write is overdue, and falls
    /// back to compacting in place when a leadership transfer does not happen.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(j) = &self.job else {
            return actions;
        };
        let timeout = self.config.call_timeout_ms;
        let overdue = |since: u64, limit: u64| now_ms.saturating_sub(since) > limit;
        let compact_timeout = self.config.compact_timeout_ms;
        let late_call = j.calls.iter().find(|&(_, &since)| {
            let limit = match j.phase {
                Phase::Compact { .. } => compact_timeout,
                _ => timeout,
            };
            overdue(since, limit)
        });
        if let Some((&node, _)) = late_call {
            self.fail(
                now_ms,
                format!("node {node} did not answer in time"),
                &mut actions,
            );
        } else if j.purges.front().is_some_and(|&s| overdue(s, timeout)) {
            self.fail(
                now_ms,
                "a purge was not committed in time".into(),
                &mut actions,
            );
        } else if j.record_since.is_some_and(|s| overdue(s, timeout)) {
            self.record_done(
                now_ms,
                Err("the job record was not committed in time".into()),
                &mut actions,
            );
        } else if let Phase::Transfer { since_ms } = j.phase
            && overdue(since_ms, timeout)
        {
            // Leadership did not move: compact here, requests waiting meanwhile.
            let at = j.order.len() - 1;
            self.set_phase(now_ms, Phase::Compact { at });
            self.compact_next(now_ms, &mut actions);
        }
        actions
    }

    /// An event for the running job.
    pub fn on(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(j) = &mut self.job else {
            return actions;
        };
        let id = j.record.id;
        match event {
            Event::Reply { job, node, reply } if job == id => {
                if j.calls.remove(&node).is_none() {
                    return actions;
                }
                self.on_reply(now_ms, node, reply, &mut actions);
            }
            Event::CallFailed { job, node, error }
                if job == id && j.calls.remove(&node).is_some() =>
            {
                self.fail(now_ms, format!("node {node}: {error}"), &mut actions);
            }
            Event::Purged {
                job,
                purged,
                skipped,
            } if job == id && !j.purges.is_empty() => {
                j.purges.pop_front();
                j.record.purged += purged;
                j.record.skipped += skipped;
                self.merge(now_ms, &mut actions);
            }
            Event::PurgeFailed { job, error } if job == id && !j.purges.is_empty() => {
                j.purges.pop_front();
                self.fail(now_ms, format!("purge: {error}"), &mut actions);
            }
            Event::RecordWritten { job } if job == id && j.record_since.is_some() => {
                self.record_done(now_ms, Ok(()), &mut actions);
            }
            Event::RecordFailed { job, error } if job == id && j.record_since.is_some() => {
                self.record_done(now_ms, Err(error), &mut actions);
            }
            Event::LeaderLost => match j.phase {
                // The handoff: the next leader adopts the job from its record.
                Phase::Transfer { .. } => {
                    self.job = None;
                    self.last_end_ms = now_ms;
                }
                Phase::Recording => {}
                _ => self.fail(now_ms, "this node lost leadership".into(), &mut actions),
            },
            Event::Membership { mut members } => {
                members.sort_unstable();
                members.dedup();
                if matches!(j.phase, Phase::Starting | Phase::Collect)
                    && members != j.record.members
                {
                    let reason = format!(
                        "membership changed from {:?} to {members:?} during the job",
                        j.record.members
                    );
                    self.fail(now_ms, reason, &mut actions);
                }
            }
            _ => {}
        }
        actions
    }

    fn on_reply(&mut self, now_ms: u64, node: u64, reply: AgentReply, actions: &mut Vec<Action>) {
        let j = self.job.as_mut().expect("a job runs");
        match (j.phase, reply) {
            (_, AgentReply::Refused { reason }) => {
                self.fail(now_ms, format!("node {node} refused: {reason}"), actions);
            }
            (Phase::Collect, AgentReply::Page { items, more }) => {
                let Some(c) = j.cursors.get_mut(&node) else {
                    return;
                };
                // Each page must continue the node's sorted stream: the merge relies on it.
                let mut last = c.last.clone();
                for item in &items {
                    let k = (item.bucket.clone(), item.key.clone());
                    if last.as_ref().is_some_and(|l| *l >= k) {
                        let reason = format!("node {node} sent tombstones out of order");
                        self.fail(now_ms, reason, actions);
                        return;
                    }
                    last = Some(k);
                }
                c.last = last;
                c.collected += items.len() as u64;
                c.buf.extend(items);
                c.more = more;
                c.waiting = false;
                self.merge(now_ms, actions);
            }
            (
                Phase::Compact { at },
                AgentReply::Compacted {
                    bytes_before,
                    bytes_after,
                },
            ) if j.order.get(at) == Some(&node) => {
                j.record.compactions.push(NodeCompaction {
                    node,
                    bytes_before,
                    bytes_after,
                });
                self.set_phase(now_ms, Phase::Compact { at: at + 1 });
                self.compact_next(now_ms, actions);
            }
            (phase, reply) => {
                let reason = format!("node {node} answered {reply:?} in phase {}", phase.name());
                self.fail(now_ms, reason, actions);
            }
        }
    }

    /// Advances the k-way intersection as far as the buffered pages allow.
    fn merge(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let purge_batch = self.config.purge_batch.max(1) as usize;
        let purges_max = self.config.purges_in_flight.max(1) as usize;
        let j = self.job.as_mut().expect("a job runs");
        if j.phase != Phase::Collect {
            return;
        }
        loop {
            if j.purges.len() >= purges_max {
                return;
            }
            // A node whose stream ended with nothing left ends the intersection.
            if j.cursors
                .values()
                .any(|c| c.buf.is_empty() && !c.more && !c.waiting)
            {
                break;
            }
            let mut need_more = false;
            for (&node, c) in &mut j.cursors {
                if c.buf.is_empty() {
                    need_more = true;
                    if !c.waiting {
                        c.waiting = true;
                        j.calls.insert(node, now_ms);
                        actions.push(Action::Call {
                            node,
                            request: AgentRequest::Next { job: j.record.id },
                        });
                    }
                }
            }
            if need_more {
                return;
            }
            let heads = j
                .cursors
                .values()
                .map(|c| c.buf.front().expect("not empty"));
            let max = heads.clone().map(key_of).max().expect("members");
            let all_same = heads.clone().all(|h| key_of(h) == max);
            if all_same {
                let first = heads.clone().next().expect("members").clone();
                let agreed = heads.clone().all(|h| h.rev == first.rev);
                for c in j.cursors.values_mut() {
                    c.buf.pop_front();
                }
                if agreed {
                    j.record.agreed += 1;
                    if j.record.dry_run {
                        if j.record.sample.len() < SAMPLE_MAX {
                            j.record.sample.push(first);
                        }
                    } else {
                        j.batch.push(first);
                        if j.batch.len() >= purge_batch {
                            j.purges.push_back(now_ms);
                            actions.push(Action::Purge {
                                job: j.record.id,
                                items: std::mem::take(&mut j.batch),
                            });
                        }
                    }
                }
            } else {
                let max = (max.0.to_owned(), max.1.to_vec());
                for c in j.cursors.values_mut() {
                    while c.buf.front().is_some_and(|h| {
                        (h.bucket.as_str(), h.key.as_slice()).cmp(&(max.0.as_str(), &max.1))
                            == Ordering::Less
                    }) {
                        c.buf.pop_front();
                    }
                }
            }
        }
        // The intersection is complete.
        if !j.batch.is_empty() {
            j.purges.push_back(now_ms);
            actions.push(Action::Purge {
                job: j.record.id,
                items: std::mem::take(&mut j.batch),
            });
        }
        if !j.purges.is_empty() {
            // The last purges are still on their way through Raft.
            return;
        }
        if !j.calls.is_empty() {
            // Pages still on their way from other nodes: wait for them, then stop.
            return;
        }
        release_all(j, actions);
        if j.record.dry_run {
            self.finish(now_ms, Outcome::Succeeded, actions);
        } else {
            self.set_phase(now_ms, Phase::Compact { at: 0 });
            self.compact_next(now_ms, actions);
        }
    }

    /// Compacts the next node, or hands off before the leader's turn, or finishes.
    fn compact_next(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let (me, lease_ms) = (self.me, self.config.lease_ms);
        let j = self.job.as_mut().expect("a job runs");
        let Phase::Compact { at } = j.phase else {
            return;
        };
        let Some(&node) = j.order.get(at) else {
            self.finish(now_ms, Outcome::Succeeded, actions);
            return;
        };
        let last = at + 1 == j.order.len();
        let handed_off = matches!(j.record.outcome, Outcome::Handoff { .. });
        if node == me && last && !handed_off && !j.voters.is_empty() {
            // Before the leader compacts, leadership moves to a compacted follower; the
            // record says what is left, for the next leader to finish.
            j.record.outcome = Outcome::Handoff { compact: me };
            j.record.collected = collected(j);
            self.set_phase(now_ms, Phase::Handoff);
            let j = self.job.as_mut().expect("a job runs");
            j.record_since = Some(now_ms);
            actions.push(Action::WriteRecord(j.record.clone()));
            return;
        }
        j.calls.insert(node, now_ms);
        actions.push(Action::Call {
            node,
            request: AgentRequest::Compact {
                job: j.record.id,
                lease_ms,
            },
        });
    }

    fn record_done(&mut self, now_ms: u64, written: Result<(), String>, actions: &mut Vec<Action>) {
        let j = self.job.as_mut().expect("a job runs");
        j.record_since = None;
        match (j.phase, written) {
            (Phase::Starting, Ok(())) => {
                self.set_phase(now_ms, Phase::Collect);
                let j = self.job.as_mut().expect("a job runs");
                let request = AgentRequest::Collect {
                    job: j.record.id,
                    lease_ms: self.config.lease_ms,
                    deleted_at_or_before_ms: j
                        .record
                        .started_ms
                        .saturating_sub(j.record.min_age_ms),
                    page_size: self.config.page_size.max(1),
                };
                for &node in &j.record.members {
                    j.cursors.insert(
                        node,
                        Cursor {
                            buf: VecDeque::new(),
                            more: true,
                            waiting: true,
                            collected: 0,
                            last: None,
                        },
                    );
                    j.calls.insert(node, now_ms);
                    actions.push(Action::Call {
                        node,
                        request: request.clone(),
                    });
                }
            }
            (Phase::Handoff, Ok(())) => {
                let to = j.voters[0];
                self.set_phase(now_ms, Phase::Transfer { since_ms: now_ms });
                actions.push(Action::TransferLeader { to });
            }
            (Phase::Handoff, Err(_)) => {
                // Without the handoff record no one could finish the job: compact here, with
                // this node's requests waiting meanwhile.
                j.record.outcome = Outcome::Running;
                let at = j.order.len() - 1;
                j.voters.clear();
                self.set_phase(now_ms, Phase::Compact { at });
                self.compact_next(now_ms, actions);
            }
            (Phase::Recording, result) => {
                let mut record = self.job.take().expect("a job runs").record;
                if let Err(e) = result {
                    note_unwritten(&mut record, &e);
                }
                self.last_end_ms = now_ms;
                actions.push(Action::Finished(record));
            }
            (_, Err(e)) => self.fail(now_ms, format!("writing the job record: {e}"), actions),
            (_, Ok(())) => {}
        }
    }

    fn set_phase(&mut self, now_ms: u64, phase: Phase) {
        let j = self.job.as_mut().expect("a job runs");
        let name = j.phase.name();
        if phase.name() != name {
            let ms = now_ms.saturating_sub(j.phase_started_ms);
            match j.record.phases.last_mut() {
                Some(p) if p.phase == name => p.ms += ms,
                _ => j.record.phases.push(PhaseTime {
                    phase: name.to_owned(),
                    ms,
                }),
            }
            j.phase_started_ms = now_ms;
        }
        j.phase = phase;
    }

    fn fail(&mut self, now_ms: u64, reason: String, actions: &mut Vec<Action>) {
        let j = self.job.as_mut().expect("a job runs");
        if j.phase == Phase::Recording {
            return;
        }
        release_all(j, actions);
        self.finish(now_ms, Outcome::Failed { reason }, actions);
    }

    fn finish(&mut self, now_ms: u64, outcome: Outcome, actions: &mut Vec<Action>) {
        self.set_phase(now_ms, Phase::Recording);
        let j = self.job.as_mut().expect("a job runs");
        j.calls.clear();
        j.purges.clear();
        j.cursors.clear();
        j.batch.clear();
        j.record.outcome = outcome;
        j.record.finished_ms = Some(now_ms);
        j.record_since = Some(now_ms);
        actions.push(Action::WriteRecord(j.record.clone()));
    }
}

/// The end of collection (or of the job): counts kept in the record, every lease let go.
fn release_all(j: &mut Job, actions: &mut Vec<Action>) {
    j.record.collected = collected(j);
    actions.extend(j.record.members.iter().map(|&node| Action::Release {
        node,
        job: j.record.id,
    }));
}

fn collected(j: &Job) -> Vec<(u64, u64)> {
    if j.cursors.is_empty() {
        return j.record.collected.clone();
    }
    j.cursors.iter().map(|(&n, c)| (n, c.collected)).collect()
}

/// Keeps the error that stopped the end record from being written in the outcome the caller
/// sees (a success stays a success: the purges and compactions did happen).
fn note_unwritten(record: &mut JobRecord, error: &str) {
    if let Outcome::Failed { reason } = &mut record.outcome {
        reason.push_str(&format!("; the record could not be written: {error}"));
    }
}
