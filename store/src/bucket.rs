//! Buckets: names, states and the per-bucket bookkeeping kept in the `buckets` table.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The bucket that holds the store's own records (GC job records, hibernation state).
/// Created with the store; it can never be created, dropped or paused by a caller.
pub const SYS_BUCKET: &str = "_sys";

/// Longest bucket name, in bytes.
pub const BUCKET_NAME_BYTES_MAX: usize = 64;

/// Checks a caller-chosen bucket name: `[a-z0-9][a-z0-9_-]{0,63}`.
///
/// The alphabet matters beyond looks: no name contains `0x00`, which is what lets a record's
/// table key be `bucket 0x00 key` and still sort by bucket first (see `keys.rs`).
pub fn validate_bucket_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidBucketName {
            name: name.to_owned(),
            reason,
        })
    };
    if name == SYS_BUCKET {
        return Err(Error::ReservedBucket {
            bucket: name.to_owned(),
        });
    }
    let bytes = name.as_bytes();
    match bytes.first() {
        None => return invalid("a name needs at least one character"),
        Some(b) if !(b.is_ascii_lowercase() || b.is_ascii_digit()) => {
            return invalid("a name starts with a-z or 0-9");
        }
        Some(_) => {}
    }
    if bytes.len() > BUCKET_NAME_BYTES_MAX {
        return invalid("a name has at most 64 characters");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
    {
        return invalid("a name uses only a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

/// Prefix of the hibernation records in the `_sys` bucket, one per bucket that was ever paused.
pub const HIBERNATION_KEY_PREFIX: &[u8] = b"hibernation/";

/// The key of `bucket`'s hibernation record in `_sys`.
pub fn hibernation_key(bucket: &str) -> Vec<u8> {
    let mut key = HIBERNATION_KEY_PREFIX.to_vec();
    key.extend_from_slice(bucket.as_bytes());
    key
}

/// Where a bucket is in its hibernation life cycle.
///
/// ```text
///   Active -> Pausing -> Paused -> Resuming -> Active
///      ^---------'  (rollback)       '----------> Paused (rollback)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketState {
    /// Reads and writes are served.
    Active,
    /// An archive is being written: reads are served, writes answer `BucketPaused`.
    Pausing,
    /// The data lives in an archive: reads and writes answer `BucketPaused`.
    Paused,
    /// The archive is being restored: reads and writes answer `BucketPaused`.
    Resuming,
}

impl BucketState {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketState::Active => "active",
            BucketState::Pausing => "pausing",
            BucketState::Paused => "paused",
            BucketState::Resuming => "resuming",
        }
    }

    pub fn allows_writes(self) -> bool {
        self == BucketState::Active
    }

    pub fn allows_reads(self) -> bool {
        matches!(self, BucketState::Active | BucketState::Pausing)
    }
}

impl std::fmt::Display for BucketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bucket's row in the `buckets` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketInfo {
    pub state: BucketState,
    /// Revision of the entry that created the bucket.
    pub created_rev: u64,
    /// Highest revision ever purged from this bucket. A changes feed asked to start below it
    /// answers `Compacted`: the deletes it would have to show are gone.
    pub purge_floor: u64,
    /// Live (not deleted) records.
    pub records: u64,
    /// Tombstones not yet purged.
    pub tombstones: u64,
}

impl BucketInfo {
    pub(crate) fn new(created_rev: u64) -> Self {
        BucketInfo {
            state: BucketState::Active,
            created_rev,
            purge_floor: 0,
            records: 0,
            tombstones: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "users", "0", "a-b_c", &"x".repeat(64)] {
            validate_bucket_name(ok).unwrap();
        }
        for bad in [
            "",
            "A",
            "-a",
            "_a",
            "a b",
            "a/b",
            "a\0",
            "é",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(
                    validate_bucket_name(bad),
                    Err(Error::InvalidBucketName { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            validate_bucket_name("_sys"),
            Err(Error::ReservedBucket { .. })
        ));
    }
}
