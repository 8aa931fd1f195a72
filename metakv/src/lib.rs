//! metakv: an embedded, Raft-replicated key-value store for small, precious records (users,
//! roles, service configuration).
//!
//! - [`Node`]: a node inside an application: its own copy of the data in redb, replicated
//!   through openraft over TLS 1.3 to the cluster's other nodes.
//! - [`Client`]: the same operations from another process, through any node.
//! - [`Kv`]: those operations, which both implement: buckets, `put`/`get`/`delete` with
//!   compare-and-set ([`Expect`]), `scan`, [`Kv::watch`], GC, pause and resume, backups,
//!   membership, users and roles.
//! - [`store`]: the record store underneath, usable on its own.
//!
//! A node on a new data dir makes a cluster of one:
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use metakv::{Applied, Expect, Kv, Node, NodeConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let node = Node::start(NodeConfig::new(1, dir.path().join("node1"), "127.0.0.1:0")).await?;
//! node.create_bucket_if_absent("users").await?;
//! let Applied::Written { rev } = node.put("users", b"ada", b"admin", Expect::Absent).await?
//! else {
//!     panic!("ada exists already");
//! };
//! // Compare-and-set: only if ada is still at `rev`.
//! node.put("users", b"ada", b"owner", Expect::Rev(rev)).await?;
//! assert_eq!(node.get("users", b"ada").await?.unwrap().value, b"owner");
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! More nodes join with a join token ([`Kv::join_token`], [`NodeConfig::join_token`]); a
//! [`Client`] needs the credentials file the first node wrote ([`ClientCreds`]). The
//! repository's `examples/` has an embedded node, a 3-node cluster in one process, and a
//! remote client whose watch survives [`WatchEvent::Compacted`]. Every method's errors are
//! listed on [`Kv`] and [`Error`].
#![forbid(unsafe_code)]

// The floors, bottom up; nothing imports a floor above its own (`floors` in the tests):
// sync, error, archives, tls -> api, config -> pool -> node_core -> drivers (backup, gc, hibernate,
// snapshots) -> node (the composition root) -> client (a `Kv` over TCP).
mod archives;
mod config;
mod sync;
pub mod tls;

pub mod api;
mod error;
mod pool;

mod node_core;

mod backup;
mod gc;
mod hibernate;
mod snapshots;

mod client;
mod node;

pub use api::{AccessReply, AccessRequest, Grants, Need, UserInfo};
pub use api::{
    BackupInfo, ChangesPage, ClientReply, ClientRequest, ClusterStatus, Consistency, Enrollment,
    GcStatus, HibernationStatus, JoinTokenInfo, Kv, Member, MemberReport, NodeCheck, NodeCompacted,
    NodeStatus, OpProgress, Role, ScanPage, Watch, WatchEvent,
};
pub use archives::{ArchiveError, Archives, UriArchives};
pub use client::Client;
pub use config::{ConfigError, HibernationConfig, NodeConfig, Security};
pub use error::{Error, Result};
pub use metakv_gc::hibernate::{HibernationRecord, Manifest, OpId, OpKind, Phase};
pub use metakv_gc::{self as gc_engine, GcConfig, JobId, JobRecord, Outcome as GcOutcome};
pub use metakv_raft::{Rejection, RejectionKind};
pub use metakv_store::{self as store, Applied, BucketInfo, BucketState, Expect, Op, Record};
pub use node::{
    IDENTITY_FILE, Identity, IdentityError, Node, OnBehalfOf, TOKEN_TTL_MAX, WATCH_WAIT_MS_MAX,
};
pub use tls::ClientCreds;
