//! The node core: what the request router and every driver use instead of reaching into
//! openraft or the store themselves. It sits below the drivers (`gc`, `hibernate`, `backup`,
//! `snapshots`) and the composition root (`node`): they all take an `Arc<Core>`, and it
//! imports none of them.
//!
//! A driver's background task holds a `Weak<Core>` and upgrades it on each tick
//! ([`next_tick`]): once the node is gone, so is the task.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metakv_raft::{Command, NodeAddr, Raft, SharedStore};
use metakv_store::{Op, Store};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState};
use tokio::sync::watch;

use crate::api::{Consistency, applied};
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::pool::Pool;

/// What every part of a node shares: its id and settings, Raft, the store and the connection
/// pool.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) id: u64,
    pub(crate) config: NodeConfig,
    pub(crate) raft: Raft,
    pub(crate) store: SharedStore,
    pub(crate) pool: Pool,
}

/// How often the GC and hibernation drivers look at leadership, membership, leases and
/// triggers.
pub(crate) const DRIVER_TICK: Duration = Duration::from_millis(250);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::Storage(format!("blocking task: {e}"))
}

/// Waits for the next tick of one of a node's background loops: the core, or `None` once the
/// node stops (or is gone).
pub(crate) async fn next_tick(
    core: &Weak<Core>,
    tick: &mut tokio::time::Interval,
    stop: &mut watch::Receiver<bool>,
) -> Option<Arc<Core>> {
    tokio::select! {
        _ = stop.changed() => None,
        _ = tick.tick() => core.upgrade(),
    }
}

impl Core {
    /// Runs `f` with this node's store taken out of service (its write lock), on a blocking
    /// thread: every request that needs the store waits until `f` returns; none fails.
    pub(crate) async fn exclusive<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> metakv_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            f(&mut store
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner))
        })
        .await
        .map_err(blocking_err)?
        .map_err(Error::from_store)
    }

    /// Runs `f` on this node's copy of the store, on a blocking thread.
    pub(crate) async fn local<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> metakv_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            f(&store
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner))
        })
        .await
        .map_err(blocking_err)?
        .map_err(Error::from_store)
    }

    /// Proposes `op` on this node only, never forwarded: a write that must commit in the term
    /// of the leader that makes it (a GC job's record: a leader that lost its place without
    /// knowing must not record, through the new leader, a job the new leader never adopts).
    /// `NotLeader` on any other node; `Unavailable` when not committed within `ttl` (`None`:
    /// as long as Raft takes).
    pub(crate) async fn propose_here(
        &self,
        op: Op,
        ttl: Option<Duration>,
    ) -> Result<metakv_store::Applied> {
        let write = self.propose(op);
        let proposed = match ttl {
            Some(ttl) => tokio::time::timeout(ttl, write)
                .await
                .map_err(|_| Error::Unavailable(format!("not committed within {ttl:?}")))?,
            None => write.await,
        };
        proposed.map_err(Error::from)?
    }

    /// The one path to `client_write`: proposes `op` stamped with the leader's clock (the
    /// only time apply reads) and answers what applying it did, or the leader to ask instead.
    pub(crate) async fn propose(
        &self,
        op: Op,
    ) -> std::result::Result<Result<metakv_store::Applied>, NotLeading> {
        let write = self.raft.client_write(Command {
            time_ms: now_ms(),
            op,
        });
        match write.await {
            Ok(resp) => Ok(applied(resp.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(NotLeading {
                leader: f.leader_id,
                addr: f.leader_node.map(|n| n.addr),
            }),
            Err(e) => Ok(Err(Error::Unavailable(e.to_string()))),
        }
    }

    /// This node's term if it leads now; otherwise the leader it knows of. Every "do I
    /// lead?" reads this.
    pub(crate) fn leading(&self) -> std::result::Result<u64, NotLeading> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state == ServerState::Leader {
            return Ok(m.current_term);
        }
        let addr = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        Err(NotLeading {
            leader: m.current_leader,
            addr,
        })
    }

    /// Compacts `state.redb` (rebuilds it; see `Store::compact`). Every request that needs the
    /// store waits for it on the store's lock (none fails); Raft keeps running and applies what
    /// it missed afterwards.
    pub(crate) async fn compact_state(&self) -> Result<(u64, u64)> {
        self.exclusive(|store| {
            store.sync()?;
            store.compact().map(|r| (r.bytes_before, r.bytes_after))
        })
        .await
    }

    pub(crate) fn applied_index(&self) -> u64 {
        let metrics = self.raft.metrics();
        let applied = metrics.borrow_watched().last_applied;
        applied.map_or(0, |l| l.index)
    }

    pub(crate) async fn linearize(
        &self,
        consistency: Consistency,
    ) -> std::result::Result<(), Redirect> {
        if consistency == Consistency::Local {
            return Ok(());
        }
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(redirect(f.leader_id, f.leader_node))
            }
            Err(_) => Err(Redirect(None)),
        }
    }
}

/// The leader to ask instead, if known.
#[derive(Debug)]
pub(crate) struct Redirect(pub(crate) Option<(u64, String)>);

pub(crate) fn redirect(id: Option<u64>, node: Option<NodeAddr>) -> Redirect {
    Redirect(id.zip(node.map(|n| n.addr)))
}

/// This node does not lead: the leader it knows of, and that leader's address.
#[derive(Debug, Clone)]
pub(crate) struct NotLeading {
    pub(crate) leader: Option<u64>,
    pub(crate) addr: Option<String>,
}

impl From<NotLeading> for Redirect {
    fn from(not: NotLeading) -> Redirect {
        Redirect(not.leader.zip(not.addr))
    }
}

impl From<NotLeading> for Error {
    fn from(not: NotLeading) -> Error {
        Error::NotLeader { leader: not.leader }
    }
}
