//! The store's one error enum.
//!
//! Errors fall in two groups, and [`Error::is_fatal`] tells them apart:
//! - *Rejections* (bad input, unknown or paused bucket, corrupt record, wrong archive): the
//!   operation changed nothing and the store stays usable. The Raft layer turns these into a
//!   response for the client and goes on applying.
//! - *Storage failures* (`Storage`, `Io`): the file could not be read or written. The write
//!   transaction is dropped whole; the caller must treat the file as failed and never retry the
//!   same commit (a failed fsync leaves the page cache in an unknown state).
//!
//! A failed expectation (compare-and-set) is not an error at all: it is [`crate::Applied::Conflict`].

use crate::bucket::BucketState;

/// Everything that can go wrong in `metakv-store`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid bucket name {name:?}: {reason}")]
    InvalidBucketName { name: String, reason: &'static str },
    #[error("bucket {bucket:?} is reserved for the store's own records")]
    ReservedBucket { bucket: String },
    #[error("bucket {bucket:?} not found")]
    BucketNotFound { bucket: String },
    #[error("bucket {bucket:?} already exists")]
    BucketExists { bucket: String },
    #[error("bucket {bucket:?} is {state}: it does not accept this operation")]
    BucketPaused { bucket: String, state: BucketState },
    #[error("bucket {bucket:?} is {state}; this operation needs it {needed}")]
    BucketState {
        bucket: String,
        state: BucketState,
        needed: &'static str,
    },
    #[error("bucket {bucket:?} cannot move from {from} to {to}")]
    InvalidTransition {
        bucket: String,
        from: BucketState,
        to: BucketState,
    },
    #[error("meta name {name:?} is in the store's own namespace")]
    ReservedMeta { name: String },
    #[error("revision {rev} is not above the last applied revision {last}")]
    StaleRevision { rev: u64, last: u64 },
    #[error("empty key in bucket {bucket:?}")]
    KeyEmpty { bucket: String },
    #[error("key of {len} bytes in bucket {bucket:?} is over the limit of {max} bytes")]
    KeyTooLarge {
        bucket: String,
        len: usize,
        max: usize,
    },
    #[error("value of {len} bytes for a key in bucket {bucket:?} is over the limit of {max} bytes")]
    ValueTooLarge {
        bucket: String,
        len: usize,
        max: usize,
    },
    #[error("{what} of {len} is over the limit of {max}")]
    LimitExceeded {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("corrupt record in bucket {bucket:?} at key {key}: {reason}")]
    Corrupt {
        bucket: String,
        key: KeyDisplay,
        reason: String,
    },
    #[error("corrupt {table} entry: {reason}")]
    CorruptIndex { table: &'static str, reason: String },
    #[error(
        "the store file holds a table {name:?} this version does not know; refusing to rebuild it"
    )]
    UnknownTable { name: String },
    #[error("archive: {reason}")]
    Archive { reason: String },
    #[error(
        "archive format version {found} is not supported (this build reads version {supported})"
    )]
    ArchiveVersion { found: u32, supported: u32 },
    #[error(
        "store file {path}: format version {found} is not supported (this build reads version {supported})"
    )]
    FormatVersion {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("storage failure while {doing}: {source}")]
    Storage {
        doing: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("i/o failure while {doing}: {source}")]
    Io {
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the file itself failed: the caller must stop using this store (and, in a
    /// cluster, this node) rather than answer the client and go on.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Storage { .. } | Error::Io { .. })
    }

    pub(crate) fn archive(reason: impl Into<String>) -> Self {
        Error::Archive {
            reason: reason.into(),
        }
    }
}

/// Attaches "what the store was doing" to a redb or I/O failure.
pub(crate) trait Doing<T> {
    fn doing(self, doing: &'static str) -> Result<T, Error>;
}

impl<T, E: Into<redb::Error>> Doing<T> for Result<T, E> {
    fn doing(self, doing: &'static str) -> Result<T, Error> {
        self.map_err(|e| Error::Storage {
            doing,
            source: e.into(),
        })
    }
}

pub(crate) fn io(doing: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { doing, source }
}

/// A key shown in an error: UTF-8 text when it is printable, else hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDisplay(pub Vec<u8>);

impl std::fmt::Display for KeyDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "{s:?}"),
            _ => {
                f.write_str("0x")?;
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
