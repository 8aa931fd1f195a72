//! metakv: an embedded, Raft-replicated key-value store for small, precious records.
//!
//! - [`Node`]: a node inside an application: its own copy of the data in redb, replicated
//!   through openraft over TCP.
//! - [`Client`]: the same operations ([`Kv`]) from another process, through any node.
//! - [`metakv_store`]: the record store underneath, usable on its own.
#![forbid(unsafe_code)]

pub mod api;
mod backup;
mod client;
mod error;
mod gc;
mod hibernate;
mod node;
mod pool;
mod snapshots;
mod sync;

pub use api::{
    BackupInfo, ChangesPage, ClientReply, ClientRequest, ClusterStatus, Consistency, GcStatus,
    HibernationStatus, Kv, Member, MemberReport, NodeCheck, NodeCompacted, NodeStatus, OpProgress,
    Role, ScanPage, Watch, WatchEvent,
};
pub use client::Client;
pub use error::{Error, Result};
pub use hibernate::{ArchiveError, Archives, HibernationConfig, UriArchives};
pub use metakv_gc::hibernate::{HibernationRecord, Manifest, OpId, OpKind, Phase};
pub use metakv_gc::{self as gc_engine, GcConfig, JobId, JobRecord, Outcome as GcOutcome};
pub use metakv_raft::{Rejection, RejectionKind};
pub use metakv_store::{self as store, Applied, BucketInfo, BucketState, Expect, Op, Record};
pub use node::{
    ConfigError, IDENTITY_FILE, Identity, IdentityError, Node, NodeConfig, WATCH_WAIT_MS_MAX,
};
