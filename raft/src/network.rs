//! The dialing side of the transport: [`Conn`] (one connection, one call at a time) and
//! openraft's network factory over it.

use std::future::Future;
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio::io::{AsyncReadExt, BufStream};
use tokio::net::TcpStream;

use crate::secure::{Peer, Stream, TransportTls};

use crate::state_machine::SnapshotFile;
use crate::types::{NodeAddr, TypeConfig, Vote};
use crate::wire::{
    Hello, HelloReply, PROTOCOL_VERSION, Reply, Request, SNAPSHOT_CHUNK_BYTES, WireError,
    read_frame, write_frame,
};

/// How long a dial and its handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} refused the connection: {reason}")]
    Refused { addr: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the peer")]
    Closed,
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("the peer answered: {0}")]
    Remote(String),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl CallError {
    /// True when the call may not have reached the peer at all (safe to retry elsewhere).
    pub fn is_connect(&self) -> bool {
        matches!(self, CallError::Connect { .. } | CallError::Refused { .. })
    }
}

/// One handshaken connection. Calls are sequential; a failed call leaves the connection in an
/// unknown state, so callers drop it.
#[derive(Debug)]
pub struct Conn {
    stream: BufStream<Stream>,
    /// The node at the other end: under TLS, the one its certificate names.
    pub node_id: u64,
}

impl Conn {
    /// Dials `addr` and says hello; the peer refuses a wrong cluster id or protocol version.
    /// With `tls`, the node must present a certificate that `tls` trusts, and the id it says
    /// in its welcome must be the one its certificate names.
    pub async fn dial(
        addr: &str,
        cluster_id: &str,
        from: Option<u64>,
        tls: Option<&TransportTls>,
    ) -> Result<Conn, CallError> {
        Conn::dial_as(addr, cluster_id, from, tls, None).await
    }

    /// [`Conn::dial`] for a client that acts for the user of `token`.
    pub async fn dial_as(
        addr: &str,
        cluster_id: &str,
        from: Option<u64>,
        tls: Option<&TransportTls>,
        token: Option<&str>,
    ) -> Result<Conn, CallError> {
        let connect = |reason: String| CallError::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let fut = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| connect(e.to_string()))?;
            tcp.set_nodelay(true).map_err(|e| connect(e.to_string()))?;
            let (stream, certified) = match tls {
                None => (Stream::Plain(tcp), None),
                Some(tls) => {
                    let (stream, peer) = tls
                        .connect(tcp)
                        .await
                        // The handshake failed: a certificate was refused (either way),
                        // or the peer does not speak TLS. Asking again will not help.
                        .map_err(|e| CallError::Refused {
                            addr: addr.to_owned(),
                            reason: format!("TLS: {e}"),
                        })?;
                    (stream, Some(peer))
                }
            };
            let mut stream = BufStream::new(stream);
            let hello = Hello {
                cluster_id: cluster_id.to_owned(),
                from,
                protocol: PROTOCOL_VERSION,
                token: token.map(str::to_owned),
            };
            write_frame(&mut stream, &hello)
                .await
                .map_err(|e| connect(e.to_string()))?;
            match read_frame::<_, HelloReply>(&mut stream).await {
                Ok(Some(HelloReply::Welcome { node_id })) => match certified {
                    Some(peer) if peer != Peer::Node(node_id) => Err(CallError::Refused {
                        addr: addr.to_owned(),
                        reason: format!(
                            "it says it is node {node_id}, its certificate is of {peer}"
                        ),
                    }),
                    _ => Ok(Conn { stream, node_id }),
                },
                Ok(Some(HelloReply::Refused { reason })) => Err(CallError::Refused {
                    addr: addr.to_owned(),
                    reason,
                }),
                Ok(None) => Err(connect("closed during the handshake".into())),
                Err(e) => Err(connect(e.to_string())),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| connect(format!("no handshake within {CONNECT_TIMEOUT:?}")))?
    }

    /// True when the peer closed this idle connection (or sent something unasked): it must not
    /// be used. Checked before a request is sent, so a request is never sent on a connection
    /// that is already dead, and a request that failed after sending is never sent again.
    pub fn is_stale(&self) -> bool {
        self.stream.get_ref().is_stale()
    }

    /// Sends `req` and waits up to `ttl` for its reply.
    pub async fn call(&mut self, req: &Request, ttl: Duration) -> Result<Reply, CallError> {
        let fut = async {
            write_frame(&mut self.stream, req)
                .await
                .map_err(WireError::Io)?;
            read_frame::<_, Reply>(&mut self.stream)
                .await?
                .ok_or(CallError::Closed)
        };
        match tokio::time::timeout(ttl, fut)
            .await
            .map_err(|_| CallError::Timeout(ttl))??
        {
            Reply::Failed(e) | Reply::Malformed(e) => Err(CallError::Remote(e)),
            reply => Ok(reply),
        }
    }
}

/// openraft's factory of per-peer clients.
#[derive(Debug, Clone)]
pub struct Network {
    pub cluster_id: String,
    pub node_id: u64,
    /// The least time an AppendEntries waits for its answer: the election timeout's lower
    /// bound (see [`PeerClient::append_entries`]).
    pub append_timeout_min: Duration,
    /// TLS for every dial; `None` in insecure mode.
    pub tls: Option<TransportTls>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            cluster_id: self.cluster_id.clone(),
            from: self.node_id,
            append_timeout_min: self.append_timeout_min,
            tls: self.tls.clone(),
            conn: None,
        }
    }
}

/// The connection to one peer, dialed on first use and again after any failure.
#[derive(Debug)]
pub struct PeerClient {
    target: u64,
    addr: String,
    cluster_id: String,
    from: u64,
    append_timeout_min: Duration,
    tls: Option<TransportTls>,
    conn: Option<Conn>,
}

fn rpc_error(e: CallError) -> RPCError<TypeConfig> {
    if e.is_connect() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

fn unexpected(reply: Reply) -> CallError {
    CallError::Unexpected(format!("{reply:?}").chars().take(200).collect())
}

impl PeerClient {
    async fn call(&mut self, req: Request, ttl: Duration) -> Result<Reply, CallError> {
        // IMPORTANT: the connection is out of `self.conn` while the call is under way, and
        // goes back only when the answer came. openraft cancels calls from outside (every
        // heartbeat runs under its own timeout); a cancelled call must take its connection
        // with it, or the next call would read the cancelled one's answer as its own.
        let mut conn = match self.conn.take() {
            Some(conn) if !conn.is_stale() => conn,
            _ => {
                let conn = Conn::dial(
                    &self.addr,
                    &self.cluster_id,
                    Some(self.from),
                    self.tls.as_ref(),
                )
                .await?;
                if conn.node_id != self.target {
                    return Err(CallError::Refused {
                        addr: self.addr.clone(),
                        reason: format!("it is node {}, not {}", conn.node_id, self.target),
                    });
                }
                conn
            }
        };
        let reply = conn.call(&req, ttl).await?;
        self.conn = Some(conn);
        Ok(reply)
    }

    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        ttl: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, CallError> {
        let len = snapshot.snapshot.len;
        self.call(
            Request::SnapshotBegin {
                vote,
                meta: snapshot.meta,
                len,
            },
            ttl,
        )
        .await?;
        let mut file = tokio::fs::File::from_std(snapshot.snapshot.file);
        let mut sent = 0u64;
        while sent < len {
            let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES.min((len - sent) as usize)];
            file.read_exact(&mut chunk)
                .await
                .map_err(|e| CallError::Wire(WireError::Io(e)))?;
            sent += chunk.len() as u64;
            match self.call(Request::SnapshotChunk(chunk), ttl).await? {
                Reply::SnapshotChunkAck => {}
                other => return Err(unexpected(other)),
            }
        }
        match self
            .call(Request::SnapshotDone, ttl.max(Duration::from_secs(60)))
            .await?
        {
            Reply::Snapshot(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // IMPORTANT: openraft offers the heartbeat interval as the deadline. Used as the
        // timeout, a round trip (or a follower's fsync) longer than a heartbeat fails every
        // AppendEntries and nothing commits while the leader keeps its place. An answer
        // within the election timeout is progress by Raft's own measure, as for a vote.
        let ttl = option.hard_ttl().max(self.append_timeout_min);
        match self
            .call(Request::AppendEntries(rpc), ttl)
            .await
            .map_err(rpc_error)?
        {
            Reply::AppendEntries(r) => Ok(r),
            other => Err(rpc_error(unexpected(other))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Request::Vote(rpc), option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            Reply::Vote(r) => Ok(r),
            other => Err(rpc_error(unexpected(other))),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Request::PreVote(rpc), option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            Reply::Vote(r) => Ok(r),
            other => Err(rpc_error(unexpected(other))),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        tokio::select! {
            closed = cancel => {
                self.conn = None;
                Err(StreamingError::Closed(closed))
            }
            result = self.send_snapshot(vote, snapshot, ttl) => result.map_err(|e| {
                self.conn = None;
                if e.is_connect() { StreamingError::Unreachable(Unreachable::new(&e)) } else { StreamingError::Network(NetworkError::new(&e)) }
            }),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Request::TransferLeader(req), option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            Reply::TransferLeader(r) => Ok(r),
            other => Err(rpc_error(unexpected(other))),
        }
    }
}
