//! [`Node`]: one metakv node inside an application.
//!
//! The composition root: it builds the node core (`crate::node_core`) and the drivers that
//! take it (GC, hibernation, backups, snapshots), and nothing below imports it.
//!
//! - this file: the node's parts, start (restart, a new cluster, or a join) and shutdown;
//! - `identity`: which node of which cluster a data dir belongs to;
//! - `membership`: joins, promotions, removals, one at a time;
//! - `route`: client requests, answered here or through the leader;
//! - `status`: what this node and the cluster report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use metakv_raft::candidacy::{Candidacy, LeaderContact, stand_promptly};
use metakv_raft::network::Network;
use metakv_raft::restore;
use metakv_raft::secure::{Peer, TransportTls};
use metakv_raft::server::{Caller, ServerConfig, ServerLimits, Services, serve};
use metakv_raft::{LogClosed, LogStats, LogStore, NodeAddr, Raft, SharedStore, StateMachine};
use metakv_store::{Changes, Op, SYS_BUCKET, Scan, Store};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{
    CLIENT_SERVICE, ChangesPage, ClientReply, ClientRequest, ClusterStatus, Consistency, GcStatus,
    Kv, Member, MemberReport, NodeCheck, NodeCompacted, NodeStatus, Role, ScanPage,
};
use crate::backup::Backups;
use crate::error::{Error, Result};
use crate::gc::{Gc, GcState};
use crate::hibernate::{Hibernation, HibernationState};
use crate::node_core::{Core, DRIVER_TICK, Redirect, blocking_err, redirect};
use crate::pool::{Pool, unavailable};
use crate::sync::lock;
use crate::tls::NodeTls;

mod access;
mod authorize;
mod enroll;
mod identity;
mod membership;
mod route;
mod status;

pub use crate::config::NodeConfig;
use authorize::Acting;
pub use enroll::TOKEN_TTL_MAX;
pub use identity::{IDENTITY_FILE, Identity, IdentityError};
use route::leader_only;
pub use route::{OnBehalfOf, WATCH_WAIT_MS_MAX};

/// A running node. Cloning shares it; [`Node::shutdown`] stops it.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// What the drivers share (id, settings, Raft, the store, the pool).
    core: Arc<Core>,
    /// This node's incarnation (its data dir's, see `identity`).
    incarnation: u64,
    /// The node's certificate and the cluster CA; `None` when it runs insecure.
    tls: Option<NodeTls>,
    /// Denied requests logged per second at most.
    denials: metakv_raft::server::RefusalLog,
    /// Recent callers' users and grants (see `access`).
    access: authorize::AccessCache,
    /// The membership turn: one change at a time on this node (see `membership`).
    membership: tokio::sync::Mutex<()>,
    addr: String,
    /// The address the listener is bound to (differs from `addr` behind an `advertise`).
    listen_addr: String,
    log_stats: Arc<LogStats>,
    log_closed: LogClosed,
    pub(crate) gc: Gc,
    hibernation: Hibernation,
    backups: Backups,
    stop: watch::Sender<bool>,
    /// Why the node stopped by itself (a storage failure), once it has.
    failure: watch::Sender<Option<String>>,
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// The transport's view of the node: its client service.
pub(super) struct NodeServices(Weak<Inner>);

impl Services for NodeServices {
    fn call(
        &self,
        caller: Caller,
        service: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, std::result::Result<Vec<u8>, String>> {
        let inner = self.0.clone();
        Box::pin(async move {
            let node = Node {
                inner: inner.upgrade().ok_or("the node is shutting down")?,
            };
            let from = caller.node;
            if service == metakv_gc::SERVICE {
                if from.is_none() && caller.peer != Peer::Unverified {
                    return Err(format!(
                        "GC agents answer only members, not {}",
                        caller.peer
                    ));
                }
                let request: metakv_gc::AgentRequest = postcard::from_bytes(&payload)
                    .map_err(|e| format!("undecodable GC request: {e}"))?;
                let reply = node.inner.gc.agent_call(request).await;
                return Ok(postcard::to_stdvec(&reply).expect("GC replies encode"));
            }
            if service != CLIENT_SERVICE {
                return Err(format!("no service {service:?} on this node"));
            }
            let request: ClientRequest = postcard::from_bytes(&payload)
                .map_err(|e| format!("undecodable client request: {e}"))?;
            let reply = match node.authorize(&caller, request, &node.inner.denials).await {
                Err(e) => ClientReply::Error(e),
                Ok((request, acting)) => match node.handle(request, from, &acting).await {
                    Ok(reply) => reply,
                    Err(e) => ClientReply::Error(e),
                },
            };
            Ok(postcard::to_stdvec(&reply).expect("client replies encode"))
        })
    }
}

/// Whether `caller`, no user, may send `request`: a member node (forwarding, or asking as a
/// member) anything; a node that is not a member yet only to join as itself; a connection
/// without a certificate or token only to enroll with a join token. In insecure mode
/// everything is allowed. A user's requests are checked against its roles (`access`).
fn permitted(caller: &Caller, request: &ClientRequest) -> Result<()> {
    let allowed = match (&caller.peer, caller.node) {
        (Peer::Unverified | Peer::User(_), _) | (Peer::Node(_), Some(_)) => true,
        (Peer::Node(id), None) => match request {
            ClientRequest::Join { id: joining, .. } => joining == id,
            ClientRequest::Status => true,
            _ => false,
        },
        (Peer::Anonymous, _) => matches!(request, ClientRequest::Enroll { .. }),
    };
    if allowed {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "not authorised: {} may not send {}",
        caller.peer,
        request.name()
    )))
}

/// Pending connections the listener queues before the kernel drops SYNs (capped by
/// `net.core.somaxconn`). The standard library's 128 overflowed when 256 clients dialed at once,
/// and each dropped SYN cost a client a 1 s retransmit (`ListenOverflows` in `nstat`).
pub(super) const LISTEN_BACKLOG: u32 = 1024;

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
        id = inner.core.id,
        error = %why,
        "node stopped after a storage failure; nothing it acknowledged is lost: remove the \
         cause (free disk space) and restart it on its files"
    );
    let _ = inner.failure.send(Some(why));
    let _ = inner.stop.send(true);
}

/// A failure of the node's files or of Raft's start, saying what the node was doing.
fn io(doing: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Storage(format!("{doing}: {e}"))
}

/// Opens (or creates) a node's files: the state store, the Raft log, the snapshot dir.
async fn open_files(config: &NodeConfig) -> Result<(SharedStore, LogStore, StateMachine)> {
    metakv_store::private::create_dir_all(&config.data_dir)
        .map_err(|e| io("creating the data dir", &e))?;
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
    Ok((store, log, sm))
}

/// Raft's settings: the node's timings and the choices metakv's promises rest on.
fn raft_config(config: &NodeConfig) -> Result<openraft::Config> {
    openraft::Config {
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
    .map_err(|e| Error::invalid(format!("raft configuration: {e}")))
}

/// Starts the node's background tasks (the storage watchdog, prompt candidacy, the GC,
/// snapshot and hibernation drivers) and the listener, all stopped by `stopped`.
fn spawn_tasks(
    inner: &Arc<Inner>,
    listener: TcpListener,
    tls: Option<TransportTls>,
    gc_ctl: tokio::sync::mpsc::UnboundedReceiver<crate::gc::Ctl>,
    stopped: watch::Receiver<bool>,
) {
    let core = &inner.core;
    let config = &core.config;
    let raft = &core.raft;
    tokio::spawn(stop_on_failure(
        Arc::downgrade(inner),
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
        limits: ServerLimits {
            connections_max: config.connections_max,
            idle_timeout: config.idle_timeout,
            // A client's request holds at most one value, its key and bucket name.
            client_frame_bytes_max: config.value_bytes_max + (64 << 10),
            ..ServerLimits::default()
        },
        tls,
    });
    tokio::spawn(crate::gc::drive(
        Arc::downgrade(core),
        Arc::clone(&inner.gc.state),
        gc_ctl,
        stopped.clone(),
    ));
    tokio::spawn(crate::snapshots::drive(
        Arc::downgrade(core),
        config.snapshot_logs_since_last.max(1),
        stopped.clone(),
    ));
    tokio::spawn(crate::hibernate::drive(
        Arc::downgrade(core),
        Arc::clone(&inner.hibernation.state),
        stopped.clone(),
    ));
    tokio::spawn(membership::drive(Arc::downgrade(inner), stopped.clone()));
    let services = Arc::new(NodeServices(Arc::downgrade(inner)));
    let task = tokio::spawn(serve(
        listener,
        raft.clone(),
        server_config,
        services,
        stopped,
    ));
    *lock(&inner.server) = Some(task);
}

impl Node {
    /// Opens the node's files, starts Raft and the listener, and then: restarts on its files,
    /// or initializes a single-node cluster (new node, no `join`), or joins `join`.
    ///
    /// A data dir belongs to the node that first started on it: another `id` or `cluster_id`
    /// is refused (`Rejected`, kind `Invalid`, naming both) before anything in it is opened
    /// for writing.
    ///
    /// ```no_run
    /// # async fn run() -> metakv::Result<()> {
    /// use metakv::{Kv, Node, NodeConfig};
    /// let node = Node::start(NodeConfig::new(1, "data/node1", "127.0.0.1:7379")).await?;
    /// node.create_bucket_if_absent("users").await?;
    /// node.shutdown().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - `Rejected` (kind `Invalid`): a setting out of range ([`NodeConfig::validate`]), a
    ///   data dir of another node or cluster, a dir that ran without TLS started with it, a
    ///   join token refused by the cluster (expired, used, revoked, of another CA).
    /// - `Unavailable`: the address cannot be bound, or the member to join did not answer
    ///   within six `request_timeout`s.
    /// - `Storage`: the files cannot be opened or created, or a restore into the dir was cut
    ///   short.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        config
            .validate()
            .map_err(|e| Error::invalid(format!("configuration: {e}")))?;
        if config.data_dir.join(restore::PARTIAL).exists() {
            return Err(Error::Storage(format!(
                "{} holds an unfinished restore ({}): remove the dir and restore again",
                config.data_dir.display(),
                restore::PARTIAL
            )));
        }
        let identity = {
            let (dir, id, cluster) = (
                config.data_dir.clone(),
                config.id,
                config.cluster_id.clone(),
            );
            tokio::task::spawn_blocking(move || identity::claim(&dir, id, &cluster))
                .await
                .map_err(blocking_err)?
                .map_err(|e| match e.is_mismatch() {
                    true => Error::invalid(e.to_string()),
                    false => Error::Storage(e.to_string()),
                })?
        };
        let fresh = enroll::is_new(&config.data_dir);
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
        // Before the files open: a node refused here (a used token) holds nothing open.
        let (material, transport) = enroll::prepare(&config, fresh, &addr).await?.unzip();
        let (store, log, sm) = open_files(&config).await?;
        let sys_changes = sm.sys_changes();
        let raft_config = raft_config(&config)?;
        let network = Network {
            cluster_id: config.cluster_id.clone(),
            node_id: config.id,
            append_timeout_min: Duration::from_millis(config.election_timeout_min_ms),
            tls: transport.clone(),
        };
        let log_stats = log.stats();
        let log_closed = log.closed();
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| io("starting raft", &e))?;
        let (stop, stopped) = watch::channel(false);
        let (gc_state, gc_ctl) = GcState::new(config.gc.clone());
        let core = Arc::new(Core {
            id: config.id,
            pool: Pool::new(
                config.cluster_id.clone(),
                Some(config.id),
                transport.clone(),
            ),
            config: config.clone(),
            raft: raft.clone(),
            store,
        });
        let inner = Arc::new(Inner {
            gc: Gc {
                core: Arc::clone(&core),
                state: Arc::new(gc_state),
            },
            hibernation: Hibernation {
                core: Arc::clone(&core),
                state: Arc::new(HibernationState::new(config.hibernation.clone())),
            },
            backups: Backups::new(config.data_dir.join(crate::backup::DIR)),
            core,
            incarnation: identity.incarnation,
            tls: material,
            denials: Default::default(),
            access: authorize::AccessCache::new(sys_changes),
            membership: tokio::sync::Mutex::new(()),
            addr: addr.clone(),
            listen_addr,
            log_stats,
            log_closed,
            stop,
            failure: watch::channel(None).0,
            server: std::sync::Mutex::new(None),
        });
        spawn_tasks(&inner, listener, transport, gc_ctl, stopped);
        let node = Node { inner };
        node.come_up(&raft).await?;
        enroll::started(&config.data_dir);
        Ok(node)
    }

    /// Restarts on its files, or initializes a single-node cluster (a new node, no `join`),
    /// or joins `join`.
    async fn come_up(&self, raft: &Raft) -> Result<()> {
        let config = &self.inner.core.config;
        let addr = &self.inner.addr;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| io("reading raft state", &e))?;
        match (&config.join, initialized) {
            (Some(seed), true) if self.learner_here().await? => {
                // Its join was under way when it stopped (or its answer was lost): asking
                // again with the same incarnation finishes it, or answers that it is done.
                tracing::info!(id = config.id, %addr, %seed, "restarted as a learner; joining again");
                if let Err(e) = self.join_through(seed).await {
                    self.shutdown().await;
                    return Err(e);
                }
                tracing::info!(id = config.id, %addr, %seed, "joined the cluster");
            }
            (_, true) => {
                tracing::info!(id = config.id, %addr, "node restarted on its files");
                self.record_own_address().await?;
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
                if let Err(e) = self.join_through(seed).await {
                    self.shutdown().await;
                    return Err(e);
                }
                tracing::info!(id = config.id, %addr, %seed, "joined the cluster");
            }
        }
        Ok(())
    }

    /// A node alone in its cluster whose membership records another address than the one it
    /// serves on (restored from a backup, or restarted elsewhere) records its own, once it
    /// leads: nodes that join later are sent to the recorded address.
    pub(super) async fn record_own_address(&self) -> Result<()> {
        let (id, addr) = (self.inner.core.id, self.inner.addr.clone());
        let unavailable = |e: &dyn std::fmt::Display| {
            Error::Unavailable(format!("recording this node's address {addr}: {e}"))
        };
        // The state Raft loaded (its metrics may not show it yet).
        let recorded = self
            .inner
            .core
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
            .core
            .raft
            .wait(Some(self.inner.core.config.request_timeout))
            .current_leader(id, "leading alone")
            .await
            .map_err(|e| unavailable(&e))?;
        self.set_own_address(addr.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        let was = recorded.as_deref().unwrap_or("none");
        tracing::info!(id, %addr, was, "recorded this node's address");
        Ok(())
    }

    /// Whether this node's own membership (as loaded from its files) has it as a learner.
    async fn learner_here(&self) -> Result<bool> {
        let id = self.inner.core.id;
        self.inner
            .core
            .raft
            .with_raft_state(move |st| {
                let membership = st.membership_state.effective().membership();
                membership.get_node(&id).is_some() && !membership.voter_ids().any(|v| v == id)
            })
            .await
            .map_err(|e| io("reading raft state", &e))
    }

    pub(super) async fn join_through(&self, seed: &str) -> Result<()> {
        let request = ClientRequest::Join {
            id: self.inner.core.id,
            addr: self.inner.addr.clone(),
            incarnation: Some(self.inner.incarnation),
        };
        let deadline = tokio::time::Instant::now() + self.inner.core.config.request_timeout * 6;
        // The joiner is no member yet: it asks as a client does, so that a follower it dials
        // passes the request on to the leader (a member's request is never forwarded twice).
        let as_client = Pool::new(
            self.inner.core.config.cluster_id.clone(),
            None,
            self.inner.core.pool.tls().cloned(),
        );
        loop {
            let outcome = as_client
                .client_call(seed, &request, self.inner.core.config.request_timeout * 6)
                .await;
            match outcome {
                Ok(ClientReply::Done) => return Ok(()),
                Ok(ClientReply::Error(
                    Error::Unavailable(_) | Error::NotLeader { .. } | Error::Busy(_),
                ))
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

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.core.id
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

    /// The openraft handle, for what the facade does not wrap (metrics, for instance).
    pub fn raft(&self) -> &Raft {
        &self.inner.core.raft
    }

    /// The node's store: its local copy, as it has applied the log. Reading it directly is a
    /// [`Consistency::Local`](crate::Consistency::Local) read; writing it directly would
    /// bypass replication, so write through [`Kv`](crate::Kv).
    pub fn store(&self) -> &SharedStore {
        &self.inner.core.store
    }

    /// Stops Raft and the listener, and waits (10 s at most) until the files are no longer in
    /// use; they are closed when the last clone is dropped. Requests still running fail with
    /// `Unavailable`.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        if let Err(e) = self.inner.core.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let task = lock(&self.inner.server).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let store = Arc::clone(&self.inner.core.store);
        let _ = tokio::task::spawn_blocking(move || store.read().map(|s| s.sync().ok()).ok()).await;
        // Replication tasks and blocking calls still running hold the files open; wait (bounded)
        // so that a restart in the same process finds them unlocked. The state file closes when
        // the last `Node` handle is dropped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(self.inner.log_closed.is_closed() && Arc::strong_count(&self.inner.core.store) == 1)
        {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("files still in use 10 s after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
