//! The listening side of the transport: one task per connection.
//!
//! A connection must finish its TLS handshake (unless the node is insecure) and say a
//! [`Hello`] with this cluster's id and protocol version within [`HANDSHAKE_TIMEOUT`], or it is
//! refused with the reason and closed. A connection speaks for a node only if its hello names
//! one and, under TLS, its certificate names the same node. Its requests are checked against
//! this node's membership on every request (`admitted`): votes, leadership transfers and
//! service calls only from a member; entries and snapshots from any node but one seen to be
//! removed (the leader may be a node this node has not heard of yet). A removed member is
//! refused from the moment its removal is in the log here, though its certificate has not
//! expired. A frame that is oversized, damaged or
//! undecodable gets a `Malformed` reply, is logged, and closes that connection only.
//!
//! What a dialer can make the node hold is bounded ([`ServerLimits`]): open connections (at
//! the limit a new one closes one still in its handshake or idle for a second, so idle
//! connections cannot lock clients out), the time a connection may sit idle, a client's frame size, an incoming snapshot's size
//! (its announced length, which must fit the spool dir's free space), and the lines refusals
//! write to the log per second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use openraft::async_runtime::WatchReceiver;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use openraft::raft::AppendEntriesResponse;

use crate::candidacy::LeaderContact;
use crate::secure::{Peer, Stream, TransportTls};
use crate::state_machine::SnapshotFile;
use crate::types::{Raft, SnapshotMeta, Vote};
use crate::wire::{
    FRAME_BYTES_MAX, Hello, HelloReply, Reply, Request, read_frame_max, write_frame,
};

/// How long a new connection may take to say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals logged per second at most; the rest are counted and the count logged.
pub const REFUSAL_LINES_PER_SECOND_MAX: u32 = 10;

/// What the listener bounds, whoever dials it.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Open connections at most. At the limit a new connection closes one that has not
    /// finished its handshake, or one idle for `EVICT_IDLE_MIN` (a second) or more; else it is refused.
    pub connections_max: usize,
    /// A connection that sends no request for this long is closed. A request under way (a
    /// watch's long poll) is not idle.
    pub idle_timeout: Duration,
    /// Longest frame from a connection that did not say it is a node: a client's request
    /// holds at most one value.
    pub client_frame_bytes_max: usize,
    /// Free bytes the spool dir keeps after an incoming snapshot of the announced length.
    pub spool_reserve_bytes: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            connections_max: 512,
            idle_timeout: Duration::from_secs(300),
            client_frame_bytes_max: metakv_store::VALUE_BYTES_MAX_DEFAULT + (64 << 10),
            spool_reserve_bytes: 64 << 20,
        }
    }
}

/// Free bytes of the filesystem that holds `dir` (`None` if it cannot be read).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Log lines for refusals, at most [`REFUSAL_LINES_PER_SECOND_MAX`] a second: a dialer that
/// hammers the port cannot fill the disk with the node's log.
#[derive(Debug)]
pub struct RefusalLog {
    state: Mutex<(Instant, u32, u64)>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }
}

impl RefusalLog {
    /// Whether a refusal may be logged now. The first line of a new second first says how
    /// many were left out in the one before.
    pub fn allow(&self) -> bool {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, lines, dropped) = &mut *st;
        if start.elapsed() >= Duration::from_secs(1) {
            if *dropped > 0 {
                tracing::warn!(
                    refusals = *dropped,
                    "refusals not logged in the last second"
                );
            }
            *start = Instant::now();
            *lines = 0;
            *dropped = 0;
        }
        if *lines < REFUSAL_LINES_PER_SECOND_MAX {
            *lines += 1;
            true
        } else {
            *dropped += 1;
            false
        }
    }
}

/// An open connection: whether it has finished its handshake, when it went idle (`None`: a
/// request is under way), and how to close it.
#[derive(Debug)]
struct Slot {
    handshaken: bool,
    idle_since: Option<Instant>,
    close: Arc<tokio::sync::Notify>,
}

/// How long a connection must have been idle before a new one may close it. A client may be
/// sending a request on a connection that has just gone idle; closing it would leave a
/// write's outcome unknown.
const EVICT_IDLE_MIN: Duration = Duration::from_secs(1);

/// The open connections, by id.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Slot>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes room for connection `id` under `max`, closing in this order the one that has
    /// waited longest without finishing its handshake (nothing was sent on it), or the one
    /// idle longest, if for at least [`EVICT_IDLE_MIN`]. `None` if neither exists: the new
    /// connection is refused (it has sent nothing either).
    fn admit(&self, id: u64, max: usize) -> Option<Arc<tokio::sync::Notify>> {
        let mut conns = self.lock();
        if conns.len() >= max.max(1) {
            let now = Instant::now();
            let in_handshake = conns
                .iter()
                .filter(|(_, s)| !s.handshaken)
                .filter_map(|(id, s)| s.idle_since.map(|t| (t, *id)))
                .min();
            let idle = || {
                conns
                    .iter()
                    .filter_map(|(id, s)| s.idle_since.map(|t| (t, *id)))
                    .filter(|(t, _)| now.duration_since(*t) >= EVICT_IDLE_MIN)
                    .min()
            };
            let (_, victim) = in_handshake.or_else(idle)?;
            if let Some(slot) = conns.remove(&victim) {
                slot.close.notify_one();
            }
        }
        let close = Arc::new(tokio::sync::Notify::new());
        conns.insert(
            id,
            Slot {
                handshaken: false,
                idle_since: Some(Instant::now()),
                close: Arc::clone(&close),
            },
        );
        Some(close)
    }

    fn handshaken(&self, id: u64) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.handshaken = true;
            slot.idle_since = Some(Instant::now());
        }
    }

    fn set_idle(&self, id: u64, idle: bool) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.idle_since = idle.then(Instant::now);
        }
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Who sent a request, as far as the transport can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The node this connection speaks for: named in its hello, and (under TLS) the node its
    /// certificate names, a member here when the request came. `None` for a client.
    pub node: Option<u64>,
    /// Who its certificate names ([`Peer::Unverified`] in insecure mode).
    pub peer: Peer,
    /// The user token its hello carried, unchecked.
    pub token: Option<String>,
}

/// The node's named services (client API, GC and hibernation agents, admin), called through
/// [`Request::Service`].
pub trait Services: Send + Sync + 'static {
    fn call(
        &self,
        caller: Caller,
        service: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// What the listener needs to know of its node.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub cluster_id: String,
    pub node_id: u64,
    /// Where incoming snapshots are spooled before they are installed.
    pub spool_dir: PathBuf,
    /// Touched after every AppendEntries a leader sent that this node's vote accepted.
    pub leader_contact: Arc<LeaderContact>,
    pub limits: ServerLimits,
    /// TLS for every connection; `None` in insecure mode (plain TCP, identities as claimed).
    pub tls: Option<TransportTls>,
}

/// Accepts connections until `shutdown` turns true; each connection ends then too.
pub async fn serve(
    listener: TcpListener,
    raft: Raft,
    config: Arc<ServerConfig>,
    services: Arc<dyn Services>,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn_ids = Arc::new(AtomicU64::new(0));
    let registry = Arc::new(Registry::default());
    let refusals = Arc::new(RefusalLog::default());
    let members = Arc::new(Members::default());
    tokio::spawn(Arc::clone(&members).follow(raft.clone(), shutdown.clone()));
    let stopper = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let id = conn_ids.fetch_add(1, Ordering::Relaxed);
                    let Some(close) = registry.admit(id, config.limits.connections_max) else {
                        if refusals.allow() {
                            tracing::warn!(%peer, max = config.limits.connections_max, "every connection is busy; refusing a new one");
                        }
                        continue;
                    };
                    let (raft, config, services, mut stop) = (raft.clone(), Arc::clone(&config), Arc::clone(&services), stopper.clone());
                    let (registry, refusals, members) = (Arc::clone(&registry), Arc::clone(&refusals), Arc::clone(&members));
                    tokio::spawn(async move {
                        let conn = Conn { id, registry: Arc::clone(&registry), refusals, members };
                        tokio::select! {
                            _ = connection(tcp, conn, raft, config, services) => {}
                            _ = close.notified() => tracing::debug!(%peer, "closed to make room for a new connection"),
                            _ = async { let _ = stop.wait_for(|s| *s).await; } => {}
                        }
                        registry.remove(id);
                        tracing::debug!(%peer, "connection closed");
                    });
                }
                Err(e) => {
                    if refusals.allow() {
                        tracing::warn!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

/// One connection's place among the open ones.
struct Conn {
    id: u64,
    registry: Arc<Registry>,
    refusals: Arc<RefusalLog>,
    members: Arc<Members>,
}

/// Where a node stands in this node's view of the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// In the latest membership in this node's log (joint configs and learners included).
    Member,
    /// Was in a membership this node has seen, and is not any more.
    Removed,
    /// Never seen here: a node added by entries this node has not received yet, or a stranger.
    Unknown,
    /// This node has no membership yet (it is being added).
    NoMembership,
}

/// The node ids this node has seen in its membership since it started, to tell a removed
/// member from one it has not heard of yet.
#[derive(Debug, Default)]
struct Members {
    seen: Mutex<std::collections::BTreeSet<u64>>,
}

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u64>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(raft: &Raft) -> Vec<u64> {
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Records every id of the current membership as seen, until `stop`.
    async fn follow(self: Arc<Self>, raft: Raft, mut stop: watch::Receiver<bool>) {
        let mut metrics = raft.metrics();
        loop {
            self.lock().extend(Members::current(&raft));
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    fn standing(&self, raft: &Raft, id: u64) -> Standing {
        let current = Members::current(raft);
        let mut seen = self.lock();
        seen.extend(current.iter().copied());
        if current.is_empty() {
            Standing::NoMembership
        } else if current.contains(&id) {
            Standing::Member
        } else if seen.contains(&id) {
            Standing::Removed
        } else {
            Standing::Unknown
        }
    }
}

/// Whether a request from node `id`, standing so here, is taken. Entries and snapshots come
/// from the leader, which a node that is behind may not know yet: only a node seen leaving
/// the membership is refused. A vote, a leadership transfer and a service call must come from
/// a member (a new voter wins its election with the votes of the majority that committed
/// its addition, which know it).
fn admitted(request: &Request, standing: Standing) -> bool {
    match request {
        Request::AppendEntries(_)
        | Request::SnapshotBegin { .. }
        | Request::SnapshotChunk(_)
        | Request::SnapshotDone => standing != Standing::Removed,
        Request::Vote(_)
        | Request::PreVote(_)
        | Request::TransferLeader(_)
        | Request::Service { .. } => {
            matches!(standing, Standing::Member | Standing::NoMembership)
        }
    }
}

/// A snapshot being received on one connection.
struct Incoming {
    vote: Vote,
    meta: SnapshotMeta,
    len: u64,
    got: u64,
    path: PathBuf,
    file: tokio::fs::File,
}

async fn connection(
    tcp: TcpStream,
    conn: Conn,
    raft: Raft,
    config: Arc<ServerConfig>,
    services: Arc<dyn Services>,
) {
    let started = tokio::time::Instant::now();
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    tcp.set_nodelay(true).ok();
    let refused = || conn.refusals.allow();
    let limits = &config.limits;
    let looks_tls =
        tokio::time::timeout_at(started + HANDSHAKE_TIMEOUT, starts_like_tls(&tcp)).await;
    let (stream, certified) = match (&config.tls, looks_tls) {
        (_, Err(_)) => {
            if refused() {
                tracing::warn!(%peer, "nothing sent within {HANDSHAKE_TIMEOUT:?}; closing");
            }
            return;
        }
        (None, Ok(true)) => {
            if refused() {
                tracing::warn!(%peer, "a TLS client dialed this insecure node; closing");
            }
            return;
        }
        (None, Ok(false)) => (Stream::Plain(tcp), Peer::Unverified),
        (Some(_), Ok(false)) => {
            if refused() {
                tracing::warn!(%peer, "a plaintext connection to a TLS node; refusing");
            }
            let mut stream = BufStream::new(Stream::Plain(tcp));
            let reason = "this node takes TLS connections only: a client needs the cluster's \
                          credentials (--creds), a node a join token (--token)"
                .to_owned();
            let _ = write_frame(&mut stream, &HelloReply::Refused { reason }).await;
            return;
        }
        (Some(tls), Ok(true)) => {
            match tokio::time::timeout_at(started + HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(e)) => {
                    if refused() {
                        tracing::warn!(%peer, error = %e, "TLS handshake refused; closing");
                    }
                    return;
                }
                Err(_) => {
                    if refused() {
                        tracing::warn!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}; closing");
                    }
                    return;
                }
            }
        }
    };
    let mut stream = BufStream::new(stream);
    // Before the hello, only a client's frame size: a hello is small.
    let hello = match tokio::time::timeout_at(
        started + HANDSHAKE_TIMEOUT,
        read_frame_max::<_, Hello>(&mut stream, limits.client_frame_bytes_max),
    )
    .await
    {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            if refused() {
                tracing::warn!(%peer, error = %e, "bad handshake frame; closing");
            }
            let _ = write_frame(
                &mut stream,
                &HelloReply::Refused {
                    reason: format!("bad handshake: {e}"),
                },
            )
            .await;
            return;
        }
        Err(_) => {
            if refused() {
                tracing::warn!(%peer, "no handshake within {HANDSHAKE_TIMEOUT:?}; closing");
            }
            return;
        }
    };
    let admitted = hello
        .admit(&config.cluster_id)
        .and_then(|()| match (hello.from, &certified) {
            (Some(id), Peer::Node(cert)) if *cert != id => Err(format!(
                "the connection says it is node {id}, its certificate is of node {cert}"
            )),
            (Some(id), Peer::User(_) | Peer::Anonymous) => Err(format!(
                "the connection says it is node {id}, its certificate is of {certified}"
            )),
            _ => Ok(()),
        });
    if let Err(reason) = admitted {
        if refused() {
            tracing::warn!(%peer, %reason, "handshake refused");
        }
        let _ = write_frame(&mut stream, &HelloReply::Refused { reason }).await;
        return;
    }
    if write_frame(
        &mut stream,
        &HelloReply::Welcome {
            node_id: config.node_id,
        },
    )
    .await
    .is_err()
    {
        return;
    }
    conn.registry.handshaken(conn.id);
    let frame_max = match hello.from {
        Some(_) => FRAME_BYTES_MAX,
        None => limits.client_frame_bytes_max,
    };
    let mut incoming: Option<Incoming> = None;
    loop {
        let next = tokio::time::timeout(
            limits.idle_timeout,
            read_frame_max::<_, Request>(&mut stream, frame_max),
        )
        .await;
        let request = match next {
            Err(_) => {
                tracing::debug!(%peer, "idle for {:?}; closing", limits.idle_timeout);
                break;
            }
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                if refused() {
                    tracing::warn!(%peer, error = %e, "malformed frame; closing the connection");
                }
                let _ = write_frame(&mut stream, &Reply::Malformed(e.to_string())).await;
                break;
            }
        };
        conn.registry.set_idle(conn.id, false);
        let caller = Caller {
            node: hello.from,
            peer: certified.clone(),
            token: hello.token.clone(),
        };
        let (reply, close) = match dispatch(
            request,
            caller,
            &conn,
            &raft,
            &config,
            services.as_ref(),
            &mut incoming,
        )
        .await
        {
            Ok(reply) => (reply, false),
            Err(reason) => {
                if refused() {
                    tracing::warn!(%peer, %reason, "refused request; closing the connection");
                }
                (Reply::Malformed(reason), true)
            }
        };
        if write_frame(&mut stream, &reply).await.is_err() || close {
            break;
        }
        conn.registry.set_idle(conn.id, true);
    }
    let _ = stream.shutdown().await;
    if let Some(inc) = incoming {
        drop(inc.file);
        let _ = tokio::fs::remove_file(&inc.path).await;
    }
}

/// Answers one request; `Err` for a request that breaks the protocol (the connection closes).
async fn dispatch(
    request: Request,
    caller: Caller,
    conn: &Conn,
    raft: &Raft,
    config: &ServerConfig,
    services: &dyn Services,
    incoming: &mut Option<Incoming>,
) -> Result<Reply, String> {
    let is_raft = !matches!(request, Request::Service { .. });
    match caller.node {
        None if is_raft => return Err("raft requests are only accepted from nodes".into()),
        Some(id) => match conn.members.standing(raft, id) {
            standing if admitted(&request, standing) => {}
            Standing::Removed => {
                return Err(format!("node {id} was removed from this node's cluster"));
            }
            _ => return Err(format!("node {id} is not a member of this node's cluster")),
        },
        _ => {}
    }
    let failed = |e: &dyn std::fmt::Display| Reply::Failed(e.to_string());
    Ok(match request {
        Request::AppendEntries(r) => match raft.append_entries(r).await {
            Ok(reply) => {
                if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
                    config.leader_contact.touch();
                }
                Reply::AppendEntries(reply)
            }
            Err(e) => failed(&e),
        },
        Request::Vote(r) => raft.vote(r).await.map_or_else(|e| failed(&e), Reply::Vote),
        Request::PreVote(r) => raft
            .pre_vote(r)
            .await
            .map_or_else(|e| failed(&e), Reply::Vote),
        Request::TransferLeader(r) => raft
            .handle_transfer_leader(r)
            .await
            .map_or_else(|e| failed(&e), Reply::TransferLeader),
        Request::SnapshotBegin { vote, meta, len } => {
            let path = config.spool_dir.join(format!("incoming-{}.tmp", conn.id));
            let (dir, at, reserve) = (
                config.spool_dir.clone(),
                path.clone(),
                config.limits.spool_reserve_bytes,
            );
            // The announced length is the most the transfer may send (chunks beyond it are
            // refused), so it must fit the disk before anything is written.
            let file = tokio::task::spawn_blocking(move || {
                metakv_store::private::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let free = free_bytes(&dir).unwrap_or(0);
                if len.saturating_add(reserve) > free {
                    return Err(format!(
                        "a snapshot of {len} bytes does not fit: {free} bytes free, {reserve} \
                         kept in reserve"
                    ));
                }
                metakv_store::private::create_file(&at).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("spooling a snapshot: {e}"))?;
            let file = tokio::fs::File::from_std(file);
            *incoming = Some(Incoming {
                vote,
                meta,
                len,
                got: 0,
                path,
                file,
            });
            Reply::SnapshotChunkAck
        }
        Request::SnapshotChunk(bytes) => {
            let inc = incoming
                .as_mut()
                .ok_or("a snapshot chunk without a snapshot")?;
            inc.got += bytes.len() as u64;
            if inc.got > inc.len {
                return Err(format!(
                    "snapshot chunks exceed the announced {} bytes",
                    inc.len
                ));
            }
            inc.file
                .write_all(&bytes)
                .await
                .map_err(|e| format!("spooling a snapshot: {e}"))?;
            Reply::SnapshotChunkAck
        }
        Request::SnapshotDone => {
            let inc = incoming.take().ok_or("a snapshot end without a snapshot")?;
            if inc.got != inc.len {
                return Err(format!(
                    "snapshot of {} bytes announced, {} received",
                    inc.len, inc.got
                ));
            }
            inc.file.sync_all().await.map_err(|e| e.to_string())?;
            let file = SnapshotFile::open(&inc.path).map_err(|e| e.to_string())?;
            let result = raft
                .install_full_snapshot(
                    inc.vote,
                    openraft::Snapshot {
                        meta: inc.meta,
                        snapshot: file,
                    },
                )
                .await;
            let _ = tokio::fs::remove_file(&inc.path).await;
            result.map_or_else(|e| failed(&e), Reply::Snapshot)
        }
        Request::Service { service, payload } => services
            .call(caller, service, payload)
            .await
            .map_or_else(Reply::Failed, Reply::Service),
    })
}

/// Whether a new connection's first bytes are a TLS handshake record (type 22, version 3.x);
/// a metakv frame starts with its length, little-endian, whose second byte is 0 for a hello.
/// Reads nothing off the connection. A connection closed before two bytes is not TLS.
async fn starts_like_tls(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 2];
    loop {
        match tcp.peek(&mut first).await {
            Ok(2) | Ok(0) | Err(_) => break,
            // One byte so far: wait for the second.
            Ok(_) => {
                if tcp.readable().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    first == [0x16, 0x03]
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn refusals_are_logged_at_a_bounded_rate() {
        let log = RefusalLog::default();
        let allowed = (0..1000).filter(|_| log.allow()).count();
        assert_eq!(allowed, REFUSAL_LINES_PER_SECOND_MAX as usize);
    }

    #[test]
    fn a_full_registry_closes_a_handshake_first_then_a_long_idle_one_else_refuses() {
        let registry = Registry::default();
        let first = registry.admit(1, 2).unwrap();
        let second = registry.admit(2, 2).unwrap();
        registry.handshaken(2);
        // Connection 1 never finished its handshake: it makes room for 3.
        let _third = registry.admit(3, 2).unwrap();
        assert!(
            first.notified().now_or_never().is_some(),
            "1 was not closed"
        );
        registry.handshaken(3);
        // 2 and 3 are handshaken and idle for less than EVICT_IDLE_MIN: 4 is refused.
        assert!(registry.admit(4, 2).is_none());
        // Once 2 has been idle long enough, it makes room; a busy one never does.
        registry.set_idle(3, false);
        registry.lock().get_mut(&2).unwrap().idle_since =
            Some(Instant::now() - EVICT_IDLE_MIN - Duration::from_millis(1));
        assert!(registry.admit(5, 2).is_some());
        assert!(
            second.notified().now_or_never().is_some(),
            "2 was not closed"
        );
        assert_eq!(
            registry.lock().keys().copied().collect::<Vec<_>>(),
            vec![3, 5]
        );
        registry.handshaken(5);
        registry.set_idle(5, false);
        assert!(
            registry.admit(6, 2).is_none(),
            "a busy connection was closed"
        );
    }
}
