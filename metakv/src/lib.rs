//! metakv: an embedded, Raft-replicated key-value store for small, precious records.
//!
//! - [`Node`]: a node inside an application: its own copy of the data in redb, replicated
//!   through openraft over TCP.
//! - [`Client`]: the same operations ([`Kv`]) from another process, through any node.
//! - [`metakv_store`]: the record store underneath, usable on its own.
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
