//! A deterministic in-process cluster: three real stores fed by one simulated log, the real
//! manager and agents, and proptest choosing the interleaving of client writes, log
//! replication to each node and the manager's steps. After every job:
//!
//! - no live record was removed: every node's live records equal those of a reference store
//!   that applies the same log without purges (cases 3 and 4: resurrections and any mix);
//! - every purged tombstone is gone from every node once it has applied the purge;
//! - tombstones deleted after the job began are all still there (case 2);
//! - a job that runs on caught-up nodes with no writes in between leaves no tombstone
//!   (case 1: equal sets are purged entirely).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use metakv_gc::{
    Action, Agent, AgentAction, AgentReply, AgentRequest, Event, GcConfig, JobId, Manager, Outcome,
    PROTOCOL, Trigger,
};
use metakv_store::{
    Applied, Config, Expect, Op, PAGE_ITEMS_MAX, Record, Scan, Stamp, Store, TombstoneQuery,
    TombstoneRef,
};
use proptest::prelude::*;

const NODES: [u64; 3] = [1, 2, 3];
const BUCKET: &str = "users";

#[derive(Debug, Clone)]
enum Step {
    Put(u8),
    Delete(u8),
    /// Node `n` applies up to `k` more log entries.
    Replicate(usize, u8),
    StartJob,
    /// The driver carries out the manager's next pending action.
    Drive,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..12).prop_map(Step::Put),
        3 => (0u8..12).prop_map(Step::Delete),
        3 => (0usize..3, 1u8..8).prop_map(|(n, k)| Step::Replicate(n, k)),
        1 => Just(Step::StartJob),
        6 => Just(Step::Drive),
    ]
}

struct Sim {
    _dir: tempfile::TempDir,
    log: Vec<Op>,
    stores: Vec<Store>,
    applied: Vec<usize>,
    agents: Vec<Agent>,
    reference: Store,
    manager: Manager,
    term: u64,
    actions: VecDeque<Action>,
    job: Option<(JobId, usize, bool)>,
    purged: Vec<TombstoneRef>,
}

fn stamp(index: usize) -> Stamp {
    Stamp {
        rev: index as u64,
        time_ms: index as u64,
    }
}

fn config() -> GcConfig {
    GcConfig {
        page_size: 3,
        purge_batch: 2,
        min_age_ms: 0,
        ..GcConfig::default()
    }
}

impl Sim {
    fn new() -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let mut c = Config::new(dir.path().join(name));
            c.durable = false;
            Store::open(c).unwrap()
        };
        let mut sim = Sim {
            stores: NODES
                .iter()
                .map(|n| open(&format!("node{n}.redb")))
                .collect(),
            reference: open("reference.redb"),
            _dir: dir,
            log: Vec::new(),
            applied: vec![0; 3],
            agents: NODES.iter().map(|_| Agent::new()).collect(),
            manager: Manager::new(1, 1, config(), 0),
            term: 1,
            actions: VecDeque::new(),
            job: None,
            purged: Vec::new(),
        };
        sim.append(Op::CreateBucket {
            bucket: BUCKET.into(),
        });
        sim.catch_up_all();
        sim
    }

    /// Appends an op; the leader (node 1) applies it at once, as a leader does on commit.
    fn append(&mut self, op: Op) -> Applied {
        self.log.push(op.clone());
        let index = self.log.len();
        // The reference never purges (revisions may skip: only their order matters).
        if !matches!(op, Op::Purge { .. }) {
            self.reference.apply(&op, stamp(index)).unwrap();
        }
        self.replicate(0, usize::MAX)
            .expect("the leader applies what it appends")
    }

    /// Node `n` applies up to `k` more entries; returns the result of the last one.
    fn replicate(&mut self, n: usize, k: usize) -> Option<Applied> {
        let mut last = None;
        let end = self.applied[n].saturating_add(k).min(self.log.len());
        while self.applied[n] < end {
            let index = self.applied[n] + 1;
            last = Some(
                self.stores[n]
                    .apply(&self.log[index - 1], stamp(index))
                    .unwrap(),
            );
            self.applied[n] = index;
        }
        last
    }

    fn catch_up_all(&mut self) {
        for n in 0..3 {
            self.replicate(n, usize::MAX);
        }
    }

    fn start(&mut self) {
        if self.job.is_some() {
            return;
        }
        let probes = NODES.iter().map(|&n| (n, Ok(PROTOCOL))).collect();
        let now = self.log.len() as u64;
        let (job, actions) = self
            .manager
            .start(now, Trigger::Demand, false, 0, &NODES, &NODES, &probes)
            .unwrap();
        let quiet = self.applied.iter().all(|&a| a == self.log.len());
        self.job = Some((job, self.log.len(), quiet));
        self.actions.extend(actions);
    }

    fn now(&self) -> u64 {
        self.log.len() as u64
    }

    /// Carries out one pending action; returns the finished record if the job ended.
    fn drive(&mut self) -> Option<metakv_gc::JobRecord> {
        let action = self.actions.pop_front()?;
        let now = self.now();
        let event = match action {
            Action::Call { node, request } => {
                let job = request.job().unwrap();
                let reply = self.agent_call(node, request);
                Some(Event::Reply { job, node, reply })
            }
            Action::Release { node, job } => {
                self.agent_call(node, AgentRequest::Release { job });
                None
            }
            Action::Purge { job, items } => {
                self.purged.extend(items.iter().cloned());
                match self.append(Op::Purge { items }) {
                    Applied::Purged { purged, skipped } => Some(Event::Purged {
                        job,
                        purged,
                        skipped,
                    }),
                    other => panic!("{other:?}"),
                }
            }
            Action::WriteRecord(record) => {
                let job = record.id;
                self.append(Op::Put {
                    bucket: metakv_store::SYS_BUCKET.into(),
                    key: job.key(),
                    value: record.encode(),
                    expect: Expect::Any,
                });
                Some(Event::RecordWritten { job })
            }
            Action::TransferLeader { .. } => {
                // Leadership moves and comes back in a new term: the new manager adopts the
                // job from its handoff record, as the driver's janitor does.
                let actions = self.manager.on(now, Event::LeaderLost);
                assert!(actions.is_empty());
                self.term += 1;
                self.manager = Manager::new(1, self.term, config(), now);
                let key = self.job.unwrap().0.key();
                let record = self
                    .reference
                    .get(metakv_store::SYS_BUCKET, &key)
                    .unwrap()
                    .unwrap();
                let record = metakv_gc::JobRecord::decode(&record.value).unwrap();
                self.actions
                    .extend(self.manager.adopt(now, record).unwrap());
                None
            }
            Action::Finished(record) => return Some(record),
        };
        if let Some(e) = event {
            self.actions.extend(self.manager.on(now, e));
        }
        None
    }

    fn agent_call(&mut self, node: u64, request: AgentRequest) -> AgentReply {
        let n = node as usize - 1;
        let applied = self.applied[n] as u64;
        let now = self.now();
        match self.agents[n].request(now, applied, request) {
            AgentAction::Reply(r) => r,
            AgentAction::ReadPage(q) => {
                let query = TombstoneQuery {
                    after: q.after,
                    limit: q.limit as usize,
                    max_rev: q.max_rev,
                    deleted_at_or_before_ms: q.deleted_at_or_before_ms,
                    pins: BTreeMap::new(),
                };
                let page = self.stores[n].read().unwrap().tombstones(&query).unwrap();
                self.agents[n].page_read(q.job, Ok((page.items, page.next)))
            }
            AgentAction::Compact { job } => {
                let r = self.stores[n].compact().unwrap();
                self.agents[n].compacted(job, Ok((r.bytes_before, r.bytes_after)))
            }
        }
    }

    fn records(store: &Store) -> BTreeMap<Vec<u8>, Record> {
        let scan = Scan {
            limit: PAGE_ITEMS_MAX,
            include_tombstones: true,
            ..Scan::all()
        };
        let page = store.read().unwrap().scan(BUCKET, &scan).unwrap();
        assert!(page.next.is_none());
        page.items.into_iter().collect()
    }

    fn check_after(&mut self, record: &metakv_gc::JobRecord, began: usize, quiet: bool) {
        self.catch_up_all();
        let reference = Sim::records(&self.reference);
        let live = |m: &BTreeMap<Vec<u8>, Record>| -> BTreeMap<Vec<u8>, u64> {
            m.iter()
                .filter(|(_, r)| !r.deleted)
                .map(|(k, r)| (k.clone(), r.rev))
                .collect()
        };
        let purged: BTreeSet<(Vec<u8>, u64)> =
            self.purged.iter().map(|t| (t.key.clone(), t.rev)).collect();
        for n in 0..3 {
            let mine = Sim::records(&self.stores[n]);
            assert_eq!(
                live(&mine),
                live(&reference),
                "node {} lost or changed a live record",
                n + 1
            );
            for (k, r) in &mine {
                if r.deleted {
                    let there = reference.get(k).expect("a tombstone the reference lacks");
                    assert_eq!(there.rev, r.rev);
                    assert!(
                        !purged.contains(&(k.clone(), r.rev)),
                        "a purged tombstone survived"
                    );
                }
            }
            for (k, r) in &reference {
                if r.deleted && r.rev > began as u64 {
                    assert!(
                        mine.contains_key(k),
                        "a delete made after the job began was purged"
                    );
                }
            }
            if quiet && record.outcome == Outcome::Succeeded && record.min_age_ms == 0 {
                // Case 1: nothing was written during the job, every node was caught up.
                assert!(
                    mine.values().all(|r| !r.deleted),
                    "equal sets left tombstones"
                );
            }
        }
    }
}

fn run(steps: Vec<Step>) {
    let mut sim = Sim::new();
    let mut written_during = false;
    for step in steps
        .into_iter()
        .chain(std::iter::repeat_n(Step::Drive, 400))
    {
        match step {
            Step::Put(k) => {
                written_during = true;
                sim.append(Op::Put {
                    bucket: BUCKET.into(),
                    key: vec![b'k', k],
                    value: vec![k; 8],
                    expect: Expect::Any,
                });
            }
            Step::Delete(k) => {
                written_during = true;
                sim.append(Op::Delete {
                    bucket: BUCKET.into(),
                    key: vec![b'k', k],
                    expect: Expect::Any,
                });
            }
            Step::Replicate(n, k) => {
                written_during = true;
                sim.replicate(n, k as usize);
            }
            Step::StartJob => {
                if sim.job.is_none() {
                    written_during = false;
                }
                sim.start();
            }
            Step::Drive => {
                if let Some(record) = sim.drive() {
                    let (job, began, quiet) = sim.job.take().unwrap();
                    assert_eq!(record.id, job);
                    assert!(record.outcome.is_finished());
                    assert_eq!(record.purged + record.skipped, record.agreed);
                    sim.check_after(&record, began, quiet && !written_during);
                    sim.purged.clear();
                }
            }
        }
    }
    assert!(sim.job.is_none() || sim.actions.is_empty(), "a job stalled");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn gc_jobs_under_random_interleavings(steps in proptest::collection::vec(step(), 1..120)) {
        run(steps);
    }
}

#[test]
fn a_quiet_job_purges_every_tombstone() {
    let mut steps = Vec::new();
    for k in 0..10 {
        steps.push(Step::Put(k));
    }
    // An odd count, so the last purge batch is a partial one.
    for k in 0..7 {
        steps.push(Step::Delete(k));
    }
    for n in 0..3 {
        steps.push(Step::Replicate(n, 255));
    }
    steps.push(Step::StartJob);
    run(steps);
}
