//! The openraft type configuration and what travels in the log.

use metakv_store::{Applied, Error as StoreError, Op};
use serde::{Deserialize, Serialize};

/// Where a node listens: what the other nodes dial.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAddr {
    pub addr: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// One log entry's application data: an op and the leader's clock when it proposed it.
///
/// `time_ms` is stamped by the leader and never read from the local clock on apply, so that
/// every node applies exactly the same state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub time_ms: u64,
    pub op: Op,
}

/// A summary of bounded length: openraft logs entries with this (a failed append logs a
/// whole batch), so a value's bytes must never be printed.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = |k: &[u8]| String::from_utf8_lossy(&k[..k.len().min(32)]).into_owned();
        match &self.op {
            Op::CreateBucket { bucket } => write!(f, "CreateBucket({bucket})"),
            Op::DropBucket { bucket } => write!(f, "DropBucket({bucket})"),
            Op::SetBucketState { bucket, state } => {
                write!(f, "SetBucketState({bucket}, {state:?})")
            }
            Op::Put {
                bucket,
                key: k,
                value,
                expect,
            } => write!(
                f,
                "Put({bucket}, {:?}, {} bytes, {expect:?})",
                key(k),
                value.len()
            ),
            Op::Delete {
                bucket,
                key: k,
                expect,
            } => write!(f, "Delete({bucket}, {:?}, {expect:?})", key(k)),
            Op::Purge { items } => write!(f, "Purge({} items)", items.len()),
            Op::DropBucketData { bucket } => write!(f, "DropBucketData({bucket})"),
            Op::Restore { bucket, records } => {
                write!(f, "Restore({bucket}, {} records)", records.len())
            }
            Op::Hibernate { bucket, state, .. } => write!(f, "Hibernate({bucket}, {state:?})"),
        }?;
        write!(f, "@{}", self.time_ms)
    }
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Applied(Applied),
    /// The op was refused and changed nothing (bad input, unknown or paused bucket...).
    Rejected(Rejection),
}

/// Why an op was refused, in a form that crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

/// The kinds of refusal a client may want to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    BucketNotFound,
    BucketExists,
    BucketPaused,
    /// The bucket is not in the state the op needs (a hibernation step out of order).
    BucketState,
    /// Bad input: a name, key, value or batch outside its limits.
    Invalid,
    Corrupt,
    /// The entry's revision is not above the last applied one (a re-applied entry).
    Stale,
    /// What the request names does not exist: a user, a role, a member node.
    NotFound,
    /// What the request would create exists already: a user, a role.
    Exists,
}

impl Rejection {
    /// The refusal a store rejection becomes; `None` for a fatal storage error.
    pub fn from_store(e: &StoreError) -> Option<Rejection> {
        use StoreError::*;
        let kind = match e {
            BucketNotFound { .. } => RejectionKind::BucketNotFound,
            BucketExists { .. } => RejectionKind::BucketExists,
            BucketPaused { .. } => RejectionKind::BucketPaused,
            BucketState { .. } | InvalidTransition { .. } => RejectionKind::BucketState,
            Corrupt { .. } | CorruptIndex { .. } => RejectionKind::Corrupt,
            StaleRevision { .. } => RejectionKind::Stale,
            Storage { .. } | Io { .. } => return None,
            _ => RejectionKind::Invalid,
        };
        Some(Rejection {
            kind,
            message: e.to_string(),
        })
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::Applied(a) => write!(f, "{a:?}"),
            Response::Rejected(r) => write!(f, "rejected: {r}"),
        }
    }
}

openraft::declare_raft_types!(
    /// metakv's openraft types: `Command` in, `Response` out, nodes named by `u64` and
    /// reached at a `NodeAddr`.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = NodeAddr,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig, crate::StateMachine>;
