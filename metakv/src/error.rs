//! The facade's error: what a caller of `Node` or `Client` can get back.

use metakv_raft::{Rejection, RejectionKind};
use serde::{Deserialize, Serialize};

/// Why a request failed, and whether it changed anything.
///
/// ```
/// use metakv::{Error, RejectionKind};
///
/// /// Whether a failed write may be sent again as it is.
/// fn safe_to_retry(e: &Error, has_expectation: bool) -> bool {
///     match e {
///         // Nothing was applied: the cluster was not reached, or was busy.
///         Error::Unavailable(_) | Error::NotLeader { .. } | Error::Busy(_) => true,
///         // It may have been applied: only a write with `Expect::Rev` or
///         // `Expect::Absent` is refused the second time instead of applied twice.
///         Error::Ambiguous { .. } => has_expectation,
///         // Refused, nothing changed: the same request is refused again (its kind says
///         // why: `BucketNotFound`, `BucketPaused`, `Invalid`, ...).
///         Error::Rejected(r) => {
///             let _why: RejectionKind = r.kind;
///             false
///         }
///         _ => false,
///     }
/// }
/// assert!(!safe_to_retry(&Error::Ambiguous { what: "put users/ada".into(), reason: "cut".into() }, false));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The op was refused and changed nothing: bad input, unknown or paused bucket...
    #[error("{0}")]
    Rejected(Rejection),
    /// No leader could be reached in time, or the node is shutting down: nothing was applied.
    /// (A write that was sent and not answered is [`Error::Ambiguous`].)
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node asked is not the leader (and was asked not to forward); `leader` is the one
    /// it knows of. Safe to retry elsewhere: nothing was proposed.
    #[error("node is not the leader ({})", match leader {
        Some(id) => format!("node {id} leads"),
        None => "no leader known".to_owned(),
    })]
    NotLeader { leader: Option<u64> },
    /// Another operation holds what this one needs (a GC job already running); try later.
    #[error("busy: {0}")]
    Busy(String),
    /// A node's storage failed; that node stops.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The request or reply did not make sense (a version mismatch, a bug).
    #[error("protocol: {0}")]
    Protocol(String),
    /// A hibernation archive or a backup file could not be used: unreachable, missing,
    /// corrupt, of another format, or no room for it. The bucket is left as it was (or rolled
    /// back); a backup leaves no file.
    #[error("archive: {0}")]
    Archive(String),
    /// A write was sent and no answer came back (the connection failed or the time ran out
    /// after the request left): it may or may not have been applied. `what` says which write.
    /// A write with an expectation (`Expect::Rev`, `Expect::Absent`) is safe to send again: if
    /// the first one was applied, the second is refused as a failed expectation. A write
    /// without one may be applied twice.
    #[error("outcome unknown: {what} was sent, then {reason}; it may or may not have been applied")]
    Ambiguous { what: String, reason: String },
    /// The caller is not authorised: its token is unknown or revoked (`user` is what it
    /// claimed), or its roles do not grant what the request needs. Nothing was done.
    #[error("not authorised: {user} may not {action}")]
    Denied { user: String, action: String },
}

impl Error {
    pub fn rejection_kind(&self) -> Option<RejectionKind> {
        match self {
            Error::Rejected(r) => Some(r.kind),
            _ => None,
        }
    }

    pub(crate) fn from_store(e: metakv_store::Error) -> Error {
        match Rejection::from_store(&e) {
            Some(r) => Error::Rejected(r),
            None => Error::Storage(e.to_string()),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::rejected(RejectionKind::Invalid, message)
    }

    pub(crate) fn rejected(kind: RejectionKind, message: impl Into<String>) -> Error {
        Error::Rejected(Rejection {
            kind,
            message: message.into(),
        })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
