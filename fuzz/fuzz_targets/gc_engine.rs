//! Arbitrary event sequences into the GC manager and agent state machines: jobs started at any
//! time, actions delivered late, out of order, failed or lost, clocks jumping, leadership lost
//! and taken by a new manager, membership changing, agents restarting. After every step:
//! - one job at a time: a start while a job runs is refused;
//! - no purge is proposed for a tombstone that some member did not report, with that revision,
//!   to the job proposing it; no purge from a job that is not running;
//! - no agent holds a lease past its deadline, nor longer than one lease from now.

#![no_main]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use metakv_gc::{
    Action, Agent, AgentAction, AgentReply, AgentRequest, Event, GcConfig, JobId, JobRecord,
    Manager, Outcome, PROTOCOL, Trigger,
};
use metakv_store::TombstoneRef;

const NODES: [u64; 3] = [1, 2, 3];
const STEPS_MAX: usize = 400;

struct World {
    config: GcConfig,
    now: u64,
    /// The leader's manager (node `leader`); replaced on a leadership change.
    manager: Manager,
    leader: u64,
    term: u64,
    agents: BTreeMap<u64, Agent>,
    /// Each node's collectable tombstones, sorted as a store lists them.
    tombstones: BTreeMap<u64, Vec<TombstoneRef>>,
    members: Vec<u64>,
    /// Actions not yet carried out, with the manager term that asked for them.
    pending: VecDeque<(u64, Action)>,
    /// Per job and node: every tombstone the node reported in a page to that job.
    reported: BTreeMap<(JobId, u64), BTreeSet<TombstoneRef>>,
    /// The last record each job wrote.
    records: BTreeMap<JobId, JobRecord>,
}

fn tombstones(u: &mut Unstructured) -> Result<Vec<TombstoneRef>> {
    let mut set = BTreeSet::new();
    for _ in 0..u.int_in_range(0..=12)? {
        set.insert(TombstoneRef {
            bucket: u.choose(&["a", "b"])?.to_string(),
            key: vec![u.int_in_range(b'0'..=b'9')?],
            rev: u.int_in_range(1..=4)?,
        });
    }
    // Sorted by (bucket, key), one per key, as a store's tombstone index is.
    let mut out: Vec<TombstoneRef> = Vec::new();
    for t in set {
        if out
            .last()
            .is_none_or(|l| (&l.bucket, &l.key) != (&t.bucket, &t.key))
        {
            out.push(t);
        }
    }
    Ok(out)
}

impl World {
    fn new(u: &mut Unstructured) -> Result<World> {
        let config = GcConfig {
            page_size: u.int_in_range(1..=4)?,
            purge_batch: u.int_in_range(1..=3)?,
            purges_in_flight: u.int_in_range(1..=3)?,
            lease_ms: u.int_in_range(10..=200)?,
            call_timeout_ms: u.int_in_range(10..=200)?,
            compact_timeout_ms: u.int_in_range(10..=400)?,
            min_age_ms: 0,
            ..GcConfig::default()
        };
        let mut t = BTreeMap::new();
        for n in NODES {
            t.insert(n, tombstones(u)?);
        }
        Ok(World {
            manager: Manager::new(1, 1, config.clone(), 0),
            config,
            now: 0,
            leader: 1,
            term: 1,
            agents: NODES.iter().map(|&n| (n, Agent::new())).collect(),
            tombstones: t,
            members: NODES.to_vec(),
            pending: VecDeque::new(),
            reported: BTreeMap::new(),
            records: BTreeMap::new(),
        })
    }

    fn queue(&mut self, actions: Vec<Action>) {
        for a in actions {
            if let Action::Purge { job, items } = &a {
                assert_eq!(
                    self.manager.running(),
                    Some(*job),
                    "a purge from a job not running"
                );
                for item in items {
                    for &n in &self.members {
                        assert!(
                            self.reported
                                .get(&(*job, n))
                                .is_some_and(|r| r.contains(item)),
                            "job {job} purges {item:?}, which node {n} did not report"
                        );
                    }
                }
            }
            if let Action::WriteRecord(r) = &a {
                self.records.insert(r.id, r.clone());
            }
            self.pending.push_back((self.manager.term(), a));
        }
    }

    fn event(&mut self, event: Event) {
        let actions = self.manager.on(self.now, event);
        self.queue(actions);
    }

    fn start(&mut self, dry_run: bool) {
        let was_running = self.manager.running();
        let probes = self.members.iter().map(|&n| (n, Ok(PROTOCOL))).collect();
        let voters = self.members.clone();
        let started = self.manager.start(
            self.now,
            Trigger::Demand,
            dry_run,
            0,
            &self.members,
            &voters,
            &probes,
        );
        match started {
            Ok((_, actions)) => {
                assert!(
                    was_running.is_none(),
                    "a second job started beside {was_running:?}"
                );
                self.queue(actions);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }

    /// The agent's answer to a call, carrying out a page read or a compaction on the spot.
    fn call(&mut self, node: u64, request: AgentRequest) -> AgentReply {
        let agent = self.agents.get_mut(&node).expect("a node");
        match agent.request(self.now, 100, request) {
            AgentAction::Reply(r) => r,
            AgentAction::ReadPage(q) => {
                let all = &self.tombstones[&node];
                let after = |t: &TombstoneRef| {
                    q.after
                        .as_ref()
                        .is_none_or(|(b, k)| (&t.bucket, &t.key) > (b, k))
                };
                let items: Vec<TombstoneRef> = all
                    .iter()
                    .filter(|t| after(t) && t.rev <= q.max_rev)
                    .take(q.limit as usize)
                    .cloned()
                    .collect();
                let next = (items.len() == q.limit as usize)
                    .then(|| items.last().map(|t| (t.bucket.clone(), t.key.clone())))
                    .flatten();
                let reply = agent.page_read(q.job, Ok((items.clone(), next)));
                if matches!(reply, AgentReply::Page { .. }) {
                    self.reported
                        .entry((q.job, node))
                        .or_default()
                        .extend(items);
                }
                reply
            }
            AgentAction::Compact { job } => agent.compacted(job, Ok((100, 40))),
        }
    }

    /// Carries out (or fails, or loses) pending action `i`.
    fn deliver(&mut self, i: usize, how: u8) {
        let Some((term, action)) = self.pending.remove(i) else {
            return;
        };
        // Answers to an earlier leader's manager go nowhere; its calls may still reach agents.
        let current = term == self.manager.term();
        match action {
            Action::Call { node, request } => {
                let job = request.job().expect("jobs call with a job");
                if how == 1 {
                    if current {
                        self.event(Event::CallFailed {
                            job,
                            node,
                            error: "lost".into(),
                        });
                    }
                    return;
                }
                if how == 2 {
                    return; // lost without an answer: the call timeout must catch it
                }
                let reply = self.call(node, request);
                if current {
                    self.event(Event::Reply { job, node, reply });
                }
            }
            Action::Release { node, job } => {
                if how != 2 {
                    self.call(node, AgentRequest::Release { job });
                }
            }
            Action::Purge { job, items } if current => match how {
                1 => self.event(Event::PurgeFailed {
                    job,
                    error: "no quorum".into(),
                }),
                2 => {}
                _ => self.event(Event::Purged {
                    job,
                    purged: items.len() as u64,
                    skipped: 0,
                }),
            },
            Action::WriteRecord(r) if current => match how {
                1 => self.event(Event::RecordFailed {
                    job: r.id,
                    error: "no quorum".into(),
                }),
                2 => {}
                _ => self.event(Event::RecordWritten { job: r.id }),
            },
            Action::TransferLeader { to } if current && how == 0 => self.new_leader(to),
            _ => {}
        }
    }

    /// Leadership moves to `to` in a new term; the new manager adopts a handed-off job, as the
    /// driver's janitor does.
    fn new_leader(&mut self, to: u64) {
        let actions = self.manager.on(self.now, Event::LeaderLost);
        self.queue(actions);
        self.term += 1;
        self.leader = to;
        self.manager = Manager::new(to, self.term, self.config.clone(), self.now);
        // The newest job record, if it is a handoff.
        let handoff = self
            .records
            .values()
            .next_back()
            .filter(|r| matches!(r.outcome, Outcome::Handoff { .. }))
            .cloned();
        if let Some(record) = handoff {
            match self.manager.adopt(self.now, record) {
                Ok(actions) => self.queue(actions),
                Err(e) => panic!("a fresh manager refused to adopt: {e}"),
            }
        }
    }

    fn tick(&mut self, by: u64) {
        self.now += by;
        for agent in self.agents.values_mut() {
            agent.tick(self.now);
        }
        let actions = self.manager.tick(self.now);
        self.queue(actions);
    }

    fn check(&self) {
        for (n, agent) in &self.agents {
            if let Some(h) = agent.hold() {
                assert!(
                    h.deadline_ms >= self.now,
                    "node {n} holds {h:?} past its deadline"
                );
                assert!(
                    h.deadline_ms <= self.now.saturating_add(self.config.lease_ms),
                    "node {n} holds {h:?} longer than one lease from {}",
                    self.now
                );
            }
        }
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let mut w = World::new(u)?;
    for _ in 0..STEPS_MAX {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=15)? {
            0 => w.start(u.ratio(1, 8)?),
            1..=8 => {
                if !w.pending.is_empty() {
                    // Mostly in order; sometimes any pending action first.
                    let i = if u.ratio(1, 4)? {
                        u.choose_index(w.pending.len())?
                    } else {
                        0
                    };
                    let how = match u.int_in_range(0..=15)? {
                        0 => 1,
                        1 => 2,
                        _ => 0,
                    };
                    w.deliver(i, how);
                }
            }
            9 | 10 => {
                let by = u.int_in_range(0..=250)?;
                w.tick(by);
            }
            11 => {
                let to = *u.choose(&NODES)?;
                if to != w.leader {
                    w.new_leader(to);
                }
            }
            12 => {
                let mut members = NODES.to_vec();
                if u.arbitrary()? {
                    members.retain(|&n| n != 3);
                }
                w.members = members.clone();
                w.event(Event::Membership { members });
            }
            13 => {
                let n = *u.choose(&NODES)?;
                w.agents.insert(n, Agent::new());
            }
            14 => {
                // New tombstones appear on a node (deletes applied since).
                let n = *u.choose(&NODES)?;
                let more = tombstones(u)?;
                let list = w.tombstones.get_mut(&n).expect("a node");
                let mut merged: BTreeMap<(String, Vec<u8>), TombstoneRef> = list
                    .drain(..)
                    .map(|t| ((t.bucket.clone(), t.key.clone()), t))
                    .collect();
                for t in more {
                    merged.insert((t.bucket.clone(), t.key.clone()), t);
                }
                *list = merged.into_values().collect();
            }
            _ => {
                if let Some(job) = w.manager.running() {
                    let p = w.manager.progress().expect("a running job has progress");
                    assert_eq!(p.job, job);
                }
            }
        }
        w.check();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
