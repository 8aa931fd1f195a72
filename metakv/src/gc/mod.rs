//! The node's side of tombstone GC: the thin async layer that runs `metakv-gc`'s state
//! machines. The agent answers the `gc` service on every node; the driver task runs the
//! manager while this node leads, carries out its actions (agent calls, purges through Raft,
//! job records in `_sys`, the leadership handoff) and feeds their outcomes back as events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use metakv_gc::{
    Action, Agent, AgentAction, AgentReply, AgentRequest, Event, GcConfig, JOB_KEY_PREFIX, JobId,
    JobRecord, Manager, Outcome, ProbeError, Progress, SERVICE, Trigger,
};
use metakv_store::{Expect, Op, SYS_BUCKET, Scan, TombstoneQuery};
use openraft::async_runtime::WatchReceiver;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::node_core::{Core, DRIVER_TICK, now_ms};
use crate::sync::lock;

mod driver;

pub(crate) use driver::drive;

/// Job records the janitor of a new leader looks at.
const JANITOR_RECORDS: usize = 100;

/// A request to the driver.
#[derive(Debug)]
pub(crate) enum Ctl {
    Run {
        dry_run: bool,
        min_age_ms: Option<u64>,
        reply: oneshot::Sender<Result<JobId>>,
    },
}

/// The GC state every node keeps: its agent and the pins of its open watchers.
#[derive(Debug)]
pub(crate) struct GcState {
    pub(crate) config: GcConfig,
    agent: Mutex<Agent>,
    /// `(bucket, cursor)` of each long-poll seen lately, with when its pin lapses.
    pins: Mutex<BTreeMap<(String, u64), Instant>>,
    ctl: mpsc::UnboundedSender<Ctl>,
    progress: Mutex<Option<Progress>>,
    epoch: Instant,
}

impl GcState {
    pub(crate) fn new(config: GcConfig) -> (GcState, mpsc::UnboundedReceiver<Ctl>) {
        let (ctl, rx) = mpsc::unbounded_channel();
        let state = GcState {
            config,
            agent: Mutex::new(Agent::new()),
            pins: Mutex::new(BTreeMap::new()),
            ctl,
            progress: Mutex::new(None),
            epoch: Instant::now(),
        };
        (state, rx)
    }

    /// The agent's clock: ms since the node started (monotonic).
    fn mono_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A watcher polls `bucket` after `cursor` and may wait `wait`: tombstones above the
    /// cursor stay on this node until it has had the chance to see them.
    pub(crate) fn pin(&self, bucket: &str, cursor: u64, wait: Duration) {
        let until = Instant::now() + wait + Duration::from_millis(self.config.pin_grace_ms);
        let mut pins = lock(&self.pins);
        let now = Instant::now();
        pins.retain(|_, lapse| *lapse > now);
        let slot = pins.entry((bucket.to_owned(), cursor)).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// The lowest live cursor per bucket.
    fn pins_now(&self) -> BTreeMap<String, u64> {
        let now = Instant::now();
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for ((bucket, cursor), lapse) in lock(&self.pins).iter() {
            if *lapse > now {
                let pin = out.entry(bucket.clone()).or_insert(*cursor);
                *pin = (*pin).min(*cursor);
            }
        }
        out
    }

    pub(crate) fn progress(&self) -> Option<Progress> {
        lock(&self.progress).clone()
    }

    pub(crate) fn run(
        &self,
        dry_run: bool,
        min_age_ms: Option<u64>,
    ) -> oneshot::Receiver<Result<JobId>> {
        let (reply, rx) = oneshot::channel();
        // A closed channel drops `reply`, and the caller reads that as "shutting down".
        let _ = self.ctl.send(Ctl::Run {
            dry_run,
            min_age_ms,
            reply,
        });
        rx
    }
}

/// GC on one node: the node core and the node's GC state. Cloning shares both.
#[derive(Debug, Clone)]
pub(crate) struct Gc {
    pub(crate) core: Arc<Core>,
    pub(crate) state: Arc<GcState>,
}

impl Gc {
    /// Answers one call of the `gc` service: the agent's part of a job.
    pub(crate) async fn agent_call(&self, request: AgentRequest) -> AgentReply {
        let gc = &self.state;
        let action = lock(&gc.agent).request(gc.mono_ms(), self.core.applied_index(), request);
        match action {
            AgentAction::Reply(reply) => reply,
            AgentAction::ReadPage(q) => {
                let query = TombstoneQuery {
                    after: q.after,
                    limit: q.limit.min(metakv_store::PAGE_ITEMS_MAX as u32) as usize,
                    max_rev: q.max_rev,
                    deleted_at_or_before_ms: q.deleted_at_or_before_ms,
                    pins: gc.pins_now(),
                };
                let page = self
                    .core
                    .local(move |s| s.read()?.tombstones(&query))
                    .await
                    .map(|p| (p.items, p.next))
                    .map_err(|e| e.to_string());
                lock(&gc.agent).page_read(q.job, page)
            }
            AgentAction::Compact { job } => {
                let report = self.core.compact_state().await;
                lock(&gc.agent).compacted(job, report.map_err(|e| e.to_string()))
            }
        }
    }

    /// The last `limit` job records in `_sys`, newest first, as this node has them.
    pub(crate) async fn gc_records(&self, limit: usize) -> Result<Vec<JobRecord>> {
        let scan = Scan {
            limit: limit.clamp(1, metakv_store::PAGE_ITEMS_MAX),
            ..Scan::prefix(JOB_KEY_PREFIX)
        };
        let page = self
            .core
            .local(move |s| s.read()?.scan(SYS_BUCKET, &scan))
            .await?;
        page.items
            .iter()
            .map(|(_, record)| {
                JobRecord::decode(&record.value).map_err(|e| Error::Storage(e.to_string()))
            })
            .collect()
    }

    /// Writes a job's record, on this node only (see [`Core::propose_here`]).
    async fn write_record(&self, record: &JobRecord) -> Result<()> {
        let op = Op::Put {
            bucket: SYS_BUCKET.into(),
            key: record.id.key(),
            value: record.encode(),
            expect: Expect::Any,
        };
        self.core
            .propose_here(op, Some(self.core.config.request_timeout))
            .await
            .map(|_| ())
    }

    async fn call_agent(
        &self,
        node: u64,
        addr: Option<String>,
        request: AgentRequest,
        ttl: Duration,
    ) -> Result<AgentReply> {
        if node == self.core.id {
            return tokio::time::timeout(ttl, self.agent_call(request))
                .await
                .map_err(|_| Error::Unavailable(format!("no answer within {ttl:?}")));
        }
        let addr =
            addr.ok_or_else(|| Error::Unavailable(format!("node {node} is not a member")))?;
        self.core
            .pool
            .service_call(&addr, SERVICE, &request, ttl)
            .await
            .map_err(crate::pool::unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kv, Node, NodeConfig};

    fn config(dir: &std::path::Path, id: u64, join: Option<String>) -> NodeConfig {
        let mut c = NodeConfig::new(id, dir.join(format!("node{id}")), "127.0.0.1:0");
        c.join = join;
        c.heartbeat_ms = 50;
        c.election_timeout_min_ms = 250;
        c.election_timeout_max_ms = 500;
        c.request_timeout = Duration::from_secs(2);
        c
    }

    /// A stale leader's GC job forwarded its records to the new leader, which had run its
    /// janitor already and never adopted the job: `gc status` showed it running forever, and
    /// `gc wait` never returned (found by the chaos suite, seed 6018: a GC job started on a
    /// leader cut off from the others). A job's record is now written only where it is
    /// proposed; on a node that does not lead it is refused and nothing is recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_record_is_never_forwarded_to_another_leader() {
        let dir = tempfile::tempdir().unwrap();
        let leader = Node::start(config(dir.path(), 1, None)).await.unwrap();
        let mut joining = config(dir.path(), 2, Some(leader.addr().to_owned()));
        joining.join_token = Some(
            crate::Kv::join_token(&leader, Duration::from_secs(60))
                .await
                .unwrap()
                .token,
        );
        let follower = Node::start(joining).await.unwrap();
        let record = JobRecord::started(
            JobId { term: 1, seq: 9 },
            2,
            Trigger::Demand,
            false,
            0,
            vec![1, 2],
            0,
        );
        let written = follower.inner.gc.write_record(&record).await;
        assert!(
            matches!(written, Err(Error::NotLeader { .. })),
            "a follower's job record answered {written:?}"
        );
        let recorded = leader
            .get_with(
                SYS_BUCKET,
                &record.id.key(),
                crate::Consistency::Linearizable,
                true,
            )
            .await;
        assert!(
            matches!(recorded, Ok(None)),
            "the leader holds {recorded:?}"
        );
        follower.shutdown().await;
        leader.shutdown().await;
    }
}
