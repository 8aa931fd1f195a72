//! `metakv-raft`: replication of the store through openraft.
//!
//! - [`types`]: the openraft type configuration, [`Command`] and [`Response`].
//! - [`LogStore`]: the Raft log on redb (`raft-log.redb`), one fsync per batch of entries.
//! - [`check_log_file`]: `check` of a stopped node's log, and of its state against the log.
//! - [`StateMachine`]: `metakv-store` applied from the log; snapshots in the archive format.
//! - [`candidacy`]: a follower stands soon after the leader's lease runs out.
//! - [`restore`]: a new node's files from a backup, so a restored cluster goes on from the
//!   backup's log index.
//!
//! This crate depends on `metakv-store` only; it knows nothing of GC or hibernation.
#![forbid(unsafe_code)]

mod blocking;
pub mod candidacy;
mod log_check;
mod log_store;
pub mod network;
pub mod restore;
pub mod secure;
pub mod server;
mod state_machine;
pub mod types;
pub mod wire;

pub use log_check::{LOG_PROBLEMS_LISTED_MAX, LogCheck, check_log_file};
pub use log_store::{LOG_FORMAT, LogClosed, LogStats, LogStore};
pub use state_machine::{META_APPLIED, META_MEMBERSHIP, SharedStore, SnapshotFile, StateMachine};
pub use types::{Command, NodeAddr, Raft, Rejection, RejectionKind, Response, TypeConfig};
