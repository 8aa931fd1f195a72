//! `metakv-gc`: the two protocols a metakv leader runs over the whole cluster, as pure state
//! machines: the tombstone GC (this page) and bucket hibernation ([`hibernate`]: pause to an
//! archive, resume, and the janitor's repairs, with the records that carry them in `_sys`).
//!
//! The GC's machines:
//!
//! - [`Agent`], one per node: takes a lease for a job, serves the node's collectable tombstones
//!   in sorted pages, compacts the node's file on request, and drops the job by itself when
//!   the lease runs out.
//! - [`Manager`], on the leader: one job at a time, through these phases:
//!
//! ```text
//!  trigger ──(version gate)──> Collect ──> Compact followers ──> Handoff ──> Compact leader ──> Done
//!                               │  k-way merge of every node's pages,          (leadership moves;
//!                               │  agreed items purged through Raft            the new leader
//!                               │  in bounded batches as they are found)       adopts the job)
//!                               └──── any failure ──> Failed (leases released, record written)
//! ```
//!
//! Neither does I/O. Events go in (a reply, a failed call, a tick of the clock, a leadership or
//! membership change) and [`Action`]s come out (call this node, propose this purge, write this
//! record), which the node's async driver carries out and answers with the next event. Every
//! transition is therefore testable without a network, and the fuzz and property tests drive
//! them directly.
//!
//! Correctness does not rest on the manager being right about timing: a purge is a guarded
//! select-delete applied through the Raft log (only a record that is still a tombstone with
//! exactly the collected revision is removed), so a tombstone is purged on every node or on
//! none, and a key written or deleted again after collection is left alone.
#![forbid(unsafe_code)]

mod agent;
mod format;
pub mod hibernate;
mod job;
mod manager;
mod msg;

pub use agent::{Agent, AgentAction, Hold, PageQuery, PageRead};
pub use format::{FormatError, HIBERNATION_RECORD_FORMAT, JOB_RECORD_FORMAT};
pub use job::{GcConfig, JobId, JobRecord, NodeCompaction, Outcome, PhaseTime, Trigger};
pub use manager::{Action, Event, Manager, Progress, StartError};
pub use msg::{AgentReply, AgentRequest, ProbeError};

/// The GC protocol version this build speaks; the manager starts a job only when every member
/// speaks at least [`PROTOCOL_MIN`].
pub const PROTOCOL: u32 = 1;
/// The oldest protocol version a job can run with.
pub const PROTOCOL_MIN: u32 = 1;
/// Name of the agent's service on the transport.
pub const SERVICE: &str = "gc";
/// Prefix of job records in the `_sys` bucket; the key's rest is [`JobId::key`].
pub const JOB_KEY_PREFIX: &[u8] = b"gc/job/";
