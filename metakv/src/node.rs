//! [`Node`]: one metakv node inside an application.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use metakv_raft::candidacy::{Candidacy, LeaderContact, stand_promptly};
use metakv_raft::network::Network;
use metakv_raft::restore;
use metakv_raft::server::{ServerConfig, Services, serve};
use metakv_raft::{
    Command, LogClosed, LogStats, LogStore, NodeAddr, Raft, SharedStore, StateMachine,
};
use metakv_store::{Changes, Op, SYS_BUCKET, Scan, Store};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{
    CLIENT_SERVICE, ChangesPage, ClientReply, ClientRequest, ClusterStatus, Consistency, GcStatus,
    Kv, Member, MemberReport, NodeCheck, NodeCompacted, NodeStatus, Role, ScanPage, applied,
};
use crate::error::{Error, Result};
use crate::gc::GcState;
use crate::hibernate::{HibernationConfig, HibernationState};
use crate::pool::{Pool, unavailable};
pub(crate) use crate::sync::lock;
use metakv_gc::GcConfig;

/// A node setting out of its range; nothing has been created or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The setting, as the config file names it (`raft` for the timings taken together).
    pub key: &'static str,
    pub message: String,
}

impl ConfigError {
    fn new(key: &'static str, message: String) -> ConfigError {
        ConfigError { key, message }
    }
}

/// How a node runs. [`NodeConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Holds `state.redb`, `raft-log.redb` and `snapshots/`. Created if missing.
    pub data_dir: PathBuf,
    /// Where to listen; port 0 picks a free port.
    pub listen: String,
    /// What other nodes dial; the bound listen address when `None`.
    pub advertise: Option<String>,
    /// Nodes and clients of another cluster id are refused at the handshake.
    pub cluster_id: String,
    /// A member of the cluster to join; `None` starts (or restarts) on the node's own files, and
    /// a node with no files then initializes a single-node cluster.
    pub join: Option<String>,
    pub value_bytes_max: usize,
    pub cache_bytes: usize,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is taken after this many log entries since the last one, each member at its
    /// own phase so that they do not all build at once...
    pub snapshot_logs_since_last: u64,
    /// ...and this many entries before it are kept in the log for slow followers.
    pub logs_kept_after_snapshot: u64,
    /// How long a client request waits for a leader or a forwarded answer.
    pub request_timeout: Duration,
    /// Tombstone GC: triggers, minimum age, leases, batch sizes.
    pub gc: GcConfig,
    /// Hibernation: the janitor's interval and where archive locations lead.
    pub hibernation: HibernationConfig,
}

impl NodeConfig {
    pub fn new(id: u64, data_dir: impl Into<PathBuf>, listen: impl Into<String>) -> NodeConfig {
        NodeConfig {
            id,
            data_dir: data_dir.into(),
            listen: listen.into(),
            advertise: None,
            cluster_id: "metakv".into(),
            join: None,
            value_bytes_max: metakv_store::VALUE_BYTES_MAX_DEFAULT,
            cache_bytes: metakv_store::CACHE_BYTES_DEFAULT,
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 20_000,
            logs_kept_after_snapshot: 5_000,
            request_timeout: Duration::from_secs(10),
            gc: GcConfig::default(),
            hibernation: HibernationConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Checks every setting; the error names the setting (as the config file spells it) and
    /// what is wrong with it. [`Node::start`] runs this before it touches the data dir.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let at_least = |key: &'static str, v: u64, min: u64| {
            if v < min {
                return Err(ConfigError::new(
                    key,
                    format!("{key} is {v}; it must be at least {min}"),
                ));
            }
            Ok(())
        };
        at_least("id", self.id, 1)?;
        if self.cluster_id.is_empty() || self.cluster_id.len() > 64 {
            return Err(ConfigError::new(
                "cluster_id",
                format!(
                    "cluster_id {:?} must have 1 to 64 characters",
                    self.cluster_id
                ),
            ));
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > metakv_store::VALUE_BYTES_MAX_CEILING
        {
            return Err(ConfigError::new(
                "limits.value_bytes_max",
                format!(
                    "limits.value_bytes_max is {}; it must be from 1 to {}",
                    self.value_bytes_max,
                    metakv_store::VALUE_BYTES_MAX_CEILING
                ),
            ));
        }
        at_least("limits.cache_bytes", self.cache_bytes as u64, 1 << 20)?;
        at_least(
            "limits.request_timeout (ms)",
            self.request_timeout.as_millis() as u64,
            1,
        )?;
        at_least("raft.heartbeat (ms)", self.heartbeat_ms, 1)?;
        if self.election_timeout_min_ms >= self.election_timeout_max_ms
            || self.heartbeat_ms >= self.election_timeout_min_ms
        {
            return Err(ConfigError::new(
                "raft",
                format!(
                    "raft timings need heartbeat ({} ms) < election_timeout_min ({} ms) < election_timeout_max ({} ms)",
                    self.heartbeat_ms, self.election_timeout_min_ms, self.election_timeout_max_ms
                ),
            ));
        }
        at_least(
            "raft.snapshot_logs_since_last",
            self.snapshot_logs_since_last,
            1,
        )?;
        for (key, v) in [
            ("gc.page_size", u64::from(self.gc.page_size)),
            ("gc.purge_batch", u64::from(self.gc.purge_batch)),
            ("gc.purges_in_flight", u64::from(self.gc.purges_in_flight)),
            ("gc.lease (ms)", self.gc.lease_ms),
            ("gc.call_timeout (ms)", self.gc.call_timeout_ms),
            ("gc.compact_timeout (ms)", self.gc.compact_timeout_ms),
        ] {
            at_least(key, v, 1)?;
        }
        Ok(())
    }
}

/// A running node. Cloning shares it; [`Node::shutdown`] stops it.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) id: u64,
    addr: String,
    /// The address the listener is bound to (differs from `addr` behind an `advertise`).
    listen_addr: String,
    pub(crate) config: NodeConfig,
    raft: Raft,
    pub(crate) store: SharedStore,
    log_stats: Arc<LogStats>,
    log_closed: LogClosed,
    pub(crate) pool: Pool,
    pub(crate) gc: GcState,
    pub(crate) hibernation: HibernationState,
    pub(crate) backups: crate::backup::Backups,
    stop: watch::Sender<bool>,
    /// Why the node stopped by itself (a storage failure), once it has.
    failure: watch::Sender<Option<String>>,
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// The transport's view of the node: its client service.
struct NodeServices(Weak<Inner>);

impl Services for NodeServices {
    fn call(
        &self,
        from: Option<u64>,
        service: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, std::result::Result<Vec<u8>, String>> {
        let inner = self.0.clone();
        Box::pin(async move {
            let node = Node {
                inner: inner.upgrade().ok_or("the node is shutting down")?,
            };
            if service == metakv_gc::SERVICE {
                let request: metakv_gc::AgentRequest = postcard::from_bytes(&payload)
                    .map_err(|e| format!("undecodable GC request: {e}"))?;
                let reply = node.agent_call(request).await;
                return Ok(postcard::to_stdvec(&reply).expect("GC replies encode"));
            }
            if service != CLIENT_SERVICE {
                return Err(format!("no service {service:?} on this node"));
            }
            let request: ClientRequest = postcard::from_bytes(&payload)
                .map_err(|e| format!("undecodable client request: {e}"))?;
            let reply = match node.handle(request, from).await {
                Ok(reply) => reply,
                Err(e) => ClientReply::Error(e),
            };
            Ok(postcard::to_stdvec(&reply).expect("client replies encode"))
        })
    }
}

/// Pending connections the listener queues before the kernel drops SYNs (capped by
/// `net.core.somaxconn`). The standard library's 128 overflowed when 256 clients dialed at once,
/// and each dropped SYN cost a client a 1 s retransmit (`ListenOverflows` in `nstat`).
const LISTEN_BACKLOG: u32 = 1024;
/// The longest a watch poll may wait (`ClientRequest::Changes { wait_ms }`): a poll holds a
/// pin on its bucket's tombstones for its wait, so a client must not choose an endless one.
pub const WATCH_WAIT_MS_MAX: u32 = 60_000;
/// Longest wait between two attempts of a request that found no leader (see `Node::route`).
const ROUTE_RETRY_MAX: Duration = Duration::from_millis(50);

/// Binds `addr` with a backlog of [`LISTEN_BACKLOG`].
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// Waits for the next tick of one of a node's background loops: the node, or `None` once it
/// stops (or is gone).
pub(crate) async fn next_tick(
    node: &Weak<Inner>,
    tick: &mut tokio::time::Interval,
    stop: &mut watch::Receiver<bool>,
) -> Option<Node> {
    tokio::select! {
        _ = stop.changed() => None,
        _ = tick.tick() => node.upgrade().map(|inner| Node { inner }),
    }
}

/// Stops the node when Raft stops by itself: a failed write or fsync of either file (a full
/// disk, an I/O error) is fatal for that file, and is never retried. The node says so once,
/// stops serving (so peers and clients are not answered from a state that can no longer
/// move), and [`Node::failed`] returns. Every entry it acknowledged is durable in the log, so
/// restarting it on its files, once the cause is gone, loses nothing.
async fn stop_on_failure(node: Weak<Inner>, raft: Raft, mut stop: watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = metrics.changed() => if changed.is_err() { break },
        }
    }
    if *stop.borrow() {
        return;
    }
    let why = match raft.is_initialized().await {
        Err(fatal) => fatal.to_string(),
        Ok(_) => "raft stopped".to_owned(),
    };
    let Some(inner) = node.upgrade() else {
        return;
    };
    tracing::error!(
        id = inner.id,
        error = %why,
        "node stopped after a storage failure; nothing it acknowledged is lost: remove the \
         cause (free disk space) and restart it on its files"
    );
    let _ = inner.failure.send(Some(why));
    let _ = inner.stop.send(true);
}

/// How often the GC and hibernation drivers look at leadership, membership, leases and
/// triggers.
pub(crate) const DRIVER_TICK: Duration = Duration::from_millis(250);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::Storage(format!("blocking task: {e}"))
}

impl Node {
    /// Opens the node's files, starts Raft and the listener, and then: restarts on its files,
    /// or initializes a single-node cluster (new node, no `join`), or joins `join`.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        config
            .validate()
            .map_err(|e| Error::invalid(format!("configuration: {e}")))?;
        let io = |doing: &str, e: &dyn std::fmt::Display| Error::Storage(format!("{doing}: {e}"));
        std::fs::create_dir_all(&config.data_dir).map_err(|e| io("creating the data dir", &e))?;
        if config.data_dir.join(restore::PARTIAL).exists() {
            return Err(Error::Storage(format!(
                "{} holds an unfinished restore ({}): remove the dir and restore again",
                config.data_dir.display(),
                restore::PARTIAL
            )));
        }
        let store_config = metakv_store::Config {
            path: config.data_dir.join(restore::STATE_FILE),
            cache_bytes: config.cache_bytes,
            // IMPORTANT: apply must not depend on a node's own settings, or nodes configured
            // differently would apply the same entry differently. Apply checks the compiled
            // ceiling, which every node shares; `config.value_bytes_max` is checked before a
            // write is proposed or forwarded (`try_handle`).
            value_bytes_max: metakv_store::VALUE_BYTES_MAX_CEILING,
            durable: false,
        };
        let store = tokio::task::spawn_blocking(move || Store::open(store_config))
            .await
            .map_err(blocking_err)?
            .map_err(Error::from_store)?;
        let store: SharedStore = Arc::new(RwLock::new(store));
        let log_path = config.data_dir.join(restore::LOG_FILE);
        let log = tokio::task::spawn_blocking(move || LogStore::open(&log_path))
            .await
            .map_err(blocking_err)?
            .map_err(|e| io("opening the raft log", &e))?;
        let sm = StateMachine::new(
            Arc::clone(&store),
            config.data_dir.join(restore::SNAPSHOT_DIR),
        )
        .map_err(|e| io("opening snapshots", &e))?;
        let listener = listen(&config.listen)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", config.listen)))?;
        let listen_addr = listener
            .local_addr()
            .map_err(|e| io("reading the listen address", &e))?
            .to_string();
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| listen_addr.clone());
        let raft_config = openraft::Config {
            cluster_name: config.cluster_id.clone(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            // `crate::snapshots` triggers them, each member at its own phase.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            // IMPORTANT: a restarted leader stands for election. The state file and the
            // committed index are written without fsync, so a leader restored without an
            // election would answer read-index reads from a state behind what it had
            // acknowledged; the leader of a new term first commits an entry of its own, and
            // its read index covers everything committed before.
            enable_leader_restore: Some(false),
            // A member that could not win (thawed after SIGSTOP, cut off, restarted) asks
            // before raising its term, and a member that hears from a live leader refuses: a
            // returning follower does not depose a healthy leader.
            enable_pre_vote: Some(true),
            // A leader no quorum has answered for a lease (it can send but not hear) falls
            // silent for this long, so that members that cannot reach it elect one they can;
            // otherwise its heartbeats keep them from standing while it commits nothing. The
            // least openraft allows: the lease (election_timeout_max) plus one election.
            quorum_loss_probe_interval: Some(2 * config.election_timeout_max_ms),
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::invalid(format!("raft configuration: {e}")))?;
        let network = Network {
            cluster_id: config.cluster_id.clone(),
            node_id: config.id,
            append_timeout_min: Duration::from_millis(config.election_timeout_min_ms),
        };
        let log_stats = log.stats();
        let log_closed = log.closed();
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| io("starting raft", &e))?;
        let (stop, stopped) = watch::channel(false);
        let (gc, gc_ctl) = GcState::new(config.gc.clone());
        let inner = Arc::new(Inner {
            gc,
            hibernation: HibernationState::new(config.hibernation.clone()),
            backups: crate::backup::Backups::new(config.data_dir.join(crate::backup::DIR)),
            id: config.id,
            addr: addr.clone(),
            listen_addr,
            pool: Pool::new(config.cluster_id.clone(), Some(config.id)),
            config: config.clone(),
            raft: raft.clone(),
            store,
            log_stats,
            log_closed,
            stop,
            failure: watch::channel(None).0,
            server: std::sync::Mutex::new(None),
        });
        tokio::spawn(stop_on_failure(
            Arc::downgrade(&inner),
            raft.clone(),
            stopped.clone(),
        ));
        let leader_contact = Arc::new(LeaderContact::default());
        tokio::spawn(stand_promptly(
            raft.clone(),
            Arc::clone(&leader_contact),
            Candidacy::from_timings(
                config.heartbeat_ms,
                config.election_timeout_min_ms,
                config.election_timeout_max_ms,
            ),
            stopped.clone(),
        ));
        let server_config = Arc::new(ServerConfig {
            cluster_id: config.cluster_id.clone(),
            node_id: config.id,
            spool_dir: config.data_dir.join(restore::SNAPSHOT_DIR),
            leader_contact,
        });
        tokio::spawn(crate::gc::drive(
            Arc::downgrade(&inner),
            gc_ctl,
            stopped.clone(),
        ));
        tokio::spawn(crate::snapshots::drive(
            Arc::downgrade(&inner),
            config.snapshot_logs_since_last.max(1),
            stopped.clone(),
        ));
        tokio::spawn(crate::hibernate::drive(
            Arc::downgrade(&inner),
            stopped.clone(),
        ));
        let services = Arc::new(NodeServices(Arc::downgrade(&inner)));
        let task = tokio::spawn(serve(
            listener,
            raft.clone(),
            server_config,
            services,
            stopped,
        ));
        *lock(&inner.server) = Some(task);
        let node = Node { inner };
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| io("reading raft state", &e))?;
        match (&config.join, initialized) {
            (_, true) => {
                tracing::info!(id = config.id, %addr, "node restarted on its files");
                node.record_own_address().await?;
            }
            (None, false) => {
                let members = BTreeMap::from([(config.id, NodeAddr { addr: addr.clone() })]);
                raft.initialize(members)
                    .await
                    .map_err(|e| Error::Unavailable(format!("initializing: {e}")))?;
                // A new single-node cluster is ready when it leads: until then its membership
                // and leader are not yet visible, and a first `cluster status` would show none.
                raft.wait(Some(config.request_timeout))
                    .current_leader(config.id, "the new cluster's first election")
                    .await
                    .map_err(|e| Error::Unavailable(format!("initializing: {e}")))?;
                tracing::info!(id = config.id, %addr, "initialized a single-node cluster");
            }
            (Some(seed), false) => {
                if let Err(e) = node.join_through(seed).await {
                    node.shutdown().await;
                    return Err(e);
                }
                tracing::info!(id = config.id, %addr, %seed, "joined the cluster");
            }
        }
        Ok(node)
    }

    /// A node alone in its cluster whose membership records another address than the one it
    /// serves on (restored from a backup, or restarted elsewhere) records its own, once it
    /// leads: nodes that join later are sent to the recorded address.
    async fn record_own_address(&self) -> Result<()> {
        let (id, addr) = (self.inner.id, self.inner.addr.clone());
        let unavailable = |e: &dyn std::fmt::Display| {
            Error::Unavailable(format!("recording this node's address {addr}: {e}"))
        };
        // The state Raft loaded (its metrics may not show it yet).
        let recorded = self
            .inner
            .raft
            .with_raft_state(move |st| {
                let membership = st.membership_state.effective().membership();
                let alone = membership.nodes().all(|(n, _)| *n == id);
                membership
                    .get_node(&id)
                    .filter(|_| alone)
                    .map(|n| n.addr.clone())
            })
            .await
            .map_err(|e| unavailable(&e))?;
        if recorded.as_ref().is_none_or(|r| *r == addr) {
            return Ok(());
        }
        self.inner
            .raft
            .wait(Some(self.inner.config.request_timeout))
            .current_leader(id, "leading alone")
            .await
            .map_err(|e| unavailable(&e))?;
        self.inner
            .raft
            .change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(id, NodeAddr { addr: addr.clone() })])),
                false,
            )
            .await
            .map_err(|e| unavailable(&e))?;
        tracing::info!(id, %addr, was = ?recorded, "recorded this node's address");
        Ok(())
    }

    async fn join_through(&self, seed: &str) -> Result<()> {
        let request = ClientRequest::Join {
            id: self.inner.id,
            addr: self.inner.addr.clone(),
        };
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout * 6;
        // The joiner is no member yet: it asks as a client does, so that a follower it dials
        // passes the request on to the leader (a member's request is never forwarded twice).
        let as_client = Pool::new(self.inner.config.cluster_id.clone(), None);
        loop {
            let outcome = as_client
                .client_call(seed, &request, self.inner.config.request_timeout * 6)
                .await;
            match outcome {
                Ok(ClientReply::Done) => return Ok(()),
                Ok(ClientReply::Error(Error::Unavailable(_) | Error::NotLeader { .. }))
                | Err(_)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(ClientReply::Error(e)) => return Err(e),
                Ok(other) => return Err(Error::Protocol(format!("join answered {other:?}"))),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The address other nodes and clients dial.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The address the node listens on: [`Node::addr`] unless it advertises another.
    pub fn listen_addr(&self) -> &str {
        &self.inner.listen_addr
    }

    /// Why this node stopped by itself, if it has (see [`Node::failed`]).
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.borrow().clone()
    }

    /// Returns once the node has stopped by itself after a storage failure, with the failure.
    /// A node that only stops through [`Node::shutdown`] never returns from this.
    pub async fn failed(&self) -> String {
        let mut failure = self.inner.failure.subscribe();
        match failure.wait_for(Option::is_some).await {
            Ok(f) => f.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// The openraft handle, for what the facade does not wrap.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The node's store (its local copy).
    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// Stops Raft and the listener; the files are closed when the last clone is dropped.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let task = lock(&self.inner.server).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let store = Arc::clone(&self.inner.store);
        let _ = tokio::task::spawn_blocking(move || store.read().map(|s| s.sync().ok()).ok()).await;
        // Replication tasks and blocking calls still running hold the files open; wait (bounded)
        // so that a restart in the same process finds them unlocked. The state file closes when
        // the last `Node` handle is dropped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(self.inner.log_closed.is_closed() && Arc::strong_count(&self.inner.store) == 1) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("files still in use 10 s after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `f` with this node's store taken out of service (its write lock), on a blocking
    /// thread: every request that needs the store waits until `f` returns; none fails.
    pub(crate) async fn exclusive<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> metakv_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = Arc::clone(&self.inner.store);
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
        let store = Arc::clone(&self.inner.store);
        tokio::task::spawn_blocking(move || {
            f(&store
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner))
        })
        .await
        .map_err(blocking_err)?
        .map_err(Error::from_store)
    }

    /// Answers a client request; `from` is the node that forwarded it (it is not forwarded
    /// again), `None` for a caller of this node.
    pub(crate) async fn handle(
        &self,
        request: ClientRequest,
        from: Option<u64>,
    ) -> Result<ClientReply> {
        if let Some(why) = self.failure() {
            return Err(Error::Storage(format!(
                "node {} stopped after a storage failure: {why}",
                self.inner.id
            )));
        }
        if from.is_none()
            && let Some(message) = internal_only(&request)
        {
            return Err(Error::Rejected(metakv_raft::Rejection {
                kind: metakv_raft::RejectionKind::Invalid,
                message,
            }));
        }
        self.route(request, from).await
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
    async fn propose(
        &self,
        op: Op,
    ) -> std::result::Result<Result<metakv_store::Applied>, NotLeading> {
        let write = self.inner.raft.client_write(Command {
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
        let m = self.inner.raft.metrics().borrow_watched().clone();
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

    /// Answers here, or through the leader when it must answer. A refused attempt is retried when
    /// this node's view of leadership changes, or after [`ROUTE_RETRY_MAX`].
    async fn route(&self, request: ClientRequest, from: Option<u64>) -> Result<ClientReply> {
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout;
        // Leadership as this node saw it when the last attempt was refused: the next attempt
        // waits until it changes (an election ends), not for a fixed time.
        let mut leadership = self.inner.raft.server_metrics();
        loop {
            drop(leadership.borrow_and_update());
            match self.try_handle(&request).await {
                Err(Redirect(leader)) if from.is_some() => {
                    return Err(Error::NotLeader {
                        leader: leader.map(|(id, _)| id),
                    });
                }
                Err(Redirect(Some((id, addr)))) if id != self.inner.id => {
                    // A join waits on the leader for the learner to catch up, up to
                    // `request_timeout`, and then for its promotion.
                    let ttl = match request {
                        ClientRequest::Join { .. } => self.inner.config.request_timeout * 2,
                        _ => self.inner.config.request_timeout,
                    };
                    match self.inner.pool.client_call(&addr, &request, ttl).await {
                        Ok(ClientReply::Error(Error::NotLeader { .. })) => {}
                        Ok(reply) => return Ok(reply),
                        Err(e) if e.is_connect() => {}
                        Err(e) => return Err(unavailable(e)),
                    }
                }
                Err(Redirect(_)) => {}
                Ok(reply) => return reply,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Unavailable(format!(
                    "no leader answered within {:?}",
                    self.inner.config.request_timeout
                )));
            }
            if let Some(why) = self.failure() {
                return Err(Error::Storage(format!(
                    "node {} stopped after a storage failure: {why}",
                    self.inner.id
                )));
            }
            // A vote, state or leader change wakes this at once; the bound covers a leader
            // that this node has not heard of yet but another has. Metrics that end (Raft
            // stopped) must not turn this into a busy loop.
            let wait = (deadline - now).min(ROUTE_RETRY_MAX);
            let woke = tokio::time::timeout(wait, leadership.changed()).await;
            if matches!(woke, Ok(Err(_))) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One attempt on this node; `Redirect` when the leader must answer.
    async fn try_handle(
        &self,
        request: &ClientRequest,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        // Matched by reference: only what an answer needs is copied, once per attempt.
        Ok(match request {
            ClientRequest::Write(op) => match op.validate(self.inner.config.value_bytes_max) {
                Err(e) => Err(Error::from_store(e)),
                Ok(()) => self.propose(op.clone()).await?.map(ClientReply::Applied),
            },
            ClientRequest::Get {
                bucket,
                key,
                include_tombstones,
                consistency,
            } => {
                self.linearize(*consistency).await?;
                let (bucket, key, include_tombstones) =
                    (bucket.clone(), key.clone(), *include_tombstones);
                self.local(move |s| s.read()?.get(&bucket, &key, include_tombstones))
                    .await
                    .map(ClientReply::Record)
            }
            ClientRequest::Scan {
                bucket,
                prefix,
                after,
                limit,
                include_tombstones,
                consistency,
            } => {
                self.linearize(*consistency).await?;
                let scan = Scan {
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit: *limit as usize,
                    include_tombstones: *include_tombstones,
                };
                let bucket = bucket.clone();
                self.local(move |s| s.read()?.scan(&bucket, &scan))
                    .await
                    .map(|p| {
                        ClientReply::Page(ScanPage {
                            items: p.items,
                            next: p.next,
                        })
                    })
            }
            ClientRequest::Changes {
                bucket,
                prefix,
                after_rev,
                limit,
                wait_ms,
            } => {
                self.poll_changes(bucket, prefix, *after_rev, *limit, *wait_ms)
                    .await
            }
            ClientRequest::Bucket {
                bucket,
                consistency,
            } => {
                self.linearize(*consistency).await?;
                let bucket = bucket.clone();
                self.local(move |s| s.bucket(&bucket))
                    .await
                    .map(ClientReply::Bucket)
            }
            ClientRequest::Buckets { consistency } => {
                self.linearize(*consistency).await?;
                self.local(|s| s.read()?.buckets())
                    .await
                    .map(ClientReply::Buckets)
            }
            ClientRequest::Status => Ok(ClientReply::Status(self.node_status())),
            ClientRequest::GcRun { .. }
            | ClientRequest::GcStatus { .. }
            | ClientRequest::ClusterStatus
            | ClientRequest::CompactNode
            | ClientRequest::CheckNode
            | ClientRequest::PauseBucket { .. }
            | ClientRequest::ResumeBucket { .. }
            | ClientRequest::Hibernation { .. }
            | ClientRequest::BackupBegin
            | ClientRequest::BackupChunk { .. }
            | ClientRequest::BackupEnd { .. }
            | ClientRequest::Join { .. }
            | ClientRequest::Remove { .. } => return self.try_admin(request).await,
        })
    }

    /// A watch's poll: the changes after `after_rev`, waiting up to `wait_ms` for the next
    /// applied entry when there are none yet.
    async fn poll_changes(
        &self,
        bucket: &str,
        prefix: &[u8],
        after_rev: u64,
        limit: u32,
        wait_ms: u32,
    ) -> Result<ClientReply> {
        if wait_ms > WATCH_WAIT_MS_MAX {
            return Err(Error::invalid(format!(
                "wait_ms {wait_ms} is over the limit of {WATCH_WAIT_MS_MAX}"
            )));
        }
        let applied = self.applied_index();
        if wait_ms > 0 {
            self.inner
                .gc
                .pin(bucket, after_rev, Duration::from_millis(wait_ms.into()));
        }
        let mut page = self.changes_page(bucket, prefix, after_rev, limit).await;
        let empty = matches!(&page, Ok(ChangesPage::Events { events, .. }) if events.is_empty());
        if wait_ms > 0 && empty {
            // Nothing yet: wait for the next applied entry, or for the poll to run out.
            let wait = self
                .inner
                .raft
                .wait(Some(Duration::from_millis(wait_ms.into())));
            if wait
                .applied_index_at_least(Some(applied + 1), "watch")
                .await
                .is_ok()
            {
                page = self.changes_page(bucket, prefix, after_rev, limit).await;
            }
        }
        page.map(ClientReply::Changes)
    }

    /// One attempt at an operator's request: GC, hibernation, backup, checks, membership.
    async fn try_admin(
        &self,
        request: &ClientRequest,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        Ok(match request.clone() {
            ClientRequest::GcRun {
                dry_run,
                min_age_ms,
            } => {
                self.lead_here()?;
                match self.inner.gc.run(dry_run, min_age_ms).await {
                    Ok(Ok(job)) => Ok(ClientReply::GcStarted(job)),
                    Ok(Err(Error::NotLeader { .. })) => return Err(Redirect(None)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Error::Unavailable("the node is shutting down".into())),
                }
            }
            ClientRequest::GcStatus { limit } => {
                self.linearize(Consistency::Linearizable).await?;
                let running = self.inner.gc.progress();
                self.gc_records(limit as usize)
                    .await
                    .map(|jobs| ClientReply::GcStatus(GcStatus { running, jobs }))
            }
            ClientRequest::ClusterStatus => {
                Ok(ClientReply::ClusterStatus(self.cluster_status_now().await))
            }
            ClientRequest::CompactNode => {
                let node = self.inner.id;
                self.compact_state()
                    .await
                    .map(|(bytes_before, bytes_after)| {
                        ClientReply::Compacted(NodeCompacted {
                            node,
                            bytes_before,
                            bytes_after,
                        })
                    })
            }
            ClientRequest::PauseBucket { bucket, archive } => {
                self.lead_here()?;
                leader_only(self.start_pause(&bucket, &archive).await)?.map(ClientReply::OpStarted)
            }
            ClientRequest::ResumeBucket { bucket, archive } => {
                self.lead_here()?;
                leader_only(self.start_resume(&bucket, archive.as_deref()).await)?
                    .map(ClientReply::OpStarted)
            }
            ClientRequest::Hibernation { bucket } => {
                self.lead_here()?;
                self.linearize(Consistency::Linearizable).await?;
                self.hibernation_status(&bucket)
                    .await
                    .map(ClientReply::Hibernation)
            }
            ClientRequest::BackupBegin => {
                self.linearize(Consistency::Linearizable).await?;
                self.backup_begin().await.map(ClientReply::Backup)
            }
            ClientRequest::BackupChunk { node, id, offset } => {
                if node != self.inner.id {
                    return Ok(self.on_member(node, request).await);
                }
                self.backup_chunk(id, offset).await.map(ClientReply::Bytes)
            }
            ClientRequest::BackupEnd { node, id } => {
                if node != self.inner.id {
                    return Ok(self.on_member(node, request).await);
                }
                self.backup_end(id).map(|()| ClientReply::Done)
            }
            ClientRequest::CheckNode => {
                let node = self.inner.id;
                self.exclusive(move |store| store.check())
                    .await
                    .map(|report| ClientReply::Checked(NodeCheck::from_report(node, &report)))
            }
            ClientRequest::Join { id, addr } => return self.add_member(id, addr).await,
            ClientRequest::Remove { id } => {
                return self
                    .change_members(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                    .await;
            }
            ClientRequest::Write(_)
            | ClientRequest::Get { .. }
            | ClientRequest::Scan { .. }
            | ClientRequest::Changes { .. }
            | ClientRequest::Bucket { .. }
            | ClientRequest::Buckets { .. }
            | ClientRequest::Status => unreachable!("answered by try_handle"),
        })
    }

    /// Proposes a membership change here, or redirects to the leader.
    async fn change_members(
        &self,
        change: ChangeMembers<u64, NodeAddr>,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        match self.inner.raft.change_membership(change, false).await {
            Ok(_) => Ok(Ok(ClientReply::Done)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(redirect(f.leader_id, f.leader_node))
            }
            Err(e) => Ok(Err(Error::Unavailable(e.to_string()))),
        }
    }

    /// Adds node `id` at `addr`: a learner first, a voter once it has acknowledged the entry
    /// that added it. A learner that does not within `request_timeout` is removed again, so a
    /// node that is not there never counts toward a quorum. An id that is a voter already is
    /// refused: a node that lost its files must be removed first (its empty log could never
    /// be caught up as the voter it was, and it may have forgotten its vote).
    async fn add_member(
        &self,
        id: u64,
        addr: String,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        self.lead_here()?;
        let raft = &self.inner.raft;
        let (voter, known) = {
            let m = raft.metrics().borrow_watched().clone();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().any(|v| v == id),
                membership.get_node(&id).map(|n| n.addr.clone()),
            )
        };
        if voter {
            return Ok(Err(Error::invalid(format!(
                "node {id} is already a voter (at {}); a node that lost its data dir must be \
                 removed before it joins again: `metakv cluster remove-node {id}`",
                known.unwrap_or_default()
            ))));
        }
        let added = match raft
            .add_learner(id, NodeAddr { addr: addr.clone() }, false)
            .await
        {
            Ok(r) => r.log_id,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                return Err(redirect(f.leader_id, f.leader_node));
            }
            Err(e) => return Ok(Err(Error::Unavailable(e.to_string()))),
        };
        let bound = self.inner.config.request_timeout;
        let caught_up = raft
            .wait(Some(bound))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|matched| matched.index >= added.index)
                },
                "the new learner to acknowledge its addition",
            )
            .await;
        if caught_up.is_err() {
            let removed = raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await;
            let undo = match removed {
                Ok(_) => "it was removed again".to_owned(),
                Err(e) => format!("removing it again failed too: {e}"),
            };
            return Ok(Err(Error::Unavailable(format!(
                "node {id} at {addr} did not catch up within {bound:?} (is it running, and does \
                 it listen there?); {undo}"
            ))));
        }
        self.change_members(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    /// Passes `request` on to member `node`, for what only that node can answer.
    async fn on_member(&self, node: u64, request: &ClientRequest) -> Result<ClientReply> {
        let addr = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config
                .membership()
                .get_node(&node)
                .map(|n| n.addr.clone())
        };
        let Some(addr) = addr else {
            return Err(Error::invalid(format!("node {node} is not a member")));
        };
        match self
            .inner
            .pool
            .client_call(&addr, request, self.inner.config.request_timeout)
            .await
        {
            Ok(ClientReply::Error(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub(crate) fn applied_index(&self) -> u64 {
        let metrics = self.inner.raft.metrics();
        let applied = metrics.borrow_watched().last_applied;
        applied.map_or(0, |l| l.index)
    }

    async fn changes_page(
        &self,
        bucket: &str,
        prefix: &[u8],
        after_rev: u64,
        limit: u32,
    ) -> Result<ChangesPage> {
        let (bucket, prefix) = (bucket.to_owned(), prefix.to_vec());
        let changes = self
            .local(move |s| {
                s.read()?
                    .changes(&bucket, &prefix, after_rev, limit as usize)
            })
            .await?;
        Ok(match changes {
            Changes::Events {
                events,
                next_after_rev,
                more,
            } => ChangesPage::Events {
                events: events.into_iter().map(|c| (c.key, c.record)).collect(),
                next_after_rev,
                more,
            },
            Changes::Compacted { floor } => ChangesPage::Compacted { floor },
        })
    }

    /// For a linearizable read: waits until this node, as leader, has applied everything
    /// committed before the read began (read index); redirects when another node leads.
    /// `Ok` if this node leads; otherwise a redirect to the leader it knows of.
    fn lead_here(&self) -> std::result::Result<(), Redirect> {
        self.leading().map(|_| ()).map_err(Redirect::from)
    }

    pub(crate) async fn linearize(
        &self,
        consistency: Consistency,
    ) -> std::result::Result<(), Redirect> {
        if consistency == Consistency::Local {
            return Ok(());
        }
        match self
            .inner
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(redirect(f.leader_id, f.leader_node))
            }
            Err(_) => Err(Redirect(None)),
        }
    }

    /// Asks every member (this node included) for its own status, all at once.
    async fn cluster_status_now(&self) -> ClusterStatus {
        let mine = self.node_status();
        let asks = mine.members.iter().map(|m| {
            let member = m.clone();
            let mine = mine.clone();
            async move {
                let status = if member.id == self.inner.id {
                    Ok(mine)
                } else {
                    match self
                        .inner
                        .pool
                        .client_call(&member.addr, &ClientRequest::Status, Duration::from_secs(3))
                        .await
                    {
                        Ok(ClientReply::Status(s)) => Ok(s),
                        Ok(other) => Err(format!("answered {other:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                };
                MemberReport { member, status }
            }
        });
        let nodes = futures_util::future::join_all(asks).await;
        ClusterStatus {
            leader: mine.leader,
            term: mine.term,
            nodes,
        }
    }

    /// This node's view of itself and the cluster.
    pub fn node_status(&self) -> NodeStatus {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower if !voters.contains(&self.inner.id) => Role::Learner,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let size = |name: &str| {
            std::fs::metadata(self.inner.config.data_dir.join(name)).map_or(0, |m| m.len())
        };
        NodeStatus {
            id: self.inner.id,
            addr: self.inner.addr.clone(),
            role,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed: m.local_committed.map_or(0, |l| l.index),
            applied: m.last_applied.map_or(0, |l| l.index),
            members,
            state_file_bytes: size(restore::STATE_FILE),
            log_file_bytes: size(restore::LOG_FILE),
            log_fsyncs: self
                .inner
                .log_stats
                .fsyncs
                .load(std::sync::atomic::Ordering::Relaxed),
            log_entries: self
                .inner
                .log_stats
                .entries
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The leader to ask instead, if known.
#[derive(Debug)]
pub(crate) struct Redirect(Option<(u64, String)>);

/// A leader-only answer: `NotLeader` (leadership moved while it ran) becomes a redirect.
fn leader_only<T>(r: Result<T>) -> std::result::Result<Result<T>, Redirect> {
    match r {
        Err(Error::NotLeader { .. }) => Err(Redirect(None)),
        other => Ok(other),
    }
}

fn redirect(id: Option<u64>, node: Option<NodeAddr>) -> Redirect {
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

/// Why a caller may not send `request` itself, if it may not: writes to `_sys`, and the
/// hibernation steps, which only the node's own pause and resume propose (in order, with
/// their records).
fn internal_only(request: &ClientRequest) -> Option<String> {
    let ClientRequest::Write(op) = request else {
        return None;
    };
    let sys = match op {
        Op::SetBucketState { .. }
        | Op::DropBucketData { .. }
        | Op::Restore { .. }
        | Op::Hibernate { .. } => {
            return Some(
                "bucket states change only through pause_bucket and resume_bucket".to_owned(),
            );
        }
        Op::CreateBucket { bucket } | Op::DropBucket { bucket } => bucket == SYS_BUCKET,
        Op::Put { bucket, .. } | Op::Delete { bucket, .. } => bucket == SYS_BUCKET,
        Op::Purge { items } => items.iter().any(|i| i.bucket == SYS_BUCKET),
    };
    sys.then(|| format!("bucket {SYS_BUCKET:?} is reserved for metakv's own records"))
}

impl Kv for Node {
    async fn request(&self, request: ClientRequest) -> Result<ClientReply> {
        self.handle(request, None).await
    }
}
