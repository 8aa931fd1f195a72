//! The listening side of the transport: one task per connection.
//!
//! A connection must say a [`Hello`] with this cluster's id and protocol version within
//! [`HANDSHAKE_TIMEOUT`], or it is refused with the reason and closed. Raft RPCs are accepted
//! only from connections that said they are a node. A frame that is oversized, damaged or
//! undecodable gets a `Malformed` reply, is logged, and closes that connection only.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use openraft::raft::AppendEntriesResponse;

use crate::candidacy::LeaderContact;
use crate::state_machine::SnapshotFile;
use crate::types::{Raft, SnapshotMeta, Vote};
use crate::wire::{Hello, HelloReply, Reply, Request, read_frame, write_frame};

/// How long a new connection may take to say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The node's named services (client API, GC and hibernation agents, admin), called through
/// [`Request::Service`]. `from` is the calling node, `None` for a client.
pub trait Services: Send + Sync + 'static {
    fn call(
        &self,
        from: Option<u64>,
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
    let stopper = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let (raft, config, services, mut stop) = (raft.clone(), Arc::clone(&config), Arc::clone(&services), stopper.clone());
                    let id = conn_ids.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = connection(tcp, id, raft, config, services) => {}
                            _ = async { let _ = stop.wait_for(|s| *s).await; } => {}
                        }
                        tracing::debug!(%peer, "connection closed");
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
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
    id: u64,
    raft: Raft,
    config: Arc<ServerConfig>,
    services: Arc<dyn Services>,
) {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    tcp.set_nodelay(true).ok();
    let mut stream = BufStream::new(tcp);
    let hello =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame::<_, Hello>(&mut stream)).await {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "bad handshake frame; closing");
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
                tracing::warn!(%peer, "no handshake within {HANDSHAKE_TIMEOUT:?}; closing");
                return;
            }
        };
    if let Err(reason) = hello.admit(&config.cluster_id) {
        tracing::warn!(%peer, %reason, "handshake refused");
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
    let mut incoming: Option<Incoming> = None;
    loop {
        let request = match read_frame::<_, Request>(&mut stream).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "malformed frame; closing the connection");
                let _ = write_frame(&mut stream, &Reply::Malformed(e.to_string())).await;
                break;
            }
        };
        let (reply, close) = match dispatch(
            request,
            hello.from,
            id,
            &raft,
            &config,
            services.as_ref(),
            &mut incoming,
        )
        .await
        {
            Ok(reply) => (reply, false),
            Err(reason) => {
                tracing::warn!(%peer, %reason, "refused request; closing the connection");
                (Reply::Malformed(reason), true)
            }
        };
        if write_frame(&mut stream, &reply).await.is_err() || close {
            break;
        }
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
    from: Option<u64>,
    conn: u64,
    raft: &Raft,
    config: &ServerConfig,
    services: &dyn Services,
    incoming: &mut Option<Incoming>,
) -> Result<Reply, String> {
    let is_raft = !matches!(request, Request::Service { .. });
    if is_raft && from.is_none() {
        return Err("raft requests are only accepted from nodes".into());
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
            tokio::fs::create_dir_all(&config.spool_dir)
                .await
                .map_err(|e| e.to_string())?;
            let path = config.spool_dir.join(format!("incoming-{conn}.tmp"));
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| format!("spooling a snapshot: {e}"))?;
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
            .call(from, service, payload)
            .await
            .map_or_else(Reply::Failed, Reply::Service),
    })
}
